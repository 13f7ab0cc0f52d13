"""The handshake state machine, driven from both ends without sockets."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.errors import LocalProtocolError, RemoteProtocolError
from conveyor.protocol.codec import encode_frame
from conveyor.protocol.connection import (
    ClientConnection,
    ConnState,
    ServerConnection,
    _Connection,
)
from conveyor.protocol.frames import FATAL_CODES, PROTOCOL_VERSION, ErrorCode

WELCOME = {"session": "s-1", "role": "producer", "server": "conveyor/test", "heartbeat": 5}


def drain(conn: _Connection) -> list[dict[str, Any]]:
    """Every frame ``conn`` can produce from what it has buffered."""
    out: list[dict[str, Any]] = []
    while (frame := conn.next_frame()) is not None:
        out.append(frame)
    return out


class Pair:
    """A client and a server wired back to back (after h11's tests/helpers.py)."""

    def __init__(self, max_frame_size: int = 1024 * 1024) -> None:
        self.client = ClientConnection(max_frame_size)
        self.server = ServerConnection(max_frame_size)

    def to_server(self, data: bytes) -> list[dict[str, Any]]:
        self.server.receive_data(data)
        return drain(self.server)

    def to_client(self, data: bytes) -> list[dict[str, Any]]:
        self.client.receive_data(data)
        return drain(self.client)

    def client_sends(self, frame: dict[str, Any]) -> list[dict[str, Any]]:
        return self.to_server(self.client.send(frame))

    def server_sends(self, frame: dict[str, Any]) -> list[dict[str, Any]]:
        return self.to_client(self.server.send(frame))

    def handshake(self, token: str | None = "tok", **welcome: Any) -> dict[str, Any]:
        (hello,) = self.to_server(self.client.hello(token, name="test", agent="pytest"))
        (reply,) = self.to_client(self.server.accept({**WELCOME, **welcome}))
        assert self.client.state is self.server.state is ConnState.OPEN
        return hello | {"welcome": reply}


@pytest.fixture
def pair() -> Pair:
    return Pair()


# -- the happy path -----------------------------------------------------------------------


def test_handshake_opens_both_sides(pair: Pair) -> None:
    assert pair.server.state is ConnState.AWAIT_HELLO
    assert pair.client.state is ConnState.AWAIT_WELCOME
    got = pair.handshake()
    assert got["t"] == "hello"
    assert got["v"] == PROTOCOL_VERSION
    assert got["token"] == "tok"
    assert got["name"] == "test"
    assert got["agent"] == "pytest"
    assert got["welcome"] == {"t": "welcome", "v": PROTOCOL_VERSION, **WELCOME}


def test_hello_without_name_or_agent_omits_them(pair: Pair) -> None:
    (hello,) = pair.to_server(pair.client.hello(None))
    assert hello == {"t": "hello", "v": PROTOCOL_VERSION, "token": None}


def test_requests_and_replies_flow_after_handshake(pair: Pair) -> None:
    pair.handshake()
    got = pair.client_sends({"t": "get", "rid": 1, "id": "j"})
    assert got == [{"t": "get", "rid": 1, "id": "j"}]
    got = pair.server_sends({"t": "job", "rid": 1, "job": {"id": "j"}})
    assert got == [{"t": "job", "rid": 1, "job": {"id": "j"}}]


def test_pipelined_requests_arrive_in_order(pair: Pair) -> None:
    pair.handshake()
    data = b"".join(pair.client.send({"t": "get", "rid": i, "id": "j"}) for i in range(50))
    assert [f["rid"] for f in pair.to_server(data)] == list(range(50))


def test_handshake_split_byte_by_byte(pair: Pair) -> None:
    data = pair.client.hello("tok")
    got: list[dict[str, Any]] = []
    for i in range(len(data)):
        got += pair.to_server(data[i : i + 1])
    assert [f["t"] for f in got] == ["hello"]
    assert pair.server.state is ConnState.AWAIT_HELLO  # open only once accepted
    pair.to_client(pair.server.accept(WELCOME))
    assert pair.server.state.value == "open"


def test_hello_and_first_request_in_one_chunk(pair: Pair) -> None:
    """A client may pipeline requests behind HELLO; the broker accepts before reading on."""
    pair.server.receive_data(pair.client.hello("tok") + pair.client.send({"t": "stats", "rid": 1}))
    assert pair.server.next_frame() == {"t": "hello", "v": 1, "token": "tok"}
    pair.server.accept(WELCOME)
    assert pair.server.next_frame() == {"t": "stats", "rid": 1}


# -- server-side handshake errors ---------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        {"t": "submit", "rid": 1, "jobs": []},
        {"t": "ping"},
        {"t": "welcome", "v": 1, "session": "s", "role": "r"},
    ],
)
def test_server_needs_hello_first(pair: Pair, frame: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        pair.to_server(encode_frame(frame))
    assert info.value.code == "handshake_required"


@pytest.mark.parametrize("version", [0, 2, 99, -1, 2**63])
def test_unsupported_version(pair: Pair, version: int) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        pair.to_server(encode_frame({"t": "hello", "v": version, "token": "x"}))
    assert info.value.code == "unsupported_version"
    # the broker answers with the fatal ERROR, which closes the connection
    reply = pair.server.error(info.value.code, str(info.value))
    assert pair.server.state is ConnState.CLOSED
    (err,) = pair.to_client(reply)
    assert err["code"] == "unsupported_version"
    assert pair.client.state is ConnState.CLOSED


def test_malformed_hello_is_bad_frame(pair: Pair) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        pair.to_server(encode_frame({"t": "hello", "v": "1"}))
    assert info.value.code == "bad_frame"


def test_hello_twice(pair: Pair) -> None:
    pair.handshake()
    with pytest.raises(RemoteProtocolError) as info:
        pair.to_server(pair.client.hello("tok"))
    assert info.value.code == "bad_frame"


def test_server_rejects_token(pair: Pair) -> None:
    pair.to_server(pair.client.hello("wrong"))
    (err,) = pair.to_client(pair.server.error(ErrorCode.UNAUTHORIZED, "unknown token"))
    assert err == {"t": "error", "code": "unauthorized", "message": "unknown token"}
    assert pair.server.state is ConnState.CLOSED
    assert pair.client.state is ConnState.CLOSED


def test_server_cannot_accept_after_closing(pair: Pair) -> None:
    pair.to_server(pair.client.hello("wrong"))
    pair.server.error(ErrorCode.UNAUTHORIZED, "no")
    with pytest.raises(RuntimeError):
        pair.server.accept(WELCOME)


def test_eof_before_hello_closes(pair: Pair) -> None:
    assert pair.to_server(b"") == []
    assert pair.server.state is ConnState.CLOSED


# -- client-side --------------------------------------------------------------------------


def test_client_expects_welcome(pair: Pair) -> None:
    pair.client.hello("tok")
    with pytest.raises(RemoteProtocolError) as info:
        pair.to_client(encode_frame({"t": "ok", "rid": 1}))
    assert info.value.code == "bad_frame"
    assert pair.client.state is ConnState.AWAIT_WELCOME


def test_client_gets_error_before_welcome(pair: Pair) -> None:
    """e.g. too_many_connections, sent before the broker even reads HELLO."""
    pair.client.hello("tok")
    (err,) = pair.to_client(pair.server.error(ErrorCode.TOO_MANY_CONNECTIONS, "full"))
    assert err["code"] == "too_many_connections"
    assert pair.client.state is ConnState.CLOSED


# -- errors and closing --------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(FATAL_CODES))
def test_fatal_error_closes_both_sides(pair: Pair, code: ErrorCode) -> None:
    pair.handshake()
    (err,) = pair.to_client(pair.server.error(code, "bye", rid=3))
    assert err == {"t": "error", "code": code.value, "message": "bye", "rid": 3}
    assert pair.server.state is ConnState.CLOSED
    assert pair.client.state is ConnState.CLOSED


@pytest.mark.parametrize("code", sorted(set(ErrorCode) - FATAL_CODES))
def test_non_fatal_error_keeps_connection_open(pair: Pair, code: ErrorCode) -> None:
    pair.handshake()
    (err,) = pair.to_client(pair.server.error(code, "nope", rid=4, field="priority"))
    assert err == {
        "t": "error",
        "code": code.value,
        "message": "nope",
        "rid": 4,
        "field": "priority",
    }
    assert pair.server.state is ConnState.OPEN
    assert pair.client.state is ConnState.OPEN
    assert pair.client_sends({"t": "stats", "rid": 5}) == [{"t": "stats", "rid": 5}]


def test_fatal_codes_are_error_codes() -> None:
    assert set(ErrorCode) >= FATAL_CODES
    assert ErrorCode.INVALID not in FATAL_CODES


def test_server_rejects_frames_after_close(pair: Pair) -> None:
    pair.handshake()
    pair.server.error(ErrorCode.IDLE_TIMEOUT, "idle")
    with pytest.raises(RemoteProtocolError):
        pair.to_server(pair.client.send({"t": "stats", "rid": 1}))


def test_goodbye_from_client_closes_server(pair: Pair) -> None:
    pair.handshake()
    (bye,) = pair.client_sends({"t": "goodbye", "reason": "done"})
    assert bye == {"t": "goodbye", "reason": "done"}
    assert pair.client.state is ConnState.CLOSED
    assert pair.server.state is ConnState.CLOSED


def test_goodbye_from_server_closes_client(pair: Pair) -> None:
    pair.handshake()
    pair.server_sends({"t": "goodbye", "reason": "shutting down"})
    assert pair.server.state is ConnState.CLOSED
    assert pair.client.state is ConnState.CLOSED


def test_eof_after_open_closes(pair: Pair) -> None:
    pair.handshake()
    assert pair.to_client(b"") == []
    assert pair.client.state is ConnState.CLOSED
    assert pair.to_server(b"") == []
    assert pair.server.state is ConnState.CLOSED


def test_truncated_frame_then_eof_is_remote_error(pair: Pair) -> None:
    pair.handshake()
    data = pair.client.send({"t": "stats", "rid": 1})
    with pytest.raises(RemoteProtocolError):
        pair.to_server(data[:-1] + b"")
        pair.to_server(b"")


def test_send_respects_max_frame_size() -> None:
    small = Pair(max_frame_size=128)
    small.handshake()
    with pytest.raises(LocalProtocolError) as info:
        small.client.send({"t": "get", "rid": 1, "id": "x" * 200})
    assert info.value.code == "frame_too_large"
    assert small.client.state is ConnState.OPEN


def test_receive_respects_max_frame_size() -> None:
    small = Pair(max_frame_size=128)
    small.handshake()
    with pytest.raises(RemoteProtocolError) as info:
        small.to_server(encode_frame({"t": "get", "rid": 1, "id": "x" * 200}))
    assert info.value.code == "frame_too_large"


def test_client_adopts_the_brokers_frame_limit() -> None:
    from conveyor.protocol.codec import encode_frame
    from conveyor.protocol.connection import ClientConnection

    client = ClientConnection()
    client.hello("t")
    welcome = {"t": "welcome", "v": 1, "session": "s", "role": "admin", "max_frame_size": 4 << 20}
    client.receive_data(encode_frame(welcome))
    assert client.next_frame() is not None
    assert client.decoder.max_frame_size == 4 << 20
    big = {"t": "ping", "rid": 1, "pad": "x" * (2 << 20)}
    assert len(client.send(big)) > 2 << 20  # would have been refused at the 1 MiB default


def test_frames_before_hello_are_limited_to_the_handshake_size() -> None:
    from conveyor.errors import RemoteProtocolError
    from conveyor.protocol.codec import encode_frame
    from conveyor.protocol.connection import HANDSHAKE_MAX_FRAME_SIZE, ServerConnection

    server = ServerConnection()
    header = (HANDSHAKE_MAX_FRAME_SIZE + 1).to_bytes(4, "big")
    server.receive_data(header)
    with pytest.raises(RemoteProtocolError) as info:
        server.next_frame()
    assert info.value.code == "frame_too_large"
    # after the handshake the full limit applies
    server = ServerConnection()
    server.receive_data(encode_frame({"t": "hello", "v": 1, "token": "t"}))
    assert server.next_frame() is not None
    server.accept({"session": "s", "role": "admin"})
    big = encode_frame({"t": "ping", "rid": 1, "pad": "x" * 100_000})
    server.receive_data(big)
    assert server.next_frame() is not None
