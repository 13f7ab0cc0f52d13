"""Scenarios about the durable store: memory per queued job, restart cost with a long
history, and round trips while another client reads heavily.

Each builds what it needs in the bench's throwaway home; a long history is written by
the SQLite engine in this process (the real code, in big batches) before the broker starts,
because producing a million jobs through workers would take minutes.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

from conveyor import lifecycle
from conveyor.bench.system import (
    LocalSystem,
    progress,
    rss_bytes,
    submit_all,
    wait_completed,
    wait_workers,
)
from conveyor.client.aio import AsyncClient
from conveyor.job import JobRecord
from conveyor.lifecycle import Outcome
from conveyor.protocol.payload import pack, pack_call
from conveyor.stores import SqliteStore
from conveyor.stores.base import Claimant

HISTORY_BATCH = 5000
HISTORY_QUEUES = ("history-a", "history-b")


async def build_history(url: str, finished: int, queues: Sequence[str] = HISTORY_QUEUES) -> None:
    """``finished`` completed ``noop`` jobs spread over ``queues``, written by the engine."""
    store = SqliteStore(url)
    now = time.time()
    await store.open(now)
    empty = pack_call([], {})
    claimant = Claimant("history-writer", tuple(queues), {"noop"})
    try:
        with progress("history", finished) as update:
            for start in range(0, finished, HISTORY_BATCH):
                size = min(HISTORY_BATCH, finished - start)
                jobs = [
                    JobRecord(f"h{start + i:09d}", "noop", empty, queue=queues[i % len(queues)])
                    for i in range(size)
                ]
                await store.job_insert_many([lifecycle.born(j, now) for j in jobs])
                claimed = await store.job_claim(claimant, size, 60.0, now)
                done = [Outcome(j.id, j.lease or 0, True, pack(None)) for j in claimed]
                report = [lifecycle.report(j, o, now) for j, o in zip(claimed, done, strict=True)]
                await store.job_apply(report)
                update(start + size)
    finally:
        await store.close()


async def run_queued_memory(system: LocalSystem, jobs: int) -> dict[str, Any]:
    """Broker memory as a queue grows with no worker connected, then the drain of it."""
    system.start_broker()
    out: dict[str, Any] = {"queued_jobs": 2 * jobs}
    async with AsyncClient(system.url, home=str(system.home)) as c:
        await submit_all(c, 1000, lambda n: None)  # warm: first connections, caches, code
        base = rss_bytes(system.broker_pid)
        rss: list[int] = []
        for step in ("first", "second"):
            with progress(f"queue {step}", jobs) as update:
                await submit_all(c, jobs, update)
            rss.append(rss_bytes(system.broker_pid))
        out["rss_idle_mb"] = base / 2**20
        out["rss_queued_mb"] = rss[-1] / 2**20
        out["bytes_per_queued_job"] = (rss[0] - base) / jobs
        out["marginal_bytes_per_queued_job"] = (rss[1] - rss[0]) / jobs
        system.start_workers()
        await wait_workers(c, 1)
        with progress("drain", 2 * jobs + 1000) as update:
            t0 = time.perf_counter()
            await wait_completed(c, 2 * jobs + 1000, update, timeout=1800)
            out["deep_drain_jobs_per_s"] = (2 * jobs + 1000) / (time.perf_counter() - t0)
    return out


async def run_restart(system: LocalSystem, finished: int) -> dict[str, Any]:
    """Time to ready and memory at ready, on an empty database and on a long history."""
    out: dict[str, Any] = {"finished_jobs": finished}
    system.start_broker()  # the first start makes the certificates and tokens: not counted
    system.stop_broker()
    out["empty_ready_s"] = system.start_broker()
    out["empty_rss_mb"] = rss_bytes(system.broker_pid) / 2**20
    system.stop_broker()
    await build_history(system.store_url, finished)
    out["history_ready_s"] = system.start_broker()
    out["history_rss_mb"] = rss_bytes(system.broker_pid) / 2**20
    return out


async def run_reads_under_load(system: LocalSystem, finished: int, samples: int) -> dict[str, Any]:
    """Round trips (submit → result) while idle, then while another client repeats a
    heavy listing: one queue of a long history, 200,000 jobs deep."""
    await build_history(system.store_url, finished)
    system.start_broker()
    system.start_workers()
    out: dict[str, Any] = {"finished_jobs": finished}
    home = str(system.home)
    async with AsyncClient(system.url, home=home) as c, AsyncClient(system.url, home=home) as r:
        await wait_workers(c, system.n_workers)
        for _ in range(50):  # warm up
            await (await c.submit("noop")).result(timeout=30)
        out["idle_p50_ms"] = await _p50(c, samples, "idle")
        offset = min(200_000, max(0, finished // len(HISTORY_QUEUES) - 100))
        stop, going = asyncio.Event(), asyncio.Event()
        times: list[float] = []

        async def heavy() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                page = await r.list_jobs(queue=HISTORY_QUEUES[0], limit=100, offset=offset)
                times.append(time.perf_counter() - t0)
                assert page, "the heavy listing found nothing"
                going.set()

        reader = asyncio.ensure_future(heavy())
        try:
            await going.wait()  # the reader is under way before the measurement starts
            out["loaded_p50_ms"] = await _p50(c, samples, "under reads")
        finally:
            stop.set()
            await reader
        out["heavy_list_ms"] = statistics.fmean(times) * 1000
        out["heavy_lists"] = len(times)
        out["slowdown"] = out["loaded_p50_ms"] / out["idle_p50_ms"]
    return out


async def _p50(c: AsyncClient, samples: int, label: str) -> float:
    lat: list[float] = []
    with progress(f"latency {label}", samples) as update:
        for i in range(samples):
            t0 = time.perf_counter()
            await (await c.submit("noop")).result(timeout=30)
            lat.append((time.perf_counter() - t0) * 1000)
            update(i + 1)
    return statistics.median(lat)
