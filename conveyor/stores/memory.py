"""``memory://``: the volatile engine. Every job and its history live in this process.

The records and indexes are a :class:`~conveyor.stores._live.LiveJobs`; this module adds
the history (a list per job), finished jobs kept for reads, and retention (finished jobs
in the order they finished).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from conveyor import lifecycle
from conveyor.job import PRUNABLE_STATES, Event, JobRecord, JobState
from conveyor.lifecycle import Transition
from conveyor.stores._live import LiveJobs
from conveyor.stores.base import (
    Claimant,
    Inserted,
    JobFilter,
    Page,
    Store,
    WorkflowPage,
    member_group,
    summarize,
)


class MemoryStore(Store):
    """Everything in this process's memory; gone when it stops."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self.live = LiveJobs()
        self._events: dict[str, list[Event]] = {}
        self._finished: deque[tuple[float, str]] = deque()  # prunable jobs, as they finished
        self._order: dict[str, int] = {}  # id -> submission number (listing cursors)
        self._submitted = 0
        self._meta: dict[str, Any] = {}
        self._workflows: dict[str, dict[str, None]] = {}  # workflow -> its job ids, in order

    # -- writes --------------------------------------------------------------------------
    async def job_insert_many(
        self, jobs: Sequence[tuple[JobRecord, Event]], *, durable: bool = True
    ) -> list[Inserted]:
        out: list[Inserted] = []
        for job, first in jobs:
            holder = self.live.holder(job)
            if holder is not None:  # every record is resident here
                out.append(Inserted(self.live.jobs[holder], False))
                continue
            self.live.add(job, (first,))
            self._events[job.id] = [first]
            self._submitted += 1
            self._order[job.id] = self._submitted
            if job.workflow is not None:
                self._workflows.setdefault(job.workflow, {})[job.id] = None
            out.append(Inserted(job, True))
        return out

    async def job_claim(
        self, claimant: Claimant, limit: int, lease_seconds: float, now: float
    ) -> list[JobRecord]:
        claimed: list[JobRecord] = []
        for job_id in self.live.pop_ready(claimant, limit):
            job = self.live.jobs[job_id]
            t = lifecycle.claim(
                job,
                claimant.worker,
                self.live.next_lease(),
                lease_seconds,
                now,
                claimant.options.get(job.task),
                claimant.route(job.task),
            )
            claimed.append(self._apply(t))  # just popped: nothing else changed it
        return claimed

    async def job_promote_due(self, now: float) -> list[JobRecord]:
        jobs = self.live.jobs
        return [self._apply(lifecycle.promote(jobs[i], now)) for i in self.live.pop_due(now)]

    async def job_apply(
        self, transitions: Sequence[Transition], *, durable: bool = True
    ) -> list[JobRecord | None]:
        out: list[JobRecord | None] = []
        for t in transitions:
            new = self.live.apply(t)
            if new is not None:
                self._recorded(t, new)
            out.append(new)
        return out

    def _apply(self, t: Transition) -> JobRecord:
        new = self.live.apply(t)
        assert new is not None, "a job picked from the index changed under us"
        self._recorded(t, new)
        return new

    def _recorded(self, t: Transition, new: JobRecord) -> None:
        self._events[new.id].extend(t.events)
        if new.state in PRUNABLE_STATES and t.old.state not in PRUNABLE_STATES:
            self._finished.append((new.finished_at or 0.0, new.id))

    def _delete(self, jobs: Sequence[JobRecord]) -> int:
        for job in jobs:
            self.live.remove(job)
            self._events.pop(job.id, None)
            self._order.pop(job.id, None)
            members = self._workflows.get(job.workflow or "")
            if members is not None:
                members.pop(job.id, None)
                if not members:
                    del self._workflows[job.workflow or ""]
        return len(jobs)

    async def dlq_purge(self, ids: Sequence[str] | None) -> int:
        return self._delete(self._dead(ids))

    async def job_prune(self, finished_before: float) -> int:
        doomed: list[JobRecord] = []
        while self._finished and self._finished[0][0] < finished_before:
            _, job_id = self._finished.popleft()
            job = self.live.jobs.get(job_id)
            if job is not None and job.state in PRUNABLE_STATES:
                doomed.append(job)
        return self._delete(doomed)

    # -- settings ------------------------------------------------------------------------
    async def meta_get(self, name: str) -> Any:
        return self._meta.get(name)

    async def meta_set(self, name: str, value: Any) -> None:
        self._meta[name] = value

    # -- reads ---------------------------------------------------------------------------
    async def job_get(self, job_id: str, *, payload: bool = True) -> JobRecord | None:
        return self.live.jobs.get(job_id)

    async def job_get_many(self, ids: Sequence[str], *, payload: bool = True) -> list[JobRecord]:
        jobs = self.live.jobs
        return [jobs[i] for i in dict.fromkeys(ids) if i in jobs]

    async def job_events(self, job_id: str) -> list[Event]:
        return list(self._events.get(job_id, ()))

    def _dead(self, ids: Sequence[str] | None) -> list[JobRecord]:
        jobs = self.live.jobs
        if ids is None:
            return [j for j in jobs.values() if j.state is JobState.DEAD]
        return [j for i in dict.fromkeys(ids) if (j := jobs.get(i)) and j.state is JobState.DEAD]

    async def job_dead(self, ids: Sequence[str] | None) -> list[JobRecord]:
        return self._dead(ids)

    async def job_list(
        self,
        where: JobFilter,
        limit: int = 100,
        cursor: str | None = None,
        offset: int = 0,
        *,
        payload: bool = True,
    ) -> Page:
        before = int(cursor) if cursor else None
        out: list[JobRecord] = []
        skipped = 0
        jobs = self.live.jobs
        candidates: Iterable[JobRecord]
        if where.workflow is not None:  # its members only, not every job
            members = reversed(self._workflows.get(where.workflow, {}))
            candidates = (jobs[i] for i in members)
        else:
            candidates = reversed(jobs.values())
        for job in candidates:
            if before is not None and self._order[job.id] >= before:
                continue
            if not _matches(job, where):
                continue
            if skipped < offset:
                skipped += 1
                continue
            if len(out) == limit:
                return Page(out, str(self._order[out[-1].id]))
            out.append(job)
        return Page(out, None)

    async def workflow_list(self, limit: int = 50, cursor: str | None = None) -> WorkflowPage:
        ids = sorted((w for w in self._workflows if cursor is None or w < cursor), reverse=True)
        page = ids[:limit]
        jobs = self.live.jobs
        groups = (member_group(jobs[i]) for w in page for i in self._workflows[w])
        return WorkflowPage(summarize(page, groups), page[-1] if len(ids) > limit else None)

    async def job_waiting_on(self, ids: Sequence[str]) -> list[JobRecord]:
        jobs = self.live.jobs
        return [jobs[i] for i in self.live.waiting_on(ids)]

    async def job_next_eta(self) -> float | None:
        return self.live.next_eta()

    async def queue_waiting(self) -> dict[tuple[str, str], int]:
        return self.live.waiting()

    async def stats(self) -> dict[str, Any]:
        return self.live.stats()

    async def stats_brief(self) -> dict[str, Any]:
        return self.live.stats_brief()


def _matches(job: JobRecord, where: JobFilter) -> bool:
    return (
        (where.state is None or job.state is where.state)
        and (where.queue is None or job.queue == where.queue)
        and (where.task is None or job.task == where.task)
        and (where.worker is None or job.worker == where.worker)
        and (where.priority is None or job.priority == where.priority)
        and (where.id_prefix is None or job.id.startswith(where.id_prefix))
        and (where.workflow is None or job.workflow == where.workflow)
    )
