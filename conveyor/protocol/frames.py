"""Frame types, their fields, and error codes of protocol v1 (docs/protocol.md is the spec).

A frame is a MessagePack map with a ``t`` field naming its type. Frames are kept as
plain dicts on the hot path (a job batch can hold thousands); this module is the one
table that says which fields each type carries and of what type, and
:func:`check_frame` enforces it before any frame reaches broker or client logic.
"""

from __future__ import annotations

import enum
from typing import Any

from conveyor.errors import RemoteProtocolError

PROTOCOL_VERSION = 1
FEATURES = ("packed", "get_many", "schedules")
"""Optional features a v1 peer may ask for in HELLO (docs/protocol.md, section 4.2)."""


class FrameType(enum.StrEnum):
    # handshake
    HELLO = "hello"
    WELCOME = "welcome"
    # any time, either side
    ERROR = "error"
    PING = "ping"
    PONG = "pong"
    GOODBYE = "goodbye"
    # producer requests (all carry "rid") and replies (echo it)
    SUBMIT = "submit"
    SUBMITTED = "submitted"
    GET = "get"
    WAIT = "wait"
    GET_MANY = "get_many"
    JOB = "job"
    LIST = "list"
    JOBS = "jobs"
    STATS = "stats"
    STATS_REPLY = "stats_reply"
    CANCEL = "cancel"
    DLQ_RETRY = "dlq_retry"
    DLQ_PURGE = "dlq_purge"
    TOKEN_CREATE = "token_create"
    TOKEN_LIST = "token_list"
    TOKEN_REVOKE = "token_revoke"
    QUEUE_PAUSE = "queue_pause"
    QUEUE_RESUME = "queue_resume"
    LIMITS = "limits"
    SCHEDULE = "schedule"  # add, list, get, pause, resume, remove, run_now ("op")
    OK = "ok"
    # worker <-> broker
    READY = "ready"
    DISPATCH = "dispatch"
    REPORT = "report"
    ACKED = "acked"
    HEARTBEAT = "heartbeat"
    PROGRESS = "progress"
    RELEASE = "release"
    DRAIN = "drain"
    ABORT = "abort"


class ErrorCode(enum.StrEnum):
    BAD_FRAME = "bad_frame"  # undecodable, wrong types, missing fields (fatal)
    FRAME_TOO_LARGE = "frame_too_large"  # length prefix above the limit (fatal)
    UNKNOWN_TYPE = "unknown_type"  # "t" names no frame type (fatal)
    UNSUPPORTED_VERSION = "unsupported_version"  # HELLO with a version we do not speak (fatal)
    HANDSHAKE_REQUIRED = "handshake_required"  # first frame was not HELLO (fatal)
    HANDSHAKE_TIMEOUT = "handshake_timeout"  # no HELLO in time (fatal)
    UNAUTHORIZED = "unauthorized"  # bad/missing/revoked token (fatal)
    FORBIDDEN = "forbidden"  # role may not do this (connection stays open)
    INVALID = "invalid"  # a request field is invalid; "field" names it
    NOT_FOUND = "not_found"  # no such job
    CONFLICT = "conflict"  # the job is in a state that forbids this
    RATE_LIMITED = "rate_limited"  # too many submits per second
    TOO_MANY_FAILURES = "too_many_failures"  # too many bad tokens from this address (fatal)
    QUEUE_FULL = "queue_full"  # a submit would take a queue past its --max-queued limit
    TOO_MANY_CONNECTIONS = "too_many_connections"  # (fatal)
    IDLE_TIMEOUT = "idle_timeout"  # (fatal)
    SHUTTING_DOWN = "shutting_down"  # broker is stopping (fatal)
    STORE_UNAVAILABLE = "store_unavailable"  # the store cannot write now (disk full, ...)
    INTERNAL = "internal"  # a bug on the broker; the request was not done


FATAL_CODES = frozenset(
    {
        ErrorCode.BAD_FRAME,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.UNKNOWN_TYPE,
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.HANDSHAKE_REQUIRED,
        ErrorCode.HANDSHAKE_TIMEOUT,
        ErrorCode.UNAUTHORIZED,
        ErrorCode.TOO_MANY_FAILURES,
        ErrorCode.TOO_MANY_CONNECTIONS,
        ErrorCode.IDLE_TIMEOUT,
        ErrorCode.SHUTTING_DOWN,
    }
)

_INT = (int,)
_NUM = (int, float)
_STR = (str,)
_LIST = (list,)
_MAP = (dict,)
_BOOL = (bool,)
_NONE = (type(None),)

# field -> (accepted python types, required). Unknown extra fields are ignored, so a
# newer peer can add optional fields without breaking an older one.
Schema = dict[str, tuple[tuple[type, ...], bool]]
_RID: Schema = {"rid": (_INT, True)}

FRAME_SCHEMAS: dict[FrameType, Schema] = {
    FrameType.HELLO: {
        "v": (_INT, True),
        "token": (_STR + _NONE, False),
        "name": (_STR, False),
        "agent": (_STR, False),
        "features": (_LIST, False),
    },
    FrameType.WELCOME: {
        "v": (_INT, True),
        "session": (_STR, True),
        "role": (_STR, True),
        "server": (_STR, False),
        "max_frame_size": (_INT, False),
        "heartbeat": (_NUM, False),
        "lease": (_NUM, False),
        "features": (_LIST, False),
        "limits": (_MAP, False),
    },
    FrameType.ERROR: {
        "rid": (_INT + _NONE, False),
        "code": (_STR, True),
        "message": (_STR, True),
        "field": (_STR + _NONE, False),
        "retry_after": (_NUM, False),  # with too_many_failures: seconds until a new try
    },
    FrameType.PING: {"rid": (_INT, False)},
    FrameType.PONG: {"rid": (_INT, False)},
    FrameType.GOODBYE: {"reason": (_STR, False)},
    FrameType.SUBMIT: {**_RID, "jobs": (_LIST, True)},
    FrameType.SUBMITTED: {**_RID, "jobs": (_LIST, True)},
    FrameType.GET: {
        **_RID,
        "id": (_STR, True),
        "events": (_BOOL, False),
        "payload": (_BOOL, False),
    },
    FrameType.WAIT: {
        **_RID,
        "id": (_STR, True),
        "timeout": (_NUM + _NONE, False),
        "events": (_BOOL, False),
        "payload": (_BOOL, False),
        "progress": (_NUM + _NONE, False),  # also reply at progress newer than this time
    },
    FrameType.GET_MANY: {
        **_RID,
        "ids": (_LIST, True),
        "payload": (_BOOL, False),
        "brief": (_BOOL, False),
    },
    FrameType.JOB: {**_RID, "job": (_MAP, True)},
    FrameType.LIST: {
        **_RID,
        "state": (_STR + _NONE, False),
        "queue": (_STR + _NONE, False),
        "task": (_STR + _NONE, False),
        "workflow": (_STR + _NONE, False),
        "limit": (_INT, False),
        "offset": (_INT, False),
        "cursor": (_STR + _NONE, False),
    },
    FrameType.JOBS: {
        **_RID,
        "jobs": (_LIST, True),
        "truncated": (_BOOL, False),
        "cursor": (_STR, False),
    },
    FrameType.STATS: {**_RID, "brief": (_BOOL, False)},
    FrameType.STATS_REPLY: {**_RID, "stats": (_MAP, True)},
    FrameType.CANCEL: {**_RID, "id": (_STR, True)},
    FrameType.DLQ_RETRY: {**_RID, "ids": (_LIST, False), "all": (_BOOL, False)},
    FrameType.DLQ_PURGE: {**_RID, "ids": (_LIST, False), "all": (_BOOL, False)},
    FrameType.TOKEN_CREATE: {
        **_RID,
        "role": (_STR, True),
        "name": (_STR, False),
        "ttl": (_NUM + _NONE, False),
    },
    FrameType.TOKEN_LIST: {**_RID},
    FrameType.TOKEN_REVOKE: {**_RID, "name": (_STR, True)},
    FrameType.QUEUE_PAUSE: {**_RID, "queue": (_STR, True)},
    FrameType.QUEUE_RESUME: {**_RID, "queue": (_STR, True)},
    FrameType.LIMITS: {**_RID, "set": (_MAP, False), "clear": (_LIST, False)},
    FrameType.SCHEDULE: {
        **_RID,
        "op": (_STR, True),
        "name": (_STR, False),
        "schedule": (_MAP, False),
        "replace": (_BOOL, False),
    },
    FrameType.OK: {**_RID},
    FrameType.READY: {
        **_RID,
        "tasks": (_LIST, True),
        "queues": (_LIST, True),
        "concurrency": (_INT, True),
        "prefetch": (_INT, False),
        "pool": (_STR, False),
        "defaults": (_MAP, False),
        "routes": (_MAP, False),
        "schedules": (_MAP, False),
        "host": (_STR, False),
        "pid": (_INT, False),
    },
    FrameType.DISPATCH: {"jobs": (_LIST, True)},
    FrameType.REPORT: {"results": (_LIST, True)},
    FrameType.ACKED: {"ids": (_LIST, True)},
    FrameType.HEARTBEAT: {"running": (_LIST, False)},
    FrameType.PROGRESS: {"jobs": (_LIST, True)},
    FrameType.RELEASE: {"jobs": (_LIST, True)},
    FrameType.DRAIN: {},
    FrameType.ABORT: {"id": (_STR, True), "lease": (_INT, False)},
}

_TYPES_BY_NAME = {t.value: t for t in FrameType}


def check_frame(frame: Any) -> FrameType:
    """Validate a decoded frame against its schema; return its type.

    Raises :class:`RemoteProtocolError` (code ``bad_frame`` or ``unknown_type``).
    """
    if not isinstance(frame, dict):
        raise RemoteProtocolError("a frame must be a map", "bad_frame")
    name = frame.get("t")
    if not isinstance(name, str):
        raise RemoteProtocolError('a frame needs a string "t" field', "bad_frame")
    ftype = _TYPES_BY_NAME.get(name)
    if ftype is None:
        raise RemoteProtocolError(f"unknown frame type {name[:40]!r}", "unknown_type")
    for key, (types, required) in FRAME_SCHEMAS[ftype].items():
        value = frame.get(key, _MISSING)
        if value is _MISSING:
            if required:
                raise RemoteProtocolError(f"{name} frame lacks field {key!r}", "bad_frame")
        elif not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise RemoteProtocolError(f"{name} frame field {key!r} has the wrong type", "bad_frame")
    return ftype


_MISSING = object()
