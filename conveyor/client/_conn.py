"""An asyncio connection to the broker: TLS, handshake, rid-matched replies, pushes.

Used by AsyncClient and by the worker. Frames written in one loop iteration leave
in one write. Frames the broker pushes (dispatch, abort, acked, goodbye) go to
``on_push``. When the connection drops, every pending request fails with
ConnectionLost; callers decide whether to reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

from conveyor.client._base import Endpoint, reply_error
from conveyor.errors import ConnectionLost, ProtocolError
from conveyor.protocol.connection import ClientConnection, ConnState

log = logging.getLogger("conveyor.client")
Push = Callable[[dict[str, Any]], None]


class AsyncConnection:
    def __init__(self, endpoint: Endpoint, on_push: Push | None = None, agent: str = "") -> None:
        self.endpoint = endpoint
        self.on_push = on_push
        self.agent = agent
        self.welcome: dict[str, Any] = {}
        self._conn = ClientConnection()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._rids = itertools.count(1)
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._read_task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    async def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        ep = self.endpoint
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                ep.host,
                ep.port,
                ssl=ep.ssl_context,
                server_hostname=ep.host,
                limit=2**20,
            ),
            timeout,
        )
        self._reader, self._writer = reader, writer
        try:
            writer.write(self._conn.hello(ep.token, ep.name, self.agent))
            welcome = await asyncio.wait_for(self._read_frame(), timeout)
            if welcome is None:
                raise ConnectionLost("the broker closed the connection during the handshake")
            err = reply_error(welcome)
            if err is not None:
                raise err
        except BaseException:
            writer.close()  # refused, timed out or cut off: do not leak the socket
            raise
        self.welcome = welcome
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop())
        return welcome

    async def _read_frame(self) -> dict[str, Any] | None:
        assert self._reader is not None
        while True:
            frame = self._conn.next_frame()
            if frame is not None:
                return frame
            if self._conn.state is ConnState.CLOSED:
                return None
            data = await self._reader.read(262144)
            self._conn.receive_data(data)

    async def _read_loop(self) -> None:
        try:
            while True:
                frame = await self._read_frame()
                if frame is None:
                    break
                rid = frame.get("rid")
                fut = self._pending.pop(rid, None) if isinstance(rid, int) else None
                if fut is not None:
                    if not fut.done():
                        fut.set_result(frame)
                elif self.on_push is not None:
                    self.on_push(frame)
                elif frame.get("t") == "error":
                    log.warning("broker error: %s: %s", frame.get("code"), frame.get("message"))
        except (OSError, ProtocolError, asyncio.IncompleteReadError) as exc:
            log.debug("connection lost: %s", exc)
        finally:
            self._fail_pending()
            self.closed.set()
            if self._writer is not None:
                self._writer.close()

    def _fail_pending(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost("the connection to the broker was lost"))
        self._pending.clear()

    def send(self, frame: dict[str, Any]) -> None:
        """Queue a frame without waiting for a reply (coalesced writes)."""
        if self.closed.is_set() or self._writer is None:
            raise ConnectionLost("not connected to the broker")
        self._out.append(self._conn.send(frame))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._writer is not None and not self._writer.is_closing():
            self._writer.write(b"".join(self._out))
        self._out.clear()

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a request and await its reply; ERROR replies raise BrokerError."""
        rid = next(self._rids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            self.send({**frame, "rid": rid})
        except Exception:
            self._pending.pop(rid, None)
            raise
        reply = await fut
        err = reply_error(reply)
        if err is not None:
            raise err
        return reply

    async def drain(self) -> None:
        self._flush()
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
