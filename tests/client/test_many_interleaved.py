"""as_completed on the blocking Client while the same Client makes other requests: the
WAITs' replies that arrive meanwhile must wait for the loop, not be dropped."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from conveyor import Client
from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig, Limits
from conveyor.worker.tasks import TaskRegistry
from tests.client.helpers import restartable_broker
from tests.client.test_wait_many import _held
from tests.conftest import StartWorker
from tests.flow.conftest import MODULES


async def test_requests_made_inside_the_loop_lose_none_of_its_replies(
    broker: Broker,
    home: Path,
    tmp_path: Path,
    start_worker: StartWorker,
    flow_registry: TaskRegistry,
) -> None:
    await start_worker(registry=flow_registry, modules=MODULES, concurrency=4)
    gates, specs = _held(tmp_path, 4)

    def scenario() -> tuple[list[Any], bool]:
        with Client(broker.url, home=home, pipeline=True) as c:
            handles = c.submit_many(specs)
            gates[0].touch()
            conn = c._transport._conn
            seen = []
            for job in c.as_completed(handles, timeout=60):
                seen.append(job.result)
                n = len(seen)
                if n < len(gates):  # the next one ends while this client waits for it
                    gates[n].touch()
                    assert c.wait(handles[n].id, timeout=30).state.is_final
                    c.get_many([h.id for h in handles])  # an exchange inside the exchange
                    c.submit("add", n, 1)  # pipelined: reads what is there
            return seen, c._transport._conn is conn

    seen, same_connection = await asyncio.to_thread(scenario)
    assert seen == [0, 1, 2, 3]
    assert same_connection  # nothing was lost and waited out till a reconnect


async def test_leaving_the_loop_early_leaves_the_client_usable(
    broker: Broker,
    home: Path,
    tmp_path: Path,
    start_worker: StartWorker,
    flow_registry: TaskRegistry,
) -> None:
    await start_worker(registry=flow_registry, modules=MODULES, concurrency=4)
    gates, specs = _held(tmp_path, 3)

    def scenario() -> tuple[Any, list[Any], Any]:
        with Client(broker.url, home=home) as c:
            handles = c.submit_many(specs)
            gates[0].touch()
            for job in c.as_completed(handles):
                first = job.result
                break
            for g in gates[1:]:  # the abandoned WAITs are answered now: not ours any more
                g.touch()
            results = [j.result for j in c.wait_many(handles, timeout=30)]
            kept = c._transport._conn._kept if c._transport._conn else None
            return first, results, kept

    first, results, kept = await asyncio.to_thread(scenario)
    assert first == 0 and results == [0, 1, 2]
    assert not kept  # the replies of the abandoned WAITs are dropped, not hoarded


class TestUnderATightInflightLimit:
    """The broker stops reading a connection with ``max_inflight_requests`` requests in
    progress until half are done. A held WAIT is not one of them (it waits on a callback,
    not a task), so the loop's WAITs never keep the requests made meanwhile unread."""

    @pytest.fixture
    def broker_config(self, home: Path) -> BrokerConfig:
        tight = Limits(max_inflight_requests=4)
        return BrokerConfig(port=0, store_url="memory://", home=home, limits=tight)

    async def test_a_request_inside_the_loop_is_read_at_once(
        self,
        broker: Broker,
        home: Path,
        tmp_path: Path,
        start_worker: StartWorker,
        flow_registry: TaskRegistry,
    ) -> None:
        await start_worker(registry=flow_registry, modules=MODULES, concurrency=8)
        gates, specs = _held(tmp_path, 8)

        def scenario() -> tuple[list[Any], int, bool]:
            with Client(broker.url, home=home, pipeline=True) as c:
                handles = c.submit_many(specs)
                gates[0].touch()
                conn = c._transport._conn
                seen = []
                added = 0
                for job in c.as_completed(handles, timeout=60):
                    seen.append(job.result)
                    if len(seen) == 1:  # seven WAITs out, more than the limit
                        c.get(handles[1].id)
                        c.get(handles[2].id)
                        extra = [c.submit("flow.add", i, 1) for i in range(10)]
                        c.flush()
                        added = sum(j.result for j in c.wait_many(extra, timeout=30))
                        for g in gates[1:]:
                            g.touch()
                return seen, added, c._transport._conn is conn

        seen, added, same_connection = await asyncio.wait_for(asyncio.to_thread(scenario), 120)
        assert seen[0] == 0 and sorted(seen) == list(range(8))
        assert added == sum(range(1, 11))
        assert same_connection


async def test_a_reconnect_made_inside_the_loop_carries_the_loop_over(
    home: Path, tmp_path: Path, flow_registry: TaskRegistry
) -> None:
    """A request in the loop finds the broker restarted and reconnects: the loop's WAITs,
    left on the old connection, go again on the new one."""
    gates, specs = _held(tmp_path, 3)
    loop = asyncio.get_running_loop()
    restart = asyncio.Event()
    restarted = threading.Event()
    async with restartable_broker(home, tmp_path / "c.db", flow_registry) as system:

        def scenario() -> list[Any]:
            with Client(system.url, home=home, reconnect_timeout=30) as c:
                handles = c.submit_many(specs)
                gates[0].touch()
                seen = []
                for job in c.as_completed(handles, timeout=60):
                    seen.append(job.result)
                    if len(seen) == 1:
                        loop.call_soon_threadsafe(restart.set)
                        assert restarted.wait(30)
                        assert c.get(handles[1].id).id == handles[1].id  # reconnects
                        gates[1].touch()
                        gates[2].touch()
                return seen

        try:
            reading = asyncio.create_task(asyncio.to_thread(scenario))
            await asyncio.wait_for(restart.wait(), 30)
            await system.restart()  # the same SQLite file, the same port
            restarted.set()
            seen = await asyncio.wait_for(reading, 60)
        finally:
            restarted.set()
    assert seen[0] == 0 and sorted(seen) == [0, 1, 2]
