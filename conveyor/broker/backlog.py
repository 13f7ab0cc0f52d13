"""Bounded queues: how many jobs wait in each queue, counted in O(1), and the limit on it.

Theory of operation
-------------------
A queue's *backlog* is its jobs that are ``queued``, ``scheduled`` (delayed, or waiting
for a retry) or ``waiting`` (for the jobs they depend on). :class:`Backlog` keeps one
counter per queue, loaded once from the store's counts when the broker opens
(``store.stats()``) and then moved by the core at every change it makes: a submit adds, a
claim or a cancel takes away, a requeue, a retry or a DLQ retry adds again. Nothing here
reads the store on the hot path.

A submit is *admitted* before it is stored: every job of the batch is counted at once
(synchronously, so two concurrent submits cannot both slip under the limit), and if any
queue would pass its limit the whole batch is refused with :class:`QueueFull` and nothing
is counted. Jobs that the store then returns as duplicates (same id, or a live unique
key) are given back, as is the whole batch if the store refuses it. Jobs that come back
to a queue (requeue, retry, DLQ retry) are never refused: they were accepted once, and a
limit is about new work, so a queue may sit above its limit for a while.

Unrouted jobs (queue ``""``: no worker ever declared a queue for their task) are counted
under ``""`` with the default limit. A claim gives an unrouted job its queue, so the
record that comes out of a claim no longer says where it was counted: the backlog keeps,
per task, how many unrouted jobs are ``queued``, and counts a claimed job of that task
whose new queue is the claimant's route as one of them while there are any (unrouted jobs
are older than the routed jobs of their task, so FIFO claims them first; the totals come
out exact once they are gone).

Each broker counts only what it does: several brokers sharing one database each see
their own submits, claims and cancels (docs/deploy.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from conveyor.errors import QueueFull
from conveyor.job import UNROUTED, JobRecord, JobState

WAITING = frozenset({JobState.QUEUED, JobState.SCHEDULED, JobState.WAITING})
"""The states a queue's limit counts (``waiting``: held until its dependencies complete)."""


class Backlog:
    """Queued + scheduled jobs per queue, and the limits on them (0 = unlimited)."""

    __slots__ = ("counts", "default", "limits", "refused", "unrouted")

    def __init__(self, default: int, limits: Mapping[str, int] | None = None) -> None:
        self.default = default
        self.limits = dict(limits or {})
        self.counts: Counter[str] = Counter()
        self.unrouted: Counter[str] = Counter()  # task -> its queued unrouted jobs
        self.refused = 0  # jobs refused with queue_full since the broker started

    def limit(self, queue: str) -> int:
        return self.limits.get(queue, self.default)

    def load(self, queues: Mapping[str, Mapping[str, int]], waiting: Mapping[Any, int]) -> None:
        """Start from the store's counts: ``stats()["queues"]`` and ``queue_waiting()``."""
        self.counts.clear()
        self.unrouted.clear()
        for queue, states in queues.items():
            n = sum(states.get(s.value, 0) for s in WAITING)
            if n:
                self.counts[queue] = n
        for (queue, task), n in waiting.items():
            if queue == UNROUTED and n:
                self.unrouted[task] = n

    # -- submits -------------------------------------------------------------------------
    def admit(self, jobs: Sequence[JobRecord]) -> Counter[str]:
        """Count a batch of new jobs, or refuse it whole (:class:`QueueFull`, nothing
        counted). Returns what was counted, per queue, for :meth:`settle`."""
        adding = Counter(job.queue for job in jobs)
        for queue, n in adding.items():
            limit = self.limit(queue)
            if limit and self.counts[queue] + n > limit:
                self.refused += len(jobs)
                raise QueueFull.of(queue, limit, self.counts[queue], n)
        self.counts.update(adding)
        return adding

    def settle(self, stored: Iterable[tuple[JobRecord, bool]]) -> None:
        """The store took the batch: give back the duplicates (``created`` False), and
        note the unrouted jobs that are queued. ``stored`` pairs each submitted job with
        whether the store created it."""
        for job, created in stored:
            if not created:
                self._sub(job.queue)
            elif job.queue == UNROUTED and job.state is JobState.QUEUED:
                self.unrouted[job.task] += 1

    def cancel(self, admitted: Counter[str]) -> None:
        """The store refused the batch: none of it is there."""
        for queue, n in admitted.items():
            self._sub(queue, n)

    # -- changes ---------------------------------------------------------------------------
    def moved(self, old: JobRecord, new: JobRecord) -> None:
        """A job changed from ``old`` to ``new`` (any move but claims and promotions)."""
        if old.state in WAITING:
            self._sub(old.queue)
            if old.queue == UNROUTED and old.state is JobState.QUEUED:
                self._sub_unrouted(old.task)
        if new.state in WAITING:
            self.counts[new.queue] += 1
            if new.queue == UNROUTED and new.state is JobState.QUEUED:
                self.unrouted[new.task] += 1

    def promoted(self, job: JobRecord) -> None:
        """A scheduled job became queued: same queue, same count."""
        if job.queue == UNROUTED:
            self.unrouted[job.task] += 1

    def claimed(self, job: JobRecord, route: str | None) -> None:
        """A queued job was claimed by a worker whose queue for its task is ``route``."""
        if route is not None and job.queue == route and self.unrouted[job.task] > 0:
            self._sub_unrouted(job.task)
            self._sub(UNROUTED)
        else:
            self._sub(job.queue)

    def _sub(self, queue: str, n: int = 1) -> None:
        left = self.counts[queue] - n
        if left > 0:
            self.counts[queue] = left
        else:
            del self.counts[queue]

    def _sub_unrouted(self, task: str) -> None:
        left = self.unrouted[task] - 1
        if left > 0:
            self.unrouted[task] = left
        else:
            del self.unrouted[task]

    def describe(self) -> dict[str, Any]:
        """For stats: the limits and how many jobs they refused."""
        return {"max_queued": self.default, "limits": dict(self.limits), "refused": self.refused}
