"""The SQLite schema: versioned migrations and the row codec of a job.

One row per job in ``jobs``: a column for every field (so state changes are narrow
UPDATEs), ``payload`` written once at insert (a large one in a file of its own, named by
``payload_file``: SQLite rewrites a whole row on any UPDATE), ``result`` once at
completion, ``error`` as a MessagePack map. History lives in ``events``, one row per
event, appended and never rewritten. ``seq`` is the job's place within its priority when
it was last queued, so a restart rebuilds the same order; the implicit ``rowid`` is
submission order, so "newest first" is ``ORDER BY rowid DESC`` and a listing cursor is a
rowid. ``counts`` holds the number of jobs per (state, queue, task, priority), changed
in the same transaction as the rows. The schema version is ``PRAGMA user_version``:
migration *n* moves it from n-1 to n.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from conveyor.errors import ConfigError
from conveyor.job import JobRecord, JobState
from conveyor.stores.sql.sqlite_writer import transaction

_V2_TABLES = (
    """
    CREATE TABLE jobs (
        id                TEXT PRIMARY KEY,
        task              TEXT NOT NULL,
        queue             TEXT NOT NULL,
        priority          INTEGER NOT NULL,
        state             TEXT NOT NULL,
        seq               INTEGER,
        eta               REAL,
        unique_key        TEXT,
        max_retries       INTEGER,
        retry_backoff     REAL,
        retry_backoff_max REAL,
        timeout           REAL,
        attempts          INTEGER NOT NULL,
        worker            TEXT,
        lease             INTEGER,
        lease_expires     REAL,
        cancel_requested  INTEGER NOT NULL,
        version           INTEGER NOT NULL,
        created_at        REAL NOT NULL,
        started_at        REAL,
        finished_at       REAL,
        error             BLOB,
        result            BLOB,
        payload           BLOB NOT NULL
    )
    """,
    "CREATE INDEX jobs_state ON jobs (state)",
    "CREATE INDEX jobs_prunable ON jobs (finished_at) WHERE state IN ('completed', 'cancelled')",
    "CREATE TABLE events (job_id TEXT NOT NULL, data BLOB NOT NULL)",
    "CREATE INDEX events_job ON events (job_id)",
    "CREATE TABLE IF NOT EXISTS counters"
    " (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
)

# -- the row codec ------------------------------------------------------------------------------
COLUMNS = (
    "id",
    "task",
    "queue",
    "priority",
    "state",
    "seq",
    "eta",
    "unique_key",
    "max_retries",
    "retry_backoff",
    "retry_backoff_max",
    "timeout",
    "attempts",
    "worker",
    "lease",
    "lease_expires",
    "cancel_requested",
    "version",
    "created_at",
    "started_at",
    "finished_at",
    "error",
    "result",
    "payload",
    "concurrency_key",  # v5
    "workflow",  # v6, to "progress"
    "depends_on",
    "feed",
    "inputs",
    "progress",
    "payload_file",  # v7
)
SELECT_COLUMNS = ", ".join(c for c in COLUMNS if c != "seq")
#: what a state change may alter: everything but the job's identity and its payload
MUTABLE = tuple(
    c
    for c in COLUMNS
    if c
    not in (
        "id",
        "task",
        "priority",
        "unique_key",
        "timeout",
        "created_at",
        "payload",
        "concurrency_key",
        "workflow",
        "depends_on",
        "feed",
        "payload_file",
    )
)


def pack_map(value: Any) -> bytes | None:
    # default=repr: a value msgpack cannot hold is kept as text rather than poisoning a batch
    return None if value is None else msgpack.packb(value, use_bin_type=True, default=repr)


def unpack_map(data: bytes | None) -> Any:
    return None if data is None else msgpack.unpackb(data, raw=False, strict_map_key=False)


def job_row(job: JobRecord, seq: int | None, payload_file: str | None = None) -> tuple[Any, ...]:
    """All columns of ``job``, in :data:`COLUMNS` order; with ``payload_file`` the payload
    is in that file (see :mod:`conveyor.stores.sql.sqlite_payloads`), not in the row."""
    return (
        job.id,
        job.task,
        job.queue,
        job.priority,
        job.state.value,
        seq,
        job.eta,
        job.unique_key,
        job.max_retries,
        job.retry_backoff,
        job.retry_backoff_max,
        job.timeout,
        job.attempts,
        job.worker,
        job.lease,
        job.lease_expires,
        int(job.cancel_requested),
        job.version,
        job.created_at,
        job.started_at,
        job.finished_at,
        pack_map(job.error),
        job.result,
        b"" if payload_file is not None else job.payload,
        job.concurrency_key,
        job.workflow,
        pack_map(list(job.depends_on)) if job.depends_on else None,
        job.feed,
        job.inputs,
        pack_map(job.progress),
        payload_file,
    )


def change_row(job: JobRecord, seq: int | None) -> tuple[Any, ...]:
    """The id and the :data:`MUTABLE` columns of ``job`` (a narrow UPDATE)."""
    return (
        job.id,
        job.queue,
        job.state.value,
        seq,
        job.eta,
        job.max_retries,
        job.retry_backoff,
        job.retry_backoff_max,
        job.attempts,
        job.worker,
        job.lease,
        job.lease_expires,
        int(job.cancel_requested),
        job.version,
        job.started_at,
        job.finished_at,
        pack_map(job.error),
        job.result,
        job.inputs,
        pack_map(job.progress),
    )


def row_job(row: Sequence[Any], read_file: Callable[[str], bytes] | None = None) -> JobRecord:
    """A record from a row selected with :data:`SELECT_COLUMNS`; ``read_file`` reads a
    payload kept in a file (without it such a record's payload is ``b""``)."""
    (
        job_id,
        task,
        queue,
        priority,
        state,
        eta,
        unique_key,
        max_retries,
        retry_backoff,
        retry_backoff_max,
        timeout,
        attempts,
        worker,
        lease,
        lease_expires,
        cancel_requested,
        version,
        created_at,
        started_at,
        finished_at,
        error,
        result,
        payload,
        concurrency_key,
        workflow,
        depends_on,
        feed,
        inputs,
        progress,
        payload_file,
    ) = row
    if payload_file is not None and read_file is not None:
        payload = read_file(payload_file)
    return JobRecord(
        id=job_id,
        task=task,
        payload=payload,
        queue=queue,
        priority=priority,
        state=JobState(state),
        max_retries=max_retries,
        retry_backoff=retry_backoff,
        retry_backoff_max=retry_backoff_max,
        timeout=timeout,
        eta=eta,
        unique_key=unique_key,
        attempts=attempts,
        worker=worker,
        lease=lease,
        lease_expires=lease_expires,
        result=result,
        error=unpack_map(error),
        created_at=created_at,
        started_at=started_at,
        finished_at=finished_at,
        cancel_requested=bool(cancel_requested),
        workflow=workflow,
        depends_on=tuple(unpack_map(depends_on) or ()),
        feed=feed,
        inputs=inputs,
        progress=unpack_map(progress),
        version=version,
        concurrency_key=concurrency_key,
    )


# -- migrations ---------------------------------------------------------------------------------
def _v1_tables(conn: sqlite3.Connection) -> None:
    for statement in (
        """CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, queue TEXT NOT NULL,
           task TEXT NOT NULL, priority INTEGER NOT NULL, eta REAL, unique_key TEXT,
           created_at REAL NOT NULL, finished_at REAL, seq INTEGER, data BLOB NOT NULL)""",
        "CREATE INDEX jobs_state ON jobs (state)",
        "CREATE INDEX jobs_prunable ON jobs (finished_at)"
        " WHERE state IN ('completed', 'cancelled')",
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    ):
        conn.execute(statement)


def _v2_split_payloads_and_events(conn: sqlite3.Connection) -> None:
    """v1 kept every field but a few in one MessagePack blob; v2 has a column each, the
    payload and result as packed bytes, and the history in its own table."""
    from conveyor.protocol.payload import pack, pack_call

    conn.execute("ALTER TABLE jobs RENAME TO jobs_v1")
    conn.execute("DROP INDEX IF EXISTS jobs_state")
    conn.execute("DROP INDEX IF EXISTS jobs_prunable")
    for statement in _V2_TABLES:
        conn.execute(statement)
    v2_columns = COLUMNS[: COLUMNS.index("payload") + 1]  # later migrations add the rest
    placeholders = ", ".join("?" * len(v2_columns))
    rows = conn.execute(
        "SELECT id, state, queue, task, priority, eta, unique_key, created_at, finished_at,"
        " seq, data FROM jobs_v1 ORDER BY rowid"
    )
    for job_id, state, queue, task, priority, eta, unique_key, created, finished, seq, data in rows:
        d = unpack_map(data) or {}
        result = d.get("result")
        job = JobRecord(
            id=job_id,
            task=task,
            payload=pack_call(d.get("args") or [], d.get("kwargs") or {}),
            queue=queue,
            priority=priority,
            state=JobState(state),
            max_retries=d.get("max_retries", 3),
            retry_backoff=d.get("retry_backoff", 1.0),
            retry_backoff_max=d.get("retry_backoff_max", 300.0),
            timeout=d.get("timeout"),
            eta=eta,
            unique_key=unique_key,
            attempts=d.get("attempts", 0),
            worker=d.get("worker"),
            lease=d.get("lease"),
            lease_expires=d.get("lease_expires"),
            result=None if result is None and state != "completed" else pack(result),
            error=d.get("error"),
            created_at=created,
            started_at=d.get("started_at"),
            finished_at=finished,
            cancel_requested=bool(d.get("cancel_requested", False)),
            version=1,
        )
        conn.execute(
            f"INSERT INTO jobs ({', '.join(v2_columns)}) VALUES ({placeholders})",
            job_row(job, seq)[: len(v2_columns)],
        )
        conn.executemany(
            "INSERT INTO events (job_id, data) VALUES (?, ?)",
            [(job_id, pack_map(ev)) for ev in d.get("events", ())],
        )
    conn.execute("DROP TABLE jobs_v1")


def _v3_meta(conn: sqlite3.Connection) -> None:
    """Small durable settings: the queue each task is routed to, paused queues."""
    conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID")


def _v4_counts_and_listing_indexes(conn: sqlite3.Connection) -> None:
    """Job counts kept with every commit, so start-up reads a few rows instead of counting
    every job; and an index for each listing filter, so "newest first" never sorts (a
    secondary index is ordered by its column, then rowid)."""
    conn.execute(
        "CREATE TABLE counts (state TEXT NOT NULL, queue TEXT NOT NULL, task TEXT NOT NULL,"
        " priority INTEGER NOT NULL, n INTEGER NOT NULL,"
        " PRIMARY KEY (state, queue, task, priority)) WITHOUT ROWID"
    )
    conn.execute(
        "INSERT INTO counts SELECT state, queue, task, priority, count(*) FROM jobs"
        " GROUP BY state, queue, task, priority"
    )
    for column in ("queue", "task", "priority"):
        conn.execute(f"CREATE INDEX jobs_{column} ON jobs ({column})")
    conn.execute("CREATE INDEX jobs_worker ON jobs (worker) WHERE worker IS NOT NULL")


def _v5_concurrency_key(conn: sqlite3.Connection) -> None:
    """A job may carry a concurrency key: at most a limit of running jobs share one."""
    conn.execute("ALTER TABLE jobs ADD COLUMN concurrency_key TEXT")


def _v6_workflows_and_progress(conn: sqlite3.Connection) -> None:
    """Workflows (the workflow a job belongs to, the jobs it waits for, what of their
    results it gets, those results once it is released) and the last progress a run
    reported; an index to list a workflow's members."""
    for column, kind in (
        ("workflow", "TEXT"),
        ("depends_on", "BLOB"),
        ("feed", "TEXT"),
        ("inputs", "BLOB"),
        ("progress", "BLOB"),
    ):
        conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
    conn.execute("CREATE INDEX jobs_workflow ON jobs (workflow) WHERE workflow IS NOT NULL")


def _v7_payload_files(conn: sqlite3.Connection) -> None:
    """A large payload may live in a file of its own beside the database, written once,
    so that the row's state changes never rewrite it; the row names the file. Existing
    rows keep their payloads in the row (both forms are read). The index holds only the
    rows with a file: it finds the files no row names at open (a crash's leftovers)."""
    conn.execute("ALTER TABLE jobs ADD COLUMN payload_file TEXT")
    conn.execute(
        "CREATE INDEX jobs_payload_file ON jobs (payload_file) WHERE payload_file IS NOT NULL"
    )


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _v1_tables,
    _v2_split_payloads_and_events,
    _v3_meta,
    _v4_counts_and_listing_indexes,
    _v5_concurrency_key,
    _v6_workflows_and_progress,
    _v7_payload_files,
)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date, one transaction per step; return its version."""
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise ConfigError(
            f"the database schema is version {version}, newer than this Conveyor "
            f"understands ({len(MIGRATIONS)}); upgrade Conveyor"
        )
    for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
        with transaction(conn):
            step(conn)
            conn.execute(f"PRAGMA user_version = {number}")
    return len(MIGRATIONS)
