"""The PostgreSQL engine's connections: its URL, two pools, one way to run a statement.

``postgresql://user@host:port/db?schema=NAME&pool=8&…``: the engine's own options
(:data:`OPTIONS`) come out of the query, the rest (``sslmode`` …) goes to libpq. Every
connection is in autocommit mode (each statement its own transaction), has the schema on
its ``search_path``, the broker's id in the ``conveyor.broker`` setting (the triggers put
it in their notifications) and ``conveyor/<schema>/<broker id>`` as its
``application_name`` (``pg_stat_activity`` shows who is who). The *fast* pool commits
with ``synchronous_commit=off``: for claims, promotions and heartbeats, which the store
contract lets be lost.

:meth:`Connections.run` executes one statement and fetches its rows. A lost connection
(a database restart, ``pg_terminate_backend``) is tried once more on a fresh one; then it
is :class:`~conveyor.errors.StoreUnavailable`, also when no connection can be had within
``pool_timeout`` seconds, so callers see an error, never a hang.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from conveyor.errors import ConfigError, StoreUnavailable
from conveyor.stores.sql.pg_schema import check_schema_name

log = logging.getLogger("conveyor.store")

DEFAULT_SCHEMA = "conveyor"
FLAP_WINDOW = 30.0  # seconds after a recovery in which a new outage is logged at INFO
#: engine options in the URL's query, with their defaults; the rest go to libpq
OPTIONS: dict[str, float] = {
    "pool": 8,  # connections for durable writes and reads
    "heartbeat": 1.0,  # seconds between a broker's heartbeats (and lease renewals)
    "dead_after": 10.0,  # a broker silent this long is gone: its lapsed leases are rescued
    "lease_grace": 5.0,  # ... once they lapsed this long ago
    "connect_timeout": 5.0,  # seconds to connect before saying the database is unavailable
    "pool_timeout": 10.0,  # seconds a call waits for a free connection (busy or unreachable)
}


def parse_postgres_url(url: str) -> tuple[str, str, dict[str, float]]:
    """``postgresql://…?schema=x&pool=8`` → (libpq URL without our options, schema, options)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"bad PostgreSQL store URL {url!r}: use postgresql://user@host/db")
    schema = DEFAULT_SCHEMA
    options = dict(OPTIONS)
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "schema":
            schema = check_schema_name(value)
        elif name in OPTIONS:
            try:
                options[name] = float(value)
            except ValueError:
                raise ConfigError(f"bad PostgreSQL store URL: {name} must be a number") from None
            if options[name] <= 0:
                raise ConfigError(f"bad PostgreSQL store URL: {name} must be positive")
        else:
            rest.append((name, value))
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), ""))
    return conninfo, schema, options


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Connections:
    """The two pools and the engine's health; see the module docstring."""

    def __init__(self, conninfo: str, schema: str, broker_id: str, options: dict[str, float]):
        self.conninfo = conninfo
        self.schema = schema
        self.broker_id = broker_id
        self.options = options
        self.application_name = f"conveyor/{schema}/{broker_id}"
        self._pool: AsyncConnectionPool | None = None
        self._fast: AsyncConnectionPool | None = None
        self.error: str | None = None
        self.since: float | None = None
        self.failures = 0
        self._back_at = -FLAP_WINDOW  # when the last outage ended (monotonic)
        self._quiet = False  # the outage now began right after the last: logged at INFO

    def kwargs(self, fast: bool = False, schema: bool = True) -> dict[str, Any]:
        """Connection settings (``schema=False``: before the schema exists)."""
        opts = f"-c search_path={self.schema} " if schema else ""
        opts += f"-c conveyor.broker={self.broker_id}"
        if fast:
            opts += " -c synchronous_commit=off"
        return {
            "autocommit": True,
            "application_name": self.application_name,
            "options": opts,
            "connect_timeout": max(1, int(self.options["connect_timeout"])),
            "prepare_threshold": 0,  # every statement is a hot one: prepare at first use
        }

    async def connect(self, schema: bool = True) -> psycopg.AsyncConnection[Any]:
        """One connection of its own (migrations, LISTEN)."""
        return await psycopg.AsyncConnection.connect(self.conninfo, **self.kwargs(schema=schema))

    async def open(self) -> None:
        size = int(self.options["pool"])
        self._pool = self._new_pool(size, fast=False)
        self._fast = self._new_pool(max(2, size // 2), fast=True)
        await self._pool.open(wait=True)
        await self._fast.open(wait=True)

    async def close(self) -> None:
        for pool in (self._fast, self._pool):
            if pool is not None:
                await pool.close()

    def _new_pool(self, size: int, fast: bool) -> AsyncConnectionPool:
        return AsyncConnectionPool(
            self.conninfo,
            min_size=1,
            max_size=size,
            kwargs=self.kwargs(fast),
            timeout=self.options["pool_timeout"],
            open=False,
            name=f"conveyor-{'fast' if fast else 'main'}",
        )

    @contextlib.asynccontextmanager
    async def connection(self, fast: bool = False) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        pool = self._fast if fast else self._pool
        if pool is None:
            raise RuntimeError("the PostgreSQL store is not open: await store.open(now) first")
        async with pool.connection() as conn:
            yield conn

    async def run(self, query: str, params: Any = None, *, fast: bool = False) -> list[Any]:
        """Execute one statement and fetch its rows (see the module docstring)."""
        started = time.monotonic()
        for attempt in (1, 2):
            try:
                async with self.connection(fast) as conn:
                    cur = await conn.execute(query, params)
                    rows = await cur.fetchall() if cur.description else []
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if attempt == 2 or isinstance(exc, PoolTimeout):
                    self._failed(exc, started)
                    raise StoreUnavailable.because(
                        f"PostgreSQL: {first_line(exc)}", kept=False
                    ) from exc
                pool = self._fast if fast else self._pool
                if pool is not None:
                    await pool.check()  # drop the other dead connections too
                continue
            except psycopg.errors.DeadlockDetected:
                if attempt == 2:
                    raise
                continue  # two brokers changed the same jobs in opposite orders: once more
            self._recovered()
            return rows
        raise AssertionError("unreachable")

    def _failed(self, exc: BaseException, started: float) -> None:
        if started < self._back_at:
            return  # a call from before the database came back (it waited for the pool)
        self.failures += 1
        if self.error is None:
            self.since = time.time()
            # a database coming back flaps (one pool has reconnected, the other's next
            # connection fails): an outage soon after the last one is not news again
            self._quiet = time.monotonic() - self._back_at < FLAP_WINDOW
            log.log(
                logging.INFO if self._quiet else logging.WARNING,
                "PostgreSQL store unavailable%s: %s; requests fail until it is back",
                " again" if self._quiet else "",
                first_line(exc),
            )
        self.error = first_line(exc)

    def _recovered(self) -> None:
        if self.error is not None:
            log.log(
                logging.INFO if self._quiet else logging.WARNING,
                "PostgreSQL store available again (%d failed calls)",
                self.failures,
            )
            self.error, self.since, self.failures = None, None, 0
            self._back_at = time.monotonic()

    def health(self) -> dict[str, Any]:
        return {
            "writable": self.error is None,
            "error": self.error,
            "since": self.since,
            "failed_attempts": self.failures,
        }
