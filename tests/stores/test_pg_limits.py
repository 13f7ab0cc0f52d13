"""Limits several PostgreSQL engines share (migration 3): the token buckets grant no more
than their rate, and the running jobs per concurrency key are counted in the database, so
two brokers' claims never take a key past its limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from conveyor import lifecycle
from conveyor.job import JobRecord, JobState
from conveyor.protocol.payload import pack_call
from conveyor.stores.base import Claimant, KeyLimits
from conveyor.stores.memory import MemoryStore
from conveyor.stores.postgres import PostgresStore
from tests.postgres import pg_url

pytestmark = pytest.mark.postgres
__all__ = ["pg_url"]

T0 = 1_700_000_000.0


class Gate:
    """A key gate as a shared engine sees it: only its limits."""

    def __init__(self, prefixes: Mapping[str, int], tasks: Mapping[str, int]) -> None:
        self.limits = KeyLimits(prefixes, tasks)

    def admit(self, task: str, key: str) -> bool:
        raise AssertionError("a shared engine counts in its database")

    def freed(self) -> Mapping[str, int] | None:
        return {}

    def key_limits(self) -> KeyLimits:
        return self.limits


def keyed(job_id: str, key: str | None, task: str = "t") -> JobRecord:
    return JobRecord(id=job_id, task=task, payload=pack_call([], {}), concurrency_key=key)


@pytest.fixture
async def pair(pg_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    await a.open(T0)
    await b.open(T0)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_two_engines_taking_at_once_get_no_more_than_the_rate(pair: Any) -> None:
    a, b = pair
    ra, rb = a.rate_buckets(), b.rate_buckets()
    granted = 0
    started = time.monotonic()
    for _ in range(30):
        got = await asyncio.gather(
            ra.take([("task:t", 20.0, 1.0, 1)]), rb.take([("task:t", 20.0, 1.0, 1)])
        )
        granted += sum(g["task:t"][0] for g in got)
    span = time.monotonic() - started
    # a full bucket (1) plus what it refilled, by the database's clock, within our span
    assert 1 <= granted <= 1 + 20.0 * span + 1e-6, (granted, span)
    assert MemoryStore().rate_buckets() is None  # one broker: its buckets are its own


async def test_a_take_asks_several_buckets_and_says_what_is_left(pair: Any) -> None:
    a, _ = pair
    got = await a.rate_buckets().take([("queue:q", 1.0, 3.0, 2), ("task:t", 1.0, 1.0, 5)])
    assert got["queue:q"][0] == 2 and abs(got["queue:q"][1] - 1.0) < 0.1
    assert got["task:t"][0] == 1 and got["task:t"][1] < 0.1  # a full bucket of one


async def test_a_key_limit_holds_across_two_engines_and_a_report_frees_the_slot(
    pair: Any,
) -> None:
    a, b = pair
    jobs = [keyed(f"k{i}", "site:x") for i in range(4)] + [keyed("free", None)]
    await a.job_insert_many([lifecycle.born(j, T0) for j in jobs])
    gate = Gate({"site:": 2}, {})
    claimant = Claimant("w", ["default"], {"t"}, gate=gate)
    first, second = await asyncio.gather(
        a.job_claim(claimant, 10, 30.0, T0), b.job_claim(claimant, 10, 30.0, T0)
    )
    got = first + second
    keyed_ids = sorted(j.id for j in got if j.concurrency_key)
    assert len(keyed_ids) == 2 and "free" in {j.id for j in got}  # the free one not blocked
    stats = await b.stats()
    assert stats["running_by_key"] == {"site:x": 2}
    assert stats["waiting_for_key"] == {"site:x": 2}
    assert await b.job_claim(claimant, 10, 30.0, T0) == []  # full: nothing more
    done = next(j for j in got if j.concurrency_key)
    outcome = lifecycle.Outcome(done.id, done.lease or 0, ok=True)
    await a.job_apply([lifecycle.report(done, outcome, T0)])
    (third,) = await b.job_claim(claimant, 10, 30.0, T0)
    assert third.concurrency_key == "site:x" and third.state is JobState.RUNNING
    assert (await a.stats())["running_by_key"] == {"site:x": 2}


async def test_the_longest_prefix_wins_then_the_tasks_own_limit(pair: Any) -> None:
    a, _ = pair
    jobs = [keyed(f"a{i}", "site:a") for i in range(3)]
    jobs += [keyed(f"b{i}", "site:b", task="u") for i in range(3)]
    await a.job_insert_many([lifecycle.born(j, T0) for j in jobs])
    gate = Gate({"site:": 3, "site:a": 1}, {"u": 2})
    got = await a.job_claim(Claimant("w", ["default"], {"t", "u"}, gate=gate), 10, 30.0, T0)
    by_key: dict[str | None, int] = {}
    for j in got:
        by_key[j.concurrency_key] = by_key.get(j.concurrency_key, 0) + 1
    assert by_key == {"site:a": 1, "site:b": 3}  # site:b: the broker's prefix beats the task
    no_prefix = Gate({}, {"u": 2})
    await a.job_insert_many(
        [lifecycle.born(keyed(f"c{i}", "other", task="u"), T0) for i in range(3)]
    )
    more = await a.job_claim(Claimant("w", ["default"], {"u"}, gate=no_prefix), 10, 30.0, T0)
    assert len(more) == 2  # the task's own limit
