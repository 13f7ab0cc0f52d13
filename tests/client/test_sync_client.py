"""The blocking Client against a real broker (run on a thread; the broker has the loop)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conveyor import Client, JobFailed, JobState, ResultTimeout
from conveyor.broker.app import Broker
from conveyor.errors import InvalidJob, JobNotFound


async def test_sync_client_covers_the_producer_api(
    broker: Broker, home: Path, start_worker
) -> None:
    await start_worker()

    def scenario() -> None:
        with Client(broker.url, home=home) as c:
            job = c.submit("fibonacci", n=20, priority=1)
            assert job.result(timeout=10) == 6765
            assert c.job(job.id).status() is JobState.COMPLETED
            many = c.submit_many([("add", {"a": i, "b": i}) for i in range(50)])
            assert [h.result(timeout=10) for h in many] == [2 * i for i in range(50)]
            assert len(c.list_jobs(state="completed", limit=100)) == 51
            later = c.submit("noop", delay=60)
            assert later.cancel().state is JobState.CANCELLED
            with pytest.raises(ResultTimeout):
                c.submit("slow_task", seconds=2).result(timeout=0.1)
            dead = c.submit("fail", message="no", retries=0)
            with pytest.raises(JobFailed, match="no"):
                dead.result(timeout=10)
            assert c.dlq_retry([dead.id]) == 1
            dead.wait(timeout=10)
            assert c.dlq_purge() == 1
            with pytest.raises(JobNotFound):
                c.get(dead.id)
            with pytest.raises(InvalidJob) as info:
                c.submit("add", priority=42)
            assert info.value.field == "priority"
            assert c.stats()["totals"]["submitted"] == 54  # the invalid one never landed

    await asyncio.to_thread(scenario)


async def test_sync_client_splits_a_batch_too_big_for_one_frame(broker: Broker, home: Path) -> None:
    def scenario() -> int:
        with Client(broker.url, home=home) as c:
            blob = "y" * 300_000
            return len(c.submit_many([("noop", {"blob": blob}) for _ in range(6)]))

    assert await asyncio.to_thread(scenario) == 6
