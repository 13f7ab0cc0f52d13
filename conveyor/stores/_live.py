"""The in-memory half that the memory and SQLite engines share (composed, not inherited).

:class:`LiveJobs` holds the records the engine keeps in memory and everything indexed
over them: the ready index (``_index.py``), the heap of scheduled jobs by ETA, the unique
keys held by live jobs, job counts by (state, queue, task, priority) and the event totals. It
applies
:class:`~conveyor.lifecycle.Transition` objects conditionally (by version) and keeps all of
that in step in one place, :meth:`LiveJobs.apply`.

Sequence numbers order jobs within a priority: new jobs count up from 1, jobs sent to the
front (requeued, released) count down from -1. Leases are drawn from the same upward
counter, so a lease is never reused within a store's life.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterable
from typing import Any

from conveyor.errors import IllegalTransition
from conveyor.job import FINAL_STATES, TRANSITIONS, UNROUTED, Event, JobRecord, JobState
from conveyor.lifecycle import Transition
from conveyor.stores._index import ReadyIndex
from conveyor.stores.base import TOTALS, Claimant

_TOTAL_KINDS = frozenset(TOTALS)
CountKey = tuple[JobState, str, str, int]  # (state, queue, task, priority)


class LiveJobs:
    """Records in memory and their indexes; see the module docstring."""

    def __init__(self, seq_start: int = 1, front_start: int = -1) -> None:
        self.jobs: dict[str, JobRecord] = {}
        self.ready = ReadyIndex()
        self._scheduled: list[tuple[float, str]] = []
        self._unique: dict[str, str] = {}  # unique key -> id of the live job holding it
        self.counts: Counter[CountKey] = Counter()  # (state, queue, task, priority) -> jobs
        self.totals: Counter[str] = Counter(dict.fromkeys(TOTALS, 0))
        self._seq = itertools.count(seq_start)
        self._front = itertools.count(front_start, -1)
        self.high_water = max(0, seq_start - 1)  # the highest sequence or lease handed out

    # -- lookups ---------------------------------------------------------------------------
    def existing(self, job: JobRecord) -> JobRecord | None:
        """The job in memory with ``job``'s id, or the live one holding its unique key."""
        found = self.jobs.get(job.id)
        if found is None and job.unique_key is not None:
            holder = self._unique.get(job.unique_key)
            found = None if holder is None else self.jobs.get(holder)
        return found

    def seq_of(self, job_id: str) -> int | None:
        return self.ready.seq_of(job_id)

    def next_lease(self) -> int:
        lease = next(self._seq)
        self.high_water = lease
        return lease

    # -- changes ---------------------------------------------------------------------------
    def add(self, job: JobRecord, events: Iterable[Event] = ()) -> None:
        """A new job (queued or scheduled) enters."""
        self.jobs[job.id] = job
        self.counts[job.state, job.queue, job.task, job.priority] += 1
        if job.unique_key is not None and job.state not in FINAL_STATES:
            self._unique[job.unique_key] = job.id
        self._place(job, front=False)
        self._count(events)

    def apply(self, t: Transition) -> JobRecord | None:
        """Apply ``t`` if the job in memory is still at ``t.old``'s version."""
        old, new = self.jobs.get(t.old.id), t.new
        if old is None or old.version != t.old.version:
            return None
        if new.state is not old.state and new.state not in TRANSITIONS[old.state]:
            raise IllegalTransition(  # only a hand-made transition gets here: a bug
                f"job {old.id} cannot go from {old.state.value} to {new.state.value}"
            )
        self.jobs[new.id] = new
        if old.state is not new.state or old.queue != new.queue:
            self.uncount(old.state, old.queue, old.task, old.priority)
            self.counts[new.state, new.queue, new.task, new.priority] += 1
            if old.state is JobState.QUEUED:
                self.ready.discard(old.id)  # a claim already took it: then this is a no-op
            self._place(new, t.front)
            self._hold_key(old, new)
        self._count(t.events)
        return new

    def _place(self, job: JobRecord, front: bool) -> None:
        if job.state is JobState.QUEUED:
            seq = next(self._front) if front else next(self._seq)
            if seq > 0:
                self.high_water = seq
            self.ready.push(job, seq)
        elif job.state is JobState.SCHEDULED:
            heapq.heappush(self._scheduled, (job.eta or 0.0, job.id))

    def _hold_key(self, old: JobRecord, new: JobRecord) -> None:
        key = new.unique_key
        if key is None:
            return
        if new.state in FINAL_STATES:
            if self._unique.get(key) == new.id:
                del self._unique[key]
        elif old.state in FINAL_STATES:  # live again (dlq retry): it holds its key if free
            self._unique.setdefault(key, new.id)

    def _count(self, events: Iterable[Event]) -> None:
        for ev in events:
            kind = ev["event"]
            if kind in _TOTAL_KINDS:
                self.totals[kind] += 1

    def remove(self, job: JobRecord, *, uncount: bool = True) -> None:
        """Forget a job: deleted (``uncount``), or only evicted from memory (SQLite)."""
        if self.jobs.get(job.id) is job:
            del self.jobs[job.id]
        if uncount:
            self.uncount(job.state, job.queue, job.task, job.priority)

    def uncount(self, state: JobState, queue: str, task: str, priority: int, n: int = 1) -> None:
        key = (state, queue, task, priority)
        self.counts[key] -= n
        if not self.counts[key]:
            del self.counts[key]

    # -- picking work ----------------------------------------------------------------------
    def pop_ready(self, claimant: Claimant, limit: int) -> list[JobRecord]:
        """The most urgent queued jobs the claimant can run (out of the ready index)."""
        queues = (*claimant.queues, UNROUTED)
        return [self.jobs[i] for i in self.ready.pop(queues, claimant.tasks, limit)]

    def pop_due(self, now: float) -> list[JobRecord]:
        """Scheduled jobs whose eta has come (stale heap entries are skipped)."""
        due: list[JobRecord] = []
        while self._scheduled and self._scheduled[0][0] <= now:
            eta, job_id = heapq.heappop(self._scheduled)
            job = self.jobs.get(job_id)
            if job is not None and job.state is JobState.SCHEDULED and job.eta == eta:
                due.append(job)
        return due

    def next_eta(self) -> float | None:
        while self._scheduled:
            eta, job_id = self._scheduled[0]
            job = self.jobs.get(job_id)
            if job is not None and job.state is JobState.SCHEDULED and job.eta == eta:
                return eta
            heapq.heappop(self._scheduled)
        return None

    # -- restoring (SQLite at open) --------------------------------------------------------
    def load(self, job: JobRecord, seq: int | None) -> None:
        """Put back a live job read from disk, in its old place; call :meth:`loaded` after."""
        self.jobs[job.id] = job
        if job.unique_key is not None:
            self._unique[job.unique_key] = job.id
        if job.state is JobState.QUEUED:
            self.ready.load(job, next(self._seq) if seq is None else seq)
        elif job.state is JobState.SCHEDULED:
            self._scheduled.append((job.eta or 0.0, job.id))

    def loaded(self) -> None:
        self.ready.heapify()
        heapq.heapify(self._scheduled)

    # -- numbers ---------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        states = dict.fromkeys((s.value for s in JobState), 0)
        by: dict[str, dict[Any, Counter[str]]] = {"queues": {}, "tasks": {}, "priorities": {}}
        for (state, queue, task, priority), n in self.counts.items():
            if n:
                states[state.value] += n
                # map keys are strings on the wire (protocol section 1): priorities too
                for name, key in (
                    ("queues", queue),
                    ("tasks", task),
                    ("priorities", str(priority)),
                ):
                    by[name].setdefault(key, Counter())[state.value] += n
        out: dict[str, Any] = {"states": states, "totals": dict(self.totals)}
        for name, groups in by.items():
            ordered = sorted(groups.items(), key=lambda kv: (len(kv[0]), kv[0]))  # "2" < "10"
            out[name] = {key: dict(counts) for key, counts in ordered}
        return out
