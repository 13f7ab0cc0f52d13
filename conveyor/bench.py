"""conveyor bench: throughput and latency of a real broker with real workers over TLS.

Unless ``--broker`` names a running broker, the bench starts its own broker and
worker processes (so the numbers include process boundaries and TLS, as in
production) in a temporary $CONVEYOR_HOME, and stops them at the end.

Phases: enqueue (no workers yet: submit_many batches), drain (workers start and
empty the queue), end-to-end (submit and complete with workers running), and
round-trip latency (sequential submit → result in the producer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from conveyor.client.aio import AsyncClient
from conveyor.worker import POOL_KINDS

console = Console(stderr=True)
BATCH = 1000


class LocalSystem:
    """A broker and workers as child processes, in a throwaway home."""

    def __init__(self, store: str, workers: int, concurrency: int, pool: str) -> None:
        self.store = store
        self.n_workers = workers
        self.concurrency = concurrency
        self.pool = pool
        self._tmp = tempfile.TemporaryDirectory(prefix="conveyor-bench-")
        self.home = Path(self._tmp.name)
        self.url = ""
        self.procs: list[subprocess.Popen[Any]] = []

    def start_broker(self) -> None:
        store = self.store.replace("{home}", str(self.home))
        cmd = [
            sys.executable,
            "-m",
            "conveyor",
            "broker",
            "--no-http",
            "--port",
            "0",
            "--store",
            store,
            "--home",
            str(self.home),
            "--log-level",
            "WARNING",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise click.ClickException("the bench broker exited early")
            found = re.search(r"broker ready on (conveyor://\S+)", line)
            if found:
                self.url = found.group(1)
                return
        raise click.ClickException("the bench broker did not start")

    def start_workers(self, queues: str = "default") -> None:
        for i in range(self.n_workers):
            cmd = [
                sys.executable,
                "-m",
                "conveyor",
                "worker",
                "--tasks",
                "conveyor.examples",
                "--broker",
                self.url,
                "--home",
                str(self.home),
                "--concurrency",
                str(self.concurrency),
                "--pool",
                self.pool,
                "--queues",
                queues,
                "--name",
                f"bench-{i + 1}",
                "--log-level",
                "WARNING",
            ]
            self.procs.append(subprocess.Popen(cmd))

    def stop_workers(self) -> None:
        for p in self.procs[1:]:
            p.send_signal(signal.SIGTERM)
        for p in self.procs[1:]:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        del self.procs[1:]

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        self._tmp.cleanup()


@contextlib.contextmanager
def progress(description: str, total: int) -> Iterator[Any]:
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.update(task, completed=n)


async def _wait_completed(c: AsyncClient, target: int, update: Any, timeout: float = 600) -> None:
    """Watch the broker's completed count until it reaches ``target`` (cheap polling)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = (await c.stats())["totals"]["completed"]
        update(done)
        if done >= target:
            return
        await asyncio.sleep(0.05)  # stats is a full snapshot: poll it gently
    raise click.ClickException(f"timed out waiting for {target} completions")


async def _submit_all(c: AsyncClient, n: int, update: Any, task: str = "noop") -> None:
    sent = 0
    in_flight: set[asyncio.Task[Any]] = set()
    while sent < n:
        size = min(BATCH, n - sent)
        in_flight.add(asyncio.ensure_future(c.submit_many([(task, {})] * size)))
        sent += size
        if len(in_flight) >= 4:  # a few batches in flight hides the round trip
            done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for d in done:
                d.result()
            update(sent)
    for d in in_flight:
        await d
    update(sent)


async def _wait_workers(c: AsyncClient, n: int) -> None:
    deadline = time.monotonic() + 30
    while len((await c.stats())["workers"]) < n:
        if time.monotonic() > deadline:
            raise click.ClickException("workers did not connect")
        await asyncio.sleep(0.005)


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
                await _submit_all(c, jobs, update)
                out["enqueue_jobs_per_s"] = jobs / (time.perf_counter() - t0)
            system.start_workers()
            await _wait_workers(c, 1)
            with progress("drain", jobs) as update:
                t0 = time.perf_counter()
                await _wait_completed(c, base + jobs, lambda n: update(n - base))
                out["drain_jobs_per_s"] = jobs / (time.perf_counter() - t0)
            await _wait_workers(c, system.n_workers)
            base += jobs
        # 3. end to end with workers running
        with progress("end-to-end", jobs) as update:
            t0 = time.perf_counter()
            submitter = asyncio.ensure_future(_submit_all(c, jobs, lambda n: None))
            await _wait_completed(c, base + jobs, lambda n: update(n - base))
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


def machine() -> dict[str, Any]:
    try:
        import uvloop

        loop = f"uvloop {getattr(uvloop, '__version__', '?')}"
    except ImportError:
        loop = "asyncio"
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loop": loop,
    }


@click.command()
@click.option("--jobs", type=click.IntRange(1), default=20_000, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 1000), default=16, show_default=True)
@click.option("--pool", type=click.Choice(POOL_KINDS), default="thread", show_default=True)
@click.option(
    "--store",
    default="memory://",
    show_default=True,
    help="store of the bench's own broker; {home} = its temp home, e.g. sqlite:///{home}/bench.db",
)
@click.option(
    "--broker", "broker_url", help="use this running broker (its workers must offer noop)"
)
@click.option(
    "--samples",
    type=click.IntRange(10),
    default=1000,
    show_default=True,
    help="latency round trips",
)
@click.option(
    "--priority-demo", is_flag=True, help="compare urgent-job wait under priority vs FIFO"
)
@click.option(
    "--json", "json_file", type=click.Path(dir_okay=False), help="also write results here"
)
def bench(
    jobs: int,
    workers: int,
    concurrency: int,
    pool: str,
    store: str,
    broker_url: str | None,
    samples: int,
    priority_demo: bool,
    json_file: str | None,
) -> None:
    """Measure enqueue, drain and end-to-end throughput and round-trip latency."""
    from conveyor.cli.serve import run_loop

    system = None if broker_url else LocalSystem(store, workers, concurrency, pool)
    results: dict[str, Any] = {
        "jobs": jobs,
        "workers": workers,
        "concurrency": concurrency,
        "pool": pool,
        "store": store if system else broker_url,
        "machine": machine(),
    }
    try:
        if system is not None:
            system.start_broker()
        if priority_demo:
            if system is None:
                raise click.UsageError("--priority-demo starts its own broker; drop --broker")
            results["priority_demo"] = _run(
                run_loop, run_priority_demo(system, bulk=2000, urgent=100)
            )
        else:
            results.update(_run(run_loop, run_bench(system, broker_url, jobs, samples)))
    finally:
        if system is not None:
            system.stop()
    _report(results)
    if json_file:
        Path(json_file).write_text(json.dumps(results, indent=2))


def _run(run_loop: Any, coro: Any) -> dict[str, Any]:
    box: dict[str, Any] = {}

    async def main() -> None:
        box.update(await coro)

    run_loop(main())
    return box


def _report(r: dict[str, Any]) -> None:
    table = Table(
        title=f"conveyor bench: {r['store']}, {r['workers']} workers x {r['concurrency']} "
        f"({r['pool']})"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("enqueue_jobs_per_s", "drain_jobs_per_s", "end_to_end_jobs_per_s"):
        if key in r:
            table.add_row(key.replace("_", " "), f"{r[key]:,.0f}")
    for key, value in r.get("latency_ms", {}).items():
        table.add_row(f"round trip {key} (ms)", f"{value:.2f}")
    demo = r.get("priority_demo")
    if demo:
        table.add_row("urgent mean wait, FIFO (ms)", f"{demo['fifo']['mean_wait_ms']:.1f}")
        table.add_row("urgent mean wait, priority (ms)", f"{demo['priority']['mean_wait_ms']:.1f}")
        table.add_row("speed-up", f"{demo['speedup']:.1f}x")
    Console().print(table)
