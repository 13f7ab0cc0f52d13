"""Concurrency limits per key: at most N running jobs share a ``concurrency_key``.

Theory of operation
-------------------
A job may carry a concurrency key (``submit(..., concurrency_key="domain:x")``). Its
limit is the broker's, for the longest key prefix set there (``conveyor limits set
key:domain: 2``), else its task's own (``@task(concurrency_limit=2)``); a key with no
limit is not limited. The count is per key, across tasks: each job is checked against its
own limit.

The :class:`ConcurrencyGate` is the store's :class:`~conveyor.stores.base.KeyGate`: the
dispatcher hands it to every claim. A claim :meth:`~ConcurrencyGate.admit`\\ s a keyed job
only while the key's running jobs plus the ones reserved in this claim stay below its
limit; after the claim :meth:`~ConcurrencyGate.settle` turns the reservations into running
jobs (those actually claimed) and frees the rest. When a job holding a key stops running
(reported, requeued, lost), the core calls :meth:`~ConcurrencyGate.release`: the slot is
free and the next claim gets that key back from :meth:`~ConcurrencyGate.freed`, so the
engine puts back that many of the jobs it had set aside. Nothing polls: a refused job is
looked at again only when a slot of its key frees.

Those counts live in this broker's memory, which is the whole truth when one broker owns
the store (memory, SQLite). A store several brokers share (PostgreSQL) counts running jobs
per key in its database instead, with every broker's claims: it asks
:meth:`~ConcurrencyGate.key_limits` for the limits and never calls ``admit`` (see
:mod:`conveyor.stores.sql.pg_limits`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from conveyor.job import JobRecord
from conveyor.stores.base import KeyLimits

TaskLimit = Callable[[str], int | None]  # task -> its declared concurrency_limit


class ConcurrencyGate:
    """Running jobs per concurrency key, and whether one more may start."""

    def __init__(self, task_limit: TaskLimit | None = None) -> None:
        self.prefixes: dict[str, int] = {}  # key prefix -> limit, set on the broker
        self.task_limit: TaskLimit = task_limit or (lambda _task: None)
        self.running: Counter[str] = Counter()
        self.pending: Counter[str] = Counter()  # reserved by the claim in progress
        self._freed: Counter[str] = Counter()
        self._all_freed = False
        self._limits = KeyLimits()

    def configure(self, prefixes: Mapping[str, int], tasks: Mapping[str, int]) -> None:
        """The limits changed: per key prefix (set on the broker) and per task (declared)."""
        self.prefixes = dict(prefixes)
        self._limits = KeyLimits(dict(prefixes), dict(tasks))
        self.reconsider()

    def limit(self, task: str, key: str) -> int | None:
        """The limit a job of ``task`` with ``key`` runs under (None: unlimited)."""
        best: str | None = None
        for prefix in self.prefixes:
            if key.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        return self.prefixes[best] if best is not None else self.task_limit(task)

    # -- the KeyGate protocol (called by the store during a claim) ------------------------
    def admit(self, task: str, key: str) -> bool:
        limit = self.limit(task, key)
        if limit is not None and self.running[key] + self.pending[key] >= limit:
            return False
        self.pending[key] += 1
        return True

    def freed(self) -> Mapping[str, int] | None:
        if self._all_freed:
            self._all_freed = False
            self._freed.clear()
            return None
        if not self._freed:
            return _NONE
        freed, self._freed = self._freed, Counter()
        return freed

    def key_limits(self) -> KeyLimits:
        return self._limits

    # -- the broker's side ------------------------------------------------------------------
    def settle(self, claimed: Iterable[JobRecord]) -> None:
        """After a claim: its reservations become the jobs it claimed; the rest (a job
        cancelled while the claim read it back) are free again."""
        for job in claimed:
            key = job.concurrency_key
            if key is not None:
                self.running[key] += 1
                self.pending[key] -= 1
        for key, n in self.pending.items():
            if n > 0:
                self._freed[key] += n
        self.pending.clear()

    def release(self, key: str) -> None:
        """A job holding ``key`` stopped running."""
        n = self.running[key]
        if n <= 1:
            del self.running[key]  # never below 0: a job requeued at start was never counted
        else:
            self.running[key] = n - 1
        if n > 0:
            self._freed[key] += 1

    def reconsider(self) -> None:
        """Limits changed: every job set aside may be tried again."""
        self._all_freed = True


_NONE: Mapping[str, int] = {}
