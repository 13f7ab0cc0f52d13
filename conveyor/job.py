"""Jobs: their states, the legal moves between them, and the job record itself.

Theory of operation
-------------------
A job is born ``queued`` (or ``scheduled`` when it has an ETA in the future). The
*promoter* (broker maintenance) moves due ``scheduled`` jobs to ``queued``. The
*dispatcher* claims a ``queued`` job for a worker: it becomes ``running`` under a
lease. The worker's report decides what comes next: ``completed``; or, on failure,
``scheduled`` again (a retry after backoff) or ``dead`` when retries are exhausted.
A lost worker or an expired lease puts a ``running`` job back to ``queued`` (event
``requeued``, at the front of its priority). ``queued``/``scheduled`` jobs can be
``cancelled`` at once; a ``running`` one is cancelled when its worker gives it up.
``dead`` jobs sit in the dead-letter queue until retried (back to ``queued``) or purged.

Who moves a job out of each state:

=========  =================================================================
scheduled  promoter (eta reached) · admin/producer cancel
queued     dispatcher (claim) · cancel
running    worker report (complete/fail) · lease reaper · connection loss · cancel
completed  nobody (retention prunes it)
dead       admin: dlq retry / purge
cancelled  nobody (retention prunes it)
=========  =================================================================
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any


class JobState(enum.StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.COMPLETED, JobState.DEAD, JobState.CANCELLED})

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.SCHEDULED: frozenset({JobState.QUEUED, JobState.CANCELLED}),
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {
            JobState.COMPLETED,
            JobState.SCHEDULED,  # retry after backoff
            JobState.QUEUED,  # requeued: worker lost or lease expired
            JobState.DEAD,
            JobState.CANCELLED,
        }
    ),
    JobState.COMPLETED: frozenset(),
    JobState.DEAD: frozenset({JobState.QUEUED}),  # dlq retry
    JobState.CANCELLED: frozenset(),
}


def can_move(src: JobState, dst: JobState) -> bool:
    return dst in TRANSITIONS[src]


class EventKind(enum.StrEnum):
    SUBMITTED = "submitted"
    STARTED = "started"
    REQUEUED = "requeued"
    RETRIED = "retried"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


DEFAULT_QUEUE = "default"
DEFAULT_PRIORITY = 5
MIN_PRIORITY, MAX_PRIORITY = 1, 10
DEFAULT_RETRIES = 3
DEFAULT_RETRY_BACKOFF = 1.0
DEFAULT_RETRY_BACKOFF_MAX = 300.0
MAX_TIMEOUT = 24 * 3600.0  # the hard cap on any job's timeout, seconds


@dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of one job. Stores hand these out; they never change in place."""

    id: str
    task: str
    args: Any = field(default_factory=list)  # a list, as it comes back from the wire
    kwargs: Any = field(default_factory=dict)
    queue: str = DEFAULT_QUEUE
    priority: int = DEFAULT_PRIORITY
    state: JobState = JobState.QUEUED
    max_retries: int = DEFAULT_RETRIES
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX
    timeout: float | None = None
    eta: float | None = None
    unique_key: str | None = None
    attempts: int = 0
    worker: str | None = None
    lease: int | None = None
    lease_expires: float | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    cancel_requested: bool = False  # running job asked to stop; cancelled on report
    events: tuple[dict[str, Any], ...] = ()

    def replace(self, **changes: Any) -> Job:
        """A copy with ``changes`` applied (a hand-rolled dataclasses.replace: this is
        on every state change of every job, and copying slots directly is ~2x faster)."""
        new = _new_job(Job)
        for name in _JOB_FIELDS:
            _set_field(new, name, getattr(self, name))
        for name, value in changes.items():
            _set_field(new, name, value)  # an unknown name raises AttributeError (slots)
        return new

    def to_wire(self, *, events: bool = True) -> dict[str, Any]:
        """The job as a protocol/JSON map (see docs/protocol.md, "Job map")."""
        wire = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        wire["state"] = self.state.value
        wire["args"] = list(self.args)
        if events:
            wire["events"] = list(self.events)
        else:
            del wire["events"]
        return wire

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Job:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["state"] = JobState(kwargs.get("state", "queued"))
        kwargs["events"] = tuple(kwargs.get("events", ()))
        return cls(**kwargs)


_JOB_FIELDS = tuple(f.name for f in dataclasses.fields(Job))
_new_job = object.__new__
_set_field = object.__setattr__


def event(kind: EventKind, at: float, **details: Any) -> dict[str, Any]:
    """One history entry: ``{"event": kind, "at": time, ...details}`` (None details dropped)."""
    entry: dict[str, Any] = {"event": kind.value, "at": at}
    for key, value in details.items():
        if value is not None:
            entry[key] = value
    return entry
