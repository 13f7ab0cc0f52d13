"""What a worker holds and counts: each job the broker gave it, and its running totals."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from conveyor.worker.progress import CurrentJob


@dataclass(slots=True)
class Held:
    """A job the broker gave us, under one connection generation."""

    id: str
    lease: int
    generation: int
    started: bool = False
    task: asyncio.Task[None] | None = None
    current: CurrentJob | None = None  # what current_job() gives its task


@dataclass(slots=True)
class WorkerStats:
    received: int = 0
    completed: int = 0
    failed: int = 0
    released: int = 0
    reconnects: int = 0
    acked: int = 0
    by_task: dict[str, int] = field(default_factory=dict)
