"""``conveyor token``: create, list and revoke access tokens.

Two ways to reach the tokens, chosen per command:

* **the local registry**: when ``tokens.json`` exists in the Conveyor home and no
  ``--broker`` is given, the command edits that file directly (it is the broker's own
  home; a running broker picks the change up at the next connection attempt);
* **the running broker**: otherwise it asks the broker over the protocol
  (TOKEN_CREATE / TOKEN_LIST / TOKEN_REVOKE) with an admin token.

When neither is at hand it refuses (exit 3) rather than print a token no broker knows.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import click

from conveyor import config
from conveyor.cli._client import client_options, connect, errors_as_exit, pop_client_opts
from conveyor.cli._exit import Failed, Unreachable
from conveyor.cli._util import duration_option
from conveyor.client.sync import Client
from conveyor.errors import ConfigError, ConnectionLost, JobNotFound, PermissionDenied
from conveyor.security.tokens import DuplicateTokenName, Role, TokenInfo, TokenRegistry

TokenMap = dict[str, Any]  # the protocol's token info map (docs/protocol.md §7.3)


class _Tokens(Protocol):
    def create(self, role: Role, name: str | None, ttl: float | None) -> tuple[str, TokenMap]: ...
    def list(self) -> list[TokenMap]: ...
    def revoke(self, name: str) -> bool: ...


class _Local:
    """The registry file in the home, edited in place."""

    def __init__(self, registry: TokenRegistry) -> None:
        self.registry = registry

    def create(self, role: Role, name: str | None, ttl: float | None) -> tuple[str, TokenMap]:
        try:
            token, info = self.registry.create(role, name, ttl, now=time.time())
        except DuplicateTokenName as exc:
            raise Failed(f"{exc}; pick another --name") from None
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        return token, _token_map(info)

    def list(self) -> list[TokenMap]:
        return [_token_map(i) for i in self.registry.list()]

    def revoke(self, name: str) -> bool:
        return self.registry.revoke(name)


class _Remote:
    """The running broker, over the protocol (needs an admin token)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def create(self, role: Role, name: str | None, ttl: float | None) -> tuple[str, TokenMap]:
        reply = self.client.token_create(role.value, name, ttl)
        return str(reply["token"]), dict(reply["info"])

    def list(self) -> list[TokenMap]:
        return [dict(t) for t in self.client.token_list()["tokens"]]

    def revoke(self, name: str) -> bool:
        try:
            self.client.token_revoke(name)
        except JobNotFound:  # the broker's not_found: no token of that name
            return False
        return True


def _token_map(info: TokenInfo) -> TokenMap:
    return {
        "name": info.name,
        "role": info.role.value,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "revoked": info.revoked,
        "hash_prefix": info.hash_prefix,
    }


@contextmanager
def _tokens(opts: dict[str, Any]) -> Iterator[_Tokens]:
    """The local registry when the home has one and no --broker is given, else the broker."""
    registry_file = config.home_dir(opts["home"]) / config.TOKENS_FILE
    if opts["broker_url"] is None and registry_file.is_file():
        with errors_as_exit(unreachable=1):  # a local file: exit 1 if it does not parse
            yield _Local(TokenRegistry(registry_file))
        return
    try:
        with connect(opts) as client:
            try:
                yield _Remote(client)
            except PermissionDenied as exc:
                raise Unreachable(
                    f"{exc.code}: {exc.message}; token commands need an admin token "
                    "(--token / CONVEYOR_TOKEN)"
                ) from exc
    except Unreachable as exc:
        if not isinstance(exc.__cause__, ConfigError | ConnectionLost):
            raise
        raise Unreachable(
            f"no token registry at {registry_file} and no broker to ask ({exc.message}); "
            "run this where the broker's home is (--home / CONVEYOR_HOME), or give "
            "--broker URL with an admin --token"
        ) from exc


@click.group("token")
def token_group() -> None:
    """Manage access tokens (roles: producer, worker, admin).

    Edits tokens.json in the Conveyor home when it is there (and no --broker is given);
    otherwise asks the running broker, with an admin token.
    """


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
@client_options
def create_command(role: str, name: str | None, ttl: float | None, **opts: Any) -> None:
    """Create a token and print it (only this once)."""
    with _tokens(pop_client_opts(opts)) as tokens:
        token, info = tokens.create(Role(role), name, ttl)
    click.echo(token)
    expiry = f", expires {_when(info['expires_at'])}" if info["expires_at"] is not None else ""
    click.echo(f"created {info['role']} token {info['name']!r}{expiry}", err=True)
    click.echo("Store it now: this token will not be shown again.", err=True)


@token_group.command("list")
@client_options
def list_command(**opts: Any) -> None:
    """List tokens: name, role, status, dates and a hash prefix (never the token)."""
    with _tokens(pop_client_opts(opts)) as tokens:
        infos = tokens.list()
    if not infos:
        click.echo("no tokens")
        return
    now = time.time()
    rows = [("NAME", "ROLE", "STATUS", "CREATED", "EXPIRES", "SHA256")]
    rows += [
        (
            i["name"],
            i["role"],
            _status(i, now),
            _when(i["created_at"]),
            _when(i["expires_at"]),
            i["hash_prefix"],
        )
        for i in infos
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@token_group.command("revoke")
@click.argument("name")
@client_options
def revoke_command(name: str, **opts: Any) -> None:
    """Revoke the token called NAME; it stops working at its next connection."""
    with _tokens(pop_client_opts(opts)) as tokens:
        revoked = tokens.revoke(name)
    if not revoked:
        raise Failed(f"no token named {name!r} (see `conveyor token list`)")
    click.echo(f"revoked token {name!r}")


def _status(info: TokenMap, now: float) -> str:
    if info["revoked"]:
        return "revoked"
    expires = info["expires_at"]
    return "active" if expires is None or now < expires else "expired"


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
