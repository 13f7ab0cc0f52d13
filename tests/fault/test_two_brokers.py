"""Two brokers on one PostgreSQL schema act as one system: a producer on broker A is
pushed the results of jobs that workers on broker B ran, and can cancel them there."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor import AsyncClient, JobState
from conveyor.broker.app import Broker
from conveyor.job import JobRecord
from conveyor.stores.postgres import PostgresStore
from conveyor.worker.runner import Worker
from conveyor.worker.tasks import load_tasks
from tests.postgres import pg_url, two_brokers

pytestmark = pytest.mark.postgres
__all__ = ["pg_url", "two_brokers"]


@contextlib.asynccontextmanager
async def worker_on(broker: Broker, home: Path) -> AsyncIterator[Worker]:
    worker = Worker(registry=load_tasks(["conveyor.examples"]), url=broker.url, home=home)
    task = asyncio.get_running_loop().create_task(worker.run())
    await asyncio.wait_for(worker.connected.wait(), 10)
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)


async def test_a_producer_on_one_broker_is_pushed_results_run_on_the_other(
    two_brokers: tuple[Broker, Broker], home: Path
) -> None:
    a, b = two_brokers
    async with worker_on(b, home), AsyncClient(a.url, home=home) as client:
        assert not a.dispatcher.workers  # nobody on A could run them
        handles = await client.submit_many([("add", {"a": i, "b": 1}) for i in range(50)])
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 30)
    assert results == [i + 1 for i in range(50)]
    assert b.dispatcher.dispatched == 50 and a.dispatcher.dispatched == 0
    store = a.store
    assert isinstance(store, PostgresStore) and store.notifications > 0  # pushed, not polled


async def test_a_cancel_on_one_broker_stops_the_run_on_the_other(
    two_brokers: tuple[Broker, Broker], home: Path
) -> None:
    a, b = two_brokers
    aborted: list[str] = []
    abort_run = b.core.abort_run

    def spy(job: JobRecord) -> None:
        aborted.append(job.id)
        abort_run(job)

    b.core.abort_run = spy  # type: ignore[method-assign]
    async with worker_on(b, home), AsyncClient(a.url, home=home) as client:
        handle = await client.submit("slow_task", seconds=0.5)
        await b.wait_until(lambda: bool(b.dispatcher.dispatched))
        job = await handle.cancel()
        assert job.state is JobState.RUNNING and job.cancel_requested  # asked, on A
        done = await asyncio.wait_for(handle.wait(), 30)
    assert done.state is JobState.CANCELLED
    assert aborted == [handle.id]  # B told its worker to stop it
