"""conveyor dlq: inspect, retry and purge dead jobs (admin)."""

from __future__ import annotations

import click

from conveyor.cli._client import echo_json, with_client
from conveyor.cli._exit import Failed
from conveyor.cli._show import on_terminal, print_jobs
from conveyor.client.sync import Client
from conveyor.errors import JobNotFound
from conveyor.job import JobState


@click.group()
def dlq() -> None:
    """The dead-letter queue: jobs that exhausted their retries."""


@dlq.command("list")
@click.option("--queue")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@with_client
def dlq_list(client: Client, queue: str | None, limit: int, as_json: bool) -> None:
    """List dead jobs, newest first, with their last error."""
    dead = client.list_jobs("dead", queue, limit)
    if as_json:
        echo_json([j.to_wire(events=False) for j in dead])
        return
    print_jobs(dead, f"{len(dead)} dead job(s)")
    if on_terminal():  # piped: the job lines alone
        for j in dead:
            err = j.error or {}
            click.echo(f"{j.id}: {err.get('type', '')}: {err.get('message', '')}")


@dlq.command("retry")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "retry_all", is_flag=True, help="retry every dead job")
@with_client
def dlq_retry(client: Client, job_ids: tuple[str, ...], retry_all: bool) -> None:
    """Queue dead jobs again with fresh attempts: JOB_ID... or --all."""
    if not job_ids and not retry_all:
        raise click.UsageError("give JOB_ID(s) or --all")
    if retry_all:
        click.echo(f"requeued {client.dlq_retry(None)} dead job(s)")
        return
    ids = list(dict.fromkeys(job_ids))
    not_dead = {i: s for i in ids if (s := _state(client, i)) != JobState.DEAD.value}
    count = client.dlq_retry(ids) if len(not_dead) < len(ids) else 0
    if not_dead:
        listed = ", ".join(f"{i} ({s})" for i, s in not_dead.items())
        click.echo(f"not dead, so not retried: {listed}", err=True)
    if count == 0:
        raise Failed("nothing was retried: none of the given jobs is dead")
    click.echo(f"requeued {count} dead job(s)")


def _state(client: Client, job_id: str) -> str:
    try:
        return client.get(job_id).state.value
    except JobNotFound:
        return "no such job"


@dlq.command("purge")
@click.argument("job_ids", nargs=-1)
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@with_client
def dlq_purge(client: Client, job_ids: tuple[str, ...], yes: bool) -> None:
    """Delete dead jobs for good: JOB_ID... or all of them."""
    if not job_ids and not yes:
        click.confirm("delete EVERY dead job?", abort=True)
    count = client.dlq_purge(list(job_ids) or None)
    click.echo(f"purged {count} dead job(s)")
