"""The asyncio transport: concurrent requests over one connection (the AsyncClient's and
the worker's).

The guarantees it gives are those of :mod:`conveyor.client.transport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

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
)
from conveyor.errors import AuthenticationError, BrokerUnavailable, ConnectionLost, ProtocolError
from conveyor.protocol.session import (
    Backoff,
    ClientSession,
    Closed,
    Push,
    Reply,
    Welcome,
    error_of,
    refusal,
)

Push_ = Callable[[Frame], None]


class AsyncConnection:
    """One asyncio TLS connection and its session. Frames written in one loop iteration
    leave in one write. Pushed frames go to ``on_push``. When the connection drops, every
    pending request fails with ConnectionLost and :attr:`closed` is set."""

    def __init__(
        self,
        endpoint: Endpoint,
        agent: str,
        on_push: Push_ | None = None,
        address: Address | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.address = endpoint.addresses[0] if address is None else address
        self.session = ClientSession(endpoint.token, endpoint.name, agent)
        self.on_push = on_push
        self.welcome: Frame = {}
        self.closed = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._read_task: asyncio.Task[None] | None = None
        self._refused: BaseException | None = None  # why pending requests must not be resent

    async def connect(self, timeout: float = 10.0) -> Frame:
        host, port = self.address
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(  # the certificate is checked against the host dialled
                host, port, ssl=self.endpoint.ssl_context, server_hostname=host, limit=2**20
            ),
            timeout,
        )
        self._reader, self._writer = reader, writer
        try:
            writer.write(self.session.hello())
            self.welcome = await asyncio.wait_for(self._handshake(), timeout)
        except BaseException:
            writer.close()  # refused, timed out or cut off: do not leak the socket
            raise
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop())
        return self.welcome

    async def _handshake(self) -> Frame:
        assert self._reader is not None
        while True:
            data = await self._reader.read(READ_SIZE)
            for event in self.session.receive(data):
                if isinstance(event, Welcome):
                    return event.frame
                err = error_of(event.frame) if isinstance(event, Push) else None
                if err is not None:
                    raise err
                if isinstance(event, Closed):
                    raise ConnectionLost("the broker closed the connection during the handshake")

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                data = await self._reader.read(READ_SIZE)
                for event in self.session.receive(data):
                    if isinstance(event, Reply):
                        fut = event.request.token
                        if isinstance(fut, asyncio.Future) and not fut.done():
                            fut.set_result(event.frame)
                    elif isinstance(event, Push):
                        self._pushed(event.frame)
                    elif isinstance(event, Closed):
                        self._refused = refusal(event)
                        return
        except (OSError, ProtocolError, asyncio.IncompleteReadError) as exc:
            log.debug("connection lost: %s", exc)
        finally:
            self._fail_pending()
            self.closed.set()
            if self._writer is not None:
                self._writer.close()

    @property
    def refused(self) -> BaseException | None:
        """The broker's fatal ERROR that closed this connection, when it blamed our frame or
        our credentials (resending would be refused again); else None."""
        return self._refused

    def _pushed(self, frame: Frame) -> None:
        if self.on_push is not None:
            self.on_push(frame)
        elif frame.get("t") == "error":
            log.warning("broker error: %s: %s", frame.get("code"), frame.get("message"))

    def _fail_pending(self) -> None:
        again, failed = self.session.lost()
        for req in [*again, *failed]:
            fut = req.token
            if isinstance(fut, asyncio.Future) and not fut.done():
                fut.set_exception(
                    self._refused or ConnectionLost("the connection to the broker was lost")
                )

    def send(self, frame: Frame) -> None:
        """Queue a frame that gets no reply (coalesced writes)."""
        self.write(self._check().send(frame))

    def _check(self) -> ClientSession:
        if self.closed.is_set() or self._writer is None:
            raise ConnectionLost("not connected to the broker")
        return self.session

    def write(self, data: bytes) -> None:
        """Queue encoded bytes (frames from :attr:`session`) for this loop turn's write."""
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._writer is not None and not self._writer.is_closing():
            self._writer.write(b"".join(self._out))
        self._out.clear()

    async def request(self, frame: Frame, resend: bool = True) -> Frame:
        """Send a request and await its reply; ERROR replies raise BrokerError."""
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        req, data = self._check().request(frame, resend=resend, token=fut)
        self.write(data)
        try:
            reply = await fut
        except asyncio.CancelledError:
            self.session.forget(req)
            raise
        err = error_of(reply)
        if err is not None:
            raise err
        return reply

    async def drain(self) -> None:
        self.flush()
        if self._writer is not None:
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.drain()

    async def close(self) -> None:
        if self._writer is not None and not self.closed.is_set():
            with contextlib.suppress(Exception):
                self.send({"t": "goodbye", "reason": "client closing"})
                await self.drain()
            self._writer.close()
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._read_task
        self._fail_pending()
        self.closed.set()


class AsyncTransport:
    """Concurrent requests over one asyncio connection, reconnecting as the module says."""

    def __init__(
        self,
        endpoint: Endpoint,
        agent: str = "conveyor-async-client",
        reconnect_timeout: float = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self.agent = agent
        self._backoff = Backoff(reconnect_timeout)
        self._rotation = Rotation(endpoint.addresses)
        self._conn: AsyncConnection | None = None
        self._lock = asyncio.Lock()
        self._worked = False
        self._given_up = 0  # reconnects abandoned: tasks queued behind one fail at once
        self._refused: AuthenticationError | None = None  # our credentials, refused for good

    @property
    def address(self) -> Address:
        """The broker connected to (before the first connection: the first to try)."""
        return self._rotation.current

    async def connect(self) -> AsyncConnection:
        """Connect now, to the first address that answers; BrokerUnavailable (no retry)
        if none does."""
        if self._refused is not None:
            raise again(self._refused)
        try:
            conn = await self._dial(self._rotation.first_round(), None)
        except NoneAnswered as exc:
            raise BrokerUnavailable(str(exc)) from exc.failures[-1][1]
        self._conn = conn
        self._worked = True
        self._backoff.reset()
        return conn

    async def _dial(self, order: list[Address], lost: Address | None) -> AsyncConnection:
        """The first connection of ``order`` that completes its handshake."""
        failures: Failures = []
        for address in order:
            conn = AsyncConnection(self.endpoint, self.agent, address=address)
            try:
                await conn.connect()
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

    async def _connection(self) -> AsyncConnection:
        given_up = self._given_up
        async with self._lock:
            conn = self._conn
            if conn is not None and not conn.closed.is_set():
                return conn
            if conn is not None and isinstance(conn.refused, AuthenticationError):
                self._refused = conn.refused  # the broker ended our token: do not knock again
            if self._refused is not None:
                raise again(self._refused)
            if not self._worked:
                return await self.connect()
            if self._given_up != given_up:
                raise ConnectionLost(f"no broker of {self.endpoint.address} is reachable")
            self._backoff.start(time.monotonic())
            lost = self._rotation.current
            while True:
                try:
                    fresh = await self._dial(self._rotation.after_loss(), lost)
                except NoneAnswered as exc:
                    delay = self._backoff.next_delay(time.monotonic())
                    if delay is None:
                        self._given_up += 1
                        raise ConnectionLost(
                            f"lost the broker at {lost} and could not reconnect: {exc}"
                        ) from exc
                    await asyncio.sleep(delay)
                    continue
                self._conn = fresh
                return fresh

    async def request(self, frame: Frame, *, resend: bool = True) -> Frame:
        while True:
            conn = await self._connection()
            try:
                reply = await conn.request(frame, resend)
            except AuthenticationError as exc:
                self._refused = exc
                raise
            except ConnectionLost as exc:
                if not resend:
                    raise not_resent(frame, conn.address, exc) from exc
                # lost again right after a reconnect: the same budget and pace as connecting
                now = time.monotonic()
                self._backoff.start(now)
                delay = self._backoff.next_delay(now)
                if delay is None:
                    raise ConnectionLost(
                        f"the broker at {conn.address} keeps dropping the connection: {exc}"
                    ) from exc
                await asyncio.sleep(delay)
                continue
            self._backoff.reset()  # the budget is for a loss: a served request ends one
            return reply

    async def session(self) -> ClientSession:
        return (await self._connection()).session

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
