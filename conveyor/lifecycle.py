"""Every change of a job's state, as pure functions over :class:`~conveyor.job.JobRecord`.

Theory of operation
-------------------
Each function takes the job as it is now and returns a :class:`Transition`: the job as it
must become, the history events that record the change and, for a job that becomes
``queued``, whether it goes to the front of its priority. All of them go through
:func:`move`, which checks the move against :data:`conveyor.job.TRANSITIONS` (an illegal
move raises :class:`~conveyor.errors.IllegalTransition`) and bumps the record's version.
Nothing here stores anything or reads a clock: stores apply transitions *conditionally*
(only if the job is still at the version the transition was computed from, so a
concurrent change is never overwritten), and callers pass ``now``.

Who calls what: the store engines call :func:`claim` and :func:`promote` (picking a job
and moving it must be one step for them); the broker's core service calls the rest.

Attempts: :func:`claim` counts one. A run that never started gives it back
(:func:`release`, or :func:`requeue` with ``charged=False``); a run that started and lost
its worker keeps it, so a task that kills its worker runs at most ``retries + 1`` times
and then goes ``dead`` with error type ``WorkerLost``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from conveyor.errors import Conflict, IllegalTransition
from conveyor.job import (
    DEFAULT_QUEUE,
    DEFAULT_RETRIES,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_RETRY_BACKOFF_MAX,
    TRANSITIONS,
    Event,
    EventKind,
    JobRecord,
    JobState,
    event,
)
from conveyor.retry import next_retry_at

WORKER_LOST = "WorkerLost"
TIMEOUT = "TimeoutError"


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of one job: apply it only if the stored job is still ``old``'s version."""

    old: JobRecord
    new: JobRecord
    events: tuple[Event, ...]
    front: bool = False  # a job that becomes queued goes to the front of its priority


@dataclass(frozen=True, slots=True)
class Outcome:
    """A worker's report on one job it ran."""

    id: str
    lease: int
    ok: bool
    result: bytes | None = None  # packed (conveyor.protocol.payload)
    error: dict[str, Any] | None = None  # {"type", "message", "traceback"}
    retry_delay: float | None = None  # the task raised Retry(delay=...)
    reject: bool = False  # Reject or a non-retryable error: no retries


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """A task's own options, as its worker announced them (``@task(retries=...)``)."""

    retries: int | None = None
    retry_backoff: float | None = None
    retry_backoff_max: float | None = None
    timeout: float | None = None
    rate: str | None = None  # dispatch no faster (``10/s``; conveyor.limitspec)
    concurrency_limit: int | None = None  # running jobs per concurrency key


def move(
    old: JobRecord, to: JobState, *events: Event, front: bool = False, **changes: Any
) -> Transition:
    """The one way a job changes state: checked against the transitions table."""
    if to not in TRANSITIONS[old.state]:
        raise IllegalTransition(f"job {old.id} cannot go from {old.state.value} to {to.value}")
    if to is not JobState.RUNNING:  # only a running job holds a lease
        changes.setdefault("lease", None)
        changes.setdefault("lease_expires", None)
    new = old.replace(state=to, version=old.version + 1, **changes)
    return Transition(old, new, events, front)


def _amend(old: JobRecord, *events: Event, **changes: Any) -> Transition:
    """A change that keeps the state (a cancel request on a running job)."""
    return Transition(old, old.replace(version=old.version + 1, **changes), events)


# -- birth --------------------------------------------------------------------------------------
def born(job: JobRecord, now: float, queue: str | None = None) -> tuple[JobRecord, Event]:
    """A new job, queued, (with a future eta) scheduled, or (with dependencies) waiting,
    and its ``submitted`` event; ``queue``: the queue it goes to, when the spec named none
    (in the same copy of the record: a submit of many jobs makes one per job)."""
    future = job.eta is not None and job.eta > now
    state = JobState.SCHEDULED if future else JobState.QUEUED
    if job.depends_on:
        state = JobState.WAITING
    eta = job.eta if future else None
    new = job.replace(
        state=state, eta=eta, created_at=now, version=1, queue=job.queue if queue is None else queue
    )
    return new, event(EventKind.SUBMITTED, now)


# -- workflows: a waiting job's dependencies ended ---------------------------------------------
def ready(job: JobRecord, now: float, inputs: bytes | None = None) -> Transition:
    """Waiting → queued (scheduled, if its eta is still ahead): every job it depends on
    completed. ``inputs`` is the packed list of their results it receives (``feed``)."""
    to = JobState.SCHEDULED if job.eta is not None and job.eta > now else JobState.QUEUED
    return move(job, to, event(EventKind.READY, now), inputs=inputs)


def blocked(job: JobRecord, now: float, reason: str) -> Transition:
    """Waiting → cancelled: a job it depends on will never complete (dead, cancelled,
    gone); ``reason`` says which, in its history."""
    return _cancelled(job, now, reason)


# -- dispatch -----------------------------------------------------------------------------------
def claim(
    job: JobRecord,
    worker: str,
    lease: int,
    lease_seconds: float,
    now: float,
    options: TaskOptions | None = None,
    route: str = DEFAULT_QUEUE,
) -> Transition:
    """Queued → running under ``lease`` for ``worker``; one attempt counted.

    Retry options the producer left unset come from the task's own definition, as the
    claiming worker announced it, else the global defaults: they never depend on which
    worker happened to be connected when the job was submitted. An unrouted job takes
    ``route``, the queue the claiming worker declares for its task.
    """
    opts = options or _NO_OPTIONS
    return move(
        job,
        JobState.RUNNING,
        event(EventKind.STARTED, now, worker=worker, attempt=job.attempts + 1),
        attempts=job.attempts + 1,
        queue=job.queue or route,
        worker=worker,
        lease=lease,
        lease_expires=now + lease_seconds,
        started_at=now,
        max_retries=_first(job.max_retries, opts.retries, DEFAULT_RETRIES),
        retry_backoff=_first(job.retry_backoff, opts.retry_backoff, DEFAULT_RETRY_BACKOFF),
        retry_backoff_max=_first(
            job.retry_backoff_max, opts.retry_backoff_max, DEFAULT_RETRY_BACKOFF_MAX
        ),
    )


_NO_OPTIONS = TaskOptions()


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def promote(job: JobRecord, now: float) -> Transition:
    """Scheduled → queued: its eta has come."""
    return move(job, JobState.QUEUED)


# -- a worker's report --------------------------------------------------------------------------
def report(
    job: JobRecord, outcome: Outcome, now: float, rand: random.Random | None = None
) -> Transition:
    """Apply a worker's outcome: completed, scheduled for a retry, dead, or (when a cancel
    was asked for while it ran) cancelled, whatever the outcome."""
    if job.cancel_requested:
        return _cancelled(job, now, "cancelled while running")
    if outcome.ok:
        return move(
            job,
            JobState.COMPLETED,
            event(EventKind.COMPLETED, now, worker=job.worker),
            result=outcome.result,
            error=None,
            finished_at=now,
        )
    return fail(job, outcome.error or {}, now, outcome.retry_delay, outcome.reject, rand)


def fail(
    job: JobRecord,
    error: dict[str, Any],
    now: float,
    retry_delay: float | None = None,
    reject: bool = False,
    rand: random.Random | None = None,
) -> Transition:
    """A run failed: scheduled again after backoff, or dead when no retries are left."""
    error = {"type": "Error", "message": "unknown error", **error}
    failed = event(
        EventKind.FAILED,
        now,
        worker=job.worker,
        attempt=job.attempts,
        error=f"{error.get('type')}: {error.get('message')}",
        traceback=_tail(error.get("traceback")),
    )
    retry_at = next_retry_at(
        job.attempts,
        job.max_retries if job.max_retries is not None else DEFAULT_RETRIES,
        now,
        job.retry_backoff if job.retry_backoff is not None else DEFAULT_RETRY_BACKOFF,
        job.retry_backoff_max if job.retry_backoff_max is not None else DEFAULT_RETRY_BACKOFF_MAX,
        retry_delay,
        reject,
        rand,
    )
    if retry_at is None:
        reason = "rejected" if reject else "retries exhausted"
        return move(
            job,
            JobState.DEAD,
            failed,
            event(EventKind.DEAD, now, reason=reason),
            error=error,
            finished_at=now,
        )
    return move(
        job,
        JobState.SCHEDULED,
        failed,
        event(EventKind.RETRIED, now, eta=retry_at, attempt=job.attempts),
        error=error,
        eta=retry_at,
    )


EVENT_TRACEBACK = 8000  # characters of each attempt's traceback kept in its ``failed`` event


def _tail(traceback: Any) -> str | None:
    """The end of a traceback (where it was raised), for the attempt's history entry. A
    sealed one is kept whole or not at all: a cut would not open."""
    if not isinstance(traceback, str) or not traceback:
        return None
    if len(traceback) <= EVENT_TRACEBACK:
        return traceback
    if traceback.startswith("__conveyor_encrypted__:"):
        return None
    return "...\n" + traceback[-(EVENT_TRACEBACK - 4) :]


def deadline(job: JobRecord, now: float, timeout: float, grace: float) -> Transition:
    """The broker's backstop: the run outlived its ``timeout`` (the job's, else its task's)
    plus ``grace`` without a report (a hung worker). A pending cancel wins."""
    if job.cancel_requested:
        return _cancelled(job, now, "cancelled while running (deadline)")
    return fail(
        job,
        {
            "type": TIMEOUT,
            "message": f"job exceeded its {timeout:g}s timeout; the broker gave up on it "
            f"after a further {grace:g}s without a report",
            "traceback": "",
        },
        now,
    )


# -- runs that end without a report -------------------------------------------------------------
def requeue(job: JobRecord, now: float, reason: str, charged: bool) -> Transition:
    """The run ended without a report (worker lost, lease expired, broker restart).

    ``charged``: the run had started, so it keeps its attempt; with none left the job is
    dead (``WorkerLost``). Uncharged (prefetched, never started) the attempt is given back.
    A job whose cancel was asked for while it ran ends cancelled instead.
    """
    if job.cancel_requested:
        return _cancelled(job, now, f"cancelled while running ({reason})")
    if charged and job.attempts > (
        job.max_retries if job.max_retries is not None else DEFAULT_RETRIES
    ):
        error = {
            "type": WORKER_LOST,
            "message": f"attempt {job.attempts} of {job.attempts} ended without a report "
            f"({reason}): the task may be crashing its worker",
            "traceback": "",
        }
        return move(
            job,
            JobState.DEAD,
            event(
                EventKind.FAILED,
                now,
                worker=job.worker,
                attempt=job.attempts,
                error=f"{WORKER_LOST}: {reason}",
            ),
            event(EventKind.DEAD, now, reason=reason),
            error=error,
            finished_at=now,
        )
    return move(
        job,
        JobState.QUEUED,
        event(EventKind.REQUEUED, now, worker=job.worker, reason=reason, charged=charged),
        front=True,
        attempts=job.attempts if charged else max(0, job.attempts - 1),
        worker=None,
    )


def release(job: JobRecord, now: float) -> Transition:
    """The worker gives back a job it never started: front of its priority, attempt back."""
    if job.cancel_requested:
        return _cancelled(job, now, "cancelled while running (released)")
    return move(
        job,
        JobState.QUEUED,
        event(EventKind.RELEASED, now, worker=job.worker),
        front=True,
        attempts=max(0, job.attempts - 1),
        worker=None,
    )


# -- cancellation and the dead-letter queue -----------------------------------------------------
def cancel(job: JobRecord, now: float) -> Transition | None:
    """Queued/scheduled: cancelled now. Running: marked, cancelled when its run ends.

    Raises :class:`~conveyor.errors.Conflict` for a job that is already final.
    """
    if job.state.is_final:
        raise Conflict("conflict", f"job {job.id} is already {job.state.value}")
    if job.state is JobState.RUNNING:
        if job.cancel_requested:
            return None  # asked already: nothing changes
        return _amend(job, event(EventKind.CANCEL_REQUESTED, now), cancel_requested=True)
    return _cancelled(job, now, "cancelled")


def _cancelled(job: JobRecord, now: float, reason: str) -> Transition:
    return move(
        job,
        JobState.CANCELLED,
        event(EventKind.CANCELLED, now, reason=reason),
        finished_at=now,
    )


def dlq_retry(job: JobRecord, now: float) -> Transition:
    """Dead → queued with fresh attempts."""
    return move(
        job,
        JobState.QUEUED,
        event(EventKind.RETRIED, now, reason="dlq retry"),
        attempts=0,
        finished_at=None,
        worker=None,
    )
