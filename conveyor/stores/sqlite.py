"""``sqlite:///path``: the durable embedded engine (the default).

Theory of operation
-------------------
The in-memory index inherited from :class:`MemoryStore` stays the scheduler, so claims
never touch the disk; the database is the truth. Every job that changes is staged for a
single writer thread (:mod:`conveyor.stores.sql.sqlite_writer`) which upserts the batch in
one transaction and commits: *group commit*. A method that acknowledges something awaits
that commit; claims, heartbeats and promotions do not (a lost claim is simply run again),
but their changes ride along in the next commit.

Live jobs (queued, scheduled, running) always stay in memory. A finished job (completed,
cancelled, dead) leaves memory once its row is committed, keeping only the last
:data:`RECENT` of them for quick reads; anything older is read from the database, on the
writer thread, after the pending changes are committed. Dead-letter and retention
operations run their SQL there too, and keep the in-memory counters in step.

At :meth:`open` the live jobs come back into the index in their original order, and
jobs that were running when the broker stopped are requeued at the front of their
priority (event ``requeued``, reason ``broker restart``).

Durability: WAL with ``synchronous=NORMAL`` by default. A commit is then safe against a
crash of the process (kill -9), which is what an acknowledgement promises; an OS crash
or power loss may lose the last commits. ``?synchronous=full`` syncs the WAL on every
commit and survives power loss, at the cost of one fsync per group commit. The database
is locked for exclusive use: one broker per file (several brokers share PostgreSQL).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import sqlite3
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from conveyor.errors import BrokerError, ConfigError, JobNotFound
from conveyor.job import Job, JobState
from conveyor.stores.base import Inserted
from conveyor.stores.memory import MemoryStore
from conveyor.stores.sql.sqlite_jobs import (
    Snapshot,
    delete_dead,
    fetch_jobs,
    list_jobs,
    load_snapshot,
    migrate,
    prune_chunk,
    select_dead,
    write_batch,
)
from conveyor.stores.sql.sqlite_writer import GroupCommitWriter
from conveyor.validation import JobSpec

RECENT = 4096  # finished jobs kept in memory after their commit, for quick job_get
PRUNE_CHUNK = 10_000  # rows deleted per transaction, so commits keep flowing meanwhile
#: A restart skips this many sequence numbers, so that a lease handed out in the last
#: moments before a crash (never committed) is not handed out again for the same job.
RESTART_GAP = 1 << 32
SYNCHRONOUS = ("normal", "full", "extra")
LOCK_TIMEOUT = 2.0  # seconds to wait for a broker that is still letting go of the file
_SEQ_HWM = "seq_hwm"  # counters row: the highest sequence/lease number given out


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


_Staged = tuple[Job, int | None]


class SqliteStore(MemoryStore):
    """Memory index for speed, SQLite for truth; see the module docstring."""

    durable = True

    def __init__(self, url: str, *, recent: int = RECENT) -> None:
        super().__init__(url)
        self._recent_max = recent
        self.path, self.synchronous = parse_sqlite_url(url)
        self._writer: GroupCommitWriter[_Staged, list[Job]] = GroupCommitWriter(
            partial(connect, self.path, self.synchronous), write_batch, self._evict
        )
        self._recent: OrderedDict[str, Job] = OrderedDict()
        self._known: dict[str, Job] = {}  # ids found in the database by the current insert
        self._admin = asyncio.Lock()  # dlq and retention read, then change: one at a time
        self._hwm = 0

    @property
    def commits(self) -> int:
        """Transactions committed so far (group commit: far fewer than changes)."""
        return self._writer.commits

    # -- persistence hooks ---------------------------------------------------------------
    def _counters(self) -> dict[str, int]:
        return {**self.totals, _SEQ_HWM: self._hwm}

    def _persist(self, jobs: Iterable[Job]) -> None:
        staged: list[tuple[str, _Staged | None]] = []
        hwm = self._hwm
        for job in jobs:
            seq = self._ready.seq_of(job.id)
            staged.append((job.id, (job, seq)))
            hwm = max(hwm, seq or 0, job.lease or 0)
        if staged:
            self._hwm = hwm
            self._writer.stage(staged, self._counters())

    def _forget(self, job_ids: Iterable[str]) -> None:
        staged: list[tuple[str, _Staged | None]] = [(i, None) for i in job_ids]
        for job_id, _ in staged:
            self._recent.pop(job_id, None)
        self._writer.stage(staged, self._counters())

    async def _durable(self) -> None:
        await self._writer.durable()

    def _finish(self, job: Job) -> None:
        """Retention runs in SQL here; the memory engine's finished list is not kept."""

    def _evict(self, finals: list[Job]) -> None:
        """After a commit: finished jobs leave memory unless they changed since."""
        for job in finals:
            if self._jobs.get(job.id) is job:
                del self._jobs[job.id]
                self._recent[job.id] = job
        while len(self._recent) > self._recent_max:
            self._recent.popitem(last=False)

    # -- open and close ------------------------------------------------------------------
    async def open(self, now: float) -> list[Job]:
        """Load live jobs into the index; requeue those that were running; return them."""
        await self._writer.start()
        snapshot = await self._writer.call(load_snapshot)
        running = self._restore(snapshot)
        # Front of their priority, in their old order: push the least urgent first.
        running.sort(key=lambda staged: (staged[0].priority, staged[1] or 0), reverse=True)
        requeued = [self._requeue(job, now, "broker restart") for job, _ in running]
        requeued.reverse()
        # a job whose cancel was asked for while it ran ends cancelled, not requeued
        self.totals["requeued"] += sum(1 for j in requeued if j.state is JobState.QUEUED)
        self._persist(requeued)
        # Stage the counters even when nothing was running: the lease high-water mark
        # (raised by the restart gap) must be on disk before any new lease is handed out.
        self._writer.stage([], self._counters())
        await self._durable()
        return [j for j in requeued if j.state is JobState.QUEUED]

    def _restore(self, snapshot: Snapshot) -> list[_Staged]:
        """Rebuild counters and the index from the database; return the running jobs."""
        for state, queue, n in snapshot.counts:
            self._counts[JobState(state)] += n
            self._queue_counts.setdefault(queue, Counter())[state] += n
        for name, value in snapshot.counters.items():
            if name != _SEQ_HWM:
                self.totals[name] = value
        seqs = [seq for _, seq in snapshot.active if seq is not None]
        leases = [job.lease or 0 for job, _ in snapshot.active]
        hwm = max([snapshot.counters.get(_SEQ_HWM, 0), *seqs, *leases])
        self._hwm = hwm + RESTART_GAP if hwm else 0
        self._seq = itertools.count(self._hwm + 1)
        self._front_seq = itertools.count(min([0, *seqs]) - 1, -1)
        running: list[_Staged] = []
        for job, seq in snapshot.active:
            self._jobs[job.id] = job
            if job.unique_key:
                self._unique[job.unique_key] = job.id
            if job.state is JobState.QUEUED:
                seq = next(self._seq) if seq is None else seq
                self._ready.load(job, seq)
            elif job.state is JobState.SCHEDULED:
                self._scheduled.append((job.eta or 0.0, job.id))
            else:
                running.append((job, seq))
        self._ready.heapify()
        heapq.heapify(self._scheduled)
        return running

    async def close(self) -> None:
        """Commit everything staged, then close the database."""
        await self._writer.close()

    # -- overrides: what may live only in the database -----------------------------------
    def _existing(self, spec: JobSpec) -> Job | None:
        if spec.id is not None and spec.id not in self._jobs:
            found = self._recent.get(spec.id) or self._known.get(spec.id)
            if found is not None:
                return found
        return super()._existing(spec)

    async def job_insert_many(self, specs: Sequence[JobSpec], now: float) -> list[Inserted]:
        ids = [s.id for s in specs if s.id is not None]
        if any(i not in self._jobs and i not in self._recent for i in ids):
            # A client-chosen id may name a finished job that lives only on disk. Every id
            # of the batch is looked up: a job in memory now may be evicted meanwhile.
            found = await self._writer.call(fetch_jobs, ids)
            self._known = {job.id: job for job in found}
        try:
            return await super().job_insert_many(specs, now)
        finally:
            self._known = {}

    async def job_cancel(self, job_id: str, now: float) -> Job:
        if job_id not in self._jobs:
            job = await self.job_get(job_id)
            if job_id not in self._jobs:
                if job is None:
                    raise JobNotFound("not_found", f"no job {job_id}")
                raise BrokerError("conflict", f"job {job_id} is already {job.state.value}")
        return await super().job_cancel(job_id, now)

    async def job_get(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id) or self._recent.get(job_id)
        if job is not None:
            return job
        found = await self._writer.call(fetch_jobs, [job_id])
        # memory wins if the job came back meanwhile (dlq retry)
        return self._jobs.get(job_id) or self._recent.get(job_id) or next(iter(found), None)

    async def job_list(
        self, state: str | None = None, queue: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Job]:
        return await self._writer.call(list_jobs, state, queue, limit, offset)

    async def dlq_retry(self, ids: Sequence[str] | None, now: float) -> int:
        async with self._admin:
            found = await self._writer.call(select_dead, ids)
            for job in found:
                # Counted already; the memory index takes it from here. A version in
                # memory is newer than the row, so it wins.
                self._jobs.setdefault(job.id, job)
                self._recent.pop(job.id, None)
            wanted = list(ids) if ids is not None else [job.id for job in found]
            return await super().dlq_retry(wanted, now)

    async def dlq_purge(self, ids: Sequence[str] | None) -> int:
        async with self._admin:
            # The writer commits what is staged first, so the DELETE also removes dead jobs
            # still in memory; their eviction runs before this call returns.
            removed = await self._writer.call(delete_dead, ids)
            for queue, n in removed.items():
                self._uncount(JobState.DEAD, queue, n)
            wanted = None if ids is None else set(ids)
            self._drop_recent(
                lambda j: j.state is JobState.DEAD and (wanted is None or j.id in wanted)
            )
            return sum(removed.values())

    async def job_prune(self, finished_before: float) -> int:
        async with self._admin:
            total = 0
            while True:
                removed = await self._writer.call(prune_chunk, finished_before, PRUNE_CHUNK)
                for (state, queue), n in removed.items():
                    self._uncount(JobState(state), queue, n)
                total += sum(removed.values())
                if sum(removed.values()) < PRUNE_CHUNK:
                    break
            self._drop_recent(
                lambda j: (
                    j.state in (JobState.COMPLETED, JobState.CANCELLED)
                    and (j.finished_at or 0.0) < finished_before
                )
            )
            return total

    def _uncount(self, state: JobState, queue: str, n: int) -> None:
        self._counts[state] -= n
        self._queue_counts.setdefault(queue, Counter())[state.value] -= n

    def _drop_recent(self, doomed: Callable[[Job], bool]) -> None:
        for job_id in [i for i, j in self._recent.items() if doomed(j)]:
            del self._recent[job_id]
