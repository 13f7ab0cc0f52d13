"""What a client sends again after a lost connection, and what it never does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conveyor import AsyncClient, Client
from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig, Limits
from conveyor.errors import BrokerError, ConnectionLost


@pytest.fixture
def broker_config(home: Path) -> BrokerConfig:
    limits = Limits(max_frame_size=64 * 1024, max_payload=32 * 1024)
    return BrokerConfig(port=0, store_url="memory://", home=home, limits=limits)


async def test_a_frame_the_broker_refuses_fatally_is_never_sent_again(
    broker: Broker, client: AsyncClient, home: Path
) -> None:
    """If our own frame is refused (here: bigger than the broker's frame limit, which a
    client that ignored WELCOME could send), the request fails at once with the broker's
    error: no reconnect, no resend, no flood of refusals."""
    await client.submit("noop")  # connected
    conn = client._transport._conn
    assert conn is not None
    conn.session.conn.max_frame_size = 1 << 20  # pretend we never read the broker's limit
    before = broker.metrics["connections_total"]
    blob = "x" * 100_000
    with pytest.raises(BrokerError) as info:
        await asyncio.wait_for(
            client._request({"t": "submit", "jobs": [{"task": "t", "args": [blob]}]}), 5
        )
    assert info.value.code == "frame_too_large"
    assert broker.metrics["connections_total"] == before  # it did not come back to resend
    assert (await client.stats())["totals"]["submitted"] == 1  # and a new request still works


async def test_the_sync_client_reconnects_and_resends_a_read(broker: Broker, home: Path) -> None:
    def scenario() -> None:
        with Client(broker.url, home=home) as c:
            job = c.submit("noop")
            conn = c._transport._conn
            assert conn is not None
            conn.sock.close()  # the connection is gone under the client
            assert c.get(job.id).id == job.id  # a read is safe to send again: it is

    await asyncio.to_thread(scenario)


async def test_a_broker_that_drops_every_request_is_given_up_on_not_spun_on(home: Path) -> None:
    """Reconnects that succeed but whose requests are always cut off use the same backoff
    and budget as failed connects (a bug once made this a busy loop)."""
    from conveyor.protocol.codec import FrameDecoder, encode_frame
    from conveyor.security.tls import server_context

    accepted = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        decoder = FrameDecoder()
        frames = 0
        while data := await reader.read(65536):
            decoder.receive_data(data)
            for _ in decoder.frames():
                frames += 1
                if frames == 1:  # the HELLO: welcome it
                    welcome = {"t": "welcome", "v": 1, "session": "s", "role": "admin"}
                    writer.write(encode_frame(welcome))
                else:  # any request: hang up
                    writer.close()
                    return

    ctx = server_context(home / "server.pem", home / "server.key", None)
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        client = AsyncClient(f"conveyor://127.0.0.1:{port}", home=home, reconnect_timeout=1.0)
        started = asyncio.get_running_loop().time()
        with pytest.raises(ConnectionLost, match="keeps dropping"):
            await asyncio.wait_for(client.get("x"), 10)
        assert asyncio.get_running_loop().time() - started < 5
        assert accepted < 25  # paced, not hundreds of reconnects a second
        await client.close()
    finally:
        server.close()
