"""Jobs: their states, the legal moves between them, the broker's record and the public snapshot.

Theory of operation
-------------------
A job is born ``queued`` (or ``scheduled`` when it has an ETA in the future, or
``waiting`` when it depends on other jobs: a workflow member or ``after=[ids]``). The
*promoter* (broker maintenance) moves due ``scheduled`` jobs to ``queued``. The
*dispatcher* claims a ``queued`` job for a worker: it becomes ``running`` under a
lease. The worker's report decides what comes next: ``completed``; or, on failure,
``scheduled`` again (a retry after backoff) or ``dead`` when retries are exhausted.
A lost worker or an expired lease puts a ``running`` job back to ``queued`` (event
``requeued``, at the front of its priority) or, when the job had started and has no
attempts left, ``dead`` (``WorkerLost``). ``queued``/``scheduled`` jobs can be
``cancelled`` at once; a ``running`` one is cancelled when its worker gives it up.
``dead`` jobs sit in the dead-letter queue until retried (back to ``queued``) or purged.
A ``waiting`` job is released (``queued``, or ``scheduled`` for a future ETA) by the
broker's workflow service once every job it depends on has completed, or ``cancelled``
when one of them ends otherwise (dead or cancelled).

Every move is made by :mod:`conveyor.lifecycle`, which checks it against
:data:`TRANSITIONS`. Who moves a job out of each state:

=========  =================================================================
waiting    workflow service (dependencies completed, or one failed) · cancel
scheduled  promoter (eta reached) · cancel
queued     dispatcher (claim) · cancel
running    worker report (complete/fail) · lease reaper · deadline · worker loss ·
           release · cancel (when the worker gives it up)
completed  nobody (retention prunes it)
dead       admin: dlq retry / purge
cancelled  nobody (retention prunes it)
=========  =================================================================

Two shapes of a job: :class:`JobRecord` is what the broker and its stores keep (payload
and result as opaque MessagePack bytes, events stored apart); :class:`Job` is what a
client sees (values decoded, history included), built from the job map of the protocol.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from conveyor.protocol.payload import PayloadError, unpack, unpack_call


class JobState(enum.StrEnum):
    WAITING = "waiting"
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
LIVE_STATES = frozenset({JobState.WAITING, JobState.SCHEDULED, JobState.QUEUED, JobState.RUNNING})
PRUNABLE_STATES = frozenset({JobState.COMPLETED, JobState.CANCELLED})
"""Final states that retention deletes; dead jobs stay until retried or purged."""

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # released once its dependencies completed (scheduled: it has a future eta)
    JobState.WAITING: frozenset({JobState.QUEUED, JobState.SCHEDULED, JobState.CANCELLED}),
    JobState.SCHEDULED: frozenset({JobState.QUEUED, JobState.CANCELLED}),
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {
            JobState.COMPLETED,
            JobState.SCHEDULED,  # retry after backoff
            JobState.QUEUED,  # requeued (worker lost, lease expired, restart) or released
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
    RELEASED = "released"
    READY = "ready"  # a waiting job's dependencies completed
    REQUEUED = "requeued"
    RETRIED = "retried"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD = "dead"
    CANCEL_REQUESTED = "cancel_requested"
    CANCELLED = "cancelled"


Event = dict[str, Any]
"""One history entry: ``{"event": kind, "at": time, ...details}``."""


def event(kind: EventKind, at: float, **details: Any) -> Event:
    """A history entry; None details are dropped."""
    entry: Event = {"event": kind.value, "at": at}
    for key, value in details.items():
        if value is not None:
            entry[key] = value
    return entry


FEED_RESULT = "result"
"""A waiting job gets the result of its one dependency as its first positional argument
(the next step of a chain)."""
FEED_RESULTS = "results"
"""A waiting job gets the list of its dependencies' results, in their order, as its first
positional argument (a chord's callback, the step after a group in a chain)."""
FEEDS = frozenset({FEED_RESULT, FEED_RESULTS})

DEFAULT_QUEUE = "default"
UNROUTED = ""
"""The queue of a job submitted without one for a task whose queue the broker does not know
yet: any worker offering the task takes it, and it then takes the task's declared queue."""
DEFAULT_PRIORITY = 5
DEFAULT_RETRIES = 3
DEFAULT_RETRY_BACKOFF = 1.0
DEFAULT_RETRY_BACKOFF_MAX = 300.0


@dataclass(frozen=True, slots=True)
class JobRecord:
    """The broker's record of one job. Stores hand these out; they never change in place.

    ``payload`` and ``result`` are MessagePack bytes (conveyor.protocol.payload), never
    decoded by the broker. Retry options left unset by the producer are None until a
    worker's claim resolves them from the task's own definition. ``version`` grows by one
    on every change, so a write can be made conditional on what was read.
    """

    id: str
    task: str
    payload: bytes
    queue: str = DEFAULT_QUEUE
    priority: int = DEFAULT_PRIORITY
    state: JobState = JobState.QUEUED
    max_retries: int | None = None
    retry_backoff: float | None = None
    retry_backoff_max: float | None = None
    timeout: float | None = None
    eta: float | None = None
    unique_key: str | None = None
    attempts: int = 0
    worker: str | None = None
    lease: int | None = None
    lease_expires: float | None = None
    result: bytes | None = None
    error: dict[str, Any] | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    cancel_requested: bool = False
    workflow: str | None = None  # the workflow this job belongs to (its id)
    depends_on: tuple[str, ...] = ()  # ids of the jobs that must complete before it runs
    feed: str | None = None  # what of them it receives first: FEED_RESULT or FEED_RESULTS
    inputs: bytes | None = None  # packed list of their results, set when it is released
    progress: dict[str, Any] | None = None  # the last progress its run reported
    version: int = 0
    # at most a limit of running jobs share this key (docs/workflows.md): set at submit
    concurrency_key: str | None = None

    def replace(self, **changes: Any) -> JobRecord:
        """A copy with ``changes`` applied (slots copied directly: this is on every change
        of every job, and it is about twice as fast as ``dataclasses.replace``). The blank
        copy is ``JobRecord.__new__``, not ``object.__new__``: the same in Python, and the
        one a mypyc-compiled class allows (conveyor._compiled)."""
        new = JobRecord.__new__(JobRecord)
        for name in RECORD_FIELDS:
            _set(new, name, changes[name] if name in changes else getattr(self, name))
        if len(changes) > len(RECORD_FIELDS) or not changes.keys() <= _FIELD_SET:
            raise TypeError(f"unknown JobRecord fields: {sorted(changes.keys() - _FIELD_SET)}")
        return new

    @property
    def retries_left(self) -> int:
        return (self.max_retries or 0) + 1 - self.attempts


RECORD_FIELDS = (
    "id",
    "task",
    "payload",
    "queue",
    "priority",
    "state",
    "max_retries",
    "retry_backoff",
    "retry_backoff_max",
    "timeout",
    "eta",
    "unique_key",
    "attempts",
    "worker",
    "lease",
    "lease_expires",
    "result",
    "error",
    "created_at",
    "started_at",
    "finished_at",
    "cancel_requested",
    "workflow",
    "depends_on",
    "feed",
    "inputs",
    "progress",
    "version",
    "concurrency_key",
)
_FIELD_SET = frozenset(RECORD_FIELDS)
_set = object.__setattr__


@dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of one job as a client sees it (``client.get(id)``, ``handle.wait()``)."""

    id: str
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str = DEFAULT_QUEUE
    priority: int = DEFAULT_PRIORITY
    state: JobState = JobState.QUEUED
    max_retries: int = DEFAULT_RETRIES
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX
    timeout: float | None = None
    eta: float | None = None
    unique_key: str | None = None
    concurrency_key: str | None = None
    attempts: int = 0
    worker: str | None = None
    lease: int | None = None
    lease_expires: float | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    cancel_requested: bool = False
    events: tuple[Event, ...] = ()
    waiting: str | None = None  # why a queued job is not running (no worker offers its task)
    workflow: str | None = None  # the workflow it belongs to
    depends_on: tuple[str, ...] = ()  # the jobs it waits for (state ``waiting``)
    progress: float | None = None  # 0.0 ... 1.0, as its task last reported (current_job())
    progress_message: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # small metadata its task set
    progress_at: float | None = None  # when the task last reported progress or metadata

    def to_wire(self, *, events: bool = True) -> dict[str, Any]:
        """The job as a plain map with values decoded (for JSON output)."""
        wire: dict[str, Any] = {name: getattr(self, name) for name in _JOB_WIRE_FIELDS}
        wire["state"] = self.state.value
        wire["depends_on"] = list(self.depends_on)
        wire["progress"] = progress_map(
            self.progress, self.progress_message, self.meta, self.progress_at
        )
        if events:
            wire["events"] = list(self.events)
        return wire

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Job:
        """A job map from the broker (docs/protocol.md, section 8): packed or plain."""
        fields = {k: data[k] for k in _JOB_WIRE_FIELDS if k in data}
        payload = data.get("payload")
        if isinstance(payload, bytes):
            try:
                fields["args"], fields["kwargs"] = unpack_call(payload)
            except PayloadError:
                fields["args"], fields["kwargs"] = [], {}
        result = fields.get("result")
        if isinstance(result, bytes):
            try:
                fields["result"] = unpack(result)
            except PayloadError:
                fields["result"] = None
        fields["state"] = JobState(fields.get("state", "queued"))
        fields["events"] = tuple(data.get("events") or ())
        fields["depends_on"] = tuple(data.get("depends_on") or ())
        report = data.get("progress")
        fields["progress"] = None
        if isinstance(report, dict):  # the wire map (docs/protocol.md, section 8.1)
            fields["progress"] = report.get("value")
            fields["progress_message"] = report.get("message")
            fields["meta"] = dict(report.get("meta") or {})
            fields["progress_at"] = report.get("at")
        for name, default in _RETRY_DEFAULTS.items():
            if fields.get(name) is None:
                fields[name] = default
        return cls(**fields)


_RETRY_DEFAULTS: dict[str, Any] = {  # Any: compiled, (int, float) pairs would make 3 a 3.0
    "max_retries": DEFAULT_RETRIES,
    "retry_backoff": DEFAULT_RETRY_BACKOFF,
    "retry_backoff_max": DEFAULT_RETRY_BACKOFF_MAX,
}


_JOB_WIRE_FIELDS = tuple(
    f
    for f in Job.__dataclass_fields__
    if f not in ("events", "progress", "progress_message", "meta", "progress_at")
)


def progress_map(
    value: float | None, message: str | None, meta: dict[str, Any] | None, at: float | None
) -> dict[str, Any] | None:
    """A job's progress as the job map carries it; None if it never reported any."""
    if value is None and message is None and not meta and at is None:
        return None
    return {"value": value, "message": message, "meta": dict(meta or {}), "at": at}
