"""Workers that die, hang or fail: nothing is lost, every attempt is on record."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from conveyor import AsyncClient, JobState
from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.errors import BrokerError
from tests.fault.helpers import spawn_worker, worker_id

pytestmark = pytest.mark.slow


async def test_kill_9_worker_mid_job_another_completes_it(
    broker: Broker, client: AsyncClient, home: Path, start_worker
) -> None:
    doomed = await spawn_worker(broker, home, "doomed", "--concurrency", "1")
    handle = await client.submit("slow_task", seconds=0.5, retries=1)
    await broker.wait_until(lambda: _started(broker, "doomed"))
    job = await client.get(handle.id)
    assert job.state is JobState.RUNNING and job.worker == worker_id(broker, "doomed")
    await doomed.kill()
    survivor = await start_worker()
    assert await handle.result(timeout=15) == 0.5
    job = await client.get(handle.id)
    assert job.worker == survivor.worker_id
    requeued = [e for e in job.events if e["event"] == "requeued"]
    assert len(requeued) == 1 and requeued[0]["reason"] == "worker lost"
    assert requeued[0]["charged"] is True  # it had started: the lost run was an attempt
    assert job.attempts == 2
    assert (await client.stats())["totals"]["requeued"] == 1


def _started(broker: Broker, name: str) -> bool:
    """The named worker has told the broker it started a job."""
    return any(w.started for w in broker.dispatcher.workers.values() if w.name == name)


@pytest.fixture
def broker_config(home: Path) -> BrokerConfig:
    # short leases so a hung worker loses its job quickly
    return BrokerConfig(port=0, store_url="memory://", home=home, lease=1.0, heartbeat=0.25)


async def test_sigstop_worker_loses_its_job_when_the_lease_expires(
    broker: Broker, client: AsyncClient, home: Path, start_worker
) -> None:
    hung = await spawn_worker(broker, home, "hung", "--concurrency", "1")
    handle = await client.submit("slow_task", seconds=0.3, retries=1)
    await broker.wait_until(lambda: _started(broker, "hung"))
    hung.signal(signal.SIGSTOP)
    try:
        survivor = await start_worker()
        assert await handle.result(timeout=15) == 0.3
        job = await client.get(handle.id)
        assert job.worker == survivor.worker_id
        reasons = [e.get("reason") for e in job.events if e["event"] == "requeued"]
        assert reasons == ["lease expired"]
    finally:
        hung.signal(signal.SIGCONT)
        await hung.kill()
    # the stopped worker's late report (stale lease) changed nothing
    assert (await client.get(handle.id)).state is JobState.COMPLETED


async def test_flaky_tasks_complete_or_die_with_every_attempt_recorded(
    client: AsyncClient, start_worker
) -> None:
    await start_worker(concurrency=4)
    handles = await client.submit_many(
        [
            {
                "task": "flaky",
                "kwargs": {"p": 0.5},
                "retries": 5,
                "retry_backoff": 0.01,
                "retry_backoff_max": 0.05,
            }
            for _ in range(40)
        ]
    )
    outcomes = {"completed": 0, "dead": 0}
    for h in handles:
        job = await h.wait(timeout=30)
        assert job.state in (JobState.COMPLETED, JobState.DEAD)
        outcomes[job.state.value] += 1
        started = [e for e in job.events if e["event"] == "started"]
        failed = [e for e in job.events if e["event"] == "failed"]
        assert job.attempts == len(started)
        assert [e["attempt"] for e in failed] == list(range(1, len(failed) + 1))
        if job.state is JobState.DEAD:
            assert job.attempts == 6
        else:
            assert len(failed) == job.attempts - 1
    assert outcomes["completed"] > 0  # with p=0.5 and 6 tries, dead is a 1-in-64 event


async def test_fail_goes_dead_then_dlq_retry_runs_it_again(
    client: AsyncClient, start_worker
) -> None:
    await start_worker()
    handle = await client.submit("fail", message="nope", retries=2, retry_backoff=0.01)
    job = await handle.wait(timeout=15)
    assert job.state is JobState.DEAD and job.attempts == 3
    assert [j.id for j in await client.list_jobs(state="dead")] == [handle.id]
    assert await client.dlq_retry([handle.id]) == 1
    job = await handle.wait(timeout=15)
    assert job.state is JobState.DEAD
    assert "dlq retry" in [e.get("reason") for e in job.events if e["event"] == "retried"]
    assert len([e for e in job.events if e["event"] == "started"]) == 6
    assert await client.dlq_purge() == 1
    with pytest.raises(BrokerError, match="not_found"):
        await client.get(handle.id)


async def test_delayed_job_runs_on_time(client: AsyncClient, start_worker) -> None:
    await start_worker()
    handle = await client.submit("noop", delay=0.3)
    assert (await handle.get()).state is JobState.SCHEDULED
    job = await handle.wait(timeout=10)
    started = next(e["at"] for e in job.events if e["event"] == "started")
    assert job.eta is not None and started >= job.eta
    assert started - job.eta < 0.25  # the promoter sleeps until the ETA, not a polling tick


async def test_unique_key_dedups_while_live(client: AsyncClient, start_worker) -> None:
    first = await client.submit("noop", unique_key="invoice-42")
    again = await client.submit("noop", unique_key="invoice-42")
    assert again.id == first.id
    await start_worker()
    await first.wait(timeout=10)
    later = await client.submit("noop", unique_key="invoice-42")
    assert later.id != first.id


async def test_client_chosen_id_makes_resubmit_idempotent(client: AsyncClient) -> None:
    a = await client.submit("noop", job_id="order-7")
    b = await client.submit("noop", job_id="order-7")
    assert a.id == b.id == "order-7"
    assert (await client.stats())["totals"]["submitted"] == 1


async def test_cancel_in_each_state(broker: Broker, client: AsyncClient, start_worker) -> None:
    queued = await client.submit("noop")
    scheduled = await client.submit("noop", delay=60)
    assert (await queued.cancel()).state is JobState.CANCELLED
    assert (await scheduled.cancel()).state is JobState.CANCELLED
    # running, sync task: marked, cancelled when the worker reports
    worker = await start_worker(concurrency=2)
    running = await client.submit("slow_task", seconds=0.3)
    await broker.wait_until(lambda: _started(broker, worker.name))
    job = await running.cancel()
    assert job.state is JobState.RUNNING and job.cancel_requested
    assert (await running.wait(timeout=10)).state is JobState.CANCELLED
    # completed: conflict
    done = await client.submit("noop")
    await done.wait(timeout=10)
    with pytest.raises(BrokerError, match="conflict"):
        await done.cancel()


async def test_cancel_running_async_task_is_cooperative(
    broker: Broker, client: AsyncClient, start_worker
) -> None:
    worker = await start_worker(pool="async", concurrency=2)
    handle = await client.submit("async_sleep", seconds=30)
    await broker.wait_until(lambda: _started(broker, worker.name))
    await handle.cancel()
    job = await handle.wait(timeout=5)  # far less than the 30 s it would sleep
    assert job.state is JobState.CANCELLED


async def test_task_retry_options_apply_when_the_producer_leaves_them_unset(
    client: AsyncClient, start_worker
) -> None:
    from conveyor import task
    from conveyor.worker.tasks import TaskRegistry

    registry = TaskRegistry()

    @task(name="fragile", retries=1, retry_backoff=0.01, registry=registry)
    def fragile() -> None:
        raise RuntimeError("always")

    await start_worker(registry)
    by_task = await (await client.submit("fragile")).wait(timeout=10)
    assert by_task.state is JobState.DEAD and by_task.attempts == 2  # the task's retries=1
    explicit = await (await client.submit("fragile", retries=0)).wait(timeout=10)
    assert explicit.state is JobState.DEAD and explicit.attempts == 1  # the producer's wins


async def test_a_job_that_kills_its_worker_ends_dead_after_its_retries(
    broker: Broker, client: AsyncClient, home: Path
) -> None:
    """Thread pool: the task takes the whole worker process down on every attempt."""
    crash = await client.submit("crash", retries=2)
    # queued behind it on the same worker (concurrency 1, prefetch 1): never started
    bystander = await client.submit("idle", retries=0)
    for attempt in range(1, 4):
        worker = await spawn_worker(
            broker,
            home,
            f"w{attempt}",
            "--tasks",
            "tests.fault.crashing_tasks",
            "--concurrency",
            "1",
            "--prefetch",
            "1",
        )
        assert await asyncio.wait_for(worker.proc.wait(), 15) == 1  # os._exit(1)
        job = await client.get(crash.id)
        if attempt < 3:
            assert job.state is JobState.QUEUED and job.attempts == attempt
    job = await crash.wait(timeout=10)
    assert job.state is JobState.DEAD
    assert job.error is not None and job.error["type"] == "WorkerLost"
    assert [e["event"] for e in job.events][-2:] == ["failed", "dead"]
    assert [j.id for j in await client.list_jobs(state="dead")] == [crash.id]
    # the bystander was prefetched by every one of those workers and never started
    spared = await client.get(bystander.id)
    assert spared.state is JobState.QUEUED and spared.attempts == 0
    charged = [e.get("charged") for e in spared.events if e["event"] == "requeued"]
    assert charged and not any(charged)


async def test_a_job_that_kills_its_process_pool_child_ends_dead(
    broker: Broker, client: AsyncClient, home: Path
) -> None:
    """Process pool: the child dies, the worker survives and reports WorkerCrashed."""
    worker = await spawn_worker(
        broker,
        home,
        "pp",
        "--tasks",
        "tests.fault.crashing_tasks",
        "--pool",
        "process",
        "--concurrency",
        "1",
    )
    try:
        job = await (await client.submit("crash", retries=1, retry_backoff=0.01)).wait(timeout=30)
        assert job.state is JobState.DEAD and job.attempts == 2
        assert job.error is not None and job.error["type"] == "WorkerCrashed"
        assert worker.proc.returncode is None  # the worker itself lives on
        assert await (await client.submit("idle")).result(timeout=20) == "ok"
    finally:
        await worker.kill()
