"""Validation at the edge: turn an untrusted submission map into a :class:`JobSpec`.

Every check names the offending field, so a client gets ``invalid: priority must be
an integer from 1 to 10`` rather than a stack trace. Used by the broker for protocol
submits (and by anything else that accepts jobs from outside).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import msgpack

from conveyor.errors import InvalidJob
from conveyor.job import (
    DEFAULT_PRIORITY,
    DEFAULT_QUEUE,
    MAX_PRIORITY,
    MAX_TIMEOUT,
    MIN_PRIORITY,
)

NAME_RE = re.compile(r"[A-Za-z0-9_.:\-]+")
MAX_TASK_NAME = 200
MAX_QUEUE_NAME = 100
MAX_ID_LENGTH = 100
MAX_UNIQUE_KEY = 200
MAX_RETRIES = 100
MAX_DEPTH = 32
DEFAULT_MAX_PAYLOAD = 512 * 1024
_MIN_INT, _MAX_INT = -(2**63), 2**64 - 1  # MessagePack's integer range


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A validated submission, ready for the store."""

    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str = DEFAULT_QUEUE
    priority: int = DEFAULT_PRIORITY
    # None: not given by the producer; the broker fills in the task's own defaults
    # (announced by workers) or the global ones
    max_retries: int | None = None
    retry_backoff: float | None = None
    retry_backoff_max: float | None = None
    timeout: float | None = None
    eta: float | None = None  # absolute UTC epoch seconds
    unique_key: str | None = None
    id: str | None = None  # client-chosen id makes a resubmit idempotent


def _invalid(fld: str, message: str) -> InvalidJob:
    return InvalidJob("invalid", f"{fld} {message}", fld)


def check_name(value: Any, fld: str, max_len: int) -> str:
    if not isinstance(value, str) or not value:
        raise _invalid(fld, "must be a non-empty string")
    if len(value) > max_len:
        raise _invalid(fld, f"must be at most {max_len} characters")
    if not NAME_RE.fullmatch(value):
        raise _invalid(fld, "may only contain letters, digits and _ . : -")
    return value


def _check_json(value: Any, fld: str, depth: int = 0) -> None:
    """JSON-compatible: None, bool, int, float, str, lists and str-keyed maps of them."""
    if depth > MAX_DEPTH:
        raise _invalid(fld, f"is nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, str | bool):
        return
    if isinstance(value, float):
        if not math.isfinite(value):  # NaN and Infinity are not JSON
            raise _invalid(fld, "must not contain NaN or infinity")
        return
    if isinstance(value, int):
        if not _MIN_INT <= value <= _MAX_INT:  # MessagePack cannot carry it
            raise _invalid(fld, "integers must fit in 64 bits")
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_json(item, fld, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _invalid(fld, "must only have string keys (it must be JSON-compatible)")
            _check_json(item, fld, depth + 1)
        return
    raise _invalid(fld, f"must be JSON-compatible, not {type(value).__name__}")


def _number(raw: dict[str, Any], fld: str, default: float | None, lo: float, hi: float) -> Any:
    value = raw.get(fld, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(fld, "must be a number")
    if not lo <= value <= hi:
        raise _invalid(fld, f"must be between {lo:g} and {hi:g}")
    return value


def _retry_options(
    raw: dict[str, Any], defaults: dict[str, Any] | None
) -> tuple[int | None, float | None, float | None]:
    """retries, retry_backoff, retry_backoff_max: the producer's, else the task's, else None."""
    retries = raw.get("retries")
    if retries is not None and (
        isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES
    ):
        raise _invalid("retries", f"must be an integer from 0 to {MAX_RETRIES}")
    backoff = _number(raw, "retry_backoff", None, 0, 86400)
    backoff_max = _number(raw, "retry_backoff_max", None, 0, 7 * 86400)
    if defaults:  # already validated when the worker announced them
        retries = defaults.get("retries") if retries is None else retries
        backoff = defaults.get("retry_backoff") if backoff is None else backoff
        backoff_max = defaults.get("retry_backoff_max") if backoff_max is None else backoff_max
    return (
        retries,
        None if backoff is None else float(backoff),
        None if backoff_max is None else float(backoff_max),
    )


def parse_job_spec(
    raw: Any,
    now: float,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    task_defaults: dict[str, dict[str, Any]] | None = None,
) -> JobSpec:
    """Validate one submission map; raise :class:`InvalidJob` naming the bad field.

    Retry options the map leaves unset come from ``task_defaults[task]`` (what workers
    announced for the task), else stay None for the store's global defaults.
    """
    if not isinstance(raw, dict):
        raise _invalid("job", "must be a map")
    task = check_name(raw.get("task"), "task", MAX_TASK_NAME)
    queue = check_name(raw.get("queue", DEFAULT_QUEUE), "queue", MAX_QUEUE_NAME)
    priority = raw.get("priority", DEFAULT_PRIORITY)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise _invalid("priority", f"must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise _invalid("priority", f"must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}")
    args = raw.get("args", [])
    if not isinstance(args, list):
        raise _invalid("args", "must be a list")
    kwargs = raw.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise _invalid("kwargs", "must be a map")
    if args or kwargs:
        _check_json(args, "args")
        _check_json(kwargs, "kwargs")
        size = len(msgpack.packb([args, kwargs], use_bin_type=True))
        if size > max_payload:
            raise _invalid("payload", f"is {size} bytes; the limit is {max_payload}")
    retries, backoff, backoff_max = _retry_options(
        raw, task_defaults.get(task) if task_defaults else None
    )
    timeout = _number(raw, "timeout", None, 0.001, MAX_TIMEOUT)
    delay = _number(raw, "delay", None, 0, 365 * 86400)
    eta = _number(raw, "eta", None, 0, 1e11)
    if delay is not None and eta is not None:
        raise _invalid("delay", "and eta are exclusive; give one")
    if delay:
        eta = now + delay
    unique_key = raw.get("unique_key")
    if unique_key is not None and (
        not isinstance(unique_key, str) or not 0 < len(unique_key) <= MAX_UNIQUE_KEY
    ):
        raise _invalid("unique_key", f"must be a string of 1 to {MAX_UNIQUE_KEY} characters")
    job_id = raw.get("id")
    if job_id is not None:
        check_name(job_id, "id", MAX_ID_LENGTH)
    return JobSpec(
        task=task,
        args=args,
        kwargs=kwargs,
        queue=queue,
        priority=priority,
        max_retries=retries,
        retry_backoff=backoff,
        retry_backoff_max=backoff_max,
        timeout=None if timeout is None else float(timeout),
        eta=None if eta is None or eta <= now else float(eta),
        unique_key=unique_key,
        id=job_id,
    )
