"""Worker frames: ready, report, heartbeat, release, drain."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from conveyor.broker._reply import Reply, invalid
from conveyor.broker.dispatch import WorkerRef
from conveyor.broker.producer import parse_defaults
from conveyor.errors import BrokerError
from conveyor.job import Job, JobState
from conveyor.protocol.frames import ErrorCode
from conveyor.stores.base import Outcome
from conveyor.validation import MAX_QUEUE_NAME, MAX_TASK_NAME, check_name

if TYPE_CHECKING:
    from conveyor.broker.session import Session

_worker_seq = itertools.count(1)


def ready(session: Session, frame: dict[str, Any]) -> Reply:
    broker = session.broker
    if session.worker is not None:
        raise BrokerError(ErrorCode.CONFLICT, "this connection already sent ready")
    tasks = frame["tasks"]
    queues = frame["queues"]
    for name in tasks:
        check_name(name, "tasks", MAX_TASK_NAME)
    if not queues:
        raise invalid("queues", "a worker must serve at least one queue")
    for name in queues:
        check_name(name, "queues", MAX_QUEUE_NAME)
    concurrency = frame["concurrency"]
    if not 1 <= concurrency <= 10_000:
        raise invalid("concurrency", "concurrency must be from 1 to 10000")
    prefetch = frame.get("prefetch", concurrency)
    if not 0 <= prefetch <= 10_000:
        raise invalid("prefetch", "prefetch must be from 0 to 10000")
    broker.task_defaults.update(parse_defaults(frame.get("defaults")))
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
    session.send_batch(
        "dispatch",
        "jobs",
        [
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
    )


def _worker_of(session: Session) -> WorkerRef:
    if session.worker is None:
        raise BrokerError(ErrorCode.CONFLICT, "send ready before worker frames")
    return session.worker


def _outcome(raw: Any) -> Outcome:
    if not isinstance(raw, dict):
        raise invalid("results", "each result must be a map")
    job_id, lease, ok = raw.get("id"), raw.get("lease"), raw.get("ok")
    if not isinstance(job_id, str) or not isinstance(lease, int) or not isinstance(ok, bool):
        raise invalid("results", "each result needs id (str), lease (int) and ok (bool)")
    error_map = raw.get("error")
    if not ok and not isinstance(error_map, dict):
        raise invalid("results", "a failed result needs an error map")
    delay = raw.get("retry_delay")
    if delay is not None and (not isinstance(delay, int | float) or not 0 <= delay <= 365 * 86400):
        raise invalid("results", "retry_delay must be a number >= 0")
    return Outcome(
        id=job_id,
        lease=lease,
        ok=ok,
        result=raw.get("result"),
        error=_clean_error(error_map) if isinstance(error_map, dict) and not ok else None,
        retry_delay=delay,
        reject=bool(raw.get("reject", False)),
    )


def _refused_outcome(raw: Any, why: str) -> Outcome | None:
    """A failure for a malformed result that still names its job and lease."""
    if (
        isinstance(raw, dict)
        and isinstance(raw.get("id"), str)
        and isinstance(raw.get("lease"), int)
    ):
        error = {"type": "InvalidReport", "message": f"the worker sent a bad result: {why}"}
        return Outcome(id=raw["id"], lease=raw["lease"], ok=False, error=error)
    return None


def _clean_error(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": str(raw.get("type", "Error"))[:200],
        "message": str(raw.get("message", ""))[:10_000],
        "traceback": str(raw.get("traceback", ""))[:50_000],
    }


def report(session: Session, frame: dict[str, Any]) -> Reply:
    """Apply a batch of results.

    Only results for jobs this worker holds, under the lease it holds them by, count:
    a stale result (the job was requeued) or one for another worker's job is ignored.
    A malformed entry is refused on its own; if it still names a held job, that job
    fails (and is retried per policy) rather than staying running for ever.
    """
    worker = _worker_of(session)
    outcomes: list[Outcome] = []
    refused: list[str] = []
    for raw in frame["results"]:
        outcome: Outcome | None
        try:
            outcome = _outcome(raw)
        except BrokerError as exc:
            refused.append(exc.message)
            outcome = _refused_outcome(raw, exc.message)
        if outcome is not None and worker.holding.get(outcome.id) == outcome.lease:
            del worker.holding[outcome.id]  # the credit comes back at once, before the commit
            outcomes.append(outcome)
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
            raise invalid("jobs", "each released job needs id and lease")
        if not isinstance(raw.get("lease"), int):
            raise invalid("jobs", "each released job needs id and lease")
        if worker.holding.get(raw["id"]) == raw["lease"]:
            del worker.holding[raw["id"]]
            pairs.append((raw["id"], raw["lease"]))
    return _release(session, pairs) if pairs else None


async def _release(session: Session, pairs: list[tuple[str, int]]) -> None:
    broker = session.broker
    await broker.store.job_release_many(pairs, broker.clock.now())
    for job_id, _ in pairs:  # a release that crossed a CANCEL ended the job: tell waiters
        job = await broker.store.job_get(job_id)
        if job is not None and job.state.is_final:
            broker.waiters.finished(job)
    broker.dispatcher.trigger()


def drain(session: Session, frame: dict[str, Any]) -> Reply:
    _worker_of(session).draining = True
    return None
