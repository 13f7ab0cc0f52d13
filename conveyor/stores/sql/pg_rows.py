"""The PostgreSQL engine's row codec: a job's columns, and batches as column arrays.

Batches travel as one array per column and come apart with ``unnest`` on the server, so a
write of thousands of rows is one statement and one round trip. Errors are MessagePack
maps (as on SQLite), events jsonb; payloads and results are the packed bytes as they came.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import msgpack

from conveyor.job import Event, JobRecord, JobState
from conveyor.lifecycle import Transition

#: what a SELECT of a whole job reads, in :func:`row_job` order
COLUMNS = (
    "id",
    "task",
    "queue",
    "priority",
    "state",
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
    "concurrency_key",  # migration 2, to "progress"
    "workflow",
    "depends_on",
    "feed",
    "inputs",
    "progress",
)
SELECT = ", ".join(COLUMNS)


def select_from(alias: str) -> str:
    return ", ".join(f"{alias}.{c}" for c in COLUMNS)


def pack_map(value: Any) -> bytes | None:
    # default=repr: a value msgpack cannot hold is kept as text rather than failing a batch
    return None if value is None else msgpack.packb(value, use_bin_type=True, default=repr)


def unpack_map(data: bytes | None) -> Any:
    return None if data is None else msgpack.unpackb(data, raw=False, strict_map_key=False)


def event_json(ev: Event) -> str:
    return json.dumps(ev, default=repr, allow_nan=False, separators=(",", ":"))


def row_job(row: Sequence[Any]) -> JobRecord:
    """A record from a row selected with :data:`SELECT` (or :func:`select_from`)."""
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
    ) = row[: len(COLUMNS)]
    return JobRecord(
        id=job_id,
        task=task,
        payload=bytes(payload),
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
        result=None if result is None else bytes(result),
        error=unpack_map(error),
        created_at=created_at,
        started_at=started_at,
        finished_at=finished_at,
        cancel_requested=cancel_requested,
        version=version,
        concurrency_key=concurrency_key,
        workflow=workflow,
        depends_on=tuple(unpack_map(depends_on) or ()),
        feed=feed,
        inputs=None if inputs is None else bytes(inputs),
        progress=unpack_map(progress),
    )


def array_literal(values: Sequence[Any]) -> str:
    """A PostgreSQL array literal (``{"a","b",NULL}``) for ``::text[]``, numeric,
    ``boolean[]`` and ``bytea[]`` casts: one string to send instead of a list psycopg would
    dump item by item (its text dumper escapes each item with a regular expression: most
    of a batch's cost in the broker)."""
    out = []
    for v in values:
        if v is None:
            out.append("NULL")
        elif isinstance(v, str):
            out.append('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif isinstance(v, bool):
            out.append("t" if v else "f")
        elif isinstance(v, (bytes, bytearray, memoryview)):
            out.append('"\\\\x' + bytes(v).hex() + '"')  # bytea's hex form, quoted
        else:
            out.append(repr(v))
    return "{" + ",".join(out) + "}"


def literals(columns: dict[str, list[Any]]) -> dict[str, str]:
    """Each column of a batch as one array literal (see :func:`array_literal`)."""
    return {name: array_literal(values) for name, values in columns.items()}


# -- batches as column arrays -------------------------------------------------------------------
INSERT_COLUMNS = (
    ("id", "text"),
    ("task", "text"),
    ("queue", "text"),
    ("priority", "integer"),
    ("state", "text"),
    ("eta", "double precision"),
    ("unique_key", "text"),
    ("max_retries", "integer"),
    ("retry_backoff", "double precision"),
    ("retry_backoff_max", "double precision"),
    ("timeout", "double precision"),
    ("attempts", "integer"),
    ("cancel_requested", "boolean"),
    ("version", "integer"),
    ("created_at", "double precision"),
    ("payload", "bytea"),
    ("concurrency_key", "text"),
    ("workflow", "text"),
    ("depends_on", "bytea"),  # packed: unnest would flatten a text[][]
    ("feed", "text"),
    ("inputs", "bytea"),
    ("progress", "bytea"),
)

#: what a state change may alter (never the job's identity or payload)
CHANGE_COLUMNS = (
    ("queue", "text"),
    ("state", "text"),
    ("eta", "double precision"),
    ("max_retries", "integer"),
    ("retry_backoff", "double precision"),
    ("retry_backoff_max", "double precision"),
    ("attempts", "integer"),
    ("worker", "text"),
    ("lease", "bigint"),
    ("lease_expires", "double precision"),
    ("cancel_requested", "boolean"),
    ("version", "integer"),
    ("started_at", "double precision"),
    ("finished_at", "double precision"),
    ("error", "bytea"),
    ("result", "bytea"),
    ("inputs", "bytea"),
    ("progress", "bytea"),
)


def unnest_of(columns: Sequence[tuple[str, str]], first: int = 0) -> tuple[str, str]:
    """``unnest(%s::t[], ...)`` over the columns, and the column list for its alias;
    parameters are numbered from ``first`` as ``%(cN)s``."""
    args = ", ".join(f"%(c{first + i})s::{t}[]" for i, (_, t) in enumerate(columns))
    names = ", ".join(name for name, _ in columns)
    return f"unnest({args})", names


def insert_arrays(jobs: Sequence[JobRecord]) -> dict[str, list[Any]]:
    cols: list[list[Any]] = [[] for _ in INSERT_COLUMNS]
    for job in jobs:
        for col, value in zip(
            cols,
            (
                job.id,
                job.task,
                job.queue,
                job.priority,
                job.state.value,
                job.eta,
                job.unique_key,
                job.max_retries,
                job.retry_backoff,
                job.retry_backoff_max,
                job.timeout,
                job.attempts,
                job.cancel_requested,
                job.version,
                job.created_at,
                job.payload,
                job.concurrency_key,
                job.workflow,
                pack_map(list(job.depends_on)) if job.depends_on else None,
                job.feed,
                job.inputs,
                pack_map(job.progress),
            ),
            strict=True,
        ):
            col.append(value)
    return {f"c{i}": col for i, col in enumerate(cols)}


def change_arrays(transitions: Sequence[Transition], first: int) -> dict[str, list[Any]]:
    cols: list[list[Any]] = [[] for _ in CHANGE_COLUMNS]
    for t in transitions:
        job = t.new
        for col, value in zip(
            cols,
            (
                job.queue,
                job.state.value,
                job.eta,
                job.max_retries,
                job.retry_backoff,
                job.retry_backoff_max,
                job.attempts,
                job.worker,
                job.lease,
                job.lease_expires,
                job.cancel_requested,
                job.version,
                job.started_at,
                job.finished_at,
                pack_map(job.error),
                job.result,
                job.inputs,
                pack_map(job.progress),
            ),
            strict=True,
        ):
            col.append(value)
    return {f"c{first + i}": col for i, col in enumerate(cols)}
