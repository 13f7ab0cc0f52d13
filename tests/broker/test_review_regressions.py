"""Regressions found in review: each test failed before its fix."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor import AsyncClient, JobState, task
from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig, Limits
from conveyor.client.async_transport import AsyncConnection
from conveyor.client.endpoint import make_endpoint
from conveyor.errors import ConnectionLost
from conveyor.worker.tasks import TaskRegistry


async def _raw_worker(
    broker: Broker, home: Path, name: str, tasks: list[str], **ready: Any
) -> tuple[AsyncConnection, asyncio.Queue[dict[str, Any]]]:
    """A worker speaking the protocol by hand, to send exactly what a test needs."""
    pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    conn = AsyncConnection(
        make_endpoint(broker.url, None, None, None, None, home, name), "raw", pushes.put_nowait
    )
    await conn.connect()
    await conn.request(
        {
            "t": "ready",
            "tasks": tasks,
            "queues": ["default"],
            "concurrency": 1,
            "prefetch": 0,
            **ready,
        }
    )
    return conn, pushes


async def test_jobs_too_big_for_one_dispatch_frame_are_split(
    client: AsyncClient, start_worker
) -> None:
    # three legal 400 kB payloads claimed in one slice would make a 1.2 MB frame
    handles = [await client.submit("reverse_string", "x" * 400_000) for _ in range(3)]
    await start_worker(concurrency=6)
    for h in handles:
        assert (await h.wait(timeout=15)).state is JobState.COMPLETED


def test_limits_keep_one_job_within_a_frame() -> None:
    with pytest.raises(ValueError, match="max_payload"):
        Limits(max_frame_size=1 << 20, max_payload=1 << 20)


async def test_a_worker_cannot_report_another_workers_job(
    broker: Broker, client: AsyncClient, home: Path, start_worker
) -> None:
    await start_worker(concurrency=1)
    handle = await client.submit("slow_task", 0.5)
    await broker.wait_until(lambda: broker.dispatcher.dispatched >= 1)
    intruder, _ = await _raw_worker(broker, home, "intruder", ["nothing"])
    lease = (await intruder.request({"t": "get", "id": handle.id}))["job"]["lease"]
    intruder.send(
        {
            "t": "report",
            "results": [{"id": handle.id, "lease": lease, "ok": True, "result": "forged"}],
        }
    )
    job = await handle.wait(timeout=10)
    await intruder.close()
    assert (job.state, job.result) == (JobState.COMPLETED, 0.5)


async def test_a_refused_result_fails_its_job_instead_of_leaving_it_running(
    broker: Broker, client: AsyncClient, home: Path
) -> None:
    worker, pushes = await _raw_worker(broker, home, "sloppy", ["noop"])
    handle = await client.submit("noop", retries=0)
    dispatched = await asyncio.wait_for(pushes.get(), 5)
    lease = dispatched["jobs"][0]["lease"]
    worker.send({"t": "report", "results": [{"id": handle.id, "lease": lease, "ok": False}]})
    job = await handle.wait(timeout=5)  # no error map: refused, and the job fails
    await worker.close()
    assert job.state is JobState.DEAD
    assert job.error is not None and job.error["type"] == "InvalidReport"


async def test_a_release_that_crosses_a_cancel_wakes_the_waiters(
    broker: Broker, client: AsyncClient, home: Path
) -> None:
    worker, pushes = await _raw_worker(broker, home, "leaving", ["noop"])
    handle = await client.submit("noop")
    lease = (await asyncio.wait_for(pushes.get(), 5))["jobs"][0]["lease"]
    waiting = asyncio.ensure_future(client.wait(handle.id))  # no timeout
    await client.cancel(handle.id)  # running: cancel requested, ABORT on its way
    worker.send({"t": "release", "jobs": [{"id": handle.id, "lease": lease}]})
    job = await asyncio.wait_for(waiting, 5)
    await worker.close()
    assert job.state is JobState.CANCELLED


@pytest.fixture
def broker_config(home: Path) -> BrokerConfig:
    return BrokerConfig(port=0, store_url="memory://", home=home, lease=1.0, heartbeat=0.2)


async def test_a_draining_worker_keeps_heartbeating_for_its_running_jobs(
    broker: Broker, client: AsyncClient, start_worker
) -> None:
    registry = TaskRegistry()
    started = threading.Event()

    @task(name="long", registry=registry)
    def long() -> str:
        started.set()
        time.sleep(2.0)  # the job's own work: twice the 1 s lease
        return "done"

    worker = await start_worker(registry, concurrency=1, prefetch=0)
    handle = await client.submit("long")
    assert await asyncio.to_thread(started.wait, 10)
    worker.stop()  # drain: finish the running job, then leave
    job = await handle.wait(timeout=10)
    assert job.state is JobState.COMPLETED
    assert not [e for e in job.events if e["event"] == "requeued"]


async def test_concurrent_requests_fail_fast_when_the_broker_is_gone(
    broker: Broker, home: Path
) -> None:
    client = AsyncClient(broker.url, home=home, reconnect_timeout=0.5)
    await client.connect()
    await broker.stop()
    broker.stop = _noop  # type: ignore[method-assign]
    started = time.monotonic()
    results = await asyncio.gather(*(client.stats() for _ in range(20)), return_exceptions=True)
    elapsed = time.monotonic() - started
    await client.close()
    assert all(isinstance(r, ConnectionLost | OSError) for r in results)
    assert elapsed < 5  # one reconnect budget (0.5 s), not twenty of them in a row


async def _noop() -> None:
    return None
