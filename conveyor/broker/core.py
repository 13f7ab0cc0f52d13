"""The broker's core service: what the broker does, with no frames and no sockets.

Theory of operation
-------------------
Both faces of the broker (the protocol routes in ``routes/`` and the HTTP routes) are thin
layers over :class:`BrokerCore`: they check their input, call one method here and shape
the reply. Every change to a job is computed by :mod:`conveyor.lifecycle` and applied
through :meth:`BrokerCore._transition`: read the jobs, compute the transitions, apply them
conditionally, and compute again for any job that changed meanwhile. Each applied change
is published on :attr:`BrokerCore.hub` (waiting producers, the live feed and metrics
listen there) and wakes whoever moves the job on next (dispatcher, promoter).

The core owns the connected workers (through the dispatcher): which jobs each holds under
which lease, which it has started. So it knows, without asking the store, whose jobs go
back when a worker is lost or goes silent, and whether that run counts as an attempt.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

from conveyor import lifecycle
from conveyor.broker.backlog import Backlog
from conveyor.broker.config import BrokerConfig
from conveyor.broker.dispatch import Dispatcher, WorkerLink, WorkerRef
from conveyor.broker.events import (
    EventHub,
    JobChanged,
    QueueChanged,
    WorkerChanged,
    WorkerJoined,
    WorkerLeft,
)
from conveyor.broker.logins import Logins
from conveyor.broker.waiters import Notify, Waiters
from conveyor.clock import Clock
from conveyor.errors import ConveyorError, JobNotFound, StoreUnavailable
from conveyor.job import UNROUTED, Event, JobRecord, JobState
from conveyor.lifecycle import Outcome, TaskOptions, Transition
from conveyor.security.throttle import LoginThrottle
from conveyor.security.tokens import Role, TokenInfo, TokenRegistry
from conveyor.stores.base import Inserted, JobFilter, Page, Store

log = logging.getLogger("conveyor.broker")

_RETRIES = 5  # recomputations of a transition whose job changed meanwhile
ROUTES = "routes"  # the store setting that keeps task -> queue
PAUSED = "paused"  # the store setting that keeps the paused queues


class BrokerCore:
    """Submit, wait, cancel, report, release, heartbeat, DLQ, tokens, stats, events."""

    def __init__(
        self, config: BrokerConfig, store: Store, tokens: TokenRegistry, clock: Clock
    ) -> None:
        self.config = config
        self.store = store
        self.tokens = tokens
        self.clock = clock
        self.hub = EventHub()
        self.waiters = Waiters()
        self.dispatcher = Dispatcher(
            store, clock, config.lease, self._orphaned, on_claimed=self._claimed
        )
        self.routes: dict[str, str] = {}  # task -> queue, as workers announce them
        limits = config.limits
        self.backlog = Backlog(limits.max_queued, dict(limits.max_queued_by_queue))
        self._options: dict[str, TaskOptions] = {}  # task -> its options, as last announced
        self.metrics: Counter[str] = Counter()
        lim = config.limits
        self.logins = Logins(  # every login, socket and HTTP, behind one per-source throttle
            self.authenticate,
            LoginThrottle(
                free=lim.login_free_failures,
                first_delay=lim.login_delay_first,
                max_delay=lim.login_delay_max,
            ),
            self.metrics,
            lambda: self.clock.monotonic(),
        )
        self.started_at = 0.0
        self.on_scheduled: Callable[[], None] = lambda: None  # the promoter's wake-up
        self.on_tokens_changed: Callable[[], None] = lambda: None  # the token watch's wake-up
        self.info: dict[str, Any] = {}  # url, store url: set by the app, shown in stats
        self.gauges: dict[str, Callable[[], Any]] = {}  # live numbers for stats (connections)
        self._worker_seq = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- open and close ------------------------------------------------------------------
    async def open(self) -> None:
        """Open the store; requeue the jobs that were running when the broker stopped."""
        self.started_at = now = self.clock.now()
        running = await self.store.open(now)
        self.backlog.load((await self.store.stats())["queues"], await self.store.queue_waiting())
        self.routes.update(await self.store.meta_get(ROUTES) or {})
        self.dispatcher.paused.update(await self.store.meta_get(PAUSED) or ())
        if running:
            # each requeue goes in front of the last: newest first leaves the oldest in front
            held = {j.id: j.lease for j in reversed(running)}
            jobs = await self._transition(
                held, lambda r: self._requeue_if(r, held, now, "broker restart", charged=False)
            )
            log.warning("requeued %d job(s) that were running at the last stop", len(jobs))

    async def settle(self, timeout: float = 2.0) -> None:
        """Wait for the background work started so far (a lost worker's requeue ...)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def close(self) -> None:
        await self.settle()
        await self.store.close()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background; :meth:`close` waits for it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the one way jobs change ---------------------------------------------------------
    async def _transition(
        self,
        ids: Iterable[str],
        compute: Callable[[JobRecord], Transition | None],
        *,
        durable: bool = True,
    ) -> list[JobRecord]:
        """Read the jobs, compute their transitions, apply them conditionally; compute again
        for those that changed in between. Returns the jobs as they became."""
        pending = list(ids)
        changes: list[tuple[JobState | None, JobRecord]] = []
        for _ in range(_RETRIES):
            transitions = [t for r in await self.store.job_get_many(pending) if (t := compute(r))]
            if not transitions:
                break
            results = await self.store.job_apply(transitions, durable=False)
            pending = []
            for t, new in zip(transitions, results, strict=True):
                if new is None:
                    pending.append(t.old.id)
                else:
                    self.backlog.moved(t.old, new)
                    changes.append((t.old.state, new))
            if not pending:
                break
        if durable:
            await self._publish_when_durable(changes)
        else:
            self._publish(changes)
        return [job for _, job in changes]

    async def _publish_when_durable(self, changes: list[tuple[JobState | None, JobRecord]]) -> None:
        """Tell waiters, the dispatcher and the event stream once the changes are durable.
        If the store cannot write now, the caller hears StoreUnavailable at once, and the
        changes (kept by the store) are published when it recovers."""
        try:
            await self.store.flush()
        except StoreUnavailable:
            self.spawn(self._publish_on_recovery(changes))
            raise
        self._publish(changes)

    async def _publish_on_recovery(self, changes: list[tuple[JobState | None, JobRecord]]) -> None:
        if await self.until_durable():
            self._publish(changes)

    async def until_durable(self) -> bool:
        """Wait until everything changed so far is durable, however long the store takes
        to recover; False if it closed first (then none of it was acknowledged)."""
        while True:
            try:
                await self.store.flush()  # one round of the writer's retries each time
            except StoreUnavailable:
                continue
            except (ConveyorError, RuntimeError):
                return False
            return True

    def _publish(self, changes: list[tuple[JobState | None, JobRecord]]) -> None:
        for old, job in changes:
            self._changed(old, job)

    def _claimed(self, jobs: list[JobRecord]) -> None:
        """Jobs the dispatcher just started: the event stream hears of them too."""
        now = self.clock.now()
        for job in jobs:
            worker = self.dispatcher.workers.get(job.worker or "")
            self.backlog.claimed(job, worker.claimant.route(job.task) if worker else None)
            self.hub.publish(JobChanged(job, JobState.QUEUED, now))

    def _changed(self, old: JobState | None, job: JobRecord) -> None:
        if job.state.is_final:
            self.waiters.finished(job)
        elif job.state is JobState.QUEUED:
            self.dispatcher.trigger()
        elif job.state is JobState.SCHEDULED:
            self.on_scheduled()
        self.hub.publish(JobChanged(job, old, self.clock.now()))

    # -- producers -----------------------------------------------------------------------
    async def submit(self, jobs: Sequence[JobRecord]) -> list[Inserted]:
        """Store validated jobs (a job without a queue goes to its task's queue); a batch
        that would take a queue past its limit is refused whole (QueueFull)."""
        now = self.clock.now()
        born: list[tuple[JobRecord, Event]] = []
        for job in jobs:
            if not job.queue:  # the task's queue, once a worker has declared it
                job = job.replace(queue=self.routes.get(job.task, UNROUTED))
            born.append(lifecycle.born(job, now))
        admitted = self.backlog.admit([job for job, _ in born])
        try:
            inserted = await self.store.job_insert_many(born, durable=False)
        except BaseException:
            self.backlog.cancel(admitted)
            raise
        self.backlog.settle((job, i.created) for (job, _), i in zip(born, inserted, strict=True))
        await self._publish_when_durable([(None, i.job) for i in inserted if i.created])
        return inserted

    async def get(self, job_id: str) -> JobRecord:
        job = await self.store.job_get(job_id)
        if job is None:
            raise JobNotFound("not_found", f"no job {job_id}")
        return job

    async def get_many(self, ids: list[str]) -> list[JobRecord]:
        """The jobs among ``ids`` that exist, in the order asked (each id once)."""
        return await self.store.job_get_many(ids)

    async def history(self, job_id: str) -> list[Event]:
        return await self.store.job_events(job_id)

    async def wait(self, job_id: str, owner: object, notify: Notify) -> JobRecord | None:
        """The job if it is final now; else None, and ``notify(job)`` runs once it is.

        The wait is registered before the job is read, so no finish can slip between.
        """
        self.waiters.add(job_id, owner, notify)
        try:
            job = await self.get(job_id)
        except BaseException:
            self.waiters.discard(job_id, notify)
            raise
        if job.state.is_final:
            self.waiters.discard(job_id, notify)
            return job
        return None

    async def cancel(self, job_id: str) -> JobRecord:
        now = self.clock.now()
        job = await self.get(job_id)  # not_found first
        changed = await self._transition([job_id], lambda r: lifecycle.cancel(r, now))
        job = changed[0] if changed else await self.get(job_id)
        if job.state is JobState.RUNNING:
            self._abort(job)
        return job

    def _abort(self, job: JobRecord) -> None:
        worker = self.dispatcher.workers.get(job.worker or "")
        if worker is not None and job.id in worker.holding:
            worker.link.abort(job.id, job.lease)

    async def list_jobs(
        self, where: JobFilter, limit: int, cursor: str | None = None, offset: int = 0
    ) -> Page:
        return await self.store.job_list(where, limit, cursor, offset)

    def lease_expiry(self, job: JobRecord) -> float | None:
        """When a running job's worker loses it unless it heartbeats again."""
        worker = self.dispatcher.workers.get(job.worker or "")
        if job.state is not JobState.RUNNING or worker is None or job.id not in worker.holding:
            return job.lease_expires
        return worker.last_heartbeat + self.config.lease

    def waiting_note(self, job: JobRecord) -> str | None:
        """Why a queued job is not running: nobody offers its task on its queue."""
        if job.state is JobState.QUEUED and not self.dispatcher.offers(job.queue, job.task):
            where = f" on queue {job.queue!r}" if job.queue else ""
            return f"no connected worker offers task {job.task!r}{where}"
        return None

    # -- queues --------------------------------------------------------------------------
    @property
    def paused(self) -> frozenset[str]:
        return frozenset(self.dispatcher.paused)

    async def pause(self, queue: str, paused: bool = True) -> None:
        """Keep taking a queue's jobs but dispatch none (or again, ``paused=False``); the
        setting is durable, so a paused queue stays paused across a restart."""
        was = queue in self.dispatcher.paused
        if was == paused:
            return
        if paused:
            self.dispatcher.paused.add(queue)
        else:
            self.dispatcher.paused.discard(queue)
        await self.store.meta_set(PAUSED, sorted(self.dispatcher.paused))
        log.info("queue %s %s", queue, "paused" if paused else "resumed")
        self.hub.publish(QueueChanged(queue, paused, self.clock.now()))
        if not paused:
            self.dispatcher.trigger()

    # -- the dead-letter queue and retention ---------------------------------------------
    async def dlq_retry(self, ids: Sequence[str] | None) -> int:
        now = self.clock.now()
        dead = [j.id for j in await self.store.job_dead(ids)]
        retried = await self._transition(
            dead, lambda r: lifecycle.dlq_retry(r, now) if r.state is JobState.DEAD else None
        )
        return len(retried)

    async def dlq_purge(self, ids: Sequence[str] | None) -> int:
        return await self.store.dlq_purge(ids)

    async def prune(self, now: float) -> int:
        return await self.store.job_prune(now - self.config.retention)

    async def promote(self, now: float) -> int:
        promoted = await self.store.job_promote_due(now)
        for job in promoted:
            self.backlog.promoted(job)
            self._changed(JobState.SCHEDULED, job)
        return len(promoted)

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
        now = self.clock.now()
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
        self._learn_routes(routes)
        self.dispatcher.add(worker)
        self.hub.publish(WorkerJoined(worker, now))
        return worker

    def _learn_routes(self, routes: Mapping[str, str]) -> None:
        """Keep the queue each task is declared on, durably: later submits that name no
        queue go there, across restarts."""
        fresh = {t: q for t, q in routes.items() if self.routes.get(t) != q}
        if fresh:
            self.routes.update(fresh)
            self.spawn(self.store.meta_set(ROUTES, dict(self.routes)))

    def known_options(self, task: str) -> TaskOptions | None:
        """The task's options as the last worker offering it announced them."""
        return self._options.get(task)

    def worker_left(self, worker: WorkerRef, reason: str = "worker lost") -> None:
        """The worker's connection closed: its jobs go back (started runs are charged)."""
        if self.dispatcher.remove(worker.id) is None:
            return
        log.info("worker %s left (%d job(s) held)", worker.id, len(worker.holding))
        self.spawn(self._requeue_held(worker, reason))
        self.hub.publish(WorkerLeft(worker, reason, self.clock.now()))

    async def _requeue_held(self, worker: WorkerRef, reason: str) -> list[JobRecord]:
        now = self.clock.now()
        # newest first, so the oldest ends in front of its priority
        held = dict(reversed(worker.holding.items()))
        started = set(worker.started)
        worker.holding.clear()
        worker.started.clear()
        jobs = await self._transition(
            held, lambda r: self._requeue_if(r, held, now, reason, r.id in started)
        )
        if jobs:
            requeued = sum(1 for j in jobs if j.state is JobState.QUEUED)
            self.metrics["requeued"] += requeued
            log.warning("%s: requeued %d job(s) of worker %s", reason, requeued, worker.id)
        return jobs

    @staticmethod
    def _requeue_if(
        job: JobRecord, held: Mapping[str, int | None], now: float, reason: str, charged: bool
    ) -> Transition | None:
        if job.state is not JobState.RUNNING or job.lease != held.get(job.id):
            return None  # it moved on already (reported, or requeued by someone else)
        return lifecycle.requeue(job, now, reason, charged)

    async def _orphaned(self, worker: WorkerRef, jobs: list[JobRecord]) -> None:
        """The dispatcher claimed jobs for a worker that left meanwhile: straight back."""
        now = self.clock.now()
        for job in jobs:
            self.backlog.claimed(job, worker.claimant.route(job.task))
        held = {j.id: j.lease for j in reversed(jobs)}
        await self._transition(
            held, lambda r: self._requeue_if(r, held, now, "worker lost", charged=False)
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
        self.dispatcher.trigger()
        now = self.clock.now()

        def compute(job: JobRecord) -> Transition | None:
            outcome = mine[job.id]
            if job.state is not JobState.RUNNING or job.lease != outcome.lease:
                return None
            return lifecycle.report(job, outcome, now)

        for job in await self._transition(mine, compute):
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
        now = self.clock.now()

        def compute(r: JobRecord) -> Transition | None:
            if r.state is not JobState.RUNNING or r.lease != mine[r.id]:
                return None
            if r.id in started:
                return lifecycle.requeue(r, now, "released after it started", charged=True)
            return lifecycle.release(r, now)

        await self._transition(mine, compute)
        self.dispatcher.trigger()

    def heartbeat(self, worker: WorkerRef, running: Iterable[str]) -> None:
        """The worker is alive; ``running`` are jobs it has started (attempts count now)."""
        now = self.clock.now()
        worker.last_heartbeat = now
        changed = False
        for job_id in running:
            if job_id in worker.holding and job_id not in worker.started:
                worker.started[job_id] = now
                changed = True
        if worker.stalled:
            worker.stalled, changed = False, True
            log.info("worker %s is heartbeating again", worker.id)
            self.dispatcher.trigger()
        if changed:
            self.hub.publish(WorkerChanged(worker, now))

    def drain(self, worker: WorkerRef) -> None:
        worker.draining = True

    # -- the lease reaper and the deadline -----------------------------------------------
    async def reap(self, now: float) -> int:
        """Workers silent for a lease lose their jobs (and get none until they heartbeat);
        runs past their timeout plus the grace fail. Returns how many jobs moved."""
        moved = 0
        for worker in list(self.dispatcher.workers.values()):
            if now - worker.last_heartbeat > self.config.lease:
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
        grace = self.config.deadline_grace
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
        jobs = await self._transition(
            overdue,
            lambda r: (
                lifecycle.deadline(r, now, limits[r.id], grace)
                if r.state is JobState.RUNNING and r.lease == overdue[r.id]
                else None
            ),
        )
        self.dispatcher.trigger()
        return len(jobs)

    # -- tokens --------------------------------------------------------------------------
    def authenticate(self, token: Any) -> TokenInfo | None:
        if not isinstance(token, str) or not token:
            return None
        return self.tokens.verify(token, self.clock.now())

    async def token_create(
        self, role: Role, name: str | None, ttl: float | None
    ) -> tuple[str, TokenInfo]:
        # the registry locks and fsyncs its file: keep that off the event loop
        return await asyncio.to_thread(self.tokens.create, role, name, ttl, now=self.clock.now())

    def token_list(self) -> list[TokenInfo]:
        return self.tokens.list()

    async def token_revoke(self, name: str) -> bool:
        revoked = await asyncio.to_thread(self.tokens.revoke, name)
        self.on_tokens_changed()  # its open connections close now, not at the next tick
        return revoked

    # -- numbers -------------------------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        data = await self.store.stats()
        waiting = await self.store.queue_waiting()
        data["waiting"] = [
            {"queue": q, "task": t, "count": n, "offered": self.dispatcher.offers(q, t)}
            for (q, t), n in sorted(waiting.items())
        ]
        workers = list(self.dispatcher.workers.values())
        data["workers"] = [w.describe() for w in workers]
        data["paused"] = sorted(self.dispatcher.paused)
        data["store"] = {"url": self.store.url, **self.store.health}
        data["security"] = self.logins.snapshot()
        data["broker"] = {
            **self.info,
            "pid": os.getpid(),
            "uptime": self.clock.now() - self.started_at,
            **dict(self.metrics),
            **{name: gauge() for name, gauge in self.gauges.items()},
            "dispatched": self.dispatcher.dispatched,
            "waiters": len(self.waiters),
            "queue_full": self.backlog.refused,  # jobs refused: their queue was at its limit
        }
        return data
