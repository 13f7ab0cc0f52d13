"""Sans-IO framing: bytes in, frames out; frames in, bytes out.

Wire format: a 4-byte big-endian unsigned length N, then N bytes of MessagePack
holding one map. The decoder checks N against ``max_frame_size`` *before* it lets
its buffer grow, so a hostile length prefix costs nothing.
"""

from __future__ import annotations

import enum
import struct
from typing import Any

import msgpack

from conveyor.errors import LocalProtocolError, RemoteProtocolError
from conveyor.limits import MAX_FRAME_SIZE
from conveyor.protocol.frames import check_frame
from conveyor.protocol.payload import default, ext_hook

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    EOF = "EOF"


NEED_DATA = _Sentinel.NEED_DATA
"""next_frame(): no complete frame buffered yet."""
EOF = _Sentinel.EOF
"""next_frame(): the peer closed cleanly between frames."""

Frame = dict[str, Any]


def encode_frame(frame: Frame, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """Serialise one frame; refuse (LocalProtocolError) one the peer would reject."""
    try:
        body: bytes = msgpack.packb(frame, use_bin_type=True, default=default)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"frame is not serialisable: {exc}") from exc
    if len(body) > max_frame_size:
        raise LocalProtocolError(
            f"frame of {len(body)} bytes exceeds the {max_frame_size}-byte limit",
            "frame_too_large",
        )
    return _HEADER.pack(len(body)) + body


def _unpack(body: bytes | memoryview) -> Any:
    # strict_map_key: keys must be str/bytes; limits are bounded by the frame size anyway.
    return msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True, ext_hook=ext_hook)


class FrameDecoder:
    """Buffers bytes from the peer and yields validated frames.

    ``receive_data(b"")`` signals EOF. ``next_frame()`` returns a frame, NEED_DATA, or
    EOF; it raises :class:`RemoteProtocolError` for anything malformed (after which
    the connection must be closed).
    """

    __slots__ = ("_buf", "_eof", "_pos", "max_frame_size")

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._pos = 0
        self._eof = False

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes) -> None:
        if self._eof:
            raise RemoteProtocolError("data after EOF")
        if not data:
            self._eof = True
            return
        # compact lazily: only when what we consumed dominates the buffer
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> Frame | _Sentinel:
        avail = len(self._buf) - self._pos
        if avail < HEADER_SIZE:
            return self._end_or_need(avail)
        (length,) = _HEADER.unpack_from(self._buf, self._pos)
        if length > self.max_frame_size:
            raise RemoteProtocolError(
                f"frame length {length} exceeds the {self.max_frame_size}-byte limit",
                "frame_too_large",
            )
        if length == 0:
            raise RemoteProtocolError("empty frame")
        if avail < HEADER_SIZE + length:
            return self._end_or_need(avail)
        start = self._pos + HEADER_SIZE
        end = start + length
        view = memoryview(self._buf)[start:end]
        try:
            frame = _unpack(view)
        except Exception as exc:  # msgpack raises a zoo of types on garbage
            raise RemoteProtocolError(f"undecodable frame: {type(exc).__name__}") from exc
        finally:
            view.release()
        self._pos = end
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        check_frame(frame)
        return frame  # type: ignore[no-any-return]

    def frames(self) -> list[Frame]:
        """Every complete frame buffered now (may raise like next_frame)."""
        out: list[Frame] = []
        while True:
            frame = self.next_frame()
            if isinstance(frame, dict):
                out.append(frame)
            else:
                return out

    def _end_or_need(self, avail: int) -> _Sentinel:
        if not self._eof:
            return NEED_DATA
        if avail:
            raise RemoteProtocolError(f"connection closed inside a frame ({avail} bytes left)")
        return EOF
