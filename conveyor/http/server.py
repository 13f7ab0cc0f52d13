"""The HTTP server, embedded: uvicorn running the ASGI app on the broker's own event loop.

The socket is bound here (so a port in use is reported like the broker's own port), TLS
uses the broker's certificate when asked, and uvicorn is kept from installing signal
handlers: the broker process owns SIGINT and SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from conveyor.broker.core import BrokerCore
from conveyor.broker.history import History

log = logging.getLogger("conveyor.http")


class _Embedded(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the broker handles signals; uvicorn must not take them over


class HttpServer:
    """``await start()`` binds and serves; ``await stop()`` finishes open requests and ends."""

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        certfile: Path | None = None,
        keyfile: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = certfile is not None
        self._config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            ssl_certfile=str(certfile) if certfile else None,
            ssl_keyfile=str(keyfile) if keyfile else None,
            timeout_graceful_shutdown=2,
            server_header=False,
        )
        self._server = _Embedded(self._config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.listen(512)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)  # uvicorn sets `started` once it listens
        if self._task.done():
            self._task.result()  # raises what went wrong
        log.info("HTTP API and dashboard on %s", self.url)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self._task, 5)


async def serve(core: BrokerCore, history: History) -> HttpServer:
    """Build the app over a broker's core and serve it as the broker's config says."""
    from importlib.metadata import PackageNotFoundError, version

    from conveyor.http.api import Context
    from conveyor.http.app import create
    from conveyor.http.metrics import Metrics

    config = core.config
    try:
        release = version("conveyor")
    except PackageNotFoundError:
        release = "0+unknown"
    cert = config.cert_file or config.home / "server.pem"
    key = config.key_file or config.home / "server.key"
    ctx = Context(core, history, Metrics(core), cert, config.http_tls, release)
    server = HttpServer(
        create(ctx),
        config.http_host,
        config.http_port or 0,
        certfile=cert if config.http_tls else None,
        keyfile=key if config.http_tls else None,
    )
    await server.start()
    return server
