"""The listening socket: accept, enforce connection limits, refuse plaintext, start TLS.

Every accepted socket is first peeked at (without consuming a byte). A TLS client
opens with a handshake record (content type 0x16); anything else is a plaintext or
garbage client and is refused with a log line and a plaintext ERROR frame, before
any TLS state exists for it. TLS clients get the handshake with a deadline; a failed
handshake is logged and closed. None of this can stop the accept loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable

from conveyor.broker.config import Limits
from conveyor.protocol.codec import encode_frame

log = logging.getLogger("conveyor.broker")
TLS_HANDSHAKE_RECORD = 0x16
_PLAINTEXT_REFUSAL = encode_frame(
    {
        "t": "error",
        "code": "bad_frame",
        "message": "this broker only speaks TLS: connect with TLS (conveyor://host:port)",
    }
)


class TLSServer:
    """Accepts connections and hands TLS transports to ``protocol_factory(peer, on_close)``.

    The protocol must call ``on_close()`` once when its connection is lost, which
    frees the connection's slot in the limits.
    """

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        protocol_factory: Callable[[str, Callable[[], None]], asyncio.Protocol],
        limits: Limits,
        metrics: Counter[str],
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.protocol_factory = protocol_factory
        self.limits = limits
        self.metrics = metrics
        self.per_ip: Counter[str] = Counter()
        self.open_connections = 0
        self._sock: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(1024)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._accept_task = asyncio.get_running_loop().create_task(self._accept_loop())

    async def stop(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            await asyncio.wait([self._accept_task])  # a cancel of our caller still reaches it
        for task in list(self._pending):
            task.cancel()
        if self._sock is not None:
            self._sock.close()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            try:
                conn, addr = await loop.sock_accept(self._sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:  # EMFILE and friends: back off a little, keep serving
                log.error("accept failed: %s", exc)
                await asyncio.sleep(0.05)
                continue
            ip = str(addr[0])
            peer = f"{ip}:{addr[1]}"
            if not self._admit(ip):
                self.metrics["refused_limit"] += 1
                log.warning("refused connection from %s: connection limit", peer)
                conn.close()
                continue
            conn.setblocking(False)
            with contextlib.suppress(OSError):  # e.g. EINVAL (macOS) if the peer already reset
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Count the connection now, not when _serve starts: sock_accept returns without
            # yielding while the backlog holds connections, so a burst would all be admitted.
            self.open_connections += 1
            self.per_ip[ip] += 1
            task = loop.create_task(self._serve(conn, ip, peer))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _admit(self, ip: str) -> bool:
        if self.open_connections >= self.limits.max_connections:
            return False
        return self.per_ip[ip] < self.limits.max_connections_per_ip

    def release(self, ip: str) -> None:
        self.open_connections -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    async def _serve(self, conn: socket.socket, ip: str, peer: str) -> None:
        handed_over = False
        try:
            first = await self._peek(conn)
            if first is None:
                return
            if first != TLS_HANDSHAKE_RECORD:
                self.metrics["rejected_plaintext"] += 1
                log.warning("rejected non-TLS connection from %s", peer)
                with contextlib.suppress(OSError):
                    conn.recv(65536)  # consume what it sent, or close() would reset
                    conn.send(_PLAINTEXT_REFUSAL)
                    conn.shutdown(socket.SHUT_WR)
                return
            loop = asyncio.get_running_loop()
            try:
                await loop.connect_accepted_socket(
                    lambda: self.protocol_factory(peer, lambda: self.release(ip)),
                    conn,
                    ssl=self.ssl_context,
                    ssl_handshake_timeout=self.limits.handshake_timeout,
                )
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
                self.metrics["tls_failures"] += 1
                log.warning("TLS handshake with %s failed: %s", peer, exc or type(exc).__name__)
                return
            handed_over = True  # from now on the protocol's on_close releases the slot
        finally:
            if not handed_over:
                conn.close()
                self.release(ip)

    async def _peek(self, conn: socket.socket) -> int | None:
        """The first byte the client sent, without consuming it; None on EOF/timeout."""
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        fd = conn.fileno()

        def on_readable() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, on_readable)
        try:
            await asyncio.wait_for(readable, self.limits.handshake_timeout)
        except TimeoutError:
            self.metrics["handshake_timeouts"] += 1
            log.info(
                "dropping a connection that sent nothing for %.1fs", self.limits.handshake_timeout
            )
            return None
        finally:
            loop.remove_reader(fd)
        try:
            head = conn.recv(1, socket.MSG_PEEK)
        except OSError:
            return None
        return head[0] if head else None
