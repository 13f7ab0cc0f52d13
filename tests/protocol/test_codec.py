"""The sans-IO codec: every frame type round-trips; malformed input is the peer's error."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest

from conveyor.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from conveyor.limits import MAX_FRAME_SIZE as DEFAULT_MAX_FRAME_SIZE
from conveyor.protocol.codec import EOF, HEADER_SIZE, NEED_DATA, FrameDecoder, encode_frame
from conveyor.protocol.frames import (
    FRAME_SCHEMAS,
    FrameType,
    check_frame,
)

_JOB = {
    "id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    "task": "email.send",
    "state": "queued",
    "args": [1, "two"],
    "kwargs": {"k": None},
}

# One minimal valid frame per type. A new FrameType without an entry here fails
# test_every_frame_type_has_an_example.
EXAMPLES: dict[FrameType, dict[str, Any]] = {
    FrameType.HELLO: {"t": "hello", "v": 1, "token": "s3cret"},
    FrameType.WELCOME: {"t": "welcome", "v": 1, "session": "abc", "role": "producer"},
    FrameType.ERROR: {"t": "error", "code": "not_found", "message": "no job x", "rid": 7},
    FrameType.PING: {"t": "ping"},
    FrameType.PONG: {"t": "pong", "rid": 3},
    FrameType.GOODBYE: {"t": "goodbye", "reason": "shutting down"},
    FrameType.SUBMIT: {"t": "submit", "rid": 1, "jobs": [{"task": "add", "args": [1, 2]}]},
    FrameType.SUBMITTED: {
        "t": "submitted",
        "rid": 1,
        "jobs": [{"id": _JOB["id"], "state": "queued", "created": True}],
    },
    FrameType.GET: {"t": "get", "rid": 2, "id": _JOB["id"]},
    FrameType.GET_MANY: {"t": "get_many", "rid": 2, "ids": [_JOB["id"]]},
    FrameType.WAIT: {"t": "wait", "rid": 3, "id": _JOB["id"], "timeout": 2.5},
    FrameType.JOB: {"t": "job", "rid": 2, "job": _JOB},
    FrameType.LIST: {"t": "list", "rid": 4},
    FrameType.JOBS: {"t": "jobs", "rid": 4, "jobs": [_JOB]},
    FrameType.STATS: {"t": "stats", "rid": 5},
    FrameType.STATS_REPLY: {"t": "stats_reply", "rid": 5, "stats": {"states": {"queued": 1}}},
    FrameType.CANCEL: {"t": "cancel", "rid": 6, "id": _JOB["id"]},
    FrameType.DLQ_RETRY: {"t": "dlq_retry", "rid": 7, "all": True},
    FrameType.DLQ_PURGE: {"t": "dlq_purge", "rid": 8, "ids": ["a", "b"]},
    FrameType.TOKEN_CREATE: {"t": "token_create", "rid": 9, "role": "worker"},
    FrameType.TOKEN_LIST: {"t": "token_list", "rid": 10},
    FrameType.TOKEN_REVOKE: {"t": "token_revoke", "rid": 11, "name": "ci"},
    FrameType.QUEUE_PAUSE: {"t": "queue_pause", "rid": 15, "queue": "emails"},
    FrameType.QUEUE_RESUME: {"t": "queue_resume", "rid": 16, "queue": "emails"},
    FrameType.LIMITS: {"t": "limits", "rid": 17, "set": {"task:add": "5/s"}, "clear": []},
    FrameType.SCHEDULE: {
        "t": "schedule",
        "rid": 18,
        "op": "add",
        "schedule": {"name": "nightly", "task": "add", "cron": "0 3 * * *"},
    },
    FrameType.OK: {"t": "ok", "rid": 12},
    FrameType.READY: {
        "t": "ready",
        "rid": 13,
        "tasks": ["add"],
        "queues": ["default"],
        "concurrency": 4,
    },
    FrameType.DISPATCH: {
        "t": "dispatch",
        "jobs": [{"id": "j1", "task": "add", "args": [], "kwargs": {}, "lease": 9, "attempt": 1}],
    },
    FrameType.REPORT: {"t": "report", "results": [{"id": "j1", "lease": 9, "ok": True}]},
    FrameType.ACKED: {"t": "acked", "ids": ["j1"]},
    FrameType.HEARTBEAT: {"t": "heartbeat"},
    FrameType.PROGRESS: {"t": "progress", "jobs": [{"id": "j", "lease": 1, "value": 0.5}]},
    FrameType.RELEASE: {"t": "release", "jobs": [{"id": "j1", "lease": 9}]},
    FrameType.DRAIN: {"t": "drain"},
    FrameType.ABORT: {"t": "abort", "id": "j1", "lease": 9},
}


def decode_all(data: bytes, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> list[dict[str, Any]]:
    dec = FrameDecoder(max_frame_size)
    dec.receive_data(data)
    return dec.frames()


def raw(body: bytes) -> bytes:
    """A frame around an arbitrary body (bypasses encode_frame's checks)."""
    return struct.pack(">I", len(body)) + body


def packed(obj: Any) -> bytes:
    return raw(msgpack.packb(obj, use_bin_type=True))


def remote_error(data: bytes, eof: bool = False) -> RemoteProtocolError:
    dec = FrameDecoder()
    dec.receive_data(data)
    if eof:
        dec.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as info:
        while dec.next_frame() is not NEED_DATA:
            pass
    return info.value


# -- round trips -------------------------------------------------------------------------


def test_every_frame_type_has_an_example() -> None:
    assert set(EXAMPLES) == set(FrameType)
    assert set(FRAME_SCHEMAS) == set(FrameType)


@pytest.mark.parametrize("ftype", list(FrameType), ids=lambda t: t.value)
def test_round_trip(ftype: FrameType) -> None:
    frame = EXAMPLES[ftype]
    assert check_frame(frame) is ftype
    data = encode_frame(frame)
    assert struct.unpack(">I", data[:HEADER_SIZE])[0] == len(data) - HEADER_SIZE
    assert decode_all(data) == [frame]


@pytest.mark.parametrize("ftype", list(FrameType), ids=lambda t: t.value)
def test_required_fields_are_required(ftype: FrameType) -> None:
    for key, (_types, required) in FRAME_SCHEMAS[ftype].items():
        if not required:
            continue
        frame = {k: v for k, v in EXAMPLES[ftype].items() if k != key}
        with pytest.raises(RemoteProtocolError) as info:
            check_frame(frame)
        assert info.value.code == "bad_frame"
        assert repr(key) in str(info.value)


def test_unknown_extra_fields_are_ignored() -> None:
    frame = {**EXAMPLES[FrameType.GET], "future_field": [1, 2, 3]}
    assert decode_all(encode_frame(frame)) == [frame]


def test_binary_values_stay_bytes_and_strings_stay_str() -> None:
    frame = {"t": "ok", "rid": 1, "blob": b"\x00\xff", "text": "é"}
    data = encode_frame(frame)
    assert b"\xc4\x02\x00\xff" in data  # bin 8
    assert decode_all(data) == [frame]


def test_split_delivery_byte_by_byte() -> None:
    frames = [EXAMPLES[t] for t in FrameType]
    data = b"".join(encode_frame(f) for f in frames)
    dec = FrameDecoder()
    out: list[dict[str, Any]] = []
    for i in range(len(data)):
        dec.receive_data(data[i : i + 1])
        out.extend(dec.frames())
        assert dec.buffered <= DEFAULT_MAX_FRAME_SIZE + HEADER_SIZE
    dec.receive_data(b"")
    assert dec.next_frame() is EOF
    assert out == frames


def test_many_frames_in_one_chunk() -> None:
    frames = [{"t": "ok", "rid": i} for i in range(5000)]
    dec = FrameDecoder()
    dec.receive_data(b"".join(encode_frame(f) for f in frames))
    assert dec.frames() == frames
    assert dec.buffered == 0
    assert dec.next_frame() is NEED_DATA


def test_frame_then_partial_frame_in_one_chunk() -> None:
    first, second = encode_frame({"t": "ping"}), encode_frame({"t": "pong", "rid": 1})
    dec = FrameDecoder()
    dec.receive_data(first + second[:3])
    assert dec.next_frame() == {"t": "ping"}
    assert dec.next_frame() is NEED_DATA
    dec.receive_data(second[3:])
    assert dec.next_frame() == {"t": "pong", "rid": 1}


def test_long_stream_compacts_its_buffer() -> None:
    frame = encode_frame({"t": "ok", "rid": 1, "pad": "x" * 1000})
    dec = FrameDecoder()
    for _ in range(500):
        dec.receive_data(frame + frame[:500])
        dec.frames()
        dec.receive_data(frame[500:])
        dec.frames()
        assert dec.buffered == 0


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    frame = {"t": "ok", "rid": 1, "pad": ""}
    overhead = len(encode_frame(frame)) - HEADER_SIZE
    frame["pad"] = "x" * (200 - overhead - 1)  # str8 header grows by 1 byte past 31 chars
    data = encode_frame(frame, max_frame_size=200)
    assert len(data) - HEADER_SIZE == 200
    assert decode_all(data, max_frame_size=200) == [frame]
    with pytest.raises(RemoteProtocolError):
        decode_all(data, max_frame_size=199)


# -- size limits ---------------------------------------------------------------------------


def test_oversize_length_rejected_from_the_header_alone() -> None:
    dec = FrameDecoder()
    dec.receive_data(struct.pack(">I", 0xFFFFFFFF))  # 4 GiB announced, no body sent
    with pytest.raises(RemoteProtocolError) as info:
        dec.next_frame()
    assert info.value.code == "frame_too_large"
    assert dec.buffered == HEADER_SIZE


def test_length_one_above_limit_rejected() -> None:
    dec = FrameDecoder(max_frame_size=100)
    dec.receive_data(struct.pack(">I", 101))
    with pytest.raises(RemoteProtocolError) as info:
        dec.next_frame()
    assert info.value.code == "frame_too_large"


def test_zero_length_frame_is_rejected() -> None:
    err = remote_error(struct.pack(">I", 0))
    assert err.code == "bad_frame"


# -- EOF ------------------------------------------------------------------------------------


def test_clean_eof() -> None:
    dec = FrameDecoder()
    dec.receive_data(encode_frame({"t": "ping"}))
    dec.receive_data(b"")
    assert dec.next_frame() == {"t": "ping"}
    assert dec.next_frame() is EOF
    assert dec.next_frame() is EOF


def test_eof_with_nothing_received() -> None:
    dec = FrameDecoder()
    assert dec.next_frame() is NEED_DATA
    dec.receive_data(b"")
    assert dec.next_frame() is EOF


@pytest.mark.parametrize("cut", [1, 3, 4, 5, -1])
def test_truncated_frame_then_eof(cut: int) -> None:
    data = encode_frame(EXAMPLES[FrameType.SUBMIT])
    err = remote_error(data[:cut], eof=True)
    assert isinstance(err, ProtocolError)
    assert "closed inside a frame" in str(err)


def test_data_after_eof_is_an_error() -> None:
    dec = FrameDecoder()
    dec.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        dec.receive_data(b"x")


# -- malformed bodies -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        msgpack.packb([1, 2, 3]),
        msgpack.packb("hello"),
        msgpack.packb(None),
        msgpack.packb(42),
    ],
    ids=["list", "str", "nil", "int"],
)
def test_body_must_be_a_map(body: bytes) -> None:
    err = remote_error(raw(body))
    assert err.code == "bad_frame"
    assert "map" in str(err)


@pytest.mark.parametrize(
    "body",
    [b"\xc1", b"\x81\xa1t", b"\x82\xa1t\xa4ping", b"\xdd\xff\xff\xff\xff", b"\x80\x80"],
    ids=["reserved-byte", "truncated-map", "short-map", "huge-array-header", "extra-data"],
)
def test_undecodable_body(body: bytes) -> None:
    err = remote_error(raw(body))
    assert err.code == "bad_frame"


def test_non_string_keys_rejected() -> None:
    err = remote_error(packed({1: "x", "t": "ping"}))
    assert err.code == "bad_frame"


@pytest.mark.parametrize(
    "frame",
    [{}, {"rid": 1}, {"t": None}, {"t": 1}, {"t": b"ping"}],
    ids=["empty", "no-t", "nil-t", "int-t", "bin-t"],
)
def test_missing_or_bad_type_field(frame: dict[str, Any]) -> None:
    err = remote_error(packed(frame))
    assert err.code == "bad_frame"


@pytest.mark.parametrize("name", ["nope", "HELLO", "", "x" * 1000])
def test_unknown_type(name: str) -> None:
    err = remote_error(packed({"t": name}))
    assert err.code == "unknown_type"
    assert len(str(err)) < 100  # the peer's junk is not echoed in full


@pytest.mark.parametrize(
    "frame",
    [
        {"t": "hello", "v": True},
        {"t": "hello", "v": 1.0},
        {"t": "hello", "v": "1"},
        {"t": "hello", "v": 1, "token": 5},
        {"t": "get", "rid": True, "id": "x"},
        {"t": "get", "rid": 1.5, "id": "x"},
        {"t": "get", "rid": 1, "id": b"x"},
        {"t": "get", "rid": 1, "id": 5},
        {"t": "wait", "rid": 1, "id": "x", "timeout": "5"},
        {"t": "wait", "rid": 1, "id": "x", "timeout": False},
        {"t": "welcome", "v": 1, "session": "s", "role": "admin", "heartbeat": True},
        {"t": "submit", "rid": 1, "jobs": {"task": "x"}},
        {"t": "job", "rid": 1, "job": []},
        {"t": "dlq_retry", "rid": 1, "all": 1},
        {"t": "ready", "rid": 1, "tasks": [], "queues": [], "concurrency": False},
        {"t": "error", "code": 5, "message": "m"},
        {"t": "abort", "id": "x", "lease": "9"},
    ],
)
def test_wrong_field_types(frame: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        check_frame(frame)
    assert info.value.code == "bad_frame"
    err = remote_error(packed(frame))
    assert err.code == "bad_frame"


def test_optional_fields_accept_nil_only_where_declared() -> None:
    check_frame({"t": "hello", "v": 1, "token": None})
    check_frame({"t": "wait", "rid": 1, "id": "x", "timeout": None})
    check_frame({"t": "error", "rid": None, "code": "x", "message": "m", "field": None})
    with pytest.raises(RemoteProtocolError):
        check_frame({"t": "list", "rid": 1, "limit": None})


# -- encoding -----------------------------------------------------------------------------


def test_encode_refuses_oversize() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_frame({"t": "ok", "rid": 1, "pad": "x" * 200}, max_frame_size=100)
    assert info.value.code == "frame_too_large"
    with pytest.raises(LocalProtocolError):
        encode_frame({"t": "ok", "rid": 1, "pad": b"\0" * DEFAULT_MAX_FRAME_SIZE})


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, ValueError("x")],
    ids=["object", "set", "exception"],
)
def test_encode_refuses_unserialisable(value: Any) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_frame({"t": "ok", "rid": 1, "value": value})
    assert info.value.code == "bad_frame"


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**100, -(10**100)])
def test_integers_beyond_64_bits_travel_as_extension_type_1(value: int) -> None:
    data = encode_frame({"t": "ok", "rid": 1, "value": value})
    assert msgpack.ExtType(1, str(value).encode()) in msgpack.unpackb(data[4:]).values()
    (frame,) = decode_all(data)
    assert frame["value"] == value


def test_other_extension_types_are_undecodable() -> None:
    body = msgpack.packb({"t": "ok", "rid": 1, "value": msgpack.ExtType(5, b"x")})
    with pytest.raises(RemoteProtocolError, match="undecodable"):
        decode_all(len(body).to_bytes(4, "big") + body)


def test_encode_refuses_too_deep() -> None:
    nested: Any = []
    for _ in range(2000):
        nested = [nested]
    with pytest.raises(LocalProtocolError):
        encode_frame({"t": "ok", "rid": 1, "value": nested})


def test_local_and_remote_errors_are_distinct() -> None:
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert not issubclass(RemoteProtocolError, LocalProtocolError)
