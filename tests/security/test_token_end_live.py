"""Tokens end on open connections: revoked, removed or expired, on a running broker.

Before the token watch, a token that was revoked (or expired) kept working on every
connection opened before; a worker with an expired token kept receiving jobs. Now the
broker closes such connections within a second or two with ERROR ``unauthorized`` naming
why, a worker's jobs go back to their queues, and the client library remembers the refusal
instead of reconnecting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.client.aio import AsyncClient
from conveyor.client.sync import Client
from conveyor.errors import AuthenticationError
from conveyor.job import JobState
from conveyor.security.tokens import Role, TokenRegistry
from conveyor.worker.runner import Worker
from tests.broker.conftest_helpers import Gate, gated_registry
from tests.clocks import Later
from tests.security.rawconn import Raw, admin_token


def registry(home: Path) -> TokenRegistry:
    """The tokens file as `conveyor token` in another process sees it."""
    return TokenRegistry(home / "tokens.json")


def make(home: Path, role: Role, name: str, **kwargs: Any) -> str:
    token, _ = registry(home).create(role, name, now=time.time(), **kwargs)
    return token


async def ended_with(raw: Raw, reason: str) -> None:
    """The broker closes ``raw`` with ERROR unauthorized naming ``reason``, within 3 s."""
    frame = await raw.recv(timeout=3)
    assert frame is not None, "closed without an ERROR"
    assert (frame["t"], frame["code"], frame["message"]) == ("error", "unauthorized", reason)
    assert await raw.recv(timeout=3) is None, "the broker kept the connection open"


@pytest.mark.parametrize("how", ["revoke", "remove"])
async def test_a_token_revoked_in_the_file_ends_its_open_connections(
    broker: Broker, home: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "conveyor.broker")
    token = make(home, Role.PRODUCER, "leaky")
    first = await Raw.open(broker.port, home, token=token)
    second = await Raw.open(broker.port, home, token=token)
    other = await Raw.open(broker.port, home, token=make(home, Role.PRODUCER, "fine"))
    await first.ping()
    started = time.monotonic()
    if how == "revoke":
        assert registry(home).revoke("leaky")  # as `conveyor token revoke leaky` does
    else:
        assert registry(home).remove("leaky")
    reason = "token revoked" if how == "revoke" else "token removed"
    await ended_with(first, reason)
    await ended_with(second, reason)
    assert time.monotonic() - started < 2.0
    await other.ping()  # other tokens are untouched
    for raw in (first, second, other):
        await raw.close()
    assert broker.metrics["token_ended_connections"] == 2
    # one line for the token, not one per connection
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("token leaky")]
    assert lines == [f"token leaky: {reason}; closed 2 connection(s)"], lines


async def test_token_revoke_over_the_protocol_ends_connections_at_once(
    broker: Broker, home: Path
) -> None:
    victim = await Raw.open(broker.port, home, token=make(home, Role.WORKER, "svc"))
    admin = await Raw.open(broker.port, home, hello=True)
    try:
        rid = admin.rid()
        admin.send({"t": "token_revoke", "rid": rid, "name": "svc"})
        assert (await admin.until(rid))[-1]["t"] == "ok"
        await ended_with(victim, "token revoked")
        await admin.ping()
    finally:
        await victim.close()
        await admin.close()


async def test_a_worker_whose_token_expires_loses_its_jobs_and_stops(
    broker: Broker, home: Path, client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "conveyor.broker")
    gate = Gate()
    token = make(home, Role.WORKER, "w-expiring", ttl=60)
    worker = Worker(
        registry=gated_registry(gate), url=broker.url, home=home, token=token, concurrency=1
    )
    run = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.connected.wait(), 10)
        handle = await client.submit("gated", label="a")
        await asyncio.to_thread(gate.wait_started, "a")
        assert worker.stats.received == 1
        connections = broker.metrics["connections_total"]
        broker.tokenwatch.clock = Later(broker.clock, 120)  # the token's ttl has passed
        broker.tokenwatch.wake()
        with pytest.raises(AuthenticationError, match="token expired"):
            await asyncio.wait_for(asyncio.shield(run), 10)
        # the job went back, as for any lost worker, with the reason in its history
        job = await client.get(handle.id)
        assert job.state is JobState.QUEUED, job
        events = [(e["event"], e.get("reason")) for e in job.events]
        assert ("requeued", "token expired") in events, events
        assert "token w-expiring: token expired; closed 1 connection(s), 1 job(s) back" in (
            caplog.text
        )
        # no reconnect loop: the worker did not knock again with its dead token
        assert broker.metrics["connections_total"] == connections
        assert broker.metrics["auth_failures"] == 0
        assert not broker.dispatcher.workers
    finally:
        gate.open()
        worker.stop()
        await asyncio.gather(run, return_exceptions=True)


async def test_the_async_client_remembers_its_refusal(broker: Broker, home: Path) -> None:
    token = make(home, Role.PRODUCER, "p1")
    async with AsyncClient(broker.url, home=home, token=token) as c:
        await c.stats()
        assert registry(home).revoke("p1")
        await broker.wait_until(lambda: broker.metrics["token_ended_connections"] == 1, 3)
        connections = broker.metrics["connections_total"]
        for _ in range(3):
            with pytest.raises(AuthenticationError, match="token revoked"):
                await c.stats()
        assert broker.metrics["connections_total"] == connections  # asked nobody
        assert broker.metrics["auth_failures"] == 0


async def test_the_sync_client_remembers_its_refusal(broker: Broker, home: Path) -> None:
    token = make(home, Role.PRODUCER, "p2")
    c = Client(broker.url, home=home, token=token)
    try:
        await asyncio.to_thread(c.stats)
        assert registry(home).revoke("p2")
        await broker.wait_until(lambda: broker.metrics["token_ended_connections"] == 1, 3)
        connections = broker.metrics["connections_total"]
        for _ in range(3):
            with pytest.raises(AuthenticationError, match="token revoked"):
                await asyncio.to_thread(c.stats)
        assert broker.metrics["connections_total"] == connections
    finally:
        c.close()


@pytest.fixture
def http_config(home: Path) -> BrokerConfig:
    return BrokerConfig(port=0, store_url="memory://", home=home, http_port=0)


async def test_the_live_feed_ends_when_its_token_is_revoked(
    http_config: BrokerConfig, home: Path
) -> None:
    broker = Broker(http_config)
    await broker.start()
    try:
        token = make(home, Role.PRODUCER, "dash")
        headers = {"Authorization": f"Bearer {token}"}
        kinds: list[str] = []
        async with (
            httpx.AsyncClient(base_url=broker.dashboard_url or "", headers=headers) as http,
            http.stream("GET", "/api/events") as stream,
        ):
            assert stream.status_code == 200
            async with asyncio.timeout(10):
                async for line in stream.aiter_lines():
                    if line.startswith("event: "):
                        kinds.append(line[7:])
                        if kinds == ["hello"]:
                            assert registry(home).revoke("dash")
                    elif line.startswith("data: ") and kinds[-1] == "end":
                        assert "token revoked" in line
        assert kinds == ["hello", "end"], kinds  # ended at the first tick, then closed
        assert admin_token(home)  # the admin's own token is untouched
    finally:
        await broker.stop()
