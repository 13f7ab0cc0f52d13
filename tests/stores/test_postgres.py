"""The PostgreSQL engine's own behaviour (the shared one is in test_contract.py): its URL,
migrations taken under an advisory lock, ``conveyor db``, and several engines on one
schema (claims, unique keys, notifications, lease rescue)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from click.testing import CliRunner

from conveyor import lifecycle
from conveyor.cli import main
from conveyor.errors import ConfigError
from conveyor.job import JobRecord, JobState
from conveyor.protocol.payload import pack_call
from conveyor.stores.base import Claimant
from conveyor.stores.postgres import PostgresStore
from conveyor.stores.sql.pg_conn import parse_postgres_url
from conveyor.stores.sql.pg_schema import LATEST, migrate, status
from tests.postgres import pg_url

pytestmark = pytest.mark.postgres
__all__ = ["pg_url"]  # the fixture, imported for pytest

T0 = 1_700_000_000.0


def job(job_id: str, **fields: Any) -> JobRecord:
    return JobRecord(id=job_id, task="t", payload=pack_call([], {}), **fields)


def test_the_url_keeps_libpq_options_and_takes_its_own() -> None:
    conninfo, schema, options = parse_postgres_url(
        "postgres://u@h:5433/db?schema=sys_1&sslmode=require&pool=3&dead_after=2.5"
    )
    assert conninfo == "postgresql://u@h:5433/db?sslmode=require"
    assert schema == "sys_1"
    assert options["pool"] == 3 and options["dead_after"] == 2.5
    for bad in ("schema=Bad-Name", "pool=x", "heartbeat=0"):
        with pytest.raises(ConfigError):
            parse_postgres_url(f"postgresql://u@h/db?{bad}")


class Listener:
    """Records what an engine says other brokers changed."""

    def __init__(self) -> None:
        self.pairs: list[Any] = []
        self.done: list[str] = []
        self.cancels: list[str] = []
        self.changed = asyncio.Event()

    def available(self, pairs: Any) -> None:
        self.pairs.append(None if pairs is None else sorted(pairs))
        self.changed.set()

    def finished(self, job_ids: Any) -> None:
        self.done.extend(job_ids or ())
        self.changed.set()

    def cancel_requested(self, job_ids: Any) -> None:
        self.cancels.extend(job_ids)
        self.changed.set()

    def setting_changed(self, name: Any) -> None:
        self.changed.set()

    async def until(self, predicate: Any) -> None:
        async with asyncio.timeout(10):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def pair(pg_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore, Listener]]:
    """Two engines on one schema, as two brokers have them; B listens."""
    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    heard = Listener()
    b.watch(heard)
    await a.open(T0)
    await b.open(T0)
    try:
        yield a, b, heard
    finally:
        await a.close()
        await b.close()


async def test_concurrent_migrations_take_turns(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(3)]
    conns = [await s.db.connect(schema=False) for s in stores]
    try:
        applied = await asyncio.gather(*(migrate(c, stores[0].schema) for c in conns))
        assert sorted(len(a) for a in applied) == [0, 0, LATEST]  # one migrated, two found it done
        info = await status(conns[0], stores[0].schema)
        assert info["version"] == LATEST and info["pending"] == []
    finally:
        for c in conns:
            await c.close()


def test_db_migrate_and_status_commands(pg_url: str) -> None:
    runner = CliRunner()
    before = runner.invoke(main, ["db", "status", "--store", pg_url])
    assert before.exit_code == 0, before.output
    assert "not created yet" in before.output and "pending 1" in before.output
    done = runner.invoke(main, ["db", "migrate", "--store", pg_url])
    assert done.exit_code == 0 and "applied migration 1" in done.output
    again = runner.invoke(main, ["db", "migrate", "--store", pg_url])
    assert "up to date" in again.output
    after = runner.invoke(main, ["db", "status", "--store", pg_url])
    assert f"version {LATEST} of {LATEST}" in after.output
    wrong = runner.invoke(main, ["db", "status", "--store", "sqlite:///x.db"])
    assert wrong.exit_code != 0 and "PostgreSQL" in wrong.output


async def test_two_brokers_never_claim_one_job(pair: Any) -> None:
    a, b, _ = pair
    await a.job_insert_many([lifecycle.born(job(f"j{i:03d}"), T0) for i in range(200)])
    claimant = Claimant("w", ["default"], {"t"})
    got: list[JobRecord] = []
    for _ in range(20):
        batches = await asyncio.gather(
            a.job_claim(claimant, 7, 30.0, T0), b.job_claim(claimant, 7, 30.0, T0)
        )
        got += [j for batch in batches for j in batch]
    assert len(got) == 200 and len({j.id for j in got}) == 200
    assert {j.state for j in got} == {JobState.RUNNING}


async def test_a_unique_key_is_held_across_brokers(pair: Any) -> None:
    a, b, _ = pair
    one, two = await asyncio.gather(
        a.job_insert_many([lifecycle.born(job("u1", unique_key="k"), T0)]),
        b.job_insert_many([lifecycle.born(job("u2", unique_key="k"), T0)]),
    )
    assert sorted([one[0].created, two[0].created]) == [False, True]
    assert one[0].job.id == two[0].job.id


async def test_the_other_broker_hears_of_queued_finished_and_cancelled_jobs(pair: Any) -> None:
    a, _, heard = pair
    await a.job_insert_many([lifecycle.born(job("n1", queue="q"), T0)])
    await heard.until(lambda: [("q", "t")] in heard.pairs)
    (claimed,) = await a.job_claim(Claimant("w", ["q"], {"t"}), 1, 30.0, T0)
    (asked,) = await a.job_apply([lifecycle.cancel(claimed, T0)])  # type: ignore[list-item]
    assert asked is not None and asked.cancel_requested
    await heard.until(lambda: "n1" in heard.cancels)
    t = lifecycle.report(asked, lifecycle.Outcome("n1", claimed.lease or 0, ok=True), T0)
    await a.job_apply([t])
    await heard.until(lambda: "n1" in heard.done)


async def test_leases_of_a_broker_that_is_gone_are_rescued(pg_url: str) -> None:
    url = f"{pg_url}&dead_after=5&lease_grace=1"
    gone, alive = PostgresStore(url), PostgresStore(url)
    await gone.open(T0)
    await alive.open(T0)
    try:
        await gone.job_insert_many([lifecycle.born(job("r1"), T0)])
        (held,) = await gone.job_claim(Claimant("w", ["default"], {"t"}), 1, 10.0, T0)
        assert await gone.job_rescue_expired(T0) == []  # renews what it holds
        # "gone" stops heartbeating; within its lease and grace nothing is rescued
        assert await alive.job_rescue_expired(T0 + 10.5) == []
        (lapsed,) = await alive.job_rescue_expired(T0 + 12)
        assert lapsed.id == "r1" and lapsed.lease == held.lease
        # the jobs a broker holds are never taken: its heartbeat renews them
        await alive.job_insert_many([lifecycle.born(job("r2"), T0)])
        await alive.job_claim(Claimant("w", ["default"], {"t"}), 1, 10.0, T0 + 12)
        assert [j.id for j in await alive.job_rescue_expired(T0 + 30)] == ["r1"]
    finally:
        await gone.close()
        await alive.close()
