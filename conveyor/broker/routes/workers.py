"""Worker routes: ready, report, heartbeat, progress, release, drain; and the link the core uses
to push jobs and aborts back to a worker."""

from __future__ import annotations

import reprlib
from typing import Any

from conveyor.broker.dispatch import WorkerRef
from conveyor.broker.progress import Update
from conveyor.broker.routes._base import Peer, Reply, invalid
from conveyor.broker.routes.wire import dispatch_map
from conveyor.errors import BrokerError, Conflict, StoreUnavailable
from conveyor.job import JobRecord
from conveyor.lifecycle import Outcome
from conveyor.limits import (
    MAX_CONCURRENCY,
    MAX_ERROR_MESSAGE,
    MAX_ERROR_TYPE,
    MAX_META,
    MAX_PID,
    MAX_PROGRESS_BATCH,
    MAX_PROGRESS_MESSAGE,
    MAX_QUEUE_NAME,
    MAX_RETRY_DELAY,
    MAX_TASK_NAME,
    MAX_TRACEBACK,
    MAX_WORKER_QUEUES,
    MAX_WORKER_TASKS,
)
from conveyor.protocol.frames import ErrorCode
from conveyor.protocol.payload import PayloadError, check_json, pack
from conveyor.schedules import parse_declared
from conveyor.validation import check_name, number, parse_task_options


class _Link:
    """The core's handle on one worker: DISPATCH, ABORT and GOODBYE on its connection."""

    def __init__(self, peer: Peer) -> None:
        self._peer = peer

    def dispatch(self, jobs: list[JobRecord]) -> None:
        packed = self._peer.packed
        self._peer.send_batch("dispatch", "jobs", [dispatch_map(j, packed=packed) for j in jobs])

    def abort(self, job_id: str, lease: int | None) -> None:
        frame: dict[str, Any] = {"t": "abort", "id": job_id}
        if lease is not None:
            frame["lease"] = lease
        self._peer.send(frame)

    def close(self, reason: str) -> None:
        self._peer.goodbye(reason)


def ready(peer: Peer, frame: dict[str, Any]) -> Reply:
    if peer.worker is not None:
        raise Conflict(ErrorCode.CONFLICT, "this connection already sent ready")
    tasks, queues = frame["tasks"], frame["queues"]
    if len(tasks) > MAX_WORKER_TASKS:
        raise invalid("tasks", f"may name at most {MAX_WORKER_TASKS} tasks")
    for name in tasks:
        check_name(name, "tasks", MAX_TASK_NAME)
    if not queues:
        raise invalid("queues", "must name at least one queue")
    if len(queues) > MAX_WORKER_QUEUES:
        raise invalid("queues", f"may name at most {MAX_WORKER_QUEUES} queues")
    for name in queues:
        check_name(name, "queues", MAX_QUEUE_NAME)
    concurrency = number(frame, "concurrency", 1, MAX_CONCURRENCY, integer=True)
    prefetch = number(frame, "prefetch", 0, MAX_CONCURRENCY, integer=True)
    pid = number(frame, "pid", 0, MAX_PID, integer=True)
    declared = parse_declared(frame.get("schedules"), set(tasks), peer.core.clock.now())
    peer.worker = peer.core.workforce.worker_join(
        name=peer.client_name or "worker",
        tasks=tasks,
        queues=queues,
        concurrency=concurrency,
        prefetch=concurrency if prefetch is None else prefetch,
        link=_Link(peer),
        options=parse_task_options(frame.get("defaults")),
        routes=_routes(frame.get("routes"), tasks),
        pool=str(frame.get("pool", ""))[:40],
        peer=peer.peer,
        host=str(frame.get("host", ""))[:200],
        pid=pid,
    )
    peer.send({"t": "ok", "rid": frame["rid"], "worker": peer.worker.id})
    if declared:  # in the background: a slow store must not hold the worker's start up
        peer.core.spawn(peer.core.schedules.declare(declared))
    return None


def _routes(raw: Any, tasks: list[str]) -> dict[str, str]:
    """READY's ``routes``: the queue each offered task is declared on."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise invalid("routes", "must map task names to queue names")
    offered = set(tasks)
    for task, queue in raw.items():
        if task not in offered:
            shown = _text(task)[:MAX_TASK_NAME]
            raise invalid("routes", f"names task {shown!r}, which this worker does not offer")
        check_name(queue, "routes", MAX_QUEUE_NAME)
    return dict(raw)


def _worker_of(peer: Peer) -> WorkerRef:
    if peer.worker is None:
        raise Conflict(ErrorCode.CONFLICT, "send ready before worker frames")
    return peer.worker


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 4, 200, 200


def _text(value: Any) -> str:
    """A value that should have been text, as text: bounded, and safe for any input (a
    list nested 900 deep, an integer of 5,000 digits, bytes)."""
    if isinstance(value, str):
        return value
    try:
        return _SHORT.repr(value)
    except (ValueError, RecursionError):  # an int too long to print, say
        return f"<{type(value).__name__}>"


def _clean_error(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": _text(raw.get("type", "Error"))[:MAX_ERROR_TYPE],
        "message": _text(raw.get("message", ""))[:MAX_ERROR_MESSAGE],
        "traceback": _text(raw.get("traceback", ""))[-MAX_TRACEBACK:],
    }


def _outcome(raw: Any, max_result: int) -> Outcome:
    if not isinstance(raw, dict):
        raise invalid("results", "each result must be a map")
    job_id, lease, ok = raw.get("id"), raw.get("lease"), raw.get("ok")
    if (
        not isinstance(job_id, str)
        or not isinstance(lease, int)
        or isinstance(lease, bool)
        or not isinstance(ok, bool)
    ):
        raise invalid("results", "each result needs id (str), lease (int) and ok (bool)")
    if not ok:
        error = raw.get("error")
        if not isinstance(error, dict):
            raise invalid("results", "a failed result needs an error map")
        delay = raw.get("retry_delay")
        if delay is not None and (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not 0 <= delay <= MAX_RETRY_DELAY
        ):
            raise invalid("results", f"retry_delay must be a number from 0 to {MAX_RETRY_DELAY:g}")
        return Outcome(
            job_id, lease, False, None, _clean_error(error), delay, raw.get("reject") is True
        )
    result = raw.get("result")
    if not isinstance(result, bytes):  # a plain value (not the packed feature): pack it once
        try:
            check_json(result, "the result")
            result = pack(result)
        except PayloadError as exc:
            raise invalid("results", f"the result cannot be stored: {exc}") from None
    if len(result) > max_result:
        raise invalid("results", f"a result is {len(result)} bytes; the limit is {max_result}")
    return Outcome(job_id, lease, True, result)


def _refused(raw: Any, why: str) -> Outcome | None:
    """A failure for a malformed result that still names its job and lease."""
    if (
        isinstance(raw, dict)
        and isinstance(raw.get("id"), str)
        and isinstance(raw.get("lease"), int)
        and not isinstance(raw.get("lease"), bool)
    ):
        error = {
            "type": "InvalidReport",
            "message": f"the worker sent a bad result: {why}",
            "traceback": "",
        }
        return Outcome(raw["id"], raw["lease"], False, None, error, None, True)
    return None


def report(peer: Peer, frame: dict[str, Any]) -> Reply:
    """Apply a batch of results (stale ones are ignored by the core but acknowledged).

    A malformed entry is refused on its own (ERROR ``invalid`` without rid); if it still
    names a held job, that job fails for good rather than staying running for ever.
    """
    worker = _worker_of(peer)
    outcomes: list[Outcome] = []
    refused: list[str] = []
    for raw in frame["results"]:
        outcome: Outcome | None
        try:
            outcome = _outcome(raw, peer.limits.max_payload)
        except BrokerError as exc:
            refused.append(exc.message)
            outcome = _refused(raw, exc.message)
        if outcome is not None:
            outcomes.append(outcome)
    if refused:
        peer.error(
            ErrorCode.INVALID, f"{len(refused)} result(s) refused: {refused[0]}", None, "results"
        )
    return _report(peer, worker, outcomes) if outcomes else None


async def _report(peer: Peer, worker: WorkerRef, outcomes: list[Outcome]) -> None:
    acked = {"t": "acked", "ids": [o.id for o in outcomes]}
    try:
        await peer.core.workforce.report(worker, outcomes)
    except StoreUnavailable as exc:
        # The results are kept and written once the store recovers: say why the ACKED is
        # late, and send it then (nothing for the worker to resend or redo meanwhile).
        peer.error(ErrorCode.STORE_UNAVAILABLE, exc.message, None)
        peer.core.spawn(_ack_when_durable(peer, acked))
        return
    peer.send(acked)


async def _ack_when_durable(peer: Peer, acked: dict[str, Any]) -> None:
    if await peer.core.until_durable():
        peer.send(acked)


def heartbeat(peer: Peer, frame: dict[str, Any]) -> Reply:
    running = frame.get("running") or ()
    peer.core.workforce.heartbeat(_worker_of(peer), [i for i in running if isinstance(i, str)])
    return None


def progress(peer: Peer, frame: dict[str, Any]) -> Reply:
    """PROGRESS: the latest progress of running jobs (no reply). The whole frame is
    refused (ERROR ``invalid`` without rid) if an entry is malformed."""
    worker = _worker_of(peer)
    jobs = frame["jobs"]
    if len(jobs) > MAX_PROGRESS_BATCH:
        raise invalid("jobs", f"may hold at most {MAX_PROGRESS_BATCH} entries")
    try:
        updates = [_update(raw) for raw in jobs]
    except BrokerError as exc:
        peer.error(ErrorCode.INVALID, exc.message, None, "jobs")
        return None
    peer.core.progress.report(worker, updates)
    return None


def _update(raw: Any) -> Update:
    if not isinstance(raw, dict):
        raise invalid("jobs", "each progress entry must be a map")
    job_id, lease = raw.get("id"), raw.get("lease")
    if not isinstance(job_id, str) or not isinstance(lease, int) or isinstance(lease, bool):
        raise invalid("jobs", "each progress entry needs id (str) and lease (int)")
    value = raw.get("value")
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1
    ):
        raise invalid("jobs", "progress value must be a number from 0 to 1, or nil")
    message = raw.get("message")
    if message is not None and (
        not isinstance(message, str) or len(message) > MAX_PROGRESS_MESSAGE
    ):
        raise invalid("jobs", f"progress message must be text of at most {MAX_PROGRESS_MESSAGE}")
    meta = raw.get("meta") or {}
    if not isinstance(meta, dict):
        raise invalid("jobs", "progress meta must be a map")
    try:
        check_json(meta, "meta")
        size = len(pack(meta))
    except PayloadError as exc:
        raise invalid("jobs", f"progress meta is not JSON-compatible: {exc}") from None
    if size > MAX_META:
        raise invalid("jobs", f"progress meta is {size} bytes packed; the limit is {MAX_META}")
    return Update(job_id, lease, None if value is None else float(value), message, meta)


def release(peer: Peer, frame: dict[str, Any]) -> Reply:
    worker = _worker_of(peer)
    leases: dict[str, int] = {}
    for raw in frame["jobs"]:
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("id"), str)
            or not isinstance(raw.get("lease"), int)
            or isinstance(raw.get("lease"), bool)
        ):
            raise invalid("jobs", "each released job needs id (str) and lease (int)")
        leases[raw["id"]] = raw["lease"]
    return peer.core.workforce.release(worker, leases) if leases else None


def drain(peer: Peer, frame: dict[str, Any]) -> Reply:
    peer.core.workforce.drain(_worker_of(peer))
    return None
