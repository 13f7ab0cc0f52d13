"""PostgreSQL's ``jobs.dependants`` flag under the ways a job can come to be depended on:
it must never say "nothing waits on this one" of a job a waiting job depends on, or that
job's dependants wait forever (the workflow service looks for them only when the flag, or
the engine's memory of it, says there can be some)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conveyor import lifecycle
from conveyor.broker.config import BrokerConfig
from conveyor.broker.core import BrokerCore
from conveyor.broker.workflows import decide
from conveyor.clock import FakeClock
from conveyor.job import JobRecord, JobState
from conveyor.lifecycle import Outcome, Transition
from conveyor.protocol.payload import pack_call
from conveyor.security.tokens import TokenRegistry
from conveyor.stores.base import Claimant
from conveyor.stores.postgres import PostgresStore
from conveyor.stores.sql import pg_queries as q
from conveyor.stores.sql.pg_rows import (
    INSERT_COLUMNS,
    change_arrays,
    event_json,
    insert_arrays,
    literals,
    unnest_of,
)
from conveyor.stores.sql.pg_schema import MIGRATIONS
from tests.postgres import OPENED_AT, pg_url, store

pytestmark = pytest.mark.postgres
__all__ = ["pg_url", "store"]  # the fixtures, imported for pytest

T0 = OPENED_AT
WORKER = Claimant("w", ["default"], {"t"})


def job(job_id: str, **fields: Any) -> JobRecord:
    return JobRecord(id=job_id, task="t", payload=pack_call([], {}), **fields)


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


async def test_a_row_an_older_broker_stored_is_looked_at(store: PostgresStore) -> None:
    """A broker of an older version, still running on the new schema, stores rows without
    the flag and never marks what its waiting jobs depend on: such rows are unknown
    (NULL, the column has no default), so their end is followed by a look."""
    await store.job_insert_many([lifecycle.born(job("a"), T0)])
    await store.job_insert_many([lifecycle.born(job("b", depends_on=("a",)), T0)])
    with psycopg.connect(store.db.conninfo, autocommit=True) as conn:
        conn.execute(f"SET search_path TO {store.schema}")
        conn.execute("UPDATE jobs SET dependants = DEFAULT WHERE id = 'a'")  # as stored by it
    assert (await _run_once(store, "a", T0 + 1, ok=True)).state is JobState.COMPLETED
    assert [j.id for j in await store.job_waiting_on(["a"])] == ["b"]


async def _insert_in_flight(store: PostgresStore, record: JobRecord) -> psycopg.Connection[Any]:
    """``record`` inserted as a submit does, in a transaction left open (a submit whose
    statement has not committed yet): commit the connection returned to end it."""
    born, ev = lifecycle.born(record, T0)
    columns = {**insert_arrays([born]), "eids": [born.id], "edata": [event_json(ev)]}
    conn = psycopg.connect(store.db.conninfo)  # not autocommit: a transaction
    conn.execute(f"SET search_path TO {store.schema}")
    conn.execute(q.INSERT, literals(columns))
    return conn


async def test_a_dependency_stored_while_its_dependant_was_is_looked_after(
    store: PostgresStore,
) -> None:
    """ "b" waits on "a", whose own submit races it: b's INSERT cannot see (or mark) a,
    uncommitted. The workflow service reads a after storing b, and finds it queued;
    when a completes, b must be found (it waited forever: a said nothing waits on it)."""
    racing = await _insert_in_flight(store, job("a"))
    with racing:
        await store.job_insert_many([lifecycle.born(job("b", depends_on=("a",)), T0)])
        racing.commit()
    # what the workflow service reads to decide on b, just stored: a is still to run
    assert [j.state for j in await store.job_get_depended(["a"])] == [JobState.QUEUED]
    assert (await _run_once(store, "a", T0 + 1, ok=True)).state is JobState.COMPLETED
    assert [j.id for j in await store.job_waiting_on(["a"])] == ["b"]


async def test_the_read_of_dependencies_sees_an_end_in_flight(store: PostgresStore) -> None:
    """The read that marks waits for a final UPDATE holding the row and returns the row
    as that UPDATE left it (the snapshot's older copy would say "still to run", and the
    end said "nothing waits on me")."""
    await store.job_insert_many([lifecycle.born(job("a"), T0)])
    (claimed,) = await store.job_claim(WORKER, 1, 30.0, T0)
    done = lifecycle.report(claimed, Outcome("a", claimed.lease or 0, True), T0 + 1)
    with _end_in_flight(store, done) as ending:
        read = asyncio.get_running_loop().create_task(store.job_get_depended(["a"]))
        await asyncio.wait_for(_blocked_on_a_lock(store), 10)
        ending.commit()
        assert [j.state for j in await read] == [JobState.COMPLETED]


def _end_in_flight(store: PostgresStore, done: Transition) -> psycopg.Connection[Any]:
    """``done`` applied as the store applies it, in a transaction left open (its row
    locked): commit the connection returned to end it."""
    conn = psycopg.connect(store.db.conninfo)  # not autocommit: a transaction
    conn.execute(f"SET search_path TO {store.schema}")
    params = {
        "c0": [done.old.id],
        "c1": [done.old.version],
        "c2": [False],
        **change_arrays([done], first=3),
        "eids": [done.old.id for _ in done.events],
        "edata": [event_json(ev) for ev in done.events],
    }
    assert conn.execute(q.APPLY, literals(params)).fetchall() == [(done.old.id, False)]
    return conn


async def test_a_dependant_stored_while_its_dependency_ends_sees_the_end(
    store: PostgresStore,
) -> None:
    """ "b" is submitted after "a" while a's final UPDATE holds its row (it says nothing
    waits on a): b's insert waits for it, and the read that decides on b sees a ended."""
    await store.job_insert_many([lifecycle.born(job("a"), T0)])
    (claimed,) = await store.job_claim(WORKER, 1, 30.0, T0)
    done = lifecycle.report(claimed, Outcome("a", claimed.lease or 0, True), T0 + 1)
    b = job("b", depends_on=("a",))
    with _end_in_flight(store, done) as ending:
        insert = asyncio.get_running_loop().create_task(
            store.job_insert_many([lifecycle.born(b, T0 + 1)])
        )
        await asyncio.wait_for(_blocked_on_a_lock(store), 10)
        ending.commit()
        (inserted,) = await insert
    assert inserted.created and inserted.job.state is JobState.WAITING
    deps = {d.id: d for d in await store.job_get_depended(["a"])}
    release = decide(inserted.job, deps, T0 + 2)
    assert release is not None and release.new.state is JobState.QUEUED


async def _blocked_on_a_lock(store: PostgresStore) -> None:
    """Until a statement of this schema's database waits for a row lock."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND pid <> pg_backend_pid() AND query LIKE '%%UPDATE jobs SET dependants%%'"
    )
    while not (await store._run(query))[0][0]:
        await asyncio.sleep(0.01)


async def test_a_broker_releases_a_job_submitted_while_its_dependency_was(
    pg_url: str, home: Path
) -> None:
    """The same race through a broker's core: "b" is submitted after "a" while a's own
    submit has not committed, a then runs and completes, and b is released."""
    clock = FakeClock(T0)
    store = PostgresStore(pg_url)
    core = BrokerCore(BrokerConfig(home=home), store, TokenRegistry(home / "t"), clock)
    await core.open()
    try:
        racing = await _insert_in_flight(store, job("a"))
        with racing:
            await core.submit([job("b", depends_on=("a",))])
            racing.commit()  # before the workflow service, spawned by the submit, reads a
            await core.settle()
        assert (await core.get("b")).state is JobState.WAITING  # a is still to run
        (claimed,) = await store.job_claim(WORKER, 1, 30.0, clock.now())
        outcome = Outcome("a", claimed.lease or 0, True)
        await core.transition(["a"], lambda r: lifecycle.report(r, outcome, clock.now()))
        await asyncio.sleep(0)  # the workflow service looks at the next turn of the loop
        await core.settle()
        assert (await core.get("b")).state is JobState.QUEUED
    finally:
        await core.close()


@pytest.mark.parametrize("n", [1, 50, 51, 100, 101])
async def test_the_ids_notified_come_in_chunks_of_fifty(store: PostgresStore, n: int) -> None:
    """One statement that asks to cancel ``n`` running jobs, and one that ends them:
    the trigger notifies each id once, 50 to a notification."""
    await store.job_insert_many([lifecycle.born(job(f"j{i:03}"), T0) for i in range(n)])
    running = await store.job_claim(WORKER, n, 30.0, T0)
    ids = sorted(j.id for j in running)
    assert len(ids) == n
    chunks = [50] * (n // 50) + ([n % 50] if n % 50 else [])
    with psycopg.connect(store.db.conninfo, autocommit=True) as listen:
        listen.execute(f'LISTEN "conveyor_{store.schema}"')
        asks = [t for j in running if (t := lifecycle.cancel(j, T0 + 1)) is not None]
        asked = [j for j in await store.job_apply(asks) if j is not None]
        assert len(asked) == n  # one statement: one call to the coalescer
        ends = [lifecycle.report(j, Outcome(j.id, j.lease or 0, True), T0 + 2) for j in asked]
        ended = await store.job_apply(ends)
        assert {j.state for j in ended if j is not None} == {JobState.CANCELLED}
        got: dict[str, list[list[str]]] = {"c": [], "f": []}
        for note in listen.notifies(timeout=10, stop_after=2 * len(chunks)):
            message = json.loads(note.payload)
            for kind in ("c", "f"):
                if kind in message:
                    got[kind].append(message[kind])
    for kind in ("c", "f"):
        assert [len(c) for c in got[kind]] == chunks, kind
        assert sorted(i for c in got[kind] for i in c) == ids, kind


async def test_a_workflow_stored_at_version_3_completes_after_migration_4(
    pg_url: str, home: Path
) -> None:
    """A schema at v3 holding a chain in progress (rows without the flag), migrated by a
    broker that opens on it: the chain runs to its end, and the notifications of v4's
    trigger function still say what ended."""
    store = PostgresStore(pg_url)
    unnest, names = unnest_of(INSERT_COLUMNS)
    v3_insert = (  # as v3 brokers inserted (no dependants column)
        f"INSERT INTO jobs ({names}, sub, seq) SELECT {names}, nextval('job_seq'),"
        f" CASE WHEN state = 'queued' THEN nextval('job_seq') END FROM {unnest} AS c({names})"
    )
    chain = [job("s1"), job("s2", depends_on=("s1",)), job("s3", depends_on=("s2",))]
    with psycopg.connect(store.db.conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {store.schema}")
        conn.execute(f"SET search_path TO {store.schema}")
        conn.execute(
            "CREATE TABLE schema_version (version integer PRIMARY KEY,"
            " description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for step in MIGRATIONS[:3]:
            for statement in step.statements:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (%s, %s)", (step.version, "v"))
        born = [lifecycle.born(j, T0)[0] for j in chain]
        conn.execute(v3_insert, literals(insert_arrays(born)))
    clock = FakeClock(T0)
    core = BrokerCore(BrokerConfig(home=home), store, TokenRegistry(home / "t"), clock)
    await core.open()  # migrates to v4, then looks at every waiting job
    try:
        with psycopg.connect(store.db.conninfo, autocommit=True) as listen:
            listen.execute(f'LISTEN "conveyor_{store.schema}"')
            for step in ("s1", "s2", "s3"):
                (claimed,) = await store.job_claim(WORKER, 10, 30.0, clock.now())
                assert claimed.id == step  # the next step was released
                outcome = Outcome(step, claimed.lease or 0, True)
                await core.transition([step], lambda r, o=outcome: lifecycle.report(r, o, T0))
                await asyncio.sleep(0)  # the workflow service looks at the next loop turn
                await core.settle()
            ended = []
            for note in listen.notifies(timeout=10):
                if "f" in (message := json.loads(note.payload)):
                    ended.append(message["f"])
                    if len(ended) == 3:
                        break
        assert ended == [["s1"], ["s2"], ["s3"]]
        assert {j.state for j in await store.job_get_many(["s1", "s2", "s3"])} == {
            JobState.COMPLETED
        }
    finally:
        await core.close()
