"""A draining worker can be forced: a second Ctrl-C, or --drain-timeout. Its unstarted jobs
are released, its running ones abandoned to the broker (requeued), and it exits 1 at once."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from conveyor import AsyncClient, JobState
from conveyor.broker.app import Broker
from conveyor.client.aio import AsyncJob
from tests.cli.helpers import cli_env, read_until, spawn

pytestmark = pytest.mark.slow


async def busy_worker(
    broker: Broker, client: AsyncClient, home: Path, tmp_path: Path, *args: str
) -> tuple[asyncio.subprocess.Process, list[AsyncJob]]:
    """A worker process running one long job, with a second one prefetched."""
    proc = await spawn(
        *("worker", "--tasks", "tests.fault.recording_tasks", "--concurrency", "1"),
        *("--prefetch", "1", "--broker", broker.url, "--home", str(home), *args),
        env=cli_env(CONVEYOR_TEST_RECORD=str(tmp_path / "started.txt")),
    )
    assert proc.stderr is not None
    await broker.wait_until(lambda: len(broker.dispatcher.workers) == 1, 20)
    jobs = await client.submit_many([("record_slow", {"i": i, "seconds": 60}) for i in (1, 2)])
    await read_until(proc.stderr, f"job {jobs[0].id} started")  # the worker's own job log
    return proc, jobs


async def back_in_the_queue(broker: Broker, client: AsyncClient, jobs: list[AsyncJob]) -> None:
    await broker.wait_until(lambda: not broker.dispatcher.workers, 10)
    running, prefetched = [await j.get() for j in jobs]
    assert running.state is prefetched.state is JobState.QUEUED
    assert [e["event"] for e in running.events].count("requeued") == 1  # its run was cut
    assert prefetched.events[-1]["event"] == "released"  # given back unstarted
    assert prefetched.attempts == 0  # so nothing was spent


async def test_a_second_ctrl_c_forces_a_draining_worker(
    broker: Broker, client: AsyncClient, home: Path, tmp_path: Path
) -> None:
    proc, jobs = await busy_worker(broker, client, home, tmp_path)
    assert proc.stderr is not None
    proc.send_signal(signal.SIGINT)
    await read_until(proc.stderr, "Ctrl-C again to force")
    began = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rest = (await asyncio.wait_for(proc.stderr.read(), 15)).decode()
    assert await proc.wait() == 1
    assert time.monotonic() - began < 10  # not the 60 s the job would take
    assert "forcing the stop (second signal)" in rest
    assert "1 running job(s) abandoned" in rest and "Traceback" not in rest
    await back_in_the_queue(broker, client, jobs)


async def test_the_drain_timeout_forces_after_it_passes(
    broker: Broker, client: AsyncClient, home: Path, tmp_path: Path
) -> None:
    proc, jobs = await busy_worker(broker, client, home, tmp_path, "--drain-timeout", "0.5s")
    assert proc.stderr is not None
    proc.send_signal(signal.SIGTERM)
    err = (await asyncio.wait_for(proc.stderr.read(), 15)).decode()
    assert await proc.wait() == 1
    assert "(at most 0.5s)" in err and "forcing the stop (--drain-timeout 0.5s passed)" in err
    await back_in_the_queue(broker, client, jobs)
