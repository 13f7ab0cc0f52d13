"""``conveyor dev``: a broker and workers as child processes, in the foreground.

The broker starts first; ``Conveyor is up`` is printed only once it says it is ready (its
``broker ready on URL`` line), so a second copy whose broker cannot start (the port or the
database is in use) fails with the broker's own message and a non-zero exit. The children
run in their own process groups, so Ctrl-C reaches only this process, which stops them
in order, exactly as on SIGTERM: the workers drain first, then the broker flushes and
exits. A second Ctrl-C or SIGTERM while the workers drain forces them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import IO

import click

from conveyor.config import DEFAULT_BROKER_PORT, DEFAULT_HTTP_PORT, home_dir

READY = "broker ready on "
DASHBOARD = "dashboard and HTTP API: "
STOP_TIMEOUT = 15.0  # seconds a forced worker or the broker may take before it is killed


@click.command()
@click.option(
    "--port", type=click.IntRange(0, 65535), default=DEFAULT_BROKER_PORT, show_default=True
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_HTTP_PORT,
    show_default=True,
    help="the dashboard and HTTP API (0: any free port)",
)
@click.option("--workers", type=click.IntRange(0, 64), default=2, show_default=True)
@click.option("--home", help="[env CONVEYOR_HOME; default ./.conveyor]")
def dev(port: int, http_port: int, workers: int, home: str | None) -> None:
    """A local system in the foreground: a broker and workers (what `make run` starts).

    Ctrl-C or SIGTERM stops everything (workers drain first); a second one forces.
    """
    env = dict(os.environ, CONVEYOR_HOME=str(home_dir(home).resolve()), PYTHONUNBUFFERED="1")
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops us as Ctrl-C does
    children: list[subprocess.Popen[str]] = []
    try:
        args = ["broker", "--port", str(port), "--http-port", str(http_port)]
        broker = _child(args, env, stdout=subprocess.PIPE)
        children.append(broker)
        url, dashboard = _wait_until_ready(broker)
        env["CONVEYOR_BROKER_URL"] = url
        for i in range(workers):
            name = f"dev-worker-{i + 1}"
            children.append(_child(["worker", "--tasks", "conveyor.examples", "--name", name], env))
        click.echo(
            f"\nConveyor is up: broker {url}, {workers} workers (home {env['CONVEYOR_HOME']}).\n"
            f"Dashboard:  {dashboard}\n"
            "In another terminal:  .venv/bin/conveyor submit fibonacci n=30 --priority 1 --wait\n"
            "Ctrl-C stops everything.\n"
        )
        code = broker.wait()
        if code != 0:
            raise click.ClickException(f"the broker exited with code {code}; see its output")
    except KeyboardInterrupt:
        pass
    finally:
        _stop(children[1:], children[:1])
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _child(
    args: Sequence[str], env: dict[str, str], stdout: int | None = None
) -> subprocess.Popen[str]:
    """``conveyor ARGS`` in its own process group (the terminal's Ctrl-C is ours to relay)."""
    cmd = [sys.executable, "-m", "conveyor", *args]
    return subprocess.Popen(cmd, env=env, stdout=stdout, text=True, process_group=0)


def _wait_until_ready(broker: subprocess.Popen[str], timeout: float = 30.0) -> tuple[str, str]:
    """The broker's URL and its dashboard's once it says it is ready; its output is passed
    on as it comes."""
    assert broker.stdout is not None
    seen: list[str] = []
    done = threading.Event()
    relay = threading.Thread(target=_relay, args=(broker.stdout, seen, done), daemon=True)
    relay.start()
    if not done.wait(timeout):
        raise click.ClickException(f"the broker did not get ready within {timeout:g}s")
    if len(seen) < 2:
        code = broker.wait()
        raise click.ClickException(
            f"the broker did not start (exit code {code}); see its message above "
            "(another `conveyor dev`? use --port and --home to run a second one)"
        )
    return seen[0], seen[1]


def _relay(stream: IO[str], seen: list[str], done: threading.Event) -> None:
    """Copy the broker's stdout to ours; note its URL from the ready line; EOF ends it."""
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.startswith(READY) and not seen:
            seen.append(line[len(READY) :].split()[0])
        elif line.startswith(DASHBOARD) and len(seen) == 1 and not done.is_set():
            seen.append(line[len(DASHBOARD) :].split()[0])
            done.set()
    done.set()


def _stop(workers: list[subprocess.Popen[str]], broker: list[subprocess.Popen[str]]) -> None:
    """Workers first (they drain; a second Ctrl-C forces them), then the broker."""
    _signal_all(workers, signal.SIGTERM)
    try:
        for p in workers:
            p.wait()
    except KeyboardInterrupt:
        click.echo("forcing the workers to stop", err=True)
        _signal_all(workers, signal.SIGTERM)  # their second signal: force
        _wait_or_kill(workers)
    _signal_all(broker, signal.SIGTERM)
    _wait_or_kill(broker)


def _signal_all(procs: list[subprocess.Popen[str]], sig: int) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)


def _wait_or_kill(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        try:
            p.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
