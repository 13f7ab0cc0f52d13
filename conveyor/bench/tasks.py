"""Tasks the bench's workers run (``--tasks conveyor.bench.tasks``): the examples' ``noop``
and ``add``, 1,000 task names for the spread scenario, and tasks for big payloads
and the scaling scenario (CPU-bound and I/O-bound)."""

from __future__ import annotations

import asyncio
import hashlib
import time

from conveyor.examples import add, noop
from conveyor.worker.tasks import task

__all__ = [
    "SPREAD_QUEUES",
    "SPREAD_TASKS",
    "add",
    "bench_cpu",
    "bench_io",
    "bench_io_async",
    "bench_size",
    "noop",
]

SPREAD_TASKS = 1000
SPREAD_QUEUES = 200


@task
def bench_size(data: str) -> int:
    """The length of ``data``: a big argument and a small result."""
    return len(data)


@task
def bench_cpu(rounds: int = 2000) -> str:
    """About a millisecond of hashing (CPU-bound; holds the GIL in threads)."""
    digest = b""
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:8]


@task
def bench_io(seconds: float = 0.01) -> None:
    """A 10 ms wait, as for a network call (I/O-bound)."""
    time.sleep(seconds)


@task
async def bench_io_async(seconds: float = 0.01) -> None:
    """The same 10 ms wait, awaited: what the async pool is for."""
    await asyncio.sleep(seconds)


def _spread() -> None:
    """One of many task names: the dispatcher's cost per (queue, task) pair."""


for _i in range(SPREAD_TASKS):
    task(name=f"spread_{_i}")(_spread)
