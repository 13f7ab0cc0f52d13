"""Producer requests: submit, get, wait, cancel, list, stats and the dead-letter queue."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgpack

from conveyor.broker._reply import Reply, invalid
from conveyor.errors import BrokerError, InvalidJob, JobNotFound
from conveyor.job import Job, JobState
from conveyor.protocol.frames import ErrorCode
from conveyor.validation import MAX_QUEUE_NAME, check_name, parse_job_spec

if TYPE_CHECKING:
    from conveyor.broker.session import Session

MAX_LIST = 1000
MAX_WAITS = 10_000  # outstanding WAITs per connection: each holds broker memory


def submit(session: Session, frame: dict[str, Any]) -> Reply:
    broker = session.broker
    raw_jobs = frame["jobs"]
    if not raw_jobs:
        raise invalid("jobs", "jobs must hold at least one job")
    if len(raw_jobs) > broker.config.limits.max_batch:
        raise invalid("jobs", f"at most {broker.config.limits.max_batch} jobs per submit")
    if not session.take_submit_budget(len(raw_jobs)):
        broker.metrics["rate_limited"] += 1
        raise BrokerError(ErrorCode.RATE_LIMITED, "too many submits per second; slow down")
    now = broker.clock.now()
    max_payload = broker.config.limits.max_payload
    defaults = broker.task_defaults
    specs = []
    for i, raw in enumerate(raw_jobs):
        try:
            specs.append(parse_job_spec(raw, now, max_payload, defaults))
        except InvalidJob as exc:
            prefix = f"jobs[{i}]: " if len(raw_jobs) > 1 else ""
            raise InvalidJob(ErrorCode.INVALID, prefix + exc.message, exc.field) from None
    return _submit(session, frame["rid"], specs, now)


_DEFAULT_FIELDS = (
    ("max_retries", "retries"),
    ("retry_backoff", "retry_backoff"),
    ("retry_backoff_max", "retry_backoff_max"),
)


def parse_defaults(raw: Any) -> dict[str, dict[str, Any]]:
    """READY's ``defaults``: {task: {retries, retry_backoff, retry_backoff_max}}."""
    if raw is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, options in raw.items():
        if not isinstance(name, str) or not isinstance(options, dict):
            raise invalid("defaults", "defaults must map task names to option maps")
        probe = {
            "task": name,
            **{
                k: options[k]
                for k in ("retries", "retry_backoff", "retry_backoff_max")
                if k in options
            },
        }
        try:
            spec = parse_job_spec(probe, 0.0)
        except InvalidJob as exc:
            raise invalid("defaults", f"defaults for {name}: {exc.message}") from None
        out[name] = {
            key: getattr(spec, field)
            for field, key in _DEFAULT_FIELDS
            if getattr(spec, field) is not None
        }
    return out


async def _submit(session: Session, rid: int, specs: list[Any], now: float) -> None:
    broker = session.broker
    inserted = await broker.store.job_insert_many(specs, now)
    session.send(
        {
            "t": "submitted",
            "rid": rid,
            "jobs": [
                {"id": i.job.id, "state": i.job.state.value, "created": i.created} for i in inserted
            ],
        }
    )
    broker.jobs_inserted(inserted)


def get(session: Session, frame: dict[str, Any]) -> Reply:
    return _get(session, frame["rid"], frame["id"])


async def _get(session: Session, rid: int, job_id: str) -> None:
    job = await session.broker.store.job_get(job_id)
    if job is None:
        raise JobNotFound(ErrorCode.NOT_FOUND, f"no job {job_id}")
    session.send({"t": "job", "rid": rid, "job": session.broker.describe_job(job)})


def wait(session: Session, frame: dict[str, Any]) -> Reply:
    timeout = frame.get("timeout")
    if timeout is not None and not 0 <= timeout <= 86_400:  # also refuses NaN
        raise invalid("timeout", "timeout must be from 0 to 86400 seconds")
    if session.waits >= MAX_WAITS:
        raise BrokerError(
            ErrorCode.RATE_LIMITED, f"at most {MAX_WAITS} outstanding waits per connection"
        )
    session.waits += 1  # counted at once, so a burst of WAITs cannot slip past the cap
    return _wait(session, frame["rid"], frame["id"], timeout)


async def _wait(session: Session, rid: int, job_id: str, timeout: float | None) -> None:
    """Reply with the job once it is final (or when ``timeout`` passes); no polling."""
    broker = session.broker
    try:
        job = await broker.store.job_get(job_id)
    except BaseException:
        session.waits -= 1
        raise
    if job is None:
        session.waits -= 1
        raise JobNotFound(ErrorCode.NOT_FOUND, f"no job {job_id}")
    if job.state.is_final or timeout == 0:
        session.waits -= 1
        session.send({"t": "job", "rid": rid, "job": broker.describe_job(job)})
        return
    timer: asyncio.TimerHandle | None = None

    def done(final: Job) -> None:
        if timer is not None:
            timer.cancel()
        session.waits -= 1
        session.send({"t": "job", "rid": rid, "job": broker.describe_job(final)})

    def expired() -> None:
        broker.waiters.discard(job_id, done)
        session.waits -= 1
        broker.spawn(_get(session, rid, job_id))

    broker.waiters.add(job_id, session, done)
    if timeout is not None:
        timer = asyncio.get_running_loop().call_later(timeout, expired)


def cancel(session: Session, frame: dict[str, Any]) -> Reply:
    return _cancel(session, frame["rid"], frame["id"])


async def _cancel(session: Session, rid: int, job_id: str) -> None:
    broker = session.broker
    job = await broker.store.job_cancel(job_id, broker.clock.now())
    if job.state is JobState.RUNNING:
        broker.abort_running(job)
    else:
        broker.waiters.finished(job)
    session.send({"t": "job", "rid": rid, "job": broker.describe_job(job)})


def list_jobs(session: Session, frame: dict[str, Any]) -> Reply:
    state = frame.get("state")
    if state is not None and state not in {s.value for s in JobState}:
        raise invalid("state", f"state must be one of {', '.join(s.value for s in JobState)}")
    queue = frame.get("queue")
    if queue is not None:
        check_name(queue, "queue", MAX_QUEUE_NAME)
    limit = frame.get("limit", 100)
    if not 1 <= limit <= MAX_LIST:
        raise invalid("limit", f"limit must be from 1 to {MAX_LIST}")
    offset = frame.get("offset", 0)
    if offset < 0:
        raise invalid("offset", "offset must be >= 0")
    return _list(session, frame["rid"], state, queue, limit, offset)


async def _list(
    session: Session, rid: int, state: str | None, queue: str | None, limit: int, offset: int
) -> None:
    jobs = await session.broker.store.job_list(state, queue, limit, offset)
    wire = [j.to_wire(events=False) for j in jobs]
    # Big payloads can make a full page exceed the frame limit: send the longest prefix
    # that fits and say so; the client asks again with a larger offset.
    budget = session.broker.config.limits.max_frame_size - 1024
    size, fits = 0, len(wire)
    for i, job in enumerate(wire):
        size += len(msgpack.packb(job, use_bin_type=True))
        if size > budget:
            fits = max(1, i)
            break
    reply: dict[str, Any] = {"t": "jobs", "rid": rid, "jobs": wire[:fits]}
    if fits < len(wire):
        reply["truncated"] = True
    session.send(reply)


def stats(session: Session, frame: dict[str, Any]) -> Reply:
    return _stats(session, frame["rid"])


async def _stats(session: Session, rid: int) -> None:
    session.send({"t": "stats_reply", "rid": rid, "stats": await session.broker.stats()})


def _ids(frame: dict[str, Any]) -> list[str] | None:
    ids = frame.get("ids")
    if ids is None:
        return None
    if not all(isinstance(i, str) for i in ids):
        raise invalid("ids", "ids must be a list of job id strings")
    return list(ids)


def dlq_retry(session: Session, frame: dict[str, Any]) -> Reply:
    ids = _ids(frame)
    if ids is None and not frame.get("all"):
        raise invalid("ids", "give ids, or all: true")
    return _dlq_retry(session, frame["rid"], ids)


async def _dlq_retry(session: Session, rid: int, ids: list[str] | None) -> None:
    broker = session.broker
    count = await broker.store.dlq_retry(ids, broker.clock.now())
    session.send({"t": "ok", "rid": rid, "count": count})
    broker.dispatcher.trigger()


def dlq_purge(session: Session, frame: dict[str, Any]) -> Reply:
    ids = _ids(frame)
    if ids is None and not frame.get("all"):
        raise invalid("ids", "give ids, or all: true")
    return _dlq_purge(session, frame["rid"], ids)


async def _dlq_purge(session: Session, rid: int, ids: list[str] | None) -> None:
    count = await session.broker.store.dlq_purge(ids)
    session.send({"t": "ok", "rid": rid, "count": count})
