"""The connection state machine, sans-IO: bytes in, frames out, with the handshake enforced.

Theory of operation
-------------------
A server-side connection starts in ``AWAIT_HELLO``: the only frame it accepts is a
HELLO with a version we speak; anything else is the peer's protocol error. After
:meth:`ServerConnection.accept` (the broker checked the token) it is ``OPEN`` and
every frame type may pass (role checks happen above, in the broker). ``CLOSED`` is
final: after an ERROR with a fatal code, a GOODBYE or EOF.

A client-side connection starts in ``AWAIT_WELCOME`` after it sent HELLO and is
``OPEN`` once WELCOME arrives.
"""

from __future__ import annotations

import abc
import enum
from typing import Any

from conveyor.errors import RemoteProtocolError
from conveyor.limits import HANDSHAKE_MAX_FRAME_SIZE, MAX_FRAME_SIZE
from conveyor.protocol.codec import EOF, NEED_DATA, Frame, FrameDecoder, encode_frame
from conveyor.protocol.frames import (
    FATAL_CODES,
    PROTOCOL_VERSION,
    ErrorCode,
    FrameType,
)


class ConnState(enum.Enum):
    AWAIT_HELLO = "await_hello"
    AWAIT_WELCOME = "await_welcome"
    OPEN = "open"
    CLOSED = "closed"


_TRANSITIONS: dict[ConnState, frozenset[ConnState]] = {
    ConnState.AWAIT_HELLO: frozenset({ConnState.OPEN, ConnState.CLOSED}),
    ConnState.AWAIT_WELCOME: frozenset({ConnState.OPEN, ConnState.CLOSED}),
    ConnState.OPEN: frozenset({ConnState.CLOSED}),
    ConnState.CLOSED: frozenset(),
}


def _closes(frame: Frame) -> bool:
    """A GOODBYE or an ERROR with a fatal code ends the connection, whoever sends it."""
    kind = frame.get("t")
    return kind == FrameType.GOODBYE or (
        kind == FrameType.ERROR and frame.get("code") in FATAL_CODES
    )


class _Connection(abc.ABC):
    def __init__(self, state: ConnState, max_frame_size: int) -> None:
        self.state = state
        self.decoder = FrameDecoder(max_frame_size)
        self.max_frame_size = max_frame_size

    def _move(self, new: ConnState) -> None:
        if new is not self.state and new not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"connection cannot go from {self.state} to {new}")
        self.state = new

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means EOF."""
        self.decoder.receive_data(data)

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None when more data is needed or the peer is done.

        Raises RemoteProtocolError for malformed input or a frame out of turn.
        """
        frame = self.decoder.next_frame()
        if frame is EOF:
            self._move(ConnState.CLOSED)
            return None
        if frame is NEED_DATA:
            return None
        assert isinstance(frame, dict)
        self._check_turn(frame)
        if _closes(frame):  # the peer said goodbye or gave up: it closes next
            self._move(ConnState.CLOSED)
        return frame

    @abc.abstractmethod
    def _check_turn(self, frame: Frame) -> None:
        """Raise RemoteProtocolError if ``frame`` may not arrive in the current state."""

    def send(self, frame: Frame) -> bytes:
        """Bytes for one frame (an ERROR with a fatal code closes the connection)."""
        data = encode_frame(frame, self.max_frame_size)
        if _closes(frame):
            self._move(ConnState.CLOSED)
        return data

    def error(
        self, code: ErrorCode | str, message: str, rid: int | None = None, field: str | None = None
    ) -> bytes:
        frame: dict[str, Any] = {"t": "error", "code": str(code), "message": message}
        if rid is not None:
            frame["rid"] = rid
        if field is not None:
            frame["field"] = field
        return self.send(frame)


class ServerConnection(_Connection):
    """The broker's side of one connection.

    Until the HELLO is accepted, frames are limited to HANDSHAKE_MAX_FRAME_SIZE, so an
    unauthenticated peer cannot make the broker buffer a full-size frame.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        super().__init__(ConnState.AWAIT_HELLO, max_frame_size)
        self.decoder.max_frame_size = min(max_frame_size, HANDSHAKE_MAX_FRAME_SIZE)

    def _check_turn(self, frame: Frame) -> None:
        if self.state is ConnState.AWAIT_HELLO:
            if frame["t"] != FrameType.HELLO:
                raise RemoteProtocolError("the first frame must be hello", "handshake_required")
            if frame["v"] != PROTOCOL_VERSION:
                raise RemoteProtocolError(
                    f"protocol version {frame['v']} is not supported (this broker speaks "
                    f"{PROTOCOL_VERSION})",
                    "unsupported_version",
                )
        elif self.state is ConnState.OPEN and frame["t"] == FrameType.HELLO:
            raise RemoteProtocolError("hello may only be sent once", "bad_frame")
        elif self.state is ConnState.CLOSED:
            raise RemoteProtocolError("frame after close", "bad_frame")

    def accept(self, welcome: Frame) -> bytes:
        """Send WELCOME and open the connection (the caller checked the credentials)."""
        data = self.send({"t": "welcome", "v": PROTOCOL_VERSION, **welcome})
        self.decoder.max_frame_size = self.max_frame_size
        self._move(ConnState.OPEN)
        return data


class ClientConnection(_Connection):
    """A producer's or worker's side of one connection."""

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        super().__init__(ConnState.AWAIT_WELCOME, max_frame_size)

    def hello(
        self, token: str | None, name: str = "", agent: str = "", features: tuple[str, ...] = ()
    ) -> bytes:
        frame: Frame = {"t": "hello", "v": PROTOCOL_VERSION, "token": token}
        if name:
            frame["name"] = name
        if agent:
            frame["agent"] = agent
        if features:
            frame["features"] = list(features)
        return self.send(frame)

    def _check_turn(self, frame: Frame) -> None:
        if self.state is ConnState.AWAIT_WELCOME:
            if frame["t"] == FrameType.WELCOME:
                # speak the broker's frame limit from now on, both ways
                limit = frame.get("max_frame_size")
                if isinstance(limit, int) and limit >= 1024:
                    self.max_frame_size = self.decoder.max_frame_size = limit
                self._move(ConnState.OPEN)
            elif frame["t"] != FrameType.ERROR:
                raise RemoteProtocolError(f"expected welcome, got {frame['t']}", "bad_frame")
