"""PostgreSQL for the tests: a fresh schema per test, dropped after.

The tests that need a server read its URL from ``CONVEYOR_TEST_POSTGRES`` (CI sets it:
``.ci/run``); without it they skip and say how to run them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

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
