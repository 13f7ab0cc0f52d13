"""PostgreSQL for the tests: a fresh schema per test, dropped after.

The tests that need a server read its URL from ``CONVEYOR_TEST_POSTGRES`` (CI sets it:
``.ci/run``); without it they skip and say how to run them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.stores.postgres import PostgresStore

ENV = "CONVEYOR_TEST_POSTGRES"
HOW = f"set {ENV}=postgresql://... to run the PostgreSQL tests"


def base_url() -> str:
    """The server's URL, or skip the test."""
    url = os.environ.get(ENV, "").strip()
    if not url:
        pytest.skip(HOW)
    return url


def with_schema(url: str, schema: str, **options: object) -> str:
    sep = "&" if "?" in url else "?"
    extra = "".join(f"&{k}={v}" for k, v in options.items())
    return f"{url}{sep}schema={schema}{extra}"


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def fresh_schema(**options: object) -> Iterator[str]:
    """A store URL on a schema no other test uses (random name), dropped afterwards."""
    url = base_url()
    schema = f"test_{secrets.token_hex(6)}"
    try:
        yield with_schema(url, schema, **options)
    finally:
        drop_schema(url, schema)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL store URL on a fresh schema (skips without a server)."""
    with fresh_schema() as url:
        yield url


OPENED_AT = 1_700_000_000.0  # the time the ``store`` fixture opens its engine at


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    """A PostgreSQL engine on a fresh schema, opened at :data:`OPENED_AT`."""
    engine = PostgresStore(pg_url)
    await engine.open(OPENED_AT)
    try:
        yield engine
    finally:
        await engine.close()


#: the engines a broker-level test runs on, as fixture params
ENGINE_PARAMS = ["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@contextmanager
def engine_url(engine: str, sqlite_path: object) -> Iterator[str]:
    """A store URL for ``engine`` (one of :data:`ENGINE_PARAMS`)."""
    if engine == "memory":
        yield "memory://"
    elif engine == "sqlite":
        yield f"sqlite:///{sqlite_path}"
    else:
        with fresh_schema() as url:
            yield url


@pytest.fixture
async def two_brokers(home: Path, pg_url: str) -> AsyncIterator[tuple[Broker, Broker]]:
    """Two brokers of one home on one PostgreSQL schema: one system (import it with
    ``pg_url`` into the test module)."""
    started: list[Broker] = []
    try:
        for _ in range(2):
            b = Broker(BrokerConfig(port=0, store_url=pg_url, home=home))
            await b.start()
            started.append(b)
        yield started[0], started[1]
    finally:
        for b in started:
            await b.stop()
