"""The database goes away under a running broker, and comes back.

PostgreSQL here is shared with other work, so it is not restarted: the broker runs as a
role of its own, and "the database is down" is that role refused (``NOLOGIN``) with every
backend of the broker's ``application_name`` terminated (``pg_terminate_backend``). While
it is down, producers get ``store_unavailable`` errors promptly (never a hang); when it is
back, the broker reconnects by itself, jobs acknowledged before survive, and the system
runs again (the runs that were in flight come back by the lease rescue).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from conveyor import AsyncClient, JobState
from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.errors import StoreUnavailable
from conveyor.stores.postgres import PostgresStore
from tests.conftest import StartWorker
from tests.postgres import base_url, drop_schema, with_schema

pytestmark = pytest.mark.postgres


class Database:
    """Switches a role's access to the database off and on."""

    def __init__(self, admin: str, role: str) -> None:
        self.admin = admin
        self.role = role

    def sql(self, query: str) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(query)  # type: ignore[arg-type]

    def down(self, application_prefix: str) -> None:
        self.sql(f'ALTER ROLE "{self.role}" NOLOGIN')
        self.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE application_name LIKE '{application_prefix}%'"
        )

    def up(self) -> None:
        self.sql(f'ALTER ROLE "{self.role}" LOGIN')


@pytest.fixture
def database() -> Iterator[tuple[Database, str]]:
    """A role of its own (trust auth) and a store URL for it on a fresh schema."""
    admin = base_url()
    role = f"conveyor_test_{secrets.token_hex(4)}"
    schema = f"test_{secrets.token_hex(6)}"
    db = Database(admin, role)
    dbname = urlsplit(admin).path.lstrip("/")
    db.sql(f'CREATE ROLE "{role}" LOGIN')
    db.sql(f'GRANT CREATE, CONNECT ON DATABASE "{dbname}" TO "{role}"')
    parts = urlsplit(admin)
    host = parts.netloc.rpartition("@")[2]
    url = urlunsplit((parts.scheme, f"{role}@{host}", parts.path, parts.query, ""))
    try:
        yield db, with_schema(url, schema, pool_timeout=2, connect_timeout=2, lease_grace=1)
    finally:
        db.up()
        drop_schema(admin, schema)
        db.sql(f'REVOKE ALL ON DATABASE "{dbname}" FROM "{role}"')
        db.sql(f'DROP OWNED BY "{role}"')
        db.sql(f'DROP ROLE "{role}"')


@pytest.fixture
def broker_config(home: Path, database: tuple[Database, str]) -> BrokerConfig:
    return BrokerConfig(port=0, store_url=database[1], home=home, lease=2.0, heartbeat=0.5)


async def test_producers_see_errors_while_the_database_is_down_and_work_resumes(
    broker: Broker, client: AsyncClient, start_worker: StartWorker, database: Any
) -> None:
    db, _ = database
    store = broker.store
    assert isinstance(store, PostgresStore)
    await start_worker(concurrency=4)
    before = await client.submit_many([("add", {"a": i, "b": 0}) for i in range(200)])
    assert [await h.result(timeout=30) for h in before] == list(range(200))

    db.down(f"conveyor/{store.schema}/")
    refused = 0
    for i in range(3):  # each call ends promptly, with an error that says why
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"store_unavailable|PostgreSQL"):
            await asyncio.wait_for(client.submit("add", a=i, b=0), 15)
        assert time.monotonic() - started < 10
        refused += 1
    assert not store.health["writable"]

    db.up()
    async with asyncio.timeout(30):  # the broker reconnects by itself
        while True:
            try:
                after = await client.submit_many([("add", {"a": i, "b": 1}) for i in range(50)])
                break
            except StoreUnavailable:
                await asyncio.sleep(0.2)
    assert [await h.result(timeout=30) for h in after] == [i + 1 for i in range(50)]
    survived = await client.get_many([h.id for h in before])
    assert len(survived) == 200 and {j.state for j in survived} == {JobState.COMPLETED}
    assert refused == 3 and store.health["writable"]


async def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    broker: Broker, client: AsyncClient, start_worker: StartWorker, database: Any, caplog: Any
) -> None:
    db, _ = database
    store = broker.store
    assert isinstance(store, PostgresStore)
    await start_worker(concurrency=2)
    assert await (await client.submit("add", a=1, b=2)).result(timeout=30) == 3
    caplog.set_level(logging.DEBUG, logger="conveyor")
    caplog.clear()
    db.down(f"conveyor/{store.schema}/")
    async with asyncio.timeout(30):  # the heartbeat, the promoter ... each fail a few times
        while store.health["failed_attempts"] < 8:
            await asyncio.sleep(0.1)
    with pytest.raises(StoreUnavailable):
        await client.submit("add", a=1, b=1)
    db.up()
    async with asyncio.timeout(30):  # each pool reconnects by itself
        while True:
            try:
                handle = await client.submit("add", a=2, b=2)
                break
            except StoreUnavailable:
                await asyncio.sleep(0.2)
    assert await handle.result(timeout=30) == 4
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r for r in loud if r.exc_info] == []  # no traceback for a database away
    went = [r for r in loud if "unavailable" in r.getMessage()]
    back = [r for r in loud if "available again" in r.getMessage()]
    assert len(went) == 1 and went[0].levelno == logging.WARNING
    assert len(back) == 1
