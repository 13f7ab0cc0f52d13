"""The workflow service on its own: two brokers' cores over one store race to release a
chord's callback and exactly one wins; a release lost in a crash happens at open."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conveyor import lifecycle
from conveyor.broker.config import BrokerConfig
from conveyor.broker.core import BrokerCore
from conveyor.broker.workflows import decide
from conveyor.clock import FakeClock
from conveyor.job import FEED_RESULTS, JobRecord, JobState
from conveyor.lifecycle import Outcome
from conveyor.protocol.payload import EMPTY_CALL, pack, unpack
from conveyor.security.tokens import TokenRegistry
from conveyor.stores import open_store
from conveyor.stores.base import Claimant, Store


def job(job_id: str, **fields: object) -> JobRecord:
    return JobRecord(id=job_id, task="t", payload=EMPTY_CALL, **fields)  # type: ignore[arg-type]


async def _complete(store: Store, n: int, now: float) -> None:
    """Run and complete ``n`` queued jobs straight in the store, member i returning i."""
    claimed = await store.job_claim(Claimant("w", ["default"], ["t"]), n, 30.0, now)
    await store.job_apply(
        [
            lifecycle.report(j, Outcome(j.id, j.lease or 0, True, pack(int(j.id[1:]))), now)
            for j in claimed
        ]
    )


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
async def test_two_cores_on_one_store_release_a_callback_exactly_once(
    engine: str, home: Path, tmp_path: Path
) -> None:
    store = open_store("memory://" if engine == "memory" else f"sqlite:///{tmp_path}/c.db")
    clock = FakeClock()
    tokens = TokenRegistry(home / "tokens.json")
    cores = [BrokerCore(BrokerConfig(home=home), store, tokens, clock) for _ in range(2)]
    await cores[0].open()
    members = [job(f"m{i}") for i in range(8)]
    callback = job("cb", depends_on=tuple(m.id for m in members), feed=FEED_RESULTS)
    # straight into the store: no core has looked at the callback yet
    await store.job_insert_many([lifecycle.born(j, clock.now()) for j in (*members, callback)])
    await _complete(store, 8, clock.now())
    waiting = await cores[0].get("cb")
    deps = {d.id: d for d in await store.job_get_many([m.id for m in members])}
    # two brokers computed the release from the same read: the store applies one
    first, second = (decide(waiting, deps, clock.now()) for _ in range(2))
    assert first is not None and second is not None
    won = [*await store.job_apply([first]), *await store.job_apply([second])]
    assert [r is not None for r in won] == [True, False]
    for _ in range(20):  # both look at once, many times over: one release at most
        await asyncio.gather(*(c.workflows.settle([waiting]) for c in cores))
    (released,) = await store.job_get_many(["cb"])
    assert released.state is JobState.QUEUED
    assert [e["event"] for e in await store.job_events("cb")].count("ready") == 1
    assert unpack(released.inputs or b"") == [list(range(8))]
    await cores[0].close()


async def test_a_release_lost_in_a_crash_happens_at_open(home: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    store = open_store(url)
    now = 1000.0
    await store.open(now)
    await store.job_insert_many(
        [lifecycle.born(job("m1"), now), lifecycle.born(job("nx", depends_on=("m1",)), now)]
    )
    await _complete(store, 1, now)  # completed, and the broker "died" before the release
    await store.close()
    core = BrokerCore(
        BrokerConfig(home=home), open_store(url), TokenRegistry(home / "t"), FakeClock()
    )
    await core.open()
    try:
        assert (await core.get("nx")).state is JobState.QUEUED
    finally:
        await core.close()


def test_decide_waits_releases_and_blocks() -> None:
    waiting, _ = lifecycle.born(job("w", depends_on=("a", "b"), feed=FEED_RESULTS), 0.0)
    done = job("a", state=JobState.COMPLETED, result=pack(1))
    running = job("b", state=JobState.RUNNING)
    assert decide(waiting, {"a": done, "b": running}, 1.0) is None
    dead = job("b", state=JobState.DEAD)
    blocked = decide(waiting, {"a": done, "b": dead}, 1.0)
    assert blocked is not None and blocked.new.state is JobState.CANCELLED
    ready = decide(waiting, {"a": done, "b": job("b", state=JobState.COMPLETED)}, 1.0)
    assert ready is not None and unpack(ready.new.inputs or b"") == [[1, None]]
    too_big = decide(waiting, {"a": done, "b": done}, 1.0, max_inputs=4)
    assert too_big is not None and too_big.new.state is JobState.CANCELLED
