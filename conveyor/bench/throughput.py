"""The throughput scenario (enqueue, drain, end to end, round trips) and the priority
demo (urgent jobs behind a backlog)."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from conveyor.bench.system import (
    LocalSystem,
    progress,
    submit_all,
    wait_all_workers,
    wait_completed,
    wait_workers,
)
from conveyor.client.aio import AsyncClient


async def run_bench(
    system: LocalSystem | None, url: str | None, jobs: int, samples: int
) -> dict[str, Any]:
    home = str(system.home) if system else None
    out: dict[str, Any] = {}
    async with AsyncClient(url or (system.url if system else None), home=home) as c:
        base = (await c.stats())["totals"]["completed"]
        if system is not None:
            # 1. enqueue with no worker connected, 2. drain
            with progress("enqueue", jobs) as update:
                t0 = time.perf_counter()
                await submit_all(c, jobs, update)
                out["enqueue_jobs_per_s"] = jobs / (time.perf_counter() - t0)
            system.start_workers()
            await wait_workers(c, 1)
            with progress("drain", jobs) as update:
                t0 = time.perf_counter()
                await wait_completed(c, base + jobs, lambda n: update(n - base))
                out["drain_jobs_per_s"] = jobs / (time.perf_counter() - t0)
            await wait_all_workers(system)
            base += jobs
        # 3. end to end with workers running
        with progress("end-to-end", jobs) as update:
            t0 = time.perf_counter()
            submitter = asyncio.ensure_future(submit_all(c, jobs, lambda n: None))
            await wait_completed(c, base + jobs, lambda n: update(n - base))
            await submitter
            out["end_to_end_jobs_per_s"] = jobs / (time.perf_counter() - t0)
        # 4. sequential round trips
        lat = []
        with progress("latency", samples) as update:
            for i in range(samples):
                t0 = time.perf_counter()
                await (await c.submit("noop")).result(timeout=30)
                lat.append((time.perf_counter() - t0) * 1000)
                if i % 50 == 0:
                    update(i)
        qs = statistics.quantiles(lat, n=100)
        out["latency_ms"] = {
            "p50": qs[49],
            "p95": qs[94],
            "p99": qs[98],
            "mean": statistics.fmean(lat),
        }
    return out


async def run_priority_demo(system: LocalSystem, bulk: int, urgent: int) -> dict[str, Any]:
    """Mean wait of urgent jobs behind a bulk backlog: priority scheduling vs plain FIFO."""
    out: dict[str, Any] = {}
    async with AsyncClient(system.url, home=str(system.home)) as c:
        for mode in ("fifo", "priority"):
            queue = f"demo-{mode}"
            urgent_priority = 5 if mode == "fifo" else 1
            specs: list[dict[str, Any]] = []
            step = max(1, bulk // urgent)
            for i in range(bulk):
                specs.append(
                    {
                        "task": "slow_task",
                        "kwargs": {"seconds": 0.001},
                        "priority": 5,
                        "queue": queue,
                    }
                )
                if i % step == 0:
                    specs.append(
                        {
                            "task": "slow_task",
                            "kwargs": {"seconds": 0.001},
                            "priority": urgent_priority,
                            "queue": queue,
                            "unique_key": None,
                            "id": f"urgent-{mode}-{i}",
                        }
                    )
            handles = await c.submit_many(specs)
            system.start_workers(queues=queue)
            for h in handles:
                await h.wait(timeout=300)
            system.stop_workers()
            # Wait = time in the queue after the workers began taking jobs (worker
            # start-up is the same in both modes and would only blur the comparison).
            starts: dict[str, float] = {}
            for h in handles:
                job = await h.get()
                starts[h.id] = next(e["at"] for e in job.events if e["event"] == "started")
            first = min(starts.values())
            waits = [(t - first) * 1000 for i, t in starts.items() if i.startswith("urgent-")]
            out[mode] = {"urgent_jobs": len(waits), "mean_wait_ms": statistics.fmean(waits)}
    out["speedup"] = out["fifo"]["mean_wait_ms"] / max(out["priority"]["mean_wait_ms"], 1e-9)
    return out
