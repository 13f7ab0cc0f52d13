"""The store interface: queue operations, not rows. Every engine implements it.

Methods are grouped by area and named noun-first. All take ``now`` (UTC epoch
seconds) from the caller's clock instead of reading time themselves. A method that
acknowledges something to a client (insert, report, cancel, dlq) returns only once
the change is durable in that engine.

Completion is conditional on the lease: a report whose lease no longer matches the
job's (the job was requeued and claimed again) changes nothing and yields None.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.job import Job
from conveyor.validation import JobSpec


@dataclass(frozen=True, slots=True)
class Inserted:
    job: Job
    created: bool  # False: an existing job was returned (same id, or same live unique_key)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A worker's report on one job it ran."""

    id: str
    lease: int
    ok: bool
    result: Any = None
    error: dict[str, Any] | None = None  # {"type", "message", "traceback"}
    retry_delay: float | None = None  # the task raised Retry(delay=...)
    reject: bool = False  # the task raised Reject / a non-retryable error: no retries


@dataclass(frozen=True, slots=True)
class Claimant:
    """What a worker can take: its name, queues and tasks."""

    worker: str
    queues: Sequence[str]
    tasks: Collection[str]


class Store(abc.ABC):
    """Abstract base of every engine. See module docstring for the contract."""

    #: the engine can wake other brokers itself (PostgreSQL LISTEN/NOTIFY)
    supports_listen: bool = False
    #: jobs survive a restart of the broker
    durable: bool = False

    url: str = ""

    async def open(self, now: float) -> list[Job]:
        """Open the engine; return jobs that were running at the last stop, now requeued."""
        return []

    async def close(self) -> None:
        """Flush and release resources."""

    # -- jobs: write path --------------------------------------------------------------
    @abc.abstractmethod
    async def job_insert_many(self, specs: Sequence[JobSpec], now: float) -> list[Inserted]:
        """Insert jobs (queued, or scheduled if eta > now); dedupe by id and unique_key."""

    @abc.abstractmethod
    async def job_claim(
        self, claimant: Claimant, limit: int, lease_seconds: float, now: float
    ) -> list[Job]:
        """Move up to ``limit`` most urgent queued jobs the claimant can run to ``running``.

        Ordered by priority (1 first), then FIFO. A claim need not be durable before
        the job is dispatched: an unrecorded claim is simply run again after a crash.
        """

    @abc.abstractmethod
    async def job_report_many(self, outcomes: Sequence[Outcome], now: float) -> list[Job | None]:
        """Apply worker reports: completed, scheduled (retry) or dead. None = stale lease."""

    @abc.abstractmethod
    async def job_release_many(self, leases: Sequence[tuple[str, int]], now: float) -> int:
        """A worker gives back jobs it never started: queued again, attempt not counted."""

    @abc.abstractmethod
    async def job_requeue_worker(self, worker: str, reason: str, now: float) -> list[Job]:
        """The worker is gone: its running jobs go back to the front of their priority."""

    @abc.abstractmethod
    async def job_rescue_expired(self, now: float) -> list[Job]:
        """Running jobs whose lease expired go back to the front of their priority."""

    @abc.abstractmethod
    async def job_extend_leases(self, worker: str, lease_seconds: float, now: float) -> int:
        """Heartbeat: push the lease expiry of the worker's running jobs to now + lease."""

    @abc.abstractmethod
    async def job_promote_due(self, now: float) -> int:
        """Scheduled jobs whose eta has come become queued; return how many."""

    @abc.abstractmethod
    async def job_cancel(self, job_id: str, now: float) -> Job:
        """Cancel: queued/scheduled at once; running marked to cancel on report.

        Raises JobNotFound, or BrokerError("conflict") for a job already final.
        """

    # -- jobs: read path ---------------------------------------------------------------
    @abc.abstractmethod
    async def job_get(self, job_id: str) -> Job | None: ...

    @abc.abstractmethod
    async def job_list(
        self, state: str | None = None, queue: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Job]:
        """Newest first."""

    @abc.abstractmethod
    async def job_next_eta(self) -> float | None:
        """The earliest eta among scheduled jobs (for the promoter's sleep)."""

    @abc.abstractmethod
    async def queue_tasks_waiting(self) -> dict[tuple[str, str], int]:
        """Queued job counts by (queue, task): tells the broker what is waiting for whom."""

    # -- dead letters and retention ----------------------------------------------------
    @abc.abstractmethod
    async def dlq_retry(self, ids: Sequence[str] | None, now: float) -> int:
        """Dead jobs (these, or all when None) go back to queued with fresh attempts."""

    @abc.abstractmethod
    async def dlq_purge(self, ids: Sequence[str] | None) -> int:
        """Delete dead jobs (these, or all when None)."""

    @abc.abstractmethod
    async def job_prune(self, finished_before: float) -> int:
        """Delete completed and cancelled jobs finished before the given time."""

    # -- numbers -----------------------------------------------------------------------
    @abc.abstractmethod
    async def stats(self) -> dict[str, Any]:
        """{"states": {state: n}, "queues": {queue: {state: n}}, "totals": {...}}."""
