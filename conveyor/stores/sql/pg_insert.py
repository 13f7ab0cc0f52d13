"""Inserting new jobs on PostgreSQL: one statement for the batch, then the jobs it met.

``INSERT … ON CONFLICT DO NOTHING`` skips a job whose id exists or whose unique key a live
job holds (the partial unique index ``jobs_unique``: two brokers cannot both create one);
the jobs skipped are then read (by id, or the live holder of their key) and returned
with ``created=False``. A holder that finished in between leaves nothing to return, so
those jobs are inserted again. Repeats within one call are answered from the first.
A call with jobs that wait on others marks those others as having dependants
(``jobs.dependants``, see :mod:`.pg_schema`), in every round: the stored ones, and
those the round inserts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from conveyor.errors import StoreUnavailable
from conveyor.job import Event, JobRecord
from conveyor.stores.base import Inserted
from conveyor.stores.sql import pg_queries as q
from conveyor.stores.sql.pg_rows import event_json, insert_arrays, literals, row_job

Run = Callable[[str, Any], Awaitable[list[Any]]]
ROUNDS = 3


def _firsts(jobs: Sequence[tuple[JobRecord, Event]]) -> tuple[list[int], dict[int, int]]:
    """Indexes of the jobs to insert, and of the repeats -> the first with that id or key."""
    first: dict[str, int] = {}
    repeats: dict[int, int] = {}
    todo: list[int] = []
    for i, (job, _) in enumerate(jobs):
        key = None if job.unique_key is None else f"\0{job.unique_key}"
        seen = first.get(job.id, first.get(key) if key else None)
        if seen is not None:
            repeats[i] = seen
            continue
        first[job.id] = i
        if key:
            first[key] = i
        todo.append(i)
    return todo, repeats


async def _holders(run: Run, jobs: Sequence[JobRecord]) -> dict[str, JobRecord]:
    """The stored job each of ``jobs`` met: the same id, else the live holder of its key."""
    rows = await run(
        q.HOLDERS,
        {"ids": [j.id for j in jobs], "keys": [j.unique_key for j in jobs if j.unique_key]},
    )
    by_id: dict[str, JobRecord] = {}
    by_key: dict[str, JobRecord] = {}
    for row in rows:
        held = row_job(row)
        by_id.setdefault(held.id, held)
        if held.unique_key is not None and not held.state.is_final:
            by_key.setdefault(held.unique_key, held)
    met = {}
    for job in jobs:
        existing = by_id.get(job.id) or by_key.get(job.unique_key or "\0")
        if existing is not None:
            met[job.id] = existing
    return met


async def insert_jobs(run: Run, jobs: Sequence[tuple[JobRecord, Event]]) -> list[Inserted]:
    out: list[Inserted | None] = [None] * len(jobs)
    todo, repeats = _firsts(jobs)
    # every dependency of the call, in every round: a job inserted in a later round (its
    # key's holder ended in between) may be the dependency of one stored in the first
    deps = list(dict.fromkeys(d for job, _ in jobs for d in job.depends_on))
    for _ in range(ROUNDS):
        if not todo:
            break
        batch = [jobs[i] for i in todo]
        columns: dict[str, list[Any]] = insert_arrays([job for job, _ in batch])
        columns["eids"] = [job.id for job, _ in batch]
        columns["edata"] = [event_json(ev) for _, ev in batch]
        if deps:
            columns["deps"] = deps
        params = literals(columns)
        created = {row[0] for row in await run(q.INSERT_WAITING if deps else q.INSERT, params)}
        rest = []
        for i in todo:
            if jobs[i][0].id in created:
                out[i] = Inserted(jobs[i][0], True)
            else:
                rest.append(i)
        met = await _holders(run, [jobs[i][0] for i in rest]) if rest else {}
        todo = []
        for i in rest:
            existing = met.get(jobs[i][0].id)
            if existing is None:
                todo.append(i)  # its holder finished meanwhile: insert it again
            else:
                out[i] = Inserted(existing, False)
    for i, j in repeats.items():
        done = out[j]
        if done is not None:
            out[i] = Inserted(done.job, False)
    if any(o is None for o in out):
        raise StoreUnavailable.because("PostgreSQL: a unique key kept changing", kept=False)
    return [o for o in out if o is not None]
