"""Tasks that take their process down, as a segfault or the OOM killer would."""

from __future__ import annotations

import os

from conveyor import task


@task(name="crash")
def crash() -> None:
    """Kill the process running the task at once, without unwinding anything."""
    os._exit(1)


@task(name="idle")
def idle() -> str:
    return "ok"
