"""PostgreSQL's ``jobs.dependants`` flag under the ways a job can come to be depended on:
it must never say "nothing waits on this one" of a job a waiting job depends on, or that
job's dependants wait forever (the workflow service looks for them only when the flag, or
the engine's memory of it, says there can be some)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from conveyor import lifecycle
from conveyor.job import JobRecord, JobState
from conveyor.lifecycle import Outcome
from conveyor.protocol.payload import pack_call
from conveyor.stores.base import Claimant
from conveyor.stores.postgres import PostgresStore
from conveyor.stores.sql import pg_queries as q
from tests.postgres import pg_url

pytestmark = pytest.mark.postgres
__all__ = ["pg_url"]  # the fixture, imported for pytest

T0 = 1_700_000_000.0
WORKER = Claimant("w", ["default"], {"t"})


def job(job_id: str, **fields: Any) -> JobRecord:
    return JobRecord(id=job_id, task="t", payload=pack_call([], {}), **fields)


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    engine = PostgresStore(pg_url)
    await engine.open(T0)
    try:
        yield engine
    finally:
        await engine.close()


async def _run_once(
    store: PostgresStore, job_id: str, now: float, ok: bool, **fields: Any
) -> JobRecord:
    """Claim ``job_id`` and report its run (``ok`` or failed): the job as it became."""
    (claimed,) = [j for j in await store.job_claim(WORKER, 10, 30.0, now) if j.id == job_id]
    outcome = Outcome(job_id, claimed.lease or 0, ok, error=None if ok else {"message": "no"})
    (after,) = await store.job_apply([lifecycle.report(claimed, outcome, now)])
    assert after is not None
    return after


async def test_a_dependency_inserted_in_a_second_round_is_marked(store: PostgresStore) -> None:
    """A batch's dependency skipped at first (its unique key held by a live job that ends
    before the holders are read) is inserted again in a round of its own: it must still
    be marked, for its dependant was stored in the first round."""
    await store.job_insert_many([lifecycle.born(job("holder", unique_key="k"), T0)])
    (holder,) = await store.job_claim(WORKER, 1, 30.0, T0)
    run = store._run
    ended = []

    async def holder_ends_in_between(query: str, params: Any = None, **kw: Any) -> list[Any]:
        rows = await run(query, params, **kw)
        if query is q.INSERT_WAITING and not ended:  # "a" met the holder: skipped
            outcome = Outcome("holder", holder.lease or 0, True)
            ended.extend(await store.job_apply([lifecycle.report(holder, outcome, T0 + 1)]))
        return rows

    store._run = holder_ends_in_between  # type: ignore[method-assign]
    batch = [job("a", unique_key="k"), job("b", depends_on=("a",), workflow="wf")]
    inserted = await store.job_insert_many([lifecycle.born(j, T0 + 1) for j in batch])
    store._run = run  # type: ignore[method-assign]
    assert ended and [(i.job.id, i.created) for i in inserted] == [("a", True), ("b", True)]
    assert (await _run_once(store, "a", T0 + 2, ok=True)).state is JobState.COMPLETED
    assert [j.id for j in await store.job_waiting_on(["a"])] == ["b"]


async def test_a_job_that_ends_again_is_looked_at(store: PostgresStore) -> None:
    """A job that ended with nothing waiting on it, retried from the dead-letter queue,
    depended on, and ended again: its dependant is found (what the engine remembered of
    its first end no longer holds)."""
    await store.job_insert_many([lifecycle.born(job("a", max_retries=0), T0)])
    dead = await _run_once(store, "a", T0 + 1, ok=False)
    assert dead.state is JobState.DEAD  # nothing waits on it: remembered so
    (retried,) = await store.job_apply([lifecycle.dlq_retry(dead, T0 + 2)])
    assert retried is not None and retried.state is JobState.QUEUED
    await store.job_insert_many([lifecycle.born(job("b", depends_on=("a",)), T0 + 2)])
    assert (await _run_once(store, "a", T0 + 3, ok=True)).state is JobState.COMPLETED
    assert [j.id for j in await store.job_waiting_on(["a"])] == ["b"]
