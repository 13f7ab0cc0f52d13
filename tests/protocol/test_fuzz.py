"""Hypothesis fuzzing of the codec and the connection: hostile bytes only ever raise
RemoteProtocolError, and a decoder never holds more than one frame's worth of bytes."""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.errors import RemoteProtocolError
from conveyor.protocol.codec import EOF, HEADER_SIZE, NEED_DATA, FrameDecoder, encode_frame
from conveyor.protocol.connection import ConnState, ServerConnection
from conveyor.protocol.frames import FRAME_SCHEMAS, FrameType, check_frame

MAX = 512  # small, so random length prefixes land on both sides of the limit

_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=_CHECKS)
# structured inputs cost more to generate than they do to check
FUZZ_STRUCTURED = settings(max_examples=120, deadline=None, suppress_health_check=_CHECKS)

# -- strategies ------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)

_BY_TYPE: dict[type, st.SearchStrategy[Any]] = {
    int: st.integers(min_value=-(2**63), max_value=2**64 - 1),
    float: st.floats(allow_nan=False),
    str: st.text(max_size=20),
    list: st.lists(values, max_size=3),
    dict: st.dictionaries(st.text(max_size=8), values, max_size=3),
    bool: st.booleans(),
    type(None): st.none(),
}


@st.composite
def valid_frames(draw: st.DrawFn) -> dict[str, Any]:
    """A frame that satisfies FRAME_SCHEMAS: required fields, some optional ones, extras."""
    ftype = draw(st.sampled_from(list(FrameType)))
    frame: dict[str, Any] = {"t": ftype.value}
    for key, (types, required) in FRAME_SCHEMAS[ftype].items():
        if required or draw(st.booleans()):
            frame[key] = draw(st.one_of(*(_BY_TYPE[t] for t in types)))
    if draw(st.booleans()):  # unknown extra fields must be ignored (known ones keep their types)
        known = FRAME_SCHEMAS[ftype].keys() | {"t"}
        frame[draw(st.text(min_size=2, max_size=6).filter(lambda k: k not in known))] = draw(values)
    return frame


_FIELD_NAMES = sorted({k for schema in FRAME_SCHEMAS.values() for k in schema} | {"t"})
random_maps = st.dictionaries(
    st.sampled_from(_FIELD_NAMES) | st.text(max_size=4), values, max_size=6
).flatmap(
    lambda m: st.one_of(
        st.just(m), st.sampled_from([t.value for t in FrameType]).map(lambda t: {**m, "t": t})
    )
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


# -- drivers ------------------------------------------------------------------------------------


def feed_decoder(dec: FrameDecoder, chunks: list[bytes], eof: bool) -> list[dict[str, Any]]:
    """Feed chunks, draining after each; enforce the buffer bound. Raises only protocol errors."""
    out: list[dict[str, Any]] = []
    for chunk in [*chunks, b""] if eof else chunks:
        dec.receive_data(chunk)
        while True:
            frame = dec.next_frame()
            if frame is NEED_DATA or frame is EOF:
                break
            assert isinstance(frame, dict)
            out.append(frame)
        assert dec.buffered <= dec.max_frame_size + HEADER_SIZE
    return out


def feed_server(conn: ServerConnection, chunks: list[bytes], eof: bool) -> None:
    for chunk in [*chunks, b""] if eof else chunks:
        conn.receive_data(chunk)
        while conn.next_frame() is not None:
            assert conn.state in (ConnState.AWAIT_HELLO, ConnState.OPEN, ConnState.CLOSED)
        assert conn.decoder.buffered <= conn.max_frame_size + HEADER_SIZE


def only_remote_errors(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except RemoteProtocolError as exc:
        assert exc.code in {
            "bad_frame",
            "frame_too_large",
            "unknown_type",
            "handshake_required",
            "unsupported_version",
        }


# -- random bytes ----------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2048), st.lists(st.integers(min_value=0), max_size=20), st.booleans())
def test_random_bytes_decoder(data: bytes, cuts: list[int], eof: bool) -> None:
    only_remote_errors(feed_decoder, FrameDecoder(MAX), chunked(data, cuts), eof)


@FUZZ
@given(st.binary(max_size=2048), st.lists(st.integers(min_value=0), max_size=20), st.booleans())
def test_random_bytes_after_a_valid_prefix(data: bytes, cuts: list[int], eof: bool) -> None:
    """Random bytes behind a well-formed frame, so the garbage lands mid-stream."""
    prefix = encode_frame({"t": "ping"}) + b"\x00\x00"
    only_remote_errors(feed_decoder, FrameDecoder(MAX), chunked(prefix + data, cuts), eof)


@FUZZ
@given(st.binary(max_size=2048), st.lists(st.integers(min_value=0), max_size=20), st.booleans())
def test_random_bytes_server_connection(data: bytes, cuts: list[int], eof: bool) -> None:
    only_remote_errors(feed_server, ServerConnection(MAX), chunked(data, cuts), eof)


@FUZZ
@given(st.binary(max_size=2048), st.lists(st.integers(min_value=0), max_size=20), st.booleans())
def test_random_bytes_open_server_connection(data: bytes, cuts: list[int], eof: bool) -> None:
    conn = ServerConnection(MAX)
    conn.receive_data(encode_frame({"t": "hello", "v": 1, "token": "t"}))
    assert conn.next_frame() is not None
    conn.accept({"session": "s", "role": "worker"})
    only_remote_errors(feed_server, conn, chunked(data, cuts), eof)


# -- valid frames, intact and mutated -----------------------------------------------------------


@FUZZ_STRUCTURED
@given(st.lists(valid_frames(), min_size=1, max_size=5), st.lists(st.integers(min_value=0)))
def test_valid_frames_round_trip_in_any_split(
    frames: list[dict[str, Any]], cuts: list[int]
) -> None:
    for frame in frames:
        assert check_frame(frame) in FrameType
    data = b"".join(encode_frame(f, 1 << 16) for f in frames)
    assert feed_decoder(FrameDecoder(1 << 16), chunked(data, cuts), eof=True) == frames


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    frames = draw(st.lists(valid_frames(), min_size=1, max_size=3))
    data = bytearray(b"".join(encode_frame(f, 1 << 16) for f in frames))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "set"]))
        pos = draw(st.integers(min_value=0, max_value=max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xC1, 0xDD, 0xDF, 0xFF]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif data:
            del data[pos : pos + draw(st.integers(min_value=1, max_value=4))]
    return bytes(data)


@FUZZ_STRUCTURED
@given(mutated(), st.lists(st.integers(min_value=0), max_size=10), st.booleans())
def test_mutated_frames_decoder(data: bytes, cuts: list[int], eof: bool) -> None:
    only_remote_errors(feed_decoder, FrameDecoder(MAX), chunked(data, cuts), eof)


@FUZZ_STRUCTURED
@given(mutated(), st.lists(st.integers(min_value=0), max_size=10), st.booleans())
def test_mutated_frames_server_connection(data: bytes, cuts: list[int], eof: bool) -> None:
    hello = encode_frame({"t": "hello", "v": 1, "token": "t"})
    only_remote_errors(feed_server, ServerConnection(MAX), chunked(hello + data, cuts), eof)


# -- check_frame on arbitrary maps -----------------------------------------------------------


@FUZZ_STRUCTURED
@given(random_maps)
def test_check_frame_on_random_maps(frame: dict[str, Any]) -> None:
    try:
        ftype = check_frame(frame)
    except RemoteProtocolError as exc:
        assert exc.code in {"bad_frame", "unknown_type"}
        return
    assert ftype.value == frame["t"]
    for key, (types, required) in FRAME_SCHEMAS[ftype].items():
        if key in frame:
            assert isinstance(frame[key], types)
            assert not isinstance(frame[key], bool) or bool in types
        else:
            assert not required


@FUZZ_STRUCTURED
@given(values)
def test_check_frame_on_random_values(value: Any) -> None:
    with contextlib.suppress(RemoteProtocolError):
        check_frame(value)


@FUZZ_STRUCTURED
@given(random_maps)
def test_random_maps_through_the_decoder(frame: dict[str, Any]) -> None:
    body = msgpack.packb(frame, use_bin_type=True)
    data = len(body).to_bytes(4, "big") + body
    only_remote_errors(feed_decoder, FrameDecoder(1 << 16), [data], True)
