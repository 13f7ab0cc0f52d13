"""as_completed on the blocking Client while the same Client makes other requests: the
WAITs' replies that arrive meanwhile must wait for the loop, not be dropped."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from conveyor import Client
from conveyor.broker.app import Broker
from conveyor.worker.tasks import TaskRegistry
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
