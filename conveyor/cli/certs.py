"""``conveyor certs``: a local CA, the broker's certificate and client certificates."""

from __future__ import annotations

from pathlib import Path

import click

from conveyor import config
from conveyor.errors import ConfigError
from conveyor.security import certs


@click.command("certs")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for the files [default: the Conveyor home, $CONVEYOR_HOME or ./.conveyor].",
)
@click.option(
    "--hosts",
    default=None,
    metavar="A,B,IP",
    help="Comma-separated names and IP addresses the broker is reached by "
    "[default: localhost,127.0.0.1,::1].",
)
@click.option("--client", "client", metavar="NAME", help="Issue a client certificate (CN=NAME).")
@click.option(
    "--force", is_flag=True, help="Replace the server (or --client) certificate if it exists."
)
def certs_command(out: Path | None, hosts: str | None, client: str | None, force: bool) -> None:
    """Make a local CA and a server certificate, or a client certificate for mutual TLS.

    Creates ca.pem/ca.key and server.pem/server.key if they are missing. With --force the
    server certificate is reissued from the existing CA (clients keep working); to replace
    the CA itself, delete ca.pem and ca.key first. With --client NAME, issues
    client-NAME.pem/.key from the CA. Private keys are written with mode 0600.
    """
    out_dir = out if out is not None else config.home_dir()
    host_list = _split_hosts(hosts)
    try:
        if client is None and force:
            _reissue_server(out_dir, host_list)
        else:
            _create_missing(out_dir, host_list, client, force)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"CA certificate to give to clients: {certs.ca_paths(out_dir).cert}")


def _reissue_server(out_dir: Path, hosts: list[str] | None) -> None:
    if not certs.ca_paths(out_dir).exists():
        paths = certs.make_ca(out_dir)
        click.echo(f"created CA certificate {paths.cert} (key {paths.key})")
    paths = certs.make_server_cert(out_dir, hosts, force=True)
    names = ", ".join(hosts or certs.DEFAULT_HOSTS)
    click.echo(f"issued server certificate {paths.cert} for {names}")


def _create_missing(
    out_dir: Path, hosts: list[str] | None, client: str | None, force: bool
) -> None:
    server = certs.server_paths(out_dir)
    server_existed = server.exists()
    lines = certs.ensure_ca_and_server(out_dir, hosts)
    for line in lines:
        click.echo(line)
    if client is not None:
        paths = certs.make_client_cert(out_dir, client, force=force)
        click.echo(f"created client certificate {paths.cert} (key {paths.key})")
    elif server_existed and hosts is not None:
        raise ConfigError(
            f"{server.cert} already exists; pass --force to reissue it for these hosts"
        )
    elif not lines:
        click.echo(f"nothing to do: {server.cert} exists (--force reissues it)")


def _split_hosts(hosts: str | None) -> list[str] | None:
    if hosts is None:
        return None
    names = [h.strip() for h in hosts.split(",") if h.strip()]
    if not names:
        raise click.BadParameter("give at least one host name or IP address", param_hint="--hosts")
    return names
