"""The PostgreSQL engine's round-trip savers: array literals, one claim for several
workers, and reports computed from the records the engine last wrote."""

from __future__ import annotations

import math
from typing import Any

import psycopg
import pytest

from conveyor import lifecycle
from conveyor.job import JobRecord, JobState
from conveyor.lifecycle import Outcome, TaskOptions
from conveyor.protocol.payload import pack_call
from conveyor.stores.base import Claimant
from conveyor.stores.postgres import PostgresStore
from conveyor.stores.sql import pg_queries as q
from conveyor.stores.sql.pg_claim import deal
from conveyor.stores.sql.pg_rows import array_literal
from tests.postgres import OPENED_AT, pg_url, store

pytestmark = pytest.mark.postgres
__all__ = ["pg_url", "store"]  # the fixtures, imported for pytest

T0 = OPENED_AT


def job(job_id: str, **fields: Any) -> JobRecord:
    return JobRecord(id=job_id, task="t", payload=pack_call([], {}), **fields)


def counting(engine: PostgresStore) -> list[str]:
    """The statements ``engine`` runs from now on (their first words)."""
    seen: list[str] = []
    run = engine._run

    async def counted(query: str, params: Any = None, *, fast: bool = False) -> list[Any]:
        seen.append(" ".join(query.split()[:3]))
        return await run(query, params, fast=fast)

    engine._run = counted  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize(
    ("sql_type", "values"),
    [
        ("text", ["a", "", "NULL", None, 'q"uo\\te', "{br,ace}", " sp ", "ünï", "a\nb"]),
        ("bytea", [b"", bytes(range(256)), None, b"\\x", bytearray(b"ab")]),
        ("boolean", [True, False, None]),
        ("bigint", [0, -1, 2**62, None]),
        ("double precision", [0.1, -1e300, 5e-324, math.inf, -math.inf, None, 3]),
    ],
)
def test_array_literals_round_trip(pg_url: str, sql_type: str, values: list[Any]) -> None:
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:
        row = conn.execute(f"SELECT %s::{sql_type}[]", (array_literal(values),)).fetchone()  # type: ignore[arg-type]
    assert row is not None
    got = [bytes(v) if isinstance(v, memoryview) else v for v in row[0]]
    assert got == [bytes(v) if isinstance(v, bytearray) else v for v in values]


def test_deal_gives_each_worker_its_turn() -> None:
    assert deal([("a", 3), ("b", 1), ("c", 0), ("d", 2)]) == ["a", "b", "d", "a", "d", "a"]
    assert deal([]) == []


async def test_one_claim_serves_equal_workers_in_turn(store: PostgresStore) -> None:
    await store.job_insert_many([lifecycle.born(job(f"j{i}"), T0) for i in range(5)])
    w1, w2 = Claimant("w1", ["default"], {"t"}), Claimant("w2", ["default"], {"t"})
    other = Claimant("w3", ["other"], {"t"})
    seen = counting(store)
    got = await store.job_claim_many([(w1, 2), (w2, 4), (other, 3)], 30.0, T0)
    assert [[j.id for j in jobs] for jobs in got] == [["j0", "j2"], ["j1", "j3", "j4"], []]
    assert seen.count("WITH pairs AS") == 2  # one for w1 and w2, one for w3's other offer
    for worker, jobs in (("w1", got[0]), ("w2", got[1])):
        stored = await store.job_get_many([j.id for j in jobs])
        assert {(j.state, j.worker) for j in stored} == {(JobState.RUNNING, worker)}
        assert stored == jobs  # the records made in Python are what the SQL stored
        events = await store.job_events(jobs[0].id)
        assert events[-1]["event"] == "started" and events[-1]["worker"] == worker


async def test_a_claim_sends_only_options_that_differ(store: PostgresStore) -> None:
    await store.job_insert_many([lifecycle.born(job("j1", queue=""), T0)])
    plain = {f"t{i}": TaskOptions() for i in range(1000)}
    claimant = Claimant(
        "w",
        ["default", "q2"],
        {"t", *plain},
        {**plain, "t": TaskOptions(retries=7)},
        {"t": "q2", **dict.fromkeys(plain, "default")},
    )
    params: list[Any] = []
    run = store._run

    async def spy(query: str, args: Any = None, *, fast: bool = False) -> list[Any]:
        if query is q.CLAIM:
            params.append(args)
        return await run(query, args, fast=fast)

    store._run = spy  # type: ignore[method-assign]
    (got,) = await store.job_claim_many([(claimant, 1)], 30.0, T0)
    assert params[0]["otask"] == '{"t"}' and params[0]["oroute"] == '{"q2"}'
    assert [(j.queue, j.max_retries) for j in got] == [("q2", 7)]
    assert (await store.job_get_many(["j1"])) == got


async def test_a_report_needs_no_read_and_a_stale_copy_is_refused(pg_url: str) -> None:
    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    await a.open(T0)
    await b.open(T0)
    try:
        await a.job_insert_many([lifecycle.born(job("j1"), T0)])
        (claimed,) = await a.job_claim(Claimant("w", ["default"], {"t"}), 1, 30.0, T0)
        seen = counting(a)
        assert await a.job_get_recent(["j1"]) == [claimed] and seen == []
        # another broker asks for a cancel: this one's copy is stale now
        (fresh,) = await b.job_get_many(["j1"])
        cancel = lifecycle.cancel(fresh, T0 + 1)
        assert cancel is not None and (await b.job_apply([cancel]))[0] is not None
        done = lifecycle.report(claimed, Outcome("j1", claimed.lease or 0, True), T0 + 2)
        assert await a.job_apply([done]) == [None]  # refused at the old version
        (again,) = await a.job_get_recent(["j1"])  # read, no longer remembered
        assert again.cancel_requested and again.version == fresh.version + 1
        retry = lifecycle.report(again, Outcome("j1", claimed.lease or 0, True), T0 + 2)
        assert (await a.job_apply([retry]))[0] is not None
        assert [j.state for j in await b.job_get_many(["j1"])] == [JobState.CANCELLED]
    finally:
        await a.close()
        await b.close()


async def _complete(store: PostgresStore, job_id: str, now: float) -> JobRecord:
    (claimed,) = [
        j
        for j in await store.job_claim(Claimant("w", ["default"], {"t"}), 10, 30.0, now)
        if j.id == job_id
    ]
    done = lifecycle.report(claimed, Outcome(job_id, claimed.lease or 0, True), now)
    (after,) = await store.job_apply([done])
    assert after is not None and after.state is JobState.COMPLETED
    return after


async def test_an_ended_job_nothing_waits_on_needs_no_look(store: PostgresStore) -> None:
    await store.job_insert_many([lifecycle.born(job("plain"), T0)])
    await _complete(store, "plain", T0 + 1)
    seen = counting(store)
    assert await store.job_waiting_on(["plain"]) == [] and seen == []
    # asked again (or about a job another broker ended): it looks
    assert await store.job_waiting_on(["plain"]) == [] and len(seen) == 1


async def test_a_waiting_job_marks_its_dependencies_stored_or_new(store: PostgresStore) -> None:
    await store.job_insert_many([lifecycle.born(job("a"), T0)])
    # "b" waits on the stored "a" and on "c", new in the same batch; "d" on "b"
    batch = [
        job("c"),
        job("b", depends_on=("a", "c"), workflow="wf"),
        job("d", depends_on=("b",), workflow="wf"),
    ]
    await store.job_insert_many([lifecycle.born(j, T0) for j in batch])
    with psycopg.connect(store.db.conninfo, autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT id, dependants FROM {store.schema}.jobs ORDER BY id"
        ).fetchall()
    assert rows == [("a", True), ("b", True), ("c", True), ("d", False)]
    await _complete(store, "a", T0 + 1)
    seen = counting(store)
    assert [j.id for j in await store.job_waiting_on(["a"])] == ["b"] and len(seen) == 1


async def test_a_mark_does_not_make_a_transition_in_flight_stale(store: PostgresStore) -> None:
    await store.job_insert_many([lifecycle.born(job("a"), T0)])
    (claimed,) = await store.job_claim(Claimant("w", ["default"], {"t"}), 1, 30.0, T0)
    await store.job_insert_many([lifecycle.born(job("b", depends_on=("a",)), T0)])
    done = lifecycle.report(claimed, Outcome("a", claimed.lease or 0, True), T0 + 1)
    assert (await store.job_apply([done]))[0] is not None  # same version: applied
    assert [j.id for j in await store.job_waiting_on(["a"])] == ["b"]


async def test_rows_from_before_the_flag_are_looked_at(store: PostgresStore) -> None:
    await store.job_insert_many(
        [lifecycle.born(j, T0) for j in (job("a"), job("b", depends_on=("a",)))]
    )
    with psycopg.connect(store.db.conninfo, autocommit=True) as conn:  # as migration 4 left them
        conn.execute(f"SET search_path TO {store.schema}")  # its triggers' tables
        conn.execute("UPDATE jobs SET dependants = NULL")
    await _complete(store, "a", T0 + 1)
    assert [j.id for j in await store.job_waiting_on(["a"])] == ["b"]


async def test_the_look_checks_ids_exactly(store: PostgresStore) -> None:
    """The server's filter matches bytes ("job-1" is inside "job-12"): each is checked."""
    jobs = [job("job-1"), job("job-12"), job("w", depends_on=("job-12",))]
    await store.job_insert_many([lifecycle.born(j, T0) for j in jobs])
    assert await store.job_waiting_on(["job-1"]) == []
    assert [j.id for j in await store.job_waiting_on(["job-12"])] == ["w"]
