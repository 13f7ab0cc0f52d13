"""Running one task call and turning what happened into a :class:`RunResult`.

Shared by every pool and by the process pool's children, so a task behaves the
same wherever it runs: the same error map, the same result check, the same caps.

Outcome map (``reject`` means "do not retry", ``retry_delay`` overrides the backoff):

==============================================  =====  ======  ===========
what happened                                   ok     reject  retry_delay
==============================================  =====  ======  ===========
returned a msgpack-able value                   yes    no      None
raised :class:`~conveyor.errors.Retry`          no     no      its delay
raised :class:`~conveyor.errors.Reject`         no     yes     None
raised one of the task's ``non_retryable``      no     yes     None
returned a value msgpack cannot encode          no     yes     None
returned more than ``MAX_RESULT_BYTES``         no     yes     None
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

import msgpack

from conveyor.errors import Reject, Retry
from conveyor.job import MAX_TIMEOUT
from conveyor.validation import DEFAULT_MAX_PAYLOAD
from conveyor.worker.tasks import TaskDef

MAX_MESSAGE = 2_000  # characters of an error message we keep
MAX_TRACEBACK = 20_000  # characters of a traceback we keep (the end: where it was raised)
MAX_RESULT_BYTES = DEFAULT_MAX_PAYLOAD  # encoded size of a result: it must fit in a report frame
MAX_RETRY_DELAY = 365 * 86400.0  # a Retry(delay=...) is clamped to [0, this]

UNKNOWN_TASK = "UnknownTask"
TIMEOUT = "TimeoutError"
CANCELLED = "CancelledError"
WORKER_CRASHED = "WorkerCrashed"
WORKER_SHUTDOWN = "WorkerShutdown"
UNSERIALIZABLE = "UnserializableResult"
TOO_LARGE = "ResultTooLarge"


@dataclass(frozen=True, slots=True)
class RunRequest:
    """One job for a pool: which task, with what, and its own timeout (if any)."""

    job_id: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended. ``error`` is ``{"type", "message", "traceback"}`` when not ``ok``."""

    ok: bool
    result: Any = None
    error: dict[str, str] | None = None
    retry_delay: float | None = None
    reject: bool = False

    @property
    def error_type(self) -> str | None:
        return None if self.error is None else self.error["type"]

    @property
    def cancelled(self) -> bool:
        """The job was cancelled while running (the runner reports it as cancelled)."""
        return self.error_type == CANCELLED


def failure(
    type_: str,
    message: str,
    tb: str = "",
    *,
    reject: bool = False,
    retry_delay: float | None = None,
) -> RunResult:
    """A failed :class:`RunResult`, with message and traceback cut to their caps."""
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
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
    """A successful result, unless msgpack can't carry it or it is over ``MAX_RESULT_BYTES``."""
    try:
        size = len(msgpack.packb(value, use_bin_type=True))
    except Exception as exc:
        return failure(
            UNSERIALIZABLE,
            f"the task returned {type(value).__name__}, which is not JSON/msgpack-compatible: "
            f"{exc}",
            reject=True,
        )
    if size > MAX_RESULT_BYTES:
        return failure(
            TOO_LARGE,
            f"the result is {size} bytes encoded; the limit is {MAX_RESULT_BYTES} "
            "(store big outputs elsewhere and return a reference)",
            reject=True,
        )
    return RunResult(ok=True, result=value)


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


def run_sync(definition: TaskDef, args: list[Any], kwargs: dict[str, Any]) -> RunResult:
    """Call the task in this thread; an ``async def`` task gets its own event loop.

    Never raises: anything the task raises (even ``SystemExit``) becomes a result.
    """
    try:
        if definition.is_async:
            value = asyncio.run(definition.fn(*args, **kwargs))
        else:
            value = definition.fn(*args, **kwargs)
    except BaseException as exc:  # even SystemExit: a task must not take its thread down
        return from_exception(exc, definition)
    return success(value)


async def run_async(definition: TaskDef, args: list[Any], kwargs: dict[str, Any]) -> RunResult:
    """Await an ``async def`` task on the running loop. Cancellation propagates."""
    try:
        value = await definition.fn(*args, **kwargs)
    except Exception as exc:
        return from_exception(exc, definition)
    return success(value)
