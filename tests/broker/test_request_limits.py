"""Requests at the edges of their limits get clear answers, never an internal error."""

from __future__ import annotations

import asyncio

import pytest

from conveyor import AsyncClient, InvalidJob
from conveyor.broker.app import Broker
from conveyor.errors import BrokerError
from conveyor.limits import MAX_WAITS


async def test_wait_timeout_must_be_a_sane_number(client: AsyncClient) -> None:
    handle = await client.submit("noop")
    for bad in (float("nan"), -1, 10**9):
        with pytest.raises(InvalidJob) as info:
            await client._request({"t": "wait", "id": handle.id, "timeout": bad})
        assert info.value.field == "timeout"


async def test_a_page_of_big_jobs_is_truncated_to_fit_a_frame(client: AsyncClient) -> None:
    blob = "x" * 200_000  # five of these exceed the 1 MiB frame limit
    await client.submit_many([("noop", {"blob": blob}) for _ in range(8)])
    reply = await client._request({"t": "list", "limit": 8})
    assert reply["truncated"] is True
    assert 1 <= len(reply["jobs"]) < 8
    rest = await client._request({"t": "list", "limit": 8, "offset": len(reply["jobs"])})
    assert len(reply["jobs"]) + len(rest["jobs"]) <= 8


async def test_outstanding_waits_per_connection_are_capped(
    client: AsyncClient, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("conveyor.broker.routes.producer.MAX_WAITS", 3)
    handle = await client.submit("noop")
    conn = client._transport._conn
    assert conn is not None
    waits = [
        asyncio.ensure_future(conn.request({"t": "wait", "id": handle.id, "timeout": 0.5}))
        for _ in range(3)
    ]
    await asyncio.sleep(0)  # one loop turn: the three tasks send their frames first
    with pytest.raises(BrokerError, match="rate_limited"):  # sent right behind the three
        await client._request({"t": "wait", "id": handle.id, "timeout": 30})
    for reply in await asyncio.gather(*waits):  # the three still get their answers
        assert reply["job"]["state"] == "queued"
    assert MAX_WAITS == 10_000
