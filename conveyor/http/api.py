"""The REST API's routes: request → checked arguments → a core call → JSON.

The same validation as the protocol (:func:`conveyor.validation.parse_job`), the same core
calls, the same role table (:mod:`conveyor.http.auth`); errors as ``{"error": {...}}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from conveyor.broker.core import BrokerCore
from conveyor.broker.history import History
from conveyor.errors import BrokerError, InvalidJob
from conveyor.http import live, views
from conveyor.http.auth import Action, authorize
from conveyor.http.errors import HttpError
from conveyor.http.metrics import Metrics
from conveyor.http.schemas import (
    Count,
    ErrorBody,
    Health,
    IdsBody,
    JobDetail,
    JobId,
    JobPage,
    LimitBody,
    Limits,
    PauseResult,
    QueueInfo,
    SecurityInfo,
    Stats,
    SubmitBody,
    Submitted,
    TaskInfo,
    WorkerInfo,
)
from conveyor.http.security_info import security
from conveyor.job import JobState
from conveyor.limits import MAX_JOB_ID, MAX_QUEUE_NAME, MAX_TASK_NAME, NAME_PATTERN
from conveyor.security.tokens import hash_token
from conveyor.stores.base import JobFilter
from conveyor.validation import check_name, parse_job

_bearer = HTTPBearer(auto_error=False, description="a Conveyor token: Bearer cvy_...")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422, 429)
}
StateName = Literal["waiting", "scheduled", "queued", "running", "completed", "dead", "cancelled"]
NAME = f"^{NAME_PATTERN}$"
QueueName = Annotated[str, Path(min_length=1, max_length=MAX_QUEUE_NAME, pattern=NAME)]


@dataclass(slots=True)
class Context:
    """What the routes need of the broker (the app keeps it in ``app.state.conveyor``)."""

    core: BrokerCore
    history: History
    metrics: Metrics
    cert_file: FilePath
    http_tls: bool
    version: str


def _context(request: Request) -> Context:
    ctx: Context = request.app.state.conveyor
    return ctx


Ctx = Annotated[Context, Depends(_context)]


def _allowed(
    action: Action,
) -> Callable[[Request, Context, HTTPAuthorizationCredentials | None], Context]:
    """A dependency: the context, once the request's token may do ``action`` (else 401/403)."""

    def dependency(request: Request, ctx: Ctx, credentials: Credentials) -> Context:
        header = None if credentials is None else f"Bearer {credentials.credentials}"
        authorize(ctx.core, header, action, request.client.host if request.client else "")
        return ctx

    return dependency


Reader = Annotated[Context, Depends(_allowed(Action.READ))]
Submitter = Annotated[Context, Depends(_allowed(Action.SUBMIT))]
Canceller = Annotated[Context, Depends(_allowed(Action.CANCEL))]
Admin = Annotated[Context, Depends(_allowed(Action.ADMIN))]
router = APIRouter(responses=ERRORS)


def job_id(value: str) -> str:
    """A path's job id; one that cannot be an id is simply not found."""
    try:
        return check_name(value, "id", MAX_JOB_ID)
    except InvalidJob:
        raise HttpError(404, "not_found", f"no job {value[:100]!r}") from None


@router.get("/health", response_model=Health, tags=["broker"], responses={})
async def health(ctx: Ctx) -> dict[str, Any]:
    """Open to all: is the broker serving?"""
    return {
        "status": "ok",
        "version": ctx.version,
        "uptime": ctx.core.clock.now() - ctx.core.started_at,
    }


@router.get("/api/stats", response_model=Stats, tags=["broker"])
async def stats(ctx: Reader) -> dict[str, Any]:
    """Counts by state, queue, task and priority; workers; throughput; run times."""
    return await views.stats(ctx.core, ctx.history)


@router.get("/api/history", tags=["broker"])
async def history(
    ctx: Reader, seconds: Annotated[int, Query(ge=1, le=3600)] = 300
) -> list[dict[str, Any]]:
    """One point a second (queued, running, totals...) over the last ``seconds``."""
    return ctx.history.since(seconds)


@router.get("/api/workers", response_model=list[WorkerInfo], tags=["workers"])
async def workers(ctx: Reader) -> list[dict[str, Any]]:
    """Connected workers: what they run, how busy they are, their current jobs."""
    return [views.worker_info(w) for w in ctx.core.dispatcher.workers.values()]


@router.get("/api/queues", response_model=list[QueueInfo], tags=["queues"])
async def queues(ctx: Reader) -> list[dict[str, Any]]:
    """Every queue with jobs, or served by a worker, or paused."""
    data = await ctx.core.store.stats()
    workers = list(ctx.core.dispatcher.workers.values())
    waiting = await ctx.core.store.queue_waiting()
    names = set(data["queues"]) | ctx.core.paused | {q for w in workers for q in w.queues}
    return [
        {
            "name": name,
            "paused": name in ctx.core.paused,
            "counts": data["queues"].get(name, {}),
            "tasks": sorted({t for q, t in waiting if q == name}),
            "workers": sum(1 for w in workers if name in w.queues),
        }
        for name in sorted(names)
    ]


@router.get("/api/tasks", response_model=list[TaskInfo], tags=["workers"])
async def tasks(ctx: Reader) -> list[dict[str, Any]]:
    """Tasks offered by the connected workers."""
    offered: dict[str, dict[str, Any]] = {}
    for w in ctx.core.dispatcher.workers.values():
        for name in w.tasks:
            entry = offered.setdefault(name, {"name": name, "queues": set(), "workers": 0})
            entry["workers"] += 1
            entry["queues"].add(w.routes.get(name) or w.queues[0])
            options = w.options.get(name)
            entry["retries"] = options.retries if options else None
            entry["timeout"] = options.timeout if options else None
    return [{**e, "queues": sorted(e["queues"])} for _, e in sorted(offered.items())]


@router.get("/api/jobs", response_model=JobPage, tags=["jobs"])
async def jobs(
    ctx: Reader,
    state: StateName | None = None,
    task: Annotated[str | None, Query(min_length=1, max_length=MAX_TASK_NAME, pattern=NAME)] = None,
    queue: Annotated[
        str | None, Query(min_length=1, max_length=MAX_QUEUE_NAME, pattern=NAME)
    ] = None,
    priority: Annotated[int | None, Query(ge=1, le=10)] = None,
    worker: Annotated[
        str | None, Query(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:@#\-]+$")
    ] = None,
    q: Annotated[str | None, Query(min_length=1, max_length=MAX_JOB_ID, pattern=NAME)] = None,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """Jobs, newest first, filtered; ``q`` searches by id prefix; keyset pages."""
    where = JobFilter(
        state=None if state is None else JobState(state),
        task=task,
        queue=queue,
        priority=priority,
        worker=worker,
        id_prefix=q,
    )
    page = await ctx.core.list_jobs(where, limit, cursor, payload=False)  # summaries
    return {"jobs": [views.job_summary(j, ctx.core) for j in page.jobs], "next_cursor": page.cursor}


@router.get("/api/jobs/{job}", response_model=JobDetail, tags=["jobs"])
async def job(job: str, ctx: Reader) -> dict[str, Any]:
    """One job: arguments, result, each attempt's error and traceback, its history."""
    record = await ctx.core.get(job_id(job))
    return views.job_detail(record, await ctx.core.history(record.id), ctx.core)


async def _submit(ctx: Context, body: SubmitBody) -> dict[str, Any]:
    raw = body.model_dump(exclude_none=True)
    payload = raw.pop("payload", None)
    if payload is not None:
        if "kwargs" in raw or "args" in raw:
            raise HttpError(
                422, "invalid", "payload and kwargs/args are exclusive; give one", "payload"
            )
        raw["kwargs" if isinstance(payload, dict) else "args"] = payload
    record = parse_job(raw, ctx.core.clock.now(), ctx.core.config.limits.max_payload)
    (inserted,) = await ctx.core.submit([record])
    return {
        "id": inserted.job.id,
        "state": inserted.job.state.value,
        "created": inserted.created,
    }


@router.post("/api/jobs", status_code=201, response_model=Submitted, tags=["jobs"])
async def submit(body: SubmitBody, ctx: Submitter) -> dict[str, Any]:
    """Submit a job (validated exactly as over the protocol)."""
    return await _submit(ctx, body)


@router.post("/api/submit", status_code=201, response_model=Submitted, tags=["jobs"])
async def submit_alias(body: SubmitBody, ctx: Submitter) -> dict[str, Any]:
    """The same as ``POST /api/jobs``."""
    return await _submit(ctx, body)


@router.post("/api/jobs/{job}/cancel", response_model=JobDetail, tags=["jobs"])
async def cancel(job: str, ctx: Canceller) -> dict[str, Any]:
    """Cancel: at once if queued or scheduled; a running job when its run ends."""
    record = await ctx.core.cancel(job_id(job))
    return views.job_detail(record, await ctx.core.history(record.id), ctx.core)


@router.post("/api/jobs/{job}/retry", response_model=JobDetail, tags=["dead letters"])
async def retry(job: str, ctx: Admin) -> dict[str, Any]:
    """Run a dead job again with fresh attempts."""
    record = await ctx.core.get(job_id(job))
    if not await ctx.core.dlq_retry([record.id]):
        raise BrokerError("conflict", f"job {record.id} is {record.state.value}, not dead")
    record = await ctx.core.get(record.id)
    return views.job_detail(record, await ctx.core.history(record.id), ctx.core)


@router.get("/api/dlq", response_model=JobPage, tags=["dead letters"])
async def dlq(
    ctx: Admin,
    queue: Annotated[
        str | None, Query(min_length=1, max_length=MAX_QUEUE_NAME, pattern=NAME)
    ] = None,
    task: Annotated[str | None, Query(min_length=1, max_length=MAX_TASK_NAME, pattern=NAME)] = None,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """Dead jobs, newest first."""
    where = JobFilter(state=JobState.DEAD, queue=queue, task=task)
    page = await ctx.core.list_jobs(where, limit, cursor, payload=False)  # summaries
    return {"jobs": [views.job_summary(j, ctx.core) for j in page.jobs], "next_cursor": page.cursor}


def _ids(body: IdsBody) -> list[str] | None:
    if body.ids is None:
        if not body.all:
            raise HttpError(422, "invalid", "give ids, or all: true", "ids")
        return None
    return body.ids


@router.post("/api/dlq/retry", response_model=Count, tags=["dead letters"])
async def dlq_retry(body: IdsBody, ctx: Admin) -> dict[str, Any]:
    """Run dead jobs again: these ``ids``, or all with ``all: true``."""
    return {"count": await ctx.core.dlq_retry(_ids(body))}


@router.delete("/api/dlq", response_model=Count, tags=["dead letters"])
async def dlq_purge(
    ctx: Admin,
    id: Annotated[list[JobId] | None, Query(max_length=1000)] = None,
    all: bool = False,
) -> dict[str, Any]:
    """Delete dead jobs for good: ``?id=...`` (repeated), or ``?all=true``."""
    return {"count": await ctx.core.dlq_purge(_ids(IdsBody(ids=id, all=all)))}


@router.post("/api/queues/{name}/pause", response_model=PauseResult, tags=["queues"])
async def pause(name: QueueName, ctx: Admin) -> dict[str, Any]:
    """Keep taking the queue's jobs, dispatch none (survives a restart)."""
    await ctx.core.pause(check_name(name, "queue", MAX_QUEUE_NAME), True)
    return {"queue": name, "paused": True}


@router.post("/api/queues/{name}/resume", response_model=PauseResult, tags=["queues"])
async def resume(name: QueueName, ctx: Admin) -> dict[str, Any]:
    """Dispatch the queue's jobs again."""
    await ctx.core.pause(check_name(name, "queue", MAX_QUEUE_NAME), False)
    return {"queue": name, "paused": False}


LimitTarget = Annotated[
    str,
    Path(min_length=3, max_length=210, description="task:NAME, queue:NAME or key:PREFIX"),
]


@router.get("/api/limits", response_model=Limits, tags=["limits"])
async def limits(ctx: Reader) -> dict[str, Any]:
    """The rate and concurrency limits in force and what they hold back now (global,
    whatever the number of workers, and across every broker on one PostgreSQL database)."""
    return await ctx.core.limits()


@router.put("/api/limits/{target}", response_model=Limits, tags=["limits"])
async def limit_set(target: LimitTarget, body: LimitBody, ctx: Admin) -> dict[str, Any]:
    """Set one limit (``{"value": "10/s"}`` for task: and queue:, ``{"value": 2}`` for
    key:); it takes effect at once and survives a restart."""
    return await ctx.core.limits({target: body.value})


@router.delete("/api/limits/{target}", response_model=Limits, tags=["limits"])
async def limit_clear(target: LimitTarget, ctx: Admin) -> dict[str, Any]:
    """Remove one limit set on the broker (a task's own @task limit applies again)."""
    ctx.core.limiter.check(target)
    if target not in ctx.core.limiter.table:
        raise HttpError(404, "not_found", f"no limit is set for {target[:100]!r}", "target")
    return await ctx.core.limits(clears=[target])


@router.get("/api/security", response_model=SecurityInfo, tags=["broker"])
async def security_panel(ctx: Reader) -> dict[str, Any]:
    """TLS, certificate, mutual TLS, authentication, limits, refusals so far."""
    return security(ctx.core, ctx.cert_file, ctx.http_tls)


@router.get(
    "/api/events",
    tags=["broker"],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(request: Request, ctx: Reader, credentials: Credentials) -> StreamingResponse:
    """The live feed (Server-Sent Events): one ``tick`` a second with the numbers, the
    workers and the job changes since the last tick (at most 50, and how many more). The
    token is checked at every tick: once revoked or expired, one ``end`` event and the
    feed ends."""
    digest = hash_token(credentials.credentials.strip()) if credentials else ""
    return StreamingResponse(
        live.feed(ctx.core, ctx.history, request.is_disconnected, token_digest=digest),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/metrics",
    tags=["broker"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(ctx: Admin) -> Response:
    """Prometheus exposition (an admin token: ``authorization`` in the scrape config)."""
    return Response(await ctx.metrics.exposition(), media_type="text/plain; version=0.0.4")
