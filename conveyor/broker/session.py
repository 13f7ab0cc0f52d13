"""One client connection on the broker: bytes → frames → handlers, replies → bytes.

The session enforces the handshake (via the sans-IO ServerConnection), checks the
token and the role's permissions for every frame, and runs each request's handler.
Replies are coalesced: frames queued during one loop iteration leave in one write
(one TLS record), which is what makes small jobs cheap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from conveyor.broker.handlers import HANDLERS
from conveyor.errors import BrokerError, LocalProtocolError, RemoteProtocolError
from conveyor.protocol.connection import ConnState, ServerConnection
from conveyor.protocol.frames import ErrorCode, FrameType
from conveyor.security.roles import may_send
from conveyor.security.tokens import Role

if TYPE_CHECKING:
    from conveyor.broker.app import Broker
    from conveyor.broker.dispatch import WorkerRef

log = logging.getLogger("conveyor.broker")


class Session(asyncio.Protocol):
    """The broker's side of one TLS connection."""

    def __init__(self, broker: Broker, peer: str, on_close: Callable[[], None]) -> None:
        self.broker = broker
        self.peer = peer
        self._on_close = on_close
        self.conn = ServerConnection(broker.config.limits.max_frame_size)
        self.transport: asyncio.Transport | None = None
        self.role: Role | None = None
        self.token_name = ""
        self.client_name = ""
        self.session_id = ""
        self.worker: WorkerRef | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._inflight = 0
        self._paused = False  # reading paused: too many requests in flight, or write_blocked
        self._write_blocked = False  # the transport's write buffer is above its high-water mark
        self._timer: asyncio.TimerHandle | None = None
        self._last_frame = 0.0
        self._submit_tokens = 0.0
        self._submit_stamp = 0.0
        self.closed = False
        self.waits = 0  # WAIT requests this session has outstanding

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's SSL transport is not an asyncio.Transport subclass, but quacks like one
        self.transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self._last_frame = loop.time()
        self._timer = loop.call_later(
            self.broker.config.limits.handshake_timeout, self._check_timeouts
        )
        self.broker.session_opened(self)

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
        self.broker.metrics["write_paused"] += 1
        self._write_blocked = True
        self._pause_reading()
        self.broker.changed()

    def resume_writing(self) -> None:
        self._write_blocked = False
        self._maybe_resume_reading()

    def _pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        limit = self.broker.config.limits.max_inflight_requests
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
        self.broker.session_closed(self)

    # -- sending -----------------------------------------------------------------------
    def send(self, frame: dict[str, Any]) -> None:
        """Queue a frame; all frames queued in this loop iteration go out in one write."""
        if self.closed:
            return
        try:
            self._out.append(self.conn.send(frame))
        except LocalProtocolError as exc:
            log.error("refusing to send a bad frame to %s: %s", self.peer, exc)
            rid = frame.get("rid")
            self._out.append(self.conn.error(ErrorCode.INTERNAL, str(exc), rid))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()
        if self.conn.state is ConnState.CLOSED:
            self.close()

    def error(
        self, code: str, message: str, rid: int | None = None, fld: str | None = None
    ) -> None:
        frame: dict[str, Any] = {"t": "error", "code": code, "message": message}
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
        self._flush()
        self.close()

    def goodbye(self, reason: str) -> None:
        self.send({"t": "goodbye", "reason": reason})
        self._flush()
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- receiving ---------------------------------------------------------------------
    def _on_frame(self, frame: dict[str, Any]) -> None:
        self._last_frame = asyncio.get_running_loop().time()
        ftype = FrameType(frame["t"])
        if self.role is None:
            self._hello(frame)
            return
        rid = frame.get("rid")
        if not may_send(self.role, ftype):
            self.broker.metrics["forbidden"] += 1
            self.error(
                ErrorCode.FORBIDDEN,
                f"role {self.role.value} may not send {ftype.value}",
                rid if isinstance(rid, int) else None,
            )
            return
        handler = HANDLERS.get(ftype)
        if handler is None:  # a reply type sent by a client
            self.fatal(ErrorCode.BAD_FRAME, f"{ftype.value} frames are sent by the broker only")
            return
        try:
            coro = handler(self, frame)
        except BrokerError as exc:
            self.error(exc.code, exc.message, rid, exc.field)
            return
        if coro is not None:
            self._spawn(coro, rid)

    def _hello(self, frame: dict[str, Any]) -> None:
        broker = self.broker
        info = broker.authenticate(frame.get("token"))
        if info is None:
            log.warning("rejected bad token from %s", self.peer)
            broker.metrics["auth_failures"] += 1
            self.fatal(ErrorCode.UNAUTHORIZED, "unknown, revoked or expired token")
            return
        self.role = info.role
        self.token_name = info.name
        self.client_name = str(frame.get("name", ""))[:100]
        self.session_id = broker.new_session_id()
        self.send_raw(
            self.conn.accept(
                {
                    "session": self.session_id,
                    "role": info.role.value,
                    "server": broker.config.name,
                    "max_frame_size": broker.config.limits.max_frame_size,
                    "heartbeat": broker.config.heartbeat,
                }
            )
        )

    def send_batch(self, kind: str, key: str, items: list[Any]) -> None:
        """Send ``{"t": kind, key: items}``, split over several frames if one is too big."""
        try:
            data = self.conn.send({"t": kind, key: items})
        except LocalProtocolError as exc:
            if exc.code != "frame_too_large" or len(items) == 1:
                raise  # Limits keeps one job's payload well under a frame
            mid = len(items) // 2
            self.send_batch(kind, key, items[:mid])
            self.send_batch(kind, key, items[mid:])
            return
        self.send_raw(data)

    def send_raw(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _spawn(self, coro: Coroutine[Any, Any, None], rid: Any) -> None:
        self._inflight += 1
        if self._inflight >= self.broker.config.limits.max_inflight_requests:
            self._pause_reading()
        task = asyncio.get_running_loop().create_task(self._run(coro, rid))
        self.broker.tasks.add(task)
        task.add_done_callback(self.broker.tasks.discard)

    async def _run(self, coro: Coroutine[Any, Any, None], rid: Any) -> None:
        try:
            await coro
        except BrokerError as exc:
            self.error(exc.code, exc.message, rid if isinstance(rid, int) else None, exc.field)
        except Exception:
            log.exception("handler failed for %s", self.peer)
            self.error(ErrorCode.INTERNAL, "internal broker error", rid)
        finally:
            self._inflight -= 1
            self._maybe_resume_reading()

    def take_submit_budget(self, n: int) -> bool:
        """Token bucket on submitted jobs per second (when a limit is configured)."""
        rate = self.broker.config.limits.submits_per_second
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
        limits = self.broker.config.limits
        if self.closed:
            return
        if self.role is None:
            log.info("dropping %s: no hello within %.1fs", self.peer, limits.handshake_timeout)
            self.fatal(ErrorCode.HANDSHAKE_TIMEOUT, "no hello in time")
            return
        idle = loop.time() - self._last_frame
        if self.worker is None and not self.waits and idle >= limits.idle_timeout:
            self.fatal(ErrorCode.IDLE_TIMEOUT, f"idle for {limits.idle_timeout:.0f}s")
            return
        self._timer = loop.call_later(max(1.0, limits.idle_timeout - idle), self._check_timeouts)
