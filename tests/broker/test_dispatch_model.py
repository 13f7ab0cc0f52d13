"""Dispatch against a plain model: every claim, on the real memory and SQLite stores, takes
exactly the jobs a brute-force scan of the queued jobs says it should.

A seeded random run over many queues and tasks: workers join (with task sets equal but
built apart, so they share the dispatcher's set, and reconnect with other tasks) and leave
(their jobs go back to the front), jobs are submitted (some unrouted), reported, released
and cancelled, queues are paused and resumed, and passes run. The store's ``job_claim`` is
wrapped: before each claim the model says which jobs the worker may take (its tasks, its
queues not paused, and the unrouted jobs of its tasks), most urgent first (priority, then
the sequence the store gave them), and the claim must return exactly the first of those.
The passes are run by hand (the dispatcher's triggers are off), so nothing claims between
a change and the model's record of it.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.broker.config import BrokerConfig
from conveyor.broker.core import BrokerCore
from conveyor.broker.dispatch import WorkerRef
from conveyor.clock import FakeClock
from conveyor.job import DEFAULT_QUEUE, UNROUTED, JobRecord, JobState
from conveyor.lifecycle import Outcome
from conveyor.protocol.payload import EMPTY_CALL, pack
from conveyor.security.tokens import TokenRegistry
from conveyor.stores import open_store
from conveyor.stores.base import Claimant
from conveyor.stores.memory import MemoryStore
from conveyor.stores.sqlite import SqliteStore
from tests.broker.test_core import FakeLink

QUEUES = [f"q{i}" for i in range(200)]
TASKS = [f"t{i}" for i in range(4)]


class Model:
    """What the jobs are, as the test made them; which are queued; who holds what."""

    def __init__(self, core: BrokerCore) -> None:
        self.core = core
        self.live = core.store.live  # type: ignore[attr-defined]
        self.jobs: dict[str, tuple[str, str, int]] = {}  # id -> (queue, task, priority)
        self.queued: set[str] = set()
        self.paused: set[str] = set()
        self.declared: dict[str, tuple[set[str], set[str], dict[str, str]]] = {}
        self.claims = 0

    def expected(self, worker: str, limit: int) -> list[str]:
        tasks, queues, _ = self.declared[worker]
        open_queues = (queues - self.paused) | {UNROUTED}
        ranked = sorted(
            (self.jobs[j][2], self.live.seq_of(j), j)
            for j in self.queued
            if self.jobs[j][1] in tasks and self.jobs[j][0] in open_queues
        )
        return [j for _, _, j in ranked[:limit]]

    def wrap_claims(self) -> None:
        store = self.core.store
        claim = store.job_claim

        async def checked(
            claimant: Claimant, limit: int, lease_seconds: float, now: float
        ) -> list[JobRecord]:
            want = self.expected(claimant.worker, limit)
            got = await claim(claimant, limit, lease_seconds, now)
            assert [j.id for j in got] == want, (self.claims, claimant.worker)
            _, _, routes = self.declared[claimant.worker]
            for j in got:
                queue, task, _ = self.jobs[j.id]
                assert j.queue == (routes.get(task, DEFAULT_QUEUE) if queue == UNROUTED else queue)
                self.jobs[j.id] = (j.queue, task, j.priority)
                self.queued.discard(j.id)
            assert len(self.live.ready) == len(self.queued)
            self.claims += 1
            return got

        store.job_claim = checked  # type: ignore[method-assign]

    async def back(self, ids: list[str]) -> None:
        """These jobs left a worker: queued again unless they ended."""
        for job in await self.core.get_many(ids, payload=False):
            if job.state is JobState.QUEUED:
                self.queued.add(job.id)


async def run(core: BrokerCore, seed: int, steps: int) -> int:
    rng = random.Random(seed)
    model = Model(core)
    model.wrap_claims()
    dispatcher = core.dispatcher
    dispatcher.trigger = lambda: None  # type: ignore[method-assign]
    workers: list[WorkerRef] = []
    serial = 0
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.08 or not workers:  # a worker joins, its task list in its own order
            tasks = rng.sample(TASKS, rng.randint(1, len(TASKS)))
            queues = rng.sample(QUEUES, rng.choice([1, 3, 20, 200]))
            routes = {t: rng.choice(queues) for t in tasks if rng.random() < 0.5}
            w = core.workforce.worker_join(
                name="w",
                tasks=list(tasks),
                queues=queues,
                concurrency=rng.randint(1, 3),
                prefetch=rng.randint(0, 2),
                link=FakeLink(),
                routes=routes,
            )
            model.declared[w.id] = (set(tasks), set(queues), routes)
            workers.append(w)
        elif roll < 0.12:  # a worker leaves: its jobs go back in front
            w = workers.pop(rng.randrange(len(workers)))
            held = list(w.holding)
            core.workforce.worker_left(w)
            await core.settle()
            await model.back(held)
        elif roll < 0.40:  # jobs are submitted
            batch = []
            for _ in range(rng.randint(1, 8)):
                serial += 1
                busy = QUEUES[: rng.choice([5, 200])]
                queue = UNROUTED if rng.random() < 0.1 else rng.choice(busy)
                task, priority = rng.choice(TASKS), rng.randint(1, 10)
                job = JobRecord(
                    id=f"j{serial}", task=task, payload=EMPTY_CALL, queue=queue, priority=priority
                )
                batch.append(job)
            for inserted in await core.submit(batch):
                j = inserted.job
                model.jobs[j.id] = (j.queue, j.task, j.priority)
                model.queued.add(j.id)
        elif roll < 0.55:  # a worker reports or releases some of its jobs
            w = rng.choice(workers)
            some = {i: lease for i, lease in w.holding.items() if rng.random() < 0.6}
            if rng.random() < 0.7:
                await core.workforce.report(
                    w, [Outcome(i, lease, True, pack(None)) for i, lease in some.items()]
                )
            else:
                await core.workforce.release(w, some)
                await model.back(list(some))
        elif roll < 0.60 and model.queued:  # a queued job is cancelled
            victim = rng.choice(sorted(model.queued))
            await core.cancel(victim)
            model.queued.discard(victim)
        elif roll < 0.68:  # a queue is paused or resumed (mostly among the busy ones)
            queue = rng.choice(QUEUES[: rng.choice([5, 200])])
            paused = queue not in model.paused
            if paused:
                model.paused.add(queue)
            else:
                model.paused.discard(queue)
            await core.pause(queue, paused)
        else:
            await dispatcher.run_once()
    return model.claims


@pytest.fixture(params=["memory", "sqlite", "sqlite-evicting"])
async def core(request: pytest.FixtureRequest, home: Path, tmp_path: Path) -> AsyncIterator[Any]:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = {
        "memory": lambda: MemoryStore(),
        "sqlite": lambda: open_store(url),
        "sqlite-evicting": lambda: SqliteStore(url, resident=16),  # claims read back
    }[request.param]()
    config = BrokerConfig(home=home, lease=30.0, retention=100.0)
    c = BrokerCore(config, store, TokenRegistry(home / "tokens.json"), FakeClock())
    await c.open()
    try:
        yield c
    finally:
        await c.close()


@pytest.mark.parametrize("seed", range(3))
async def test_every_claim_takes_what_a_scan_of_the_queued_jobs_says(
    core: BrokerCore, seed: int
) -> None:
    assert await run(core, seed, 700) > 100
