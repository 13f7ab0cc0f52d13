"""A short in-memory history of the broker's numbers, for charts and rates.

:class:`History` samples the job counts once a second into a ring of the last hour
(3,600 points) and keeps the run and wait times of the last finished jobs, so the HTTP
API can draw throughput and queue depth over the last minutes and give run-time
percentiles without touching the store. Job history itself lives in the store.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any

from conveyor.broker.core import BrokerCore
from conveyor.broker.events import BrokerEvent, JobChanged
from conveyor.broker.maintenance import Service
from conveyor.clock import Clock
from conveyor.job import JobState

POINTS = 3600  # one a second: an hour
RECENT_RUNS = 2000  # run times kept for percentiles


@dataclass(frozen=True, slots=True)
class Point:
    at: float
    queued: int
    scheduled: int
    running: int
    completed: int  # totals so far: rates are differences
    failed: int
    dead: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "queued": self.queued,
            "scheduled": self.scheduled,
            "running": self.running,
            "completed": self.completed,
            "failed": self.failed,
            "dead": self.dead,
        }


class History(Service):
    """Samples once a second; subscribes to the core's events for run and wait times."""

    interval = 1.0

    def __init__(self, core: BrokerCore, clock: Clock, points: int = POINTS) -> None:
        super().__init__(core, clock)
        self.points: deque[Point] = deque(maxlen=points)
        self.run_times: deque[float] = deque(maxlen=RECENT_RUNS)
        self.wait_times: deque[float] = deque(maxlen=RECENT_RUNS)
        core.hub.subscribe(self._on_event)

    def _on_event(self, event: BrokerEvent) -> None:
        if not isinstance(event, JobChanged):
            return
        job = event.job
        if job.state is JobState.COMPLETED and job.started_at is not None:
            self.run_times.append(max(0.0, (job.finished_at or event.at) - job.started_at))
        elif job.state is JobState.RUNNING and job.started_at is not None:
            self.wait_times.append(max(0.0, job.started_at - job.created_at))

    async def run_once(self, now: float) -> None:
        stats = await self.core.store.stats_brief()
        states, totals = stats["states"], stats["totals"]
        self.points.append(
            Point(
                at=now,
                queued=states["queued"],
                scheduled=states["scheduled"],
                running=states["running"],
                completed=totals["completed"],
                failed=totals["failed"],
                dead=totals["dead"],
            )
        )

    def jobs_per_second(self, window: float = 60.0) -> float:
        """Completions per second over the last ``window`` seconds (0 before two samples)."""
        if len(self.points) < 2:
            return 0.0
        last = self.points[-1]
        first = next((p for p in self.points if p.at >= last.at - window), self.points[0])
        span = last.at - first.at
        return (last.completed - first.completed) / span if span > 0 else 0.0

    def since(self, seconds: float) -> list[dict[str, Any]]:
        """The points of the last ``seconds``, oldest first."""
        if not self.points:
            return []
        start = self.points[-1].at - seconds
        return [p.as_dict() for p in self.points if p.at >= start]

    def percentiles(self) -> dict[str, dict[str, float | None]]:
        """p50/p95/p99 (seconds) of the recent run and wait times."""
        return {"run": _quantiles(self.run_times), "wait": _quantiles(self.wait_times)}


def _quantiles(values: deque[float]) -> dict[str, float | None]:
    if len(values) < 2:
        only = values[0] if values else None
        return {"p50": only, "p95": only, "p99": only}
    qs = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": qs[49], "p95": qs[94], "p99": qs[98]}
