"""The shapes of the HTTP API's requests and answers (they make ``/openapi.json``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints

from conveyor.limits import (
    MAX_DELAY,
    MAX_PRIORITY,
    MAX_RETRIES,
    MAX_TIMEOUT,
    MIN_PRIORITY,
    MIN_TIMEOUT,
    NAME_PATTERN,
)

NAME = f"^{NAME_PATTERN}$"  # task, queue and job names: letters, digits and _ . : -
JobId = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NAME)]
# as on the socket: a boolean is never a number, and a float (1.0) is never an integer
Int = Annotated[int, Strict()]
Number = Annotated[float, Strict()]


class ErrorDetail(BaseModel):
    code: str = Field(description="the protocol's error code (invalid, not_found, ...)")
    message: str
    field: str | None = Field(None, description="with invalid: the offending field")
    queue: str | None = Field(None, description="with queue_full: the full queue")
    limit: int | None = Field(None, description="with queue_full: its limit (--max-queued)")


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str = Field(description='"ok" while the broker serves')
    version: str
    uptime: float


class SubmitBody(BaseModel):
    """A job to submit. ``payload`` is the keyword arguments (a JSON object) or the
    positional ones (a JSON array); ``kwargs``/``args`` say it explicitly (not with
    ``payload``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "not": {
                "anyOf": [{"required": ["payload", "kwargs"]}, {"required": ["payload", "args"]}]
            }
        },
    )

    task: str = Field(min_length=1, max_length=200, pattern=NAME)
    payload: dict[str, Any] | list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    args: list[Any] | None = None
    priority: Int | None = Field(None, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    queue: str | None = Field(None, min_length=1, max_length=100, pattern=NAME)
    delay: Number | None = Field(None, ge=0, le=MAX_DELAY)
    retries: Int | None = Field(None, ge=0, le=MAX_RETRIES)
    timeout: Number | None = Field(None, ge=MIN_TIMEOUT, le=MAX_TIMEOUT)
    unique_key: str | None = Field(None, min_length=1, max_length=200)
    concurrency_key: str | None = Field(None, min_length=1, max_length=200, pattern=NAME)
    id: str | None = Field(None, min_length=1, max_length=100, pattern=NAME)
    after: list[str] | None = Field(
        None, max_length=1000, description="job ids: run once they all completed"
    )


class Submitted(BaseModel):
    id: str
    state: str
    created: bool = Field(description="false: an existing job was returned (same id or key)")


class IdsBody(BaseModel):
    """Dead jobs to act on: ``ids``, or every one with ``all: true``."""

    model_config = ConfigDict(extra="forbid")

    ids: list[JobId] | None = Field(None, max_length=10_000)
    all: Annotated[bool, Strict()] = False


class Count(BaseModel):
    count: int


class JobSummary(BaseModel):
    id: str
    task: str
    queue: str
    priority: int
    state: str
    attempts: int
    max_retries: int
    worker: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    eta: float | None
    error_type: str | None = None
    error_message: str | None = None


class FiredBy(BaseModel):
    name: str = Field(description="the schedule that fired this job")
    slot: float | None = Field(description="the slot it fired for; null for a run-now")


class JobDetail(JobSummary):
    encrypted: bool = Field(description="arguments and result sealed end to end: not shown")
    schedule: FiredBy | None = None
    args: list[Any]
    kwargs: dict[str, Any]
    result: Any = None
    error: dict[str, Any] | None = None
    retry_backoff: float
    retry_backoff_max: float
    timeout: float | None
    unique_key: str | None
    concurrency_key: str | None = None
    cancel_requested: bool
    waiting: str | None = None
    progress: dict[str, Any] | None = Field(
        None, description="the task's last report: {value (0-1 or null), message, meta, at}"
    )
    workflow: str | None = Field(None, description="the workflow this job belongs to")
    depends_on: list[str] = Field(
        default_factory=list, description="the jobs it waits for (state waiting)"
    )
    attempts_detail: list[dict[str, Any]] = Field(
        description="each attempt: number, worker, started, ended, outcome, error, traceback"
    )
    events: list[dict[str, Any]]


class JobPage(BaseModel):
    jobs: list[JobSummary]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page")


class StoreHealth(BaseModel):
    writable: bool = Field(description="false while the store cannot write (disk full, ...)")
    error: str | None
    since: float | None = Field(description="when writing started to fail (epoch seconds)")
    failed_attempts: int


class RateInfo(BaseModel):
    target: str = Field(description="task:NAME or queue:NAME")
    rate: str = Field(description="10/s, 100/m, 1000/h")
    source: Literal["broker", "task"] = Field(description="set on the broker, or by @task")
    per_second: float
    tokens: int = Field(description="jobs it may dispatch right now")
    limited: bool = Field(description="holding jobs back now: no token")
    dispatched: int = Field(description="jobs it let through since the broker started")
    shared: bool = Field(description="its bucket is the store's, shared by every broker")
    held_jobs: int = Field(description="queued jobs it holds back now")
    queued: int | None = Field(None, description="its target's jobs queued now")


class ConcurrencyInfo(BaseModel):
    target: str = Field(description="key:PREFIX (set on the broker) or task:NAME (@task)")
    limit: int
    source: Literal["broker", "task"]
    running: int | None = Field(None, description="running jobs of the keys it governs")
    waiting: int | None = Field(
        None, description="queued jobs of those keys waiting for one of them to end"
    )


class Limits(BaseModel):
    set: dict[str, str | int] = Field(description="the limits set on the broker: durable")
    rates: list[RateInfo]
    concurrency: list[ConcurrencyInfo]
    running_by_key: dict[str, int] = Field(description="running jobs per concurrency key")
    waiting_for_key: dict[str, int] = Field(
        description="queued jobs set aside because their key is at its limit"
    )
    held: int = Field(description="claims that left a rate-limited target out")
    held_by_rate: int = Field(description="queued jobs a rate limit holds back now")
    waiting_for_keys: int = Field(description="queued jobs waiting for a key's slot")
    shared: bool = Field(description="the limits hold across every broker on the store")


class LimitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str | int = Field(description="a rate (10/s) for task: and queue:, a count for key:")


class Stats(BaseModel):
    model_config = ConfigDict(extra="allow")

    states: dict[str, int]
    totals: dict[str, int]
    queues: dict[str, dict[str, int]]
    tasks: dict[str, dict[str, int]]
    priorities: dict[str, dict[str, int]]
    workers: dict[str, int] = Field(description="total, idle, busy, stalled, draining")
    requeued: int
    jobs_per_second: float = Field(description="completions per second over the last minute")
    paused: list[str]
    limits: Limits
    run_time: dict[str, float | None] = Field(description="p50/p95/p99 seconds, recent jobs")
    wait_time: dict[str, float | None]
    store: StoreHealth


class WorkerInfo(BaseModel):
    id: str
    name: str
    host: str
    pid: int | None
    peer: str
    tasks: list[str]
    queues: list[str]
    pool: str
    concurrency: int
    prefetch: int
    busy: int = Field(description="slots running a job now")
    held: int = Field(description="jobs dispatched to it and not yet reported")
    jobs: list[str] = Field(description="the jobs it is running")
    completed: int
    failed: int
    stalled: bool
    draining: bool
    connected_at: float
    last_heartbeat: float


class QueueInfo(BaseModel):
    name: str
    paused: bool
    counts: dict[str, int]
    tasks: list[str]
    workers: int = Field(description="connected workers serving it")


class TaskInfo(BaseModel):
    name: str
    queues: list[str]
    workers: int
    retries: int | None
    timeout: float | None


class PauseResult(BaseModel):
    queue: str
    paused: bool


class SecurityInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    tls: bool
    protocols: list[str]
    certificate: dict[str, Any]
    mutual_tls: bool
    auth: str
    http_tls: bool
    limits: dict[str, Any]
    rejected_plaintext: int
    tls_failures: int
    auth_failures: int
