"""The PostgreSQL store's reads: jobs by id (coalesced), listings, workflows and stats.

A mixin of :class:`~conveyor.stores.postgres.PostgresStore` (which sets the attributes
declared below). Reads by id from concurrent callers, and the workflow service's asks
for the jobs waiting on others, are coalesced into one statement (:mod:`.pg_batch`);
``job_get_recent`` answers from the records this engine last wrote where it can.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from conveyor.job import Event, JobRecord, JobState
from conveyor.stores._live import LiveJobs
from conveyor.stores.base import TOTALS, JobFilter, KeyLimits, Page, Store, WorkflowPage, summarize
from conveyor.stores.sql import pg_limits
from conveyor.stores.sql import pg_queries as q
from conveyor.stores.sql.pg_batch import Coalescer
from conveyor.stores.sql.pg_rows import row_job

MAX_KNOWN = 100_000  # ids remembered as having no dependants, at most


class PgReads(Store):
    """The read methods of the PostgreSQL store."""

    _run: pg_limits.Run
    _reads: Coalescer[str, JobRecord | None]
    _waits: Coalescer[str, list[JobRecord]]
    _depended: Coalescer[str, JobRecord | None]
    _recent: dict[str, JobRecord]  # held jobs as this engine last wrote them
    _no_dependants: set[str]  # jobs this engine ended that nothing waits on
    _key_limits: tuple[KeyLimits, dict[str, list[Any]]] | None

    async def job_get(self, job_id: str, *, payload: bool = True) -> JobRecord | None:
        found = await self.job_get_many([job_id])
        return found[0] if found else None

    async def job_get_many(self, ids: Sequence[str], *, payload: bool = True) -> list[JobRecord]:
        unique = list(dict.fromkeys(ids))
        if not unique:
            return []
        found = await self._reads.call(unique)
        return [job for job in found if job is not None]

    async def job_get_depended(self, ids: Sequence[str]) -> list[JobRecord]:
        # A waiting job's INSERT marks the dependencies its snapshot sees; one whose own
        # INSERT was still in flight then (another submit, racing) is stored unmarked,
        # and its end would say "nothing waits on me". The workflow service reads the
        # dependencies through here after storing a waiting job: a dependency it sees
        # live is marked before its end can commit, and one it sees ended is decided on.
        unique = list(dict.fromkeys(ids))
        if not unique:
            return []
        found = await self._depended.call(unique)
        return [job for job in found if job is not None]

    async def _depended_batch(self, ids: list[str]) -> list[JobRecord | None]:
        by_id = {r[0]: r for r in await self._run(q.GET_DEPENDED, {"ids": list(set(ids))})}
        return [row_job(by_id[i]) if i in by_id else None for i in ids]

    async def job_get_recent(self, ids: Sequence[str]) -> list[JobRecord]:
        unique = list(dict.fromkeys(ids))
        missing = [i for i in unique if i not in self._recent]
        read = {j.id: j for j in await self.job_get_many(missing)} if missing else {}
        return [j for i in unique if (j := self._recent.get(i) or read.get(i)) is not None]

    async def job_waiting_on(self, ids: Sequence[str]) -> list[JobRecord]:
        # Those this engine ended with no dependants need no look: their final UPDATE
        # held the row's lock, and a job that waits on them marks them under that lock
        # before it commits (one stored after they ended finds them ended itself).
        known = self._no_dependants
        ask = [i for i in ids if i not in known]
        known.difference_update(ids)
        if len(known) > MAX_KNOWN:  # ended jobs nobody asked about: forget them
            known.clear()
        if not ask:
            return []
        found = {j.id: j for per_id in await self._waits.call(ask) for j in per_id}
        return list(found.values())

    async def _waiting_batch(self, ids: list[str]) -> list[list[JobRecord]]:
        by_dependency: dict[str, list[JobRecord]] = {}
        for row in await self._run(q.WAITING_ON, (list(set(ids)),)):
            job = row_job(row)
            for dependency in job.depends_on:
                by_dependency.setdefault(dependency, []).append(job)
        return [by_dependency.get(i, []) for i in ids]

    async def _read_batch(self, ids: list[str]) -> list[JobRecord | None]:
        """Many callers' reads by id in one statement."""
        by_id = {r[0]: r for r in await self._run(q.GET_MANY, (list(set(ids)),))}
        return [row_job(by_id[i]) if i in by_id else None for i in ids]

    async def job_events(self, job_id: str) -> list[Event]:
        return [row[0] for row in await self._run(q.EVENTS, (job_id,))]

    async def job_dead(self, ids: Sequence[str] | None) -> list[JobRecord]:
        if ids is None:
            rows = await self._run(q.DEAD_ALL)
        else:
            rows = await self._run(q.DEAD_SOME, (list(ids),))
        return [row_job(r) for r in rows]

    async def job_list(
        self,
        where: JobFilter,
        limit: int = 100,
        cursor: str | None = None,
        offset: int = 0,
        *,
        payload: bool = True,
    ) -> Page:
        rows = await self._run(*q.listing(where, limit, cursor, offset))
        more = len(rows) > limit
        rows = rows[:limit]
        return Page([row_job(r) for r in rows], str(rows[-1][-1]) if more and rows else None)

    async def workflow_list(self, limit: int = 50, cursor: str | None = None) -> WorkflowPage:
        sql = q.WORKFLOWS_FIRST if cursor is None else q.WORKFLOWS_BEFORE
        rows = await self._run(sql, {"n": limit + 1, "before": cursor})
        ids = sorted({r[0] for r in rows}, reverse=True)
        page = ids[:limit]
        keep = set(page)  # the one past the page only says there is more
        groups = [
            (w, state, bool(root), bool(join), int(n), float(at))
            for w, state, root, join, n, at in rows
            if w in keep
        ]
        return WorkflowPage(summarize(page, groups), page[-1] if len(ids) > limit else None)

    async def job_next_eta(self) -> float | None:
        rows = await self._run(q.NEXT_ETA)
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    async def queue_waiting(self) -> dict[tuple[str, str], int]:
        return {(queue, task): int(n) for queue, task, n in await self._run(q.WAITING)}

    async def stats(self) -> dict[str, Any]:
        live = LiveJobs()  # its stats() shapes the numbers exactly as the other engines do
        counts: Counter[tuple[JobState, str, str, int]] = Counter()
        running_by_key: dict[str, int] = {}
        for kind, name, queue, task, priority, n in await self._run(q.STATS):
            if kind == "c":
                counts[JobState(name), queue, task, priority] = int(n)
            elif kind == "t":
                live.totals[name] = int(n)
            else:
                running_by_key[name] = int(n)
        live.counts = counts
        out: dict[str, Any] = live.stats()
        out["running_by_key"] = dict(sorted(running_by_key.items()))  # every broker's
        if self._key_limits is not None:
            out["waiting_for_key"] = await pg_limits.keys_waiting(self._run, self._key_limits[1])
        return out

    async def stats_brief(self) -> dict[str, Any]:
        states = dict.fromkeys((s.value for s in JobState), 0)
        totals = dict.fromkeys(TOTALS, 0)
        for kind, name, n in await self._run(q.STATS_BRIEF):
            (states if kind == "s" else totals)[name] = int(n)
        return {"states": states, "totals": totals}
