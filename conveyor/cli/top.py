"""``conveyor top``: the dashboard's numbers in a terminal, for servers without a browser.

Refreshes every second over the protocol (no HTTP API needed): job counts, throughput,
the workers and what they run, the newest jobs. ``q`` (or Ctrl-C) quits.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from conveyor.cli._client import with_client
from conveyor.client.sync import Client
from conveyor.job import Job

STATE_STYLE = {
    "queued": "cyan",
    "scheduled": "blue",
    "running": "yellow",
    "completed": "green",
    "dead": "red",
    "cancelled": "magenta",
}


def _clock(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def render(stats: dict[str, Any], jobs: list[Job], rate: float) -> Group:
    """One screen: the numbers, the workers, the newest jobs."""
    states, totals = stats["states"], stats["totals"]
    workers = stats["workers"]
    busy = sum(1 for w in workers if w.get("busy"))
    head = Text()
    for name in ("queued", "scheduled", "running", "completed", "dead", "cancelled"):
        head.append(f"{name} ", style="bold")
        head.append(f"{states.get(name, 0):,}  ", style=STATE_STYLE[name])
    head.append(f"\nworkers {len(workers)} ({busy} busy, {len(workers) - busy} idle)  ")
    head.append(f"failed {totals.get('failed', 0):,}  requeued {totals.get('requeued', 0):,}  ")
    head.append(f"jobs/s {rate:,.1f}", style="bold")
    if stats.get("paused"):
        head.append(f"\npaused queues: {', '.join(stats['paused'])}", style="red")
    broker = stats.get("broker", {})
    title = f"Conveyor  {broker.get('url', '')}  store {broker.get('store', '')}"

    table = Table(expand=True, title="workers", title_justify="left")
    for col in ("worker", "pool", "busy", "held", "done", "failed", "queues", "running now"):
        table.add_column(col, overflow="fold")
    for w in workers:
        status = "stalled" if w.get("stalled") else ("busy" if w.get("busy") else "idle")
        table.add_row(
            Text(w["id"], style="yellow" if status == "busy" else ""),
            f"{w['pool']} x{w['concurrency']}",
            f"{w.get('busy', 0)} {status}",
            str(w["running"]),
            str(w["completed"]),
            str(w["failed"]),
            ",".join(w["queues"]),
            " ".join(w.get("jobs", [])[:3]),
        )
    recent = Table(expand=True, title="newest jobs", title_justify="left")
    for col in ("id", "task", "queue", "prio", "state", "attempts", "submitted"):
        recent.add_column(col, overflow="fold")
    for job in jobs:
        recent.add_row(
            job.id,
            job.task,
            job.queue or "(unrouted)",
            str(job.priority),
            Text(job.state.value, style=STATE_STYLE[job.state.value]),
            str(job.attempts),
            _clock(job.created_at),
        )
    return Group(Panel(head, title=title, title_align="left"), table, recent)


@contextlib.contextmanager
def _keys() -> Iterator[int | None]:
    """stdin in cbreak mode (a key at a time, no echo) when it is a terminal."""
    if not sys.stdin.isatty():
        yield None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _quit_pressed(fd: int | None, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for a key; True if it was q."""
    if fd is None:
        time.sleep(timeout)  # no terminal to read: just the refresh interval
        return False
    ready, _, _ = select.select([fd], [], [], timeout)
    return bool(ready) and os.read(fd, 1) in (b"q", b"Q")


def _rate(previous: tuple[float, int] | None, completed: int) -> tuple[float, tuple[float, int]]:
    now = time.monotonic()
    if previous is None or now <= previous[0]:
        return 0.0, (now, completed)
    return (completed - previous[1]) / (now - previous[0]), (now, completed)


@click.command("top")
@click.option("--interval", type=click.FloatRange(0.2, 60), default=1.0, show_default=True)
@click.option("--jobs", "n_jobs", type=click.IntRange(1, 100), default=10, show_default=True)
@with_client
def top(client: Client, interval: float, n_jobs: int) -> None:
    """A live view of the broker in the terminal: numbers, workers, newest jobs (q quits)."""
    console = Console()
    previous: tuple[float, int] | None = None
    rate = 0.0
    with (
        _keys() as fd,
        Live(console=console, screen=console.is_terminal, auto_refresh=False) as live,
    ):
        try:
            while True:
                stats = client.stats()
                rate, previous = _rate(previous, stats["totals"]["completed"])
                live.update(render(stats, client.list_jobs(limit=n_jobs), rate), refresh=True)
                if _quit_pressed(fd, interval):
                    break
        except KeyboardInterrupt:
            pass
