"""``sqlite:///path``: the durable embedded engine (the default).

Theory of operation
-------------------
Live jobs (queued, scheduled, running) are kept in a :class:`~conveyor.stores._live.LiveJobs`
(the same index the memory engine uses, composed here, not inherited), so claims never
touch the disk; the database is the truth. Every change is staged for a single writer
thread (:mod:`conveyor.stores.sql.sqlite_writer`) which writes the batch in one
transaction and commits: *group commit*. New jobs are inserted whole; a state change is a
narrow UPDATE of the changed columns (never the payload); events are appended to their own
table. A method whose result is acknowledged to a client awaits that commit; claims and
promotions do not (a lost claim is simply run again), but ride along in the next commit.

A finished job (completed, cancelled, dead) leaves memory once its row is committed,
keeping only the last :data:`RECENT` of them for quick reads; anything older is read from
the database, on the writer thread, after the pending changes are committed.

At :meth:`open` the live jobs come back into the index in their original order; the jobs
that were running when the broker stopped are returned, for the broker to requeue.

Durability: WAL with ``synchronous=NORMAL`` by default. A commit is then safe against a
crash of the process (kill -9), which is what an acknowledgement promises; an OS crash
or power loss may lose the last commits. ``?synchronous=full`` syncs the WAL on every
commit and survives power loss, at the cost of one fsync per group commit. The database
is locked for exclusive use: one broker per file (several brokers share PostgreSQL).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from conveyor import lifecycle
from conveyor.errors import ConfigError
from conveyor.job import PRUNABLE_STATES, Event, JobRecord, JobState
from conveyor.lifecycle import Transition
from conveyor.stores._live import LiveJobs
from conveyor.stores.base import Claimant, Inserted, JobFilter, Page, Store
from conveyor.stores.sql.sqlite_jobs import (
    Batch,
    Snapshot,
    delete_dead,
    fetch_events,
    fetch_jobs,
    get_meta,
    list_jobs,
    load_snapshot,
    new_connection_setup,
    prune_chunk,
    select_dead,
    set_meta,
    write_batch,
)
from conveyor.stores.sql.sqlite_schema import migrate
from conveyor.stores.sql.sqlite_writer import GroupCommitWriter

RECENT = 4096  # finished jobs kept in memory after their commit, for quick job_get
PRUNE_CHUNK = 10_000  # rows deleted per transaction, so commits keep flowing meanwhile
#: A restart skips this many sequence numbers, so that a lease handed out in the last
#: moments before a crash (never committed) is not handed out again for the same job.
RESTART_GAP = 1 << 32
SYNCHRONOUS = ("normal", "full", "extra")
LOCK_TIMEOUT = 2.0  # seconds to wait for a broker that is still letting go of the file
SEQ_HWM = "seq_hwm"  # counters row: the highest sequence/lease number given out


def parse_sqlite_url(url: str) -> tuple[str, str]:
    """``sqlite:///rel/path.db`` or ``sqlite:////abs/path.db`` → (path, synchronous)."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or len(parts.path) < 2:
        raise ConfigError(
            f"bad SQLite store URL {url!r}: use sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db"
        )
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    synchronous = options.pop("synchronous", "normal").lower()
    if synchronous not in SYNCHRONOUS:
        raise ConfigError(
            f"bad SQLite store URL {url!r}: synchronous must be normal, full or extra"
        )
    if options:
        raise ConfigError(f"bad SQLite store URL {url!r}: unknown option {next(iter(options))}")
    return unquote(parts.path[1:]), synchronous


def connect(path: str, synchronous: str) -> sqlite3.Connection:
    """Open (creating) the database for exclusive use, in WAL mode, migrated."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=LOCK_TIMEOUT, isolation_level=None)
    try:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")  # before WAL: no shared memory
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA cache_size = -65536")  # 64 MiB
        migrate(conn)
        new_connection_setup(conn)
        conn.execute("BEGIN IMMEDIATE")  # take the exclusive lock now, not at first write
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        conn.close()
        if "locked" in str(exc):
            raise ConfigError(f"{path} is in use by another process (another broker?)") from exc
        raise ConfigError(f"cannot open the SQLite store {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


class SqliteStore(Store):
    """Memory index for speed, SQLite for truth; see the module docstring."""

    durable = True

    def __init__(self, url: str, *, recent: int = RECENT) -> None:
        self.url = url
        self.path, self.synchronous = parse_sqlite_url(url)
        self.live = LiveJobs()
        self._writer: GroupCommitWriter[Batch, list[JobRecord]] = GroupCommitWriter(
            partial(connect, self.path, self.synchronous), Batch, write_batch, self._evict
        )
        self._recent: OrderedDict[str, JobRecord] = OrderedDict()
        self._recent_max = recent
        self._admin = asyncio.Lock()  # dlq and retention read, then change: one at a time

    @property
    def commits(self) -> int:
        """Transactions committed so far (group commit: far fewer than changes)."""
        return self._writer.commits

    # -- staging -------------------------------------------------------------------------
    def _stage(
        self, changes: Sequence[tuple[JobRecord, Sequence[Event]]], new: bool = False
    ) -> None:
        live = self.live
        with self._writer.staging() as batch:
            add = batch.insert if new else batch.update
            for job, events in changes:
                add(job, live.seq_of(job.id), events)
            batch.counters = {**live.totals, SEQ_HWM: live.high_water}

    def _evict(self, finals: list[JobRecord]) -> None:
        """After a commit: finished jobs leave memory unless they changed since."""
        jobs = self.live.jobs
        for job in finals:
            if jobs.get(job.id) is job:
                del jobs[job.id]
                self._recent[job.id] = job
        while len(self._recent) > self._recent_max:
            self._recent.popitem(last=False)

    # -- open and close ------------------------------------------------------------------
    async def open(self, now: float) -> list[JobRecord]:
        """Load live jobs into the index; return those that were running, oldest first."""
        await self._writer.start()
        snapshot = await self._writer.call(load_snapshot)
        running = self._restore(snapshot)
        # Stage the counters even when nothing changes: the lease high-water mark (raised
        # by the restart gap) must be on disk before any new lease is handed out.
        self._stage([])
        await self._writer.durable()
        return running

    def _restore(self, snapshot: Snapshot) -> list[JobRecord]:
        seqs = [seq for _, seq in snapshot.active if seq is not None]
        leases = [job.lease or 0 for job, _ in snapshot.active]
        hwm = max([snapshot.counters.get(SEQ_HWM, 0), *seqs, *leases])
        start = hwm + RESTART_GAP + 1 if hwm else 1
        live = self.live = LiveJobs(start, min([0, *seqs]) - 1)
        for state, queue, task, priority, n in snapshot.counts:
            live.counts[JobState(state), queue, task, priority] += n
        for name, value in snapshot.counters.items():
            if name != SEQ_HWM:
                live.totals[name] = value
        running: list[tuple[int, JobRecord]] = []
        for job, seq in snapshot.active:
            live.load(job, seq)
            if job.state is JobState.RUNNING:
                running.append((seq or 0, job))
        live.loaded()
        running.sort(key=lambda item: (item[1].priority, item[0]))
        return [job for _, job in running]

    async def close(self) -> None:
        """Commit everything staged, then close the database."""
        await self._writer.close()

    # -- writes --------------------------------------------------------------------------
    async def job_insert_many(self, jobs: Sequence[tuple[JobRecord, Event]]) -> list[Inserted]:
        known = self.live.jobs
        missing = [j.id for j, _ in jobs if j.id not in known and j.id not in self._recent]
        # A client-chosen id may name a finished job that lives only on disk.
        on_disk = {j.id: j for j in await self._writer.call(fetch_jobs, missing)} if missing else {}
        out: list[Inserted] = []
        added: list[tuple[JobRecord, Sequence[Event]]] = []
        for job, first in jobs:
            existing = self.live.existing(job) or self._recent.get(job.id) or on_disk.get(job.id)
            if existing is not None:
                out.append(Inserted(existing, False))
                continue
            self.live.add(job, (first,))
            added.append((job, (first,)))
            out.append(Inserted(job, True))
        self._stage(added, new=True)
        await self._writer.durable()
        return out

    async def job_claim(
        self, claimant: Claimant, limit: int, lease_seconds: float, now: float
    ) -> list[JobRecord]:
        changes: list[tuple[JobRecord, Sequence[Event]]] = []
        live = self.live
        for job in live.pop_ready(claimant, limit):
            t = lifecycle.claim(
                job,
                claimant.worker,
                live.next_lease(),
                lease_seconds,
                now,
                claimant.options.get(job.task),
                claimant.route(job.task),
            )
            new = live.apply(t)
            assert new is not None, "a job picked from the index changed under us"
            changes.append((new, t.events))
        if changes:
            self._stage(changes)
        return [job for job, _ in changes]

    async def job_promote_due(self, now: float) -> list[JobRecord]:
        changes: list[tuple[JobRecord, Sequence[Event]]] = []
        for job in self.live.pop_due(now):
            t = lifecycle.promote(job, now)
            new = self.live.apply(t)
            assert new is not None
            changes.append((new, t.events))
        if changes:
            self._stage(changes)
        return [job for job, _ in changes]

    async def job_apply(
        self, transitions: Sequence[Transition], *, durable: bool = True
    ) -> list[JobRecord | None]:
        await self._load_for(transitions)
        out: list[JobRecord | None] = []
        changes: list[tuple[JobRecord, Sequence[Event]]] = []
        for t in transitions:
            new = self.live.apply(t)
            out.append(new)
            if new is not None:
                self._recent.pop(new.id, None)
                changes.append((new, t.events))
        if changes:
            self._stage(changes)
        if durable:
            await self._writer.durable()
        return out

    async def _load_for(self, transitions: Sequence[Transition]) -> None:
        """Jobs changed from a state read off disk (a dead job's DLQ retry) come back into
        memory first, at the version the database has now, so the change stays conditional."""
        away = [t.old.id for t in transitions if t.old.id not in self.live.jobs]
        if not away:
            return
        for job in await self._writer.call(fetch_jobs, away):
            if job.id not in self.live.jobs:  # memory wins: it is never older than the row
                self.live.jobs[job.id] = job

    async def dlq_purge(self, ids: Sequence[str] | None) -> int:
        async with self._admin:
            # The writer commits what is staged first, so the DELETE also removes dead jobs
            # still in memory; their eviction ran before this call returns.
            removed = await self._writer.call(delete_dead, ids)
            for (queue, task, priority), n in removed.items():
                self.live.uncount(JobState.DEAD, queue, task, priority, n)
            wanted = None if ids is None else set(ids)
            for job in [*self.live.jobs.values(), *self._recent.values()]:
                if job.state is JobState.DEAD and (wanted is None or job.id in wanted):
                    self.live.remove(job, uncount=False)
                    self._recent.pop(job.id, None)
            return sum(removed.values())

    async def job_prune(self, finished_before: float) -> int:
        async with self._admin:
            total = 0
            while True:
                removed = await self._writer.call(prune_chunk, finished_before, PRUNE_CHUNK)
                for (state, queue, task, priority), n in removed.items():
                    self.live.uncount(state, queue, task, priority, n)
                total += sum(removed.values())
                if sum(removed.values()) < PRUNE_CHUNK:
                    break
            for job_id, job in list(self._recent.items()):
                if job.state in PRUNABLE_STATES and (job.finished_at or 0.0) < finished_before:
                    del self._recent[job_id]
            return total

    # -- settings ------------------------------------------------------------------------
    async def meta_get(self, name: str) -> Any:
        return await self._writer.call(get_meta, name)

    async def meta_set(self, name: str, value: Any) -> None:
        await self._writer.call(set_meta, name, value)

    # -- reads ---------------------------------------------------------------------------
    def _in_memory(self, job_id: str) -> JobRecord | None:
        return self.live.jobs.get(job_id) or self._recent.get(job_id)

    async def job_get(self, job_id: str) -> JobRecord | None:
        job = self._in_memory(job_id)
        if job is not None:
            return job
        found = await self._writer.call(fetch_jobs, [job_id])
        # memory wins if the job came back meanwhile (dlq retry)
        return self._in_memory(job_id) or next(iter(found), None)

    async def job_get_many(self, ids: Sequence[str]) -> list[JobRecord]:
        unique = list(dict.fromkeys(ids))
        missing = [i for i in unique if self._in_memory(i) is None]
        on_disk = {j.id: j for j in await self._writer.call(fetch_jobs, missing)} if missing else {}
        out = []
        for job_id in unique:
            job = self._in_memory(job_id) or on_disk.get(job_id)
            if job is not None:
                out.append(job)
        return out

    async def job_events(self, job_id: str) -> list[Event]:
        return await self._writer.call(fetch_events, job_id)

    async def job_dead(self, ids: Sequence[str] | None) -> list[JobRecord]:
        found = await self._writer.call(select_dead, ids)
        return [self.live.jobs.get(j.id, j) for j in found]

    async def job_list(
        self, where: JobFilter, limit: int = 100, cursor: str | None = None, offset: int = 0
    ) -> Page:
        terms: list[tuple[str, Any]] = []
        if where.state is not None:
            terms.append(("state = ?", where.state.value))
        for column in ("queue", "task", "worker", "priority"):
            value = getattr(where, column)
            if value is not None:
                terms.append((f"{column} = ?", value))
        if where.id_prefix is not None:  # a range scan of the primary key
            terms.append(("id >= ?", where.id_prefix))
            terms.append(("id < ?", where.id_prefix + "\U0010ffff"))
        before = int(cursor) if cursor else None
        jobs, last = await self._writer.call(list_jobs, terms, limit, before, offset)
        return Page(jobs, None if last is None else str(last))

    async def job_next_eta(self) -> float | None:
        return self.live.next_eta()

    async def queue_waiting(self) -> dict[tuple[str, str], int]:
        return self.live.ready.waiting()

    async def stats(self) -> dict[str, Any]:
        return self.live.stats()
