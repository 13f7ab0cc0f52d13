"""Building SCHEDULE requests (docs/protocol.md, section 6.7), shared by both clients."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from conveyor.errors import ConveyorError

FEATURE = "schedules"


def task_name(task: Any) -> str:
    """A task name, or the name of a ``@task`` object."""
    definition = getattr(task, "__conveyor_task__", None)
    return str(definition.name) if definition is not None else str(task)


def add_frame(
    name: str,
    task: Any,
    args: list[Any] | tuple[Any, ...] | None = None,
    kwargs: dict[str, Any] | None = None,
    *,
    cron: str | None = None,
    every: str | float | timedelta | None = None,
    tz: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    catch_up: str | None = None,
    paused: bool = False,
    replace: bool = False,
) -> dict[str, Any]:
    """SCHEDULE add; the broker checks every field (and names the bad one)."""
    spec: dict[str, Any] = {"name": name, "task": task_name(task)}
    if cron is not None:
        spec["cron"] = cron
    if every is not None:
        spec["every"] = every.total_seconds() if isinstance(every, timedelta) else every
    optional = {"tz": tz, "queue": queue, "priority": priority, "catch_up": catch_up}
    spec.update({k: v for k, v in optional.items() if v is not None})
    if args:
        spec["args"] = list(args)
    if kwargs:
        spec["kwargs"] = dict(kwargs)
    if paused:
        spec["paused"] = True
    return {"t": "schedule", "op": "add", "schedule": spec, "replace": replace}


def named_frame(op: str, name: str) -> dict[str, Any]:
    return {"t": "schedule", "op": op, "name": name}


def require(speaks: bool) -> None:
    """An older broker would close the connection at an unknown frame: say so instead."""
    if not speaks:
        raise ConveyorError("this broker does not support schedules (it is older)")
