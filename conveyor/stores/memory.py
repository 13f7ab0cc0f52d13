"""``memory://``: the volatile engine, whose job semantics the SQLite engine reuses.

Every job lives in a dict; queued ones are also in the :class:`ReadyIndex`
(``_index.py``), which hands out the most urgent job a worker can run. Sequence numbers
come from one counter (new jobs count up; requeued jobs count down from -1, which puts
them in front of their priority); leases are drawn from the same counter.

Subclasses persist changes by overriding :meth:`_persist` (called with every job
that changed) and :meth:`_durable` (awaited before anything is acknowledged).
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from conveyor._ids import new_job_id
from conveyor.errors import BrokerError, JobNotFound
from conveyor.job import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_RETRY_BACKOFF_MAX,
    FINAL_STATES,
    EventKind,
    Job,
    JobState,
    event,
)
from conveyor.retry import next_retry_at
from conveyor.stores._index import ReadyIndex
from conveyor.stores.base import Claimant, Inserted, Outcome, Store
from conveyor.validation import JobSpec

T = TypeVar("T")


def _default(value: T | None, default: T) -> T:
    return default if value is None else value


_TOTALS = ("submitted", "completed", "failed", "retried", "requeued", "dead", "cancelled")


class MemoryStore(Store):
    """Everything in this process's memory; gone when it stops."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._jobs: dict[str, Job] = {}
        self._seq = itertools.count(1)
        self._front_seq = itertools.count(-1, -1)
        self._ready = ReadyIndex()
        self._scheduled: list[tuple[float, str]] = []
        self._running: dict[str, set[str]] = {}  # worker -> job ids
        self._unique: dict[str, str] = {}  # live unique_key -> job id
        self._finished: deque[tuple[float, str]] = deque()  # completed/cancelled, in order
        self._counts: Counter[JobState] = Counter()
        self._queue_counts: dict[str, Counter[str]] = {}
        self.totals: Counter[str] = Counter({k: 0 for k in _TOTALS})

    # -- persistence hooks (no-ops here) -----------------------------------------------
    def _persist(self, jobs: Iterable[Job]) -> None:
        """Called with every job whose record changed."""

    def _forget(self, job_ids: Iterable[str]) -> None:
        """Called with ids of jobs deleted (pruned or purged)."""

    async def _durable(self) -> None:
        """Awaited before a change is acknowledged."""

    # -- bookkeeping ---------------------------------------------------------------------
    def _set(self, old: Job | None, new: Job) -> Job:
        """Record ``new`` as the current version of a job; keep counters in step."""
        if old is not None:
            self._counts[old.state] -= 1
            self._queue_counts[old.queue][old.state.value] -= 1
        self._counts[new.state] += 1
        counts = self._queue_counts.get(new.queue)
        if counts is None:
            counts = self._queue_counts[new.queue] = Counter()
        counts[new.state.value] += 1
        self._jobs[new.id] = new
        if (
            new.state in FINAL_STATES
            and new.unique_key
            and self._unique.get(new.unique_key) == new.id
        ):
            del self._unique[new.unique_key]
        return new

    def _push_ready(self, job: Job, front: bool = False) -> None:
        self._ready.push(job, next(self._front_seq) if front else next(self._seq))

    def _place(self, job: Job, front: bool = False) -> None:
        """Index a job that just became queued or scheduled."""
        if job.state is JobState.QUEUED:
            self._push_ready(job, front)
        elif job.state is JobState.SCHEDULED:
            heapq.heappush(self._scheduled, (job.eta or 0.0, job.id))

    def _unrun(self, job: Job) -> None:
        """Drop a job from its worker's running set."""
        if job.worker is not None:
            running = self._running.get(job.worker)
            if running is not None:
                running.discard(job.id)

    def _finish(self, job: Job) -> None:
        if job.state in (JobState.COMPLETED, JobState.CANCELLED):
            self._finished.append((job.finished_at or 0.0, job.id))

    # -- write path ----------------------------------------------------------------------
    async def job_insert_many(self, specs: Sequence[JobSpec], now: float) -> list[Inserted]:
        out: list[Inserted] = []
        changed: list[Job] = []
        for spec in specs:
            existing = self._existing(spec)
            if existing is not None:
                out.append(Inserted(existing, False))
                continue
            scheduled = spec.eta is not None and spec.eta > now
            job = Job(
                id=spec.id or new_job_id(),
                task=spec.task,
                args=spec.args,
                kwargs=spec.kwargs,
                queue=spec.queue,
                priority=spec.priority,
                state=JobState.SCHEDULED if scheduled else JobState.QUEUED,
                max_retries=_default(spec.max_retries, DEFAULT_RETRIES),
                retry_backoff=_default(spec.retry_backoff, DEFAULT_RETRY_BACKOFF),
                retry_backoff_max=_default(spec.retry_backoff_max, DEFAULT_RETRY_BACKOFF_MAX),
                timeout=spec.timeout,
                eta=spec.eta,
                unique_key=spec.unique_key,
                created_at=now,
                events=(event(EventKind.SUBMITTED, now),),
            )
            self._set(None, job)
            if job.unique_key:
                self._unique[job.unique_key] = job.id
            self._place(job)
            changed.append(job)
            out.append(Inserted(job, True))
        self.totals["submitted"] += len(changed)
        self._persist(changed)
        await self._durable()
        return out

    def _existing(self, spec: JobSpec) -> Job | None:
        if spec.id is not None and spec.id in self._jobs:
            return self._jobs[spec.id]
        if spec.unique_key is not None:
            job_id = self._unique.get(spec.unique_key)
            if job_id is not None:
                return self._jobs[job_id]
        return None

    async def job_claim(
        self, claimant: Claimant, limit: int, lease_seconds: float, now: float
    ) -> list[Job]:
        taken = self._ready.pop(claimant.queues, claimant.tasks, limit)
        if not taken:
            return []
        claimed: list[Job] = []
        running = self._running.setdefault(claimant.worker, set())
        for job_id in taken:
            old = self._jobs[job_id]
            job = old.replace(
                state=JobState.RUNNING,
                attempts=old.attempts + 1,
                worker=claimant.worker,
                lease=next(self._seq),
                lease_expires=now + lease_seconds,
                started_at=now,
                events=(*old.events, event(EventKind.STARTED, now, worker=claimant.worker)),
            )
            self._set(old, job)
            running.add(job_id)
            claimed.append(job)
        self._persist(claimed)
        return claimed

    def _running_under(self, job_id: str, lease: int) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None or job.state is not JobState.RUNNING or job.lease != lease:
            return None
        return job

    async def job_report_many(self, outcomes: Sequence[Outcome], now: float) -> list[Job | None]:
        out: list[Job | None] = []
        for outcome in outcomes:
            old = self._running_under(outcome.id, outcome.lease)
            if old is None:
                out.append(None)
                continue
            self._unrun(old)
            if old.cancel_requested:
                job = self._cancelled(old, now, "cancelled while running")
            elif outcome.ok:
                job = old.replace(
                    state=JobState.COMPLETED,
                    result=outcome.result,
                    error=None,
                    lease=None,
                    lease_expires=None,
                    finished_at=now,
                    events=(*old.events, event(EventKind.COMPLETED, now, worker=old.worker)),
                )
                self.totals["completed"] += 1
            else:
                job = self._failed(old, outcome, now)
            self._set(old, job)
            self._place(job)
            self._finish(job)
            out.append(job)
        self._persist(j for j in out if j is not None)
        await self._durable()
        return out

    def _failed(self, old: Job, outcome: Outcome, now: float) -> Job:
        error = outcome.error or {"type": "Error", "message": "unknown error"}
        failed = event(
            EventKind.FAILED,
            now,
            worker=old.worker,
            attempt=old.attempts,
            error=f"{error.get('type')}: {error.get('message')}",
        )
        self.totals["failed"] += 1
        retry_at = next_retry_at(
            old.attempts,
            old.max_retries,
            now,
            old.retry_backoff,
            old.retry_backoff_max,
            outcome.retry_delay,
            outcome.reject,
        )
        common: dict[str, Any] = {"error": error, "lease": None, "lease_expires": None}
        if retry_at is None:
            self.totals["dead"] += 1
            reason = "rejected" if outcome.reject else "retries exhausted"
            dead = event(EventKind.DEAD, now, reason=reason)
            return old.replace(
                state=JobState.DEAD, finished_at=now, events=(*old.events, failed, dead), **common
            )
        self.totals["retried"] += 1
        retried = event(EventKind.RETRIED, now, eta=retry_at, attempt=old.attempts)
        return old.replace(
            state=JobState.SCHEDULED, eta=retry_at, events=(*old.events, failed, retried), **common
        )

    def _cancelled(self, old: Job, now: float, reason: str) -> Job:
        self.totals["cancelled"] += 1
        return old.replace(
            state=JobState.CANCELLED,
            lease=None,
            lease_expires=None,
            finished_at=now,
            events=(*old.events, event(EventKind.CANCELLED, now, reason=reason)),
        )

    def _requeue(self, old: Job, now: float, reason: str, count_attempt: bool = True) -> Job:
        """A running job goes back to the front of its priority (or, if a cancel was
        asked for while it ran, it is cancelled now instead of running again)."""
        self._unrun(old)
        if old.cancel_requested:
            job = self._set(old, self._cancelled(old, now, f"cancelled while running ({reason})"))
            self._finish(job)
            return job
        job = old.replace(
            state=JobState.QUEUED,
            attempts=old.attempts if count_attempt else max(0, old.attempts - 1),
            worker=None,
            lease=None,
            lease_expires=None,
            events=(*old.events, event(EventKind.REQUEUED, now, worker=old.worker, reason=reason))
            if count_attempt
            else old.events[:-1],  # a release undoes its "started" event
        )
        self._set(old, job)
        self._push_ready(job, front=True)
        return job

    async def job_release_many(self, leases: Sequence[tuple[str, int]], now: float) -> int:
        released = []
        for job_id, lease in leases:
            old = self._running_under(job_id, lease)
            if old is not None:
                released.append(self._requeue(old, now, "released", count_attempt=False))
        self._persist(released)
        await self._durable()
        return len(released)

    async def job_requeue_worker(self, worker: str, reason: str, now: float) -> list[Job]:
        ids = self._running.pop(worker, set())
        # each requeue goes in front of the last: newest first leaves the oldest in front
        jobs = [self._requeue(self._jobs[i], now, reason) for i in sorted(ids, reverse=True)]
        jobs.reverse()
        self.totals["requeued"] += sum(1 for j in jobs if j.state is JobState.QUEUED)
        self._persist(jobs)
        await self._durable()
        return jobs

    async def job_rescue_expired(self, now: float) -> list[Job]:
        expired = [
            self._jobs[i]
            for ids in self._running.values()
            for i in ids
            if (self._jobs[i].lease_expires or 0.0) <= now
        ]
        expired.sort(key=lambda j: j.id, reverse=True)
        jobs = [self._requeue(j, now, "lease expired") for j in expired]
        jobs.reverse()
        self.totals["requeued"] += sum(1 for j in jobs if j.state is JobState.QUEUED)
        self._persist(jobs)
        await self._durable()
        return jobs

    async def job_extend_leases(self, worker: str, lease_seconds: float, now: float) -> int:
        ids = self._running.get(worker, ())
        until = now + lease_seconds
        extended = []
        for job_id in ids:
            job = self._jobs[job_id].replace(lease_expires=until)
            self._jobs[job_id] = job
            extended.append(job)
        self._persist(extended)  # lazily: a lost heartbeat is harmless
        return len(ids)

    async def job_promote_due(self, now: float) -> int:
        promoted = []
        while self._scheduled and self._scheduled[0][0] <= now:
            _, job_id = heapq.heappop(self._scheduled)
            old = self._jobs.get(job_id)
            if old is None or old.state is not JobState.SCHEDULED or (old.eta or 0.0) > now:
                continue  # stale entry: cancelled, or rescheduled with a later eta
            job = self._set(old, old.replace(state=JobState.QUEUED))
            self._push_ready(job)
            promoted.append(job)
        self._persist(promoted)
        return len(promoted)

    async def job_cancel(self, job_id: str, now: float) -> Job:
        old = self._jobs.get(job_id)
        if old is None:
            raise JobNotFound("not_found", f"no job {job_id}")
        if old.state in FINAL_STATES:
            raise BrokerError("conflict", f"job {job_id} is already {old.state.value}")
        if old.state is JobState.RUNNING:
            job = old.replace(cancel_requested=True)
            self._jobs[job_id] = job
        else:
            self._ready.discard(job_id)
            job = self._set(old, self._cancelled(old, now, "cancelled"))
            self._finish(job)
        self._persist([job])
        await self._durable()
        return job

    # -- read path -----------------------------------------------------------------------
    async def job_get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    async def job_list(
        self, state: str | None = None, queue: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Job]:
        out: list[Job] = []
        skipped = 0
        if limit <= 0:
            return out
        for job in reversed(self._jobs.values()):
            if (state and job.state.value != state) or (queue and job.queue != queue):
                continue
            if skipped < offset:
                skipped += 1
                continue
            out.append(job)
            if len(out) >= limit:
                break
        return out

    async def job_next_eta(self) -> float | None:
        while self._scheduled:
            eta, job_id = self._scheduled[0]
            job = self._jobs.get(job_id)
            if job is not None and job.state is JobState.SCHEDULED and job.eta == eta:
                return eta
            heapq.heappop(self._scheduled)
        return None

    async def queue_tasks_waiting(self) -> dict[tuple[str, str], int]:
        return self._ready.waiting()

    # -- dead letters and retention ------------------------------------------------------
    def _dead(self, ids: Sequence[str] | None) -> list[Job]:
        if ids is None:
            return [j for j in self._jobs.values() if j.state is JobState.DEAD]
        unique = dict.fromkeys(ids)  # a repeated id must not be retried or purged twice
        return [j for i in unique if (j := self._jobs.get(i)) and j.state is JobState.DEAD]

    async def dlq_retry(self, ids: Sequence[str] | None, now: float) -> int:
        jobs = []
        for old in self._dead(ids):
            job = self._set(
                old,
                old.replace(
                    state=JobState.QUEUED,
                    attempts=0,
                    finished_at=None,
                    events=(*old.events, event(EventKind.RETRIED, now, reason="dlq retry")),
                ),
            )
            self._push_ready(job)
            if job.unique_key:  # live again: it holds its key, unless another job took it
                self._unique.setdefault(job.unique_key, job.id)
            jobs.append(job)
        self._persist(jobs)
        await self._durable()
        return len(jobs)

    def _delete(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            del self._jobs[job.id]
            self._counts[job.state] -= 1
            self._queue_counts[job.queue][job.state.value] -= 1
        self._forget(j.id for j in jobs)

    async def dlq_purge(self, ids: Sequence[str] | None) -> int:
        jobs = self._dead(ids)
        self._delete(jobs)
        await self._durable()
        return len(jobs)

    async def job_prune(self, finished_before: float) -> int:
        doomed = []
        while self._finished and self._finished[0][0] < finished_before:
            _, job_id = self._finished.popleft()
            job = self._jobs.get(job_id)
            if job is not None and job.state in (JobState.COMPLETED, JobState.CANCELLED):
                doomed.append(job)
        self._delete(doomed)
        await self._durable()
        return len(doomed)

    # -- numbers -------------------------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        return {
            "states": {s.value: self._counts.get(s, 0) for s in JobState},
            "queues": {q: {s: n for s, n in c.items() if n} for q, c in self._queue_counts.items()},
            "totals": dict(self.totals),
        }
