"""A chord on two brokers sharing one PostgreSQL schema, with workers on each: its members
finish at the same moment under both brokers, and the callback still runs exactly once
with the results in order (the release of a waiting job is version-checked in the store),
and it is dispatched: the broker that loses the race to release it held the row while the
winner's claim skipped it (SKIP LOCKED), so the loser runs a pass of its own after.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from conveyor import AsyncClient, JobState, chord, group, sig
from conveyor.broker.app import Broker
from conveyor.worker.runner import Worker
from conveyor.worker.tasks import TaskRegistry
from tests.flow.conftest import MODULES
from tests.postgres import pg_url, two_brokers

pytestmark = pytest.mark.postgres
__all__ = ["pg_url", "two_brokers"]


async def test_a_chord_split_over_two_brokers_calls_back_once(
    two_brokers: tuple[Broker, Broker], home: Path, tmp_path: Path, flow_registry: TaskRegistry
) -> None:
    running: list[tuple[Worker, asyncio.Task[None]]] = []
    for n, broker in enumerate(two_brokers):
        worker = Worker(
            registry=flow_registry,
            modules=MODULES,
            url=broker.url,
            home=home,
            concurrency=8,
            prefetch=0,  # 8 jobs each at most: 16 members need both brokers' workers
            name=f"on-broker-{n}",
        )
        running.append((worker, asyncio.get_running_loop().create_task(worker.run())))
        await asyncio.wait_for(worker.connected.wait(), 10)
    runs = tmp_path / "callbacks.txt"
    ran_on: set[str] = set()
    try:
        async with AsyncClient(two_brokers[0].url, home=home) as client:
            for round_ in range(6):
                gate = tmp_path / f"gate-{round_}"
                members = [sig("flow.wait_for", str(gate), i) for i in range(16)]
                flow = await client.submit_workflow(
                    chord(group(members), sig("flow.tally", str(runs), f"round-{round_}"))
                )
                async with asyncio.timeout(30):  # the test's own poll: all 16 taken,
                    while not all(  # 8 by each broker's worker (8 slots, no prefetch)
                        j.state is JobState.RUNNING for j in await client.get_many(flow.ids[:-1])
                    ):
                        await asyncio.sleep(0.01)
                gate.touch()  # every member ends at once, under both brokers
                assert await flow.result(timeout=60) == list(range(16))
                for job in await client.get_many(flow.ids[:-1]):
                    ran_on.add((job.worker or "").split("#")[0])
    finally:
        for worker, _ in running:
            worker.stop()
        for _, task in running:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
    assert sorted(runs.read_text().split()) == [f"round-{r}" for r in range(6)]  # once each
    assert len(ran_on) == 2, ran_on  # the members really ran under both brokers
