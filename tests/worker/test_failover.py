"""A worker given several brokers: it fails over when its broker stops, announces itself to
the next one and keeps running jobs; a refused token stops it without trying the others."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from conveyor import AsyncClient
from conveyor.broker.app import Broker
from conveyor.errors import AuthenticationError
from conveyor.worker.runner import Worker
from conveyor.worker.tasks import load_tasks

# rotations start at the first address given, so each test knows who is dialled
pytestmark = pytest.mark.usefixtures("first_address_first")


def worker_for(url: str, home: Path, **kwargs: Any) -> Worker:
    return Worker(registry=load_tasks(["conveyor.examples"]), url=url, home=home, **kwargs)


async def test_a_worker_fails_over_to_the_next_broker_and_keeps_running_jobs(
    broker: Broker, other: Broker, home: Path
) -> None:
    worker = worker_for(f"{broker.url},{other.url}", home, concurrency=2)
    running = asyncio.ensure_future(worker.run())
    try:
        await asyncio.wait_for(worker.connected.wait(), 10)
        async with AsyncClient(broker.url, home=home) as first:
            assert await (await first.submit("add", a=1, b=2)).result(timeout=10) == 3
            slow = await first.submit("slow_task", seconds=0.5)
            workers = broker.dispatcher.workers.values()
            await broker.wait_until(lambda: any(slow.id in w.started for w in workers), 10)
        await broker.stop()  # the worker's broker goes away with a job running
        await other.wait_until(lambda: len(other.dispatcher.workers) == 1, 10)
        assert worker.stats.reconnects >= 1
        async with AsyncClient(other.url, home=home) as second:
            handles = await second.submit_many([("add", {"a": i, "b": 1}) for i in range(10)])
            assert [await h.result(timeout=10) for h in handles] == [i + 1 for i in range(10)]
            stats = await second.stats()
        (described,) = stats["workers"]
        assert described["name"] == worker.name
        # the run cut off with the first broker is not reported to the second
        assert stats["totals"]["completed"] == 10
    finally:
        worker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running, 10)


async def test_a_worker_with_a_refused_token_stops_without_trying_the_other_brokers(
    broker: Broker, other: Broker, home: Path
) -> None:
    before = other.metrics["connections_total"]
    worker = worker_for(f"{broker.url},{other.url}", home, token="cvy_not-a-token")
    with pytest.raises(AuthenticationError):
        await asyncio.wait_for(worker.run(), 10)
    assert other.metrics["connections_total"] == before
