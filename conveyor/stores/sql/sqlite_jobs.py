"""The SQLite schema for jobs: migrations, the row codec and the named queries.

Everything here blocks and runs on the store's writer thread, never on the loop.

One row per job. The columns are what queries filter, sort or count on; ``data`` is a
MessagePack map of every other field that differs from the :class:`Job` default.
``seq`` is the job's place within its priority (the scheduler's heap sequence) when it
was last queued, so a restart rebuilds the same order; the implicit ``rowid`` is
insertion order (an upsert keeps it), so "newest first" is ``ORDER BY rowid DESC``.
The schema version is ``PRAGMA user_version``: migration *n* moves it from n-1 to n.
"""

from __future__ import annotations

import dataclasses
import functools
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import msgpack

from conveyor.errors import ConfigError
from conveyor.job import FINAL_STATES, Job, JobState
from conveyor.stores.sql.sqlite_writer import transaction

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: jobs and counters
        """
        CREATE TABLE jobs (
            id          TEXT PRIMARY KEY,
            state       TEXT NOT NULL,
            queue       TEXT NOT NULL,
            task        TEXT NOT NULL,
            priority    INTEGER NOT NULL,
            eta         REAL,
            unique_key  TEXT,
            created_at  REAL NOT NULL,
            finished_at REAL,
            seq         INTEGER,
            data        BLOB NOT NULL
        )
        """,
        "CREATE INDEX jobs_state ON jobs (state)",
        "CREATE INDEX jobs_prunable ON jobs (finished_at)"
        " WHERE state IN ('completed', 'cancelled')",
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    ),
)

CHUNK = 500  # ids per IN (...) list: well under every SQLite's variable limit
#: Rows per multi-row upsert. Python's sqlite3 releases the GIL around every statement
#: step, and a thread that wants it back waits up to the switch interval (5 ms) while the
#: event loop is busy: one statement per row would crawl under load. A few big statements
#: per batch, in power-of-two sizes so their prepared forms are cached, avoid that.
MAX_ROWS_PER_STATEMENT = 256

_COLUMNS = "id, state, queue, task, priority, eta, unique_key, created_at, finished_at, data"
_INSERT = """
    INSERT INTO jobs (id, state, queue, task, priority, eta, unique_key, created_at,
                      finished_at, seq, data)
    VALUES {values}
    ON CONFLICT (id) DO UPDATE SET
        state = excluded.state, queue = excluded.queue, task = excluded.task,
        priority = excluded.priority, eta = excluded.eta, unique_key = excluded.unique_key,
        created_at = excluded.created_at, finished_at = excluded.finished_at,
        seq = coalesce(excluded.seq, jobs.seq), data = excluded.data
"""
_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_ROW_WIDTH = 11
_SET_COUNTERS = (
    "INSERT INTO counters (name, value) VALUES {values}"
    " ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)
_ACTIVE = "('queued', 'scheduled', 'running')"
_PRUNABLE = "state IN ('completed', 'cancelled') AND finished_at < ?"


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date; return its version."""
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise ConfigError(
            f"the database schema is version {version}, newer than this Conveyor "
            f"understands ({len(MIGRATIONS)}); upgrade Conveyor"
        )
    for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
        with transaction(conn):
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
    return len(MIGRATIONS)


# -- the row codec ---------------------------------------------------------------------------
_IN_COLUMNS = frozenset(
    {"id", "state", "queue", "task", "priority", "eta", "unique_key", "created_at", "finished_at"}
)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


_BLOB_DEFAULTS = {f.name: _default(f) for f in dataclasses.fields(Job) if f.name not in _IN_COLUMNS}
_EMPTY_BY_DEFAULT = frozenset(k for k, v in _BLOB_DEFAULTS.items() if v in ((), {}))


def _pack(job: Job) -> bytes:
    data = {}
    for name, default in _BLOB_DEFAULTS.items():
        value = getattr(job, name)
        if value == default or (not value and name in _EMPTY_BY_DEFAULT):
            continue
        data[name] = value
    # default=repr: a value msgpack cannot hold is kept as text rather than poisoning a batch
    return msgpack.packb(data, use_bin_type=True, default=repr)  # type: ignore[no-any-return]


def job_to_row(job: Job, seq: int | None) -> tuple[Any, ...]:
    return (
        job.id,
        job.state.value,
        job.queue,
        job.task,
        job.priority,
        job.eta,
        job.unique_key,
        job.created_at,
        job.finished_at,
        seq,
        _pack(job),
    )


def row_to_job(row: Sequence[Any]) -> Job:
    """Decode a row selected with ``_COLUMNS``."""
    job_id, state, queue, task, priority, eta, unique_key, created_at, finished_at, data = row
    fields = msgpack.unpackb(data, raw=False, strict_map_key=False)
    extra = {k: v for k, v in fields.items() if k in _BLOB_DEFAULTS}
    extra["events"] = tuple(extra.get("events", ()))
    extra.setdefault("args", [])
    return Job(
        id=job_id,
        state=JobState(state),
        queue=queue,
        task=task,
        priority=priority,
        eta=eta,
        unique_key=unique_key,
        created_at=created_at,
        finished_at=finished_at,
        **extra,
    )


# -- writes ------------------------------------------------------------------------------------
def statement_sizes(rows: int, largest: int) -> Iterator[int]:
    """Split ``rows`` into statement sizes: ``largest`` (a power of two), then halves."""
    size = max(1, 1 << (largest.bit_length() - 1))
    while rows:
        while size > rows:
            size //= 2
        yield size
        rows -= size


@functools.cache
def _upsert_sql(rows: int) -> str:
    return _INSERT.format(values=", ".join([_ROW] * rows))


def _variable_limit(conn: sqlite3.Connection) -> int:
    return conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)


def write_batch(
    conn: sqlite3.Connection,
    batch: dict[str, tuple[Job, int | None] | None],
    counters: dict[str, int] | None,
) -> list[Job]:
    """Upsert or delete the staged jobs and set the counters; return the final jobs written."""
    upserts: list[tuple[Any, ...]] = []
    deletes: list[str] = []
    finals: list[Job] = []
    for job_id, staged in batch.items():
        if staged is None:
            deletes.append(job_id)
            continue
        job, seq = staged
        upserts.append(job_to_row(job, seq))
        if job.state in FINAL_STATES:
            finals.append(job)
    for where, ids in _id_filters("1", deletes):
        conn.execute(f"DELETE FROM jobs WHERE {where}", ids)
    width = min(MAX_ROWS_PER_STATEMENT, _variable_limit(conn) // _ROW_WIDTH)
    start = 0
    for size in statement_sizes(len(upserts), width):
        params = [value for row in upserts[start : start + size] for value in row]
        conn.execute(_upsert_sql(size), params)
        start += size
    if counters:
        values = ", ".join(["(?, ?)"] * len(counters))
        conn.execute(
            _SET_COUNTERS.format(values=values), [x for kv in counters.items() for x in kv]
        )
    return finals


def delete_dead(conn: sqlite3.Connection, ids: Sequence[str] | None) -> Counter[str]:
    """Delete dead jobs (these, or all); return how many per queue."""
    removed: Counter[str] = Counter()
    for where, params in _id_filters("state = 'dead'", ids):
        for queue, n in conn.execute(
            f"SELECT queue, count(*) FROM jobs WHERE {where} GROUP BY queue", params
        ):
            removed[queue] += n
        conn.execute(f"DELETE FROM jobs WHERE {where}", params)
    return removed


def prune_chunk(
    conn: sqlite3.Connection, finished_before: float, limit: int
) -> Counter[tuple[str, str]]:
    """Delete up to ``limit`` completed/cancelled jobs finished before the time.

    Returns how many per (state, queue); fewer than ``limit`` in all means done.
    """
    rows = conn.execute(
        f"SELECT rowid, state, queue FROM jobs INDEXED BY jobs_prunable WHERE {_PRUNABLE} LIMIT ?",
        (finished_before, limit),
    ).fetchall()
    conn.executemany("DELETE FROM jobs WHERE rowid = ?", [(r[0],) for r in rows])
    return Counter((state, queue) for _, state, queue in rows)


# -- reads -------------------------------------------------------------------------------------
def _id_filters(where: str, ids: Sequence[str] | None) -> list[tuple[str, tuple[Any, ...]]]:
    """``where`` alone (ids None), or ANDed with ``id IN (...)`` chunks of the ids."""
    if ids is None:
        return [(where, ())]
    chunks = [tuple(ids[i : i + CHUNK]) for i in range(0, len(ids), CHUNK)]
    return [(f"{where} AND id IN ({', '.join('?' * len(c))})", c) for c in chunks]


def fetch_jobs(conn: sqlite3.Connection, ids: Sequence[str]) -> list[Job]:
    """The jobs with these ids that exist."""
    jobs: list[Job] = []
    for where, params in _id_filters("1", ids):
        rows = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE {where}", params)
        jobs.extend(row_to_job(r) for r in rows)
    return jobs


def select_dead(conn: sqlite3.Connection, ids: Sequence[str] | None) -> list[Job]:
    """Dead jobs (these, or all), oldest first."""
    jobs: list[Job] = []
    for where, params in _id_filters("state = 'dead'", ids):
        rows = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE {where} ORDER BY rowid", params)
        jobs.extend(row_to_job(r) for r in rows)
    return jobs


def list_jobs(
    conn: sqlite3.Connection, state: str | None, queue: str | None, limit: int, offset: int
) -> list[Job]:
    """Newest first, optionally filtered by state and queue."""
    terms, params = [], []
    if state:
        terms.append("state = ?")
        params.append(state)
    if queue:
        terms.append("queue = ?")
        params.append(queue)
    where = f"WHERE {' AND '.join(terms)}" if terms else ""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY rowid DESC LIMIT ? OFFSET ?",
        (*params, max(0, limit), max(0, offset)),
    )
    return [row_to_job(r) for r in rows]


@dataclasses.dataclass(slots=True)
class Snapshot:
    """What a store needs at open: live jobs (with their seq), counts and counters."""

    active: list[tuple[Job, int | None]]
    counts: list[tuple[str, str, int]]  # (state, queue, n)
    counters: dict[str, int]


def load_snapshot(conn: sqlite3.Connection) -> Snapshot:
    rows = conn.execute(f"SELECT {_COLUMNS}, seq FROM jobs WHERE state IN {_ACTIVE}")
    active = [(row_to_job(r[:-1]), r[-1]) for r in rows]
    counts = conn.execute("SELECT state, queue, count(*) FROM jobs GROUP BY state, queue")
    counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    return Snapshot(active, [tuple(c) for c in counts], counters)
