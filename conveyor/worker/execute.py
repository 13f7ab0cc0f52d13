"""Running one task call and turning what happened into a :class:`RunResult`.

Shared by every pool and by the process pool's children, so a task behaves the
same wherever it runs: the same error map, the same result check, the same caps.

Outcome map (``reject`` means "do not retry", ``retry_delay`` overrides the backoff):

==============================================  =====  ======  ===========
what happened                                   ok     reject  retry_delay
==============================================  =====  ======  ===========
returned a JSON-compatible value                yes    no      None
the payload does not decode (``InvalidPayload``) no    yes     None
arguments do not fit the signature
(``InvalidArguments``)                          no     yes     None
raised :class:`~conveyor.errors.Retry`          no     no      its delay
raised :class:`~conveyor.errors.Reject`         no     yes     None
raised one of the task's ``non_retryable``      no     yes     None
returned a value that is not JSON-compatible    no     yes     None
returned more than ``MAX_RESULT`` bytes packed  no     yes     None
raised anything else, or timed out              no     no      None
task not registered (``UnknownTask``)           no     yes     None
process pool child died (``WorkerCrashed``)     no     no      None
pool closed under the job (``WorkerShutdown``)  no     no      None
cancelled while running (``CancelledError``)    no     no      None
==============================================  =====  ======  ===========
"""

from __future__ import annotations

import asyncio
import traceback
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from conveyor.errors import Reject, Retry
from conveyor.limits import (
    MAX_ERROR_MESSAGE,
    MAX_RESULT,
    MAX_RETRY_DELAY,
    MAX_TIMEOUT,
    MAX_TRACEBACK,
)
from conveyor.protocol.payload import PayloadError, check_json, pack, unpack_call
from conveyor.worker.progress import CurrentJob, running
from conveyor.worker.tasks import TaskDef

UNKNOWN_TASK = "UnknownTask"
INVALID_PAYLOAD = "InvalidPayload"
INVALID_ARGUMENTS = "InvalidArguments"
TIMEOUT = "TimeoutError"
CANCELLED = "CancelledError"
WORKER_CRASHED = "WorkerCrashed"
WORKER_SHUTDOWN = "WorkerShutdown"
UNSERIALIZABLE = "UnserializableResult"
TOO_LARGE = "ResultTooLarge"


@dataclass(frozen=True, slots=True)
class RunRequest:
    """One job for a pool: which task, its packed ``[args, kwargs]``, its own timeout."""

    job_id: str
    task: str
    payload: bytes
    timeout: float | None = None
    current: CurrentJob | None = None  # what current_job() returns in the task


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended: ``result`` is the packed return value when ``ok``; otherwise
    ``error`` is ``{"type", "message", "traceback"}``."""

    ok: bool
    result: bytes | None = None
    error: dict[str, str] | None = None
    retry_delay: float | None = None
    reject: bool = False

    @property
    def error_type(self) -> str | None:
        return None if self.error is None else self.error["type"]


def failure(
    type_: str,
    message: str,
    tb: str = "",
    *,
    reject: bool = False,
    retry_delay: float | None = None,
) -> RunResult:
    """A failed :class:`RunResult`, with message and traceback cut to their caps."""
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[: MAX_ERROR_MESSAGE - 3] + "..."
    if len(tb) > MAX_TRACEBACK:
        tb = "...\n" + tb[-(MAX_TRACEBACK - 4) :]
    error = {"type": type_, "message": message, "traceback": tb}
    return RunResult(ok=False, error=error, retry_delay=retry_delay, reject=reject)


def from_exception(exc: BaseException, definition: TaskDef | None = None) -> RunResult:
    """Map an exception raised by a task to a result (see the module's table)."""
    tb_start: TracebackType | None = exc.__traceback__
    if tb_start is not None and tb_start.tb_frame.f_code.co_filename == __file__:
        tb_start = tb_start.tb_next  # drop our own frame: the traceback starts in the task
    tb = "".join(traceback.format_exception(type(exc), exc, tb_start))
    reject = isinstance(exc, Reject) or (
        definition is not None and isinstance(exc, definition.non_retryable)
    )
    delay = _retry_delay(exc) if isinstance(exc, Retry) else None
    return failure(type(exc).__name__, _message(exc), tb, reject=reject, retry_delay=delay)


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a task's exception whose __str__ itself fails
        return f"<unprintable {type(exc).__name__}>"


def _retry_delay(exc: Retry) -> float | None:
    try:
        delay = float(exc.delay)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if delay != delay:  # NaN
        return None
    return min(max(0.0, delay), MAX_RETRY_DELAY)


def success(value: Any) -> RunResult:
    """The packed result, unless it is not JSON-compatible or is over ``MAX_RESULT`` bytes."""
    try:
        check_json(value, "result")
        packed = pack(value)
    except PayloadError as exc:
        return failure(
            UNSERIALIZABLE,
            f"the task's return value cannot be stored: {exc}",
            reject=True,
        )
    if len(packed) > MAX_RESULT:
        return failure(
            TOO_LARGE,
            f"the result is {len(packed)} bytes packed; the limit is {MAX_RESULT} "
            "(store big outputs elsewhere and return a reference)",
            reject=True,
        )
    return RunResult(ok=True, result=packed)


def unknown_task(name: str) -> RunResult:
    return failure(
        UNKNOWN_TASK, f"no task named {name!r} is registered on this worker", reject=True
    )


def timed_out(timeout: float, note: str = "") -> RunResult:
    message = f"job exceeded its {timeout:g}s timeout"
    return failure(TIMEOUT, f"{message}; {note}" if note else message)


def cancelled(message: str = "job cancelled while running") -> RunResult:
    return failure(CANCELLED, message)


def effective_timeout(job_timeout: float | None, task_timeout: float | None) -> float:
    """The job's timeout, else the task's, capped at :data:`~conveyor.job.MAX_TIMEOUT`."""
    timeout = job_timeout if job_timeout is not None else task_timeout
    if timeout is None or timeout <= 0:
        return MAX_TIMEOUT
    return min(float(timeout), MAX_TIMEOUT)


def prepare(definition: TaskDef, payload: bytes) -> tuple[list[Any], dict[str, Any]] | RunResult:
    """The call's arguments, bound-checked against the task's signature; or the failure.

    Neither a payload that does not decode nor arguments the function cannot take would
    fare better on a second attempt: both fail at once, without retries.
    """
    try:
        args, kwargs = unpack_call(payload)
    except PayloadError as exc:
        return failure(INVALID_PAYLOAD, f"the job's payload cannot be read: {exc}", reject=True)
    why = definition.call_error(args, kwargs)
    if why is not None:
        return failure(INVALID_ARGUMENTS, why, reject=True)
    return args, kwargs


def run_sync(definition: TaskDef, payload: bytes, current: CurrentJob | None = None) -> RunResult:
    """Call the task in this thread; an ``async def`` task gets its own event loop.
    ``current`` is what :func:`conveyor.current_job` returns inside it.

    Never raises: anything the task raises (even ``SystemExit``) becomes a result.
    """
    call = prepare(definition, payload)
    if isinstance(call, RunResult):
        return call
    args, kwargs = call
    with running(current):
        return _call_sync(definition, args, kwargs)


def _call_sync(definition: TaskDef, args: list[Any], kwargs: dict[str, Any]) -> RunResult:
    try:
        if definition.is_async:
            value = asyncio.run(definition.fn(*args, **kwargs))
        else:
            value = definition.fn(*args, **kwargs)
    except BaseException as exc:  # even SystemExit: a task must not take its thread down
        return from_exception(exc, definition)
    return success(value)


async def run_async(
    definition: TaskDef, payload: bytes, current: CurrentJob | None = None
) -> RunResult:
    """Await an ``async def`` task on the running loop. Cancellation propagates."""
    call = prepare(definition, payload)
    if isinstance(call, RunResult):
        return call
    args, kwargs = call
    try:
        with running(current):  # the task's own context (ensure_future copied it)
            value = await definition.fn(*args, **kwargs)
    except Exception as exc:
        return from_exception(exc, definition)
    return success(value)
