"""A bare connection to a broker that speaks frames (or raw bytes) with no client library
logic in between: what hostile-input and role tests need to say exactly what they mean."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

from conveyor.protocol.codec import EOF, FrameDecoder, encode_frame
from conveyor.protocol.frames import PROTOCOL_VERSION
from conveyor.security.tls import client_context

BIG = 2**31  # encode/decode limit for frames we build (or receive) on purpose


def admin_token(home: Path) -> str:
    return (home / "admin.token").read_text().strip()


class Raw:
    """A bare connection (TLS unless told otherwise) speaking raw bytes and frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(max_frame_size=BIG)  # read whatever the broker sends
        self._rid = 1000

    @classmethod
    async def open(
        cls,
        port: int,
        home: Path,
        *,
        tls: bool = True,
        hello: bool = False,
        token: str | None = None,
        rcvbuf: int = 0,
        source: str | None = None,
    ) -> Raw:
        """Connect; with ``hello`` (the admin token) or ``token``, also do HELLO/WELCOME.
        ``source`` binds the client's end to another loopback address (127.0.0.2 …), to
        come from somewhere else."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source is not None:
            sock.bind((source, 0))
        if rcvbuf:  # a small receive window: the broker's replies back up quickly
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    sock=sock,
                    ssl=client_context(home / "ca.pem") if tls else None,
                    server_hostname="127.0.0.1" if tls else None,
                ),
                5,
            )
        except BaseException:
            sock.close()
            raise
        raw = cls(reader, writer)
        if hello and token is None:
            token = admin_token(home)
        if token is not None:
            welcome = await raw.hello(token)
            assert welcome is not None and welcome["t"] == "welcome", welcome
        return raw

    def rid(self) -> int:
        self._rid += 1
        return self._rid

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, frame: dict[str, Any]) -> None:
        self.writer.write(encode_frame(frame, BIG))

    async def hello(self, token: str, v: int = PROTOCOL_VERSION) -> dict[str, Any] | None:
        self.send({"t": "hello", "v": v, "token": token, "name": "raw"})
        return await self.recv()

    async def recv(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next frame, or None once the broker closed the connection."""
        async with asyncio.timeout(timeout):
            while True:
                frame = self.decoder.next_frame()
                if isinstance(frame, dict):
                    return frame
                if frame is EOF:
                    return None
                try:
                    data = await self.reader.read(65536)
                except OSError:  # includes ConnectionError and ssl.SSLError
                    data = b""
                self.decoder.receive_data(data)

    async def until(self, rid: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Every frame up to and including the first that carries ``rid``."""
        seen: list[dict[str, Any]] = []
        while True:
            frame = await self.recv(timeout)
            assert frame is not None, f"connection closed before a reply to rid {rid}: {seen}"
            seen.append(frame)
            if frame.get("rid") == rid:
                return seen

    async def ping(self) -> None:
        """The connection still works: a PING gets its PONG."""
        rid = self.rid()
        self.send({"t": "ping", "rid": rid})
        assert (await self.until(rid))[-1]["t"] == "pong"

    async def expect_fatal(self, code: str) -> dict[str, Any]:
        """An ERROR with ``code``, then the broker closes the connection."""
        frame = await self.recv()
        assert frame is not None, f"closed without an ERROR {code}"
        assert (frame["t"], frame["code"]) == ("error", code), frame
        assert await self.recv() is None, "the broker kept the connection open"
        return frame

    async def close(self) -> None:
        self.writer.transport.abort()  # gone at once, whatever state TLS is in
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1)
