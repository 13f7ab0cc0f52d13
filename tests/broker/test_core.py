"""The core service on its own: no sockets, a fake clock, a fake worker link.

What the lifecycle decides is tested in tests/test_lifecycle.py; here, that the core makes
the right decision at the right moment: whose jobs go back when a worker is lost or goes
silent, which runs are charged, when the broker gives up on a hung run, and what the
background services do when their clock says it is time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor.broker.config import BrokerConfig
from conveyor.broker.core import BrokerCore
from conveyor.broker.dispatch import WorkerRef
from conveyor.broker.events import BrokerEvent, JobChanged, WorkerJoined, WorkerLeft
from conveyor.broker.maintenance import LeaseReaper, Promoter, RetentionCleaner
from conveyor.clock import FakeClock
from conveyor.job import JobRecord, JobState
from conveyor.lifecycle import Outcome, TaskOptions
from conveyor.protocol.payload import EMPTY_CALL, pack
from conveyor.security.tokens import TokenRegistry
from conveyor.stores import open_store
from tests.postgres import ENGINE_PARAMS, engine_url

LEASE = 10.0
GRACE = 2.0


class FakeLink:
    """A worker connection that only records what the broker sent it."""

    def __init__(self) -> None:
        self.jobs: list[JobRecord] = []
        self.aborted: list[tuple[str, int | None]] = []

    def dispatch(self, jobs: list[JobRecord]) -> None:
        self.jobs.extend(jobs)

    def abort(self, job_id: str, lease: int | None) -> None:
        self.aborted.append((job_id, lease))

    def close(self, reason: str) -> None:
        raise AssertionError("not expected")


class Harness:
    def __init__(self, core: BrokerCore, clock: FakeClock) -> None:
        self.core = core
        self.clock = clock
        self.events: list[BrokerEvent] = []
        core.hub.subscribe(self.events.append)

    async def submit(self, *jobs: JobRecord) -> list[JobRecord]:
        return [i.job for i in await self.core.submit(jobs)]

    def join(self, concurrency: int = 1, prefetch: int = 1, **options: TaskOptions) -> WorkerRef:
        return self.core.workforce.worker_join(
            name="w",
            tasks=["t"],
            queues=["default"],
            concurrency=concurrency,
            prefetch=prefetch,
            link=FakeLink(),
            options=options,
        )

    async def dispatch(self, worker: WorkerRef) -> list[JobRecord]:
        link = worker.link
        assert isinstance(link, FakeLink)
        before = len(link.jobs)
        # one pass at a time, as in the broker: a pass of our own beside one a trigger
        # started would claim for the same worker concurrently (out of order on PostgreSQL)
        await self.core.dispatcher.settled()
        self.core.dispatcher.trigger()
        await self.core.dispatcher.settled()
        return link.jobs[before:]

    async def get(self, job_id: str) -> JobRecord:
        return await self.core.get(job_id)

    async def events_of(self, job_id: str, kind: str) -> list[dict[str, object]]:
        return [e for e in await self.core.history(job_id) if e["event"] == kind]


def job(job_id: str, **fields: object) -> JobRecord:
    return JobRecord(id=job_id, task="t", payload=EMPTY_CALL, **fields)  # type: ignore[arg-type]


@pytest.fixture(params=ENGINE_PARAMS)
async def h(request: pytest.FixtureRequest, home: Path, tmp_path: Path) -> AsyncIterator[Harness]:
    with engine_url(request.param, tmp_path / "c.db") as url:
        clock = FakeClock()
        config = BrokerConfig(home=home, lease=LEASE, deadline_grace=GRACE, retention=100.0)
        core = BrokerCore(config, open_store(url), TokenRegistry(home / "tokens.json"), clock)
        await core.open()
        try:
            yield Harness(core, clock)
        finally:
            await core.close()


# -- a worker that is lost ----------------------------------------------------------------------
async def test_a_lost_worker_is_charged_only_for_runs_it_started(h: Harness) -> None:
    await h.submit(job("a", max_retries=1), job("b", max_retries=1))
    worker = h.join(concurrency=1, prefetch=1)
    assert [j.id for j in await h.dispatch(worker)] == ["a", "b"]
    h.core.workforce.heartbeat(worker, ["a"])  # a started; b was only prefetched
    h.core.workforce.worker_left(worker)
    await h.core.settle()
    got_a, got_b = await h.get("a"), await h.get("b")
    assert (got_a.state, got_a.attempts) == (JobState.QUEUED, 1)
    assert (got_b.state, got_b.attempts) == (JobState.QUEUED, 0)
    assert [e["charged"] for e in await h.events_of("a", "requeued")] == [True]
    assert [e["charged"] for e in await h.events_of("b", "requeued")] == [False]
    assert any(isinstance(e, WorkerLeft) for e in h.events)
    # both go back in their old order, in front of anything submitted since
    await h.submit(job("c"))
    again = h.join(concurrency=3, prefetch=0)
    assert [j.id for j in await h.dispatch(again)] == ["a", "b", "c"]


async def test_a_run_that_keeps_losing_its_worker_ends_dead(h: Harness) -> None:
    await h.submit(job("a", max_retries=1))
    finished: list[JobRecord] = []
    assert await h.core.wait("a", object(), finished.append) is None
    for _ in range(2):
        worker = h.join()
        await h.dispatch(worker)
        h.core.workforce.heartbeat(worker, ["a"])
        h.core.workforce.worker_left(worker)
        await h.core.settle()
    dead = await h.get("a")
    assert dead.state is JobState.DEAD and dead.attempts == 2
    assert dead.error is not None and dead.error["type"] == "WorkerLost"
    assert finished == [dead]  # the waiting producer heard of it


async def test_claims_resolve_unset_retries_from_the_claiming_workers_task(h: Harness) -> None:
    await h.submit(job("a"))  # no retries given: the task's own apply, whenever it joined
    worker = h.join(t=TaskOptions(retries=0))
    (claimed,) = await h.dispatch(worker)
    assert claimed.max_retries == 0
    h.core.workforce.heartbeat(worker, ["a"])
    h.core.workforce.worker_left(worker)
    await h.core.settle()
    assert (await h.get("a")).state is JobState.DEAD  # retries=0: one run only


# -- a worker that goes silent ------------------------------------------------------------------
async def test_a_silent_worker_loses_its_jobs_and_gets_none_until_it_heartbeats(
    h: Harness,
) -> None:
    await h.submit(job("a"), job("b"))
    worker = h.join(concurrency=1, prefetch=1)
    await h.dispatch(worker)
    h.core.workforce.heartbeat(worker, ["a"])
    h.clock.advance(LEASE - 1)
    await LeaseReaper(h.core, h.clock).run_once(h.clock.now())
    assert (await h.get("a")).state is JobState.RUNNING  # not yet
    h.clock.advance(2)
    await LeaseReaper(h.core, h.clock).run_once(h.clock.now())
    assert worker.stalled and not worker.holding
    assert [e["reason"] for e in await h.events_of("a", "requeued")] == ["lease expired"]
    assert await h.dispatch(worker) == []  # stalled: nothing for it
    # its late report changes nothing: the run is no longer its own
    await h.core.workforce.report(worker, [Outcome("a", 1, True, pack(1))])
    assert (await h.get("a")).state is JobState.QUEUED
    h.core.workforce.heartbeat(worker, [])
    assert not worker.stalled
    assert {j.id for j in await h.dispatch(worker)} == {"a", "b"}


async def test_the_broker_fails_a_run_past_its_timeout_and_the_grace(h: Harness) -> None:
    await h.submit(job("a", timeout=1.0, max_retries=0), job("b"))
    worker = h.join(concurrency=2, prefetch=0)
    await h.dispatch(worker)
    h.core.workforce.heartbeat(worker, ["a", "b"])
    h.clock.advance(1.0 + GRACE - 0.1)
    h.core.workforce.heartbeat(worker, ["a", "b"])  # still alive: only the deadline can end it
    await h.core.workforce.reap(h.clock.now())
    assert (await h.get("a")).state is JobState.RUNNING
    h.clock.advance(0.2)
    h.core.workforce.heartbeat(worker, ["a", "b"])
    await h.core.workforce.reap(h.clock.now())
    dead = await h.get("a")
    assert dead.state is JobState.DEAD and dead.error is not None
    assert dead.error["type"] == "TimeoutError" and "gave up" in dead.error["message"]
    link = worker.link
    assert isinstance(link, FakeLink) and [i for i, _ in link.aborted] == ["a"]
    assert set(worker.holding) == {"b"}  # b has no timeout: untouched


# -- reports ------------------------------------------------------------------------------------
async def test_only_the_holder_of_the_lease_can_report(h: Harness) -> None:
    await h.submit(job("a"))
    worker, other = h.join(), h.join()
    (claimed,) = await h.dispatch(worker) or await h.dispatch(other)
    holder, stranger = (worker, other) if "a" in worker.holding else (other, worker)
    await h.core.workforce.report(stranger, [Outcome("a", claimed.lease or 0, True, pack(1))])
    await h.core.workforce.report(holder, [Outcome("a", (claimed.lease or 0) + 1, True, pack(1))])
    assert (await h.get("a")).state is JobState.RUNNING
    await h.core.workforce.report(holder, [Outcome("a", claimed.lease or 0, True, pack(2))])
    done = await h.get("a")
    assert done.state is JobState.COMPLETED and done.result == pack(2)
    assert holder.completed == 1 and not holder.holding


async def test_cancel_of_a_running_job_tells_its_worker(h: Harness) -> None:
    await h.submit(job("a"))
    worker = h.join()
    (claimed,) = await h.dispatch(worker)
    marked = await h.core.cancel("a")
    assert marked.state is JobState.RUNNING and marked.cancel_requested
    link = worker.link
    assert isinstance(link, FakeLink) and link.aborted == [("a", claimed.lease)]
    await h.core.workforce.report(worker, [Outcome("a", claimed.lease or 0, True, pack(1))])
    assert (await h.get("a")).state is JobState.CANCELLED


# -- the background services, on a fake clock -------------------------------------------------
async def test_the_promoter_moves_due_jobs_when_the_clock_says_so(h: Harness) -> None:
    now = h.clock.now()
    await h.submit(job("later", eta=now + 30))
    promoter = Promoter(h.core, h.clock)
    assert await promoter.next_delay() == promoter.max_sleep  # capped: it re-checks
    h.clock.advance(29)
    await promoter.run_once(h.clock.now())
    assert (await h.get("later")).state is JobState.SCHEDULED
    assert await promoter.next_delay() == pytest.approx(1.0)
    h.clock.advance(1)
    await promoter.run_once(h.clock.now())
    assert (await h.get("later")).state is JobState.QUEUED
    assert any(isinstance(e, JobChanged) and e.old is JobState.SCHEDULED for e in h.events)


async def test_the_cleaner_prunes_what_the_retention_lets_go(h: Harness) -> None:
    await h.submit(job("a"), job("b"))
    await h.core.cancel("a")
    cleaner = RetentionCleaner(h.core, h.clock)
    h.clock.advance(99)
    await cleaner.run_once(h.clock.now())
    assert (await h.get("a")).state is JobState.CANCELLED
    h.clock.advance(2)
    await cleaner.run_once(h.clock.now())
    assert (await h.core.store.job_get("a")) is None
    assert (await h.get("b")).state is JobState.QUEUED


async def test_workers_joining_are_published(h: Harness) -> None:
    worker = h.join()
    assert [e.worker for e in h.events if isinstance(e, WorkerJoined)] == [worker]


async def test_a_restart_requeues_what_was_running_in_its_order(home: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/restart.db"
    config = BrokerConfig(home=home, lease=LEASE)
    clock = FakeClock()
    first = BrokerCore(config, open_store(url), TokenRegistry(home / "t.json"), clock)
    await first.open()
    h = Harness(first, clock)
    await h.submit(job("a"), job("b"), job("c"), job("d"))
    worker = h.join(concurrency=3, prefetch=0)
    await h.dispatch(worker)
    h.core.workforce.heartbeat(worker, ["a", "b", "c"])
    await first.cancel("b")
    await first.close()  # a crash as far as the running jobs know: nobody reported

    again = BrokerCore(config, open_store(url), TokenRegistry(home / "t.json"), clock)
    await again.open()
    try:
        h = Harness(again, clock)
        a, b = await h.get("a"), await h.get("b")
        assert (a.state, a.attempts, b.state) == (JobState.QUEUED, 0, JobState.CANCELLED)
        assert [e["reason"] for e in await h.events_of("a", "requeued")] == ["broker restart"]
        cancelled = await h.events_of("b", "cancelled")
        assert cancelled[0]["reason"] == "cancelled while running (broker restart)"
        totals = (await again.stats())["totals"]
        assert (totals["requeued"], totals["cancelled"]) == (2, 1)
        fresh = h.join(concurrency=4, prefetch=0)
        assert [j.id for j in await h.dispatch(fresh)] == ["a", "c", "d"]
    finally:
        await again.close()


async def test_the_deadline_uses_the_tasks_timeout_and_a_cancel_wins(h: Harness) -> None:
    await h.submit(job("a", max_retries=0), job("b"))  # no timeout of their own
    worker = h.join(concurrency=2, prefetch=0, t=TaskOptions(timeout=1.0))
    await h.dispatch(worker)
    h.core.workforce.heartbeat(worker, ["a", "b"])
    await h.core.cancel("b")
    h.clock.advance(1.0 + GRACE + 0.1)
    h.core.workforce.heartbeat(worker, ["a", "b"])
    await h.core.workforce.reap(h.clock.now())
    a, b = await h.get("a"), await h.get("b")
    assert a.state is JobState.DEAD and a.error is not None and "1s timeout" in a.error["message"]
    assert b.state is JobState.CANCELLED  # asked to stop, not failed and retried


async def test_a_release_of_a_started_run_is_charged(h: Harness) -> None:
    await h.submit(job("a"), job("b"))
    worker = h.join(concurrency=1, prefetch=1)
    jobs = await h.dispatch(worker)
    h.core.workforce.heartbeat(worker, ["a"])
    h.core.workforce.drain(worker)  # as a stopping worker does: nothing is dispatched to it again
    await h.core.workforce.release(worker, {j.id: j.lease or 0 for j in jobs})
    a, b = await h.get("a"), await h.get("b")
    assert (a.state, a.attempts, b.state, b.attempts) == (JobState.QUEUED, 1, JobState.QUEUED, 0)
    assert [e["event"] for e in await h.core.history("b")][-1] == "released"


async def test_a_silent_idle_worker_is_stalled_before_it_gets_jobs(h: Harness) -> None:
    worker = h.join()
    h.clock.advance(LEASE + 1)
    await h.core.workforce.reap(h.clock.now())
    assert worker.stalled
    await h.submit(job("a"))
    assert await h.dispatch(worker) == []  # not given work it would only lose again
    h.core.workforce.heartbeat(worker, [])
    assert [j.id for j in await h.dispatch(worker)] == ["a"]


async def test_a_running_jobs_lease_expiry_follows_its_workers_heartbeats(h: Harness) -> None:
    await h.submit(job("a"))
    worker = h.join()
    await h.dispatch(worker)
    h.clock.advance(7)
    h.core.workforce.heartbeat(worker, ["a"])
    assert h.core.lease_expiry(await h.get("a")) == h.clock.now() + LEASE


async def test_a_service_stops_even_when_its_work_swallows_the_cancel(h: Harness) -> None:
    """psycopg_pool waits with asyncio.wait_for, which on Python 3.11 can lose a cancel that
    races its wake-up; the service loop must still end when asked to stop."""
    started = asyncio.Event()

    class Stubborn(RetentionCleaner):
        interval = 3600.0

        async def run_once(self, now: float) -> None:
            started.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    service = Stubborn(h.core, h.clock)
    service.start()
    await started.wait()
    async with asyncio.timeout(5):
        await service.stop()


# -- claimants ----------------------------------------------------------------------------------
async def test_workers_with_the_same_tasks_share_one_set(h: Harness) -> None:
    """The ready index knows a kind of claimant by its sets: equal ones of different
    workers are one object, so finding the kind never compares them name by name."""
    a, b = h.join(), h.join()
    assert a.tasks is b.tasks and a.claimant.tasks is b.claimant.tasks


async def test_pausing_and_resuming_queues_in_turn_dispatches_only_the_unpaused(
    h: Harness,
) -> None:
    worker = h.core.workforce.worker_join(
        name="w",
        tasks=["t"],
        queues=["q1", "q2", "q3"],
        concurrency=1,
        prefetch=0,
        link=FakeLink(),
    )
    for q in ("q1", "q2", "q3"):
        await h.core.pause(q)
    await h.submit(*(job(f"{q}-{i}", queue=q) for q in ("q1", "q2", "q3") for i in range(2)))
    assert await h.dispatch(worker) == []
    await h.core.pause("q2", paused=False)
    got = await h.dispatch(worker)
    assert [j.id for j in got] == ["q2-0"]
    await h.core.pause("q2")  # paused again: the claimant shaped for "q2 open" is stale
    await h.core.pause("q3", paused=False)
    await h.core.workforce.report(worker, [Outcome("q2-0", got[0].lease or 0, True, pack(1))])
    await h.dispatch(worker)  # the report's own pass may have dispatched it already
    link = worker.link
    assert isinstance(link, FakeLink)
    assert [j.id for j in link.jobs] == ["q2-0", "q3-0"]


async def test_a_task_set_no_worker_offers_any_more_is_not_kept() -> None:
    """The dispatcher's shared sets are for the workers connected: one whose last worker
    left goes (workers that come and go with other task lists must not pile them up). No
    claim runs here: the ready index keeps the sets of its last few claimant kinds itself."""
    import gc
    import weakref

    from conveyor.broker.dispatch import Dispatcher
    from conveyor.stores.memory import MemoryStore

    async def no_orphans(worker: WorkerRef, jobs: list[JobRecord]) -> None:
        raise AssertionError("not expected")

    dispatcher = Dispatcher(MemoryStore(), FakeClock(), LEASE, no_orphans)

    def worker(worker_id: str, tasks: list[str]) -> WorkerRef:
        return WorkerRef(worker_id, "w", frozenset(tasks), ("q",), 1, 0, FakeLink())

    a, b = worker("a", ["x", "y"]), worker("b", ["y", "x"])
    dispatcher.add(a)
    dispatcher.add(b)
    assert a.tasks is b.tasks  # shared while both are connected
    shared = weakref.ref(a.tasks)
    dispatcher.remove("a")
    c = worker("c", ["x", "y"])
    dispatcher.add(c)
    assert c.tasks is b.tasks  # one worker left: still shared with the other
    dispatcher.remove("b")
    dispatcher.remove("c")
    del a, b, c
    gc.collect()
    assert shared() is None
