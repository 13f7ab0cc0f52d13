"""Limits hold across two brokers on one PostgreSQL schema, with workers on each (real
sockets, real workers, real PostgreSQL): a rate limit is the store's bucket, a key's
running jobs are counted in the database, and a limit set on one broker applies on the
other. The tasks record when they ran; the test checks what the brokers let through."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from conveyor import AsyncClient
from conveyor.broker.app import Broker
from conveyor.worker.runner import Worker
from conveyor.worker.tasks import TaskRegistry, task
from tests.broker.test_limits_e2e import Record, _max_overlap, assert_rate, rate_of, registry
from tests.postgres import pg_url, two_brokers

pytestmark = pytest.mark.postgres
__all__ = ["pg_url", "two_brokers"]

Brokers = tuple[Broker, Broker]


@pytest.fixture
async def workers(home: Path) -> AsyncIterator[Callable[..., object]]:
    """``await start(broker, registry, concurrency=2)``: an in-process worker on a broker."""
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(broker: Broker, reg: TaskRegistry, concurrency: int = 2) -> Worker:
        worker = Worker(registry=reg, url=broker.url, home=home, concurrency=concurrency)
        running.append((worker, asyncio.get_running_loop().create_task(worker.run())))
        await asyncio.wait_for(worker.connected.wait(), 10)
        return worker

    yield start
    for worker, _ in running:
        worker.stop()
    for _, t in running:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(t, 10)


async def until(predicate: Callable[[], bool]) -> None:
    """The test's own poll (a change another broker made arrives by NOTIFY, in the
    background): until ``predicate()`` holds, at most 10 s."""
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.01)


async def _run(client: AsyncClient, name: str, n: int, **options: object) -> None:
    handles = [await client.submit(name, **options) for _ in range(n)]
    await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 60)


async def test_a_rate_limit_holds_across_two_brokers_with_two_workers_each(
    two_brokers: Brokers, workers: Callable[..., object], home: Path
) -> None:
    a, b = two_brokers
    record = Record()
    for broker in (a, b):
        for _ in range(2):
            await workers(broker, registry(record))  # type: ignore[misc]
    async with AsyncClient(a.url, home=home) as client:
        await client.limits(set={"task:limited": "5/s"})
        await until(lambda: "task:limited" in b.core.limiter.table)
        handles = [await client.submit("limited") for _ in range(21)]  # 4 seconds at 5/s
        held = 0
        while not held:  # the test's own poll: stats say the limit holds jobs back
            held = (await client.stats())["limits"]["held_by_rate"]
            await asyncio.sleep(0.02)
        await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 60)
    measured = rate_of(record.starts)
    print(
        f"two brokers, 4 workers: {measured:.3f}/s; dispatched A {a.dispatcher.dispatched}"
        f" B {b.dispatcher.dispatched}"
    )
    assert_rate(record.starts)
    # each broker dispatched some: the limit is shared, not one broker doing all the work
    assert a.dispatcher.dispatched > 0 and b.dispatcher.dispatched > 0
    assert a.dispatcher.dispatched + b.dispatcher.dispatched == 21
    for broker in (a, b):
        rates = (await broker.core.stats())["limits"]["rates"]
        (rate,) = [r for r in rates if r["target"] == "task:limited"]
        assert rate["shared"] is True and rate["source"] == "broker"


async def test_a_key_limit_of_two_is_never_exceeded_across_two_brokers(
    two_brokers: Brokers, workers: Callable[..., object], home: Path
) -> None:
    a, b = two_brokers
    record = Record()
    for broker in (a, b):
        for _ in range(2):
            await workers(broker, registry(record))  # type: ignore[misc]  8 slots in all
    async with AsyncClient(a.url, home=home) as client:
        keyed = [
            await client.submit("fetch", key="a", concurrency_key="domain:a") for _ in range(10)
        ]
        keyed += [
            await client.submit("fetch", key="b", concurrency_key="domain:b") for _ in range(4)
        ]
        seen: dict[str, int] = {}
        while not seen:  # the test's own poll: until the database holds some back
            limits = (await client.stats())["limits"]
            seen = limits["waiting_for_key"]
            await asyncio.sleep(0.02)
        assert limits["waiting_for_keys"] == sum(seen.values()) and limits["shared"]
        quick = [await client.submit("quick") for _ in range(8)]
        await asyncio.wait_for(asyncio.gather(*(h.result() for h in quick)), 30)
        quick_done = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(h.result() for h in keyed)), 60)
        after = (await client.stats())["limits"]
    runs = {key: [(s, e) for k, s, e in record.runs if k == key] for key in ("a", "b")}
    assert len(runs["a"]) == 10 and len(runs["b"]) == 4
    for key, spans in runs.items():
        assert _max_overlap(spans) == 2, (key, spans)  # the limit across both, and no less
    assert quick_done < max(s for s, _ in runs["a"])  # not blocked behind domain:a
    assert after["running_by_key"] == {} and after["waiting_for_key"] == {}
    assert b.dispatcher.dispatched > 0 and a.dispatcher.dispatched > 0


def _keyed(record: Record, name: str, seconds: float) -> TaskRegistry:
    reg = TaskRegistry()

    @task(name=name, registry=reg)
    def run(key: str) -> None:
        start = time.monotonic()
        time.sleep(seconds)
        with record.lock:
            record.runs.append((key, start, time.monotonic()))

    return reg


async def test_a_slot_freed_on_one_broker_releases_the_job_waiting_on_the_other(
    two_brokers: Brokers, workers: Callable[..., object], home: Path
) -> None:
    a, b = two_brokers
    record = Record()
    await workers(b, _keyed(record, "on_b", 0.5))  # type: ignore[misc]
    await workers(a, _keyed(record, "on_a", 0.0))  # type: ignore[misc]
    async with AsyncClient(a.url, home=home) as client:
        await client.limits(set={"key:site:": 1})
        await until(lambda: "key:site:" in b.core.limiter.table)
        first = await client.submit("on_b", key="b", concurrency_key="site:x")
        await b.wait_until(lambda: b.dispatcher.dispatched == 1)
        second = await client.submit("on_a", key="a", concurrency_key="site:x")
        # nothing else happens on broker A: only B's NOTIFY of the freed slot can start it
        await asyncio.wait_for(second.result(), 10)
        await first.result(timeout=10)
    (_, _, b_end), (_, a_start, _) = sorted(record.runs, key=lambda r: r[1])
    assert a_start >= b_end  # one at a time: A's job waited for B's slot
    assert a.dispatcher.dispatched == 1


async def test_a_limit_set_on_one_broker_applies_on_the_other(
    two_brokers: Brokers, workers: Callable[..., object], home: Path
) -> None:
    a, b = two_brokers
    record = Record()
    await workers(b, registry(record), concurrency=4)  # type: ignore[misc]
    async with AsyncClient(a.url, home=home) as on_a, AsyncClient(b.url, home=home) as on_b:
        await on_a.limits(set={"task:limited": "5/s"})
        await until(lambda: "task:limited" in b.core.limiter.table)
        assert (await on_b.limits())["set"] == {"task:limited": "5/s"}
        await _run(on_b, "limited", 16)  # 3 seconds at 5/s, all through broker B
        assert_rate(record.starts)
        await on_a.limits(clear=["task:limited"])
        await until(lambda: not b.core.limiter.table)
        rates = (await on_b.limits())["rates"]
        assert [r["target"] for r in rates] == ["task:declared"]  # only the task's own
