"""submit, result, status, cancel, jobs, stats: the producer's commands."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from conveyor.cli._client import echo_json, with_client
from conveyor.cli._exit import Failed, NotDone
from conveyor.cli._util import duration_option
from conveyor.client.sync import Client
from conveyor.errors import JobFailed
from conveyor.job import Job, JobState
from conveyor.security.payload import TEXT_PREFIX, is_sealed, is_sealed_call, load_payload_keys

console = Console()
F = TypeVar("F", bound=Callable[..., Any])


def payload_key_option(fn: F) -> F:
    """--payload-key-file: seal what is sent and open what comes back with these keys."""
    return click.option(
        "--payload-key-file",
        type=click.Path(exists=True, dir_okay=False),
        envvar="CONVEYOR_PAYLOAD_KEY_FILE",
        help="end-to-end payload encryption keys (conveyor keygen) [env CONVEYOR_PAYLOAD_KEY_FILE]",
    )(fn)


def use_payload_keys(client: Client, key_file: str | None) -> None:
    if key_file is not None:
        client.cipher = load_payload_keys(key_file)


def parse_pairs(pairs: tuple[str, ...], json_text: str | None) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as JSON when they parse, else strings)."""
    payload: dict[str, Any] = {}
    if json_text is not None:
        try:
            loaded = json.loads(json_text)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--json") from exc
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--json")
        payload.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="PAYLOAD")
        try:
            payload[key] = json.loads(value)
        except json.JSONDecodeError:
            payload[key] = value
    return payload


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _print_result(job: Job) -> None:
    if job.state is JobState.COMPLETED:
        if is_sealed(job.result):
            raise click.ClickException(
                f"the result of job {job.id} is encrypted; pass --payload-key-file with its key"
            )
        click.echo(json.dumps(job.result, default=str))
        return
    raise Failed(str(JobFailed(job)))  # "job ID is dead: RuntimeError: kaput"


@click.command()
@click.argument("task")
@click.argument("payload", nargs=-1)
@click.option("--json", "json_text", metavar="JSON", help="kwargs as a JSON object")
@click.option("--priority", type=click.IntRange(1, 10), help="1 most urgent … 10 least [5]")
@click.option("--queue", help="queue name [default]")
@click.option("--delay", callback=duration_option, help="run after a delay: 30, 30s, 5m, 2h")
@click.option("--retries", type=click.IntRange(0, 100), help="retries after a failure [3]")
@click.option("--timeout", "job_timeout", callback=duration_option, help="job time limit")
@click.option("--unique-key", help="dedupe: return the live job with this key instead")
@click.option("--id", "job_id", help="choose the job id (a resubmit is then idempotent)")
@click.option("--wait", is_flag=True, help="wait for the result and print it")
@click.option("--wait-timeout", type=float, default=None, help="seconds to wait with --wait")
@payload_key_option
@with_client
def submit(
    client: Client,
    task: str,
    payload: tuple[str, ...],
    json_text: str | None,
    wait: bool,
    wait_timeout: float | None,
    job_timeout: float | None,
    payload_key_file: str | None,
    **options: Any,
) -> None:
    """Submit a job: conveyor submit fibonacci n=30 --priority 1 --wait"""
    use_payload_keys(client, payload_key_file)
    kwargs = parse_pairs(payload, json_text)
    handle = client.submit(task, kwargs=kwargs, timeout=job_timeout, **options)
    if not wait:
        click.echo(handle.id)
        return
    _print_result(_wait(client, handle.id, wait_timeout))


def _wait(client: Client, job_id: str, timeout: float | None) -> Job:
    job = client.wait(job_id, timeout)
    if not job.state.is_final:
        raise NotDone(f"job {job_id} is still {job.state.value} after {timeout}s")
    return job


@click.command()
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="wait until the job is final")
@click.option("--timeout", type=float, default=None, help="seconds to wait with --wait")
@payload_key_option
@with_client
def result(
    client: Client, job_id: str, wait: bool, timeout: float | None, payload_key_file: str | None
) -> None:
    """Print a job's result (JSON); exit 1 if it failed, 4 if it is not done yet."""
    use_payload_keys(client, payload_key_file)
    job = _wait(client, job_id, timeout) if wait else client.get(job_id)
    if not job.state.is_final:
        raise NotDone(f"job {job_id} is {job.state.value}; use --wait to wait")
    _print_result(job)


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
