"""The paths users take, each measured alone the way they use it (issue table in
docs/benchmarks.md): single ``Client.submit()`` calls, one ``submit_many``, the drain with
the default worker settings, end to end, round trips, reading many results, and the
shapes of work that must not cost more (many task names, many queues, small workers,
big payloads).

Producers here are the sync :class:`~conveyor.client.Client`, run in a thread, because
that is what a web app or a script uses; the bench's own bookkeeping (waiting for
completions, counting workers) uses an :class:`~conveyor.client.aio.AsyncClient`.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conveyor.bench.system import (
    LocalSystem,
    cpu_seconds,
    progress,
    rss_bytes,
    wait_completed,
    wait_workers,
)
from conveyor.bench.tasks import SPREAD_QUEUES, SPREAD_TASKS
from conveyor.client.aio import AsyncClient
from conveyor.client.sync import Client

#: the scenarios of ``--scenario all``, in the order they run
PATHS = ("single", "batch", "drain", "e2e", "latency", "results")
SHAPES = ("spread", "small-workers", "payload")
PAYLOAD_BYTES = 400_000


def _client(system: LocalSystem) -> Client:
    return Client(system.url, home=str(system.home))


def _async(system: LocalSystem) -> AsyncClient:
    return AsyncClient(system.url, home=str(system.home))


async def _completed(system: LocalSystem) -> int:
    async with _async(system) as c:
        return int((await c.stats(brief=True))["totals"]["completed"])


async def _drain(
    system: LocalSystem, jobs: int, label: str = "drain", cpu: dict[str, float] | None = None
) -> float:
    """Start the workers with their queues paused, resume once all are connected, and
    wait until ``jobs`` more are completed: jobs per second, start-up left out. ``cpu``
    gets the broker's and the workers' CPU microseconds per job of the drain (``broker``,
    ``workers``), from ``/proc``: what a loaded machine changes least."""
    queues = system.queues.split(",")
    async with _async(system) as c:
        base = int((await c.stats(brief=True))["totals"]["completed"])
        for q in queues:
            await c.pause_queue(q)
        system.start_workers()
        await wait_workers(c, system.n_workers)
        pids = [system.broker_pid, *(w.pid for w in system.workers)]
        before = [cpu_seconds(pid) for pid in pids]
        t0 = time.perf_counter()
        for q in queues:
            await c.resume_queue(q)
        with progress(label, jobs) as update:
            await wait_completed(c, base + jobs, lambda n: update(n - base), timeout=1800)
        rate = jobs / (time.perf_counter() - t0)
        spent = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
    system.stop_workers()
    if cpu is not None:
        cpu["broker"] = spent[0] / jobs * 1e6
        cpu["workers"] = sum(spent[1:]) / jobs * 1e6
    return rate


def _submit_singly(
    system: LocalSystem, jobs: int, update: Callable[[int], None], pipeline: bool = False
) -> float:
    """``Client.submit()`` once per job; with ``pipeline``, ``Client(pipeline=True)`` and
    its closing flush (so every job counted is acknowledged, stored)."""
    with Client(system.url, home=str(system.home), pipeline=pipeline) as c:
        t0 = time.perf_counter()
        for i in range(jobs):
            c.submit("add", i, 1)
            if i % 500 == 0:
                update(i)
        c.flush()
        return jobs / (time.perf_counter() - t0)


def _submit_batch(system: LocalSystem, jobs: int) -> dict[str, float]:
    """One ``submit_many``: jobs per second, and the broker's and this client's CPU per
    job (the client's is this thread's, which makes and sends the specs)."""
    with _client(system) as c:
        broker0, client0 = cpu_seconds(system.broker_pid), time.thread_time()
        t0 = time.perf_counter()
        c.submit_many([("add", [i, 1], {}) for i in range(jobs)])
        took = time.perf_counter() - t0
        client = time.thread_time() - client0
        broker = cpu_seconds(system.broker_pid) - broker0
    return {
        "submit_many_per_s": jobs / took,
        "submit_many_broker_us": broker * 1e6 / jobs,
        "submit_many_client_us": client * 1e6 / jobs,
    }


async def run_paths(system: LocalSystem, jobs: int, samples: int, only: str) -> dict[str, Any]:
    """``only``: one of :data:`PATHS`, or ``all``."""
    want = PATHS if only == "all" else (only,)
    out: dict[str, Any] = {}
    system.start_broker()
    if {"single", "e2e"} & set(want):
        with progress("single submits", jobs) as update:
            out["single_submits_per_s"] = await asyncio.to_thread(
                _submit_singly, system, jobs, update
            )
        with progress("single submits, pipelined", jobs) as update:
            out["single_pipelined_per_s"] = await asyncio.to_thread(
                _submit_singly, system, jobs, update, True
            )
        if "e2e" in want:  # one drain of both backlogs: the same jobs, however submitted
            drain = await _drain(system, 2 * jobs, "drain (single)")
            out["e2e_single_jobs_per_s"] = 1 / (1 / out["single_submits_per_s"] + 1 / drain)
            out["e2e_pipelined_jobs_per_s"] = 1 / (1 / out["single_pipelined_per_s"] + 1 / drain)
    if {"batch", "drain", "e2e"} & set(want):
        out.update(await asyncio.to_thread(_submit_batch, system, jobs))
        out["drain_jobs_per_s"] = await _drain(system, jobs)
        out["e2e_batch_jobs_per_s"] = 1 / (
            1 / out["submit_many_per_s"] + 1 / out["drain_jobs_per_s"]
        )
    if {"latency", "results"} & set(want):
        system.start_workers()
        async with _async(system) as c:
            await wait_workers(c, system.n_workers)
        if "latency" in want:
            out["round_trip_ms"] = await asyncio.to_thread(_round_trips, system, samples)
        if "results" in want:
            out.update(await asyncio.to_thread(_results, system, jobs))
        system.stop_workers()
    return out


def _round_trips(system: LocalSystem, samples: int) -> dict[str, float]:
    lat: list[float] = []
    with _client(system) as c:
        for _ in range(50):  # warm up
            c.submit("noop").result(timeout=30)
        with progress("round trips", samples) as update:
            for i in range(samples):
                t0 = time.perf_counter()
                c.submit("noop").result(timeout=30)
                lat.append((time.perf_counter() - t0) * 1000)
                if i % 50 == 0:
                    update(i)
    qs = statistics.quantiles(lat, n=100)
    return {"p50": qs[49], "p95": qs[94], "p99": qs[98]}


def _results(system: LocalSystem, jobs: int) -> dict[str, float]:
    """The natural code: ``submit_many`` then ``[j.result() for j in jobs]``, the results
    read after all are finished; then the same jobs read again with one ``wait_many``.
    Seconds for the reading alone."""
    with _client(system) as c:
        handles = c.submit_many([("noop", {})] * jobs)
        handles[-1].result(timeout=600)
        c.wait_many(handles, timeout=600)  # every one finished before the timing starts
        t0 = time.perf_counter()
        for h in handles:
            h.result(timeout=600)
        t1 = time.perf_counter()
        c.wait_many(handles, timeout=600)
        return {"results_s": t1 - t0, "wait_many_s": time.perf_counter() - t1}


# -- shapes of work ---------------------------------------------------------------------
async def run_shapes(system: LocalSystem, jobs: int, only: str) -> dict[str, Any]:
    """``only``: one of :data:`SHAPES`, or ``all``."""
    want = SHAPES if only == "all" else (only,)
    out: dict[str, Any] = {}
    system.start_broker()
    if {"spread", "small-workers"} & set(want):
        await _shape(out, "drain_one_task", system, jobs, _noop)
    if "spread" in want:
        await _shape(
            out, "drain_1000_tasks", system, jobs, lambda i: (f"spread_{i % SPREAD_TASKS}", {})
        )
        queues = [f"q{i}" for i in range(SPREAD_QUEUES)]
        await _shape(
            out,
            "drain_200_queues",
            system,
            jobs,
            lambda i: {"task": "noop", "kwargs": {}, "queue": queues[i % SPREAD_QUEUES]},
            queues=",".join(queues),
        )
    if "small-workers" in want:
        shape = system.n_workers, system.concurrency
        try:
            system.n_workers, system.concurrency = 2, 25
            await _shape(out, "drain_2x25", system, jobs, _noop)
            system.n_workers, system.concurrency = 50, 1
            await _shape(out, "drain_50x1", system, jobs, _noop)
        finally:
            system.n_workers, system.concurrency = shape
    if "payload" in want:
        out.update(await _payload(system, max(10, min(jobs, 500))))
    return out


def _noop(i: int) -> Any:
    return ("noop", {})


async def _shape(
    out: dict[str, Any],
    name: str,
    system: LocalSystem,
    jobs: int,
    item: Callable[[int], Any],
    queues: str = "default",
) -> None:
    """Queue ``jobs`` jobs (``item(i)`` each), then drain them: ``out`` gets
    ``{name}_jobs_per_s`` and the broker's and workers' CPU per job of the drain."""
    await asyncio.to_thread(_submit_items, system, [item(i) for i in range(jobs)])
    system.queues = queues
    cpu: dict[str, float] = {}
    try:
        out[f"{name}_jobs_per_s"] = await _drain(system, jobs, cpu=cpu)
    finally:
        system.queues = "default"
    out[f"{name}_broker_us"] = cpu["broker"]
    out[f"{name}_workers_us"] = cpu["workers"]


def _submit_items(system: LocalSystem, items: list[Any]) -> None:
    with _client(system) as c:
        c.submit_many(items)


async def _payload(system: LocalSystem, jobs: int) -> dict[str, Any]:
    """Bytes the broker writes per job for a 400 KB argument, and the round trip."""
    data = "x" * PAYLOAD_BYTES
    system.start_workers()
    async with _async(system) as c:
        await wait_workers(c, system.n_workers)
    before = _written(system.broker_pid)

    def run() -> dict[str, Any]:
        lat: list[float] = []
        with _client(system) as c:
            for _ in range(jobs):
                t0 = time.perf_counter()
                c.submit("bench_size", data).result(timeout=60)
                lat.append((time.perf_counter() - t0) * 1000)
        return {"payload_round_trip_p50_ms": statistics.median(lat)}

    out = await asyncio.to_thread(run)
    written = _written(system.broker_pid) - before
    out["payload_bytes"] = PAYLOAD_BYTES
    out["payload_written_per_job"] = written / jobs
    out["payload_write_ratio"] = written / jobs / PAYLOAD_BYTES
    out["payload_broker_rss_mb"] = rss_bytes(system.broker_pid) / 2**20
    system.stop_workers()
    return out


def _written(pid: int) -> int:
    """Bytes a process has caused to be written to storage (Linux ``/proc/PID/io``)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0
