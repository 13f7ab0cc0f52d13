"""The broker's schedules on the core, with a fake clock: once per slot, catch-up after a
restart, two brokers on one store, pruned runs, pause, run-now, declarations."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor.broker.config import BrokerConfig, Limits
from conveyor.broker.core import BrokerCore
from conveyor.broker.scheduler import Scheduler
from conveyor.clock import FakeClock
from conveyor.errors import Conflict, JobNotFound
from conveyor.job import JobRecord, JobState
from conveyor.protocol.payload import EMPTY_CALL
from conveyor.schedules import Schedule, job_schedule, parse_schedule, slot_job_id
from conveyor.security.tokens import TokenRegistry
from conveyor.stores import open_store
from conveyor.stores.base import JobFilter, Store

T0 = 1_700_000_000.0  # a multiple of 10 s


def spec(name: str = "tick", **fields: object) -> Schedule:
    return parse_schedule({"name": name, "task": "t", "every": "10s", **fields}, T0)


async def slots(core: BrokerCore, name: str = "tick") -> list[float]:
    page = await core.store.job_list(JobFilter(), 1000)
    found = [job_schedule(j.id) for j in page.jobs]
    return sorted(s[1] for s in found if s is not None and s[0] == name and s[1] is not None)


class Brokers:
    """Cores over one store URL, opened and closed like broker processes."""

    def __init__(self, home: Path, url: str, clock: FakeClock) -> None:
        self.home, self.url, self.clock = home, url, clock

    async def open(self, store: Store | None = None) -> BrokerCore:
        core = BrokerCore(
            BrokerConfig(home=self.home, retention=100.0),
            store or open_store(self.url),
            TokenRegistry(self.home / "tokens.json"),
            self.clock,
        )
        await core.open()
        return core


@pytest.fixture(params=["memory", "sqlite"])
def brokers(request: pytest.FixtureRequest, home: Path, tmp_path: Path) -> Brokers:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/c.db"
    return Brokers(home, url, FakeClock(T0))


@pytest.fixture
async def core(brokers: Brokers) -> AsyncIterator[BrokerCore]:
    c = await brokers.open()
    try:
        yield c
    finally:
        await c.close()


async def test_a_schedule_fires_once_per_slot(core: BrokerCore) -> None:
    clock = core.clock
    assert isinstance(clock, FakeClock)
    info = await core.schedules.add(spec())
    assert info["next_run"] == T0 + 10 and info["last_run"] is None
    assert await core.schedules.fire_due(T0 + 9.9) == 0
    for step in (10.0, 10.5, 19.9, 20.0, 20.0, 30.2):  # twice at 20: still one job
        clock.advance(step - (clock.now() - T0))
        await core.schedules.fire_due(clock.now())
    assert await slots(core) == [T0 + 10, T0 + 20, T0 + 30]
    job = await core.get(slot_job_id("tick", T0 + 30))
    assert (job.task, job.state, job.queue) == ("t", JobState.QUEUED, "")  # routed by task
    [listed] = await core.schedules.list_all()
    assert listed["last_run"] == T0 + 30 and listed["last_job"] == job.id
    assert listed["next_run"] == T0 + 40 and core.schedules.next_due == T0 + 40


async def test_the_scheduler_service_sleeps_until_the_next_slot(core: BrokerCore) -> None:
    service = Scheduler(core, core.clock)
    assert await service.next_delay() == Scheduler.max_sleep  # nothing scheduled
    await core.schedules.add(spec(every="2s"))
    await service.run_once(T0 + 0.5)
    assert await service.next_delay() == pytest.approx(2.005)
    await service.run_once(T0 + 2.0)
    assert await slots(core) == [T0 + 2]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("all", [10, 20, 30, 40, 50, 60]), ("one", [20, 60]), ("none", [20])],
)
async def test_catch_up_after_a_restart(
    home: Path, tmp_path: Path, policy: str, expected: list[int]
) -> None:
    clock = FakeClock(T0)
    brokers = Brokers(home, f"sqlite:///{tmp_path}/c.db", clock)
    first = await brokers.open()
    await first.schedules.add(spec(catch_up=policy))
    clock.advance(20)
    await first.schedules.fire_due(clock.now())
    await first.close()
    clock.advance(46)  # down over the slots 30, 40, 50, 60 (now 66: 60 is 6 s late)
    again = await brokers.open()
    try:
        await again.schedules.fire_due(clock.now())
        await again.schedules.fire_due(clock.now())
        assert await slots(again) == [T0 + s for s in expected]
        clock.advance(5)
        await again.schedules.fire_due(clock.now())  # and on from there: 70
        assert (await slots(again))[-1] == T0 + 70
    finally:
        await again.close()


async def test_two_brokers_on_one_store_fire_each_slot_once(home: Path) -> None:
    clock = FakeClock(T0)
    brokers = Brokers(home, "memory://", clock)
    store = open_store("memory://")
    a, b = await brokers.open(store), await brokers.open(store)
    await a.schedules.add(spec())
    for _ in range(6):
        clock.advance(5)
        # both rounds see the same slot due; the store keeps the first job of that id
        made = await a.schedules.fire_due(clock.now()) + await b.schedules.fire_due(clock.now())
        assert made <= 1
    assert await slots(a) == [T0 + 10, T0 + 20, T0 + 30]
    assert (await b.schedules.get("tick"))["last_run"] == T0 + 30


async def test_a_lost_record_or_a_pruned_job_does_not_fire_a_slot_again(core: BrokerCore) -> None:
    await core.schedules.add(spec())
    assert await core.schedules.fire_due(T0 + 10) == 1
    # a crash between the submit and the record of the slot: the job's id still says no
    await core.store.meta_set("schedules.state", {"tick": {"last": T0}})
    assert await core.schedules.fire_due(T0 + 10) == 0
    # retention prunes the finished run: the record of the slot still says no
    await core.cancel(slot_job_id("tick", T0 + 10))
    assert await core.store.job_prune(T0 + 1000) == 1
    assert await core.schedules.fire_due(T0 + 10) == 0
    assert await slots(core) == []


async def test_pause_skips_slots_and_resume_goes_on_from_now(core: BrokerCore) -> None:
    await core.schedules.add(spec(catch_up="all"))
    paused = await core.schedules.pause("tick", True)
    assert paused["paused"] and paused["next_run"] is None
    assert await core.schedules.fire_due(T0 + 35) == 0
    assert isinstance(core.clock, FakeClock)
    core.clock.advance(35)
    resumed = await core.schedules.pause("tick", False)
    assert resumed["next_run"] == T0 + 40
    await core.schedules.fire_due(T0 + 40)
    assert await slots(core) == [T0 + 40]  # not 10, 20, 30: they passed while paused


async def test_run_now_fires_outside_the_slots_even_when_paused(core: BrokerCore) -> None:
    await core.schedules.add(spec(paused=True, kwargs={"x": 1}))
    inserted = await core.schedules.run_now("tick")
    assert inserted.created and job_schedule(inserted.job.id) == ("tick", None)
    assert (await core.schedules.get("tick"))["last_job"] == inserted.job.id


async def test_add_remove_and_unknown_names(core: BrokerCore) -> None:
    await core.schedules.add(spec())
    with pytest.raises(Conflict):
        await core.schedules.add(spec(every="1m"))
    replaced = await core.schedules.add(spec(every="1m"), replace=True)
    assert replaced["every"] == 60
    await core.schedules.remove("tick")
    assert await core.schedules.list_all() == []
    assert await core.schedules.fire_due(T0 + 600) == 0
    for call in (
        core.schedules.remove("tick"),
        core.schedules.pause("tick", True),
        core.schedules.run_now("tick"),
        core.schedules.get("tick"),
    ):
        with pytest.raises(JobNotFound, match="no schedule named 'tick'"):
            await call
    again = await core.schedules.add(spec())  # a new one starts afresh
    assert again["last_run"] is None and again["next_run"] == T0 + 10


async def test_a_declaration_keeps_the_pause_and_the_state(core: BrokerCore) -> None:
    code = spec("t", every="10s")
    await core.schedules.declare([code.replace(source="code")])
    await core.schedules.fire_due(T0 + 10)
    await core.schedules.pause("t", True)
    await core.schedules.declare([code.replace(source="code", every=20, created_at=T0 + 50)])
    info = await core.schedules.get("t")
    assert info["paused"] and info["every"] == 20 and info["last_run"] == T0 + 10
    assert info["created_at"] == T0


async def test_a_full_queue_holds_back_only_its_own_schedule(home: Path) -> None:
    limits = dataclasses.replace(Limits(), max_queued_by_queue=(("small", 1),))
    core = BrokerCore(
        BrokerConfig(home=home, limits=limits),
        open_store("memory://"),
        TokenRegistry(home / "tokens.json"),
        FakeClock(T0),
    )
    await core.open()
    try:
        [filler] = await core.submit([JobRecord(id="filler", task="t", payload=EMPTY_CALL,
                                                queue="small")])  # fmt: skip
        await core.schedules.add(spec("full", queue="small"))
        await core.schedules.add(spec("free"))
        assert await core.schedules.fire_due(T0 + 10) == 1  # the batch was refused; free
        assert await slots(core, "full") == [] and await slots(core, "free") == [T0 + 10]
        assert core.schedules.next_due == T0 + 11  # the refused one is tried again soon
        await core.cancel(filler.job.id)  # room again
        assert await core.schedules.fire_due(T0 + 11) == 1
        assert await slots(core, "full") == [T0 + 10]  # the slot was not lost
    finally:
        await core.close()
