"""What the broker does with each request frame: one function per frame type.

A handler validates its frame (raising BrokerError with a code and field on bad
input; the session turns that into an ERROR reply and the connection stays usable),
then either replies at once or returns a coroutine the session runs as a task.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import msgpack

from conveyor.broker.dispatch import WorkerRef
from conveyor.errors import BrokerError, InvalidJob, JobNotFound
from conveyor.job import Job, JobState
from conveyor.protocol.frames import ErrorCode, FrameType
from conveyor.security.tokens import Role, TokenInfo
from conveyor.stores.base import Outcome
from conveyor.validation import (
    MAX_QUEUE_NAME,
    MAX_TASK_NAME,
    JobSpec,
    check_name,
    parse_job_spec,
)

if TYPE_CHECKING:
    from conveyor.broker.session import Session

Reply = Coroutine[Any, Any, None] | None
Handler = Callable[["Session", dict[str, Any]], Reply]
MAX_LIST = 1000
MAX_WAITS = 10_000  # outstanding WAITs per connection: each holds broker memory
_worker_seq = itertools.count(1)


def _invalid(fld: str, message: str) -> BrokerError:
    return InvalidJob(ErrorCode.INVALID, message, fld)


# -- producers -------------------------------------------------------------------------
def submit(session: Session, frame: dict[str, Any]) -> Reply:
    broker = session.broker
    raw_jobs = frame["jobs"]
    if not raw_jobs:
        raise _invalid("jobs", "jobs must hold at least one job")
    if len(raw_jobs) > broker.config.limits.max_batch:
        raise _invalid("jobs", f"at most {broker.config.limits.max_batch} jobs per submit")
    if not session.take_submit_budget(len(raw_jobs)):
        broker.metrics["rate_limited"] += 1
        raise BrokerError(ErrorCode.RATE_LIMITED, "too many submits per second; slow down")
    now = broker.clock.now()
    max_payload = broker.config.limits.max_payload
    specs = []
    for i, raw in enumerate(raw_jobs):
        try:
            specs.append(parse_job_spec(raw, now, max_payload))
        except InvalidJob as exc:
            prefix = f"jobs[{i}]: " if len(raw_jobs) > 1 else ""
            raise InvalidJob(ErrorCode.INVALID, prefix + exc.message, exc.field) from None
    defaults = broker.task_defaults
    specs = [_with_task_defaults(s, defaults.get(s.task)) for s in specs]
    return _submit(session, frame["rid"], specs, now)


def _with_task_defaults(spec: JobSpec, task: dict[str, Any] | None) -> JobSpec:
    """Fill what the producer left unset from the task's own @task options."""
    if not task:
        return spec
    changes = {
        field: task[key]
        for field, key in _DEFAULT_FIELDS
        if getattr(spec, field) is None and key in task
    }
    return dataclasses.replace(spec, **changes) if changes else spec


_DEFAULT_FIELDS = (
    ("max_retries", "retries"),
    ("retry_backoff", "retry_backoff"),
    ("retry_backoff_max", "retry_backoff_max"),
)


def _parse_defaults(raw: Any) -> dict[str, dict[str, Any]]:
    """READY's ``defaults``: {task: {retries, retry_backoff, retry_backoff_max}}."""
    if raw is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, options in raw.items():
        if not isinstance(name, str) or not isinstance(options, dict):
            raise _invalid("defaults", "defaults must map task names to option maps")
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
            raise _invalid("defaults", f"defaults for {name}: {exc.message}") from None
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
        raise _invalid("timeout", "timeout must be from 0 to 86400 seconds")
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
        raise _invalid("state", f"state must be one of {', '.join(s.value for s in JobState)}")
    queue = frame.get("queue")
    if queue is not None:
        check_name(queue, "queue", MAX_QUEUE_NAME)
    limit = frame.get("limit", 100)
    if not 1 <= limit <= MAX_LIST:
        raise _invalid("limit", f"limit must be from 1 to {MAX_LIST}")
    offset = frame.get("offset", 0)
    if offset < 0:
        raise _invalid("offset", "offset must be >= 0")
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
        raise _invalid("ids", "ids must be a list of job id strings")
    return list(ids)


def dlq_retry(session: Session, frame: dict[str, Any]) -> Reply:
    ids = _ids(frame)
    if ids is None and not frame.get("all"):
        raise _invalid("ids", "give ids, or all: true")
    return _dlq_retry(session, frame["rid"], ids)


async def _dlq_retry(session: Session, rid: int, ids: list[str] | None) -> None:
    broker = session.broker
    count = await broker.store.dlq_retry(ids, broker.clock.now())
    session.send({"t": "ok", "rid": rid, "count": count})
    broker.dispatcher.trigger()


def dlq_purge(session: Session, frame: dict[str, Any]) -> Reply:
    ids = _ids(frame)
    if ids is None and not frame.get("all"):
        raise _invalid("ids", "give ids, or all: true")
    return _dlq_purge(session, frame["rid"], ids)


async def _dlq_purge(session: Session, rid: int, ids: list[str] | None) -> None:
    count = await session.broker.store.dlq_purge(ids)
    session.send({"t": "ok", "rid": rid, "count": count})


# -- admin: tokens --------------------------------------------------------------------
def _token_map(info: TokenInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "role": info.role.value,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "revoked": info.revoked,
        "hash_prefix": info.hash_prefix,
    }


def token_create(session: Session, frame: dict[str, Any]) -> Reply:
    try:
        role = Role(frame["role"])
    except ValueError:
        raise _invalid("role", "role must be producer, worker or admin") from None
    return _token_create(session, frame["rid"], role, frame.get("name"), frame.get("ttl"))


async def _token_create(
    session: Session, rid: int, role: Role, name: str | None, ttl: float | None
) -> None:
    broker = session.broker
    try:  # the registry locks and fsyncs its file: keep that off the event loop
        token, info = await asyncio.to_thread(
            broker.tokens.create, role, name, ttl, now=broker.clock.now()
        )
    except ValueError as exc:  # bad name/ttl, or DuplicateTokenName
        raise _invalid("name" if "name" in str(exc) else "ttl", str(exc)) from None
    session.send({"t": "ok", "rid": rid, "token": token, "info": _token_map(info)})


def token_list(session: Session, frame: dict[str, Any]) -> Reply:
    tokens = [_token_map(t) for t in session.broker.tokens.list()]
    session.send({"t": "ok", "rid": frame["rid"], "tokens": tokens})
    return None


def token_revoke(session: Session, frame: dict[str, Any]) -> Reply:
    return _token_revoke(session, frame["rid"], frame["name"])


async def _token_revoke(session: Session, rid: int, name: str) -> None:
    if not await asyncio.to_thread(session.broker.tokens.revoke, name):
        raise JobNotFound(ErrorCode.NOT_FOUND, f"no token named {name!r}")
    session.send({"t": "ok", "rid": rid, "revoked": name})


def ping(session: Session, frame: dict[str, Any]) -> Reply:
    reply: dict[str, Any] = {"t": "pong"}
    if "rid" in frame:
        reply["rid"] = frame["rid"]
    session.send(reply)
    return None


def pong(session: Session, frame: dict[str, Any]) -> Reply:
    return None


def goodbye(session: Session, frame: dict[str, Any]) -> Reply:
    session.close()
    return None


def error(session: Session, frame: dict[str, Any]) -> Reply:
    return None  # a client telling us about a problem: logged nowhere, nothing to do


# -- workers ---------------------------------------------------------------------------
def ready(session: Session, frame: dict[str, Any]) -> Reply:
    broker = session.broker
    if session.worker is not None:
        raise BrokerError(ErrorCode.CONFLICT, "this connection already sent ready")
    tasks = frame["tasks"]
    queues = frame["queues"]
    for name in tasks:
        check_name(name, "tasks", MAX_TASK_NAME)
    if not queues:
        raise _invalid("queues", "a worker must serve at least one queue")
    for name in queues:
        check_name(name, "queues", MAX_QUEUE_NAME)
    concurrency = frame["concurrency"]
    if not 1 <= concurrency <= 10_000:
        raise _invalid("concurrency", "concurrency must be from 1 to 10000")
    prefetch = frame.get("prefetch", concurrency)
    if not 0 <= prefetch <= 10_000:
        raise _invalid("prefetch", "prefetch must be from 0 to 10000")
    broker.task_defaults.update(_parse_defaults(frame.get("defaults")))
    name = session.client_name or "worker"
    worker = WorkerRef(
        id=f"{name}#{next(_worker_seq)}",
        name=name,
        tasks=frozenset(tasks),
        queues=tuple(dict.fromkeys(queues)),
        concurrency=concurrency,
        prefetch=prefetch,
        send_jobs=lambda jobs: _send_jobs(session, jobs),
        pool=str(frame.get("pool", "")),
        peer=session.peer,
        connected_at=broker.clock.now(),
        last_heartbeat=broker.clock.now(),
    )
    session.worker = worker
    session.send({"t": "ok", "rid": frame["rid"], "worker": worker.id})
    broker.worker_joined(worker)
    return None


def _send_jobs(session: Session, jobs: list[Job]) -> None:
    session.send(
        {
            "t": "dispatch",
            "jobs": [
                {
                    "id": j.id,
                    "task": j.task,
                    "args": j.args,
                    "kwargs": j.kwargs,
                    "queue": j.queue,
                    "priority": j.priority,
                    "lease": j.lease,
                    "attempt": j.attempts,
                    "timeout": j.timeout,
                }
                for j in jobs
            ],
        }
    )


def _worker_of(session: Session) -> WorkerRef:
    if session.worker is None:
        raise BrokerError(ErrorCode.CONFLICT, "send ready before worker frames")
    return session.worker


def _outcome(raw: Any) -> Outcome:
    if not isinstance(raw, dict):
        raise _invalid("results", "each result must be a map")
    job_id, lease, ok = raw.get("id"), raw.get("lease"), raw.get("ok")
    if not isinstance(job_id, str) or not isinstance(lease, int) or not isinstance(ok, bool):
        raise _invalid("results", "each result needs id (str), lease (int) and ok (bool)")
    error_map = raw.get("error")
    if not ok and not isinstance(error_map, dict):
        raise _invalid("results", "a failed result needs an error map")
    delay = raw.get("retry_delay")
    if delay is not None and (not isinstance(delay, int | float) or not 0 <= delay <= 365 * 86400):
        raise _invalid("results", "retry_delay must be a number >= 0")
    return Outcome(
        id=job_id,
        lease=lease,
        ok=ok,
        result=raw.get("result"),
        error=_clean_error(error_map) if isinstance(error_map, dict) and not ok else None,
        retry_delay=delay,
        reject=bool(raw.get("reject", False)),
    )


def _clean_error(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": str(raw.get("type", "Error"))[:200],
        "message": str(raw.get("message", ""))[:10_000],
        "traceback": str(raw.get("traceback", ""))[:50_000],
    }


def report(session: Session, frame: dict[str, Any]) -> Reply:
    """Apply a batch of results. A malformed entry is refused on its own; the rest apply."""
    worker = _worker_of(session)
    outcomes: list[Outcome] = []
    refused: list[str] = []
    for raw in frame["results"]:
        try:
            outcomes.append(_outcome(raw))
        except BrokerError as exc:
            refused.append(exc.message)
    for o in outcomes:
        worker.holding.discard(o.id)  # the credit comes back at once, before the commit
    session.broker.dispatcher.trigger()
    if refused:
        session.error(
            ErrorCode.INVALID, f"{len(refused)} result(s) refused: {refused[0]}", None, "results"
        )
    return _report(session, worker, outcomes) if outcomes else None


async def _report(session: Session, worker: WorkerRef, outcomes: list[Outcome]) -> None:
    broker = session.broker
    jobs = await broker.store.job_report_many(outcomes, broker.clock.now())
    for job in jobs:
        if job is None:
            continue
        if job.state is JobState.COMPLETED:
            worker.completed += 1
        else:
            worker.failed += 1
        broker.job_reported(job)
    session.send({"t": "acked", "ids": [o.id for o in outcomes]})


def heartbeat(session: Session, frame: dict[str, Any]) -> Reply:
    worker = _worker_of(session)
    broker = session.broker
    worker.last_heartbeat = broker.clock.now()
    if worker.stalled:
        worker.stalled = False
        broker.dispatcher.trigger()
    return _heartbeat(session, worker)


async def _heartbeat(session: Session, worker: WorkerRef) -> None:
    broker = session.broker
    await broker.store.job_extend_leases(worker.id, broker.config.lease, worker.last_heartbeat)


def release(session: Session, frame: dict[str, Any]) -> Reply:
    worker = _worker_of(session)
    pairs = []
    for raw in frame["jobs"]:
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
            raise _invalid("jobs", "each released job needs id and lease")
        if not isinstance(raw.get("lease"), int):
            raise _invalid("jobs", "each released job needs id and lease")
        pairs.append((raw["id"], raw["lease"]))
        worker.holding.discard(raw["id"])
    return _release(session, pairs)


async def _release(session: Session, pairs: list[tuple[str, int]]) -> None:
    broker = session.broker
    await broker.store.job_release_many(pairs, broker.clock.now())
    broker.dispatcher.trigger()


def drain(session: Session, frame: dict[str, Any]) -> Reply:
    _worker_of(session).draining = True
    return None


HANDLERS: dict[FrameType, Handler] = {
    FrameType.SUBMIT: submit,
    FrameType.GET: get,
    FrameType.WAIT: wait,
    FrameType.CANCEL: cancel,
    FrameType.LIST: list_jobs,
    FrameType.STATS: stats,
    FrameType.DLQ_RETRY: dlq_retry,
    FrameType.DLQ_PURGE: dlq_purge,
    FrameType.TOKEN_CREATE: token_create,
    FrameType.TOKEN_LIST: token_list,
    FrameType.TOKEN_REVOKE: token_revoke,
    FrameType.PING: ping,
    FrameType.PONG: pong,
    FrameType.GOODBYE: goodbye,
    FrameType.ERROR: error,
    FrameType.READY: ready,
    FrameType.REPORT: report,
    FrameType.HEARTBEAT: heartbeat,
    FrameType.RELEASE: release,
    FrameType.DRAIN: drain,
}
