"""status, cancel, jobs, stats: looking at jobs and the broker (submit.py sends them)."""

from __future__ import annotations

import json
from typing import Any

import click

from conveyor.cli._client import echo_json, with_client
from conveyor.cli._exit import Failed
from conveyor.cli._show import detail, print_jobs, queue_name, when
from conveyor.cli.limits import describe
from conveyor.cli.submit import payload_key_option, use_payload_keys
from conveyor.client.sync import Client
from conveyor.errors import Conflict, JobNotFound
from conveyor.job import JobState
from conveyor.schedules import job_schedule
from conveyor.security.payload import TEXT_PREFIX, is_sealed, is_sealed_call


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
    click.echo(f"  task {job.task}  queue {queue_name(job.queue)}  priority {job.priority}")
    click.echo(f"  attempts {job.attempts}/{job.max_retries + 1}  worker {job.worker or '-'}")
    if job.waiting:
        click.echo(f"  waiting: {job.waiting}")
    if (fired_by := job_schedule(job.id)) is not None:
        name, slot = fired_by
        click.echo(f"  schedule {name}  " + (f"slot {when(slot)} UTC" if slot else "run now"))
    if job.depends_on:
        click.echo(f"  after {', '.join(job.depends_on)}")
    if job.workflow:
        click.echo(f"  workflow {job.workflow}")
    if job.progress_at is not None:
        value = "" if job.progress is None else f"{job.progress:.0%} "
        click.echo(f"  progress {value}{job.progress_message or ''}".rstrip())
        if job.meta:
            click.echo(f"  meta {json.dumps(job.meta, sort_keys=True)}")
    if job.eta and job.state is JobState.SCHEDULED:
        click.echo(f"  runs at {when(job.eta)} UTC")
    if is_sealed_call(job.args, job.kwargs):
        click.echo("  payload: encrypted")
    if job.error:
        message = job.error.get("message")
        shown = "(encrypted)" if is_sealed(message) else message
        click.echo(f"  error {job.error.get('type')}: {shown}")
    for ev in job.events:
        extra = "  ".join(f"{k}={_shown(k, v)}" for k, v in ev.items() if k not in ("event", "at"))
        click.echo(f"  {when(ev.get('at'))}  {ev.get('event'):<10} {extra}".rstrip())


def _shown(key: str, value: Any) -> Any:
    """An event detail: a date for a time, ``(encrypted)`` for a sealed error message."""
    if isinstance(value, str) and TEXT_PREFIX in value:
        return value.partition(TEXT_PREFIX)[0] + "(encrypted)"
    return detail(key, value)


@click.command()
@click.argument("job_ids", nargs=-1, required=True, metavar="JOB_ID...")
@with_client
def cancel(client: Client, job_ids: tuple[str, ...]) -> None:
    """Cancel queued, scheduled or running jobs; exit 1 if any could not be cancelled."""
    refused = 0
    for job_id in dict.fromkeys(job_ids):
        try:
            job = client.cancel(job_id)
        except (JobNotFound, Conflict) as exc:
            click.echo(f"{job_id}: {exc.code}: {exc.message}", err=True)
            refused += 1
            continue
        running = job.state is JobState.RUNNING
        note = " (the worker was told; final when it stops)" if running else ""
        click.echo(f"{job.id} {'cancelling' if running else job.state.value}{note}")
    if refused:
        raise Failed(f"{refused} of {len(set(job_ids))} job(s) not cancelled")


@click.command("jobs")
@click.option("--state", type=click.Choice([s.value for s in JobState]))
@click.option("--queue")
@click.option("--task", help="only jobs of this task")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--json", "as_json", is_flag=True)
@with_client
def jobs_command(
    client: Client,
    state: str | None,
    queue: str | None,
    task: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List jobs, newest first.

    On a terminal, a table; piped, one job per line (id, task, queue, priority, state,
    attempts, created), tab-separated, full id first: conveyor jobs | cut -f1
    """
    found = client.list_jobs(state, queue, limit, offset, task)
    if as_json:
        echo_json([j.to_wire(events=False) for j in found])
    else:
        print_jobs(found, f"{len(found)} job(s)")


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
        click.echo(f"queue {queue_name(name)}: " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    for w in data.get("waiting", []):
        if not w["offered"]:
            click.echo(
                f"waiting: {w['count']} job(s) of task {w['task']} on queue "
                f"{queue_name(w['queue'])} — no connected worker offers it"
            )
    limits = data.get("limits") or {}
    if limits.get("rates") or limits.get("concurrency") or limits.get("waiting_for_key"):
        click.echo("limits:")
        for line in describe(limits):
            click.echo("  " + line)
    click.echo(f"workers: {len(data['workers'])}")
    for w in data["workers"]:
        click.echo(
            f"  {w['id']}  {w['pool']} x{w['concurrency']}  running {w['running']}  "
            f"done {w['completed']}  failed {w['failed']}  queues {','.join(w['queues'])}"
        )
    b = data["broker"]
    click.echo(f"broker:  {b['url']}  store {b['store']}  up {_uptime(b['uptime'])}")
    sec = data.get("security") or {}
    if sec.get("login_failures") or sec.get("token_ended_connections"):
        click.echo(
            f"security: {sec.get('login_failures', 0)} bad token(s), "
            f"{sec.get('logins_refused_throttled', 0)} login(s) refused while throttled, "
            f"{sec.get('sources_blocked', 0)} address(es) blocked now, "
            f"{sec.get('token_ended_connections', 0)} connection(s) ended by revocation/expiry"
        )
    if b.get("queue_full"):
        click.echo(
            f"refused: {b['queue_full']} job(s) since start, their queue was at its "
            "--max-queued limit (queue_full)"
        )
    store = data.get("store") or {}
    if store.get("writable") is False:
        click.echo(
            f"store:   CANNOT WRITE ({store.get('error')}); changes are kept and written "
            "when it recovers",
            err=True,
        )


def _uptime(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    clock = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}d {clock}" if days else clock
