"""``sqlite:///path``: the durable embedded engine (the default).

Theory of operation
-------------------
The database is the truth. In memory the engine keeps a
:class:`~conveyor.stores._live.LiveJobs` (the index the memory engine uses, composed
here): every live job's index entry, and the records of running jobs, of jobs with
changes not yet committed, and of as many committed queued and scheduled jobs as
:data:`RESIDENT_BYTES` allows. A queue of millions therefore costs a compact index (about
220 bytes a job), and a claim of a job whose record is not resident reads it back, in one
query for the whole claim, on a reader thread.

Every change is staged for a single writer thread
(:mod:`conveyor.stores.sql.sqlite_writer`) which writes the batch in one transaction and
commits: *group commit*. New jobs are inserted whole (a payload of 64 KiB or more as a
file of its own beside the database, written once:
:mod:`conveyor.stores.sql.sqlite_payloads`, since SQLite rewrites the whole row on any
UPDATE); a state change is a narrow UPDATE of the changed columns; events are appended
to their own table; the job counts are added up in the same transaction. A method whose
result is acknowledged to a client awaits that commit; claims and promotions do not (a
lost claim is simply run again), but ride along in the next one.

Reads that miss memory run on reader threads (:mod:`conveyor.stores.sql.sqlite_readers`),
never between the writer's commits, so a heavy listing cannot stall submits and reports;
the read methods are :class:`~conveyor.stores.sql.sqlite_reads.SqliteReads`.
A finished job leaves memory once its row is committed, keeping the last ones (within
:data:`RECENT` jobs and :data:`RECENT_BYTES`) for quick reads of a result.

At :meth:`open` the live index is rebuilt from the live rows and the stored counts (never
by counting the history: :mod:`conveyor.stores.sql.sqlite_open`); the jobs that were
running when the broker stopped are returned, for the broker to requeue.

Durability: WAL with ``synchronous=NORMAL`` by default. A commit is then safe against a
crash of the process (kill -9), which is what an acknowledgement promises; an OS crash
or power loss may lose the last commits. ``?synchronous=full`` syncs the WAL on every
commit and survives power loss, at the cost of one fsync per group commit. One broker
per file: the engine holds an exclusive lock on ``<path>.lock`` while open (several
brokers share PostgreSQL). The database and its WAL are created readable by their owner
only (0600).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from functools import partial
from typing import Any

from conveyor import lifecycle
from conveyor.job import FINAL_STATES, PRUNABLE_STATES, Event, JobRecord, JobState
from conveyor.lifecycle import Transition
from conveyor.stores._bounded import BoundedRecords
from conveyor.stores._live import LiveJobs
from conveyor.stores.base import Claimant, Inserted, Store
from conveyor.stores.sql.sqlite_checkpoint import Checkpointer
from conveyor.stores.sql.sqlite_jobs import (
    Batch,
    delete_dead,
    get_meta,
    load_live,
    payload_file_names,
    prune_chunk,
    set_meta,
    write_batch,
)
from conveyor.stores.sql.sqlite_open import (
    SEQ_HWM,
    connect,
    connect_checkpointer,
    lock_database,
    new_live,
    parse_sqlite_url,
)
from conveyor.stores.sql.sqlite_payloads import FILE_MIN, PayloadFiles
from conveyor.stores.sql.sqlite_readers import ReaderPool
from conveyor.stores.sql.sqlite_reads import WAITING, SqliteReads
from conveyor.stores.sql.sqlite_writer import GroupCommitWriter

RECENT = 4096  # finished jobs kept in memory after their commit, for quick job_get
RECENT_BYTES = 64 << 20  # ... and at most this many bytes of them
#: committed queued and scheduled records kept in memory, so that claims of a short
#: queue never read the disk; beyond this only their index entries stay
RESIDENT = 50_000
RESIDENT_BYTES = 16 << 20
#: a claim that has to read records from disk also reads this many that come next
READ_AHEAD = 512
PRUNE_CHUNK = 10_000  # rows deleted per transaction, so commits keep flowing meanwhile


class SqliteStore(SqliteReads, Store):
    """A compact index in memory, SQLite for truth; see the module docstring. The writes
    are here, the reads in :class:`SqliteReads`."""

    durable = True

    def __init__(
        self,
        url: str,
        *,
        recent: int = RECENT,
        recent_bytes: int = RECENT_BYTES,
        resident: int = RESIDENT,
        resident_bytes: int = RESIDENT_BYTES,
        payload_file_min: int = FILE_MIN,
    ) -> None:
        self.url = url
        self.path, self.synchronous = parse_sqlite_url(url)
        self.live = LiveJobs()
        # large payloads are files written once (sqlite_payloads); fsynced as the WAL is
        self.payload_files = PayloadFiles.beside(
            self.path, self.synchronous != "normal", payload_file_min
        )
        self._writer: GroupCommitWriter[Batch, list[JobRecord]] = GroupCommitWriter(
            partial(connect, self.path, self.synchronous),
            Batch,
            partial(write_batch, files=self.payload_files),
            self._committed,
            # with synchronous=full a commit waits for the disk: never on the loop
            inline=self.synchronous == "normal",
            after_commit=self._poke_checkpointer,
        )
        self._checkpointer: Checkpointer | None = None
        self._readers: ReaderPool | None = None  # None for ":memory:": reads on the writer
        self._lock: int | None = None
        self._recent = BoundedRecords(recent, recent_bytes, drop="oldest")
        self._waiting = BoundedRecords(resident, resident_bytes, drop="newest")
        self._admin = asyncio.Lock()  # dlq and retention read, then change: one at a time

    @property
    def commits(self) -> int:
        """Transactions committed so far (group commit: far fewer than changes)."""
        return self._writer.commits

    @property
    def health(self) -> dict[str, Any]:
        """Whether the store can write now, and if not why and since when."""
        return self._writer.health()

    # -- staging -------------------------------------------------------------------------
    def _stage(
        self, changes: Sequence[tuple[JobRecord, Sequence[Event]]], new: bool = False
    ) -> None:
        live = self.live
        files = self.payload_files
        with self._writer.staging() as batch:
            for job, events in changes:
                if not new:
                    batch.update(job, live.seq_of(job.id), events)
                elif files.wants(job.payload):
                    batch.insert(job, live.seq_of(job.id), events, files.new_name())
                else:
                    batch.insert(job, live.seq_of(job.id), events)
            batch.counters = {**live.totals, SEQ_HWM: live.high_water}
            batch.deltas.update(live.take_deltas())

    def _committed(self, written: list[JobRecord]) -> None:
        """After a commit: finished jobs leave memory for the recent cache, and queued or
        scheduled ones beyond the resident budget leave it altogether (their index entries
        stay). A record that changed since it was written waits for its own commit."""
        jobs = self.live.jobs
        for job in written:
            if jobs.get(job.id) is not job:
                continue
            if job.state in FINAL_STATES:
                del jobs[job.id]
                self._recent.put(job)
            elif job.state in WAITING:
                for dropped in self._waiting.put(job):
                    self.live.evict(dropped)

    # -- open and close ------------------------------------------------------------------
    async def open(self, now: float) -> list[JobRecord]:
        """Load live jobs into the index; return those that were running, oldest first."""
        if self.path != ":memory:":
            self._lock = lock_database(self.path)
        try:
            await self._writer.start()
        except BaseException:
            self._unlock()
            raise
        if self.path != ":memory:":
            self._readers = ReaderPool(self.path)
            self._checkpointer = Checkpointer(
                partial(connect_checkpointer, self.path, self.synchronous),
                self.path,
                self._writer.hold,
            )
            self._checkpointer.start()
        self.live, running = await self._writer.call(load_live, new_live, self.payload_files)
        # nothing is staged yet, so every file that no row names is a crash's leftover
        named = await self._writer.call(payload_file_names)
        await asyncio.to_thread(self.payload_files.sweep, named)
        # Stage the counters even when nothing changes: the lease high-water mark (raised
        # by the restart gap) must be on disk before any new lease is handed out.
        self._stage([])
        await self._writer.durable()
        running.sort(key=lambda job: (job.priority, job.lease or 0))
        return running

    async def close(self) -> None:
        """Commit everything staged, then close the database."""
        try:
            await self._writer.close()
            if self._checkpointer is not None:
                await asyncio.to_thread(self._checkpointer.close)
            if self._readers is not None:
                await self._readers.close()
        finally:
            self._unlock()

    def _poke_checkpointer(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.poke()

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # -- writes --------------------------------------------------------------------------
    async def job_insert_many(
        self, jobs: Sequence[tuple[JobRecord, Event]], *, durable: bool = True
    ) -> list[Inserted]:
        live = self.live
        want: list[str] = []
        for job, _ in jobs:
            holder = live.holder(job) or job.id  # a finished job may live only on disk
            if self._in_memory(holder) is None:
                want.append(holder)
        on_disk = {j.id: j for j in await self._fetch(want)} if want else {}
        out: list[Inserted] = []
        added: list[tuple[JobRecord, Sequence[Event]]] = []
        for job, first in jobs:
            holder = live.holder(job) or job.id  # again: the read above let others run
            existing = self._in_memory(holder) or on_disk.get(holder)
            if existing is not None:
                out.append(Inserted(existing, False))
                continue
            live.add(job, (first,))
            added.append((job, (first,)))
            out.append(Inserted(job, True))
        self._stage(added, new=True)
        if durable:
            await self._writer.durable()
        return out

    async def job_claim(
        self, claimant: Claimant, limit: int, lease_seconds: float, now: float
    ) -> list[JobRecord]:
        live = self.live
        ids = live.pop_ready(claimant, limit)
        if not ids:
            return []
        for job_id in ids:  # out of the resident budget: they are being claimed
            self._waiting.pop(job_id)
        if any(job_id not in live.jobs for job_id in ids):
            # Deep in a queue the records are on disk: read the claimant's next ones in
            # the same query, so that the claims after this one find them in memory.
            await self._make_resident(ids, live.upcoming(claimant, READ_AHEAD))
        changes: list[tuple[JobRecord, Sequence[Event]]] = []
        for job_id in ids:
            job = live.jobs.get(job_id)
            if job is None or job.state is not JobState.QUEUED:
                continue  # cancelled while its record was read back
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
            if new is not None:
                changes.append((new, t.events))
        if changes:
            self._stage(changes)
        return [job for job, _ in changes]

    async def job_promote_due(self, now: float) -> list[JobRecord]:
        live = self.live
        ids = live.pop_due(now)
        if not ids:
            return []
        await self._make_resident(ids)
        changes: list[tuple[JobRecord, Sequence[Event]]] = []
        for job_id in ids:
            job = live.jobs.get(job_id)
            if job is None or job.state is not JobState.SCHEDULED:
                continue
            t = lifecycle.promote(job, now)
            new = live.apply(t)
            if new is not None:
                self._waiting.pop(job_id)
                changes.append((new, t.events))
        if changes:
            self._stage(changes)
        return [job for job, _ in changes]

    async def job_apply(
        self, transitions: Sequence[Transition], *, durable: bool = True
    ) -> list[JobRecord | None]:
        # Jobs not in memory (evicted, or finished and read off disk for a DLQ retry) come
        # back first, at the version the database has, so the change stays conditional.
        await self._make_resident([t.old.id for t in transitions])
        out: list[JobRecord | None] = []
        changes: list[tuple[JobRecord, Sequence[Event]]] = []
        for t in transitions:
            new = self.live.apply(t)
            out.append(new)
            if new is not None:
                self._recent.pop(new.id)
                self._waiting.pop(new.id)
                changes.append((new, t.events))
        if changes:
            self._stage(changes)
        if durable:
            await self._writer.durable()
        return out

    async def flush(self) -> None:
        await self._writer.durable()

    async def dlq_purge(self, ids: Sequence[str] | None) -> int:
        async with self._admin:
            # The writer commits what is staged first, so the DELETE also removes dead jobs
            # still in memory; their eviction ran before this call returns.
            removed, names = await self._writer.call(delete_dead, ids)
            await asyncio.to_thread(self.payload_files.delete, names)  # committed: now
            for (queue, task, priority), n in removed.items():
                self.live.uncount(JobState.DEAD, queue, task, priority, n)
            wanted = None if ids is None else set(ids)
            for job in [*self.live.jobs.values(), *self._recent]:
                if job.state is JobState.DEAD and (wanted is None or job.id in wanted):
                    self.live.remove(job, uncount=False)
                    self._recent.pop(job.id)
            return sum(removed.values())

    async def job_prune(self, finished_before: float) -> int:
        async with self._admin:
            total = 0
            while True:
                removed, names = await self._writer.call(prune_chunk, finished_before, PRUNE_CHUNK)
                if names:  # the rows' deletion is committed: now their files
                    await asyncio.to_thread(self.payload_files.delete, names)
                for (state, queue, task, priority), n in removed.items():
                    self.live.uncount(state, queue, task, priority, n)
                total += sum(removed.values())
                if sum(removed.values()) < PRUNE_CHUNK:
                    break
            for job in self._recent:
                if job.state in PRUNABLE_STATES and (job.finished_at or 0.0) < finished_before:
                    self._recent.pop(job.id)
            return total

    # -- settings ------------------------------------------------------------------------
    async def meta_get(self, name: str) -> Any:
        return await self._read_fresh(get_meta, name)

    async def meta_set(self, name: str, value: Any) -> None:
        await self._writer.call(set_meta, name, value)
