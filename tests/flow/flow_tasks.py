"""Tasks for the progress and workflow tests, imported by name ("flow_tasks") as a worker
would (the process pool's children import it too)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from conveyor import current_job
from conveyor.errors import Reject
from conveyor.worker.tasks import task

GATE_WAIT = 30.0  # seconds a task waits for its gate file at most (a test that hangs fails)


def _gate_open(gate: str) -> bool:
    return os.path.exists(gate)


@task(name="flow.steps")
def steps(gate: str, n: int = 4) -> int:
    """Says it is half way (with metadata), waits for the test to open ``gate``, ends."""
    job = current_job()
    job.set_meta(stage="resize", n=n)
    job.progress(0.5, f"resized {n // 2}/{n}")
    deadline = time.monotonic() + GATE_WAIT
    while not _gate_open(gate) and time.monotonic() < deadline:
        time.sleep(0.005)
    job.progress(1.0, "done")
    return n


@task(name="flow.async_steps")
async def async_steps(gate: str, n: int = 4) -> int:
    job = current_job()
    job.set_meta(stage="resize", n=n)
    job.progress(0.5, f"resized {n // 2}/{n}")
    deadline = time.monotonic() + GATE_WAIT
    while not _gate_open(gate) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    job.progress(1.0, "done")
    return n


@task(name="flow.spin")
def spin(n: int) -> int:
    """Reports progress ``n`` times in a tight loop."""
    job = current_job()
    for i in range(n):
        job.progress(i / n)
    job.progress(1.0, "spun")
    return n


@task(name="flow.add")
def add(*numbers: int) -> int:
    return sum(numbers)


@task(name="flow.collect")
def collect(*values: Any) -> list[Any]:
    return list(values)


@task(name="flow.record")
def record(path: str, what: str) -> str:
    """Appends ``what`` to ``path`` (one line a run), so a test can count the runs."""
    with open(path, "a") as f:
        f.write(f"{what}\n")
    return what


@task(name="flow.wait_for")
def wait_for(gate: str, value: Any = None) -> Any:
    """Returns ``value`` once the test opens ``gate``."""
    deadline = time.monotonic() + GATE_WAIT
    while not _gate_open(gate) and time.monotonic() < deadline:
        time.sleep(0.005)
    return value


@task(name="flow.boom", retries=0)
def boom(*_: Any) -> None:
    raise Reject("boom")


@task(name="flow.tally")
def tally(results: list[Any], path: str, what: str) -> list[Any]:
    """A chord callback that records each run of itself in ``path``."""
    record(path, what)
    return results


@task(name="flow.hold")
def hold(value: Any, gate: str) -> Any:
    """A chain step that passes ``value`` on once the test opens ``gate``."""
    return wait_for(gate, value)
