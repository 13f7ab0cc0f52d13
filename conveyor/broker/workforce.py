"""The worker-facing half of the broker's service: join, report, release, heartbeat, leave.

Theory of operation
-------------------
The broker core (:mod:`conveyor.broker.core`) composes one :class:`Workforce` and hands
it the worker-facing calls: the worker routes in ``routes/workers.py``, the session when a
connection closes, and the :class:`~conveyor.broker.maintenance.LeaseReaper`. Like the
rest of the core it changes jobs only through the core's one way,
:meth:`Core.transition` (computed by :mod:`conveyor.lifecycle`, applied conditionally);
it keeps no job state of its own.

What it does keep is what workers tell it: each connected worker's :class:`WorkerRef`
(held through the core's dispatcher: which jobs it holds under which lease, which it has
started), the queue each task is declared on (:attr:`Workforce.routes`, durable, so a
submit naming no queue goes there) and each task's announced options. So it knows,
without asking the store, whose jobs go back when a worker is lost or goes silent, and
whether that run counts as an attempt. A result or a release counts only from the holder
of the job under that very lease.

This module sits below the core: it reaches the core through the narrow :class:`Core`
protocol and never imports it.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Protocol

from conveyor import lifecycle
from conveyor.broker.backlog import Backlog
from conveyor.broker.config import BrokerConfig
from conveyor.broker.dispatch import Dispatcher, WorkerLink, WorkerRef
from conveyor.broker.events import EventHub, WorkerChanged, WorkerJoined, WorkerLeft
from conveyor.broker.limiter import Limiter
from conveyor.clock import Clock
from conveyor.job import JobRecord, JobState
from conveyor.lifecycle import Outcome, TaskOptions, Transition
from conveyor.stores.base import Store

log = logging.getLogger("conveyor.broker")

ROUTES = "routes"  # the store setting that keeps task -> queue


class Core(Protocol):
    """What the workforce needs of the broker core (:class:`~conveyor.broker.core.BrokerCore`
    is one): its parts, the one way jobs change, and background work."""

    config: BrokerConfig
    store: Store
    clock: Clock
    hub: EventHub
    dispatcher: Dispatcher
    backlog: Backlog
    limiter: Limiter
    metrics: Counter[str]

    async def transition(
        self,
        ids: Iterable[str],
        compute: Callable[[JobRecord], Transition | None],
        *,
        durable: bool = True,
    ) -> list[JobRecord]: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...


def requeue_if_held(
    job: JobRecord, held: Mapping[str, int | None], now: float, reason: str, charged: bool
) -> Transition | None:
    """Requeue a job still running under the lease ``held`` says; else nothing."""
    if job.state is not JobState.RUNNING or job.lease != held.get(job.id):
        return None  # it moved on already (reported, or requeued by someone else)
    return lifecycle.requeue(job, now, reason, charged)


class Workforce:
    """Worker join and leave, report, release, heartbeat, drain; the lease reaper's work."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.routes: dict[str, str] = {}  # task -> queue, as workers announce them
        self._options: dict[str, TaskOptions] = {}  # task -> its options, as last announced
        self._worker_seq = itertools.count(1)

    # -- workers -------------------------------------------------------------------------
    def worker_join(
        self,
        *,
        name: str,
        tasks: Iterable[str],
        queues: Iterable[str],
        concurrency: int,
        prefetch: int,
        link: WorkerLink,
        options: Mapping[str, TaskOptions] | None = None,
        routes: Mapping[str, str] | None = None,
        pool: str = "",
        peer: str = "",
        host: str = "",
        pid: int | None = None,
    ) -> WorkerRef:
        now = self.core.clock.now()
        routes = dict(routes or {})
        worker = WorkerRef(
            id=f"{name}#{next(self._worker_seq)}",
            name=name,
            tasks=frozenset(tasks),
            queues=tuple(dict.fromkeys(queues)),
            concurrency=concurrency,
            prefetch=prefetch,
            link=link,
            options=dict(options or {}),
            routes=routes,
            pool=pool,
            peer=peer,
            host=host,
            pid=pid,
            connected_at=now,
            last_heartbeat=now,
        )
        log.info(
            "worker %s joined from %s: tasks=%s queues=%s concurrency=%d",
            worker.id,
            peer,
            ",".join(sorted(worker.tasks)) or "-",
            ",".join(worker.queues),
            concurrency,
        )
        self._options.update(worker.options)
        self.core.limiter.learn(worker.options)
        self._learn_routes(routes)
        self.core.dispatcher.add(worker)
        self.core.hub.publish(WorkerJoined(worker, now))
        return worker

    def _learn_routes(self, routes: Mapping[str, str]) -> None:
        """Keep the queue each task is declared on, durably: later submits that name no
        queue go there, across restarts."""
        fresh = {t: q for t, q in routes.items() if self.routes.get(t) != q}
        if fresh:
            self.routes.update(fresh)
            self.core.spawn(self.core.store.meta_set(ROUTES, dict(self.routes)))

    def known_options(self, task: str) -> TaskOptions | None:
        """The task's options as the last worker offering it announced them."""
        return self._options.get(task)

    def worker_left(self, worker: WorkerRef, reason: str = "worker lost") -> None:
        """The worker's connection closed: its jobs go back (started runs are charged)."""
        if self.core.dispatcher.remove(worker.id) is None:
            return
        log.info("worker %s left (%d job(s) held)", worker.id, len(worker.holding))
        self.core.spawn(self._requeue_held(worker, reason))
        self.core.hub.publish(WorkerLeft(worker, reason, self.core.clock.now()))

    async def _requeue_held(self, worker: WorkerRef, reason: str) -> list[JobRecord]:
        now = self.core.clock.now()
        # newest first, so the oldest ends in front of its priority
        held = dict(reversed(worker.holding.items()))
        started = set(worker.started)
        worker.holding.clear()
        worker.started.clear()
        jobs = await self.core.transition(
            held, lambda r: requeue_if_held(r, held, now, reason, r.id in started)
        )
        if jobs:
            requeued = sum(1 for j in jobs if j.state is JobState.QUEUED)
            self.core.metrics["requeued"] += requeued
            log.warning("%s: requeued %d job(s) of worker %s", reason, requeued, worker.id)
        return jobs

    async def orphaned(self, worker: WorkerRef, jobs: list[JobRecord]) -> None:
        """The dispatcher claimed jobs for a worker that left meanwhile: straight back."""
        now = self.core.clock.now()
        for job in jobs:
            self.core.backlog.claimed(job, worker.claimant.route(job.task))
        held = {j.id: j.lease for j in reversed(jobs)}
        await self.core.transition(
            held, lambda r: requeue_if_held(r, held, now, "worker lost", charged=False)
        )

    async def report(self, worker: WorkerRef, outcomes: Sequence[Outcome]) -> None:
        """Apply results. Only those for jobs this worker holds, under that very lease,
        count; the credit comes back at once, before the store commits."""
        mine: dict[str, Outcome] = {}
        for outcome in outcomes:
            if worker.holding.get(outcome.id) == outcome.lease:
                worker.give_back(outcome.id)
                mine[outcome.id] = outcome
        if not mine:
            return
        self.core.dispatcher.trigger()
        now = self.core.clock.now()

        def compute(job: JobRecord) -> Transition | None:
            outcome = mine[job.id]
            if job.state is not JobState.RUNNING or job.lease != outcome.lease:
                return None
            return lifecycle.report(job, outcome, now)

        for job in await self.core.transition(mine, compute):
            if job.state is JobState.COMPLETED:
                worker.completed += 1
            else:
                worker.failed += 1

    async def release(self, worker: WorkerRef, leases: Mapping[str, int]) -> None:
        """The worker gives back jobs it never started (a started one is charged, as if
        its worker had been lost: a release cannot be a way to get attempts back)."""
        mine = {i: lease for i, lease in leases.items() if worker.holding.get(i) == lease}
        if not mine:
            return
        started = {i for i in mine if i in worker.started}
        for job_id in mine:
            worker.give_back(job_id)
        now = self.core.clock.now()

        def compute(r: JobRecord) -> Transition | None:
            if r.state is not JobState.RUNNING or r.lease != mine[r.id]:
                return None
            if r.id in started:
                return lifecycle.requeue(r, now, "released after it started", charged=True)
            return lifecycle.release(r, now)

        await self.core.transition(mine, compute)
        self.core.dispatcher.trigger()

    def heartbeat(self, worker: WorkerRef, running: Iterable[str]) -> None:
        """The worker is alive; ``running`` are jobs it has started (attempts count now)."""
        now = self.core.clock.now()
        worker.last_heartbeat = now
        changed = False
        for job_id in running:
            if job_id in worker.holding and job_id not in worker.started:
                worker.started[job_id] = now
                changed = True
        if worker.stalled:
            worker.stalled, changed = False, True
            log.info("worker %s is heartbeating again", worker.id)
            self.core.dispatcher.trigger()
        if changed:
            self.core.hub.publish(WorkerChanged(worker, now))

    def drain(self, worker: WorkerRef) -> None:
        worker.draining = True

    # -- the lease reaper and the deadline -----------------------------------------------
    async def reap(self, now: float) -> int:
        """Workers silent for a lease lose their jobs (and get none until they heartbeat);
        runs past their timeout plus the grace fail. Returns how many jobs moved."""
        moved = 0
        for worker in list(self.core.dispatcher.workers.values()):
            if now - worker.last_heartbeat > self.core.config.lease:
                if not worker.stalled:
                    log.warning(
                        "worker %s sent no heartbeat for %.1fs; its jobs are requeued and it "
                        "gets none until it heartbeats again",
                        worker.id,
                        now - worker.last_heartbeat,
                    )
                worker.stalled = True  # idle or not: it gets nothing until it heartbeats
                if worker.holding:
                    moved += len(await self._requeue_held(worker, "lease expired"))
            else:
                moved += await self._enforce_deadlines(worker, now)
        return moved

    async def _enforce_deadlines(self, worker: WorkerRef, now: float) -> int:
        grace = self.core.config.deadline_grace
        overdue: dict[str, int] = {}
        limits: dict[str, float] = {}
        for job_id, started in worker.started.items():
            timeout = worker.timeouts.get(job_id)
            if timeout is not None and now > started + timeout + grace:
                overdue[job_id] = worker.holding[job_id]
                limits[job_id] = timeout
        if not overdue:
            return 0
        for job_id, lease in overdue.items():
            worker.give_back(job_id)
            worker.link.abort(job_id, lease)
        log.warning("worker %s: %d job(s) past their deadline failed", worker.id, len(overdue))
        jobs = await self.core.transition(
            overdue,
            lambda r: (
                lifecycle.deadline(r, now, limits[r.id], grace)
                if r.state is JobState.RUNNING and r.lease == overdue[r.id]
                else None
            ),
        )
        self.core.dispatcher.trigger()
        return len(jobs)
