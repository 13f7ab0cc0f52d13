"""One client connection on the broker: the asyncio protocol, the handshake, backpressure.

The session feeds bytes to the sans-IO :class:`~conveyor.protocol.connection.ServerConnection`,
checks the token at HELLO and the role for every frame, and hands each frame to its route
(``routes/``). Replies are coalesced: frames queued during one loop iteration leave in
one write (one TLS record), which is what makes small jobs cheap. A peer that sends
requests faster than it reads replies has its reading paused (it cannot make the broker
buffer without bound).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from conveyor.broker.config import Limits
from conveyor.broker.core import BrokerCore
from conveyor.broker.dispatch import WorkerRef
from conveyor.broker.routes import ROUTES
from conveyor.errors import (
    AuthenticationError,
    BrokerError,
    LocalProtocolError,
    RemoteProtocolError,
    TooManyFailures,
)
from conveyor.limits import MAX_CLIENT_NAME, MAX_ERROR_REPLY
from conveyor.protocol.connection import ConnState, ServerConnection
from conveyor.protocol.frames import FEATURES, ErrorCode, FrameType
from conveyor.protocol.session import split_to_fit
from conveyor.security.roles import may_send
from conveyor.security.tokens import Role, hash_token

log = logging.getLogger("conveyor.broker")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.:@\-]")


class SessionHost(Protocol):
    """What a session needs of the broker that runs it (the app implements it)."""

    name: str

    def session_opened(self, session: Session) -> None: ...

    def session_closed(self, session: Session) -> None: ...

    def new_session_id(self) -> str: ...


class Session(asyncio.Protocol):
    """The broker's side of one TLS connection (and the :class:`~conveyor.broker.routes.Peer`
    its routes serve)."""

    def __init__(
        self, core: BrokerCore, host: SessionHost, peer: str, on_close: Callable[[], None]
    ) -> None:
        self.core = core
        self.host = host
        self.limits: Limits = core.config.limits
        self.peer = peer
        self._on_close = on_close
        self.conn = ServerConnection(self.limits.max_frame_size)
        self.transport: asyncio.Transport | None = None
        self._role: Role | None = None
        self.features: frozenset[str] = frozenset()
        self.token_name = ""
        self.token_digest = ""  # SHA-256 of the token, for the token watch (tokenwatch.py)
        self._end_reason = ""  # why the broker ended this connection, for a worker's jobs
        self.client_name = ""
        self.session_id = ""
        self.worker: WorkerRef | None = None
        self.waits = 0  # WAIT requests this session has outstanding
        self.closed = False
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._flush_held = False  # this flush already waited one turn for a dispatch pass
        self._inflight = 0
        self._paused = False  # reading paused: too many requests in flight, or write_blocked
        self._write_blocked = False  # the transport's write buffer is above its high-water mark
        self._timer: asyncio.TimerHandle | None = None
        self._last_frame = 0.0
        self._submit_tokens = 0.0
        self._submit_stamp = 0.0

    @property
    def role(self) -> Role:
        assert self._role is not None, "no role before the handshake"
        return self._role

    @property
    def packed(self) -> bool:
        return "packed" in self.features

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's SSL transport is not an asyncio.Transport subclass, but quacks like one
        self.transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self._last_frame = loop.time()
        self._timer = loop.call_later(self.limits.handshake_timeout, self._check_timeouts)
        self.host.session_opened(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.conn.receive_data(data)
        except RemoteProtocolError as exc:
            log.info("protocol error from %s: %s", self.peer, exc)
            self.fatal(exc.code, str(exc))
            return
        self._process()

    def _process(self) -> None:
        """Handle buffered frames until none is left or reading is paused (backpressure)."""
        try:
            while not self.closed and not self._paused:
                frame = self.conn.next_frame()
                if frame is None:
                    if self.conn.state is ConnState.CLOSED:
                        self.close()  # EOF, or the peer sent a GOODBYE / fatal ERROR
                    break
                self._on_frame(frame)
                if self.conn.state is ConnState.CLOSED:
                    self.close()
                    break
        except RemoteProtocolError as exc:
            log.info("protocol error from %s: %s", self.peer, exc)
            self.fatal(exc.code, str(exc))

    def pause_writing(self) -> None:
        # The peer does not read its replies as fast as it sends requests: take no new
        # requests until it does, or its replies pile up in our memory without bound.
        self.core.metrics["write_paused"] += 1
        self._write_blocked = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_blocked = False
        self._maybe_resume_reading()

    def _pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        limit = self.limits.max_inflight_requests
        if not self._paused or self._write_blocked or self._inflight > limit // 2:
            return
        self._paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
            asyncio.get_running_loop().call_soon(self._process)  # frames buffered meanwhile

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._on_close()
        self.core.waiters.drop_owner(self)
        self.core.progress.drop_owner(self)
        if self.worker is not None:
            self.core.workforce.worker_left(self.worker, self._end_reason or "worker lost")
        self.host.session_closed(self)

    # -- sending -----------------------------------------------------------------------
    def send(self, frame: dict[str, Any]) -> None:
        """Queue a frame; all frames queued in this loop iteration go out in one write."""
        if self.closed:
            return
        try:
            data = self.conn.send(frame)
        except LocalProtocolError as exc:
            log.error("refusing to send a bad frame to %s: %s", self.peer, exc)
            rid = frame.get("rid")
            data = self.conn.error(
                ErrorCode.INTERNAL, str(exc), rid if isinstance(rid, int) else None
            )
        self.send_raw(data)

    def send_raw(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def send_batch(self, kind: str, key: str, items: list[Any]) -> None:
        """Send ``{"t": kind, key: items}``, split over several frames if one is too big
        (Limits keeps one job's payload well under a frame, so one item always fits)."""
        for data in split_to_fit(items, lambda part: self.conn.send({"t": kind, key: part})):
            self.send_raw(data)

    def _flush(self) -> None:
        if self.worker is not None and not self._flush_held and self.core.dispatcher.pass_due:
            # a report's ACKED freed credit and the pass it triggered runs next turn: wait
            # for it, so that the ACKED and the DISPATCH that follows leave in one write
            # (one wake-up of the worker instead of two; half the writes of a 1-slot one)
            self._flush_held = True
            asyncio.get_running_loop().call_soon(self._flush)
            return
        self._flush_held = False
        self._flush_scheduled = False
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()
        if self.conn.state is ConnState.CLOSED:
            self.close()

    def error(
        self, code: str, message: str, rid: int | None = None, fld: str | None = None, **extra: Any
    ) -> None:
        # bounded: a message that quotes the input (a path of huge map keys) must still fit
        message = message if len(message) <= MAX_ERROR_REPLY else message[:MAX_ERROR_REPLY] + "..."
        frame: dict[str, Any] = {"t": "error", **extra, "code": code, "message": message}
        if rid is not None:
            frame["rid"] = rid
        if fld is not None:
            frame["field"] = fld
        self.send(frame)

    def fatal(self, code: str, message: str) -> None:
        """Send an ERROR with a fatal code, then close."""
        if self.closed:
            return
        self.error(code, message)
        self.close()

    def credentials_ended(self, reason: str) -> int:
        """The token was revoked, removed or expired: close with ERROR unauthorized.
        Returns how many jobs the connection's worker held (they go back to their queues)."""
        if self.closed:
            return 0
        held = len(self.worker.holding) if self.worker is not None else 0
        self._end_reason = reason
        self.fatal(ErrorCode.UNAUTHORIZED, reason)
        if self.worker is not None:
            # its jobs go back now, not when the TLS close completes (a peer that does not
            # read could hold that off): nothing more it sends is read anyway
            self.core.workforce.worker_left(self.worker, reason)
        return held

    def goodbye(self, reason: str) -> None:
        self.send({"t": "goodbye", "reason": reason})
        self.close()

    def close(self) -> None:
        """Close after writing every frame already queued (replies to pipelined requests)."""
        if self.closed and (self.transport is None or self.transport.is_closing()):
            return
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            if self._out:
                self.transport.write(b"".join(self._out))
                self._out.clear()
            self.transport.close()

    # -- receiving ---------------------------------------------------------------------
    def _on_frame(self, frame: dict[str, Any]) -> None:
        self._last_frame = asyncio.get_running_loop().time()
        ftype = FrameType(frame["t"])
        if self._role is None:
            self._hello(frame)
            return
        rid = frame.get("rid")
        rid = rid if isinstance(rid, int) and not isinstance(rid, bool) else None
        if not may_send(self._role, ftype):
            self.core.metrics["forbidden"] += 1
            self.error(
                ErrorCode.FORBIDDEN, f"role {self._role.value} may not send {ftype.value}", rid
            )
            return
        route = ROUTES[ftype]  # may_send allows no role a frame that only the broker sends
        try:
            reply = route(self, frame)
        except BrokerError as exc:
            self.error(exc.code, exc.message, rid, exc.field, **exc.details())
            return
        except Exception:  # a bug: this request fails, the connection and the broker go on
            log.exception("%s from %s failed", ftype.value, self.peer)
            self.error(ErrorCode.INTERNAL, "internal broker error", rid)
            return
        if reply is not None:
            self._spawn(reply, rid)

    def _hello(self, frame: dict[str, Any]) -> None:
        token = frame.get("token")
        address = self.peer.rpartition(":")[0]
        try:
            info = self.core.logins.login(token, address, peer=self.peer, http=False)
        except TooManyFailures as exc:
            self.error(exc.code, exc.message, retry_after=exc.retry_after)
            self.close()
            return
        except AuthenticationError as exc:
            self.fatal(exc.code, exc.message)
            return
        self._role = info.role
        self.token_name = info.name
        self.token_digest = hash_token(str(token))
        # kept for logs, stats and worker ids: at most 100 characters of a safe set
        self.client_name = _UNSAFE_NAME.sub("_", str(frame.get("name", "")))[:MAX_CLIENT_NAME]
        self.session_id = self.host.new_session_id()
        wanted = frame.get("features") or ()
        self.features = frozenset(f for f in wanted if f in FEATURES)
        config, limits = self.core.config, self.limits
        self.send_raw(
            self.conn.accept(
                {
                    "session": self.session_id,
                    "role": info.role.value,
                    "server": self.host.name,
                    "max_frame_size": limits.max_frame_size,
                    "heartbeat": config.heartbeat,
                    "lease": config.lease,
                    "features": sorted(self.features),
                    "limits": limits.announced(),
                }
            )
        )

    def _spawn(self, coro: Coroutine[Any, Any, None], rid: int | None) -> None:
        self._inflight += 1
        if self._inflight >= self.limits.max_inflight_requests:
            self._pause_reading()
        self.core.spawn(self._run(coro, rid))

    async def _run(self, coro: Coroutine[Any, Any, None], rid: int | None) -> None:
        try:
            await coro
        except BrokerError as exc:
            self.error(exc.code, exc.message, rid, exc.field, **exc.details())
        except Exception:
            log.exception("request from %s failed", self.peer)
            self.error(ErrorCode.INTERNAL, "internal broker error", rid)
        finally:
            self._inflight -= 1
            self._maybe_resume_reading()

    def take_submit_budget(self, n: int) -> bool:
        """Token bucket on submitted jobs per second (when a limit is configured)."""
        rate = self.limits.submits_per_second
        if rate <= 0:
            return True
        now = asyncio.get_running_loop().time()
        burst = max(rate, float(n))
        self._submit_tokens = min(burst, self._submit_tokens + (now - self._submit_stamp) * rate)
        if self._submit_stamp == 0.0:
            self._submit_tokens = burst
        self._submit_stamp = now
        if self._submit_tokens < n:
            return False
        self._submit_tokens -= n
        return True

    def _check_timeouts(self) -> None:
        loop = asyncio.get_running_loop()
        if self.closed:
            return
        if self._role is None:
            log.info("dropping %s: no hello within %.1fs", self.peer, self.limits.handshake_timeout)
            self.fatal(ErrorCode.HANDSHAKE_TIMEOUT, "no hello in time")
            return
        idle = loop.time() - self._last_frame
        timeout = self.limits.idle_timeout
        if self.worker is None and not self.waits and idle >= timeout:
            self.fatal(ErrorCode.IDLE_TIMEOUT, f"idle for {timeout:.0f}s")
            return
        self._timer = loop.call_later(max(1.0, timeout - idle), self._check_timeouts)
