"""The scaling scenario (``conveyor bench --scaling``): how throughput grows with the
number of worker processes, for each pool kind, on a CPU-bound and an I/O-bound task.

For each pool kind and each worker count, that many worker processes are started on a
queue of their own and left to connect; then, for each task kind, the queue is paused,
``jobs`` jobs are submitted, the queue is resumed and the clock runs from the resume to
the last job's finish (as the broker recorded it). So the figure is the drain rate of
ready workers, without their start-up or the submits. The speed-up is that rate over the
rate of the smallest worker count of the same pool and task.

Tasks (:mod:`conveyor.bench.tasks`): ``cpu`` is ``bench_cpu`` (about 1 ms of hashing);
``io`` is a 10 ms wait, ``bench_io`` (``time.sleep``) in the thread and process pools
and ``bench_io_async`` (``asyncio.sleep``) in the async pool, as each would be written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import click

from conveyor.bench.system import LocalSystem, progress, wait_completed
from conveyor.client.aio import AsyncClient

SIZES = (1, 2, 4, 8)
KINDS = ("cpu", "io")
IO_SECONDS = 0.01


def task_for(kind: str, pool: str) -> tuple[str, dict[str, Any]]:
    """The task and arguments a ``kind`` of job runs in a ``pool``."""
    if kind == "cpu":
        return "bench_cpu", {}
    return ("bench_io_async" if pool == "async" else "bench_io"), {"seconds": IO_SECONDS}


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"1,2,4,8"`` -> (1, 2, 4, 8): worker counts, each 1..64, ascending, no repeats."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a list of worker counts like 1,2,4,8") from None
    if not sizes or any(not 1 <= n <= 64 for n in sizes) or list(sizes) != sorted(set(sizes)):
        raise click.BadParameter(f"{text!r}: give ascending worker counts from 1 to 64, like 1,2,4")
    return sizes


async def run_scaling(
    system: LocalSystem, jobs: int, sizes: Sequence[int], pools: Sequence[str]
) -> dict[str, Any]:
    """Every (pool, workers, kind) point: ``{"scaling": [point, ...]}``."""
    system.start_broker()
    points: list[dict[str, Any]] = []
    async with AsyncClient(system.url, home=str(system.home)) as c:
        for pool in pools:
            for n in sizes:
                queue = f"scaling-{pool}-{n}"
                system.pool, system.n_workers = pool, n
                system.start_workers(queues=queue)
                try:
                    await _wait_workers_on(c, queue, n)
                    for kind in KINDS:
                        rate = await _drain(
                            c, queue, *task_for(kind, pool), jobs, f"{kind} {pool} x{n}"
                        )
                        points.append(
                            {"kind": kind, "pool": pool, "workers": n, "jobs_per_s": rate}
                        )
                finally:
                    system.stop_workers()
    _add_speedups(points)
    return {"scaling": points}


async def _wait_workers_on(c: AsyncClient, queue: str, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while sum(queue in w["queues"] for w in (await c.stats())["workers"]) < n:
        if time.monotonic() > deadline:
            raise click.ClickException(f"{n} workers on {queue} did not connect")
        await asyncio.sleep(0.02)  # the protocol has no "worker joined" wait: poll gently


async def _drain(
    c: AsyncClient, queue: str, task: str, kwargs: dict[str, Any], jobs: int, label: str
) -> float:
    """Jobs per second for ready workers emptying a queue of ``jobs`` jobs."""
    await c.pause_queue(queue)
    handles = await c.submit_many([{"task": task, "kwargs": kwargs, "queue": queue}] * jobs)
    base = (await c.stats())["totals"]["completed"]
    with progress(label, jobs) as update:
        started = time.time()  # the broker stamps finish times with the same wall clock
        await c.resume_queue(queue)
        await wait_completed(c, base + jobs, lambda done: update(done - base))
    finished = await c.get_many([h.id for h in handles], brief=True)
    last = max(job.finished_at or 0.0 for job in finished)
    return jobs / max(last - started, 1e-6)


def _add_speedups(points: list[dict[str, Any]]) -> None:
    """Each point's rate over the rate of the fewest workers of its pool and kind."""
    first: dict[tuple[str, str], float] = {}
    for p in sorted(points, key=lambda p: p["workers"]):
        base = first.setdefault((p["kind"], p["pool"]), p["jobs_per_s"])
        p["speedup"] = p["jobs_per_s"] / base
