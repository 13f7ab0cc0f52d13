"""The in-memory half that the memory and SQLite engines share (composed, not inherited).

:class:`LiveJobs` holds the records the engine keeps in memory (``jobs``: the *resident*
ones) and the indexes over every live job: the ready index (``_index.py``), scheduled
jobs by ETA, the unique keys held by live jobs, job counts by (state, queue, task,
priority) and the event totals. It applies :class:`~conveyor.lifecycle.Transition`
objects conditionally (by version) and keeps all of that in step in one place,
:meth:`LiveJobs.apply`.

The indexes do not need the records: a queued or scheduled job may leave ``jobs``
(:meth:`LiveJobs.evict`) and stay indexed by id, queue, task, priority and sequence or
ETA alone. The memory engine never evicts; the SQLite engine evicts committed jobs, so
a queue of millions costs a compact index, not millions of records, and reads a
record back (:meth:`LiveJobs.restore`) before it changes it. A record must be resident
for :meth:`apply`.

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
    """Resident records and the indexes over live jobs; see the module docstring."""

    def __init__(self, seq_start: int = 1, front_start: int = -1) -> None:
        self.jobs: dict[str, JobRecord] = {}
        self.ready = ReadyIndex()
        self._scheduled: list[tuple[float, str]] = []  # (eta, id) heap; stale entries skipped
        self._eta: dict[str, float] = {}  # scheduled job id -> the eta its live entry has
        self._unique: dict[str, str] = {}  # unique key -> id of the live job holding it
        #: job id -> the waiting jobs that depend on it (waiting jobs are always resident)
        self._dependants: dict[str, set[str]] = {}
        self.counts: Counter[CountKey] = Counter()  # (state, queue, task, priority) -> jobs
        #: count changes not yet taken by :meth:`take_deltas` (SQLite persists them)
        self.deltas: Counter[CountKey] = Counter()
        self.totals: Counter[str] = Counter(dict.fromkeys(TOTALS, 0))
        #: id(a claimant's queues) -> those queues and the same with UNROUTED, made once
        self._offers: dict[int, tuple[object, tuple[str, ...]]] = {}
        self._seq = itertools.count(seq_start)
        self._front = itertools.count(front_start, -1)
        self.high_water = max(0, seq_start - 1)  # the highest sequence or lease handed out

    # -- lookups ---------------------------------------------------------------------------
    def is_live(self, job_id: str) -> bool:
        """Whether the job is queued, scheduled or running (resident or not)."""
        if job_id in self.ready or job_id in self._eta:
            return True
        job = self.jobs.get(job_id)
        return job is not None and job.state not in FINAL_STATES

    def holder(self, job: JobRecord) -> str | None:
        """The id of the job already stored as ``job`` (resident or live), or of the live
        job holding its unique key: what an insert of ``job`` must return instead."""
        if job.id in self.jobs or self.is_live(job.id):
            return job.id
        if job.unique_key is not None:
            return self._unique.get(job.unique_key)
        return None

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
        self._recount(job.state, job.queue, job.task, job.priority, 1)
        if job.unique_key is not None and job.state not in FINAL_STATES:
            self._unique[job.unique_key] = job.id
        self._place(job, front=False)
        self._count(events)
        if job.state is JobState.WAITING:
            self._depend(job, True)

    def _depend(self, job: JobRecord, on: bool) -> None:
        for dep in job.depends_on:
            if on:
                self._dependants.setdefault(dep, set()).add(job.id)
            elif (waiting := self._dependants.get(dep)) is not None:
                waiting.discard(job.id)
                if not waiting:
                    del self._dependants[dep]

    def waiting_on(self, ids: Iterable[str]) -> list[str]:
        """Ids of the waiting jobs that depend on any of ``ids`` (each once)."""
        out: dict[str, None] = {}
        for dep in ids:
            out.update(dict.fromkeys(sorted(self._dependants.get(dep, ()))))
        return list(out)

    def apply(self, t: Transition) -> JobRecord | None:
        """Apply ``t`` if the resident job is still at ``t.old``'s version."""
        old, new = self.jobs.get(t.old.id), t.new
        if old is None or old.version != t.old.version:
            return None
        if new.state is not old.state and new.state not in TRANSITIONS[old.state]:
            raise IllegalTransition(  # only a hand-made transition gets here: a bug
                f"job {old.id} cannot go from {old.state.value} to {new.state.value}"
            )
        self.jobs[new.id] = new
        if old.state is not new.state or old.queue != new.queue:
            self._recount(old.state, old.queue, old.task, old.priority, -1)
            self._recount(new.state, new.queue, new.task, new.priority, 1)
            if old.state is JobState.QUEUED:
                self.ready.discard(old.id)  # a claim already took it: then this is a no-op
            elif old.state is JobState.SCHEDULED:
                self._eta.pop(old.id, None)
            self._place(new, t.front)
            self._hold_key(old, new)
            if old.state is JobState.WAITING:
                self._depend(old, False)
        self._count(t.events)
        return new

    def _place(self, job: JobRecord, front: bool) -> None:
        if job.state is JobState.QUEUED:
            seq = next(self._front) if front else next(self._seq)
            if seq > 0:
                self.high_water = seq
            self.ready.push(job.id, job.queue, job.task, job.priority, seq, job.concurrency_key)
        elif job.state is JobState.SCHEDULED:
            eta = job.eta or 0.0
            self._eta[job.id] = eta
            heapq.heappush(self._scheduled, (eta, job.id))

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

    def _recount(self, state: JobState, queue: str, task: str, priority: int, n: int) -> None:
        key = (state, queue, task, priority)
        self.counts[key] += n
        if not self.counts[key]:
            del self.counts[key]
        self.deltas[key] += n

    def remove(self, job: JobRecord, *, uncount: bool = True) -> None:
        """Forget a finished job: deleted (``uncount``), or only evicted from memory."""
        if self.jobs.get(job.id) is job:
            del self.jobs[job.id]
        if uncount:
            self._recount(job.state, job.queue, job.task, job.priority, -1)
        if job.state is JobState.WAITING:
            self._depend(job, False)

    def uncount(self, state: JobState, queue: str, task: str, priority: int, n: int = 1) -> None:
        """Jobs deleted where the engine has counted the deletion already (SQL)."""
        key = (state, queue, task, priority)
        self.counts[key] -= n
        if not self.counts[key]:
            del self.counts[key]

    def take_deltas(self) -> Counter[CountKey]:
        """The count changes since the last call (for the engine to persist with them)."""
        deltas, self.deltas = self.deltas, Counter()
        return deltas

    # -- resident records ------------------------------------------------------------------
    def evict(self, job: JobRecord) -> bool:
        """Drop a queued or scheduled job's record; its index entries stay. False if the
        record is not this one any more, or the job is in another state."""
        if self.jobs.get(job.id) is not job or job.state not in (
            JobState.QUEUED,
            JobState.SCHEDULED,
        ):
            return False
        del self.jobs[job.id]
        return True

    def restore(self, job: JobRecord) -> JobRecord:
        """Make a record read back from the engine resident again (memory wins: a resident
        record is never older than what the engine has)."""
        return self.jobs.setdefault(job.id, job)

    # -- picking work ----------------------------------------------------------------------
    def pop_ready(self, claimant: Claimant, limit: int) -> list[str]:
        """Ids of the most urgent queued jobs the claimant can run, out of the ready index
        (records not resident must be restored before the claims are applied)."""
        queues = self._queues_of(claimant)
        gate = claimant.gate
        if gate is None:
            return self.ready.pop(queues, claimant.tasks, limit)
        freed = gate.freed()
        if freed is None or freed:
            self.ready.unpark(freed)
        return self.ready.pop(queues, claimant.tasks, limit, gate.admit)

    def upcoming(self, claimant: Claimant, limit: int) -> list[str]:
        """Ids :meth:`pop_ready` would give this claimant next, left in the index."""
        return self.ready.peek(self._queues_of(claimant), claimant.tasks, limit)

    def _queues_of(self, claimant: Claimant) -> tuple[str, ...]:
        """The claimant's queues and UNROUTED, the same tuple each time it asks with the
        same queues (so the ready index knows its view by identity)."""
        queues = claimant.queues
        if type(queues) is not tuple:
            return (*queues, UNROUTED)
        known = self._offers.get(id(queues))
        if known is not None and known[0] is queues:
            return known[1]
        if len(self._offers) >= 256:
            self._offers.clear()
        full = (*queues, UNROUTED)
        self._offers[id(queues)] = (queues, full)
        return full

    def pop_due(self, now: float) -> list[str]:
        """Ids of scheduled jobs whose eta has come, out of the ETA index."""
        due: list[str] = []
        while self._scheduled and self._scheduled[0][0] <= now:
            eta, job_id = heapq.heappop(self._scheduled)
            if self._eta.get(job_id) == eta:
                del self._eta[job_id]
                due.append(job_id)
        return due

    def next_eta(self) -> float | None:
        while self._scheduled:
            eta, job_id = self._scheduled[0]
            if self._eta.get(job_id) == eta:
                return eta
            heapq.heappop(self._scheduled)
        return None

    # -- restoring (SQLite at open) --------------------------------------------------------
    def load(self, job: JobRecord) -> None:
        """Put back a running or waiting job read from disk (resident); call
        :meth:`loaded` after."""
        self.jobs[job.id] = job
        if job.unique_key is not None:
            self._unique[job.unique_key] = job.id
        if job.state is JobState.WAITING:
            self._depend(job, True)

    def load_waiting(
        self,
        job_id: str,
        state: JobState,
        queue: str,
        task: str,
        priority: int,
        seq: int | None,
        eta: float | None,
        unique_key: str | None,
        concurrency_key: str | None = None,
    ) -> None:
        """Index a queued or scheduled job read from disk, without its record."""
        if unique_key is not None:
            self._unique[unique_key] = job_id
        if state is JobState.QUEUED:
            seq = next(self._seq) if seq is None else seq
            self.ready.load(job_id, queue, task, priority, seq, concurrency_key)
        else:
            self._eta[job_id] = eta or 0.0
            self._scheduled.append((eta or 0.0, job_id))

    def loaded(self) -> None:
        self.ready.heapify()
        heapq.heapify(self._scheduled)

    # -- numbers ---------------------------------------------------------------------------
    def waiting(self) -> dict[tuple[str, str], int]:
        """Queued job counts by (queue, task)."""
        out: Counter[tuple[str, str]] = Counter()
        for (state, queue, task, _), n in self.counts.items():
            if state is JobState.QUEUED and n:
                out[queue, task] += n
        return dict(out)

    def stats_brief(self) -> dict[str, Any]:
        """``states`` and ``totals`` alone (the by-state sum is over the count keys, not
        grouped three ways into maps)."""
        states = dict.fromkeys((s.value for s in JobState), 0)
        for (state, _, _, _), n in self.counts.items():
            states[state.value] += n
        return {"states": states, "totals": dict(self.totals)}

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
        out["waiting_for_key"] = self.ready.waiting_for_key()
        for name, groups in by.items():
            ordered = sorted(groups.items(), key=lambda kv: (len(kv[0]), kv[0]))  # "2" < "10"
            out[name] = {key: dict(counts) for key, counts in ordered}
        return out
