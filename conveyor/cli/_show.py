"""How the commands show jobs and times: tables on a terminal, plain lines for scripts.

Times are UTC dates (``2026-01-31 12:00:00.000``), never epoch seconds. Piped, a job list
is one job per line, tab-separated, the full id first, no header: what ``cut -f1`` and
``xargs`` want. On a terminal it is aligned columns that never cut an id (a line longer than
the terminal wraps).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import click

from conveyor.job import UNROUTED, Job

COLUMNS = ("id", "task", "queue", "prio", "state", "attempts", "created (UTC)")
TIME_KEYS = frozenset({"at", "eta", "created_at", "started_at", "finished_at", "expires_at"})


def when(ts: float | None) -> str:
    """A UTC date with milliseconds, or ``-``."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def queue_name(queue: str) -> str:
    """A queue as people read it: the unrouted queue ``""`` is ``(unrouted)``."""
    return "(unrouted)" if queue == UNROUTED else queue


def detail(key: str, value: Any) -> Any:
    """An event or map detail for display: timestamps as UTC dates."""
    if key in TIME_KEYS and isinstance(value, int | float) and not isinstance(value, bool):
        return when(value) + " UTC"
    return value


def _row(j: Job) -> tuple[str, ...]:
    cells = (j.id, j.task, queue_name(j.queue), str(j.priority), j.state.value, str(j.attempts))
    return (*cells, when(j.created_at))


def on_terminal() -> bool:
    """Whether stdout is a terminal (a person) rather than a pipe or file (a script)."""
    return sys.stdout.isatty()


def print_jobs(jobs: list[Job], title: str) -> None:
    """Aligned columns under a header on a terminal (a long line wraps, nothing is cut);
    piped, one tab-separated line per job, full id first, no header."""
    rows = [_row(j) for j in jobs]
    if not on_terminal():
        for row in rows:
            click.echo("\t".join(row))
        return
    click.echo(title)
    if not rows:
        return
    rows.insert(0, COLUMNS)
    widths = [max(len(row[c]) for row in rows) for c in range(len(COLUMNS))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
