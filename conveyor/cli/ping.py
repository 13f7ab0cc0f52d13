"""``conveyor ping``: is the broker there, and who am I to it? For scripts and health checks."""

from __future__ import annotations

import click

from conveyor.cli._client import with_client
from conveyor.client.sync import Client


@click.command()
@with_client
def ping(client: Client) -> None:
    """Connect and time a round trip: prints the broker's URL, the time in ms and the role
    of your token. Exit 0 when it answers, 3 when it cannot be reached or used."""
    reply = client.ping()
    click.echo(
        f"conveyor://{client.address}  {reply['rtt'] * 1000:.1f} ms  "
        f"role {reply['role']}  ({reply['server'] or 'unknown server'})"
    )
