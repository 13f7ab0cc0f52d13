"""Job records as protocol maps (docs/protocol.md, section 8.1), packed or plain.

A peer that asked for the ``packed`` feature gets ``payload`` and ``result`` as the
MessagePack bytes the broker keeps; any other peer gets ``args``, ``kwargs`` and
``result`` as values, decoded here (the only place the broker decodes a payload).
"""

from __future__ import annotations

from typing import Any

from conveyor.job import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_RETRY_BACKOFF_MAX,
    Event,
    JobRecord,
)
from conveyor.lifecycle import TaskOptions
from conveyor.limits import MAX_FRAME_SIZE
from conveyor.protocol.payload import PayloadError, prepend_args, unpack, unpack_call

#: payload + result bytes above which a job map leaves the payload out, so that any job's map
#: fits in a default frame (each may be up to max_payload on its own)
MAX_JOB_MAP_PAYLOAD = MAX_FRAME_SIZE - 64 * 1024


def _or(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def job_map(
    job: JobRecord,
    *,
    packed: bool,
    events: list[Event] | None = None,
    options: TaskOptions | None = None,
    note: str | None = None,
    payload: bool = True,
    lease_expires: float | None = None,
    progress: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The job map; retry options not resolved yet show the task's (``options``) or 3/1/300.

    ``payload=False`` leaves the arguments out (a producer waiting for a result); they are
    left out anyway when they and the result together would not fit in a frame (say so:
    ``omitted: ["payload"]``).
    """
    opts = options or TaskOptions()
    wire: dict[str, Any] = {
        "id": job.id,
        "task": job.task,
        "queue": job.queue,
        "priority": job.priority,
        "state": job.state.value,
        "max_retries": _or(job.max_retries, opts.retries, DEFAULT_RETRIES),
        "retry_backoff": _or(job.retry_backoff, opts.retry_backoff, DEFAULT_RETRY_BACKOFF),
        "retry_backoff_max": _or(
            job.retry_backoff_max, opts.retry_backoff_max, DEFAULT_RETRY_BACKOFF_MAX
        ),
        "timeout": job.timeout,
        "eta": job.eta,
        "unique_key": job.unique_key,
        "concurrency_key": job.concurrency_key,
        "attempts": job.attempts,
        "worker": job.worker,
        "lease": job.lease,
        "lease_expires": lease_expires if lease_expires is not None else job.lease_expires,
        "error": job.error,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "cancel_requested": job.cancel_requested,
        "progress": progress if progress is not None else job.progress,
        "workflow": job.workflow,
        "depends_on": list(job.depends_on),
    }
    if payload and len(job.payload) + len(job.result or b"") > MAX_JOB_MAP_PAYLOAD:
        payload = False
        wire["omitted"] = ["payload"]
    if packed:
        if payload:
            wire["payload"] = call_payload(job)
        wire["result"] = job.result
    else:
        if payload:
            wire["args"], wire["kwargs"] = plain_call(call_payload(job))
        wire["result"] = plain_value(job.result)
    if events is not None:
        wire["events"] = events
    if note is not None:
        wire["waiting"] = note
    return wire


def brief_map(job: JobRecord, *, packed: bool) -> dict[str, Any]:
    """The few fields a producer reading a result needs (GET_MANY ``brief``)."""
    return {
        "id": job.id,
        "task": job.task,
        "state": job.state.value,
        "attempts": job.attempts,
        "error": job.error,
        "finished_at": job.finished_at,
        "result": job.result if packed else plain_value(job.result),
    }


def call_payload(job: JobRecord) -> bytes:
    """The call the job's task receives: its payload, with the results a workflow passed
    it (``inputs``) before its own positional arguments."""
    if job.inputs is None:
        return job.payload
    try:
        return prepend_args(job.payload, job.inputs)
    except PayloadError:
        return job.payload  # a payload the producer packed badly: its worker says so


def plain_call(payload: bytes) -> tuple[list[Any], dict[str, Any]]:
    try:
        return unpack_call(payload)
    except PayloadError:
        return [], {}  # a payload the producer packed badly: its worker reports the error


def plain_value(packed: bytes | None) -> Any:
    if packed is None:
        return None
    try:
        return unpack(packed)
    except PayloadError:
        return None


def dispatch_map(job: JobRecord, *, packed: bool) -> dict[str, Any]:
    """A job as DISPATCH carries it to a worker (section 9.3)."""
    wire: dict[str, Any] = {
        "id": job.id,
        "task": job.task,
        "queue": job.queue,
        "priority": job.priority,
        "lease": job.lease,
        "attempt": job.attempts,
        "timeout": job.timeout,
    }
    if packed:
        wire["payload"] = call_payload(job)
    else:
        wire["args"], wire["kwargs"] = plain_call(call_payload(job))
    return wire
