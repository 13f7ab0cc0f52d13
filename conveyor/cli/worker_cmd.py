"""``conveyor worker``: its options, and the worker's run with drain-then-force stop signals."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

import click

from conveyor.cli._client import errors_as_exit
from conveyor.cli._tasks import import_task_modules
from conveyor.cli._util import duration_option, log_level_option
from conveyor.cli.serve import LOG_FORMAT, run_loop, split_values
from conveyor.worker import POOL_KINDS
from conveyor.worker.joblog import JsonFormatter

if TYPE_CHECKING:
    from conveyor.worker.runner import Worker


@click.command()
@click.option(
    "--tasks",
    "modules",
    multiple=True,
    envvar="CONVEYOR_TASKS",
    required=True,
    help="module(s) with @task functions, comma-separated or repeated "
    "(conveyor.examples has demo tasks) [env CONVEYOR_TASKS]",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 10_000),
    default=4,
    show_default=True,
    envvar="CONVEYOR_CONCURRENCY",
    show_envvar=True,
)
@click.option(
    "--pool",
    type=click.Choice(POOL_KINDS),
    default="thread",
    show_default=True,
    envvar="CONVEYOR_POOL",
    show_envvar=True,
)
@click.option(
    "--queues",
    "-Q",
    multiple=True,
    envvar="CONVEYOR_QUEUES",
    show_envvar=True,
    help="queues to serve, comma-separated or repeated [the tasks' queues]",
)
@click.option(
    "--prefetch",
    type=click.IntRange(0, 10_000),
    envvar="CONVEYOR_PREFETCH",
    show_envvar=True,
    help="extra jobs held [concurrency]",
)
@click.option("--name", help="worker name [host-pid]")
@click.option(
    "--broker",
    "broker_url",
    metavar="URL",
    help="conveyor://host:port, or several to fail over between: conveyor://a:65432,b:65432 "
    "[env CONVEYOR_BROKER_URL; else broker_url in $CONVEYOR_HOME/config.toml]",
)
@click.option("--token", help="[env CONVEYOR_TOKEN; default $CONVEYOR_HOME/admin.token]")
@click.option("--ca", help="[env CONVEYOR_CA; default $CONVEYOR_HOME/ca.pem]")
@click.option("--cert", help="client certificate, for mutual TLS [env CONVEYOR_CERT]")
@click.option("--key", help="its private key [env CONVEYOR_KEY]")
@click.option("--home", help="[env CONVEYOR_HOME; default ./.conveyor]")
@click.option(
    "--payload-key-file",
    type=click.Path(exists=True, dir_okay=False),
    envvar="CONVEYOR_PAYLOAD_KEY_FILE",
    help="open end-to-end encrypted jobs with these keys (conveyor keygen) "
    "[env CONVEYOR_PAYLOAD_KEY_FILE]",
)
@log_level_option
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one object per line (ts, level, logger, msg, job fields), for log shippers",
)
@click.option(
    "--log-payloads", is_flag=True, help="also log each job's arguments and result (off: never)"
)
@click.option(
    "--drain-timeout",
    callback=duration_option,
    metavar="DURATION",
    help="after a stop signal, wait at most this long for running jobs, then force [no limit]",
)
def worker(**opts: object) -> None:
    """Run a worker: take jobs from the broker and run them.

    Ctrl-C or SIGTERM drains: no new jobs, unstarted ones go back, running ones finish.
    A second one (or --drain-timeout) forces: running jobs are abandoned to the broker,
    which requeues them, and the worker exits 1. Logs one line when a job starts and one
    when it ends (id, task, attempt, run time).
    """
    handler = logging.StreamHandler()
    json_lines = opts["log_format"] == "json"
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=str(opts["log_level"]).upper(), handlers=[handler])
    sys.path.insert(0, os.getcwd())  # so --tasks myapp.tasks finds the project's modules
    with errors_as_exit(unreachable=1):
        import_task_modules(split_values(opts["modules"]))  # type: ignore[arg-type]
    forced: list[bool] = []
    run_loop(_serve_worker(opts, forced))
    if forced:
        # Running jobs were abandoned; a thread still running one cannot be stopped and would
        # hold the interpreter's exit until it returns, so leave now.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(1)


async def _serve_worker(opts: dict[str, object], forced: list[bool]) -> None:
    from conveyor.worker.runner import Worker  # here: `conveyor broker` need not import it

    with errors_as_exit(unreachable=1):
        w = Worker(
            split_values(opts["modules"]),  # type: ignore[arg-type]
            url=opts["broker_url"],  # type: ignore[arg-type]
            token=opts["token"],  # type: ignore[arg-type]
            ca=opts["ca"],  # type: ignore[arg-type]
            cert=opts["cert"],  # type: ignore[arg-type]
            key=opts["key"],  # type: ignore[arg-type]
            home=opts["home"],  # type: ignore[arg-type]
            concurrency=int(opts["concurrency"]),  # type: ignore[call-overload]
            pool=str(opts["pool"]),
            queues=split_values(opts["queues"]) or None,  # type: ignore[arg-type]
            prefetch=opts["prefetch"],  # type: ignore[arg-type]
            name=opts["name"],  # type: ignore[arg-type]
            payload_key_file=opts["payload_key_file"],  # type: ignore[arg-type]
            log_payloads=bool(opts["log_payloads"]),
        )
    _stop_on_signals(w, opts["drain_timeout"])  # type: ignore[arg-type]
    try:
        with errors_as_exit(unreachable=1):
            await w.run()
    finally:
        forced.extend([True] if w.forced else [])


def _stop_on_signals(w: Worker, drain_timeout: float | None) -> None:
    """The first SIGINT/SIGTERM drains ``w``; a second, or ``drain_timeout``, forces."""
    loop = asyncio.get_running_loop()
    log = logging.getLogger("conveyor.worker")
    seen = 0

    def force(why: str) -> None:
        if not w.forced:
            log.warning("forcing the stop (%s): running jobs go back to the broker", why)
            w.stop(force=True)

    def on_signal() -> None:
        nonlocal seen
        seen += 1
        if seen > 1:
            force("second signal")
            return
        limit = f" (at most {drain_timeout:g}s)" if drain_timeout is not None else ""
        log.info("stopping: finishing running jobs%s; Ctrl-C again to force", limit)
        w.stop()
        if drain_timeout is not None:
            loop.call_later(drain_timeout, force, f"--drain-timeout {drain_timeout:g}s passed")

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
