"""Workflows end to end: real broker, real workers, real sockets (memory and SQLite)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from conveyor import JobFailed, chain, chord, group, sig
from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.client.aio import AsyncClient
from conveyor.job import JobState
from conveyor.worker.tasks import TaskRegistry
from tests.conftest import StartWorker
from tests.flow.conftest import MODULES


@pytest.fixture
def broker_config(home: Path, tmp_path: Path) -> BrokerConfig:
    return BrokerConfig(port=0, store_url=f"sqlite:///{tmp_path}/conveyor.db", home=home)


async def _events(client: AsyncClient, job_id: str) -> list[dict[str, object]]:
    return list((await client.get(job_id)).events)


async def test_a_chain_passes_each_result_on(
    client: AsyncClient, start_worker: StartWorker, flow_registry: TaskRegistry
) -> None:
    await start_worker(flow_registry, modules=MODULES)
    flow = await client.submit_workflow(
        chain(sig("flow.add", 1, 2), sig("flow.add", 10), sig("flow.add", 100))
    )
    assert await flow.result(timeout=30) == 113
    assert [j.state for j in await flow.jobs()] == [JobState.COMPLETED] * 3
    jobs = [await client.get(i) for i in flow.ids]
    assert [j.args for j in jobs] == [[1, 2], [3, 10], [13, 100]]  # what each task got
    assert {j.workflow for j in jobs} == {flow.id}
    assert jobs[1].depends_on == (jobs[0].id,)
    listed = await client.list_jobs(workflow=flow.id)
    assert [j.id for j in reversed(listed)] == flow.ids  # LIST by workflow, newest first


async def test_a_failed_step_cancels_the_rest_of_the_chain(
    client: AsyncClient, start_worker: StartWorker, flow_registry: TaskRegistry
) -> None:
    await start_worker(flow_registry, modules=MODULES)
    flow = await client.submit_workflow(
        chain(sig("flow.add", 1), sig("flow.boom"), sig("flow.add", 2), sig("flow.add", 3))
    )
    with pytest.raises(JobFailed):
        await flow.result(timeout=30)
    first, boom, third, fourth = await flow.jobs()
    assert (first.state, boom.state) == (JobState.COMPLETED, JobState.DEAD)
    assert (third.state, fourth.state) == (JobState.CANCELLED, JobState.CANCELLED)
    assert (await _events(client, third.id))[-1]["reason"] == f"dependency {boom.id} is dead"
    assert (await _events(client, fourth.id))[-1]["reason"] == (
        f"dependency {third.id} is cancelled"
    )
    assert third.attempts == 0  # it never ran


async def test_a_group_gives_its_results_in_order(
    client: AsyncClient, start_worker: StartWorker, flow_registry: TaskRegistry
) -> None:
    await start_worker(flow_registry, modules=MODULES, concurrency=4)
    flow = await client.submit_workflow(group(sig("flow.add", i, i) for i in range(20)))
    assert await flow.result(timeout=30) == [2 * i for i in range(20)]


async def test_a_chain_through_a_group_gets_the_list(
    client: AsyncClient, start_worker: StartWorker, flow_registry: TaskRegistry
) -> None:
    await start_worker(flow_registry, modules=MODULES, concurrency=4)
    flow = await client.submit_workflow(
        chain(
            sig("flow.add", 1), group(sig("flow.add", 10), sig("flow.add", 20)), sig("flow.collect")
        )
    )
    assert await flow.result(timeout=30) == [[11, 21]]


async def test_a_chord_callback_runs_exactly_once_with_the_results_in_order(
    client: AsyncClient,
    start_worker: StartWorker,
    flow_registry: TaskRegistry,
    tmp_path: Path,
) -> None:
    await start_worker(flow_registry, modules=MODULES, concurrency=8)
    await start_worker(flow_registry, modules=MODULES, concurrency=8)
    runs = tmp_path / "callbacks.txt"
    for round_ in range(10):
        gate = tmp_path / f"gate-{round_}"
        # every member waits at the same gate, so they all finish at the same moment
        members = [sig("flow.wait_for", str(gate), i) for i in range(16)]
        flow = await client.submit_workflow(
            chord(group(members), sig("flow.tally", str(runs), f"round-{round_}"))
        )
        gate.touch()
        assert await flow.result(timeout=30) == list(range(16))  # in order
        callback = await client.get(flow.ids[-1])
        assert callback.args == [list(range(16)), str(runs), f"round-{round_}"]
    lines = runs.read_text().split()
    assert sorted(lines) == sorted(f"round-{r}" for r in range(10))  # once each


async def test_after_waits_for_its_jobs_and_gets_no_results(
    client: AsyncClient, start_worker: StartWorker, flow_registry: TaskRegistry, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    first = await client.submit("flow.wait_for", str(gate), 1)
    later = await client.submit("flow.collect", "x", after=[first])
    assert (await client.get(later.id)).state is JobState.WAITING
    await start_worker(flow_registry, modules=MODULES)
    assert (await client.get(later.id)).state is JobState.WAITING  # first still runs
    gate.touch()
    assert await later.result(timeout=30) == ["x"]
    done = await client.submit("flow.collect", "y", after=[first.id])  # already completed
    assert await done.result(timeout=30) == ["y"]
    dead = await client.submit("flow.boom")
    blocked = await client.submit("flow.collect", after=[dead.id])
    job = await blocked.wait(timeout=30)
    assert job.state is JobState.CANCELLED
    assert job.events[-1]["reason"] == f"dependency {dead.id} is dead"
    missing = await (await client.submit("flow.collect", after=["no-such-job"])).wait(timeout=30)
    assert missing.state is JobState.CANCELLED


async def test_a_waiting_job_can_be_cancelled_and_its_dependants_follow(
    client: AsyncClient, flow_registry: TaskRegistry
) -> None:
    flow = await client.submit_workflow(
        chain(sig("flow.add", 1), sig("flow.add", 2), sig("flow.add", 3))
    )
    second = flow.ids[1]
    assert (await client.cancel(second)).state is JobState.CANCELLED
    last = await client.wait(flow.ids[2], timeout=30)
    assert last.state is JobState.CANCELLED


async def test_a_workflow_survives_a_broker_restart_mid_way(
    broker_config: BrokerConfig, home: Path, tmp_path: Path, flow_registry: TaskRegistry
) -> None:
    from conveyor.worker.runner import Worker

    gate = tmp_path / "gate"
    broker = Broker(broker_config)
    await broker.start()
    broker_config = dataclasses.replace(broker_config, port=broker.port)  # restarts keep it
    try:
        async with AsyncClient(broker.url, home=home) as client:
            flow = await client.submit_workflow(
                chain(sig("flow.add", 1, 2), sig("flow.hold", str(gate)), sig("flow.add", 4))
            )
    finally:
        await broker.stop()  # nothing ran: one queued, two waiting
    broker = Broker(broker_config)  # the same SQLite file
    await broker.start()
    try:
        worker = Worker(registry=flow_registry, modules=MODULES, url=broker.url, home=home)
        running = asyncio.get_running_loop().create_task(worker.run())
        try:
            async with AsyncClient(broker.url, home=home, reconnect_timeout=30) as client:
                first = await client.wait(flow.ids[0], timeout=30)
                assert first.state is JobState.COMPLETED
                held = await client.get(flow.ids[1])
                assert held.state in (JobState.QUEUED, JobState.RUNNING)  # released already
                assert held.args == [3, str(gate)]
                await broker.stop()  # stopped again, the second step held at its gate
                broker = Broker(broker_config)
                await broker.start()
                gate.touch()  # the worker reconnects by itself; the step runs again
                assert await client.result(flow.ids[2], timeout=30) == 7
        finally:
            worker.stop()
            await asyncio.wait_for(running, 30)
    finally:
        await broker.stop()


def test_a_workflow_plan_puts_each_job_after_those_it_waits_for() -> None:
    from conveyor.workflow import plan

    flow = plan(chain(sig("a"), group(sig("b"), chain(sig("c"), sig("d"))), sig("e")))
    by_task = {j.step.name: j for j in flow.jobs}
    assert [j.step.name for j in flow.jobs] == ["a", "b", "c", "d", "e"]
    assert by_task["b"].after == by_task["c"].after == (by_task["a"].id,)
    assert (by_task["b"].feed, by_task["d"].feed) == ("result", "result")
    assert by_task["e"].after == (by_task["b"].id, by_task["d"].id)
    assert by_task["e"].feed == "results" and flow.tails == (by_task["e"].id,)
    assert plan(group(sig("x"), sig("y"))).many
    assert by_task["a"].after == () and by_task["a"].feed is None
    with pytest.raises(ValueError):
        group()
    with pytest.raises(TypeError):
        chain("not a signature")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sig("a").set(after=["x"])


async def test_a_workflow_that_passes_results_refuses_payload_encryption(
    broker: Broker, home: Path
) -> None:
    from conveyor.errors import InvalidJob
    from conveyor.security.payload import generate_key

    async with AsyncClient(broker.url, home=home, payload_key=generate_key()) as sealed:
        with pytest.raises(InvalidJob, match="after="):
            await sealed.submit_workflow(chain(sig("flow.add", 1), sig("flow.add", 2)))
        await sealed.submit_workflow(group(sig("flow.add", 1), sig("flow.add", 2)))  # fine
