"""Validation at the edge: untrusted maps become checked values, or an error naming the field.

Every check names the offending field, so a client gets ``invalid: priority must be an
integer from 1 to 10`` rather than a stack trace. The broker's protocol routes and HTTP
routes both use these, so both faces accept and refuse exactly the same input.
"""

from __future__ import annotations

import functools
from typing import Any

from conveyor import limitspec
from conveyor._ids import new_job_id
from conveyor.errors import InvalidJob
from conveyor.job import DEFAULT_PRIORITY, FEED_RESULT, FEEDS, JobRecord
from conveyor.lifecycle import TaskOptions
from conveyor.limits import (
    MAX_DELAY,
    MAX_DEPENDENCIES,
    MAX_ETA,
    MAX_JOB_ID,
    MAX_PAYLOAD,
    MAX_PRIORITY,
    MAX_QUEUE_NAME,
    MAX_RETRIES,
    MAX_RETRY_BACKOFF,
    MAX_RETRY_BACKOFF_MAX,
    MAX_TASK_NAME,
    MAX_TIMEOUT,
    MAX_UNIQUE_KEY,
    MIN_PRIORITY,
    MIN_TIMEOUT,
)

# the field checks live with the limits below us; re-exported for the routes
from conveyor.limitspec import check_name as check_name
from conveyor.limitspec import invalid as invalid
from conveyor.protocol.payload import PayloadError, check_json, looks_like_call, pack_call


def number(raw: dict[str, Any], fld: str, lo: float, hi: float, *, integer: bool = False) -> Any:
    """``raw[fld]`` as a number in [lo, hi], or None when absent/nil. Booleans and NaN refused."""
    value = raw.get(fld)
    if value is None:
        return None
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        raise invalid(fld, f"must be {kind} from {_shown(lo)} to {_shown(hi)}")
    if not lo <= value <= hi:  # also refuses NaN and infinity
        raise invalid(fld, f"must be {kind} from {_shown(lo)} to {_shown(hi)}")
    return value


def _shown(bound: float) -> str:
    """A range's bound as people read it: 4294967295, 86400, 0.001, 1e+11."""
    if float(bound).is_integer() and abs(bound) < 1e15:
        return str(int(bound))
    return f"{bound:g}"


def _payload(raw: dict[str, Any], max_payload: int) -> bytes:
    """The packed ``[args, kwargs]``: given as bytes (``payload``), or packed here once."""
    packed = raw.get("payload")
    if packed is not None:
        if not isinstance(packed, bytes) or not looks_like_call(packed):
            raise invalid("payload", "must be bin: the MessagePack array [args, kwargs]")
        if "args" in raw or "kwargs" in raw:
            raise invalid("payload", "and args/kwargs are exclusive; give one")
    else:
        args = raw.get("args", [])
        if not isinstance(args, list):
            raise invalid("args", "must be a list")
        kwargs = raw.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise invalid("kwargs", "must be a map")
        for value, fld in ((args, "args"), (kwargs, "kwargs")):
            try:
                check_json(value, fld)
            except PayloadError as exc:
                raise invalid(fld, str(exc)) from None
        try:
            packed = pack_call(args, kwargs)
        except PayloadError as exc:  # a string that is not valid Unicode (a lone surrogate)
            raise invalid("payload", f"cannot be encoded: {exc}") from None
    if len(packed) > max_payload:
        raise invalid("payload", f"is {len(packed)} bytes packed; the limit is {max_payload}")
    return packed


def _retry_options(raw: dict[str, Any]) -> tuple[int | None, float | None, float | None]:
    retries = number(raw, "retries", 0, MAX_RETRIES, integer=True)
    backoff = number(raw, "retry_backoff", 0, MAX_RETRY_BACKOFF)
    backoff_max = number(raw, "retry_backoff_max", 0, MAX_RETRY_BACKOFF_MAX)
    return (
        retries,
        None if backoff is None else float(backoff),
        None if backoff_max is None else float(backoff_max),
    )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: not text any store or peer can keep
        return False
    return True


@functools.lru_cache(maxsize=4096)  # only names that passed: a refusal raises, uncached
def _checked_name(value: str, fld: str, max_len: int) -> str:
    return check_name(value, fld, max_len)


def _good_name(value: Any, fld: str, max_len: int) -> str:
    """:func:`check_name`, remembering the strings that passed: a batch names the same
    task and queue thousands of times (anything else, unhashable too, is checked as is)."""
    if type(value) is str:
        return _checked_name(value, fld, max_len)
    return check_name(value, fld, max_len)


def parse_job(raw: Any, now: float, max_payload: int = MAX_PAYLOAD) -> JobRecord:
    """Validate one submit spec (docs/protocol.md, section 6.1) into an unborn record.

    Options the spec leaves unset stay None: the queue is routed by the task, retry
    options resolve from the task's definition when a worker claims the job.
    """
    if not isinstance(raw, dict):
        raise invalid("job", "must be a map")
    task = _good_name(raw.get("task"), "task", MAX_TASK_NAME)
    queue = raw.get("queue")
    if queue is not None:
        _good_name(queue, "queue", MAX_QUEUE_NAME)
    if "priority" in raw and raw["priority"] is None:  # int, not int | nil (section 6.1)
        raise invalid("priority", f"must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}")
    priority = number(raw, "priority", MIN_PRIORITY, MAX_PRIORITY, integer=True)
    payload = _payload(raw, max_payload)
    retries, backoff, backoff_max = _retry_options(raw)
    timeout = number(raw, "timeout", MIN_TIMEOUT, MAX_TIMEOUT)
    delay = number(raw, "delay", 0, MAX_DELAY)
    eta = number(raw, "eta", 0, MAX_ETA)
    if delay is not None and eta is not None:
        raise invalid("delay", "and eta are exclusive; give one")
    if delay:
        eta = now + delay
    unique_key = raw.get("unique_key")
    if unique_key is not None and (
        not isinstance(unique_key, str)
        or not 0 < len(unique_key) <= MAX_UNIQUE_KEY
        or not _encodable(unique_key)
    ):
        raise invalid("unique_key", f"must be a string of 1 to {MAX_UNIQUE_KEY} characters")
    job_id = raw.get("id")
    if job_id is not None:
        check_name(job_id, "id", MAX_JOB_ID)
    concurrency_key = raw.get("concurrency_key")
    if concurrency_key is not None:
        limitspec.check_concurrency_key(concurrency_key)
    after, workflow, feed = _workflow_fields(raw)
    return JobRecord(
        id=job_id or new_job_id(),
        task=task,
        payload=payload,
        queue=queue or "",  # "": route by task (the core fills it in)
        priority=DEFAULT_PRIORITY if priority is None else priority,
        max_retries=retries,
        retry_backoff=backoff,
        retry_backoff_max=backoff_max,
        timeout=None if timeout is None else float(timeout),
        eta=None if eta is None or eta <= now else float(eta),
        unique_key=unique_key,
        concurrency_key=concurrency_key,
        workflow=workflow,
        depends_on=after,
        feed=feed,
    )


def _workflow_fields(raw: dict[str, Any]) -> tuple[tuple[str, ...], str | None, str | None]:
    """``after`` (the jobs it waits for), ``workflow`` (its id) and ``feed`` (what of their
    results it receives), docs/protocol.md section 6.1."""
    after = raw.get("after")
    if after is None:
        after = []
    if not isinstance(after, list) or len(after) > MAX_DEPENDENCIES:
        raise invalid("after", f"must be a list of at most {MAX_DEPENDENCIES} job ids")
    for dep in after:
        check_name(dep, "after", MAX_JOB_ID)
    if len(set(after)) != len(after):
        raise invalid("after", "names a job twice")
    workflow = raw.get("workflow")
    if workflow is not None:
        check_name(workflow, "workflow", MAX_JOB_ID)
    feed = raw.get("feed")
    if feed is not None:
        if feed not in FEEDS:
            raise invalid("feed", f"must be one of {', '.join(sorted(FEEDS))}, or nil")
        if not after:
            raise invalid("feed", "needs after: the jobs whose results it receives")
        if feed == FEED_RESULT and len(after) != 1:
            raise invalid("feed", "'result' takes the result of exactly one job in after")
    return tuple(after), workflow, feed


def parse_task_options(raw: Any) -> dict[str, TaskOptions]:
    """READY's ``defaults``: per task, ``retries``, ``retry_backoff``, ``retry_backoff_max``,
    ``timeout``, ``rate`` and ``concurrency_limit``, each optional."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise invalid("defaults", "must map task names to option maps")
    out: dict[str, TaskOptions] = {}
    for name, options in raw.items():
        if not isinstance(name, str) or not isinstance(options, dict):
            raise invalid("defaults", "must map task names to option maps")
        try:
            check_name(name, "task", MAX_TASK_NAME)
            timeout = number(options, "timeout", MIN_TIMEOUT, MAX_TIMEOUT)
            rate = options.get("rate")
            limit = options.get("concurrency_limit")
            out[name] = TaskOptions(
                *_retry_options(options),
                None if timeout is None else float(timeout),
                None if rate is None else str(limitspec.parse_rate(rate)),
                None if limit is None else limitspec.parse_key_limit(limit, "concurrency_limit"),
            )
        except InvalidJob as exc:
            raise invalid("defaults", f"defaults for {name!r}: {exc.message}") from None
    return out
