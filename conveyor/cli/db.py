"""``conveyor db``: the PostgreSQL schema of a store, migrated and inspected.

The broker migrates its schema itself when it starts (under an advisory lock, so several
brokers starting together take turns); ``conveyor db migrate`` does the same ahead of a
deploy, and ``conveyor db status`` says which version a schema is at and what it lacks.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import click

from conveyor.errors import ConfigError

STORE_HELP = "postgresql://user@host:port/db?schema=NAME  [env CONVEYOR_STORE]"


@click.group("db")
def db_group() -> None:
    """The PostgreSQL store's schema: migrate it, show its version."""


def _store_option(fn: Any) -> Any:
    return click.option(
        "--store", "store_url", required=True, envvar="CONVEYOR_STORE", help=STORE_HELP
    )(fn)


async def _with_connection(url: str, then: Any) -> Any:
    try:
        from conveyor.stores.sql.pg_conn import Connections, parse_postgres_url
    except ImportError as exc:  # the optional extra is missing
        raise ConfigError(f"needs psycopg: pip install 'conveyor[postgres]' ({exc})") from exc
    import psycopg

    conninfo, schema, options = parse_postgres_url(url)
    db = Connections(conninfo, schema, "cli", options)
    try:
        conn = await db.connect(schema=False)
    except psycopg.OperationalError as exc:
        raise ConfigError(f"cannot connect to PostgreSQL: {exc}") from exc
    try:
        return await then(conn, schema)
    finally:
        await conn.close()


def _check_url(url: str) -> None:
    if not url.startswith(("postgresql:", "postgres:")):
        raise click.UsageError(
            "conveyor db works on PostgreSQL stores (postgresql://…); a SQLite store "
            "migrates itself when the broker opens it"
        )


@db_group.command("migrate")
@_store_option
def migrate_command(store_url: str) -> None:
    """Create the schema if it is missing and apply the migrations it lacks."""
    from conveyor.stores.sql.pg_schema import migrate

    _check_url(store_url)
    try:
        applied = asyncio.run(_with_connection(store_url, migrate))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if not applied:
        click.echo("schema is up to date")
    for step in applied:
        click.echo(f"applied migration {step.version}: {step.description}")


@db_group.command("status")
@_store_option
@click.option("--json", "as_json", is_flag=True, help="print the status as JSON")
def status_command(store_url: str, as_json: bool) -> None:
    """The schema's version, the migrations it lacks and the brokers registered on it."""
    from conveyor.stores.sql.pg_schema import status

    _check_url(store_url)
    try:
        info = asyncio.run(_with_connection(store_url, status))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    if not info["exists"]:
        click.echo(f"schema {info['schema']}: not created yet (conveyor db migrate creates it)")
    else:
        click.echo(f"schema {info['schema']}: version {info['version']} of {info['latest']}")
    for step in info["pending"]:
        click.echo(f"  pending {step['version']}: {step['description']}")
    now = time.time()
    for b in info["brokers"]:
        ago = now - b["heartbeat_at"]
        click.echo(f"  broker {b['id']} on {b['host']} pid {b['pid']}: heartbeat {ago:.1f}s ago")
