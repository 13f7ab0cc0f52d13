"""The store contract: one suite, run against every engine, each engine as its own code.

Each test gets a fresh, opened store from the ``store`` fixture. Changes are computed by
``conveyor.lifecycle`` exactly as the broker's core does (read, compute, apply
conditionally); the store only persists and indexes. Time is a plain float the test moves
by hand (the store takes ``now`` on every call): nothing sleeps. To add an engine, add a
param to ``ENGINES`` and a branch to :func:`_make_store`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from pathlib import Path

import pytest

from conveyor import lifecycle
from conveyor.errors import IllegalTransition
from conveyor.job import JobRecord, JobState
from conveyor.lifecycle import Outcome, TaskOptions, Transition
from conveyor.protocol.payload import pack, pack_call, unpack
from conveyor.stores import SqliteStore, open_store
from conveyor.stores.base import Claimant, JobFilter, Store
from tests.postgres import fresh_schema

T0 = 1_700_000_000.0
LEASE = 30.0

# Every engine runs the whole contract. PostgreSQL runs on a fresh schema per test, URL
# from CONVEYOR_TEST_POSTGRES (skipped, saying so, without it).
ENGINES = [
    "memory",
    "sqlite",
    "sqlite-uncached",  # nothing cached: every record not running is read back from disk
    pytest.param("postgresql", marks=pytest.mark.postgres),
]


def _make_store(engine: str, tmp_path: Path, pg: str | None) -> Store:
    if engine == "memory":
        return open_store("memory://")
    if engine == "sqlite":
        return open_store(f"sqlite:///{tmp_path}/conveyor.db")
    if engine == "postgresql":
        assert pg is not None
        return open_store(pg)
    assert engine == "sqlite-uncached", engine
    return SqliteStore(f"sqlite:///{tmp_path}/conveyor.db", recent=0, resident=0)


@pytest.fixture(params=ENGINES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(fresh_schema()) if request.param == "postgresql" else None
        engine = _make_store(request.param, tmp_path, pg)
        await engine.open(T0)
        try:
            yield engine
        finally:
            await engine.close()


# -- helpers: what the broker's core does -------------------------------------------------------
_n = iter(range(1, 1_000_000))


def spec(
    task: str = "t", *, id: str | None = None, queue: str = "default", **fields: object
) -> JobRecord:
    args = fields.pop("args", [])
    return JobRecord(
        id=id or f"job-{next(_n):06d}",
        task=task,
        payload=pack_call(args, {}),  # type: ignore[arg-type]
        queue=queue,
        **fields,  # type: ignore[arg-type]
    )


async def insert(store: Store, *jobs: JobRecord, now: float = T0) -> list[JobRecord]:
    inserted = await store.job_insert_many([lifecycle.born(j, now) for j in jobs])
    return [i.job for i in inserted]


async def claim(
    store: Store,
    limit: int = 100,
    now: float = T0,
    worker: str = "w1",
    queues: Sequence[str] = ("default",),
    tasks: Collection[str] = ("t",),
    options: dict[str, TaskOptions] | None = None,
) -> list[JobRecord]:
    return await store.job_claim(Claimant(worker, queues, tasks, options or {}), limit, LEASE, now)


async def change(
    store: Store, job_id: str, compute: Callable[[JobRecord], Transition | None]
) -> JobRecord | None:
    """Read, compute, apply conditionally: the core's funnel for one job."""
    (job,) = await store.job_get_many([job_id])
    t = compute(job)
    if t is None:
        return None
    (new,) = await store.job_apply([t])
    return new


async def report(store: Store, job: JobRecord, now: float, **fields: object) -> JobRecord | None:
    fields.setdefault("ok", True)
    if fields.get("ok") and "result" in fields:
        fields["result"] = pack(fields["result"])
    assert job.lease is not None
    outcome = Outcome(id=job.id, lease=job.lease, **fields)  # type: ignore[arg-type]

    def compute(current: JobRecord) -> Transition | None:
        if current.state is not JobState.RUNNING or current.lease != outcome.lease:
            return None  # a stale lease changes nothing
        return lifecycle.report(current, outcome, now)

    return await change(store, job.id, compute)


async def fail(store: Store, job: JobRecord, now: float, **fields: object) -> JobRecord | None:
    error = {"type": "ValueError", "message": "boom", "traceback": "..."}
    return await report(store, job, now, ok=False, error=error, **fields)


async def state_of(store: Store, job_id: str) -> JobState:
    job = await store.job_get(job_id)
    assert job is not None
    return job.state


async def kinds(store: Store, job_id: str) -> list[str]:
    return [e["event"] for e in await store.job_events(job_id)]


async def listed(store: Store, **where: object) -> list[str]:
    return [j.id for j in (await store.job_list(JobFilter(**where))).jobs]  # type: ignore[arg-type]


# -- insert and schedule ------------------------------------------------------------------------
async def test_insert_makes_a_queued_job(store: Store) -> None:
    (inserted,) = await store.job_insert_many([lifecycle.born(spec(args=[1, "a"]), T0)])
    assert inserted.created
    job = inserted.job
    assert job.state is JobState.QUEUED and (job.created_at, job.attempts) == (T0, 0)
    assert unpack(job.payload) == [[1, "a"], {}]
    assert await kinds(store, job.id) == ["submitted"]
    assert await store.job_get(job.id) == job
    assert await store.job_get("no-such-job") is None
    assert await store.job_events("no-such-job") == []


async def test_future_eta_is_scheduled_until_promoted(store: Store) -> None:
    (job,) = await insert(store, spec(eta=T0 + 60))
    (past,) = await insert(store, spec(eta=T0 - 1))
    assert (job.state, past.state, past.eta) == (JobState.SCHEDULED, JobState.QUEUED, None)
    assert await store.job_next_eta() == T0 + 60
    assert [j.id for j in await claim(store, now=T0 + 1)] == [past.id]
    assert await store.job_promote_due(T0 + 59.9) == []
    assert [j.id for j in await store.job_promote_due(T0 + 60)] == [job.id]
    assert await state_of(store, job.id) is JobState.QUEUED
    assert await store.job_next_eta() is None
    assert [j.id for j in await claim(store, now=T0 + 61)] == [job.id]


# -- claim --------------------------------------------------------------------------------------
async def test_claim_takes_priority_first_then_fifo_across_queues(store: Store) -> None:
    jobs = await insert(
        store,
        spec(queue="a", priority=5),  # 0
        spec(queue="b", priority=1),  # 1
        spec(queue="a", priority=1),  # 2
        spec(queue="b", priority=5),  # 3
        spec(queue="a", priority=10),  # 4
        spec(queue="b", priority=1),  # 5
    )
    got = await claim(store, queues=["a", "b"])
    assert [j.id for j in got] == [jobs[i].id for i in (1, 2, 5, 0, 3, 4)]
    assert all(j.state is JobState.RUNNING and j.worker == "w1" for j in got)
    assert all(j.attempts == 1 and j.lease_expires == T0 + LEASE for j in got)
    assert len({j.lease for j in got}) == len(got)  # every run has its own lease


async def test_claim_only_takes_the_claimants_tasks_and_queues(store: Store) -> None:
    mine, other_task, other_queue = await insert(
        store, spec(), spec(task="other"), spec(queue="elsewhere")
    )
    got = await claim(store, queues=["default"], tasks={"t"})
    assert [j.id for j in got] == [mine.id]
    assert await state_of(store, other_task.id) is JobState.QUEUED
    assert await state_of(store, other_queue.id) is JobState.QUEUED
    assert await store.queue_waiting() == {("default", "other"): 1, ("elsewhere", "t"): 1}
    assert await claim(store, queues=["nothing-here"]) == []


async def test_claim_respects_the_limit(store: Store) -> None:
    jobs = await insert(store, *[spec() for _ in range(5)])
    first = await claim(store, limit=2)
    second = await claim(store, limit=10)
    assert [j.id for j in first + second] == [j.id for j in jobs]
    assert await claim(store) == []


async def test_claim_resolves_unset_options_from_the_claimants_task(store: Store) -> None:
    unset, _ = await insert(store, spec(), spec(max_retries=5))
    got = await claim(store, options={"t": TaskOptions(retries=0, retry_backoff=9.0)})
    assert [(j.max_retries, j.retry_backoff, j.retry_backoff_max) for j in got] == [
        (0, 9.0, 300.0),  # the task's own, then the default cap
        (5, 9.0, 300.0),  # the producer's choice wins
    ]
    assert await store.job_get(unset.id) == got[0]


# -- conditional changes ------------------------------------------------------------------------
async def test_a_change_applies_only_to_the_version_it_was_computed_from(store: Store) -> None:
    await insert(store, spec())
    (job,) = await claim(store)
    cancel = lifecycle.cancel(job, T0 + 1)
    assert cancel is not None
    (marked,) = await store.job_apply([cancel])
    assert marked is not None and marked.cancel_requested
    # computed from the old version: refused, nothing changes
    outcome = Outcome(job.id, job.lease or 0, True, pack(1))
    assert await store.job_apply([lifecycle.report(job, outcome, T0 + 2)]) == [None]
    assert await store.job_get(job.id) == marked
    done = await report(store, marked, T0 + 3, result=1)
    assert done is not None and done.state is JobState.CANCELLED  # cancelled, result dropped
    assert (await store.stats())["totals"]["completed"] == 0


async def test_an_illegal_move_raises_and_changes_nothing(store: Store) -> None:
    await insert(store, spec())
    (job,) = await claim(store)
    done = await report(store, job, T0 + 1, result=1)
    assert done is not None
    with pytest.raises(IllegalTransition, match="completed to running"):
        lifecycle.claim(done, "w2", 99, LEASE, T0 + 2)
    # a transition made by hand, around lifecycle.move, is refused by the engine too
    forged = Transition(done, done.replace(state=JobState.QUEUED, version=done.version + 1), ())
    with pytest.raises(IllegalTransition):
        await store.job_apply([forged])
    assert await store.job_get(job.id) == done
    assert await claim(store, worker="w2", now=T0 + 3) == []


async def test_applying_to_an_unknown_job_yields_none(store: Store) -> None:
    (job,) = await insert(store, spec())
    ghost = job.replace(id="never-stored")
    assert await store.job_apply([lifecycle.cancel(ghost, T0)]) == [None]  # type: ignore[list-item]


# -- reports ------------------------------------------------------------------------------------
async def test_report_ok_completes_with_the_result(store: Store) -> None:
    await insert(store, spec())
    (job,) = await claim(store)
    done = await report(store, job, T0 + 2, result={"answer": 42, "big": 2**80})
    assert done is not None and done.state is JobState.COMPLETED
    assert (done.finished_at, done.lease, done.lease_expires) == (T0 + 2, None, None)
    assert unpack(done.result or b"") == {"answer": 42, "big": 2**80}
    assert await kinds(store, job.id) == ["submitted", "started", "completed"]
    assert await store.job_get(job.id) == done


async def test_report_with_a_stale_lease_changes_nothing(store: Store) -> None:
    await insert(store, spec())
    (job,) = await claim(store)
    assert job.lease is not None
    assert await report(store, job.replace(lease=job.lease + 1000), T0 + 1) is None
    assert await store.job_get(job.id) == job
    # requeued and claimed again: the first lease is stale too
    await change(store, job.id, lambda r: lifecycle.requeue(r, T0 + 2, "worker lost", True))
    (again,) = await claim(store, worker="w2", now=T0 + 3)
    assert again.lease != job.lease
    assert await report(store, job, T0 + 4) is None
    assert await state_of(store, job.id) is JobState.RUNNING
    assert await report(store, again, T0 + 5) is not None


async def test_failure_backs_off_then_dies_after_max_retries(store: Store) -> None:
    await insert(store, spec(max_retries=2, retry_backoff=2.0, retry_backoff_max=60.0))
    now = T0
    for attempt, ceiling in ((1, 2.0), (2, 4.0)):
        (job,) = await claim(store, now=now)
        assert job.attempts == attempt
        retried = await fail(store, job, now)
        assert retried is not None and retried.state is JobState.SCHEDULED
        assert retried.eta is not None and now <= retried.eta <= now + ceiling
        now = retried.eta
        assert len(await store.job_promote_due(now)) == 1
    (job,) = await claim(store, now=now)
    dead = await fail(store, job, now + 1)
    assert dead is not None and dead.state is JobState.DEAD and dead.attempts == 3
    assert dead.error is not None and dead.error["type"] == "ValueError"
    events = await store.job_events(job.id)
    assert [e["event"] for e in events] == [
        "submitted",
        *(["started", "failed", "retried"] * 2),
        "started",
        "failed",
        "dead",
    ]
    assert [e["attempt"] for e in events if e["event"] == "failed"] == [1, 2, 3]
    assert events[-1]["reason"] == "retries exhausted"
    totals = (await store.stats())["totals"]
    assert (totals["failed"], totals["retried"], totals["dead"]) == (3, 2, 1)


async def test_retry_with_a_delay_sets_the_eta(store: Store) -> None:
    await insert(store, spec())
    (job,) = await claim(store)
    retried = await fail(store, job, T0 + 1, retry_delay=7.0)
    assert retried is not None and (retried.state, retried.eta) == (JobState.SCHEDULED, T0 + 8)
    assert await store.job_next_eta() == T0 + 8


async def test_reject_is_dead_at_once(store: Store) -> None:
    await insert(store, spec(max_retries=5))
    (job,) = await claim(store)
    dead = await fail(store, job, T0 + 1, reject=True)
    assert dead is not None and (dead.state, dead.attempts) == (JobState.DEAD, 1)
    events = await store.job_events(job.id)
    assert events[-1] == {"event": "dead", "at": T0 + 1, "reason": "rejected"}


# -- runs that end without a report -------------------------------------------------------------
async def test_release_goes_to_the_front_without_counting_the_attempt(store: Store) -> None:
    first, second = await insert(store, spec(), spec())
    (job,) = await claim(store, limit=1)
    (third,) = await insert(store, spec(), now=T0 + 1)
    released = await change(store, job.id, lambda r: lifecycle.release(r, T0 + 2))
    assert released is not None
    assert (released.state, released.attempts, released.worker) == (JobState.QUEUED, 0, None)
    assert await kinds(store, job.id) == ["submitted", "started", "released"]
    assert (await store.stats())["totals"]["requeued"] == 0
    got = await claim(store, now=T0 + 3)
    assert [j.id for j in got] == [first.id, second.id, third.id]


async def test_requeued_jobs_go_to_the_front_in_their_order(store: Store) -> None:
    jobs = await insert(store, *(spec() for _ in range(4)))
    taken = await claim(store, limit=3)
    (late,) = await insert(store, spec(), now=T0 + 1)
    for job in reversed(taken):  # newest first, as the core does: the oldest ends in front
        await change(store, job.id, lambda r: lifecycle.requeue(r, T0 + 2, "worker lost", True))
    got = await claim(store, worker="w2", now=T0 + 3)
    assert [j.id for j in got] == [*(j.id for j in jobs), late.id]
    assert [j.attempts for j in got[:3]] == [2, 2, 2]  # charged: the runs had started
    assert (await store.stats())["totals"]["requeued"] == 3


async def test_a_started_run_lost_with_no_attempts_left_is_dead(store: Store) -> None:
    await insert(store, spec(max_retries=0))
    (job,) = await claim(store)
    dead = await change(store, job.id, lambda r: lifecycle.requeue(r, T0 + 1, "worker lost", True))
    assert dead is not None and dead.state is JobState.DEAD
    assert dead.error is not None and dead.error["type"] == "WorkerLost"
    assert [j.id for j in await store.job_dead(None)] == [job.id]


# -- cancel -------------------------------------------------------------------------------------
async def test_cancel_queued_and_scheduled_at_once(store: Store) -> None:
    queued, scheduled = await insert(store, spec(), spec(eta=T0 + 10))
    for job in (queued, scheduled):
        cancelled = await change(store, job.id, lambda r: lifecycle.cancel(r, T0 + 1))
        assert cancelled is not None
        assert (cancelled.state, cancelled.finished_at) == (JobState.CANCELLED, T0 + 1)
        assert (await kinds(store, job.id))[-1] == "cancelled"
    assert await claim(store, now=T0 + 20) == []
    assert await store.job_promote_due(T0 + 20) == []
    assert (await store.stats())["totals"]["cancelled"] == 2


async def test_cancel_running_then_worker_lost_ends_cancelled(store: Store) -> None:
    await insert(store, spec())
    (job,) = await claim(store)
    await change(store, job.id, lambda r: lifecycle.cancel(r, T0 + 1))
    gone = await change(store, job.id, lambda r: lifecycle.requeue(r, T0 + 2, "worker lost", True))
    assert gone is not None and gone.state is JobState.CANCELLED  # not run again
    assert await claim(store, worker="w2", now=T0 + 3) == []
    assert (await store.stats())["totals"]["requeued"] == 0


async def test_waiting_counts_follow_queued_jobs(store: Store) -> None:
    a, _, _ = await insert(store, spec("x"), spec("x"), spec("y", queue="q2"))
    assert await store.queue_waiting() == {("default", "x"): 2, ("q2", "y"): 1}
    await change(store, a.id, lambda r: lifecycle.cancel(r, T0 + 1))
    (running,) = await claim(store, tasks=("x",))
    assert await store.queue_waiting() == {("q2", "y"): 1}
    await change(store, running.id, lambda r: lifecycle.requeue(r, T0 + 2, "lost", False))
    assert await store.queue_waiting() == {("default", "x"): 1, ("q2", "y"): 1}


# -- concurrency keys ---------------------------------------------------------------------------
async def test_the_concurrency_key_is_kept_through_every_change(store: Store) -> None:
    (keyed, plain) = await insert(store, spec(concurrency_key="domain:x"), spec())
    (got,) = await store.job_get_many([keyed.id])
    assert (got.concurrency_key, plain.concurrency_key) == ("domain:x", None)
    running = {j.id: j for j in await claim(store)}
    assert running[keyed.id].concurrency_key == "domain:x"
    (again,) = await store.job_get_many([keyed.id])
    assert again.concurrency_key == "domain:x"


# -- dedup --------------------------------------------------------------------------------------
async def test_unique_key_dedups_while_live_only(store: Store) -> None:
    first, dup = await store.job_insert_many(
        [lifecycle.born(spec(unique_key="k"), T0), lifecycle.born(spec(unique_key="k"), T0)]
    )
    assert first.created and not dup.created and dup.job.id == first.job.id
    (again,) = await insert(store, spec(unique_key="k"), now=T0 + 1)
    assert again.id == first.job.id
    (job,) = await claim(store)
    (running,) = await insert(store, spec(unique_key="k"), now=T0 + 2)
    assert running.id == first.job.id
    await report(store, job, T0 + 3)
    (fresh,) = await insert(store, spec(unique_key="k"), now=T0 + 4)
    assert fresh.id != first.job.id


async def test_client_chosen_id_is_idempotent(store: Store) -> None:
    (first,) = await store.job_insert_many([lifecycle.born(spec(id="order-17", args=[1]), T0)])
    (again,) = await store.job_insert_many([lifecycle.born(spec(id="order-17", args=[2]), T0)])
    assert first.created and not again.created and again.job == first.job
    (job,) = await claim(store)
    await report(store, job, T0 + 2, result="done")
    # still idempotent once the job is finished (and perhaps no longer in memory)
    mixed = await store.job_insert_many(
        [lifecycle.born(spec(id="order-17"), T0 + 3), lifecycle.born(spec(id="order-18"), T0 + 3)]
    )
    assert [(i.job.id, i.created) for i in mixed] == [("order-17", False), ("order-18", True)]
    assert mixed[0].job.state is JobState.COMPLETED
    assert unpack(mixed[0].job.result or b"") == "done"


# -- dead letters and retention -----------------------------------------------------------------
async def _make_dead(store: Store, n: int, now: float = T0, **fields: object) -> list[JobRecord]:
    task = str(fields.pop("task", "t"))
    queue = str(fields.pop("queue", "default"))
    await insert(store, *[spec(task, queue=queue, **fields) for _ in range(n)], now=now)
    dead = []
    for job in await claim(store, now=now, queues=[queue], tasks=[task]):
        done = await fail(store, job, now, reject=True)
        assert done is not None
        dead.append(done)
    return dead


async def dlq_retry(store: Store, ids: Sequence[str] | None, now: float) -> int:
    n = 0
    for job in await store.job_dead(ids):
        n += await change(store, job.id, lambda r: lifecycle.dlq_retry(r, now)) is not None
    return n


async def test_dlq_retry_requeues_dead_jobs(store: Store) -> None:
    a, b, c = await _make_dead(store, 3)
    (live,) = await insert(store, spec(), now=T0 + 1)
    assert [j.id for j in await store.job_dead([a.id, live.id, "nope"])] == [a.id]
    assert await dlq_retry(store, [a.id, live.id, "nope"], T0 + 2) == 1
    retried = await store.job_get(a.id)
    assert retried is not None and (retried.state, retried.attempts) == (JobState.QUEUED, 0)
    events = await store.job_events(a.id)
    assert events[-1] == {"event": "retried", "at": T0 + 2, "reason": "dlq retry"}
    assert await dlq_retry(store, None, T0 + 3) == 2
    got = await claim(store, now=T0 + 4)
    assert {j.id for j in got} == {a.id, b.id, c.id, live.id}
    assert (await store.stats())["states"]["dead"] == 0


async def test_dlq_retry_restores_the_unique_key(store: Store) -> None:
    (dead,) = await _make_dead(store, 1, unique_key="k")
    (fresh,) = await insert(store, spec(unique_key="k"), now=T0 + 1)
    assert fresh.id != dead.id  # a dead job does not hold its key
    await change(store, fresh.id, lambda r: lifecycle.cancel(r, T0 + 2))
    assert await dlq_retry(store, [dead.id], T0 + 3) == 1
    (dup,) = await insert(store, spec(unique_key="k"), now=T0 + 4)
    assert dup.id == dead.id


async def test_dlq_purge_deletes_dead_jobs(store: Store) -> None:
    a, b, c = await _make_dead(store, 3)
    (live,) = await insert(store, spec(), now=T0 + 1)
    assert await store.dlq_purge([a.id, live.id]) == 1
    assert await store.job_get(a.id) is None and await store.job_events(a.id) == []
    assert await store.job_get(live.id) is not None
    assert await store.dlq_purge(None) == 2
    assert await store.job_get(b.id) is None and await store.job_get(c.id) is None
    stats = await store.stats()
    assert (stats["states"]["dead"], stats["states"]["queued"]) == (0, 1)
    assert await store.job_dead(None) == []


async def test_prune_deletes_finished_jobs_before_the_time(store: Store) -> None:
    old, new, running = await insert(store, spec(), spec(), spec())
    jobs = await claim(store, limit=2)
    (queued,) = await insert(store, spec(), now=T0 + 5)
    await report(store, jobs[0], T0 + 10)
    cancelled = await change(store, queued.id, lambda r: lifecycle.cancel(r, T0 + 20))
    assert cancelled is not None
    await report(store, jobs[1], T0 + 30)
    (dead,) = await _make_dead(store, 1, now=T0 + 31, task="d", queue="dq")
    assert await store.job_prune(T0 + 10) == 0  # strictly before
    assert await store.job_prune(T0 + 25) == 2
    assert await store.job_get(old.id) is None and await store.job_events(old.id) == []
    assert await store.job_get(cancelled.id) is None
    assert await store.job_get(new.id) is not None
    assert await store.job_get(dead.id) is not None  # dead stays until purged
    assert await store.job_get(running.id) is not None
    states = (await store.stats())["states"]
    assert (states["completed"], states["cancelled"], states["dead"]) == (1, 0, 1)
    assert await store.job_prune(T0 + 1000) == 1


async def test_repeated_ids_count_once(store: Store) -> None:
    (dead,) = await _make_dead(store, 1)
    assert len(await store.job_dead([dead.id, dead.id])) == 1
    assert [j.id for j in await store.job_get_many([dead.id, "nope", dead.id])] == [dead.id]
    assert await dlq_retry(store, [dead.id, dead.id], T0 + 10) == 1
    (again,) = await claim(store, now=T0 + 11)
    await fail(store, again, T0 + 12, reject=True)
    assert await store.dlq_purge([dead.id, dead.id]) == 1
    assert (await store.stats())["states"]["dead"] == 0


# -- numbers and listings -----------------------------------------------------------------------
async def test_stats_count_states_queues_and_totals(store: Store) -> None:
    await insert(store, spec(), spec(), spec(queue="q2"), spec(eta=T0 + 100))
    (job,) = await claim(store, limit=1)
    await report(store, job, T0 + 1)
    await claim(store, limit=1, queues=["q2"])
    stats = await store.stats()
    assert stats["states"] == {
        "waiting": 0,
        "scheduled": 1,
        "queued": 1,
        "running": 1,
        "completed": 1,
        "dead": 0,
        "cancelled": 0,
    }
    assert stats["queues"] == {
        "default": {"scheduled": 1, "queued": 1, "completed": 1},
        "q2": {"running": 1},
    }
    assert (stats["totals"]["submitted"], stats["totals"]["completed"]) == (4, 1)
    # the brief numbers are the same states and totals
    assert await store.stats_brief() == {"states": stats["states"], "totals": stats["totals"]}


async def test_job_list_filters_newest_first_with_cursors(store: Store) -> None:
    jobs = await insert(store, *[spec(queue="a" if i % 2 else "b") for i in range(6)])
    (running,) = await claim(store, limit=1, queues=["b"])
    assert running.id == jobs[0].id
    assert await listed(store) == [j.id for j in reversed(jobs)]
    assert await listed(store, queue="a") == [jobs[i].id for i in (5, 3, 1)]
    assert await listed(store, state=JobState.RUNNING) == [jobs[0].id]
    assert await listed(store, worker="w1") == [jobs[0].id]
    assert await listed(store, state=JobState.QUEUED, queue="b") == [jobs[4].id, jobs[2].id]
    assert await listed(store, task="nope") == []
    assert await listed(store, id_prefix=jobs[3].id) == [jobs[3].id]
    assert await listed(store, id_prefix="job-") == [j.id for j in reversed(jobs)]
    assert await listed(store, id_prefix="zzz") == []
    page = await store.job_list(JobFilter(), limit=2, offset=1)
    assert [j.id for j in page.jobs] == [jobs[4].id, jobs[3].id]
    # keyset pages: each cursor continues where the last page stopped
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await store.job_list(JobFilter(), limit=4, cursor=cursor)
        seen += [j.id for j in page.jobs]
        if page.cursor is None:
            break
        cursor = page.cursor
    assert seen == [j.id for j in reversed(jobs)]


# -- waiting jobs (workflows) -------------------------------------------------------------------
async def test_a_job_with_dependencies_waits_and_is_found_by_them(store: Store) -> None:
    (first,) = await insert(store, spec())
    (later,) = await insert(
        store, spec(depends_on=(first.id,), workflow="wf-1", feed="result", args=[2])
    )
    assert later.state is JobState.WAITING
    assert [j.id for j in await claim(store)] == [first.id]  # the waiting one is not ready
    assert [j.id for j in await store.job_waiting_on([first.id])] == [later.id]
    assert await store.job_waiting_on(["nobody"]) == []
    assert (await store.stats())["states"]["waiting"] == 1
    members = await store.job_list(JobFilter(workflow="wf-1"))
    assert [j.id for j in members.jobs] == [later.id]
    released = await change(store, later.id, lambda r: lifecycle.ready(r, T0, pack([7])))
    assert released is not None and released.state is JobState.QUEUED
    assert released.inputs == pack([7]) and released.depends_on == (first.id,)
    assert await store.job_waiting_on([first.id]) == []
    (got,) = await store.job_get_many([later.id])
    assert (got.workflow, got.feed, got.inputs) == ("wf-1", "result", pack([7]))


async def test_a_waiting_job_can_be_cancelled_or_blocked(store: Store) -> None:
    a, b = await insert(store, spec(depends_on=("x",)), spec(depends_on=("x", "y")))
    assert {j.id for j in await store.job_waiting_on(["x"])} == {a.id, b.id}
    cancelled = await change(store, a.id, lambda r: lifecycle.cancel(r, T0))
    blocked = await change(store, b.id, lambda r: lifecycle.blocked(r, T0, "y is dead"))
    assert cancelled is not None and cancelled.state is JobState.CANCELLED
    assert blocked is not None and blocked.state is JobState.CANCELLED
    assert (await store.job_events(b.id))[-1]["reason"] == "y is dead"
    assert await store.job_waiting_on(["x", "y"]) == []


async def test_progress_is_kept_with_the_job(store: Store) -> None:
    await insert(store, spec())
    (job,) = await claim(store)
    progress = {"value": 0.5, "message": "half", "meta": {"n": 1}, "at": T0}
    done = await change(
        store,
        job.id,
        lambda r: lifecycle.Transition(
            r,
            lifecycle.report(r, Outcome(r.id, r.lease or 0, True, pack(1)), T0).new.replace(
                progress=progress
            ),
            (),
        ),
    )
    assert done is not None
    (got,) = await store.job_get_many([job.id])
    assert got.progress == progress
