"""Client(pipeline=True) across a broker restart (SQLite: the stored jobs survive it):
the submits not acknowledged when it went are sent again, none is lost or stored twice."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path
from typing import Any

from conveyor import Client
from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.errors import ConnectionLost, ConveyorError


async def test_a_broker_restart_between_submits_and_flush_loses_none(
    home: Path, tmp_path: Path
) -> None:
    config = BrokerConfig(port=0, store_url=f"sqlite:///{tmp_path / 'c.db'}", home=home)
    broker = Broker(config)
    await broker.start()
    config = dataclasses.replace(config, port=broker.port)
    loop = asyncio.get_running_loop()
    restart = asyncio.Event()
    restarted = threading.Event()

    def scenario() -> tuple[list[str], int, dict[str, Any]]:
        with Client(broker.url, home=home, pipeline=True, reconnect_timeout=30) as c:
            # the last of these may be unacknowledged when the broker goes; the first
            # submit after it is written to the dead connection, and goes again
            handles = [c.submit("add", i, 1, queue="q") for i in range(600)]
            loop.call_soon_threadsafe(restart.set)
            assert restarted.wait(30)
            handles += [c.submit("add", i, 1, queue="q") for i in range(600, 700)]
            c.flush()
            ids = [h.id for h in handles]
            return ids, len(c.get_many(ids)), c.stats()

    try:
        running = asyncio.create_task(asyncio.to_thread(scenario))
        await asyncio.wait_for(restart.wait(), 30)
        await broker.stop()
        broker = Broker(config)
        await broker.start()
        restarted.set()
        ids, stored, stats = await asyncio.wait_for(running, 60)
    finally:
        restarted.set()
        await broker.stop()
    assert len(set(ids)) == 700 and stored == 700
    assert stats["queues"]["q"]["queued"] == 700


async def test_a_submit_that_raises_is_not_sent_later(home: Path, tmp_path: Path) -> None:
    """The broker is gone for longer than the client's reconnect budget: each submit()
    raises, and a caller that tries again must not find, once it is back, a job for every
    try (only the submits that returned a handle are the pipeline's to send again)."""
    config = BrokerConfig(port=0, store_url=f"sqlite:///{tmp_path / 'c.db'}", home=home)
    broker = Broker(config)
    await broker.start()
    config = dataclasses.replace(config, port=broker.port)
    loop = asyncio.get_running_loop()
    stop, start = asyncio.Event(), asyncio.Event()
    stopped, started = threading.Event(), threading.Event()

    def scenario() -> tuple[list[str], list[type[BaseException]], dict[str, Any]]:
        with Client(broker.url, home=home, pipeline=True, reconnect_timeout=0.2) as c:
            handles = [c.submit("add", i, 1, queue="q") for i in range(10)]
            c.flush()
            loop.call_soon_threadsafe(stop.set)
            assert stopped.wait(30)
            raised = []
            for _ in range(3):  # the caller retries; each try raises
                try:
                    handles.append(c.submit("add", 10, 1, queue="q"))
                except ConveyorError as exc:
                    raised.append(type(exc))
            loop.call_soon_threadsafe(start.set)
            assert started.wait(30)
            handles.append(c.submit("add", 10, 1, queue="q"))  # this time it goes
            c.flush()
            return [h.id for h in handles], raised, c.stats()

    try:
        running = asyncio.create_task(asyncio.to_thread(scenario))
        await asyncio.wait_for(stop.wait(), 30)
        await broker.stop()
        stopped.set()
        await asyncio.wait_for(start.wait(), 30)
        broker = Broker(config)
        await broker.start()
        started.set()
        ids, raised, stats = await asyncio.wait_for(running, 60)
    finally:
        stopped.set()
        started.set()
        await broker.stop()
    assert len(raised) == 3 and all(issubclass(t, ConnectionLost) for t in raised)
    assert len(ids) == 11
    assert stats["queues"]["q"]["queued"] == 11  # not 14: the failed tries stayed unsent
