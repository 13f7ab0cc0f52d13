"""Broker state as the JSON the HTTP API answers with (payloads decoded for people)."""

from __future__ import annotations

from typing import Any

from conveyor.broker.core import BrokerCore
from conveyor.broker.dispatch import WorkerRef
from conveyor.broker.history import History
from conveyor.broker.routes.wire import call_payload, plain_call, plain_value
from conveyor.job import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_RETRY_BACKOFF_MAX,
    Event,
    JobRecord,
)
from conveyor.schedules import job_schedule
from conveyor.security.payload import is_sealed, is_sealed_call

ENCRYPTED = "(encrypted)"  # what a person sees where a producer sealed the text


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def readable(value: Any) -> Any:
    """A sealed text or value as ``(encrypted)``; anything else as it is."""
    return ENCRYPTED if is_sealed(value) else value


def _readable_attempt_error(text: Any) -> Any:
    """An attempt's ``"Type: message"`` whose message was sealed, as ``"Type: (encrypted)"``."""
    if isinstance(text, str):
        kind, sep, message = text.partition(": ")
        if sep and is_sealed(message):
            return f"{kind}: {ENCRYPTED}"
    return readable(text)


def _readable_event(ev: Event) -> Event:
    if "error" not in ev and "traceback" not in ev:
        return ev
    out = dict(ev)
    if "error" in out:
        out["error"] = _readable_attempt_error(out["error"])
    if "traceback" in out:
        out["traceback"] = readable(out["traceback"])
    return out


def _readable_error(error: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if error is None else {k: readable(v) for k, v in error.items()}


def job_summary(job: JobRecord, core: BrokerCore) -> dict[str, Any]:
    options = core.workforce.known_options(job.task)
    error = job.error or {}
    return {
        "id": job.id,
        "task": job.task,
        "queue": job.queue,
        "priority": job.priority,
        "state": job.state.value,
        "attempts": job.attempts,
        "max_retries": _or(job.max_retries, _or(options and options.retries, DEFAULT_RETRIES)),
        "worker": job.worker,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "eta": job.eta,
        "error_type": error.get("type"),
        "error_message": readable(error.get("message")),
    }


def job_detail(job: JobRecord, events: list[Event], core: BrokerCore) -> dict[str, Any]:
    args, kwargs = plain_call(call_payload(job))
    encrypted = is_sealed_call(args, kwargs)
    result = plain_value(job.result)
    return {
        **job_summary(job, core),
        "encrypted": encrypted,  # sealed by the producer: the broker cannot read it either
        "args": [] if encrypted else args,
        "kwargs": {} if encrypted else kwargs,
        "result": readable(result),
        "error": _readable_error(job.error),
        "retry_backoff": _or(job.retry_backoff, DEFAULT_RETRY_BACKOFF),
        "retry_backoff_max": _or(job.retry_backoff_max, DEFAULT_RETRY_BACKOFF_MAX),
        "timeout": job.timeout,
        "unique_key": job.unique_key,
        "concurrency_key": job.concurrency_key,
        "cancel_requested": job.cancel_requested,
        "waiting": core.waiting_note(job),
        "schedule": _schedule(job.id),
        "progress": core.progress.of(job),
        "workflow": job.workflow,
        "depends_on": list(job.depends_on),
        "attempts_detail": attempts(events),
        "events": [_readable_event(ev) for ev in events],
    }


def _schedule(job_id: str) -> dict[str, Any] | None:
    """The schedule that fired the job, and its slot (None for a run-now)."""
    fired = job_schedule(job_id)
    return None if fired is None else {"name": fired[0], "slot": fired[1]}


_ENDS = {"completed", "failed", "requeued", "released", "cancelled"}


def attempts(events: list[Event]) -> list[dict[str, Any]]:
    """One entry per run, from the history: who ran it, when, how it ended, and why."""
    runs: list[dict[str, Any]] = []
    for ev in events:
        kind = ev.get("event")
        if kind == "started":
            runs.append(
                {
                    "attempt": ev.get("attempt", len(runs) + 1),
                    "worker": ev.get("worker"),
                    "started": ev.get("at"),
                    "ended": None,
                    "outcome": "running",
                }
            )
        elif kind in _ENDS and runs and runs[-1]["ended"] is None:
            run = runs[-1]
            run["ended"] = ev.get("at")
            run["outcome"] = kind
            if kind == "failed":
                run["error"] = _readable_attempt_error(ev.get("error"))
                if "traceback" in ev:
                    run["traceback"] = readable(ev["traceback"])
            if "reason" in ev:
                run["reason"] = ev["reason"]
    return runs


def worker_info(worker: WorkerRef) -> dict[str, Any]:
    return {
        "id": worker.id,
        "name": worker.name,
        "host": worker.host,
        "pid": worker.pid,
        "peer": worker.peer,
        "tasks": sorted(worker.tasks),
        "queues": list(worker.queues),
        "pool": worker.pool,
        "concurrency": worker.concurrency,
        "prefetch": worker.prefetch,
        "busy": len(worker.started),
        "held": len(worker.holding),
        "jobs": sorted(worker.started),
        "completed": worker.completed,
        "failed": worker.failed,
        "stalled": worker.stalled,
        "draining": worker.draining,
        "connected_at": worker.connected_at,
        "last_heartbeat": worker.last_heartbeat,
    }


def worker_counts(workers: list[WorkerRef]) -> dict[str, int]:
    busy = sum(1 for w in workers if w.started)
    return {
        "total": len(workers),
        "busy": busy,
        "idle": len(workers) - busy,
        "stalled": sum(1 for w in workers if w.stalled),
        "draining": sum(1 for w in workers if w.draining),
    }


async def stats(core: BrokerCore, history: History) -> dict[str, Any]:
    data = await core.store.stats()
    workers = list(core.dispatcher.workers.values())
    rates = history.percentiles()
    return {
        "states": data["states"],
        "totals": data["totals"],
        "queues": data["queues"],
        "tasks": data["tasks"],
        "priorities": data["priorities"],
        "workers": worker_counts(workers),
        "requeued": data["totals"]["requeued"],
        "jobs_per_second": round(history.jobs_per_second(), 3),
        "paused": sorted(core.paused),
        "limits": core.limits_info(data.get("waiting_for_key", {}), data),
        "run_time": rates["run"],
        "wait_time": rates["wait"],
        "store": core.store.health,
    }
