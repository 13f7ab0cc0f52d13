"""The exception tree of Conveyor.

::

    ConveyorError
    ├── ProtocolError              a frame broke the protocol
    │   ├── LocalProtocolError     ... and it was ours
    │   └── RemoteProtocolError    ... and it was the peer's
    ├── ConnectionLost             the broker went away mid-request
    │   └── BrokerUnavailable      no broker answers at the address (first connect failed)
    ├── BrokerError                the broker answered with an ERROR frame (has .code, .field)
    │   ├── AuthenticationError    code "unauthorized"
    │   ├── PermissionDenied       code "forbidden"
    │   ├── InvalidJob             code "invalid" (see .field); also raised before sending
    │   ├── JobNotFound            code "not_found"
    │   ├── Conflict               code "conflict"
    │   ├── RateLimited            code "rate_limited": slow down, try again later
    │   │   ├── TooManyFailures    code "too_many_failures": logins from this address are
    │   │   │                      refused for .retry_after seconds (too many bad tokens)
    │   │   └── QueueFull          code "queue_full": the queue is at its limit (.queue, .limit)
    │   └── StoreUnavailable       code "store_unavailable": the broker cannot write now
    ├── JobFailed                  the job ended dead/cancelled; has .job
    ├── ResultTimeout              result() ran out of time (also a TimeoutError)
    ├── PayloadDecryptError        an encrypted payload did not open (no key, wrong key, altered)
    ├── ConfigError                missing certificate, token or bad URL
    └── IllegalTransition          a job state change the transitions table forbids (a bug)

Task code may raise :class:`Retry` to ask for a retry and :class:`Reject` to fail
at once without retries; neither is a ConveyorError.
"""

from __future__ import annotations

from typing import Any, Protocol


class _JobLike(Protocol):
    """What JobFailed needs of a job (conveyor.job.Job); no import, so no cycle."""

    @property
    def id(self) -> str: ...
    @property
    def state(self) -> Any: ...
    @property
    def error(self) -> dict[str, Any] | None: ...


class ConveyorError(Exception):
    """Base of every error Conveyor raises."""


class ProtocolError(ConveyorError):
    """A frame violated the protocol. ``code`` is the ERROR code to send."""

    def __init__(self, message: str, code: str = "bad_frame") -> None:
        super().__init__(message)
        self.code = code


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids."""


class ConnectionLost(ConveyorError):
    """The connection to the broker closed before the reply arrived."""


class BrokerUnavailable(ConnectionLost):
    """No broker answered at the address (the first connection attempt failed)."""


class ConfigError(ConveyorError):
    """Configuration is missing or wrong (URL, certificate, token)."""


class BrokerError(ConveyorError):
    """The broker refused a request with an ERROR frame."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> BrokerError:
        code = str(frame.get("code", "internal"))
        klass = _ERROR_CLASSES.get(code, BrokerError)
        error = klass(code, str(frame.get("message", "")), frame.get("field"))
        if isinstance(error, TooManyFailures):
            retry_after = frame.get("retry_after")
            if isinstance(retry_after, int | float) and not isinstance(retry_after, bool):
                error.retry_after = max(0.0, float(retry_after))
        if isinstance(error, QueueFull):
            queue, limit = frame.get("queue"), frame.get("limit")
            error.queue = queue if isinstance(queue, str) else ""
            error.limit = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
        return error

    def details(self) -> dict[str, Any]:
        """Fields the ERROR frame (or HTTP error body) carries besides code, message, field."""
        return {}


class AuthenticationError(BrokerError):
    """The token was missing, unknown, revoked or expired."""


class PermissionDenied(BrokerError):
    """The token's role may not do this."""


class InvalidJob(BrokerError):
    """A submission was rejected; ``field`` names the offending field."""


class JobNotFound(BrokerError):
    """No job has that id."""


class Conflict(BrokerError):
    """The job's state forbids the request (cancel of a finished job, ...)."""


class RateLimited(BrokerError):
    """Too many requests; slow down and retry later."""


class TooManyFailures(RateLimited):
    """Too many bad tokens came from this address lately: the broker refuses its logins,
    unchecked, for ``retry_after`` seconds (docs/security.md, "Failed logins"). Not a
    verdict on the token: try again after that."""

    CODE = "too_many_failures"

    def __init__(
        self, code: str, message: str, field: str | None = None, retry_after: float = 1.0
    ) -> None:
        super().__init__(code, message, field)
        self.retry_after = retry_after


class QueueFull(RateLimited):
    """A submit would take a queue past the broker's ``--max-queued`` limit (queued plus
    scheduled jobs). Nothing of the refused submit was stored; jobs already accepted are
    untouched. Like :class:`RateLimited` it means "slow down": retry once workers have
    drained the queue. ``queue`` names the queue (``""`` for unrouted jobs), ``limit`` the
    limit."""

    CODE = "queue_full"

    def __init__(
        self,
        code: str,
        message: str,
        field: str | None = None,
        *,
        queue: str = "",
        limit: int | None = None,
    ) -> None:
        super().__init__(code, message, field)
        self.queue = queue
        self.limit = limit

    @classmethod
    def of(cls, queue: str, limit: int, count: int, adding: int) -> QueueFull:
        """The broker's refusal: ``adding`` more jobs onto ``count`` would pass ``limit``."""
        name = repr(queue) if queue else "'' (unrouted jobs)"
        return cls(
            cls.CODE,
            f"queue {name} is full: {count} job(s) queued, scheduled or waiting, the limit is "
            f"{limit}; {adding} more refused (nothing of this submit was stored); retry later",
            queue=queue,
            limit=limit,
        )

    def details(self) -> dict[str, Any]:
        return {"queue": self.queue, "limit": self.limit}


class StoreUnavailable(BrokerError):
    """The broker cannot write to its store now (disk full, I/O error). The message says
    whether the request may still be stored; resubmitting with the same job ids is safe."""

    CODE = "store_unavailable"

    @classmethod
    def because(cls, cause: str, *, kept: bool) -> StoreUnavailable:
        """The broker's refusal: ``cause`` (e.g. "disk full"), and whether what was asked
        is kept to be written when the store recovers."""
        if kept:
            then = (
                "the request is kept and will be stored once the store recovers; "
                "resubmitting with the same job ids is safe"
            )
        else:
            then = "the request was not done; try again later"
        return cls(cls.CODE, f"the broker cannot write to its store ({cause}); {then}")


_ERROR_CLASSES: dict[str, type[BrokerError]] = {
    "unauthorized": AuthenticationError,
    "forbidden": PermissionDenied,
    "invalid": InvalidJob,
    "not_found": JobNotFound,
    "conflict": Conflict,
    "rate_limited": RateLimited,
    TooManyFailures.CODE: TooManyFailures,
    QueueFull.CODE: QueueFull,
    StoreUnavailable.CODE: StoreUnavailable,
}


class JobFailed(ConveyorError):
    """The job ended without a result (dead or cancelled)."""

    def __init__(self, job: _JobLike) -> None:
        err = job.error or {}
        state = getattr(job.state, "value", job.state)
        detail = ": ".join(str(p) for p in (err.get("type"), err.get("message")) if p)
        super().__init__(f"job {job.id} is {state}" + (f": {detail}" if detail else ""))
        self.job: Any = job


class SubmitFailed(ConveyorError):
    """Pipelined submits (``Client(pipeline=True)``) that the broker refused, reported by
    ``flush()`` (or ``close()``): ``failed`` holds ``(job_id, BrokerError)`` pairs. Every
    other submit of the pipeline was acknowledged, so it is stored."""

    def __init__(self, failed: list[tuple[str, BrokerError]]) -> None:
        first_id, first = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        super().__init__(f"the broker refused job {first_id}: {first}{more}")
        self.failed = failed


class ResultTimeout(ConveyorError, TimeoutError):
    """The job did not finish within the timeout given to result()."""


class PayloadDecryptError(ConveyorError):
    """An end-to-end encrypted payload could not be opened: no key fits, or it was altered."""


class IllegalTransition(ConveyorError):
    """A job state change that conveyor.job.TRANSITIONS does not allow: a bug, never input."""


class Retry(Exception):
    """Raised by a task to be retried, after ``delay`` seconds if given."""

    def __init__(self, message: str = "retry requested", delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class Reject(Exception):
    """Raised by a task to fail at once, skipping any retries left."""
