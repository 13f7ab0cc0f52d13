"""``conveyor broker``: its options, the config they build, and the broker's run until a signal."""

from __future__ import annotations

import asyncio
import gc
import logging
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from conveyor import limitspec
from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig, Limits
from conveyor.cli._client import errors_as_exit
from conveyor.cli._util import duration_option, log_level_option, parse_max_queued
from conveyor.cli.serve import LOG_FORMAT, run_loop, split_values
from conveyor.config import (
    DEFAULT_BROKER_PORT,
    DEFAULT_BROKER_URL,
    DEFAULT_HOST,
    DEFAULT_HTTP_PORT,
    ensure_broker_files,
    home_dir,
    write_broker_url,
)
from conveyor.errors import ConfigError, InvalidJob
from conveyor.limits import MAX_FRAME_SIZE, MAX_PAYLOAD, MAX_QUEUED
from conveyor.stores import default_store_url


@click.command()
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="address to bind")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=DEFAULT_BROKER_PORT, show_default=True
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_HTTP_PORT,
    show_default=True,
    help="port for the HTTP API and the dashboard (0: any free port)",
)
@click.option(
    "--http-host",
    default=DEFAULT_HOST,
    show_default=True,
    help="address for the HTTP API; a non-loopback one needs --http-tls (or --http-insecure)",
)
@click.option("--http-tls", is_flag=True, help="serve the HTTP API over HTTPS (broker's cert)")
@click.option(
    "--http-insecure",
    is_flag=True,
    help="allow plain HTTP on a non-loopback address (only behind a TLS proxy)",
)
@click.option("--no-http", is_flag=True, help="serve no HTTP API and no dashboard")
@click.option(
    "--store",
    "store_url",
    help="memory://, sqlite:///path or postgresql://user@host/db?schema=NAME "
    "[sqlite in $CONVEYOR_HOME]",
)
@click.option("--home", help="[env CONVEYOR_HOME; default ./.conveyor]")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="server certificate")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="its private key")
@click.option(
    "--client-ca",
    type=click.Path(exists=True, dir_okay=False),
    help="require client certificates signed by this CA (mutual TLS)",
)
@click.option(
    "--hosts",
    default="localhost,127.0.0.1,::1",
    show_default=True,
    help="names/IPs for the generated server certificate",
)
@click.option(
    "--retention",
    callback=duration_option,
    default="7d",
    show_default=True,
    help="keep completed/cancelled jobs this long",
)
@click.option("--heartbeat", type=float, default=5.0, show_default=True, help="worker heartbeat, s")
@click.option(
    "--lease",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="seconds a worker may go without a heartbeat before its jobs are requeued",
)
@click.option(
    "--deadline-grace",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="seconds past a job's timeout before the broker fails a run its worker never ends",
)
@click.option("--max-connections", type=int, default=10_000, show_default=True)
@click.option("--max-connections-per-ip", type=int, default=1_000, show_default=True)
@click.option("--submit-rate", type=float, default=0.0, help="jobs/s per connection; 0 = no limit")
@click.option(
    "--max-queued",
    multiple=True,
    metavar="N|QUEUE=N",
    envvar="CONVEYOR_MAX_QUEUED",
    show_envvar=True,
    help=f"jobs a queue may hold queued or scheduled before submits get queue_full "
    f"(0: no limit); QUEUE=N sets one queue's limit; repeatable [{MAX_QUEUED:,}]",
)
@click.option(
    "--rate",
    "rates",
    multiple=True,
    metavar="task:NAME=RATE|queue:NAME=RATE",
    callback=lambda ctx, param, value: _rate_flags(value),
    help="dispatch a task's or a queue's jobs no faster than RATE (10/s, 100/m, 1000/h), "
    "across all workers; repeatable; changeable at run time with `conveyor limits`",
)
@click.option(
    "--concurrency",
    "concurrencies",
    multiple=True,
    metavar="PREFIX=N",
    callback=lambda ctx, param, value: _concurrency_flags(value),
    help="at most N running jobs share any one concurrency key starting with PREFIX; repeatable",
)
@click.option(
    "--max-frame-size",
    type=click.IntRange(1024),
    default=MAX_FRAME_SIZE,
    show_default=True,
    help="bytes per protocol frame",
)
@click.option(
    "--max-payload",
    type=click.IntRange(1),
    default=MAX_PAYLOAD,
    show_default=True,
    help="bytes of args+kwargs per job",
)
@click.option(
    "--handshake-timeout",
    type=float,
    default=5.0,
    show_default=True,
    help="seconds for a new connection to finish TLS and HELLO",
)
@click.option(
    "--idle-timeout",
    type=float,
    default=300.0,
    show_default=True,
    help="seconds a producer connection may stay silent",
)
@log_level_option
def broker(**opts: object) -> None:
    """Run the broker in the foreground (Ctrl-C or SIGTERM stops it cleanly)."""
    logging.basicConfig(level=str(opts["log_level"]).upper(), format=LOG_FORMAT)
    home = home_dir(opts["home"])  # type: ignore[arg-type]
    with errors_as_exit(unreachable=1):
        files, created = ensure_broker_files(
            home, split_values((str(opts["hosts"]),)), now=time.time()
        )
    for line in created:
        click.echo(line)
    with errors_as_exit():
        config = _config(opts, home, files)
    tune_gc()
    run_loop(_serve_broker(config))


#: the cycle collector's thresholds in the broker (Python's default is (700, 10, 10))
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Collect cycles less often in the broker process: it allocates several objects per
    job (records, events, frames), few of them in cycles, and with the default the young
    generation is scanned every 700 of them (a submit_many of 50,000 jobs: ~16% less broker
    CPU per job with these thresholds, docs/benchmarks.md). What start-up made (modules,
    config) is frozen: never garbage, so never scanned again. Workers keep the default:
    they run user code, whose cyclic garbage should not wait longer."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _config(opts: dict[str, Any], home: Path, files: Any) -> BrokerConfig:
    try:
        return BrokerConfig(
            host=str(opts["host"]),
            port=int(opts["port"]),
            store_url=str(opts["store_url"] or default_store_url(home)),
            home=home,
            cert_file=Path(str(opts["tls_cert"])) if opts["tls_cert"] else files.cert_file,
            key_file=Path(str(opts["tls_key"])) if opts["tls_key"] else files.key_file,
            client_ca_file=Path(str(opts["client_ca"])) if opts["client_ca"] else None,
            tokens_file=files.tokens_file,
            heartbeat=float(opts["heartbeat"]),
            lease=float(opts["lease"]),
            deadline_grace=float(opts["deadline_grace"]),
            retention=float(opts["retention"]),
            limits=_limits(opts),
            http_port=None if opts["no_http"] else int(opts["http_port"]),
            http_host=str(opts["http_host"]),
            http_tls=bool(opts["http_tls"]),
            http_insecure=bool(opts["http_insecure"]),
            rate_limits=(*opts["rates"], *opts["concurrencies"]),
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _rate_flags(values: tuple[str, ...]) -> tuple[tuple[str, str | int], ...]:
    out: list[tuple[str, str | int]] = []
    for text in values:
        try:
            target, value = limitspec.parse_assignment(text, "--rate")
        except InvalidJob as exc:
            raise click.BadParameter(
                f"{exc.message} (--rate task:NAME=RATE or queue:NAME=RATE, RATE like 10/s)"
            ) from None
        if target.startswith("key:"):
            raise click.BadParameter("a key takes a count: use --concurrency PREFIX=N")
        out.append((target, value))
    return tuple(out)


def _concurrency_flags(values: tuple[str, ...]) -> tuple[tuple[str, str | int], ...]:
    out: list[tuple[str, str | int]] = []
    for text in values:
        try:
            target, value = limitspec.parse_assignment(f"key:{text}", "--concurrency")
        except InvalidJob as exc:
            raise click.BadParameter(f"{exc.message} (--concurrency PREFIX=N)") from None
        out.append((target, value))
    return tuple(out)


def _limits(opts: dict[str, Any]) -> Limits:
    max_queued, by_queue = parse_max_queued(tuple(opts["max_queued"]), MAX_QUEUED)
    try:
        return Limits(
            max_queued=max_queued,
            max_queued_by_queue=by_queue,
            max_connections=int(opts["max_connections"]),
            max_connections_per_ip=int(opts["max_connections_per_ip"]),
            submits_per_second=float(opts["submit_rate"]),
            max_frame_size=int(opts["max_frame_size"]),
            max_payload=int(opts["max_payload"]),
            handshake_timeout=float(opts["handshake_timeout"]),
            idle_timeout=float(opts["idle_timeout"]),
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


async def _serve_broker(config: BrokerConfig) -> None:
    with errors_as_exit(unreachable=1):
        b = Broker(config)
        await b.start()  # a port that is taken is a ConfigError naming it
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    url = _remember_url(config.home, config.host, b.port)
    click.echo(f"broker ready on {b.url}  (store {b.store.url}, home {config.home})", err=False)
    if b.dashboard_url:
        click.echo(f"dashboard and HTTP API: {b.dashboard_url}  (API docs: {b.dashboard_url}docs)")
    click.echo(f"submit a job:  {_submit_hint(url, config.home)}")
    sys.stdout.flush()
    await stopping.wait()
    logging.getLogger("conveyor.broker").info("stopping: flushing the store, saying goodbye")
    await b.stop()


def _remember_url(home: Path, host: str, port: int) -> str:
    """Write the URL clients should use into ``home/config.toml``; returns it."""
    if host in ("", "0.0.0.0", "::"):  # bound everywhere: local clients use loopback
        host = "127.0.0.1" if host != "::" else "::1"
    url = f"conveyor://{f'[{host}]' if ':' in host else host}:{port}"
    try:
        write_broker_url(home, url)
    except (OSError, ConfigError) as exc:
        logging.getLogger("conveyor.broker").warning("could not write %s: %s", home, exc)
    return url


def _submit_hint(url: str, home: Path) -> str:
    """The command to try, with --broker and --home when they are not the defaults."""
    words = ["conveyor submit fibonacci n=30 --wait"]
    if url != DEFAULT_BROKER_URL:
        words.append(f"--broker {url}")
    if home.resolve() != (Path.cwd() / ".conveyor").resolve():  # not the default ./.conveyor
        words.append(f"--home {shlex.quote(str(home))}")
    return " ".join(words)
