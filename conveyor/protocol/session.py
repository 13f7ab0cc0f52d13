"""The client's side of a protocol session, sans-IO: what Client, AsyncClient and the worker share.

Theory of operation
-------------------
A :class:`ClientSession` lives as long as one connection. It makes the HELLO, numbers
requests (``rid``), remembers which are pending and whether each is safe to send again,
and sorts what arrives into :class:`Reply` (the answer to a pending request), :class:`Push`
(a frame the broker sent on its own: DISPATCH, ABORT, ACKED, GOODBYE …) and :class:`Closed`.
It never touches a socket: a transport feeds it bytes with :meth:`receive` and writes the
bytes its methods return.

When the connection is lost, :meth:`lost` hands back the pending requests: those marked
resendable (reads, waits, submits with client-chosen ids: all idempotent) go again on the
next connection (another broker's, when the client fails over); the rest (DLQ operations,
token creation, and a cancel's first try, which the client repeats itself) fail with
:class:`~conveyor.errors.ConnectionLost`, since the broker may have applied them already.
A request refused with a fatal error caused by our own frame is never sent again.

:class:`Backoff` is the reconnect policy: exponential delays with jitter inside a budget that
starts when a working connection is lost (a first connection that fails is not retried).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.errors import BrokerError, LocalProtocolError
from conveyor.protocol.connection import ClientConnection, ConnState
from conveyor.protocol.frames import FATAL_CODES, FEATURES

Frame = dict[str, Any]


@dataclass(slots=True)
class Request:
    """A request sent and not yet answered."""

    rid: int
    frame: Frame
    resend: bool  # safe to send again on a new connection
    token: object = None  # the transport's handle (a future, say) for whoever waits


@dataclass(frozen=True, slots=True)
class Welcome:
    frame: Frame


@dataclass(frozen=True, slots=True)
class Reply:
    request: Request
    frame: Frame

    @property
    def error(self) -> BrokerError | None:
        return error_of(self.frame)


@dataclass(frozen=True, slots=True)
class Push:
    frame: Frame


@dataclass(frozen=True, slots=True)
class Closed:
    reason: str
    fatal: BrokerError | None = None  # the broker's fatal ERROR, if it ended with one


Event = Welcome | Reply | Push | Closed


class ClientSession:
    """One connection's protocol state; see the module docstring."""

    def __init__(
        self,
        token: str | None,
        name: str = "",
        agent: str = "",
        features: Sequence[str] = FEATURES,
    ) -> None:
        self.conn = ClientConnection()
        self._hello = self.conn.hello(token, name, agent, tuple(features))
        self._rids = itertools.count(1)
        self.pending: dict[int, Request] = {}
        self.welcome: Frame | None = None

    # -- what goes out -------------------------------------------------------------------
    def hello(self) -> bytes:
        return self._hello

    def request(
        self, frame: Frame, *, resend: bool = True, token: object = None
    ) -> tuple[Request, bytes]:
        """Number a request; returns it and the bytes to write. Raises LocalProtocolError
        (nothing is pending then) for a frame the broker would refuse."""
        rid = next(self._rids)
        data = self.conn.send({**frame, "rid": rid})
        req = Request(rid, frame, resend, token)
        self.pending[rid] = req
        return req, data

    def send(self, frame: Frame) -> bytes:
        """A frame that gets no reply (worker frames, GOODBYE)."""
        return self.conn.send(frame)

    def forget(self, req: Request) -> None:
        """Stop waiting for ``req`` (its caller gave up)."""
        self.pending.pop(req.rid, None)

    @property
    def open(self) -> bool:
        return self.conn.state is ConnState.OPEN

    @property
    def max_frame_size(self) -> int:
        return self.conn.max_frame_size

    def speaks(self, feature: str) -> bool:
        """Whether the broker granted this feature in WELCOME (an older one may not)."""
        return feature in ((self.welcome or {}).get("features") or ())

    def limit(self, name: str, default: int) -> int:
        """A limit the broker announced in WELCOME (``limits``), else ``default``."""
        limits = (self.welcome or {}).get("limits") or {}
        value = limits.get(name)
        return value if isinstance(value, int) and value > 0 else default

    # -- what comes in -------------------------------------------------------------------
    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes (``b""`` at EOF); returns what they completed. May raise
        RemoteProtocolError for a broken stream (the connection is then unusable)."""
        self.conn.receive_data(data)
        events: list[Event] = []
        while True:
            frame = self.conn.next_frame()
            if frame is None:
                if self.conn.state is ConnState.CLOSED:
                    events.append(Closed("the broker closed the connection"))
                return events
            events.append(self._sort(frame))
            if self.conn.state is ConnState.CLOSED:
                fatal = error_of(frame)
                reason = str(frame.get("reason") or frame.get("message") or "closed")
                events.append(Closed(f"the broker closed the connection: {reason}", fatal))
                return events

    def _sort(self, frame: Frame) -> Event:
        kind = frame.get("t")
        if kind == "welcome":
            self.welcome = frame
            return Welcome(frame)
        rid = frame.get("rid")
        req = self.pending.pop(rid, None) if isinstance(rid, int) else None
        if req is not None:
            return Reply(req, frame)
        return Push(frame)

    def lost(self) -> tuple[list[Request], list[Request]]:
        """The connection is gone: (requests to send again, requests that failed)."""
        again = [r for r in self.pending.values() if r.resend]
        failed = [r for r in self.pending.values() if not r.resend]
        self.pending.clear()
        return again, failed


def error_of(frame: Frame) -> BrokerError | None:
    """The BrokerError an ERROR frame stands for (None for any other frame)."""
    return BrokerError.from_frame(frame) if frame.get("t") == "error" else None


def reply_timeout(frame: Frame, default: float = 60.0) -> float | None:
    """How long to wait for the reply to ``frame`` before calling the broker unresponsive.

    A WAIT is answered when its job finishes (no timeout: wait as long as it takes) or when
    its own timeout passes; everything else is answered at once.
    """
    if frame.get("t") == "wait":
        timeout = frame.get("timeout")
        return None if timeout is None else float(timeout) + 30.0
    return default


def is_fatal(error: BrokerError | None) -> bool:
    return error is not None and error.code in FATAL_CODES


OUR_FAULT = frozenset(
    {
        "bad_frame",
        "frame_too_large",
        "unknown_type",
        "unsupported_version",
        "handshake_required",
        "unauthorized",
    }
)
"""Fatal codes that blame what we sent (or who we are): sending it again cannot help."""


def refusal(closed: Closed) -> BrokerError | None:
    """The broker's error to raise for requests cut off by ``closed``, when resending them
    on a new connection would only be refused again; None when resending is right."""
    fatal = closed.fatal
    return fatal if fatal is not None and fatal.code in OUR_FAULT else None


def split_to_fit(
    items: list[Any],
    encode: Callable[[list[Any]], bytes],
    shrink: Callable[[Any], Any] | None = None,
) -> list[bytes]:
    """Encode ``items`` in as few frames as fit: halve a batch whose frame is too large.

    ``encode(chunk)`` builds one frame's bytes. A single item too large on its own is
    replaced by ``shrink(item)`` when given (a worker reports such a result as a failure);
    otherwise the LocalProtocolError (code ``frame_too_large``) is raised for the caller.
    """
    try:
        return [encode(items)]
    except LocalProtocolError as exc:
        if exc.code != "frame_too_large":
            raise
        if len(items) == 1:
            if shrink is None:
                raise
            return [encode([shrink(items[0])])]
    mid = len(items) // 2
    return [*split_to_fit(items[:mid], encode, shrink), *split_to_fit(items[mid:], encode, shrink)]


class Backoff:
    """Reconnect delays: exponential from ``first`` to ``cap``, jittered, within ``budget``
    seconds counted from :meth:`start` (the moment a working connection was lost)."""

    def __init__(self, budget: float, first: float = 0.05, cap: float = 2.0) -> None:
        self.budget = budget
        self.first = first
        self.cap = cap
        self._deadline: float | None = None
        self._delay = first

    def start(self, now: float) -> None:
        if self._deadline is None:
            self._deadline = now + self.budget
            self._delay = self.first

    def reset(self) -> None:
        """A connection works again: the next loss gets a full budget."""
        self._deadline = None
        self._delay = self.first

    def next_delay(self, now: float) -> float | None:
        """Seconds to sleep before the next attempt, or None once the budget is spent."""
        if self._deadline is None or now + self._delay > self._deadline:
            return None
        delay = self._delay * (0.5 + random.random() / 2)
        self._delay = min(self._delay * 2, self.cap)
        return delay
