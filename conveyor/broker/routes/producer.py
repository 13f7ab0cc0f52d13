"""Producer routes: submit, get, wait, cancel, list, stats and the dead-letter queue."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from conveyor.broker.routes._base import Peer, Reply, invalid
from conveyor.broker.routes.wire import brief_map, job_map
from conveyor.errors import InvalidJob, JobNotFound, PermissionDenied, RateLimited
from conveyor.job import JobRecord, JobState
from conveyor.limits import (
    MAX_ECHO,
    MAX_ETA,
    MAX_GET_MANY,
    MAX_IDS,
    MAX_JOB_ID,
    MAX_LIST,
    MAX_LIST_OFFSET,
    MAX_QUEUE_NAME,
    MAX_TASK_NAME,
    MAX_WAIT_TIMEOUT,
    MAX_WAITS,
)
from conveyor.protocol.frames import ErrorCode
from conveyor.protocol.payload import pack
from conveyor.security.tokens import Role
from conveyor.stores.base import JobFilter
from conveyor.validation import check_name, number, parse_job


def submit(peer: Peer, frame: dict[str, Any]) -> Reply:
    raw_jobs = frame["jobs"]
    limits = peer.limits
    if not raw_jobs:
        raise invalid("jobs", "must hold at least one job")
    if len(raw_jobs) > limits.max_batch:
        raise invalid("jobs", f"may hold at most {limits.max_batch} jobs per submit")
    if not peer.take_submit_budget(len(raw_jobs)):
        peer.core.metrics["rate_limited"] += 1
        raise RateLimited(ErrorCode.RATE_LIMITED, "too many submits per second; slow down")
    now = peer.core.clock.now()
    jobs = []
    for i, raw in enumerate(raw_jobs):
        try:
            jobs.append(parse_job(raw, now, limits.max_payload))
        except InvalidJob as exc:
            prefix = f"jobs[{i}]: " if len(raw_jobs) > 1 else ""
            raise InvalidJob(ErrorCode.INVALID, prefix + exc.message, exc.field) from None
    return _submit(peer, frame["rid"], jobs)


async def _submit(peer: Peer, rid: int, jobs: list[JobRecord]) -> None:
    inserted = await peer.core.submit(jobs)
    peer.send(
        {
            "t": "submitted",
            "rid": rid,
            "jobs": [
                {"id": i.job.id, "state": i.job.state.value, "created": i.created} for i in inserted
            ],
        }
    )


@dataclass(frozen=True, slots=True)
class Wanted:
    """What a GET or WAIT asks the job map to carry besides the job's state."""

    events: bool = True
    payload: bool = True

    @classmethod
    def of(cls, frame: dict[str, Any]) -> Wanted:
        return cls(frame.get("events", True) is not False, frame.get("payload", True) is not False)


def describe(
    peer: Peer, job: JobRecord, events: list[Any] | None, payload: bool = True
) -> dict[str, Any]:
    core = peer.core
    return job_map(
        job,
        packed=peer.packed,
        events=events,
        options=core.workforce.known_options(job.task),
        note=core.waiting_note(job),
        payload=payload,
        lease_expires=core.lease_expiry(job),
        progress=core.progress.of(job),
    )


async def send_job(peer: Peer, rid: int, job: JobRecord, wanted: Wanted = Wanted()) -> None:
    events = await peer.core.history(job.id) if wanted.events else None
    peer.send({"t": "job", "rid": rid, "job": describe(peer, job, events, wanted.payload)})


def job_id(value: str) -> str:
    """A requested job id; one that cannot be an id names no job (and is not echoed whole:
    a megabyte of id would make the error itself too big to send)."""
    try:
        return check_name(value, "id", MAX_JOB_ID)
    except InvalidJob:
        raise JobNotFound(ErrorCode.NOT_FOUND, f"no job {value[:MAX_ECHO]!r}") from None


def get(peer: Peer, frame: dict[str, Any]) -> Reply:
    requested = job_id(frame["id"])
    if peer.role is Role.WORKER and (peer.worker is None or requested not in peer.worker.holding):
        # a worker reads the jobs it runs, nothing else; asked before the store, so the
        # answer does not even say whether such a job exists
        peer.core.metrics["forbidden"] += 1
        raise PermissionDenied(
            ErrorCode.FORBIDDEN, "a worker may read only the jobs dispatched to it"
        )
    return _get(peer, frame["rid"], requested, Wanted.of(frame))


async def _get(peer: Peer, rid: int, job_id: str, wanted: Wanted) -> None:
    await send_job(peer, rid, await peer.core.get(job_id, payload=wanted.payload), wanted)


def get_many(peer: Peer, frame: dict[str, Any]) -> Reply:
    """GET_MANY: the state, result and error of up to MAX_GET_MANY jobs in one reply
    (their arguments only if ``payload`` is true; no histories)."""
    ids = frame["ids"]
    if not 1 <= len(ids) <= MAX_GET_MANY:
        raise invalid("ids", f"must hold 1 to {MAX_GET_MANY} job ids")
    for job_id in ids:
        check_name(job_id, "ids", MAX_JOB_ID)
    brief = frame.get("brief") is True
    return _get_many(peer, frame["rid"], ids, frame.get("payload") is True and not brief, brief)


async def _get_many(peer: Peer, rid: int, ids: list[str], payload: bool, brief: bool) -> None:
    found = await peer.core.get_many(ids, payload=payload)
    if brief:
        wire = [brief_map(j, packed=peer.packed) for j in found]
    else:
        wire = [describe(peer, j, None, payload) for j in found]
    fits = _prefix_that_fits(peer, wire)  # the client asks again for the rest
    reply: dict[str, Any] = {"t": "jobs", "rid": rid, "jobs": wire[:fits]}
    if fits < len(wire):
        reply["truncated"] = True
    peer.send(reply)


def _prefix_that_fits(peer: Peer, wire: list[dict[str, Any]]) -> int:
    """How many of these job maps fit in one frame (at least one: a job always fits)."""
    budget = peer.limits.max_frame_size - 1024
    size = 0
    for i, job in enumerate(wire):
        size += len(pack(job))
        if size > budget:
            return max(1, i)
    return len(wire)


def wait(peer: Peer, frame: dict[str, Any]) -> Reply:
    timeout = number(frame, "timeout", 0, MAX_WAIT_TIMEOUT)
    since = number(frame, "progress", 0, MAX_ETA)
    job = job_id(frame["id"])
    if timeout == 0:
        return get(peer, frame)
    if peer.waits >= MAX_WAITS:
        raise RateLimited(
            ErrorCode.RATE_LIMITED, f"at most {MAX_WAITS} outstanding waits per connection"
        )
    peer.waits += 1  # counted at once, so a burst of WAITs cannot slip past the cap
    return _wait(peer, frame["rid"], job, timeout, Wanted.of(frame), since)


async def _wait(
    peer: Peer,
    rid: int,
    job_id: str,
    timeout: float | None,
    wanted: Wanted,
    since: float | None = None,
) -> None:
    """Reply with the job once it is final (or when ``timeout`` passes; or, with
    ``since``, at its first progress report newer than that); no polling."""
    core = peer.core
    timer: asyncio.TimerHandle | None = None

    def stop_waiting() -> None:
        if timer is not None:
            timer.cancel()
        core.progress.unwatch(job_id, progressed)
        core.waiters.discard(job_id, done)
        peer.waits -= 1

    def done(job: JobRecord) -> None:
        stop_waiting()
        if wanted.events:
            core.spawn(send_job(peer, rid, job, wanted))
        else:  # result(): state, result and error are all it needs; no read
            peer.send({"t": "job", "rid": rid, "job": describe(peer, job, None, wanted.payload)})

    def progressed() -> None:
        stop_waiting()
        core.spawn(_get(peer, rid, job_id, wanted))

    def expired() -> None:
        stop_waiting()
        core.spawn(_get(peer, rid, job_id, wanted))

    try:
        final = await core.wait(job_id, peer, done, payload=wanted.payload)
    except BaseException:
        peer.waits -= 1
        raise
    if final is not None:
        peer.waits -= 1
        await send_job(peer, rid, final, wanted)
        return
    if since is not None:
        core.progress.watch(job_id, peer, progressed)  # before the read: no report slips by
        current = core.progress.of(await core.get(job_id))
        if current is not None and current.get("at", 0) > since:
            progressed()  # newer than the producer has seen already
            return
    if timeout is not None:
        timer = asyncio.get_running_loop().call_later(timeout, expired)


def cancel(peer: Peer, frame: dict[str, Any]) -> Reply:
    return _cancel(peer, frame["rid"], job_id(frame["id"]))


async def _cancel(peer: Peer, rid: int, job_id: str) -> None:
    await send_job(peer, rid, await peer.core.cancel(job_id))


_STATES = frozenset(s.value for s in JobState)


def list_jobs(peer: Peer, frame: dict[str, Any]) -> Reply:
    state = frame.get("state")
    if state is not None and state not in _STATES:
        raise invalid("state", f"must be one of {', '.join(s.value for s in JobState)}")
    for fld, max_len in (
        ("queue", MAX_QUEUE_NAME),
        ("task", MAX_TASK_NAME),
        ("workflow", MAX_JOB_ID),
    ):
        if frame.get(fld) is not None:
            check_name(frame[fld], fld, max_len)
    limit = number(frame, "limit", 1, MAX_LIST, integer=True) or 100
    offset = number(frame, "offset", 0, MAX_LIST_OFFSET, integer=True) or 0
    cursor = frame.get("cursor")
    if cursor is not None and not (
        isinstance(cursor, str) and cursor.isascii() and cursor.isdigit() and len(cursor) < 19
    ):
        raise invalid("cursor", "must be a cursor from an earlier JOBS reply")
    where = JobFilter(
        state=None if state is None else JobState(state),
        queue=frame.get("queue"),
        task=frame.get("task"),
        workflow=frame.get("workflow"),
    )
    return _list(peer, frame["rid"], where, limit, cursor, offset)


async def _list(
    peer: Peer, rid: int, where: JobFilter, limit: int, cursor: str | None, offset: int
) -> None:
    page = await peer.core.list_jobs(where, limit, cursor, offset)
    wire = [describe(peer, j, None) for j in page.jobs]
    # Big payloads can make a full page exceed the frame limit: send the longest prefix
    # that fits and say so; the client asks again with a larger offset.
    fits = _prefix_that_fits(peer, wire)
    reply: dict[str, Any] = {"t": "jobs", "rid": rid, "jobs": wire[:fits]}
    if fits < len(wire):
        reply["truncated"] = True
    elif page.cursor is not None:
        reply["cursor"] = page.cursor
    peer.send(reply)


def stats(peer: Peer, frame: dict[str, Any]) -> Reply:
    return _stats(peer, frame["rid"], bool(frame.get("brief")))


async def _stats(peer: Peer, rid: int, brief: bool) -> None:
    numbers = await (peer.core.store.stats_brief() if brief else peer.core.stats())
    peer.send({"t": "stats_reply", "rid": rid, "stats": numbers})


def _ids(frame: dict[str, Any]) -> list[str] | None:
    ids = frame.get("ids")
    if ids is None:
        if not frame.get("all"):
            raise invalid("ids", "give ids, or all: true")
        return None
    if len(ids) > MAX_IDS:
        raise invalid("ids", f"may hold at most {MAX_IDS} ids")
    if not all(isinstance(i, str) for i in ids):
        raise invalid("ids", "must be a list of job id strings")
    return list(ids)


def dlq_retry(peer: Peer, frame: dict[str, Any]) -> Reply:
    return _count(peer, frame["rid"], peer.core.dlq_retry(_ids(frame)))


def dlq_purge(peer: Peer, frame: dict[str, Any]) -> Reply:
    return _count(peer, frame["rid"], peer.core.dlq_purge(_ids(frame)))


async def _count(peer: Peer, rid: int, op: Any) -> None:
    peer.send({"t": "ok", "rid": rid, "count": await op})
