"""A real broker and a real worker: an ``every 1s`` schedule fires once per slot across a
broker restart on the same SQLite file (stop, a second of downtime, start again)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from conveyor import AsyncClient, JobState
from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.broker.events import BrokerEvent, JobChanged
from conveyor.schedules import job_schedule
from conveyor.stores.base import JobFilter
from conveyor.worker.runner import Worker
from conveyor.worker.tasks import TaskRegistry, task

pytestmark = pytest.mark.slow


@pytest.fixture
def broker_config(home: Path, tmp_path: Path) -> BrokerConfig:
    return BrokerConfig(port=0, store_url=f"sqlite:///{tmp_path}/conveyor.db", home=home)


class Seen:
    """The schedule's jobs a broker created and completed, from its event hub."""

    def __init__(self) -> None:
        self.created: set[str] = set()
        self.completed: set[str] = set()

    def __call__(self, event: BrokerEvent) -> None:
        if isinstance(event, JobChanged) and event.job.id.startswith("sched:beat:"):
            if event.old is None:
                self.created.add(event.job.id)
            if event.job.state is JobState.COMPLETED:
                self.completed.add(event.job.id)


@pytest.mark.parametrize("catch_up", ["all", "none"])
async def test_every_second_across_a_restart_fires_each_slot_once(
    broker: Broker, broker_config: BrokerConfig, home: Path, catch_up: str
) -> None:
    registry = TaskRegistry()
    task(name="beat", registry=registry)(lambda: "tick")
    seen = Seen()
    broker.core.hub.subscribe(seen)
    worker = Worker(registry=registry, url=broker.url, home=home, concurrency=2)
    running = asyncio.ensure_future(worker.run())
    again: Broker | None = None
    try:
        async with AsyncClient(broker.url, home=home) as client:
            added = await client.schedule_add("beat", "beat", every="1s", catch_up=catch_up)
        first_slot = added["next_run"]
        await broker.wait_until(lambda: len(seen.completed) >= 2, 10)
        await broker.stop()
        stopped = time.time()
        await asyncio.sleep(1.5)  # the downtime itself: slots pass with no broker at all
        again = Broker(dataclasses.replace(broker_config, port=broker.port))
        again.core.hub.subscribe(seen)
        await again.start()
        started = time.time()
        await again.wait_until(lambda: len(seen.created) >= 6, 10)
        wanted = set(seen.created)
        await again.wait_until(lambda: wanted <= seen.completed, 10)  # the worker ran them
        page = await again.store.job_list(JobFilter(), 1000)
    finally:
        worker.stop()
        await running
        if again is not None:
            await again.stop()
        broker.stop = _noop  # type: ignore[method-assign]  # already stopped
    fired = [s for j in page.jobs if (s := job_schedule(j.id)) is not None]
    slots = sorted(slot for _, slot in fired if slot is not None)
    assert len(slots) == len(set(slots)) == len(page.jobs)  # one job per slot, no other
    assert slots[0] == first_slot
    missing = [t for t in range(int(slots[0]), int(slots[-1]) + 1) if float(t) not in set(slots)]
    if catch_up == "all":
        assert missing == []  # the slots of the downtime were fired after it
    else:  # none: only slots of the downtime (and the start-up after it) are skipped
        assert missing and all(stopped - 1 <= t <= started + 0.5 for t in missing)


async def _noop() -> None:
    return None
