"""The broker process: builds the store, the core service, the TLS server and the
background services, and wires them together. It holds no policy of its own."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import secrets
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

from conveyor.broker.config import BrokerConfig
from conveyor.broker.core import BrokerCore
from conveyor.broker.dispatch import Dispatcher
from conveyor.broker.events import BrokerEvent
from conveyor.broker.history import History
from conveyor.broker.maintenance import (
    LeaseReaper,
    LoginReport,
    Promoter,
    RetentionCleaner,
    Service,
)
from conveyor.broker.scheduler import Scheduler
from conveyor.broker.server import TLSServer
from conveyor.broker.session import Session
from conveyor.broker.tokenwatch import TokenWatch
from conveyor.clock import SYSTEM_CLOCK, Clock
from conveyor.errors import ConfigError
from conveyor.security.tls import server_context
from conveyor.security.tokens import TokenRegistry
from conveyor.stores import open_store
from conveyor.stores.base import Store

log = logging.getLogger("conveyor.broker")


class Broker:
    """One broker process. ``await start()``, then ``port`` is the bound port."""

    def __init__(
        self, config: BrokerConfig, store: Store | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.config = config
        self.clock = clock
        self.name = config.name
        tokens = TokenRegistry(config.tokens_file or config.home / "tokens.json")
        self.core = BrokerCore(
            config, store if store is not None else open_store(config.store_url), tokens, clock
        )
        self.sessions: set[Session] = set()
        self._session_prefix = secrets.token_hex(4)
        self._session_seq = 0
        ctx = server_context(
            config.cert_file or config.home / "server.pem",
            config.key_file or config.home / "server.key",
            config.client_ca_file,
        )
        self.server = TLSServer(
            config.host,
            config.port,
            ctx,
            lambda peer, on_close: Session(self.core, self, peer, on_close),
            config.limits,
            self.core.metrics,
        )
        self.reaper = LeaseReaper(self.core, clock)
        self.reaper.interval = min(1.0, config.lease / 4, config.deadline_grace / 2)
        self.promoter = Promoter(self.core, clock)
        self.cleaner = RetentionCleaner(self.core, clock)
        self.history = History(self.core, clock)
        self.scheduler = Scheduler(self.core, clock)
        self.core.schedules.on_changed = self.scheduler.wake
        self._changed = asyncio.Event()
        self.tokenwatch = TokenWatch(self.core, clock, lambda: self.sessions, self._changed.set)
        self.core.on_scheduled = self.promoter.wake
        self.core.on_tokens_changed = self.tokenwatch.wake
        self._services: tuple[Service, ...] = (
            self.reaper,
            self.promoter,
            self.scheduler,
            self.cleaner,
            self.history,
            self.tokenwatch,
            LoginReport(self.core, clock),
        )
        self.http: Any = None  # conveyor.http.server.HttpServer, when config.http_port is set
        self._stopped = asyncio.Event()
        self.core.hub.subscribe(self._on_event)
        self.core.dispatcher.on_dispatch = self._changed.set
        self.core.gauges["connections"] = lambda: len(self.sessions)
        self.core.gauges["jobs_per_second"] = lambda: round(self.history.jobs_per_second(), 3)

    # -- handy views (tests and tools) ---------------------------------------------------
    @property
    def store(self) -> Store:
        return self.core.store

    @property
    def dispatcher(self) -> Dispatcher:
        return self.core.dispatcher

    @property
    def metrics(self) -> Counter[str]:
        return self.core.metrics

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"conveyor://{host}:{self.port}"

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        # The SQLite writer thread must get the GIL back quickly after each statement, or
        # commits (and so every acknowledgement) wait behind a busy event loop; 5 ms is
        # Python's default hand-over interval, 1 ms keeps commit latency low.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
        await self.core.open()
        try:
            await self.server.start()
        except OSError as exc:
            await self.core.close()
            config = self.config
            raise ConfigError(_bind_error(config.host, config.port, exc, "--port")) from exc
        self.core.info.update(url=self.url, store=self.store.url)
        for service in self._services:
            service.start()
        log.info("broker listening on %s (store %s)", self.url, self.store.url)
        if self.config.http_port is not None:
            await self._start_http()

    async def _start_http(self) -> None:
        from conveyor.http.server import serve  # the HTTP stack loads only if it is used

        try:
            self.http = await serve(self.core, self.history)
        except OSError as exc:
            await self.stop()
            config = self.config
            message = _bind_error(config.http_host, config.http_port or 0, exc, "--http-port")
            raise ConfigError(f"HTTP API: {message}, or serve none with --no-http") from exc
        self.core.info["http"] = self.http.url

    @property
    def dashboard_url(self) -> str | None:
        return None if self.http is None else str(self.http.url)

    async def stop(self) -> None:
        """Stop accepting, say goodbye to every client, flush the store."""
        if self.http is not None:
            await self.http.stop()
        await self.server.stop()
        for service in self._services:
            await service.stop()
        for session in list(self.sessions):
            session.goodbye("shutting down")
        # let the closed connections run their callbacks (a lost worker's requeue is a
        # task) before the store closes under them
        with contextlib.suppress(TimeoutError):
            await self.wait_until(lambda: not self.sessions, 2.0)
        await self.core.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def _on_event(self, event: BrokerEvent) -> None:
        self._changed.set()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds, re-checking whenever the broker changes."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    # -- the session host ----------------------------------------------------------------
    def new_session_id(self) -> str:
        self._session_seq += 1
        return f"{self._session_prefix}-{self._session_seq}"

    def session_opened(self, session: Session) -> None:
        self.sessions.add(session)
        self.core.metrics["connections_total"] += 1

    def session_closed(self, session: Session) -> None:
        self.sessions.discard(session)
        self._changed.set()


def _bind_error(host: str, port: int, exc: OSError, flag: str) -> str:
    """One line that says what could not listen, why, and which option to change."""
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: port {port} is already in use (another broker?); "
            f"stop it or pick another port with {flag}"
        )
    return f"cannot listen on {where}: {exc.strerror or exc}; check --host and {flag}"
