"""The SQLite engine's named queries: the batched write of a group commit, and the reads.

Everything here blocks and runs on a thread that owns the connection, never on the loop.
The schema and the row codec are in :mod:`conveyor.stores.sql.sqlite_schema`.
"""

from __future__ import annotations

import dataclasses
import functools
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.job import FEED_RESULTS, Event, JobRecord, JobState
from conveyor.stores.sql.sqlite_schema import (
    COLUMNS,
    MUTABLE,
    SELECT_COLUMNS,
    change_row,
    job_row,
    pack_map,
    row_job,
    unpack_map,
)

if TYPE_CHECKING:
    from conveyor.stores.sql.sqlite_payloads import PayloadFiles

if TYPE_CHECKING:
    from conveyor.stores._live import CountKey, LiveJobs

CHUNK = 500  # ids per IN (...) list: well under every SQLite's variable limit
#: Rows per multi-row statement. Python's sqlite3 releases the GIL around every statement
#: step, and a thread that wants it back waits up to the switch interval while the event
#: loop is busy: one statement per row would crawl under load. A few big statements per
#: batch, in power-of-two sizes so their prepared forms are cached, avoid that.
MAX_ROWS_PER_STATEMENT = 256

_ACTIVE = "('waiting', 'queued', 'scheduled', 'running')"
_PRUNABLE = "state IN ('completed', 'cancelled') AND finished_at < ?"
_CHANGES_TABLE = (
    f"CREATE TEMP TABLE IF NOT EXISTS changes (id TEXT PRIMARY KEY, {', '.join(MUTABLE)})"
)
# Not ``UPDATE ... FROM changes``: SQLite would scan every row of jobs for that join. This
# form finds each changed row by its primary key.
_APPLY_CHANGES = (
    f"UPDATE jobs SET ({', '.join(MUTABLE)}) = (SELECT "
    f"{', '.join('coalesce(c.seq, jobs.seq)' if m == 'seq' else 'c.' + m for m in MUTABLE)} "
    "FROM temp.changes AS c WHERE c.id = jobs.id) WHERE id IN (SELECT id FROM temp.changes)"
)


@dataclasses.dataclass(slots=True)
class Batch:
    """Changes staged for one commit; the last version of a job wins."""

    inserts: dict[str, tuple[JobRecord, int | None]] = dataclasses.field(default_factory=dict)
    updates: dict[str, tuple[JobRecord, int | None]] = dataclasses.field(default_factory=dict)
    events: list[tuple[str, bytes | None]] = dataclasses.field(default_factory=list)
    counters: dict[str, int] | None = None
    #: changes of the job counts that these rows make (added up, never replaced)
    deltas: Counter[CountKey] = dataclasses.field(default_factory=Counter)
    #: job id -> the file its payload goes to, for inserts whose payload is large
    files: dict[str, str] = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.inserts or self.updates or self.events or self.counters is not None)

    def __len__(self) -> int:
        return len(self.inserts) + len(self.updates) + len(self.events)

    def insert(
        self, job: JobRecord, seq: int | None, events: Sequence[Event], file: str | None = None
    ) -> None:
        self.inserts[job.id] = (job, seq)
        if file is not None:
            self.files[job.id] = file
        self.events.extend((job.id, pack_map(e)) for e in events)

    def update(self, job: JobRecord, seq: int | None, events: Sequence[Event]) -> None:
        if job.id in self.inserts:  # not written yet: write its latest version instead
            self.inserts[job.id] = (job, seq)
        else:
            self.updates[job.id] = (job, seq)
        self.events.extend((job.id, pack_map(e)) for e in events)

    def merge(self, later: Batch) -> None:
        """Put what was staged since this batch (which failed to commit) on top of it."""
        self.inserts.update(later.inserts)
        self.files.update(later.files)
        for job_id, staged in later.updates.items():
            if job_id in self.inserts:
                self.inserts[job_id] = staged
            else:
                self.updates[job_id] = staged
        self.events.extend(later.events)
        if later.counters is not None:
            self.counters = later.counters
        self.deltas.update(later.deltas)


def new_connection_setup(conn: sqlite3.Connection) -> None:
    conn.execute(_CHANGES_TABLE)


# -- the write of one group commit --------------------------------------------------------------
def statement_sizes(rows: int, largest: int) -> Iterator[int]:
    """Split ``rows`` into statement sizes: ``largest`` (a power of two), then halves."""
    size = max(1, 1 << (largest.bit_length() - 1))
    while rows:
        while size > rows:
            size //= 2
        yield size
        rows -= size


@functools.cache
def _insert_sql(verb: str, table: str, columns: tuple[str, ...], rows: int) -> str:
    row = "(" + ", ".join("?" * len(columns)) + ")"
    return f"{verb} INTO {table} ({', '.join(columns)}) VALUES {', '.join([row] * rows)}"


def _insert_rows(
    conn: sqlite3.Connection,
    table: str,
    columns: tuple[str, ...],
    rows: list[tuple[Any, ...]],
    verb: str = "INSERT",
) -> None:
    width = min(
        MAX_ROWS_PER_STATEMENT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(columns)
    )
    start = 0
    for size in statement_sizes(len(rows), width):
        params = [value for row in rows[start : start + size] for value in row]
        conn.execute(_insert_sql(verb, table, columns, size), params)
        start += size


_CHANGE_COLUMNS = ("id", *MUTABLE)


def write_batch(
    conn: sqlite3.Connection, batch: Batch, files: PayloadFiles | None = None
) -> list[JobRecord]:
    """Write the large payloads' files, insert new jobs, update changed ones narrowly,
    append events, set the counters and add up the counts.

    Returns the records written (the engine may evict them from memory once committed).
    """
    named = batch.files
    if named and files is not None:
        # before the COMMIT: a committed row never names a file that is not there
        files.write((name, batch.inserts[job_id][0].payload) for job_id, name in named.items())
    elif named:
        named = {}
    _insert_rows(
        conn,
        "jobs",
        COLUMNS,
        [job_row(j, s, named.get(j.id)) for j, s in batch.inserts.values()],
    )
    if batch.updates:
        _insert_rows(
            conn,
            "temp.changes",
            _CHANGE_COLUMNS,
            [change_row(j, s) for j, s in batch.updates.values()],
        )
        conn.execute(_APPLY_CHANGES)
        conn.execute("DELETE FROM temp.changes")
    _insert_rows(conn, "events", ("job_id", "data"), batch.events)
    if batch.counters:
        _insert_rows(
            conn, "counters", ("name", "value"), list(batch.counters.items()), "INSERT OR REPLACE"
        )
    add_counts(conn, batch.deltas)
    return [j for j, _ in batch.inserts.values()] + [j for j, _ in batch.updates.values()]


_ADD_COUNT = (
    "INSERT INTO counts (state, queue, task, priority, n) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (state, queue, task, priority) DO UPDATE SET n = n + excluded.n"
)


def add_counts(conn: sqlite3.Connection, deltas: Counter[CountKey]) -> None:
    """Add ``deltas`` to the stored job counts (deltas, not totals: a prune may change
    the same counts in its own transaction meanwhile)."""
    rows = [(k[0].value, k[1], k[2], k[3], n) for k, n in deltas.items() if n]
    if not rows:
        return
    conn.executemany(_ADD_COUNT, rows)
    if any(n < 0 for *_, n in rows):
        conn.execute("DELETE FROM counts WHERE n <= 0")


# -- reads --------------------------------------------------------------------------------------
def _id_filters(where: str, ids: Sequence[str] | None) -> list[tuple[str, tuple[Any, ...]]]:
    """``where`` alone (ids None), or ANDed with ``id IN (...)`` chunks of the ids."""
    if ids is None:
        return [(where, ())]
    unique = list(dict.fromkeys(ids))
    chunks = [tuple(unique[i : i + CHUNK]) for i in range(0, len(unique), CHUNK)]
    return [(f"{where} AND id IN ({', '.join('?' * len(c))})", c) for c in chunks]


def _reader(files: PayloadFiles | None) -> Callable[[str], bytes] | None:
    return None if files is None else files.read


def fetch_jobs(
    conn: sqlite3.Connection, ids: Sequence[str], files: PayloadFiles | None = None
) -> list[JobRecord]:
    """The jobs with these ids that exist, with their payloads."""
    jobs: list[JobRecord] = []
    read = _reader(files)
    for where, params in _id_filters("1", ids):
        rows = conn.execute(f"SELECT {SELECT_COLUMNS} FROM jobs WHERE {where}", params)
        jobs.extend(row_job(r, read) for r in rows)
    return jobs


def fetch_events(conn: sqlite3.Connection, job_id: str) -> list[Event]:
    rows = conn.execute("SELECT data FROM events WHERE job_id = ? ORDER BY rowid", (job_id,))
    return [unpack_map(data) for (data,) in rows]


def select_dead(
    conn: sqlite3.Connection, ids: Sequence[str] | None, files: PayloadFiles | None = None
) -> list[JobRecord]:
    """Dead jobs (these, or all), oldest first, with their payloads (a retry runs them)."""
    jobs: list[JobRecord] = []
    read = _reader(files)
    for where, params in _id_filters("state = 'dead'", ids):
        rows = conn.execute(
            f"SELECT {SELECT_COLUMNS} FROM jobs WHERE {where} ORDER BY rowid", params
        )
        jobs.extend(row_job(r, read) for r in rows)
    return jobs


def list_jobs(
    conn: sqlite3.Connection,
    terms: Sequence[tuple[str, Any]],
    limit: int,
    before: int | None,
    offset: int,
    files: PayloadFiles | None = None,
) -> tuple[list[JobRecord], int | None]:
    """Newest first, filtered by ``column op ?`` terms; also the rowid to continue before."""
    clauses = [t for t, _ in terms]
    params = [v for _, v in terms]
    if before is not None:
        clauses.append("rowid < ?")
        params.append(before)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(
        f"SELECT rowid, {SELECT_COLUMNS} FROM jobs {where} ORDER BY rowid DESC LIMIT ? OFFSET ?",
        (*params, limit + 1, offset),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    read = _reader(files)
    return [row_job(r[1:], read) for r in rows], (rows[-1][0] if more and rows else None)


@dataclasses.dataclass(slots=True)
class Start:
    """What deciding the first sequence numbers after a restart needs."""

    counters: dict[str, int]
    highest: int  # the highest sequence or lease stored
    lowest: int  # the lowest (front) sequence stored


_WAITING_COLUMNS = "id, state, queue, task, priority, seq, eta, unique_key, concurrency_key"


def load_live(
    conn: sqlite3.Connection,
    new_live: Callable[[Start], LiveJobs],
    files: PayloadFiles | None = None,
) -> tuple[LiveJobs, list[JobRecord]]:
    """Rebuild the live index at open: the stored counts, every queued and scheduled job
    as an index entry only (streamed: no list of millions), the running and waiting jobs
    whole (only the running ones are returned).
    Reads live rows and a few small tables, never the finished history.
    """
    counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    highest, lowest = conn.execute(
        "SELECT max(max(coalesce(seq, 0)), max(coalesce(lease, 0))), min(coalesce(seq, 0))"
        f" FROM jobs WHERE state IN {_ACTIVE}"
    ).fetchone()
    live = new_live(Start(counters, highest or 0, lowest or 0))
    for state, queue, task, priority, n in conn.execute(
        "SELECT state, queue, task, priority, n FROM counts WHERE n > 0"
    ):
        live.counts[JobState(state), queue, task, priority] = n
    rows = conn.execute(
        f"SELECT {_WAITING_COLUMNS} FROM jobs WHERE state IN ('queued', 'scheduled')"
    )
    for job_id, state, queue, task, priority, seq, eta, unique_key, key in rows:
        live.load_waiting(job_id, JobState(state), queue, task, priority, seq, eta, unique_key, key)
    running = conn.execute(f"SELECT {SELECT_COLUMNS} FROM jobs WHERE state = 'running'")
    read = _reader(files)
    jobs = [row_job(r, read) for r in running]
    for job in jobs:
        live.load(job)
    # waiting jobs (workflow members, ``after=``) stay resident: few, and the workflow
    # service looks them up by the jobs they wait for
    for row in conn.execute(f"SELECT {SELECT_COLUMNS} FROM jobs WHERE state = 'waiting'"):
        live.load(row_job(row, read))
    live.loaded()
    return live, jobs


def payload_file_names(conn: sqlite3.Connection) -> set[str]:
    """The payload files the rows name (from the partial index: rows with a file only)."""
    rows = conn.execute(
        "SELECT payload_file FROM jobs INDEXED BY jobs_payload_file WHERE payload_file IS NOT NULL"
    )
    return {name for (name,) in rows}


def get_meta(conn: sqlite3.Connection, name: str) -> Any:
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return None if row is None else unpack_map(row[0])


def set_meta(conn: sqlite3.Connection, name: str, value: Any) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, pack_map(value)))


def _delete_events(conn: sqlite3.Connection, ids: Sequence[str]) -> None:
    for where, params in _id_filters("1", ids):
        conn.execute(f"DELETE FROM events WHERE {where.replace('id IN', 'job_id IN')}", params)


def delete_dead(
    conn: sqlite3.Connection, ids: Sequence[str] | None
) -> tuple[Counter[tuple[str, str, int]], list[str]]:
    """Delete dead jobs (these, or all) and their history: how many per (queue, task,
    priority), and their payload files (to delete once this is committed)."""
    removed: Counter[tuple[str, str, int]] = Counter()
    names: list[str] = []
    for where, params in _id_filters("state = 'dead'", ids):
        doomed = conn.execute(
            f"SELECT id, queue, task, priority, payload_file FROM jobs WHERE {where}", params
        ).fetchall()
        removed.update((queue, task, priority) for _, queue, task, priority, _ in doomed)
        names.extend(row[4] for row in doomed if row[4] is not None)
        conn.execute(f"DELETE FROM jobs WHERE {where}", params)
        _delete_events(conn, [row[0] for row in doomed])
    add_counts(conn, Counter({(JobState.DEAD, *k): -n for k, n in removed.items()}))
    return removed, names


def prune_chunk(
    conn: sqlite3.Connection, finished_before: float, limit: int
) -> tuple[Counter[tuple[JobState, str, str, int]], list[str]]:
    """Delete up to ``limit`` completed/cancelled jobs finished before the time.

    Returns how many per (state, queue, task, priority) (fewer than ``limit`` in all means
    done) and their payload files (to delete once this is committed).
    """
    rows = conn.execute(
        "SELECT rowid, id, state, queue, task, priority, payload_file"
        " FROM jobs INDEXED BY jobs_prunable"
        f" WHERE {_PRUNABLE} LIMIT ?",
        (finished_before, limit),
    ).fetchall()
    conn.executemany("DELETE FROM jobs WHERE rowid = ?", [(r[0],) for r in rows])
    _delete_events(conn, [r[1] for r in rows])
    removed = Counter((JobState(r[2]), r[3], r[4], r[5]) for r in rows)
    add_counts(conn, Counter({k: -n for k, n in removed.items()}))
    return removed, [r[6] for r in rows if r[6] is not None]


WorkflowMember = tuple[str, str, str, bool, bool, float]  # workflow, id, state, root, join, at


def list_workflows(
    conn: sqlite3.Connection, limit: int, before: str | None
) -> tuple[list[str], list[WorkflowMember], bool]:
    """A page of workflow ids, newest first, read backwards off the ``jobs_workflow``
    index (never the whole table), their jobs' states and shapes, and whether there is more."""
    where = "workflow IS NOT NULL"
    params: tuple[str, ...] = ()
    if before is not None:
        where, params = f"{where} AND workflow < ?", (before,)
    rows = conn.execute(
        f"SELECT DISTINCT workflow FROM jobs INDEXED BY jobs_workflow WHERE {where}"
        " ORDER BY workflow DESC LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    ids = [r[0] for r in rows[:limit]]
    members: list[WorkflowMember] = []
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i : i + CHUNK]
        members.extend(
            (w, job_id, state, bool(root), bool(join), created)
            for w, job_id, state, root, join, created in conn.execute(
                "SELECT workflow, id, state, depends_on IS NULL, feed IS ?, created_at"
                " FROM jobs INDEXED BY jobs_workflow WHERE workflow IS NOT NULL"
                f" AND workflow IN ({', '.join('?' * len(chunk))})",
                (FEED_RESULTS, *chunk),
            )
        )
    return ids, members, len(rows) > limit
