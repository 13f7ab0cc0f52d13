"""Small helpers shared by the CLI commands."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(text: str) -> float:
    """``30s``, ``5m``, ``2h``, ``7d``, ``1w`` or a plain number of seconds -> seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise click.BadParameter(
            f"{text!r} is not a duration; use a number with an optional unit "
            "s, m, h, d or w (e.g. 90, 30s, 5m, 2h, 7d)"
        )
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


def duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """A click ``callback`` that turns an option's text into seconds with parse_duration."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except click.BadParameter as exc:
        exc.ctx, exc.param = ctx, param
        raise


_QUEUE_LIMIT = re.compile(r"^(?:([A-Za-z0-9_.:\-]{1,100})=)?([0-9]+)$")


def parse_max_queued(
    values: tuple[str, ...], default: int
) -> tuple[int, tuple[tuple[str, int], ...]]:
    """``--max-queued`` values (``N`` or ``QUEUE=N``, also comma-separated) -> the global
    limit and the per-queue ones; a later value for the same queue wins."""
    limit, per_queue = default, {}
    for value in values:
        for part in filter(None, (p.strip() for p in value.split(","))):
            match = _QUEUE_LIMIT.match(part)
            if match is None:
                raise click.BadParameter(
                    f"{part!r}: use N (every queue) or QUEUE=N (one queue), N a whole number "
                    "of jobs, 0 for no limit; e.g. --max-queued 100000 --max-queued reports=5000",
                    param_hint="--max-queued",
                )
            queue, n = match.group(1), int(match.group(2))
            if queue is None:
                limit = n
            else:
                per_queue[queue] = n
    return limit, tuple(sorted(per_queue.items()))


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def log_level_option(fn: F) -> F:
    """--log-level DEBUG|INFO|WARNING|ERROR, any case."""
    return click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default="INFO",
        show_default=True,
        help="how much to log",
    )(fn)
