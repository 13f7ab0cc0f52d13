"""Bounded queues (--max-queued): a submit that would take a queue past its limit is refused
whole with the non-fatal ``queue_full``, naming the queue and the limit; jobs already
accepted are untouched and the connection stays usable. Real broker, real clients."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor import Client, QueueFull, RateLimited
from conveyor.broker.app import Broker
from conveyor.broker.backlog import Backlog
from conveyor.broker.config import BrokerConfig, Limits
from conveyor.client.aio import AsyncClient
from conveyor.job import JobRecord, JobState
from tests.conftest import StartWorker
from tests.postgres import ENGINE_PARAMS, engine_url
from tests.security.rawconn import Raw

LIMITS = Limits(max_queued=4, max_queued_by_queue=(("reports", 2),))


@pytest.fixture
def broker_config(home: Path) -> BrokerConfig:
    return BrokerConfig(port=0, store_url="memory://", home=home, limits=LIMITS, http_port=0)


async def waiting(client: AsyncClient, queue: str) -> int:
    counts = (await client.stats())["queues"].get(queue, {})
    return int(counts.get("queued", 0) + counts.get("scheduled", 0))


async def test_a_submit_past_the_limit_is_queue_full_and_the_connection_stays_usable(
    client: AsyncClient,
) -> None:
    first = [await client.submit("add", a=1, b=i, queue="reports") for i in range(2)]
    with pytest.raises(QueueFull) as refused:
        await client.submit("add", a=1, b=2, queue="reports")
    error = refused.value
    assert isinstance(error, RateLimited)  # "slow down", like a rate limit
    assert (error.code, error.queue, error.limit) == ("queue_full", "reports", 2)
    assert "'reports'" in error.message and "limit is 2" in error.message
    # the same connection still serves; other queues have the default limit (4)
    await client.ping()
    for i in range(4):
        await client.submit("add", a=2, b=i, queue="default")
    with pytest.raises(QueueFull) as default_full:
        await client.submit("add", a=2, b=9, queue="default")
    assert (default_full.value.queue, default_full.value.limit) == ("default", 4)
    # what was accepted before is untouched
    assert [(await j.get()).state for j in first] == [JobState.QUEUED] * 2
    assert await waiting(client, "reports") == 2


async def test_the_sync_client_raises_queue_full_too(broker: Broker, home: Path) -> None:
    def scenario() -> QueueFull:
        with Client(broker.url, home=home) as c:
            c.submit_many([{"task": "add", "queue": "reports"}] * 2)
            with pytest.raises(QueueFull) as refused:
                c.submit_many([{"task": "add", "queue": "reports"}])
            c.ping()
            return refused.value

    error = await asyncio.to_thread(scenario)
    assert (error.queue, error.limit) == ("reports", 2)


async def test_a_batch_is_refused_whole_with_an_error_frame_naming_queue_and_limit(
    broker: Broker, home: Path
) -> None:
    raw = await Raw.open(broker.port, home, hello=True)
    try:
        rid = raw.rid()
        raw.send({"t": "submit", "rid": rid, "jobs": [{"task": "t", "queue": "reports"}]})
        assert (await raw.until(rid))[-1]["t"] == "submitted"
        rid = raw.rid()
        jobs = [{"task": "t", "queue": "other"}] + [{"task": "t", "queue": "reports"}] * 2
        raw.send({"t": "submit", "rid": rid, "jobs": jobs})
        error = (await raw.until(rid))[-1]
        assert error["t"] == "error" and error["code"] == "queue_full"
        assert (error["queue"], error["limit"]) == ("reports", 2)
        await raw.ping()  # not fatal
    finally:
        await raw.close()
    counts = (await broker.store.stats())["queues"]
    assert counts.get("reports") == {"queued": 1} and "other" not in counts  # nothing stored


async def test_delayed_jobs_count_and_cancelled_or_claimed_ones_free_their_place(
    client: AsyncClient, start_worker: StartWorker
) -> None:
    delayed = await client.submit("add", a=1, b=1, queue="reports", delay=3600)
    queued = await client.submit("add", a=1, b=2, queue="reports")
    with pytest.raises(QueueFull):
        await client.submit("add", a=1, b=3, queue="reports")
    await client.cancel(delayed.id)
    again = await client.submit("add", a=1, b=4, queue="reports")  # the cancel freed one
    with pytest.raises(QueueFull):
        await client.submit("add", a=1, b=5, queue="reports")
    await start_worker(queues=["reports"])
    assert await queued.result(timeout=10) == 3 and await again.result(timeout=10) == 5
    spec = {"task": "add", "kwargs": {"a": 0, "b": 0}, "queue": "reports"}
    await client.submit_many([spec, spec])  # room again


async def test_a_duplicate_gives_its_place_back(client: AsyncClient) -> None:
    await client.submit("add", a=1, b=1, queue="reports", job_id="dup-1")
    again = await client.submit("add", a=1, b=1, queue="reports", job_id="dup-1")
    assert again.id == "dup-1"
    await client.submit("add", a=1, b=2, queue="reports")  # the duplicate took no place
    with pytest.raises(QueueFull):
        await client.submit("add", a=1, b=3, queue="reports")


async def test_unrouted_jobs_have_the_default_limit(client: AsyncClient) -> None:
    for _ in range(4):
        await client.submit("nobody.offers.this")
    with pytest.raises(QueueFull) as refused:
        await client.submit("nobody.offers.this")
    assert (refused.value.queue, refused.value.limit) == ("", 4)
    assert "unrouted" in refused.value.message


async def test_the_http_api_answers_429_queue_full(broker: Broker, home: Path) -> None:
    assert broker.dashboard_url is not None
    headers = {"Authorization": f"Bearer {(home / 'admin.token').read_text().strip()}"}
    async with httpx.AsyncClient(base_url=broker.dashboard_url, headers=headers) as http:
        for _ in range(2):
            made = await http.post("/api/jobs", json={"task": "add", "queue": "reports"})
            assert made.status_code == 201
        refused = await http.post("/api/jobs", json={"task": "add", "queue": "reports"})
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["code"], error["queue"], error["limit"]) == ("queue_full", "reports", 2)


@pytest.mark.parametrize("limit", [0, 3])
async def test_counts_start_from_the_store_after_a_restart(home: Path, limit: int) -> None:
    store = f"sqlite:///{home / 'jobs.db'}"
    one = Limits(max_queued=1)
    b = Broker(BrokerConfig(port=0, store_url=store, home=home, limits=one))
    await b.start()
    try:
        async with AsyncClient(b.url, home=home) as c:
            await c.submit("add", a=1, b=1, delay=3600)  # scheduled counts too
            with pytest.raises(QueueFull):
                await c.submit("add", a=1, b=2)
    finally:
        await b.stop()
    b = Broker(BrokerConfig(port=0, store_url=store, home=home, limits=one))
    await b.start()
    try:
        async with AsyncClient(b.url, home=home) as c:
            with pytest.raises(QueueFull):  # the one from before the restart is counted
                await c.submit("add", a=1, b=3)
    finally:
        await b.stop()
    bigger = Limits(max_queued=limit)  # 0: no limit at all
    b = Broker(BrokerConfig(port=0, store_url=store, home=home, limits=bigger))
    await b.start()
    try:
        async with AsyncClient(b.url, home=home) as c:
            await c.submit_many([("add", {"a": 1, "b": i}) for i in range(2)])
    finally:
        await b.stop()


def test_limits_refuse_a_negative_or_boolean_limit() -> None:
    with pytest.raises(ValueError, match="max_queued"):
        Limits(max_queued=-1)
    with pytest.raises(ValueError, match="'q'"):
        Limits(max_queued_by_queue=(("q", True),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a queue name"):
        Limits(max_queued_by_queue=(("a b", 1),))


# -- the counters on their own -------------------------------------------------------------------
def _job(queue: str, state: JobState = JobState.QUEUED, task: str = "t", **kw: Any) -> JobRecord:
    return JobRecord(id=f"j{time.perf_counter_ns()}", task=task, payload=b"\x92\x90\x80",
                     queue=queue, state=state, **kw)  # fmt: skip


def test_backlog_claims_of_formerly_unrouted_jobs_come_out_exact() -> None:
    backlog = Backlog(default=10)
    unrouted = [_job("") for _ in range(2)]
    routed = _job("default")
    backlog.settle((j, True) for j in backlog_admit(backlog, [*unrouted, routed]))
    assert backlog.counts == {"": 2, "default": 1}
    # a claim gives an unrouted job its queue: the record no longer says it was unrouted
    for job in (*unrouted, routed):
        backlog.claimed(job.replace(queue="default", state=JobState.RUNNING), "default")
    assert backlog.counts == {} and backlog.unrouted == {}


def test_backlog_moves_count_waiting_states_only() -> None:
    backlog = Backlog(default=1)
    job = _job("q", JobState.SCHEDULED)
    backlog.settle([(job, True)] if backlog.admit([job]) else [])
    running = job.replace(state=JobState.RUNNING)
    backlog.moved(job, job.replace(state=JobState.CANCELLED))
    assert backlog.counts == {}
    backlog.moved(running, running.replace(state=JobState.QUEUED))  # a requeue comes back
    backlog.moved(running, running.replace(state=JobState.SCHEDULED))  # a retry too
    assert backlog.counts == {"q": 2}  # over the limit: jobs already accepted are never refused
    with pytest.raises(QueueFull):
        backlog.admit([_job("q")])
    assert backlog.refused == 1


def backlog_admit(backlog: Backlog, jobs: list[JobRecord]) -> list[JobRecord]:
    backlog.admit(jobs)
    return jobs


# -- the counters follow the store through every kind of change ----------------------------------
@pytest.fixture(params=ENGINE_PARAMS)
async def core(request: pytest.FixtureRequest, home: Path, tmp_path: Path) -> Any:
    from conveyor.broker.core import BrokerCore
    from conveyor.clock import FakeClock
    from conveyor.security.tokens import TokenRegistry
    from conveyor.stores import open_store

    with engine_url(request.param, tmp_path / "b.db") as url:
        config = BrokerConfig(home=home, lease=10.0, deadline_grace=2.0)
        c = BrokerCore(config, open_store(url), TokenRegistry(home / "tokens.json"), FakeClock())
        await c.open()
        yield c
        await c.close()


class _Link:
    def dispatch(self, jobs: list[JobRecord]) -> None: ...

    def abort(self, job_id: str, lease: int | None) -> None: ...

    def close(self, reason: str) -> None: ...


async def test_the_counters_follow_the_store_through_every_change(core: Any) -> None:
    from conveyor.lifecycle import Outcome

    async def same() -> None:
        # a trigger's dispatch pass may be claiming in the background (on PostgreSQL it
        # does so across loop turns, while stats() waits on the database): let it finish
        await core.dispatcher.settled()
        waiting = {
            q: n
            for q, states in (await core.store.stats())["queues"].items()
            if (n := states.get("queued", 0) + states.get("scheduled", 0))
        }
        assert dict(core.backlog.counts) == waiting

    def spec(job_id: str, **kw: Any) -> JobRecord:
        return JobRecord(id=job_id, task="t", payload=b"\x92\x90\x80", queue="", **kw)

    now = core.clock.now()
    await core.submit([spec("u1"), spec("u2"), spec("u3", eta=now + 5)])  # unrouted
    await same()
    core.clock.advance(6)
    assert await core.promote(core.clock.now()) == 1  # u3: scheduled -> queued, still unrouted
    await same()

    def join() -> Any:
        return core.workforce.worker_join(name="w", tasks=["t"], queues=["work"], concurrency=2,
                                prefetch=0, link=_Link(), routes={"t": "work"})  # fmt: skip

    worker = join()
    await core.submit([spec("r1", max_retries=1), spec("r2")])  # routed to "work" now
    await same()
    await core.dispatcher.run_once()  # claims two: unrouted ones get "work" as they go
    await same()
    held = dict(worker.holding)
    fail = Outcome(next(iter(held)), held[next(iter(held))], False, None, {"type": "E"}, 3.0)
    await core.workforce.report(worker, [fail])  # a retry: back to scheduled
    await same()
    await core.cancel("r2")
    await same()
    core.workforce.worker_left(worker)  # its other job goes back to queued
    await core.settle()
    await same()
    again = join()
    await core.dispatcher.run_once()
    core.clock.advance(11)
    await core.workforce.reap(core.clock.now())  # silent: a lease-expiry requeue
    await same()
    core.workforce.heartbeat(again, [])
    core.clock.advance(4)
    await core.promote(core.clock.now())
    await core.dispatcher.run_once()
    for job_id, lease in dict(again.holding).items():
        dead = Outcome(job_id, lease, False, None, {"type": "E"}, None, True)
        await core.workforce.report(again, [dead])
    await same()
    assert await core.dlq_retry(None) >= 1  # dead -> queued
    await same()
