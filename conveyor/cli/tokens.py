"""``conveyor token``: create, list and revoke access tokens.

These commands edit the token registry file in the Conveyor home directly (no broker
connection needed, only access to the file); a running broker picks the change up at
the next connection attempt.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from conveyor import config
from conveyor.cli._util import duration_option
from conveyor.errors import ConfigError
from conveyor.security.tokens import DuplicateTokenName, Role, TokenInfo, TokenRegistry

F = TypeVar("F", bound=Callable[..., Any])


def _home_option(func: F) -> F:
    return click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Conveyor home holding tokens.json [default: $CONVEYOR_HOME or ./.conveyor].",
    )(func)


def _registry(home: Path | None) -> TokenRegistry:
    path = config.home_dir(home)
    if not path.is_dir():
        raise click.ClickException(
            f"no Conveyor home at {path}; pass --home or set CONVEYOR_HOME "
            "(the broker creates it on first start)"
        )
    try:
        return TokenRegistry(path / config.TOKENS_FILE)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group("token")
def token_group() -> None:
    """Manage access tokens (roles: producer, worker, admin)."""


@token_group.command("create")
@click.option(
    "--role",
    required=True,
    type=click.Choice([r.value for r in Role]),
    help="What the token may do.",
)
@click.option("--name", default=None, help="A unique name [default: ROLE-xxxx].")
@click.option(
    "--ttl",
    default=None,
    metavar="DURATION",
    callback=duration_option,
    help="Lifetime, e.g. 3600, 30m, 12h, 30d [default: never expires].",
)
@_home_option
def create_command(role: str, name: str | None, ttl: float | None, home: Path | None) -> None:
    """Create a token and print it (only this once)."""
    registry = _registry(home)
    try:
        token, info = registry.create(Role(role), name, ttl, now=time.time())
    except DuplicateTokenName as exc:
        raise click.ClickException(f"{exc}; pick another --name") from None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(token)
    expiry = f", expires {_when(info.expires_at)}" if info.expires_at is not None else ""
    click.echo(f"created {info.role.value} token {info.name!r}{expiry}", err=True)
    click.echo("Store it now: this token will not be shown again.", err=True)


@token_group.command("list")
@_home_option
def list_command(home: Path | None) -> None:
    """List tokens: name, role, status, dates and a hash prefix (never the token)."""
    infos = _registry(home).list()
    if not infos:
        click.echo("no tokens")
        return
    now = time.time()
    rows = [("NAME", "ROLE", "STATUS", "CREATED", "EXPIRES", "SHA256")]
    rows += [
        (
            i.name,
            i.role.value,
            _status(i, now),
            _when(i.created_at),
            _when(i.expires_at),
            i.hash_prefix,
        )
        for i in infos
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@token_group.command("revoke")
@click.argument("name")
@_home_option
def revoke_command(name: str, home: Path | None) -> None:
    """Revoke the token called NAME; it stops working at its next connection."""
    if not _registry(home).revoke(name):
        raise click.ClickException(f"no token named {name!r} (see `conveyor token list`)")
    click.echo(f"revoked token {name!r}")


def _status(info: TokenInfo, now: float) -> str:
    if info.revoked:
        return "revoked"
    return "active" if info.is_active(now) else "expired"


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
