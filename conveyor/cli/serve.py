"""What the long-running commands share: the event loop they run on, their log format and
their comma-or-repeated list options (``broker_cmd.py`` is ``conveyor broker``,
``worker_cmd.py`` is ``conveyor worker``; ``dev.py`` runs both as child processes)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # only uvloop's own absence: an ImportError in ``main`` propagates
        asyncio.run(main)
        return
    uvloop.run(main)


def split_values(values: tuple[str, ...]) -> list[str]:
    """The items of a comma-separated and/or repeated option, blanks dropped."""
    return [part.strip() for v in values for part in v.split(",") if part.strip()]
