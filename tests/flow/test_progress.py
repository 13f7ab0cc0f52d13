"""Progress and metadata end to end: a real task in each pool reports, a waiting producer
hears it from the broker (pushed, not polled), the finished job keeps the last report."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.broker.app import Broker
from conveyor.broker.events import BrokerEvent, JobProgress
from conveyor.client.aio import AsyncClient
from conveyor.job import Job, JobState
from conveyor.worker.tasks import TaskRegistry
from tests.conftest import StartWorker
from tests.flow.conftest import MODULES

POOLS = ["thread", "async", "process"]


async def _progress_with_meta(client: AsyncClient, job_id: str) -> Job:
    """Wait for reports until one carries both the metadata and the fraction (the two
    calls may travel in two reports)."""
    since = 0.0
    for _ in range(20):
        job = await client.next_progress(job_id, since, timeout=20)
        assert job.state is JobState.RUNNING, job
        if job.meta and job.progress is not None:
            return job
        assert job.progress_at is not None
        since = job.progress_at
    raise AssertionError("no report with metadata")


@pytest.mark.parametrize("pool", POOLS)
async def test_a_waiting_producer_sees_the_progress_of_a_running_task(
    pool: str,
    client: AsyncClient,
    start_worker: StartWorker,
    flow_registry: TaskRegistry,
    tmp_path: Path,
) -> None:
    await start_worker(flow_registry, modules=MODULES, pool=pool)
    gate = tmp_path / "gate"
    task = "flow.async_steps" if pool == "async" else "flow.steps"
    handle = await client.submit(task, str(gate), 10)
    job = await _progress_with_meta(client, handle.id)
    assert (job.progress, job.progress_message) == (0.5, "resized 5/10")
    assert job.meta == {"stage": "resize", "n": 10}
    assert (await client.get(handle.id)).progress == 0.5  # GET sees it too
    gate.touch()
    done = await handle.wait(timeout=20)
    assert done.state is JobState.COMPLETED and done.result == 10
    # the last report is stored with the finished job
    assert (done.progress, done.progress_message, done.meta) == (1.0, "done", job.meta)


async def test_a_tight_loop_of_reports_is_coalesced(
    broker: Broker, client: AsyncClient, start_worker: StartWorker, flow_registry: TaskRegistry
) -> None:
    reports: list[JobProgress] = []

    def listen(event: BrokerEvent) -> None:
        if isinstance(event, JobProgress):
            reports.append(event)

    unsubscribe = broker.core.hub.subscribe(listen)
    try:
        await start_worker(flow_registry, modules=MODULES)
        n = 200_000
        done = await (await client.submit("flow.spin", n)).wait(timeout=60)
    finally:
        unsubscribe()
    assert done.state is JobState.COMPLETED
    assert (done.progress, done.progress_message) == (1.0, "spun")
    assert 1 <= len(reports) < n // 1000, len(reports)  # a few a second, not one a call
    assert reports[-1].progress["message"] == "spun"


async def test_current_job_outside_a_task_is_an_error() -> None:
    from conveyor import current_job

    with pytest.raises(RuntimeError, match="inside a running task"):
        current_job()


def test_bad_reports_raise_in_the_task() -> None:
    from conveyor.worker.progress import CurrentJob

    job = CurrentJob("j", "t", 1)
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError):
            job.progress(bad)
    with pytest.raises(TypeError):
        job.progress("half")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        job.progress(0.1, "x" * 501)
    with pytest.raises(TypeError):
        job.set_meta(when=object())
    with pytest.raises(ValueError):
        job.set_meta(blob="x" * 5000)
    job.set_meta(a=1, b=2)
    job.set_meta(b=None)
    assert job.meta == {"a": 1}
    assert job.take() == {"value": None, "message": None, "meta": {"a": 1}}
    assert job.take() is None  # nothing new since
