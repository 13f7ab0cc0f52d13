"""The store contract: one suite, run against every engine.

Each test gets a fresh, opened store from the ``store`` fixture. Time is a plain float
the test moves by hand (the store takes ``now`` on every call): nothing sleeps. To add
an engine, add a param to ``ENGINES`` and a branch to :func:`_make_store`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from pathlib import Path

import pytest

from conveyor.errors import BrokerError, JobNotFound
from conveyor.job import Job, JobState
from conveyor.stores import SqliteStore, open_store
from conveyor.stores.base import Claimant, Outcome, Store
from conveyor.validation import JobSpec

T0 = 1_700_000_000.0
LEASE = 30.0

# Every engine runs the whole contract. The PostgreSQL engine joins here when it exists
# (param "postgresql", marked `postgres`, URL from CONVEYOR_TEST_POSTGRES).
ENGINES = [
    "memory",
    "sqlite",
    "sqlite-uncached",  # no recent-jobs cache: every finished job is read back from disk
]


def _make_store(engine: str, tmp_path: Path) -> Store:
    if engine == "memory":
        return open_store("memory://")
    if engine == "sqlite":
        return open_store(f"sqlite:///{tmp_path}/conveyor.db")
    assert engine == "sqlite-uncached", engine
    return SqliteStore(f"sqlite:///{tmp_path}/conveyor.db", recent=0)


@pytest.fixture(params=ENGINES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    engine = _make_store(request.param, tmp_path)
    await engine.open(T0)
    try:
        yield engine
    finally:
        await engine.close()


# -- helpers ------------------------------------------------------------------------------------
def spec(task: str = "t", **fields: object) -> JobSpec:
    return JobSpec(task=task, **fields)  # type: ignore[arg-type]


async def insert(store: Store, *specs: JobSpec, now: float = T0) -> list[Job]:
    return [i.job for i in await store.job_insert_many(specs, now)]


async def claim(
    store: Store,
    limit: int = 100,
    now: float = T0,
    worker: str = "w1",
    queues: Sequence[str] = ("default",),
    tasks: Collection[str] = ("t",),
    lease: float = LEASE,
) -> list[Job]:
    return await store.job_claim(Claimant(worker, queues, tasks), limit, lease, now)


async def report(store: Store, job: Job, now: float, **fields: object) -> Job | None:
    fields.setdefault("ok", True)
    assert job.lease is not None
    outcome = Outcome(id=job.id, lease=job.lease, **fields)  # type: ignore[arg-type]
    (done,) = await store.job_report_many([outcome], now)
    return done


async def fail(store: Store, job: Job, now: float, **fields: object) -> Job | None:
    error = {"type": "ValueError", "message": "boom", "traceback": "..."}
    return await report(store, job, now, ok=False, error=error, **fields)


async def state_of(store: Store, job_id: str) -> JobState:
    job = await store.job_get(job_id)
    assert job is not None
    return job.state


def kinds(job: Job) -> list[str]:
    return [e["event"] for e in job.events]


# -- insert and schedule ------------------------------------------------------------------------
async def test_insert_makes_a_queued_job(store: Store) -> None:
    (inserted,) = await store.job_insert_many([spec(args=[1, "a"], kwargs={"k": True})], T0)
    assert inserted.created
    job = inserted.job
    assert job.state is JobState.QUEUED
    assert (job.args, job.kwargs, job.created_at, job.attempts) == ([1, "a"], {"k": True}, T0, 0)
    assert kinds(job) == ["submitted"]
    assert await store.job_get(job.id) == job
    assert await store.job_get("no-such-job") is None


async def test_future_eta_is_scheduled_until_promoted(store: Store) -> None:
    (job,) = await insert(store, spec(eta=T0 + 60))
    (past,) = await insert(store, spec(eta=T0 - 1))
    assert job.state is JobState.SCHEDULED
    assert past.state is JobState.QUEUED
    assert await store.job_next_eta() == T0 + 60
    assert [j.id for j in await claim(store, now=T0 + 1)] == [past.id]
    assert await store.job_promote_due(T0 + 59.9) == 0
    assert await store.job_promote_due(T0 + 60) == 1
    assert await state_of(store, job.id) is JobState.QUEUED
    assert await store.job_next_eta() is None
    assert [j.id for j in await claim(store, now=T0 + 61)] == [job.id]


# -- claim --------------------------------------------------------------------------------------
async def test_claim_takes_priority_first_then_fifo_across_queues(store: Store) -> None:
    specs = [
        spec(queue="a", priority=5),  # 0
        spec(queue="b", priority=1),  # 1
        spec(queue="a", priority=1),  # 2
        spec(queue="b", priority=5),  # 3
        spec(queue="a", priority=10),  # 4
        spec(queue="b", priority=1),  # 5
    ]
    jobs = await insert(store, *specs)
    got = await claim(store, queues=["a", "b"])
    assert [j.id for j in got] == [jobs[i].id for i in (1, 2, 5, 0, 3, 4)]
    assert all(j.state is JobState.RUNNING and j.worker == "w1" for j in got)
    assert all(j.attempts == 1 and j.lease_expires == T0 + LEASE for j in got)


async def test_claim_only_takes_the_claimants_tasks_and_queues(store: Store) -> None:
    mine, other_task, other_queue = await insert(
        store, spec(), spec(task="other"), spec(queue="elsewhere")
    )
    got = await claim(store, queues=["default"], tasks={"t"})
    assert [j.id for j in got] == [mine.id]
    assert await state_of(store, other_task.id) is JobState.QUEUED
    assert await state_of(store, other_queue.id) is JobState.QUEUED
    assert await store.queue_tasks_waiting() == {("default", "other"): 1, ("elsewhere", "t"): 1}
    assert await claim(store, queues=["nothing-here"]) == []


async def test_claim_respects_the_limit(store: Store) -> None:
    jobs = await insert(store, *[spec() for _ in range(5)])
    first = await claim(store, limit=2)
    second = await claim(store, limit=10)
    assert [j.id for j in first + second] == [j.id for j in jobs]
    assert await claim(store) == []


# -- reports ------------------------------------------------------------------------------------
async def test_report_ok_completes_with_the_result(store: Store) -> None:
    await insert(store, spec())
    (job,) = await claim(store)
    done = await report(store, job, T0 + 2, result={"answer": 42})
    assert done is not None
    assert done.state is JobState.COMPLETED
    assert (done.result, done.finished_at, done.lease) == ({"answer": 42}, T0 + 2, None)
    assert kinds(done) == ["submitted", "started", "completed"]
    assert await store.job_get(job.id) == done


async def test_report_with_a_stale_lease_changes_nothing(store: Store) -> None:
    await insert(store, spec())
    (job,) = await claim(store)
    assert job.lease is not None
    stale = Outcome(id=job.id, lease=job.lease + 1000, ok=True, result=1)
    assert await store.job_report_many([stale], T0 + 1) == [None]
    assert await store.job_get(job.id) == job
    # requeued and claimed again: the first lease is stale too
    await store.job_requeue_worker("w1", "gone", T0 + 2)
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
        assert retried is not None
        assert retried.state is JobState.SCHEDULED
        assert retried.eta is not None
        assert now <= retried.eta <= now + ceiling
        now = retried.eta
        assert await store.job_promote_due(now) == 1
    (job,) = await claim(store, now=now)
    dead = await fail(store, job, now + 1)
    assert dead is not None
    assert dead.state is JobState.DEAD
    assert dead.attempts == 3
    assert dead.error is not None
    assert dead.error["type"] == "ValueError"
    assert kinds(dead) == [
        "submitted",
        *(["started", "failed", "retried"] * 2),
        "started",
        "failed",
        "dead",
    ]
    assert [e["attempt"] for e in dead.events if e["event"] == "failed"] == [1, 2, 3]
    assert dead.events[-1]["reason"] == "retries exhausted"
    stats = await store.stats()
    assert stats["totals"]["failed"] == 3
    assert stats["totals"]["retried"] == 2
    assert stats["totals"]["dead"] == 1


async def test_retry_with_a_delay_sets_the_eta(store: Store) -> None:
    await insert(store, spec())
    (job,) = await claim(store)
    retried = await fail(store, job, T0 + 1, retry_delay=7.0)
    assert retried is not None
    assert (retried.state, retried.eta) == (JobState.SCHEDULED, T0 + 8)
    assert await store.job_next_eta() == T0 + 8


async def test_reject_is_dead_at_once(store: Store) -> None:
    await insert(store, spec(max_retries=5))
    (job,) = await claim(store)
    dead = await fail(store, job, T0 + 1, reject=True)
    assert dead is not None
    assert (dead.state, dead.attempts) == (JobState.DEAD, 1)
    assert dead.events[-1] == {"event": "dead", "at": T0 + 1, "reason": "rejected"}


# -- giving jobs back ---------------------------------------------------------------------------
async def test_release_requeues_at_the_front_without_counting_the_attempt(store: Store) -> None:
    first, second = await insert(store, spec(), spec())
    (job,) = await claim(store, limit=1)
    (third,) = await insert(store, spec(), now=T0 + 1)
    assert job.lease is not None
    assert await store.job_release_many([(job.id, job.lease), ("nope", 1)], T0 + 2) == 1
    released = await store.job_get(job.id)
    assert released is not None
    assert (released.state, released.attempts, released.worker) == (JobState.QUEUED, 0, None)
    assert kinds(released) == ["submitted"]
    got = await claim(store, now=T0 + 3)
    assert [j.id for j in got] == [first.id, second.id, third.id]


async def test_requeue_worker_puts_its_jobs_at_the_front(store: Store) -> None:
    a, b, c = await insert(store, spec(), spec(), spec(priority=1))
    taken = await claim(store, limit=2)  # c (priority 1) and a
    assert [j.id for j in taken] == [c.id, a.id]
    (d,) = await insert(store, spec(), now=T0 + 1)
    requeued = await store.job_requeue_worker("w1", "worker lost", T0 + 2)
    assert {j.id for j in requeued} == {a.id, c.id}
    for job in requeued:
        assert job.state is JobState.QUEUED
        assert job.events[-1] == {
            "event": "requeued",
            "at": T0 + 2,
            "worker": "w1",
            "reason": "worker lost",
        }
    assert (await store.stats())["totals"]["requeued"] == 2
    got = await claim(store, worker="w2", now=T0 + 3)
    assert [j.id for j in got] == [c.id, a.id, b.id, d.id]
    assert await store.job_requeue_worker("w1", "again", T0 + 4) == []


async def test_rescue_takes_only_expired_leases(store: Store) -> None:
    await insert(store, spec(), spec())
    (short,) = await claim(store, limit=1, lease=10.0)
    (long,) = await claim(store, limit=1, worker="w2", lease=100.0)
    assert await store.job_rescue_expired(T0 + 9) == []
    rescued = await store.job_rescue_expired(T0 + 50)
    assert [j.id for j in rescued] == [short.id]
    assert rescued[0].state is JobState.QUEUED
    assert rescued[0].events[-1]["reason"] == "lease expired"
    assert await state_of(store, long.id) is JobState.RUNNING


async def test_extend_leases_keeps_jobs_running(store: Store) -> None:
    await insert(store, spec(), spec())
    jobs = await claim(store, lease=10.0)
    assert await store.job_extend_leases("w1", 30.0, T0 + 5) == 2
    assert await store.job_extend_leases("nobody", 30.0, T0 + 5) == 0
    assert await store.job_rescue_expired(T0 + 20) == []
    for job in jobs:
        got = await store.job_get(job.id)
        assert got is not None
        assert got.lease_expires == T0 + 35
    assert len(await store.job_rescue_expired(T0 + 35)) == 2


# -- cancel -------------------------------------------------------------------------------------
async def test_cancel_queued_and_scheduled_at_once(store: Store) -> None:
    queued, scheduled = await insert(store, spec(), spec(eta=T0 + 10))
    for job in (queued, scheduled):
        cancelled = await store.job_cancel(job.id, T0 + 1)
        assert (cancelled.state, cancelled.finished_at) == (JobState.CANCELLED, T0 + 1)
        assert kinds(cancelled)[-1] == "cancelled"
    assert await claim(store, now=T0 + 20) == []
    assert await store.job_promote_due(T0 + 20) == 0
    assert (await store.stats())["totals"]["cancelled"] == 2


async def test_cancel_running_waits_for_the_report(store: Store) -> None:
    await insert(store, spec())
    (job,) = await claim(store)
    marked = await store.job_cancel(job.id, T0 + 1)
    assert (marked.state, marked.cancel_requested) == (JobState.RUNNING, True)
    done = await report(store, job, T0 + 2, result="ignored")
    assert done is not None
    assert done.state is JobState.CANCELLED
    assert await state_of(store, job.id) is JobState.CANCELLED


async def test_cancel_running_then_worker_lost_ends_cancelled(store: Store) -> None:
    await insert(store, spec())
    (job,) = await claim(store)
    await store.job_cancel(job.id, T0 + 1)
    (gone,) = await store.job_requeue_worker("w1", "worker lost", T0 + 2)
    assert gone.state is JobState.CANCELLED  # not run again
    assert await claim(store, worker="w2", now=T0 + 3) == []
    assert (await store.stats())["totals"]["requeued"] == 0


async def test_requeued_jobs_keep_their_order_at_the_front(store: Store) -> None:
    jobs = await insert(store, *(spec() for _ in range(4)))
    await claim(store, limit=3)
    await store.job_requeue_worker("w1", "worker lost", T0 + 1)
    got = await claim(store, worker="w2", now=T0 + 2)
    assert [j.id for j in got] == [j.id for j in jobs]


async def test_waiting_counts_follow_queued_jobs(store: Store) -> None:
    a, _, _ = await insert(store, spec("x"), spec("x"), spec("y", queue="q2"))
    assert await store.queue_tasks_waiting() == {("default", "x"): 2, ("q2", "y"): 1}
    await store.job_cancel(a.id, T0 + 1)
    await claim(store, tasks=("x",))
    assert await store.queue_tasks_waiting() == {("q2", "y"): 1}
    await store.job_requeue_worker("w1", "worker lost", T0 + 2)
    assert await store.queue_tasks_waiting() == {("default", "x"): 1, ("q2", "y"): 1}


async def test_cancel_final_conflicts_and_unknown_is_not_found(store: Store) -> None:
    await insert(store, spec())
    (job,) = await claim(store)
    await report(store, job, T0 + 1)
    with pytest.raises(BrokerError) as info:
        await store.job_cancel(job.id, T0 + 2)
    assert info.value.code == "conflict"
    with pytest.raises(JobNotFound):
        await store.job_cancel("no-such-job", T0 + 2)


# -- dedup --------------------------------------------------------------------------------------
async def test_unique_key_dedups_while_live_only(store: Store) -> None:
    first, dup = await store.job_insert_many([spec(unique_key="k"), spec(unique_key="k")], T0)
    assert first.created and not dup.created
    assert dup.job.id == first.job.id
    (again,) = await store.job_insert_many([spec(unique_key="k")], T0 + 1)
    assert (again.created, again.job.id) == (False, first.job.id)
    (job,) = await claim(store)
    (running,) = await store.job_insert_many([spec(unique_key="k")], T0 + 2)
    assert not running.created
    await report(store, job, T0 + 3)
    (fresh,) = await store.job_insert_many([spec(unique_key="k")], T0 + 4)
    assert fresh.created and fresh.job.id != first.job.id


async def test_client_chosen_id_is_idempotent(store: Store) -> None:
    (first,) = await store.job_insert_many([spec(id="order-17", args=[1])], T0)
    (again,) = await store.job_insert_many([spec(id="order-17", args=[2])], T0 + 1)
    assert first.created and not again.created
    assert again.job == first.job
    (job,) = await claim(store)
    await report(store, job, T0 + 2, result="done")
    # still idempotent once the job is finished (and perhaps no longer in memory)
    mixed = await store.job_insert_many([spec(id="order-17"), spec(id="order-18")], T0 + 3)
    assert [(i.job.id, i.created) for i in mixed] == [("order-17", False), ("order-18", True)]
    assert mixed[0].job.state is JobState.COMPLETED
    assert mixed[0].job.result == "done"


# -- dead letters and retention -----------------------------------------------------------------
async def _make_dead(store: Store, n: int, now: float = T0, **fields: object) -> list[Job]:
    jobs = await insert(store, *[spec(**fields) for _ in range(n)], now=now)
    task, queue = jobs[0].task, jobs[0].queue
    dead = []
    for job in await claim(store, now=now, queues=[queue], tasks=[task]):
        done = await fail(store, job, now, reject=True)
        assert done is not None
        dead.append(done)
    return dead


async def test_dlq_retry_requeues_dead_jobs(store: Store) -> None:
    a, b, c = await _make_dead(store, 3)
    (live,) = await insert(store, spec(), now=T0 + 1)
    assert await store.dlq_retry([a.id, live.id, "nope"], T0 + 2) == 1
    retried = await store.job_get(a.id)
    assert retried is not None
    assert (retried.state, retried.attempts) == (JobState.QUEUED, 0)
    assert retried.events[-1] == {"event": "retried", "at": T0 + 2, "reason": "dlq retry"}
    assert await store.dlq_retry(None, T0 + 3) == 2
    got = await claim(store, now=T0 + 4)
    assert {j.id for j in got} == {a.id, b.id, c.id, live.id}
    assert (await store.stats())["states"]["dead"] == 0


async def test_dlq_retry_restores_the_unique_key(store: Store) -> None:
    (dead,) = await _make_dead(store, 1, unique_key="k")
    (fresh,) = await store.job_insert_many([spec(unique_key="k")], T0 + 1)
    assert fresh.created  # a dead job does not hold its key
    await store.job_cancel(fresh.job.id, T0 + 2)
    assert await store.dlq_retry([dead.id], T0 + 3) == 1
    (dup,) = await store.job_insert_many([spec(unique_key="k")], T0 + 4)
    assert (dup.created, dup.job.id) == (False, dead.id)


async def test_dlq_purge_deletes_dead_jobs(store: Store) -> None:
    a, b, c = await _make_dead(store, 3)
    (live,) = await insert(store, spec(), now=T0 + 1)
    assert await store.dlq_purge([a.id, live.id]) == 1
    assert await store.job_get(a.id) is None
    assert await store.job_get(live.id) is not None
    assert await store.dlq_purge(None) == 2
    assert await store.job_get(b.id) is None
    assert await store.job_get(c.id) is None
    stats = await store.stats()
    assert (stats["states"]["dead"], stats["states"]["queued"]) == (0, 1)
    assert await store.dlq_retry(None, T0 + 2) == 0


async def test_prune_deletes_finished_jobs_before_the_time(store: Store) -> None:
    old, new, running = await insert(store, spec(), spec(), spec())
    jobs = await claim(store, limit=2)
    (queued,) = await insert(store, spec(), now=T0 + 5)
    await report(store, jobs[0], T0 + 10)
    cancelled = await store.job_cancel(queued.id, T0 + 20)
    await report(store, jobs[1], T0 + 30)
    (dead,) = await _make_dead(store, 1, now=T0 + 31, task="d", queue="dq")
    assert await store.job_prune(T0 + 10) == 0  # strictly before
    assert await store.job_prune(T0 + 25) == 2
    assert await store.job_get(old.id) is None
    assert await store.job_get(cancelled.id) is None
    assert await store.job_get(new.id) is not None
    assert await store.job_get(dead.id) is not None  # dead stays until purged
    assert await store.job_get(running.id) is not None
    stats = await store.stats()
    assert stats["states"]["completed"] == 1
    assert stats["states"]["cancelled"] == 0
    assert stats["states"]["dead"] == 1
    assert await store.job_prune(T0 + 1000) == 1


# -- numbers and listings -----------------------------------------------------------------------
async def test_stats_count_states_queues_and_totals(store: Store) -> None:
    await insert(store, spec(), spec(), spec(queue="q2"), spec(eta=T0 + 100))
    (job,) = await claim(store, limit=1)
    await report(store, job, T0 + 1)
    await claim(store, limit=1, queues=["q2"])
    stats = await store.stats()
    assert stats["states"] == {
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
    assert stats["totals"]["submitted"] == 4
    assert stats["totals"]["completed"] == 1


async def test_job_list_filters_newest_first(store: Store) -> None:
    jobs = await insert(store, *[spec(queue="a" if i % 2 else "b") for i in range(6)])
    (running,) = await claim(store, limit=1, queues=["b"])
    assert running.id == jobs[0].id
    listed = await store.job_list()
    assert [j.id for j in listed] == [j.id for j in reversed(jobs)]
    assert listed[-1].state is JobState.RUNNING
    assert [j.id for j in await store.job_list(queue="a")] == [jobs[i].id for i in (5, 3, 1)]
    assert [j.id for j in await store.job_list(state="running")] == [jobs[0].id]
    assert [j.id for j in await store.job_list(state="queued", queue="b")] == [
        jobs[4].id,
        jobs[2].id,
    ]
    page = await store.job_list(limit=2, offset=1)
    assert [j.id for j in page] == [jobs[4].id, jobs[3].id]
    assert await store.job_list(state="dead") == []
    assert await store.job_list(limit=0) == []


async def test_repeated_ids_in_dlq_calls_count_once(store: Store) -> None:
    (dead,) = await _make_dead(store, 1)
    assert await store.dlq_retry([dead.id, dead.id], T0 + 10) == 1
    states = (await store.stats())["states"]
    assert (states["dead"], states["queued"]) == (0, 1)
    (again,) = await claim(store, now=T0 + 11)
    await fail(store, again, T0 + 12, reject=True)
    assert await store.dlq_purge([dead.id, dead.id]) == 1
    assert (await store.stats())["states"]["dead"] == 0
