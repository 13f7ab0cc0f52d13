"""Importing the worker's ``--tasks`` modules up front, so a broken one is one clear line.

A syntax error, a missing dependency or an exception at import time would otherwise end
the worker with a traceback from deep inside the event loop; here it becomes
``cannot import task module 'myapp.tasks': myapp/tasks.py:3: SyntaxError: invalid syntax``.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence
from pathlib import Path

import click

import conveyor
from conveyor.worker.tasks import load_tasks

_OURS = str(Path(conveyor.__file__).parent) + os.sep


def import_task_modules(modules: Sequence[str]) -> None:
    """Import each module (registering its tasks); ClickException naming what broke.

    A module name that does not import at all is the ConfigError load_tasks raises.
    """
    for name in modules:
        try:
            load_tasks([name])
        except SyntaxError as exc:  # before Exception: its place is in the exception itself
            where = f"{exc.filename}:{exc.lineno}" if exc.filename else _where(exc)
            raise click.ClickException(
                f"cannot import task module {name!r}: {where}: {type(exc).__name__}: {exc.msg}"
            ) from None
        except conveyor.ConfigError:
            raise
        except Exception as exc:
            raise click.ClickException(
                f"cannot import task module {name!r}: {_where(exc)}: {type(exc).__name__}: {exc}"
            ) from None


def _where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame in user code (not importlib's, not ours)."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith(("<frozen", _OURS))
    ]
    if not frames:
        return "?"
    return f"{frames[-1].filename}:{frames[-1].lineno}"
