"""The blocking transport: one TLS socket at a time, no threads (the sync Client's).

The guarantees it gives are those of :mod:`conveyor.client.transport`.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator
from typing import TypeVar

from conveyor.client.endpoint import Address, Endpoint
from conveyor.client.failover import Rotation
from conveyor.client.transport import (
    READ_SIZE,
    UNREACHABLE,
    Failures,
    Frame,
    NoneAnswered,
    again,
    failed_over,
    log,
    not_resent,
    welcome_of,
)
from conveyor.errors import (
    AuthenticationError,
    BrokerError,
    BrokerUnavailable,
    ConnectionLost,
    ProtocolError,
)
from conveyor.protocol.session import (
    Backoff,
    ClientSession,
    Closed,
    Event,
    Push,
    Reply,
    error_of,
    refusal,
    reply_timeout,
)

K = TypeVar("K")
T = TypeVar("T")


class SyncConnection:
    """One blocking TLS connection and its session."""

    def __init__(
        self, endpoint: Endpoint, address: Address, agent: str, connect_timeout: float
    ) -> None:
        self.address = address
        self.session = ClientSession(endpoint.token, endpoint.name, agent)
        self._read: deque[Event] = deque()  # read, not yet looked at (see _until)
        self._kept: deque[Reply] = deque()  # replies read while another caller read
        raw = socket.create_connection((address.host, address.port), timeout=connect_timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # the certificate is checked against the host dialled, each address its own
            self.sock = endpoint.ssl_context.wrap_socket(raw, server_hostname=address.host)
        except BaseException:
            raw.close()
            raise
        try:
            self.sock.sendall(self.session.hello())
            self.welcome = self._until(welcome_of, connect_timeout)
        except BaseException:
            self.sock.close()
            raise

    def _until(self, wanted: Callable[[Event], T | None], timeout: float | None) -> T:
        """Read until an event arrives of which ``wanted`` returns something; return
        that. The events read after it wait in ``self._read`` for the next call (one
        read may complete several pipelined replies), and the replies it passes over wait
        in ``self._kept`` for their own callers (a request made while an exchange or a
        pipeline has requests out on the same connection)."""
        found = self._claim(wanted)
        while found is None:
            found = self._scan(wanted)
            if found is None:
                self._fill(timeout)
        return found

    def ready(self, wanted: Callable[[Event], T | None]) -> list[T]:
        """What ``wanted`` takes of the events that are here already: read without
        waiting, only what the socket holds."""
        out: list[T] = []
        while (found := self._claim(wanted)) is not None:
            out.append(found)
        while True:
            while (found := self._scan(wanted)) is not None:
                out.append(found)
            if not self._fill(0.0):
                return out

    def _claim(self, wanted: Callable[[Event], T | None]) -> T | None:
        """The first of the replies kept for another caller that ``wanted`` takes."""
        for i, reply in enumerate(self._kept):
            found = wanted(reply)
            if found is not None:
                del self._kept[i]
                return found
        return None

    def _scan(self, wanted: Callable[[Event], T | None]) -> T | None:
        """The first event read and not yet looked at that ``wanted`` takes."""
        while self._read:
            event = self._read.popleft()
            found = self._take(event, wanted)
            if found is not None:
                return found
            if isinstance(event, Reply):  # a pending request's: its caller will ask
                self._kept.append(event)
        return None

    def forget(self, rids: Iterable[int]) -> None:
        """Stop waiting for the requests numbered ``rids`` (their caller gave up): their
        replies, read already or still to come, are dropped."""
        gone = set(rids)
        for rid in gone:
            self.session.pending.pop(rid, None)
        self._kept = deque(r for r in self._kept if r.request.rid not in gone)

    def _fill(self, timeout: float | None) -> bool:
        """One read into ``self._read``; with ``timeout`` 0, False if nothing was there."""
        try:
            self.sock.settimeout(timeout)  # raises too once the socket is closed
            data = self.sock.recv(READ_SIZE)
        except (ssl.SSLWantReadError, BlockingIOError):
            return False  # non-blocking (timeout 0) and nothing to read yet
        except OSError as exc:
            if isinstance(exc, TimeoutError | socket.timeout):
                raise ConnectionLost("no reply from the broker in time") from exc
            raise ConnectionLost(f"connection to the broker lost: {exc}") from exc
        try:
            self._read.extend(self.session.receive(data))
        except ProtocolError as exc:
            raise ConnectionLost(f"connection to the broker lost: {exc}") from exc
        return True

    def _take(self, event: Event, wanted: Callable[[Event], T | None]) -> T | None:
        """``wanted(event)``; raises for an event that ends the connection."""
        found = wanted(event)
        if found is not None:
            return found
        if isinstance(event, Push) and self.session.welcome is None:
            err = error_of(event.frame)
            if err is not None:
                raise err  # the handshake was refused (bad token ...)
        if isinstance(event, Closed):
            refused = refusal(event)
            if refused is not None:
                raise refused  # our own frame was refused: sending it again won't help
            raise ConnectionLost(event.reason)
        return None

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ConnectionLost(f"connection to the broker lost: {exc}") from exc

    def next_reply(self, rids: Container[int], timeout: float | None) -> Reply:
        """The next reply to one of the requests numbered ``rids``."""
        return self._until(
            lambda e: e if isinstance(e, Reply) and e.request.rid in rids else None, timeout
        )

    def request(self, frame: Frame, resend: bool) -> Frame:
        req, data = self.session.request(frame, resend=resend)
        self.send(data)
        reply = self._until(
            lambda e: e.frame if isinstance(e, Reply) and e.request is req else None,
            reply_timeout(frame),
        )
        err = error_of(reply)
        if err is not None:
            raise err
        return reply

    def close(self) -> None:
        try:
            if self.session.open:
                self.sock.sendall(self.session.send({"t": "goodbye", "reason": "client closing"}))
        except (OSError, ssl.SSLError, ProtocolError):
            pass
        finally:
            self.sock.close()


class SyncTransport:
    """Blocking requests over one connection at a time; see the module docstring."""

    def __init__(
        self,
        endpoint: Endpoint,
        agent: str = "conveyor-client",
        reconnect_timeout: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.agent = agent
        self.connect_timeout = connect_timeout
        self._backoff = Backoff(reconnect_timeout)
        self._rotation = Rotation(endpoint.addresses)
        self._conn: SyncConnection | None = None
        self._worked = False
        self._refused: AuthenticationError | None = None  # our credentials, refused for good

    @property
    def welcome(self) -> Frame:
        return self._connection().welcome

    @property
    def address(self) -> Address:
        """The broker connected to (before the first connection: the first to try)."""
        return self._rotation.current

    def connect(self) -> None:
        """Connect now, to the first address that answers; BrokerUnavailable (no retry)
        if none does. Connected already: nothing to do."""
        if self._refused is not None:
            raise again(self._refused)
        if self._conn is not None:
            return
        try:
            self._conn = self._dial(self._rotation.first_round(), None)
        except NoneAnswered as exc:
            raise BrokerUnavailable(str(exc)) from exc.failures[-1][1]
        self._worked = True
        self._backoff.reset()

    def _dial(self, order: list[Address], lost: Address | None) -> SyncConnection:
        """The first connection of ``order`` that completes its handshake."""
        failures: Failures = []
        for address in order:
            try:
                conn = SyncConnection(self.endpoint, address, self.agent, self.connect_timeout)
            except AuthenticationError as exc:
                self._refused = exc  # every broker of the system shares the tokens
                raise
            except UNREACHABLE as exc:
                log.debug("broker at %s unusable: %s", address, exc)
                failures.append((address, exc))
                continue
            self._rotation.connected(address)
            failed_over(lost, address)
            return conn
        raise NoneAnswered(self.endpoint, failures)

    def _connection(self) -> SyncConnection:
        if self._refused is not None:
            raise again(self._refused)
        if self._conn is None:
            if not self._worked:
                self.connect()
            else:
                self._reconnect()
        assert self._conn is not None
        return self._conn

    def _reconnect(self) -> None:
        self._backoff.start(time.monotonic())
        lost = self._rotation.current
        while True:
            try:
                self._conn = self._dial(self._rotation.after_loss(), lost)
                return
            except NoneAnswered as exc:
                delay = self._backoff.next_delay(time.monotonic())
                if delay is None:
                    raise ConnectionLost(
                        f"lost the broker at {lost} and could not reconnect: {exc}"
                    ) from exc
                time.sleep(delay)

    def request(self, frame: Frame, *, resend: bool = True) -> Frame:
        """Send a request and return its reply (an ERROR reply raises BrokerError)."""
        while True:
            conn = self._connection()
            try:
                reply = conn.request(frame, resend)
            except AuthenticationError as exc:
                self.refused(conn, exc)
                raise
            except ConnectionLost as exc:
                if not resend:
                    self._forget(conn)
                    raise not_resent(frame, conn.address, exc) from exc
                self.lost(conn, exc)
                continue
            self._backoff.reset()  # the budget is for a loss: a served request ends one
            return reply

    def connection(self) -> SyncConnection:
        """The connection in use, made (or remade, with backoff) if there is none."""
        return self._connection()

    def lost(self, conn: SyncConnection, exc: ConnectionLost) -> None:
        """``conn`` failed under a request that will be sent again: forget it and pause
        before the next try (ConnectionLost once the reconnect budget is spent)."""
        self._forget(conn)
        # lost again right after a reconnect: the same budget and pace as connecting
        time.sleep(self._pause_before_resend(conn.address, exc))

    def refused(self, conn: SyncConnection, exc: AuthenticationError) -> None:
        """The broker refused our credentials on ``conn``: what a reconnect would hear."""
        self._refused = exc
        self._forget(conn)

    def _forget(self, conn: SyncConnection) -> None:
        conn.sock.close()
        if self._conn is conn:
            self._conn = None

    def exchange(
        self, keys: Iterable[K], make: Callable[[K], Frame], window: int
    ) -> Iterator[tuple[K, Frame | BrokerError]]:
        """Requests pipelined: a frame per key, made by ``make`` when it is sent, at most
        ``window`` unanswered at once; yields ``(key, reply)`` as the replies arrive (an
        ERROR reply as its BrokerError, not raised). Every frame must be safe to send
        again: after a lost connection, those not answered are made and sent anew."""
        todo = deque(keys)
        while todo:
            conn = self._connection()
            pending: dict[int, tuple[K, float | None]] = {}  # rid -> key, reply timeout
            try:
                while todo or pending:
                    out = []
                    while todo and len(pending) < window:
                        key = todo.popleft()
                        frame = make(key)
                        req, data = conn.session.request(frame)
                        pending[req.rid] = key, reply_timeout(frame)
                        out.append(data)
                    if out:
                        conn.send(b"".join(out))
                    reply = conn.next_reply(pending, _longest(t for _, t in pending.values()))
                    key, _ = pending.pop(reply.request.rid)
                    err = error_of(reply.frame)
                    yield key, reply.frame if err is None else err
            except AuthenticationError as exc:
                self.refused(conn, exc)
                raise
            except ConnectionLost as exc:
                todo.extendleft(reversed([key for key, _ in pending.values()]))
                pending.clear()
                if self._conn in (None, conn):  # else a request made meanwhile reconnected
                    self.lost(conn, exc)
                continue
            finally:  # the caller stopped early: later replies to these are not ours
                conn.forget(pending)
            self._backoff.reset()

    def _pause_before_resend(self, address: Address, exc: ConnectionLost) -> float:
        now = time.monotonic()
        self._backoff.start(now)
        delay = self._backoff.next_delay(now)
        if delay is None:
            raise ConnectionLost(
                f"the broker at {address} keeps dropping the connection: {exc}"
            ) from exc
        return delay

    @property
    def session(self) -> ClientSession:
        return self._connection().session

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _longest(timeouts: Iterable[float | None]) -> float | None:
    """The longest of some reply timeouts (None, no limit, is the longest)."""
    longest = 0.0
    for timeout in timeouts:
        if timeout is None:
            return None
        longest = max(longest, timeout)
    return longest
