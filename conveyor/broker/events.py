"""The broker's event stream: job state changes and workers joining and leaving.

The core service publishes every change it makes; subscribers (waiting producers, the
HTTP API's live feed, metrics) are called synchronously, in subscription order, and must
be quick: anything slow belongs in a task of the subscriber's own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conveyor.broker.dispatch import WorkerRef
from conveyor.job import JobRecord, JobState

log = logging.getLogger("conveyor.broker")


@dataclass(frozen=True, slots=True)
class JobChanged:
    """A job was stored (``old`` None) or moved from ``old`` to ``job.state``."""

    job: JobRecord
    old: JobState | None
    at: float


@dataclass(frozen=True, slots=True)
class JobProgress:
    """A running job reported progress: ``progress`` is ``{value, message, meta, at}``."""

    job_id: str
    progress: dict[str, Any]
    at: float


@dataclass(frozen=True, slots=True)
class WorkerJoined:
    worker: WorkerRef
    at: float


@dataclass(frozen=True, slots=True)
class WorkerChanged:
    """A worker started jobs, or stalled, or heartbeats again."""

    worker: WorkerRef
    at: float


@dataclass(frozen=True, slots=True)
class WorkerLeft:
    worker: WorkerRef
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class QueueChanged:
    """A queue was paused (its jobs wait) or resumed."""

    queue: str
    paused: bool
    at: float


BrokerEvent = JobChanged | JobProgress | WorkerJoined | WorkerChanged | WorkerLeft | QueueChanged
Subscriber = Callable[[BrokerEvent], None]


class EventHub:
    """Fan-out of broker events to subscribers."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Start calling ``subscriber`` with every event; returns the unsubscribe function."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def publish(self, event: BrokerEvent) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:  # one broken subscriber must not stop the others
                log.exception("event subscriber %r failed", subscriber)
