"""status, cancel, jobs, stats: looking at jobs and the broker (submit.py sends them)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from conveyor.cli._client import echo_json, with_client
from conveyor.cli.submit import payload_key_option, use_payload_keys
from conveyor.client.sync import Client
from conveyor.job import Job, JobState
from conveyor.security.payload import TEXT_PREFIX, is_sealed, is_sealed_call

console = Console()


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="print the whole job as JSON")
@payload_key_option
@with_client
def status(client: Client, job_id: str, as_json: bool, payload_key_file: str | None) -> None:
    """Show a job's state, attempts, worker and history."""
    use_payload_keys(client, payload_key_file)
    job = client.get(job_id)  # opened where the key fits
    if as_json:
        echo_json(job.to_wire())
        return
    click.echo(f"{job.id}  {job.state.value}")
    click.echo(f"  task {job.task}  queue {job.queue}  priority {job.priority}")
    click.echo(f"  attempts {job.attempts}/{job.max_retries + 1}  worker {job.worker or '-'}")
    if job.waiting:
        click.echo(f"  waiting: {job.waiting}")
    if job.eta and job.state is JobState.SCHEDULED:
        click.echo(f"  runs at {_when(job.eta)} UTC")
    if is_sealed_call(job.args, job.kwargs):
        click.echo("  payload: encrypted")
    if job.error:
        message = job.error.get("message")
        shown = "(encrypted)" if is_sealed(message) else message
        click.echo(f"  error {job.error.get('type')}: {shown}")
    for ev in job.events:
        extra = "  ".join(f"{k}={_shown(v)}" for k, v in ev.items() if k not in ("event", "at"))
        click.echo(f"  {_when(ev.get('at'))}  {ev.get('event'):<10} {extra}")


def _shown(value: Any) -> Any:
    """An event detail, with a sealed error message shown as ``(encrypted)``."""
    if isinstance(value, str) and TEXT_PREFIX in value:
        return value.partition(TEXT_PREFIX)[0] + "(encrypted)"
    return value


@click.command()
@click.argument("job_id")
@with_client
def cancel(client: Client, job_id: str) -> None:
    """Cancel a queued, scheduled or running job."""
    job = client.cancel(job_id)
    note = " (the worker was told; final when it stops)" if job.state is JobState.RUNNING else ""
    click.echo(
        f"{job.id} {'cancelling' if job.state is JobState.RUNNING else job.state.value}{note}"
    )


def jobs_table(jobs: list[Job], title: str) -> Table:
    table = Table(title=title)
    for col in ("id", "task", "queue", "prio", "state", "attempts", "created (UTC)"):
        table.add_column(col)
    for j in jobs:
        table.add_row(
            j.id,
            j.task,
            j.queue,
            str(j.priority),
            j.state.value,
            str(j.attempts),
            _when(j.created_at),
        )
    return table


@click.command("jobs")
@click.option("--state", type=click.Choice([s.value for s in JobState]))
@click.option("--queue")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--json", "as_json", is_flag=True)
@with_client
def jobs_command(
    client: Client, state: str | None, queue: str | None, limit: int, offset: int, as_json: bool
) -> None:
    """List jobs, newest first."""
    found = client.list_jobs(state, queue, limit, offset)
    if as_json:
        echo_json([j.to_wire(events=False) for j in found])
    else:
        console.print(jobs_table(found, f"{len(found)} job(s)"))


@click.command()
@click.option("--json", "as_json", is_flag=True)
@with_client
def stats(client: Client, as_json: bool) -> None:
    """Queue depths, job counts, workers."""
    data = client.stats()
    if as_json:
        echo_json(data)
        return
    states = data["states"]
    click.echo("jobs:    " + "  ".join(f"{k} {v}" for k, v in states.items()))
    click.echo("totals:  " + "  ".join(f"{k} {v}" for k, v in data["totals"].items()))
    for name, counts in sorted(data["queues"].items()):
        click.echo(f"queue {name}: " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    for w in data.get("waiting", []):
        if not w["offered"]:
            click.echo(
                f"waiting: {w['count']} job(s) of task {w['task']} on queue {w['queue']}"
                " — no connected worker offers it"
            )
    click.echo(f"workers: {len(data['workers'])}")
    for w in data["workers"]:
        click.echo(
            f"  {w['id']}  {w['pool']} x{w['concurrency']}  running {w['running']}  "
            f"done {w['completed']}  failed {w['failed']}  queues {','.join(w['queues'])}"
        )
    b = data["broker"]
    uptime = time.strftime("%H:%M:%S", time.gmtime(b["uptime"]))
    click.echo(f"broker:  {b['url']}  store {b['store']}  up {uptime}")
