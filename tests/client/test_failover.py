"""Clients given several brokers: they connect to one that answers, fail over when it is
lost, and resend exactly what is safe to resend. Real brokers on real sockets."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor import AsyncClient, Client, JobState
from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.config import ensure_broker_files
from conveyor.errors import AuthenticationError, BrokerUnavailable, ConnectionLost

# rotations start at the first address given, so each test knows who is dialled
pytestmark = pytest.mark.usefixtures("first_address_first")


def dead_port() -> int:
    """A port nobody listens on (bound, then closed: connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def both(a: Broker, b: Broker) -> str:
    return f"{a.url},{b.url}"


def hold(
    broker: Broker, method: str, after: Callable[[], None] | None = None
) -> tuple[asyncio.Event, asyncio.Event]:
    """Make the next call of ``broker.core.<method>`` wait for the returned ``release``
    event before it runs (``entered`` is set when it arrives); ``after`` runs once it has
    applied. Later calls run as usual."""
    entered, release = asyncio.Event(), asyncio.Event()
    original = getattr(broker.core, method)

    async def held(*args: Any) -> Any:
        setattr(broker.core, method, original)
        entered.set()
        await release.wait()
        result = await original(*args)
        if after is not None:
            after()
        return result

    setattr(broker.core, method, held)
    return entered, release


def cut_every_connection(broker: Broker) -> None:
    """The connections drop under the broker (it stays up): no reply gets out."""
    for session in list(broker.sessions):
        assert session.transport is not None
        session.transport.abort()


# -- connecting ------------------------------------------------------------------------------
async def test_a_client_given_a_dead_address_first_connects_to_the_live_one(
    broker: Broker, home: Path
) -> None:
    url = f"127.0.0.1:{dead_port()},{broker.url}"

    def sync() -> str:
        with Client(url, home=home) as c:
            c.ping()
            return c.address

    assert await asyncio.to_thread(sync) == f"127.0.0.1:{broker.port}"
    async with AsyncClient(url, home=home) as c:
        await c.ping()
        assert c.address == f"127.0.0.1:{broker.port}"


async def test_when_no_broker_answers_the_error_names_each_address(home: Path) -> None:
    one, two = dead_port(), dead_port()
    url = f"conveyor://127.0.0.1:{one},127.0.0.1:{two}"
    pattern = (
        rf"no broker of 127\.0\.0\.1:{one},127\.0\.0\.1:{two} could be reached: "
        rf"cannot reach the broker at 127\.0\.0\.1:{one}: .*; "
        rf"cannot reach the broker at 127\.0\.0\.1:{two}: "
    )
    with pytest.raises(BrokerUnavailable, match=pattern):
        await asyncio.to_thread(Client(url, home=home).connect)
    with pytest.raises(BrokerUnavailable, match=pattern):
        await AsyncClient(url, home=home).connect()


async def test_a_refused_token_is_not_tried_on_the_other_brokers(
    broker: Broker, other: Broker, home: Path
) -> None:
    """A bad token is the same on every broker of a system: no failover, no loop, and no
    knocking on the next broker's door (its failed-login throttle stays clean)."""
    before = other.metrics["connections_total"]
    sync = Client(both(broker, other), home=home, token="cvy_not-a-token")
    with pytest.raises(AuthenticationError):
        await asyncio.to_thread(sync.connect)
    with pytest.raises(AuthenticationError):
        await asyncio.to_thread(sync.stats)  # remembered: raised again at once
    aio = AsyncClient(both(broker, other), home=home, token="cvy_not-a-token")
    with pytest.raises(AuthenticationError):
        await aio.connect()
    with pytest.raises(AuthenticationError):
        await aio.stats()
    assert other.metrics["connections_total"] == before


async def test_the_certificate_is_checked_against_each_host_dialled(tmp_path: Path) -> None:
    """A broker whose certificate names only ``localhost``: dialled as 127.0.0.1 it does not
    verify (so that address is skipped), dialled as localhost it does."""
    home = tmp_path / "named"
    ensure_broker_files(home, hosts=["localhost"], now=time.time())
    broker = Broker(BrokerConfig(port=0, store_url="memory://", home=home))
    await broker.start()
    try:
        port = broker.port
        async with AsyncClient(f"127.0.0.1:{port},localhost:{port}", home=home) as c:
            await c.ping()
            assert c.address == f"localhost:{port}"
        only_ip = AsyncClient(f"127.0.0.1:{port}", home=home)
        with pytest.raises(
            BrokerUnavailable, match=rf"cannot verify the broker at 127\.0\.0\.1:{port}"
        ):
            await only_ip.connect()
    finally:
        await broker.stop()


# -- failing over mid-run --------------------------------------------------------------------
async def test_a_submit_cut_off_by_a_stopped_broker_is_resent_to_the_next_one(
    broker: Broker, other: Broker, home: Path
) -> None:
    """The broker stops while our SUBMIT is in flight: the client fails over and the next
    broker acknowledges it, once; the handle is the one id we chose."""
    entered, release = hold(broker, "submit")
    async with AsyncClient(both(broker, other), home=home) as c:
        assert c.address == f"127.0.0.1:{broker.port}"
        pending = asyncio.ensure_future(c.submit("noop", job_id="j-async"))
        await asyncio.wait_for(entered.wait(), 10)
        stopping = asyncio.ensure_future(broker.stop())
        handle = await asyncio.wait_for(pending, 20)
        assert handle.id == "j-async" and c.address == f"127.0.0.1:{other.port}"
        release.set()  # the stopped broker may finish what it started: it is not told
        await stopping
        assert other.metrics["connections_total"] >= 1
        assert [j.id for j in await c.get_many(["j-async"])] == ["j-async"]
        assert (await c.stats())["totals"]["submitted"] == 1  # acknowledged once


async def test_the_sync_client_fails_over_too(broker: Broker, other: Broker, home: Path) -> None:
    entered, release = hold(broker, "submit")
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def scenario() -> tuple[str, str, int]:
        with Client(both(broker, other), home=home) as c:
            c.ping()
            handle = c.submit("noop", job_id="j-sync")
            loop.call_soon_threadsafe(done.set)
            return handle.id, c.address, c.stats()["totals"]["submitted"]

    running = asyncio.ensure_future(asyncio.to_thread(scenario))
    await asyncio.wait_for(entered.wait(), 10)
    stopping = asyncio.ensure_future(broker.stop())
    await asyncio.wait_for(done.wait(), 20)
    release.set()
    await stopping
    assert await running == ("j-sync", f"127.0.0.1:{other.port}", 1)


async def test_submits_keep_flowing_while_a_broker_stops_each_id_acknowledged_once(
    broker: Broker, other: Broker, home: Path
) -> None:
    """A producer submits one job at a time; its broker stops after 30. Every one of the
    100 ids is acknowledged once, by one broker or the other, and none is lost."""
    ids = [f"flow-{n:03}" for n in range(100)]
    loop = asyncio.get_running_loop()
    thirty = asyncio.Event()

    def produce() -> list[str]:
        acked = []
        with Client(both(broker, other), home=home) as c:
            for job_id in ids:
                acked.append(c.submit("noop", job_id=job_id).id)
                if len(acked) == 30:
                    loop.call_soon_threadsafe(thirty.set)
        return acked

    producing = asyncio.ensure_future(asyncio.to_thread(produce))
    await asyncio.wait_for(thirty.wait(), 20)
    await broker.stop()
    assert await asyncio.wait_for(producing, 30) == ids
    on_first = {j.id for j in await broker.core.store.job_get_many(ids)}
    on_second = {j.id for j in await other.core.get_many(ids)}
    assert on_first | on_second == set(ids)
    assert len(on_first) >= 30 and on_second  # it really did fail over
    # only a submit cut off in flight can be on both (the first stored it, its ack was lost)
    assert len(on_first & on_second) <= 1


async def test_a_resent_submit_on_a_shared_store_is_stored_once(broker: Broker, home: Path) -> None:
    """Two addresses of one broker stand for two brokers on one store: the submit is stored,
    its ack is lost with the connection, the resend through the other address finds the
    job by its id (created: false) and the client sees one handle."""
    port = broker.port
    _, release = hold(broker, "submit", after=lambda: cut_every_connection(broker))
    release.set()
    async with AsyncClient(f"127.0.0.1:{port},localhost:{port}", home=home) as c:
        handle = await asyncio.wait_for(c.submit("noop", job_id="shared-1"), 20)
        assert handle.id == "shared-1" and c.address == f"localhost:{port}"
        assert (await c.stats())["totals"]["submitted"] == 1


async def test_a_cancel_cut_off_after_it_applied_returns_the_cancelled_job(
    broker: Broker, home: Path
) -> None:
    port = broker.port
    async with AsyncClient(f"127.0.0.1:{port},localhost:{port}", home=home) as c:
        job = await c.submit("noop", queue="nobody-serves-this")
        _, release = hold(broker, "cancel", after=lambda: cut_every_connection(broker))
        release.set()
        cancelled = await asyncio.wait_for(c.cancel(job.id), 20)
        assert cancelled.state is JobState.CANCELLED and c.address == f"localhost:{port}"


async def test_what_is_not_safe_to_resend_raises_saying_so(
    broker: Broker, other: Broker, home: Path
) -> None:
    """A DLQ purge cut off may have applied: it is not sent to the next broker, and the
    error says so; the client itself carries on with the next broker."""
    entered, release = hold(broker, "dlq_purge")
    async with AsyncClient(both(broker, other), home=home) as c:
        await c.ping()
        purging = asyncio.ensure_future(c.dlq_purge())
        await asyncio.wait_for(entered.wait(), 10)
        stopping = asyncio.ensure_future(broker.stop())
        with pytest.raises(ConnectionLost, match=r"'dlq_purge' request .* it was not sent again"):
            await asyncio.wait_for(purging, 20)
        release.set()
        await stopping
        assert (await c.dlq_purge()) == 0  # the next request fails over
        assert c.address == f"127.0.0.1:{other.port}"
