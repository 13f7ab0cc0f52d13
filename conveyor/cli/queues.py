"""conveyor queue: pause and resume dispatch from a queue (admin)."""

from __future__ import annotations

import click

from conveyor.cli._client import with_client
from conveyor.client.sync import Client


@click.group("queue")
def queue_group() -> None:
    """Queues: pause one (its jobs are kept, none is dispatched) and resume it."""


@queue_group.command("pause")
@click.argument("name")
@with_client
def pause(client: Client, name: str) -> None:
    """Stop dispatching jobs from queue NAME; submits still go in. Survives a restart."""
    client.pause_queue(name)
    click.echo(f"queue {name} paused: its jobs wait until `conveyor queue resume {name}`")


@queue_group.command("resume")
@click.argument("name")
@with_client
def resume(client: Client, name: str) -> None:
    """Dispatch jobs from queue NAME again."""
    client.resume_queue(name)
    click.echo(f"queue {name} resumed")
