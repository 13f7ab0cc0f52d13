"""The foundation, end to end: real broker, real workers, real TLS sockets."""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import sys
import threading
from pathlib import Path

import pytest

from conveyor import AsyncClient, Client, InvalidJob, JobState, task
from conveyor.broker.app import Broker
from conveyor.errors import AuthenticationError, JobFailed
from conveyor.protocol.codec import FrameDecoder
from conveyor.worker.tasks import TaskRegistry
from tests.broker.conftest_helpers import Gate, gated_registry


async def test_submit_and_result(client: AsyncClient, start_worker) -> None:
    await start_worker()
    job = await client.submit("fibonacci", n=30, priority=1)
    assert await job.result(timeout=10) == 832040
    done = await job.get()
    assert done.state is JobState.COMPLETED
    assert [e["event"] for e in done.events] == ["submitted", "started", "completed"]


async def test_big_integers_go_both_ways(client: AsyncClient, start_worker) -> None:
    """Python's integers are unbounded and so are JSON's numbers: fibonacci(94) and up."""
    await start_worker()
    assert await (await client.submit("fibonacci", n=100)).result(timeout=10) == (
        354224848179261915075
    )
    assert await (await client.submit("add", a=2**70, b=-(2**80))).result(timeout=10) == (
        2**70 - 2**80
    )


async def test_priority_order_with_one_busy_worker(client: AsyncClient, start_worker) -> None:
    gate = Gate()
    await start_worker(gated_registry(gate), concurrency=1, prefetch=0)
    blocker = await client.submit("gated", kwargs={"label": "blocker"})
    await asyncio.to_thread(gate.wait_started, "blocker")
    labels = [("p5a", 5), ("p1a", 1), ("p10", 10), ("p1b", 1), ("p5b", 5), ("p3", 3)]
    handles = [await client.submit("gated", kwargs={"label": lbl}, priority=p) for lbl, p in labels]
    gate.open()
    for h in [blocker, *handles]:
        await h.result(timeout=10)
    assert gate.order == ["blocker", "p1a", "p1b", "p3", "p5a", "p5b", "p10"]


async def test_fifo_within_a_priority(client: AsyncClient, start_worker) -> None:
    gate = Gate()
    await start_worker(gated_registry(gate), concurrency=1, prefetch=0)
    blocker = await client.submit("gated", kwargs={"label": "blocker"})
    await asyncio.to_thread(gate.wait_started, "blocker")
    names = [f"j{i:02d}" for i in range(30)]
    handles = await client.submit_many([("gated", {"label": n}) for n in names])
    gate.open()
    for h in [blocker, *handles]:
        await h.result(timeout=10)
    assert gate.order == ["blocker", *names]


async def test_two_workers_share_the_load(client: AsyncClient, start_worker) -> None:
    w1 = await start_worker(concurrency=4)
    w2 = await start_worker(concurrency=4)
    handles = await client.submit_many([("noop", {}) for _ in range(1000)])
    for h in handles:
        await h.wait(timeout=30)
    jobs = await client.list_jobs(state="completed", limit=1000)
    counts = collections.Counter(j.worker for j in jobs)
    assert len(jobs) == 1000
    assert set(counts) == {w1.worker_id, w2.worker_id}
    for n in counts.values():
        assert 400 <= n <= 600, counts  # each within ±20% of an even share


async def test_concurrency_limit_is_respected(client: AsyncClient, start_worker) -> None:
    registry = TaskRegistry()
    lock = threading.Lock()
    state = {"now": 0, "max": 0}
    release = threading.Event()

    @task(name="tracked", registry=registry)
    def tracked() -> None:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        release.wait(0.05)
        with lock:
            state["now"] -= 1

    await start_worker(registry, concurrency=3, prefetch=5)
    handles = await client.submit_many([("tracked", {}) for _ in range(30)])
    for h in handles:
        await h.result(timeout=20)
    assert state["max"] == 3


async def test_a_worker_joining_later_picks_up_waiting_jobs(
    client: AsyncClient, start_worker
) -> None:
    handles = await client.submit_many([("add", {"a": i, "b": 1}) for i in range(10)])
    job = await handles[0].get()
    assert job.state is JobState.QUEUED
    await start_worker()
    assert [await h.result(timeout=10) for h in handles] == [i + 1 for i in range(10)]


async def test_unknown_task_waits_and_says_so(
    client: AsyncClient, broker: Broker, start_worker
) -> None:
    await start_worker()
    handle = await client.submit("no_such_task", x=1)
    reply = await client._request({"t": "get", "id": handle.id})
    assert reply["job"]["state"] == "queued"
    assert "no connected worker offers task 'no_such_task'" in reply["job"]["waiting"]
    stats = await client.stats()
    # submitted without a queue for a task nobody declared yet: unrouted ("")
    assert {"queue": "", "task": "no_such_task", "count": 1, "offered": False} in stats["waiting"]
    # a worker offering it joins: the job runs
    registry = TaskRegistry()

    @task(name="no_such_task", registry=registry)
    def late(x: int) -> int:
        return x + 41

    await start_worker(registry)
    assert await handle.result(timeout=10) == 42


async def test_brief_stats_are_states_and_totals(client: AsyncClient, start_worker) -> None:
    """STATS ``brief``: the states and event totals alone, the same numbers as the full
    reply, without the per-queue and per-task maps, workers or waiting lists."""
    await start_worker()
    done = await client.submit("add", a=1, b=2)
    assert await done.result(timeout=10) == 3
    await client.submit("no_such_task", queue="elsewhere")
    brief = await client.stats(brief=True)
    full = await client.stats()
    assert set(brief) == {"states", "totals"}
    assert brief["states"] == full["states"]
    assert brief["states"]["queued"] == 1
    assert brief["totals"] == full["totals"]
    assert brief["totals"]["completed"] == 1
    assert {"queues", "tasks", "workers", "waiting"} <= set(full)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"task": "add", "priority": 0}, "priority"),
        ({"task": "add", "priority": 11}, "priority"),
        ({"task": ""}, "task"),
        ({"task": "bad name!"}, "task"),
        ({"task": "add", "kwargs": {"blob": b"\x00\x01"}}, "kwargs"),
        ({"task": "add", "args": "not a list"}, "args"),
        ({"task": "add", "kwargs": {"big": "x" * 600_000}}, "payload"),
        ({"task": "add", "queue": ""}, "queue"),
    ],
)
async def test_invalid_submissions_name_the_field(
    client: AsyncClient, spec: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidJob) as info:
        await client._request({"t": "submit", "jobs": [{"id": "x1", **spec}]})
    assert info.value.field == field
    assert field in str(info.value) or field == "payload"
    # the connection and the broker keep serving
    handle = await client.submit("add", a=1, b=2)
    assert (await handle.get()).state is JobState.QUEUED


async def test_invalid_job_in_a_batch_rejects_the_batch(client: AsyncClient) -> None:
    with pytest.raises(InvalidJob) as info:
        await client.submit_many([("add", {"a": 1}), {"task": "add", "priority": 99}])
    assert info.value.field == "priority"
    assert "jobs[1]" in info.value.message
    assert (await client.stats())["states"]["queued"] == 0


async def test_result_waiting_from_sync_and_async_clients(
    client: AsyncClient, broker: Broker, home: Path, start_worker
) -> None:
    await start_worker()
    handle = await client.submit("slow_task", seconds=0.2)

    def sync_wait() -> object:
        with Client(broker.url, home=home) as sync_client:
            return sync_client.job(handle.id).result(timeout=10)

    sync_result, async_result = await asyncio.gather(
        asyncio.to_thread(sync_wait), handle.result(timeout=10)
    )
    assert sync_result == async_result == 0.2


async def test_failed_job_raises_job_failed(client: AsyncClient, start_worker) -> None:
    await start_worker()
    handle = await client.submit("fail", message="boom", retries=0)
    with pytest.raises(JobFailed, match="boom"):
        await handle.result(timeout=10)
    job = await handle.get()
    assert job.state is JobState.DEAD
    assert job.error is not None and job.error["type"] == "RuntimeError"
    assert "Traceback" in job.error["traceback"]


async def test_result_timeout_reports_current_state(client: AsyncClient) -> None:
    handle = await client.submit("noop")
    job = await handle.wait(timeout=0.05)
    assert job.state is JobState.QUEUED


async def test_plaintext_connection_refused_while_serving(
    client: AsyncClient, broker: Broker, start_worker
) -> None:
    await start_worker()

    def plaintext() -> bytes:
        with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            chunks = []
            while data := s.recv(4096):
                chunks.append(data)
            return b"".join(chunks)

    reply = await asyncio.to_thread(plaintext)
    decoder = FrameDecoder()
    decoder.receive_data(reply)
    frame = decoder.next_frame()
    assert isinstance(frame, dict) and frame["t"] == "error"
    assert "TLS" in frame["message"]
    assert broker.metrics["rejected_plaintext"] == 1
    assert await (await client.submit("add", a=2, b=3)).result(timeout=10) == 5


async def test_wrong_token_refused(broker: Broker, home: Path) -> None:
    bad = AsyncClient(broker.url, home=home, token="cvy_not-a-real-token", reconnect_timeout=0)
    with pytest.raises(AuthenticationError):
        await bad.connect()
    assert broker.metrics["auth_failures"] == 1


async def test_cli_submit_result_status_round_trip(
    broker: Broker, home: Path, start_worker
) -> None:
    await start_worker()
    env = dict(os.environ, CONVEYOR_HOME=str(home), CONVEYOR_BROKER_URL=broker.url)

    async def cli(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "conveyor",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        return out.decode().strip()

    assert await cli("submit", "fibonacci", "n=20", "--priority", "1", "--wait") == "6765"
    job_id = await cli("submit", "reverse_string", "data=hello")
    assert await cli("result", job_id, "--wait", "--timeout", "10") == '"olleh"'
    status = await cli("status", job_id)
    assert job_id in status and "completed" in status
    assert "completed" in await cli("jobs", "--state", "completed", "--limit", "5")
    assert "completed 2" in await cli("stats")


async def test_cancel_of_a_prefetched_job_is_immediate(
    client: AsyncClient, broker: Broker, start_worker
) -> None:
    gate = Gate()
    await start_worker(gated_registry(gate), concurrency=1, prefetch=1)
    blocker = await client.submit("gated", kwargs={"label": "blocker"})
    await asyncio.to_thread(gate.wait_started, "blocker")
    waiting = await client.submit("gated", kwargs={"label": "never"})
    await broker.wait_until(lambda: broker.dispatcher.dispatched >= 2)  # held by the worker
    await waiting.cancel()
    job = await waiting.wait(timeout=5)  # while the blocker still runs
    assert job.state is JobState.CANCELLED
    gate.open()
    assert await blocker.result(timeout=10) == "blocker"
    assert gate.order == ["blocker"]
