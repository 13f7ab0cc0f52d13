"""How many jobs each limit holds back (conveyor.broker.heldback): the pure sums, and the
numbers a real broker with a real worker gives in ``BrokerCore.limits`` and ``stats``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.broker.heldback import add_counts, governing
from conveyor.client.aio import AsyncClient
from conveyor.worker.tasks import TaskRegistry, task
from tests.conftest import StartWorker


def _info(concurrency: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "rates": extra.pop("rates", []),
        "concurrency": concurrency,
        "running_by_key": extra.pop("running", {}),
        "waiting_for_key": extra.pop("waiting", {}),
    }


def test_the_longest_prefix_governs() -> None:
    assert governing("dom:a.b", ["dom:", "dom:a."]) == "dom:a."
    assert governing("dom:x", ["dom:", "dom:a."]) == "dom:"
    assert governing("other", ["dom:"]) is None


def test_sums_per_limit() -> None:
    info = _info(
        [
            {"target": "key:dom:", "limit": 2, "source": "broker"},
            {"target": "key:dom:a.", "limit": 1, "source": "broker"},
            {"target": "task:fetch", "limit": 3, "source": "task"},
        ],
        rates=[{"target": "task:send"}, {"target": "queue:mail"}, {"target": "task:idle"}],
        running={"dom:x": 2, "dom:a.1": 1, "free": 3},
        waiting={"dom:x": 5, "dom:a.1": 4, "free": 1},
    )
    stats = {"tasks": {"send": {"queued": 7, "running": 1}}, "queues": {"mail": {"queued": 2}}}
    out = add_counts(info, stats)
    assert [r["queued"] for r in out["rates"]] == [7, 2, 0]
    assert [(c["running"], c["waiting"]) for c in out["concurrency"]] == [(2, 5), (1, 4), (3, 1)]


def test_two_task_limits_cannot_be_told_apart() -> None:
    info = _info(
        [
            {"target": "task:a", "limit": 1, "source": "task"},
            {"target": "task:b", "limit": 1, "source": "task"},
        ],
        waiting={"k": 3},
    )
    out = add_counts(info, {})
    assert [(c["running"], c["waiting"]) for c in out["concurrency"]] == [(None, None)] * 2


# -- on a live broker ---------------------------------------------------------------------------
@pytest.fixture
def broker_config(home: Path) -> BrokerConfig:
    return BrokerConfig(
        port=0,
        store_url="memory://",
        home=home,
        rate_limits=(("key:dom:", "1"), ("task:later", "1/h")),
    )


async def until(broker: Broker, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The core's limits once ``check`` holds, looked at again on each of its events."""
    changed = asyncio.Event()
    unsubscribe = broker.core.hub.subscribe(lambda _event: changed.set())
    try:
        async with asyncio.timeout(20):
            while not check(info := await broker.core.limits()):
                changed.clear()
                await changed.wait()
            return info
    finally:
        unsubscribe()


async def test_a_live_broker_counts_what_each_limit_holds_back(
    broker: Broker, client: AsyncClient, start_worker: StartWorker
) -> None:
    release = threading.Event()
    reg = TaskRegistry()

    @task(name="hold", registry=reg)
    def hold() -> None:
        release.wait(20)

    await start_worker(reg, concurrency=4)
    jobs = [await client.submit("hold", concurrency_key="dom:a") for _ in range(3)]
    await client.submit("later")  # no worker offers it: queued, behind its rate
    try:

        def held(info: dict[str, Any]) -> bool:
            (key,) = info["concurrency"]
            return (key["running"], key["waiting"]) == (1, 2)

        info = await until(broker, held)
        assert info["concurrency"][0]["target"] == "key:dom:"
        (rate,) = info["rates"]
        assert (rate["target"], rate["queued"]) == ("task:later", 1)
        assert (await broker.core.stats())["limits"]["waiting_for_key"] == {"dom:a": 2}
    finally:
        release.set()
    for job in jobs:
        await job.result(timeout=20)
    done = await until(broker, lambda i: i["concurrency"][0]["running"] == 0)
    assert done["concurrency"][0]["waiting"] == 0
