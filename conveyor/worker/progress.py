"""``conveyor.current_job()``: a running task reports its progress and small metadata.

Theory of operation
-------------------
While a task runs, :func:`current_job` returns its :class:`CurrentJob` (a context
variable, so it is right in threads, on the event loop and in the process pool's
children alike). ``progress()`` and ``set_meta()`` only change the object's state and,
when it goes from *sent* to *changed*, call its ``notify`` once; whoever sends it
(the worker's runner, or a process pool child) takes the latest state with
:meth:`CurrentJob.take` when it sends. So a task that calls ``progress()`` a million
times in a tight loop costs a million cheap updates and a few frames a second, never a
frame per call: the runner sends at most one PROGRESS per
:data:`~conveyor.limits.PROGRESS_INTERVAL`, and before the job's report, the last state.

Bad values raise at the call (``ValueError``/``TypeError``) in the task, where the
mistake is: a fraction outside 0..1, a message too long, metadata that is not
JSON-compatible or is over :data:`~conveyor.limits.MAX_META` bytes packed.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

from conveyor.limits import MAX_META, MAX_PROGRESS_MESSAGE
from conveyor.protocol.payload import PayloadError, check_json, pack

_current: contextvars.ContextVar[CurrentJob | None] = contextvars.ContextVar(
    "conveyor_current_job", default=None
)


class CurrentJob:
    """The job the calling task is running: its id, task and attempt, and its reports."""

    __slots__ = (
        "_changed",
        "_lock",
        "_message",
        "_meta",
        "_notify",
        "_value",
        "attempt",
        "id",
        "task",
    )

    def __init__(
        self, job_id: str, task: str, attempt: int, notify: Callable[[], None] | None = None
    ) -> None:
        self.id = job_id
        self.task = task
        self.attempt = attempt
        self._notify = notify
        self._lock = threading.Lock()
        self._value: float | None = None
        self._message: str | None = None
        self._meta: dict[str, Any] = {}
        self._changed = False

    def __repr__(self) -> str:
        return f"CurrentJob({self.id!r}, task={self.task!r}, attempt={self.attempt})"

    def progress(self, value: float | None = None, message: str | None = None) -> None:
        """Report how far the job is: ``value`` from 0.0 to 1.0 (None: unknown), and an
        optional short ``message`` (at most 500 characters), e.g. ``"resized 40/100"``."""
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError("progress must be a number from 0 to 1, or None")
            if not math.isfinite(value) or not 0 <= value <= 1:
                raise ValueError(f"progress must be from 0 to 1, not {value!r}")
            value = float(value)
        if message is not None:
            if not isinstance(message, str):
                raise TypeError("the progress message must be a str")
            if len(message) > MAX_PROGRESS_MESSAGE:
                raise ValueError(
                    f"the progress message is {len(message)} characters; "
                    f"the limit is {MAX_PROGRESS_MESSAGE}"
                )
        with self._lock:
            self._value, self._message = value, message
            fresh = self._mark()
        self._notify_if(fresh)

    def set_meta(self, **values: Any) -> None:
        """Set metadata keys (JSON-compatible values; a value of None removes its key).
        All of it together must stay within 4 KiB packed."""
        with self._lock:
            meta = {**self._meta, **values}
            meta = {k: v for k, v in meta.items() if v is not None}
            try:
                check_json(meta, "meta")
                size = len(pack(meta))
            except PayloadError as exc:
                raise TypeError(str(exc)) from None
            if size > MAX_META:
                raise ValueError(
                    f"the job's metadata would be {size} bytes; the limit is {MAX_META}"
                )
            self._meta = meta
            fresh = self._mark()
        self._notify_if(fresh)

    @property
    def meta(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._meta)

    def _mark(self) -> bool:
        """Changed now (hold the lock); True if it was clean, i.e. notify."""
        fresh, self._changed = not self._changed, True
        return fresh

    def _notify_if(self, fresh: bool) -> None:
        if fresh and self._notify is not None:  # outside the lock: notify may take()
            self._notify()

    def take(self) -> dict[str, Any] | None:
        """The state to send (``{value, message, meta}``) if it changed since the last
        take, else None."""
        with self._lock:
            if not self._changed:
                return None
            self._changed = False
            return {"value": self._value, "message": self._message, "meta": dict(self._meta)}

    def put(self, state: dict[str, Any]) -> None:
        """Take over a state sent from elsewhere (a process pool child's report)."""
        with self._lock:
            self._value = state.get("value")
            self._message = state.get("message")
            self._meta = dict(state.get("meta") or {})
            fresh = self._mark()
        self._notify_if(fresh)


def current_job() -> CurrentJob:
    """The job the calling task is running. Raises ``RuntimeError`` outside a task."""
    job = _current.get()
    if job is None:
        raise RuntimeError("current_job() is only available inside a running task")
    return job


@contextlib.contextmanager
def running(job: CurrentJob | None) -> Iterator[None]:
    """Make ``job`` the current job for the code inside (a thread, a task, a child)."""
    token = _current.set(job)
    try:
        yield
    finally:
        _current.reset(token)
