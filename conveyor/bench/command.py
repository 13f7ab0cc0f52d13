"""``conveyor bench``: pick a scenario, run it on a throwaway system, print and save it."""

from __future__ import annotations

import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from conveyor._compiled import describe
from conveyor.bench.budget import STAGES, run_budget
from conveyor.bench.paths import PATHS, SHAPES, run_paths, run_shapes
from conveyor.bench.plot import DEFAULT_PLOT, save_plot
from conveyor.bench.scaling import SIZES, parse_sizes, run_scaling
from conveyor.bench.store import run_queued_memory, run_reads_under_load, run_restart
from conveyor.bench.system import LocalSystem, machine
from conveyor.bench.throughput import run_bench, run_priority_demo
from conveyor.worker import POOL_KINDS

SCENARIOS = (
    "all",
    *PATHS,
    *SHAPES,
    "throughput",
    "priority",
    "queued-memory",
    "restart",
    "reads",
    "budget",
    "scaling",
)
#: scenarios about the durable store run on SQLite whatever --store says
DURABLE_SCENARIOS = ("queued-memory", "restart", "reads")
SQLITE = "sqlite:///{home}/bench.db"


@click.command()
@click.option(
    "--scenario",
    type=click.Choice(SCENARIOS),
    default="all",
    show_default=True,
    help="all: every path and shape below, one table; single: Client.submit() one at a "
    "time; batch: one submit_many; drain: the workers empty a queue; e2e: single and "
    "batch submits plus the drain; latency: submit and result() round trips; results: "
    "reading --jobs finished results from the sync Client; spread: the drain over 1,000 "
    "task names and over 200 queues; small-workers: 50 x 1 against 2 x 25; payload: "
    "400 KB arguments (bytes written, round trip); throughput: the async client's "
    "enqueue, drain, end to end and round trips; priority: urgent jobs behind "
    "a backlog; queued-memory: broker memory per queued job, then the drain of that queue; "
    "restart: time to ready with --history finished jobs; reads: round trips while another "
    "client lists a --history deep queue; budget: CPU microseconds per job in each stage "
    "alone (client, codec, validation, store, worker) and of each process; scaling (not in "
    "all): the same as --scaling",
)
@click.option(
    "--jobs",
    type=click.IntRange(1),
    help="jobs per measurement  [default: 20,000; 2,000 with --scaling]",
)
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option(
    "--brokers",
    type=click.IntRange(1, 8),
    default=1,
    show_default=True,
    help="brokers on the one --store (postgresql:// only; --scenario throughput): the "
    "workers are dealt out across them, the producer submits to the first",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1000),
    help="slots per worker  [default: the worker's own, 4]",
)
@click.option("--pool", type=click.Choice(POOL_KINDS), help="[default: the worker's own, thread]")
@click.option(
    "--store",
    default="memory://",
    show_default=True,
    help="store of the bench's own broker; {home} = its temp home, e.g. sqlite:///{home}/bench.db",
)
@click.option(
    "--broker",
    "broker_url",
    help="measure this running broker with the throughput scenario (its workers must offer noop)",
)
@click.option(
    "--samples",
    type=click.IntRange(10),
    default=1000,
    show_default=True,
    help="latency round trips",
)
@click.option(
    "--history",
    type=click.IntRange(1000),
    default=1_000_000,
    show_default=True,
    help="finished jobs in the database (restart, reads)",
)
@click.option("--priority-demo", is_flag=True, help="the same as --scenario priority")
@click.option(
    "--scaling",
    is_flag=True,
    help="speed-up with 1, 2, 4 and 8 worker processes (--scale), for each pool kind (or "
    "--pool), on a CPU-bound and a 10 ms I/O-bound task: a table and a plot (--plot); "
    "each worker has one slot unless --concurrency says otherwise",
)
@click.option(
    "--scale",
    "scale",
    default=",".join(map(str, SIZES)),
    show_default=True,
    metavar="N,N,...",
    callback=lambda ctx, param, value: parse_sizes(value),
    help="worker counts for --scaling",
)
@click.option(
    "--plot",
    "plot_file",
    default=DEFAULT_PLOT,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="where --scaling saves its plot (PNG; needs the plot extra: conveyor[plot])",
)
@click.option(
    "--json", "json_file", type=click.Path(dir_okay=False), help="also write results here"
)
def bench(
    scenario: str,
    jobs: int | None,
    workers: int,
    brokers: int,
    concurrency: int | None,
    pool: str | None,
    store: str,
    broker_url: str | None,
    samples: int,
    history: int,
    priority_demo: bool,
    scaling: bool,
    scale: tuple[int, ...],
    plot_file: str,
    json_file: str | None,
) -> None:
    """Measure a real broker with real workers over TLS (see --scenario)."""
    if priority_demo:
        scenario = "priority"
    if scaling:
        scenario = "scaling"
    if scenario == "scaling":
        jobs = jobs or 2_000
        concurrency = concurrency or 1  # one slot each: the worker count is the variable
    jobs = jobs or 20_000
    if broker_url and scenario == "all":
        scenario = "throughput"  # the one scenario that measures a broker it did not start
    if broker_url and scenario != "throughput":
        raise click.UsageError(
            f"--scenario {scenario} starts its own broker; use --scenario throughput with "
            "--broker, or drop --broker"
        )
    if scenario in DURABLE_SCENARIOS:
        store = SQLITE if store == "memory://" else store
        if not store.startswith("sqlite:"):
            raise click.UsageError(f"--scenario {scenario} measures the SQLite store")
    if brokers > 1 and not (
        store.startswith(("postgresql:", "postgres:")) and scenario == "throughput"
    ):
        raise click.UsageError(
            "--brokers shares one database: use it with --store postgresql://... and "
            "--scenario throughput"
        )
    system = None if broker_url else LocalSystem(store, workers, concurrency, pool, brokers)
    results: dict[str, Any] = {
        "scenario": scenario,
        "jobs": jobs,
        "workers": workers,
        "brokers": brokers,
        "concurrency": concurrency or "default",
        "pool": pool or "default",
        "store": store if system else broker_url,
        "machine": machine(),
    }
    try:
        if scenario == "scaling" and system is not None:
            pools = (pool,) if pool else POOL_KINDS
            results.update(_run(run_scaling(system, jobs, scale, pools)))
        else:
            results.update(_run(_scenario(scenario, system, broker_url, jobs, samples, history)))
    finally:
        if system is not None:
            system.stop()
    if scenario == "scaling":
        _report_scaling(results)
        Console(stderr=True).print(save_plot(results["scaling"], plot_file, machine()["cpus"]))
    else:
        _report(results)
    if json_file:
        Path(json_file).write_text(json.dumps(results, indent=2))


def _scenario(
    name: str,
    system: LocalSystem | None,
    broker_url: str | None,
    jobs: int,
    samples: int,
    history: int,
) -> Coroutine[Any, Any, dict[str, Any]]:
    if system is None:
        return run_bench(None, broker_url, jobs, samples)
    if name == "queued-memory":
        return run_queued_memory(system, jobs)
    if name == "restart":
        return run_restart(system, history)
    if name == "reads":
        return run_reads_under_load(system, history, samples)
    if name == "budget":
        return run_budget(system, jobs)
    if name in PATHS:
        return run_paths(system, jobs, samples, name)
    if name in SHAPES:
        return run_shapes(system, jobs, name)
    if name == "all":
        return _all(system, jobs, samples)
    system.start_broker()
    if name == "priority":
        return _wrap("priority_demo", run_priority_demo(system, bulk=2000, urgent=100))
    return run_bench(system, None, jobs, samples)


async def _all(system: LocalSystem, jobs: int, samples: int) -> dict[str, Any]:
    out = await run_paths(system, jobs, samples, "all")
    system.stop_broker()
    out.update(await run_shapes(system, jobs, "all"))
    return out


async def _wrap(key: str, coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    return {key: await coro}


def _run(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    from conveyor.cli.serve import run_loop

    box: dict[str, Any] = {}

    async def main() -> None:
        box.update(await coro)

    run_loop(main())
    return box


_LABELS = {
    "single_submits_per_s": ("Client.submit() one at a time, per s", "{:,.0f}"),
    "single_pipelined_per_s": ("the same with Client(pipeline=True), per s", "{:,.0f}"),
    "submit_many_per_s": ("one submit_many, jobs per s", "{:,.0f}"),
    "submit_many_broker_us": ("one submit_many: broker us/job", "{:,.1f}"),
    "submit_many_client_us": ("one submit_many: client us/job", "{:,.1f}"),
    "e2e_single_jobs_per_s": ("end to end, single submits, jobs per s", "{:,.0f}"),
    "e2e_pipelined_jobs_per_s": ("end to end, pipelined submits, jobs per s", "{:,.0f}"),
    "e2e_batch_jobs_per_s": ("end to end, submit_many, jobs per s", "{:,.0f}"),
    "results_s": ("results of the finished jobs, sync Client (s)", "{:.2f}"),
    "wait_many_s": ("the same with one Client.wait_many (s)", "{:.2f}"),
    "drain_one_task_jobs_per_s": ("drain, one task on one queue", "{:,.0f}"),
    "drain_1000_tasks_jobs_per_s": ("drain, 1,000 task names", "{:,.0f}"),
    "drain_200_queues_jobs_per_s": ("drain, 200 queues", "{:,.0f}"),
    "drain_2x25_jobs_per_s": ("drain, 2 workers x 25", "{:,.0f}"),
    "drain_50x1_jobs_per_s": ("drain, 50 workers x 1", "{:,.0f}"),
    "drain_one_task_broker_us": ("drain, one task on one queue: broker us/job", "{:,.1f}"),
    "drain_one_task_workers_us": ("drain, one task on one queue: workers' us/job", "{:,.1f}"),
    "drain_1000_tasks_broker_us": ("drain, 1,000 task names: broker us/job", "{:,.1f}"),
    "drain_1000_tasks_workers_us": ("drain, 1,000 task names: workers' us/job", "{:,.1f}"),
    "drain_200_queues_broker_us": ("drain, 200 queues: broker us/job", "{:,.1f}"),
    "drain_200_queues_workers_us": ("drain, 200 queues: workers' us/job", "{:,.1f}"),
    "drain_2x25_broker_us": ("drain, 2 workers x 25: broker us/job", "{:,.1f}"),
    "drain_2x25_workers_us": ("drain, 2 workers x 25: workers' us/job", "{:,.1f}"),
    "drain_50x1_broker_us": ("drain, 50 workers x 1: broker us/job", "{:,.1f}"),
    "drain_50x1_workers_us": ("drain, 50 workers x 1: workers' us/job", "{:,.1f}"),
    "payload_round_trip_p50_ms": ("400 KB argument: round trip p50 (ms)", "{:.2f}"),
    "payload_written_per_job": ("400 KB argument: bytes written per job", "{:,.0f}"),
    "payload_write_ratio": ("400 KB argument: written / payload", "{:.2f}x"),
    "enqueue_jobs_per_s": ("enqueue jobs per s", "{:,.0f}"),
    "drain_jobs_per_s": ("drain jobs per s", "{:,.0f}"),
    "end_to_end_jobs_per_s": ("end to end jobs per s", "{:,.0f}"),
    "queued_jobs": ("jobs queued", "{:,}"),
    "rss_idle_mb": ("broker RSS, idle (MB)", "{:.1f}"),
    "rss_queued_mb": ("broker RSS, queue full (MB)", "{:.1f}"),
    "bytes_per_queued_job": ("bytes per queued job, first half", "{:,.0f}"),
    "marginal_bytes_per_queued_job": ("bytes per queued job, second half", "{:,.0f}"),
    "deep_drain_jobs_per_s": ("drain of that queue, jobs per s", "{:,.0f}"),
    "finished_jobs": ("finished jobs in the database", "{:,}"),
    "empty_ready_s": ("ready, empty database (s)", "{:.2f}"),
    "empty_rss_mb": ("RSS at ready, empty database (MB)", "{:.1f}"),
    "history_ready_s": ("ready, with the history (s)", "{:.2f}"),
    "history_rss_mb": ("RSS at ready, with the history (MB)", "{:.1f}"),
    "idle_p50_ms": ("round trip p50, idle (ms)", "{:.2f}"),
    "loaded_p50_ms": ("round trip p50, under heavy reads (ms)", "{:.2f}"),
    "slowdown": ("slowdown", "{:.2f}x"),
    "heavy_list_ms": ("heavy listing, mean (ms)", "{:.1f}"),
    "heavy_lists": ("heavy listings served", "{:,}"),
}


def _report(r: dict[str, Any]) -> None:
    table = Table(
        title=f"conveyor bench {r['scenario']}: {r['store']}, {r['workers']} workers x "
        f"{r['concurrency']} ({r['pool']})"
        + (f", {r['brokers']} brokers" if r.get("brokers", 1) > 1 else ""),
        caption=describe(),
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, (label, fmt) in _LABELS.items():
        if key in r:
            table.add_row(label, fmt.format(r[key]))
    for key, label in STAGES:
        if key in r:
            table.add_row(f"{label} (CPU us per job)", f"{r[key]:,.1f}")
    for key, value in (r.get("latency_ms") or r.get("round_trip_ms") or {}).items():
        table.add_row(f"round trip {key} (ms)", f"{value:.2f}")
    demo = r.get("priority_demo")
    if demo:
        table.add_row("urgent mean wait, FIFO (ms)", f"{demo['fifo']['mean_wait_ms']:.1f}")
        table.add_row("urgent mean wait, priority (ms)", f"{demo['priority']['mean_wait_ms']:.1f}")
        table.add_row("speed-up", f"{demo['speedup']:.1f}x")
    Console().print(table)


def _report_scaling(r: dict[str, Any]) -> None:
    points = r["scaling"]
    sizes = sorted({p["workers"] for p in points})
    table = Table(
        title=f"conveyor bench --scaling: {r['jobs']:,} jobs a point, {r['store']}, "
        f"{r['concurrency']} slot(s) a worker, {r['machine']['cpus']} CPUs"
    )
    table.add_column("task")
    table.add_column("pool")
    for n in sizes:
        table.add_column(f"{n} worker{'s' if n > 1 else ''}", justify="right")
    for kind in dict.fromkeys(p["kind"] for p in points):
        for pool in dict.fromkeys(p["pool"] for p in points):
            row = {p["workers"]: p for p in points if p["kind"] == kind and p["pool"] == pool}
            cells = [
                f"{row[n]['jobs_per_s']:,.0f}/s  {row[n]['speedup']:.2f}x" if n in row else "-"
                for n in sizes
            ]
            table.add_row(kind, pool, *cells)
    Console().print(table)
