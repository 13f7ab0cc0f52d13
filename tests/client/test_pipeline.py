"""Client(pipeline=True): submits that do not wait for their acknowledgements, on a real
broker. What must hold: every submit is stored once, refusals are reported by flush(),
other requests see the jobs submitted before them, a lost connection loses nothing."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from conveyor import Client, JobState, SubmitFailed
from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig, Limits
from conveyor.errors import QueueFull
from tests.client.helpers import count_requests


@pytest.fixture
def broker_config(home: Path) -> BrokerConfig:
    small = Limits(max_queued_by_queue=(("small", 5),))  # the refusals' queue
    return BrokerConfig(port=0, store_url="memory://", home=home, limits=small)


async def test_pipelined_submits_are_all_stored_once_with_the_ids_handed_out(
    broker: Broker, home: Path
) -> None:
    n = 1_200  # more than the window: the pipeline also waits for acknowledgements

    def scenario() -> tuple[list[str], list[Any], int]:
        with Client(broker.url, home=home, pipeline=True) as c:
            handles = [c.submit("add", i, 1, queue="piped") for i in range(n)]
            outstanding = len(c._pipeline or ())
            c.flush()
            ids = [h.id for h in handles]
            return ids, c.get_many(ids), outstanding

    ids, jobs, outstanding = await asyncio.to_thread(scenario)
    assert len(set(ids)) == n
    assert [j.id for j in jobs] == ids  # every one stored, under the id handed out
    assert all(j.state is JobState.QUEUED for j in jobs)
    assert [j.args for j in jobs][:3] == [[], [], []]  # get_many leaves arguments out
    assert outstanding <= 256  # never more in flight than the broker allows
    stats = await asyncio.to_thread(_stats, broker, home)
    assert stats["queues"]["piped"]["queued"] == n


def _stats(broker: Broker, home: Path) -> dict[str, Any]:
    with Client(broker.url, home=home) as c:
        return c.stats()


async def test_another_request_waits_for_the_acknowledgements_first(
    broker: Broker, home: Path
) -> None:
    def scenario() -> tuple[JobState, dict[str, int]]:
        with Client(broker.url, home=home, pipeline=True) as c:
            counts = count_requests(c)
            handles = [c.submit("add", i, 1) for i in range(50)]
            state = c.get(handles[-1].id).state  # the last one, submitted just before
            assert not c._pipeline  # all acknowledged by then
            return state, counts

    state, counts = await asyncio.to_thread(scenario)
    assert state is JobState.QUEUED
    assert counts == {"submit": 50, "get": 1}


async def test_flush_names_the_refused_submits_and_the_rest_are_stored(
    broker: Broker, home: Path
) -> None:
    def scenario() -> tuple[SubmitFailed, list[str], int]:
        with Client(broker.url, home=home, pipeline=True) as c:
            handles = [c.submit("add", i, 1, queue="small") for i in range(8)]  # it holds 5
            with pytest.raises(SubmitFailed) as raised:
                c.flush()
            c.flush()  # reported once
            found = c.get_many([h.id for h in handles])
            return raised.value, [h.id for h in handles], len(found)

    failed, ids, stored = await asyncio.to_thread(scenario)
    assert len(failed.failed) == 3 and stored == 5
    assert {job_id for job_id, _ in failed.failed} <= set(ids)
    assert all(isinstance(err, QueueFull) for _, err in failed.failed)
    assert "queue" in str(failed) and "(and 2 more)" in str(failed)


async def test_close_flushes_and_reports_a_refusal(broker: Broker, home: Path) -> None:
    def scenario() -> None:
        c = Client(broker.url, home=home, pipeline=True)
        for i in range(6):
            c.submit("add", i, 1, queue="small")
        with pytest.raises(SubmitFailed):
            c.close()

    await asyncio.to_thread(scenario)


async def test_the_unacknowledged_are_sent_again_after_a_lost_connection(
    broker: Broker, home: Path
) -> None:
    def scenario() -> tuple[int, list[str], int, dict[str, int]]:
        with Client(broker.url, home=home, pipeline=True) as c:
            counts = count_requests(c)
            first_link = c._transport.connection()
            # this connection never reads an acknowledgement: all 100 are unacknowledged
            # when it breaks, whatever the broker managed meanwhile (it stores them all)
            first_link.ready = lambda wanted: []  # type: ignore[method-assign]
            first = [c.submit("add", i, 1, queue="again") for i in range(100)]
            unread = len(c._pipeline or ())
            first_link.sock.shutdown(socket.SHUT_RDWR)  # the link breaks
            rest = [c.submit("add", i, 1, queue="again") for i in range(100, 200)]
            c.flush()
            ids = [h.id for h in first + rest]
            return unread, ids, len(c.get_many(ids)), counts

    unread, ids, stored, counts = await asyncio.to_thread(scenario)
    assert unread == 100  # so all went again on the new connection
    assert counts["submit"] >= 100  # (counted on the first connection's session only)
    assert stored == 200 and len(set(ids)) == 200
    stats = await asyncio.to_thread(_stats, broker, home)
    assert stats["queues"]["again"]["queued"] == 200  # none stored twice
