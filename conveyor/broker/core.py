"""The broker's core service: what the broker does, with no frames and no sockets.

Theory of operation
-------------------
Both faces of the broker (the protocol routes in ``routes/`` and the HTTP routes) are thin
layers over :class:`BrokerCore`: they check their input, call one method here (or on its
workforce, below) and shape the reply. Every change to a job is computed by
:mod:`conveyor.lifecycle` and applied through :meth:`BrokerCore.transition`: read the jobs,
compute the transitions, apply them conditionally, and compute again for any job that
changed meanwhile. Each applied change
is published on :attr:`BrokerCore.hub` (waiting producers, the live feed and metrics
listen there) and wakes whoever moves the job on next (dispatcher, promoter).

The worker-facing calls (join, report, release, heartbeat, leave, the lease reaper's
work) are :attr:`BrokerCore.workforce`, a :class:`~conveyor.broker.workforce.Workforce`
the core composes: it reaches back only through the narrow
:class:`~conveyor.broker.workforce.Core` protocol (``transition``, ``spawn`` and the
parts), so the import goes one way, core to workforce. The core owns the dispatcher and so
the connected workers (which jobs each holds under which lease, which it has started); the
workforce keeps them up to date, and so knows, without asking the store, whose jobs go
back when a worker is lost or goes silent, and whether that run counts as an attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from conveyor import lifecycle
from conveyor.broker.backlog import Backlog
from conveyor.broker.config import BrokerConfig
from conveyor.broker.core_admin import CoreAdmin
from conveyor.broker.dispatch import Dispatcher
from conveyor.broker.events import EventHub, JobChanged, QueueChanged
from conveyor.broker.limiter import LIMITS, Limiter
from conveyor.broker.logins import Logins
from conveyor.broker.progress import ProgressBoard
from conveyor.broker.schedules import ScheduleBook
from conveyor.broker.waiters import Notify, Waiters
from conveyor.broker.watch import StoreWatch
from conveyor.broker.workflows import Workflows
from conveyor.broker.workforce import ROUTES, Workforce, requeue_if_held
from conveyor.clock import Clock
from conveyor.errors import ConveyorError, JobNotFound, StoreUnavailable
from conveyor.job import UNROUTED, Event, JobRecord, JobState
from conveyor.lifecycle import Transition
from conveyor.security.throttle import LoginThrottle
from conveyor.security.tokens import TokenRegistry
from conveyor.stores.base import Inserted, JobFilter, Page, Store

log = logging.getLogger("conveyor.broker")

_RETRIES = 5  # recomputations of a transition whose job changed meanwhile
PAUSED = "paused"  # the store setting that keeps the paused queues


class BrokerCore(CoreAdmin):
    """Submit, wait, cancel, queues, DLQ, events; tokens, limits and stats (mixed in from
    :class:`~conveyor.broker.core_admin.CoreAdmin`); workers via ``workforce``."""

    def __init__(
        self, config: BrokerConfig, store: Store, tokens: TokenRegistry, clock: Clock
    ) -> None:
        self.config = config
        self.store = store
        self.tokens = tokens
        self.clock = clock
        self.hub = EventHub()
        self.waiters = Waiters()
        self.progress = ProgressBoard(self.hub, clock)  # running jobs' live progress
        self.workforce = Workforce(self)  # the worker-facing calls
        self.schedules = ScheduleBook(store, clock, self.submit)  # periodic jobs
        self.workflows = Workflows(self, config.limits.max_payload)  # waiting jobs' release
        self.dispatcher = Dispatcher(
            store, clock, config.lease, self.workforce.orphaned, on_claimed=self._claimed
        )
        self.limiter = Limiter(store, clock, self.dispatcher)  # rate and concurrency limits
        limits = config.limits
        self.backlog = Backlog(limits.max_queued, dict(limits.max_queued_by_queue))
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
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- open and close ------------------------------------------------------------------
    async def open(self) -> None:
        """Open the store; requeue the jobs that were running when the broker stopped."""
        self.started_at = now = self.clock.now()
        self.store.watch(StoreWatch(self))  # other brokers' changes, on a shared store
        running = await self.store.open(now)
        self.backlog.load((await self.store.stats())["queues"], await self.store.queue_waiting())
        self.workforce.routes.update(await self.store.meta_get(ROUTES) or {})
        self.dispatcher.paused.update(await self.store.meta_get(PAUSED) or ())
        await self.limiter.open(dict(self.config.rate_limits))
        if running:
            # each requeue goes in front of the last: newest first leaves the oldest in front
            held = {j.id: j.lease for j in reversed(running)}
            jobs = await self.transition(
                held, lambda r: requeue_if_held(r, held, now, "broker restart", charged=False)
            )
            log.warning("requeued %d job(s) that were running at the last stop", len(jobs))
        await self.workflows.resume()  # a release lost in a crash happens now

    async def rescue(self, now: float) -> int:
        """Several brokers on one store: requeue the running jobs of a broker that is gone
        (its leases lapsed), as a broker restart does with its own."""
        try:
            lapsed = await self.store.job_rescue_expired(now)
        except StoreUnavailable:
            return 0  # the store says so once; the reaper asks again next round
        if not lapsed:
            return 0
        held = {j.id: j.lease for j in lapsed}
        jobs = await self.transition(
            held, lambda r: requeue_if_held(r, held, now, "broker lost", charged=False)
        )
        log.warning("requeued %d job(s) of a broker that is gone", len(jobs))
        return len(jobs)

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
    async def transition(
        self,
        ids: Iterable[str],
        compute: Callable[[JobRecord], Transition | None],
        *,
        durable: bool = True,
    ) -> list[JobRecord]:
        """Read the jobs, compute their transitions, apply them conditionally; compute again
        for those that changed in between. Returns the jobs as they became. The one way
        jobs change, for the core and its workforce; the routes never call it."""
        pending = list(ids)
        changes: list[tuple[JobState | None, JobRecord]] = []
        lost_a_race = False
        # first as the store last wrote them (no read on a database: the apply is
        # conditional, a stale copy is refused and read again), then as stored
        recent = self.store.remembers
        for _ in range(_RETRIES):
            transitions: list[Transition] = []
            unsure: list[str] = []  # no change from a remembered copy: look at the real one
            read = self.store.job_get_recent if recent else self.store.job_get_many
            for r in await read(pending):
                if t := compute(r):
                    transitions.append(self.progress.attach(t))  # a run keeps its progress
                elif recent:
                    unsure.append(r.id)
            recent = False
            if not transitions and not unsure:
                break
            results = await self.store.job_apply(transitions, durable=False) if transitions else []
            pending = unsure
            for t, new in zip(transitions, results, strict=True):
                if new is None:
                    pending.append(t.old.id)
                    lost_a_race = True
                else:
                    self.backlog.moved(t.old, new)
                    changes.append((t.old.state, new))
            if not pending:
                break
        if lost_a_race:
            # Another broker changed one of these first. Our conditional write held its
            # row for a moment, and a claim that ran meanwhile (that broker's, say, of the
            # job it had just queued) skipped the locked row and found nothing: nobody
            # would look again. A pass of our own, now that the lock is gone, does.
            self.dispatcher.trigger()
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
        key = job.concurrency_key
        if key is not None and old is JobState.RUNNING and job.state is not JobState.RUNNING:
            self.dispatcher.gate.release(key)  # its key's slot is free
            self.dispatcher.trigger()
        if old is JobState.RUNNING and job.state is not JobState.RUNNING:
            self.progress.ended(job)
        if job.state.is_final:
            self.waiters.finished(job)
            self.workflows.finished(job)  # its dependants may be ready now
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
        routes = self.workforce.routes
        for job in jobs:
            # no queue named: the task's queue, once a worker has declared it
            queue = None if job.queue else routes.get(job.task, UNROUTED)
            born.append(lifecycle.born(job, now, queue))
        admitted = self.backlog.admit([job for job, _ in born])
        try:
            inserted = await self.store.job_insert_many(born, durable=False)
        except BaseException:
            self.backlog.cancel(admitted)
            raise
        self.backlog.settle((job, i.created) for (job, _), i in zip(born, inserted, strict=True))
        created = [i.job for i in inserted if i.created]
        await self._publish_when_durable([(None, job) for job in created])
        if any(job.state is JobState.WAITING for job in created):
            self.spawn(self.workflows.submitted(created))  # their dependencies may be done
        return inserted

    async def get(self, job_id: str, *, payload: bool = True) -> JobRecord:
        """The job; ``payload=False`` for a read that will not send the arguments (the
        store may then skip reading a large payload kept apart)."""
        job = await self.store.job_get(job_id, payload=payload)
        if job is None:
            raise JobNotFound("not_found", f"no job {job_id}")
        return job

    async def get_many(self, ids: list[str], *, payload: bool = True) -> list[JobRecord]:
        """The jobs among ``ids`` that exist, in the order asked (each id once);
        ``payload`` as for :meth:`get`."""
        return await self.store.job_get_many(ids, payload=payload)

    async def history(self, job_id: str) -> list[Event]:
        return await self.store.job_events(job_id)

    async def wait(
        self, job_id: str, owner: object, notify: Notify, *, payload: bool = True
    ) -> JobRecord | None:
        """The job if it is final now; else None, and ``notify(job)`` runs once it is.

        The wait is registered before the job is read, so no finish can slip between.
        """
        self.waiters.add(job_id, owner, notify)
        try:
            job = await self.get(job_id, payload=payload)
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
        changed = await self.transition([job_id], lambda r: lifecycle.cancel(r, now))
        job = changed[0] if changed else await self.get(job_id)
        if job.state is JobState.RUNNING:
            self.abort_run(job)
        return job

    def abort_run(self, job: JobRecord) -> None:
        """Tell the worker here that runs ``job`` (if one does) to stop it."""
        worker = self.dispatcher.workers.get(job.worker or "")
        if worker is not None and job.id in worker.holding:
            worker.link.abort(job.id, job.lease)

    async def list_jobs(
        self,
        where: JobFilter,
        limit: int,
        cursor: str | None = None,
        offset: int = 0,
        *,
        payload: bool = True,
    ) -> Page:
        """``payload=False`` for a listing that shows no arguments (as :meth:`get`)."""
        return await self.store.job_list(where, limit, cursor, offset, payload=payload)

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

    # -- other brokers ---------------------------------------------------------------------
    def setting_changed(self, name: str | None) -> None:
        """Another broker changed a store setting: the set limits are read again."""
        if name is None or name == LIMITS:
            self.spawn(self.limiter.reload())

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
        retried = await self.transition(
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
