"""A broker restart on the durable store: delays keep their time, waits carry on."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from conveyor import AsyncClient, JobState
from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.worker.runner import Worker

pytestmark = pytest.mark.slow


@pytest.fixture
def broker_config(home: Path, tmp_path: Path) -> BrokerConfig:
    return BrokerConfig(port=0, store_url=f"sqlite:///{tmp_path}/conveyor.db", home=home)


async def test_delayed_job_runs_on_time_after_a_restart(
    broker: Broker, broker_config: BrokerConfig, home: Path
) -> None:
    async with AsyncClient(broker.url, home=home, reconnect_timeout=30) as client:
        handle = await client.submit("add", a=40, b=2, delay=1.5)
        waiting = asyncio.ensure_future(handle.wait(timeout=30))  # in flight across the restart
        await broker.stop()
        again = Broker(dataclasses.replace(broker_config, port=broker.port))
        await again.start()
        try:
            job = await again.store.job_get(handle.id)
            assert job is not None and job.state is JobState.SCHEDULED  # the delay survived
            worker = Worker(["conveyor.examples"], url=again.url, home=home, concurrency=1)
            task = asyncio.ensure_future(worker.run())
            done = await waiting
            worker.stop()
            await task
        finally:
            await again.stop()
            broker.stop = _noop  # type: ignore[method-assign]  # already stopped
    assert done.state is JobState.COMPLETED and done.result == 42
    started = next(e["at"] for e in done.events if e["event"] == "started")
    assert done.eta is not None and started >= done.eta
    assert started - done.eta < 0.25  # promoted on time, not on a polling tick


async def _noop() -> None:
    return None
