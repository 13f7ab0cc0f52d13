"""What a client sends again after a lost connection, and what it never does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conveyor import AsyncClient, Client
from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig, Limits
from conveyor.errors import BrokerError


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
