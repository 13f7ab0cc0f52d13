"""Client.as_completed / wait_many and their async twins, on a real broker and workers.

The jobs are held at gate files the test opens, so the order they finish in is the
test's, not the scheduler's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from conveyor import Client, JobState
from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.client import many
from conveyor.client.aio import AsyncClient
from conveyor.errors import JobNotFound, ResultTimeout
from conveyor.worker.tasks import TaskRegistry
from tests.client.helpers import count_requests, restartable_broker
from tests.conftest import StartWorker
from tests.flow.conftest import MODULES


def _held(tmp_path: Path, n: int) -> tuple[list[Path], list[dict[str, Any]]]:
    gates = [tmp_path / f"gate{i}" for i in range(n)]
    specs = [{"task": "flow.hold", "args": [i, str(g)]} for i, g in enumerate(gates)]
    return gates, specs


async def test_as_completed_gives_jobs_in_the_order_they_finish(
    broker: Broker,
    home: Path,
    tmp_path: Path,
    start_worker: StartWorker,
    flow_registry: TaskRegistry,
) -> None:
    await start_worker(registry=flow_registry, modules=MODULES, concurrency=4)
    gates, specs = _held(tmp_path, 3)
    order = [1, 2, 0]  # the gates are opened in this order, each once the one before is seen

    def scenario() -> tuple[list[int], dict[str, int]]:
        with Client(broker.url, home=home) as c:
            handles = c.submit_many(specs)
            counts = count_requests(c)
            session = c._transport.session
            numbered = session.request

            def first_gate_after_the_waits(frame: dict[str, Any], **kwargs: Any) -> Any:
                out = numbered(frame, **kwargs)
                if frame["t"] == "wait" and counts.get("wait") == len(order):
                    gates[order[0]].touch()  # all three were unfinished when read
                return out

            session.request = first_gate_after_the_waits  # type: ignore[method-assign]
            seen = []
            for job in c.as_completed(handles, timeout=60):
                assert job.state is JobState.COMPLETED
                seen.append(job.result)
                if len(seen) < len(order):
                    gates[order[len(seen)]].touch()
            return seen, counts

    seen, counts = await asyncio.to_thread(scenario)
    assert seen == order
    assert counts == {"get_many": 1, "wait": 3}  # one read, then a pushed reply each


async def test_finished_jobs_are_read_together_and_failures_are_given_not_raised(
    broker: Broker, home: Path, start_worker: StartWorker
) -> None:
    await start_worker(concurrency=4)

    def scenario() -> tuple[list[Any], dict[str, int]]:
        with Client(broker.url, home=home) as c:
            ok = c.submit_many([("add", [i, 1], {}) for i in range(20)])
            dead = c.submit("fail", kwargs={"message": "no"}, retries=0)
            for h in [*ok, dead]:
                h.wait(timeout=30)
            counts = count_requests(c)
            jobs = c.wait_many([dead, *ok, dead.id], timeout=30)  # a repeat counts once
            return jobs, counts

    jobs, counts = await asyncio.to_thread(scenario)
    assert [j.state for j in jobs] == [JobState.DEAD] + [JobState.COMPLETED] * 20
    assert (jobs[0].error or {})["message"] == "no"
    assert [j.result for j in jobs[1:]] == [i + 1 for i in range(20)]
    assert counts == {"get_many": 1}  # all final: no WAIT at all


async def test_a_timeout_gives_the_rest_as_they_are_or_raises_from_as_completed(
    broker: Broker,
    home: Path,
    tmp_path: Path,
    start_worker: StartWorker,
    flow_registry: TaskRegistry,
) -> None:
    await start_worker(registry=flow_registry, modules=MODULES, concurrency=4)
    gates, specs = _held(tmp_path, 2)

    def scenario() -> tuple[list[Any], list[Any], BaseException | None]:
        with Client(broker.url, home=home) as c:
            handles = c.submit_many(specs)
            gates[0].touch()
            handles[0].result(timeout=30)
            jobs = c.wait_many(handles, timeout=0.2)
            seen: list[Any] = []
            try:
                for job in c.as_completed(reversed(handles), timeout=0.2):
                    seen.append(job.result)
            except ResultTimeout as exc:
                raised: BaseException | None = exc
            else:
                raised = None
            gates[1].touch()
            return jobs, seen, raised

    jobs, seen, raised = await asyncio.to_thread(scenario)
    assert jobs[0].state is JobState.COMPLETED and jobs[0].result == 0
    assert not jobs[1].state.is_final  # as it was when the time ran out
    assert seen == [0]  # the finished one came first, then the time ran out
    assert isinstance(raised, ResultTimeout) and jobs[1].id in str(raised)


async def test_an_unknown_id_is_refused_before_any_wait(broker: Broker, home: Path) -> None:
    def scenario() -> None:
        with Client(broker.url, home=home) as c:
            h = c.submit("add", 1, 2)
            with pytest.raises(JobNotFound, match="no-such-job"):
                c.wait_many([h, "no-such-job"], timeout=5)
            with pytest.raises(ValueError, match="timeout"):
                c.wait_many([h], timeout=-1)

    await asyncio.to_thread(scenario)


async def test_an_id_that_cannot_be_one_is_not_found_as_from_wait(
    broker: Broker, client: AsyncClient, home: Path
) -> None:
    bad = ["", "x" * 1000, "a b", "ü"]  # wait() says JobNotFound for each: so must these

    def scenario() -> list[str]:
        with Client(broker.url, home=home) as c:
            h = c.submit("add", 1, 2)
            names = []
            for job_id in bad:
                with pytest.raises(JobNotFound) as raised:
                    c.wait_many([h, job_id], timeout=5)
                with pytest.raises(JobNotFound):
                    next(iter(c.as_completed([job_id, h])))
                names.append(str(raised.value))
            return names

    names = await asyncio.to_thread(scenario)
    assert names[2] == "not_found: no job 'a b'"
    assert len(names[1]) < 200  # not echoed whole
    h = await client.submit("add", 1, 2)
    for job_id in bad:
        with pytest.raises(JobNotFound):
            await client.wait_many([h, job_id])


async def test_more_jobs_than_the_window_all_come_back(
    broker: Broker,
    home: Path,
    tmp_path: Path,
    start_worker: StartWorker,
    flow_registry: TaskRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(many, "WINDOW", 3)  # 10 jobs: the window refills as replies come
    await start_worker(registry=flow_registry, modules=MODULES, concurrency=10)
    gates, specs = _held(tmp_path, 10)

    def scenario() -> list[Any]:
        with Client(broker.url, home=home) as c:
            handles = c.submit_many(specs)
            c.wait(handles[0].id, timeout=0)  # connected; the jobs are held
            for g in gates:
                g.touch()
            return [j.result for j in c.wait_many(handles, timeout=60)]

    assert await asyncio.to_thread(scenario) == list(range(10))


@pytest.fixture
def broker_config(home: Path, tmp_path: Path) -> BrokerConfig:
    return BrokerConfig(port=0, store_url=f"sqlite:///{tmp_path / 'conveyor.db'}", home=home)


async def test_the_waits_are_sent_again_after_a_broker_restart(
    home: Path, tmp_path: Path, flow_registry: TaskRegistry
) -> None:
    gates, specs = _held(tmp_path, 3)
    waiting = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with restartable_broker(home, tmp_path / "conveyor.db", flow_registry) as system:

        def scenario() -> list[Any]:
            with Client(system.url, home=home, reconnect_timeout=30) as c:
                handles = c.submit_many(specs)
                gates[0].touch()
                seen = []
                for job in c.as_completed(handles, timeout=60):
                    seen.append(job.result)
                    if len(seen) == 1:  # the others are waited for now: restart under them
                        loop.call_soon_threadsafe(waiting.set)
                return seen

        reading = asyncio.create_task(asyncio.to_thread(scenario))
        await asyncio.wait_for(waiting.wait(), 30)
        await system.restart()  # the same SQLite file, the same port
        gates[2].touch()
        gates[1].touch()
        seen = await asyncio.wait_for(reading, 60)
    assert seen[0] == 0 and sorted(seen) == [0, 1, 2]


async def test_the_async_client_gives_them_as_they_finish_too(
    client: AsyncClient, tmp_path: Path, start_worker: StartWorker, flow_registry: TaskRegistry
) -> None:
    await start_worker(registry=flow_registry, modules=MODULES, concurrency=4)
    gates, specs = _held(tmp_path, 3)
    handles = await client.submit_many(specs)
    order = [2, 0, 1]
    gates[order[0]].touch()
    seen = []
    async for job in client.as_completed(handles, timeout=60):
        seen.append(job.result)
        if len(seen) < len(order):
            gates[order[len(seen)]].touch()
    assert seen == order
    jobs = await client.wait_many([handles[1], handles[0]], timeout=5)
    assert [j.result for j in jobs] == [1, 0]
    with pytest.raises(JobNotFound):
        await client.wait_many(["no-such-job"])


async def test_the_async_client_raises_when_the_time_runs_out(
    client: AsyncClient, tmp_path: Path, start_worker: StartWorker, flow_registry: TaskRegistry
) -> None:
    await start_worker(registry=flow_registry, modules=MODULES, concurrency=4)
    gates, specs = _held(tmp_path, 1)
    (handle,) = await client.submit_many(specs)
    with pytest.raises(ResultTimeout):
        async for _ in client.as_completed([handle], timeout=0.2):
            pass
    (job,) = await client.wait_many([handle], timeout=0.1)
    assert not job.state.is_final
    gates[0].touch()
    (job,) = await client.wait_many([handle], timeout=30)
    assert job.result == 0
