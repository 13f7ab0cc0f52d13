"""The worker's job log: one line when a job starts, one when it ends.

Each line carries the job id, task, attempt and (at the end) the run time in ms and how
it ended: ``completed``, ``failed`` (with the exception type and message), ``retry``
(the task raised Retry), ``rejected`` (it will not be retried: Reject, a non-retryable
error, bad arguments), ``timed_out`` or ``cancelled``. Whether a plain failure is retried
or goes to the dead-letter queue is the broker's decision (it knows the retry budget).

Lines go to the ``conveyor.worker.jobs`` logger at INFO, with the fields also attached to
the record (``record.job``) for :class:`JsonFormatter`. Arguments and results are never
logged unless the JobLog is made with ``payloads=True``. When INFO is disabled a job
costs two ``perf_counter()`` calls and two level checks: nothing is formatted.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from typing import Any

from conveyor.protocol.payload import PayloadError, unpack, unpack_call
from conveyor.worker.execute import CANCELLED, TIMEOUT, RunRequest, RunResult

log = logging.getLogger("conveyor.worker.jobs")
PAYLOAD_CHARS = 2000  # a logged argument list or result longer than this is cut


class JobLog:
    """Logs job starts and ends on ``logger``; ``payloads=True`` adds arguments and results."""

    __slots__ = ("logger", "payloads")

    def __init__(self, logger: logging.Logger = log, *, payloads: bool = False) -> None:
        self.logger = logger
        self.payloads = payloads

    def started(
        self, job_id: str, task: str, attempt: int, request: RunRequest | RunResult
    ) -> float:
        """Log the start of a run; returns its start time, for :meth:`finished`."""
        if self.logger.isEnabledFor(logging.INFO):
            fields: dict[str, Any] = {
                "event": "started",
                "job_id": job_id,
                "task": task,
                "attempt": attempt,
            }
            shown = ""
            if self.payloads and isinstance(request, RunRequest):
                fields["args"], fields["kwargs"] = _call(request.payload)
                shown = f", args {_cut(fields['args'])} kwargs {_cut(fields['kwargs'])}"
            self.logger.info(
                "job %s started: task %s, attempt %d%s",
                *(job_id, task, attempt, shown),
                extra={"job": fields},
            )
        return time.perf_counter()

    def finished(
        self, job_id: str, task: str, attempt: int, started: float, result: RunResult
    ) -> None:
        """Log how the run that began at ``started`` ended."""
        ms = (time.perf_counter() - started) * 1000
        if not self.logger.isEnabledFor(logging.INFO):
            return
        outcome = outcome_of(result)
        fields: dict[str, Any] = {
            "event": outcome,
            "job_id": job_id,
            "task": task,
            "attempt": attempt,
            "ms": round(ms, 3),
        }
        detail = ""
        if result.error is not None:
            fields["error_type"] = result.error.get("type", "")
            fields["error"] = result.error.get("message", "")
            detail = f": {fields['error_type']}: {fields['error']}"
            if result.retry_delay is not None:
                fields["retry_delay"] = result.retry_delay
        elif self.payloads and result.result is not None:
            fields["result"] = _value(result.result)
            detail = f", result {_cut(fields['result'])}"
        self.logger.info(
            "job %s %s: task %s, attempt %d, %.1f ms%s",
            *(job_id, outcome.replace("_", " "), task, attempt, ms, detail),
            extra={"job": fields},
        )


def outcome_of(result: RunResult) -> str:
    """completed, failed, retry, rejected, timed_out or cancelled."""
    if result.ok:
        return "completed"
    kind = result.error_type
    if kind == TIMEOUT:
        return "timed_out"
    if kind == CANCELLED:
        return "cancelled"
    if result.reject:
        return "rejected"
    return "retry" if result.retry_delay is not None else "failed"


def _call(payload: bytes) -> tuple[Any, Any]:
    try:
        args, kwargs = unpack_call(payload)
    except PayloadError:
        return "<undecodable>", "<undecodable>"
    return args, kwargs


def _value(packed: bytes) -> Any:
    try:
        return unpack(packed)
    except PayloadError:
        return "<undecodable>"


def _cut(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= PAYLOAD_CHARS else text[:PAYLOAD_CHARS] + f"… ({len(text)} chars)"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, msg, and the job's
    fields (job_id, task, attempt, event, ms, error_type, error, ...) when the record has
    them. For log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC)
        data: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        job = getattr(record, "job", None)
        if isinstance(job, dict):
            data.update(job)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)
