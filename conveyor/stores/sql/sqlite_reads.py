"""The SQLite engine's read side: committed records read back, and the store's read methods."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from conveyor.errors import StoreUnavailable
from conveyor.job import Event, JobRecord, JobState
from conveyor.stores._bounded import BoundedRecords
from conveyor.stores._live import LiveJobs
from conveyor.stores.base import JobFilter, Page, WorkflowPage, summarize
from conveyor.stores.sql.sqlite_jobs import (
    Batch,
    fetch_events,
    fetch_jobs,
    list_jobs,
    list_workflows,
    select_dead,
)
from conveyor.stores.sql.sqlite_payloads import PayloadFiles
from conveyor.stores.sql.sqlite_readers import ReaderPool
from conveyor.stores.sql.sqlite_writer import GroupCommitWriter

T = TypeVar("T")
P = ParamSpec("P")

log = logging.getLogger("conveyor.store")

#: records looked up by id on the loop itself, not on a reader thread (see _fetch)
LOOKUP_HERE = 32
WAITING = (JobState.QUEUED, JobState.SCHEDULED)  # states the resident budget holds


class SqliteReads:
    """The read methods of :class:`~conveyor.stores.sqlite.SqliteStore`, which owns the
    state declared here: memory first, then what is committed."""

    live: LiveJobs
    payload_files: PayloadFiles
    _writer: GroupCommitWriter[Batch, list[JobRecord]]
    _readers: ReaderPool | None
    _recent: BoundedRecords
    _waiting: BoundedRecords

    # -- reads off the writer --------------------------------------------------------------
    async def _read(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``fn`` on a reader thread: it sees what is committed."""
        if self._readers is None:
            return await self._writer.call(fn, *args, **kwargs)
        return await self._readers.call(fn, *args, **kwargs)

    async def _read_fresh(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``fn`` after what is staged now is committed (it sees the loop's own writes);
        while the store cannot write, it reads what is committed."""
        with contextlib.suppress(StoreUnavailable):
            await self._writer.durable()
        return await self._read(fn, *args, **kwargs)

    async def _fetch(self, ids: Sequence[str], payload: bool = True) -> list[JobRecord]:
        """Committed records by id: a few are looked up on the loop itself (a primary-key
        lookup in WAL never waits for the writer), more on a reader thread. Without
        ``payload``, payloads kept in files are not read (``b""``)."""
        files = self.payload_files if payload else None
        if self._readers is not None and len(ids) <= LOOKUP_HERE:
            try:
                return fetch_jobs(self._readers.here(), ids, files)
            except sqlite3.OperationalError:
                pass  # busy (a WAL reset, rarely): the reader thread waits for it
        return await self._read(fetch_jobs, ids, files)

    async def _make_resident(self, ids: Sequence[str], ahead: Sequence[str] = ()) -> None:
        """Read back the records of these live jobs that are not in memory, and of the
        queued jobs ``ahead`` (those stay within the resident budget)."""
        jobs = self.live.jobs
        missing = [i for i in ids if i not in jobs]
        later = [i for i in ahead if i not in jobs]
        if not missing and not later:
            return
        found = await self._read(fetch_jobs, missing + later, self.payload_files)
        by_id = {job.id: self.live.restore(job) for job in found}
        for job_id in later:  # in claim order: what does not fit is the last to be claimed
            job = by_id.get(job_id)
            if job is not None and job.state in WAITING:
                for dropped in self._waiting.put(job):
                    self.live.evict(dropped)
        lost = [job_id for job_id in missing if job_id not in by_id]
        if lost:  # cannot happen: an evicted record was committed
            log.error("SQLite store: indexed jobs missing from the database: %s", lost[:10])

    # -- reads ---------------------------------------------------------------------------
    def _in_memory(self, job_id: str) -> JobRecord | None:
        return self.live.jobs.get(job_id) or self._recent.get(job_id)

    async def job_get(self, job_id: str, *, payload: bool = True) -> JobRecord | None:
        job = self._in_memory(job_id)
        if job is not None:
            return job
        found = await self._fetch([job_id], payload)  # not in memory: committed
        # memory wins if the job came back meanwhile (dlq retry, a claim)
        return self._in_memory(job_id) or next(iter(found), None)

    async def job_get_many(self, ids: Sequence[str], *, payload: bool = True) -> list[JobRecord]:
        unique = list(dict.fromkeys(ids))
        missing = [i for i in unique if self._in_memory(i) is None]
        on_disk = {j.id: j for j in await self._fetch(missing, payload)} if missing else {}
        out = []
        for job_id in unique:
            job = self._in_memory(job_id) or on_disk.get(job_id)
            if job is not None:
                out.append(job)
        return out

    async def job_events(self, job_id: str) -> list[Event]:
        return await self._read_fresh(fetch_events, job_id)

    async def job_dead(self, ids: Sequence[str] | None) -> list[JobRecord]:
        found = await self._read_fresh(select_dead, ids, self.payload_files)
        return [self.live.jobs.get(j.id, j) for j in found]

    async def job_list(
        self,
        where: JobFilter,
        limit: int = 100,
        cursor: str | None = None,
        offset: int = 0,
        *,
        payload: bool = True,
    ) -> Page:
        terms: list[tuple[str, Any]] = []
        if where.state is not None:
            terms.append(("state = ?", where.state.value))
        for column in ("queue", "task", "worker", "priority", "workflow"):
            value = getattr(where, column)
            if value is not None:
                terms.append((f"{column} = ?", value))
        if where.id_prefix is not None:  # a range scan of the primary key
            terms.append(("id >= ?", where.id_prefix))
            terms.append(("id < ?", where.id_prefix + "\U0010ffff"))
        before = int(cursor) if cursor else None
        jobs, last = await self._read_fresh(
            list_jobs, terms, limit, before, offset, self.payload_files if payload else None
        )
        jobs = [self.live.jobs.get(j.id, j) for j in jobs]  # memory is never older
        return Page(jobs, None if last is None else str(last))

    async def workflow_list(self, limit: int = 50, cursor: str | None = None) -> WorkflowPage:
        ids, members, more = await self._read_fresh(list_workflows, limit, cursor)
        groups = []
        for workflow, job_id, state, root, join, created in members:
            live = self._in_memory(job_id)  # memory is never older
            groups.append((workflow, live.state.value if live else state, root, join, 1, created))
        return WorkflowPage(summarize(ids, groups), ids[-1] if more and ids else None)

    async def job_waiting_on(self, ids: Sequence[str]) -> list[JobRecord]:
        jobs = self.live.jobs  # waiting jobs are always resident (loaded at open)
        return [jobs[i] for i in self.live.waiting_on(ids) if i in jobs]

    async def job_next_eta(self) -> float | None:
        return self.live.next_eta()

    async def queue_waiting(self) -> dict[tuple[str, str], int]:
        return self.live.waiting()

    async def stats(self) -> dict[str, Any]:
        return self.live.stats()

    async def stats_brief(self) -> dict[str, Any]:
        return self.live.stats_brief()
