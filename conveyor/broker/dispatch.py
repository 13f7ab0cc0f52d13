"""Push dispatch with credits to the least-loaded worker that offers the task.

Each connected worker announced its tasks, queues and concurrency. Its credit is
``concurrency + prefetch`` minus the jobs it holds (dispatched, not yet reported or
released). A dispatch pass repeatedly takes the worker with the lowest load ratio
that has credit, claims a small slice of jobs for it from the store (the store
orders by priority, then FIFO) and hands them to the worker's link in one go. Slices are
a quarter of the worker's capacity so that equal workers alternate and share the work.
On a store whose claim is a round trip to a server (``bulk_claims``: PostgreSQL) a pass
is instead one claim for every worker with credit, each asking for all of it; the store
deals the jobs out in turn (with rate limits set, claims stay one worker at a time:
each is shaped by the tokens the one before left). Passes are coalesced: many triggers
in one loop iteration cause one pass, and those that come while a claim is on the wire
cause the next.

Limits (docs/workflows.md): every claim carries the broker's concurrency gate
(``keygate.py``: a job whose concurrency key is at its limit stays queued and the claim
goes on past it); when rate limits are set, ``ratelimit.py`` shapes each claim and the
dispatcher sleeps on one timer until the next token (on a store several brokers share,
both are the store's: its claim counts every broker's running jobs per key, and its token
buckets grant the tokens). Without limits neither costs a job anything.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from conveyor.broker.keygate import ConcurrencyGate
from conveyor.broker.ratelimit import RateLimits
from conveyor.clock import Clock
from conveyor.errors import StoreUnavailable
from conveyor.job import UNROUTED, JobRecord
from conveyor.lifecycle import TaskOptions
from conveyor.stores.base import Claimant, Store

log = logging.getLogger("conveyor.broker")
_order = itertools.count()


class WorkerLink(Protocol):
    """How the broker reaches one connected worker (its protocol session implements it)."""

    def dispatch(self, jobs: list[JobRecord]) -> None:
        """Send these jobs (now running under their leases) to the worker."""

    def abort(self, job_id: str, lease: int | None) -> None:
        """Tell the worker to stop a job it runs (cancelled, or past its deadline)."""

    def close(self, reason: str) -> None:
        """End the worker's connection with a GOODBYE naming the reason."""


@dataclass(eq=False, slots=True)
class WorkerRef:
    """A connected worker as the broker sees it."""

    id: str
    name: str
    tasks: frozenset[str]
    queues: tuple[str, ...]
    concurrency: int
    prefetch: int
    link: WorkerLink
    options: Mapping[str, TaskOptions] = field(default_factory=dict)
    routes: Mapping[str, str] = field(default_factory=dict)  # task -> its declared queue
    pool: str = "thread"
    peer: str = ""
    host: str = ""  # as the worker says (READY ``host``/``pid``), for people to find it
    pid: int | None = None
    connected_at: float = 0.0
    # job id -> lease of each job dispatched to it and not yet reported or released; a
    # report counts only for a job this worker holds under that very lease
    holding: dict[str, int] = field(default_factory=dict)
    # job id -> when the worker said it started it (a HEARTBEAT listing it); a held job
    # that is not here was only prefetched
    started: dict[str, float] = field(default_factory=dict)
    # job id -> its run's time limit (the job's, else the task's), for the broker's deadline
    timeouts: dict[str, float] = field(default_factory=dict)
    draining: bool = False
    stalled: bool = False  # its heartbeats stopped: no new jobs until one arrives
    completed: int = 0
    failed: int = 0
    last_heartbeat: float = 0.0
    order: int = field(default_factory=lambda: next(_order))
    claimant: Claimant = field(init=False)
    # the paused queues it was last shaped for, and its claimant without them
    unpaused: tuple[frozenset[str], Claimant] | None = None

    def __post_init__(self) -> None:
        self.claimant = Claimant(self.id, self.queues, self.tasks, self.options, self.routes)

    @property
    def capacity(self) -> int:
        return self.concurrency + self.prefetch

    @property
    def free(self) -> int:
        if self.draining or self.stalled:
            return 0
        return self.capacity - len(self.holding)

    @property
    def load(self) -> float:
        return len(self.holding) / self.capacity

    def give_back(self, job_id: str) -> None:
        """The job left this worker's hands (reported, released, requeued)."""
        self.holding.pop(job_id, None)
        self.started.pop(job_id, None)
        self.timeouts.pop(job_id, None)

    def took(self, jobs: list[JobRecord]) -> None:
        """These jobs were dispatched to this worker."""
        for job in jobs:
            self.holding[job.id] = job.lease or 0
            options = self.options.get(job.task)
            timeout = job.timeout if job.timeout is not None else options and options.timeout
            if timeout:
                self.timeouts[job.id] = timeout

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "tasks": sorted(self.tasks),
            "queues": list(self.queues),
            "concurrency": self.concurrency,
            "prefetch": self.prefetch,
            "pool": self.pool,
            "peer": self.peer,
            "host": self.host,
            "pid": self.pid,
            "running": len(self.holding),
            "busy": len(self.started),
            "jobs": sorted(self.started),
            "draining": self.draining,
            "stalled": self.stalled,
            "completed": self.completed,
            "failed": self.failed,
            "connected_at": self.connected_at,
            "last_heartbeat": self.last_heartbeat,
        }


class Dispatcher:
    """Owns the set of connected workers and moves queued jobs to them."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        lease_seconds: float,
        on_orphans: Callable[[WorkerRef, list[JobRecord]], Awaitable[None]],
        on_dispatch: Callable[[], None] | None = None,
        on_claimed: Callable[[list[JobRecord]], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.on_orphans = on_orphans
        self.on_dispatch = on_dispatch
        self.on_claimed = on_claimed
        self.workers: dict[str, WorkerRef] = {}
        self.paused: set[str] = set()  # queues whose jobs are kept, not dispatched
        self._pending = False
        self._running = False
        self._again = False
        self._idle = asyncio.Event()
        self.dispatched = 0
        self.gate = ConcurrencyGate()  # per-key concurrency limits, asked by every claim
        self.rates = RateLimits()  # per task and queue; empty: no cost at all
        self.shared_rates = store.rate_buckets()  # the store's buckets: limits across brokers
        self._timer: asyncio.TimerHandle | None = None  # the wake-up for the next token
        self._wake_at = 0.0
        # a task set -> the one object of it the connected workers share, and how many
        # of them do (a weak mapping would keep every set: its key is the set itself)
        self._offers: dict[frozenset[str], tuple[frozenset[str], int]] = {}

    def add(self, worker: WorkerRef) -> None:
        # workers that offer the same tasks share one set: the ready index knows a kind of
        # claimant by its sets, and comparing two equal sets of 1,000 names costs 10 us
        self.remove(worker.id)
        tasks, n = self._offers.get(worker.tasks, (worker.tasks, 0))
        self._offers[tasks] = (tasks, n + 1)
        worker.tasks = tasks
        worker.claimant = replace(worker.claimant, tasks=tasks, gate=self.gate)
        worker.unpaused = None
        self.workers[worker.id] = worker
        self.trigger()

    def remove(self, worker_id: str) -> WorkerRef | None:
        worker = self.workers.pop(worker_id, None)
        shared = None if worker is None else self._offers.get(worker.tasks)
        if shared is not None:
            tasks, n = shared
            if n > 1:
                self._offers[tasks] = (tasks, n - 1)
            else:
                del self._offers[tasks]
        return worker

    def offers(self, queue: str, task: str) -> bool:
        """Some connected worker runs ``task`` on ``queue`` (an unrouted job: anywhere).
        Asked per job and per waiting (queue, task): it never builds every pair a worker
        could run (a worker may offer thousands of tasks on hundreds of queues)."""
        return any(
            task in w.tasks and (queue == UNROUTED or queue in w.queues)
            for w in self.workers.values()
        )

    def trigger(self) -> None:
        """Ask for a dispatch pass soon (coalesced)."""
        if self._running:
            self._again = True
            return
        if not self._pending:
            self._pending = True
            asyncio.get_running_loop().call_soon(self._start_pass)

    @property
    def pass_due(self) -> bool:
        """A pass was asked for and has not started yet (it starts within a loop turn)."""
        return self._pending

    def _wake_in(self, delay: float) -> None:
        """A pass when a rate-limited target has a token again (one timer, the earliest)."""
        loop = asyncio.get_running_loop()
        at = loop.time() + delay + 0.001  # a hair late: the token is whole by then
        if self._timer is not None and self._wake_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._wake_at = at
        self._timer = loop.call_at(at, self._woken)

    def _woken(self) -> None:
        self._timer = None
        self.trigger()

    def _start_pass(self) -> None:
        asyncio.get_running_loop().create_task(self._pass())

    async def settled(self) -> None:
        """Return once no dispatch pass is pending or running (a store with real I/O
        claims over several loop turns; tests wait here for what a trigger started)."""
        while self._pending or self._running:
            self._idle.clear()
            await self._idle.wait()

    async def _pass(self) -> None:
        self._pending = False
        if self._running:
            self._again = True
            return
        self._running = True
        try:
            while True:
                self._again = False
                await self.run_once()
                if not self._again:
                    break
        except StoreUnavailable as exc:  # the store logs the outage, once; a report or a
            log.debug("dispatch pass: %s", exc.message)  # a recovery triggers the next pass
        except Exception:
            log.exception("dispatch pass failed")
        finally:
            self._running = False
            if not self._pending:
                self._idle.set()

    async def _want(self, worker: WorkerRef, want: int) -> tuple[Claimant, int] | None:
        """What to claim for ``worker`` (up to ``want`` jobs): not from paused queues,
        within the rate limits (None: all it offers is rate-limited now)."""
        claimant = worker.claimant
        if self.paused:
            if worker.unpaused is None or worker.unpaused[0] != self.paused:
                queues = tuple(q for q in worker.queues if q not in self.paused)
                worker.unpaused = (frozenset(self.paused), replace(claimant, queues=queues))
            claimant = worker.unpaused[1]
        if self.rates:
            if self.shared_rates is not None:
                await self.rates.draw(claimant, want, self.shared_rates, self.clock.monotonic)
            shaped, want, wake = self.rates.shape(claimant, want, self.clock.monotonic())
            if wake is not None:
                self._wake_in(wake)
            if shaped is None:
                return None
            claimant = shaped
        return claimant, want

    async def _claim(self, worker: WorkerRef, now: float) -> list[JobRecord]:
        """Claim a slice of jobs for ``worker``, past keys at their concurrency limit."""
        wanted = await self._want(worker, min(worker.free, max(1, worker.capacity // 4)))
        if wanted is None:
            return []
        jobs: list[JobRecord] = []
        try:
            jobs = await self.store.job_claim(*wanted, self.lease_seconds, now)
        finally:
            if self.gate.pending:  # keyed jobs were admitted: they are running now
                self.gate.settle(jobs)
        if jobs and self.rates:
            self.rates.charge(jobs, self.clock.monotonic())
        return jobs

    def _hand(self, worker: WorkerRef, jobs: list[JobRecord]) -> bool:
        """Give claimed jobs to ``worker``; False if it left meanwhile (the caller sends
        them back)."""
        if worker.id not in self.workers:
            return False
        worker.took(jobs)
        self.dispatched += len(jobs)
        worker.link.dispatch(jobs)
        if self.on_claimed is not None:
            self.on_claimed(jobs)
        if self.on_dispatch is not None:
            self.on_dispatch()
        return True

    async def run_once(self) -> None:
        """One dispatch pass (tests call it directly instead of waiting for a trigger)."""
        if self.store.bulk_claims and not self.rates:  # rate limits shape claim by claim
            await self._run_bulk()
            return
        heap = [(w.load, w.order, w) for w in self.workers.values() if w.free > 0]
        heapq.heapify(heap)
        now = self.clock.now()
        while heap:
            _, _, worker = heapq.heappop(heap)
            if worker.id not in self.workers or worker.free <= 0:
                continue
            jobs = await self._claim(worker, now)
            if not jobs:
                continue  # nothing this worker can run; drop it from this pass
            if not self._hand(worker, jobs):
                await self.on_orphans(worker, jobs)  # it left while we claimed: back they go
                continue
            if worker.free > 0:
                heapq.heappush(heap, (worker.load, worker.order, worker))

    async def _run_bulk(self) -> None:
        """A pass on a store whose claim is a round trip: every worker with credit asks
        for all of it, in one :meth:`~conveyor.stores.base.Store.job_claim_many` (the
        store deals the jobs out in turn, least loaded first, so equal workers share)."""
        now = self.clock.now()
        while True:
            workers = sorted(
                (w for w in self.workers.values() if w.free > 0), key=lambda w: (w.load, w.order)
            )
            wants = [(w, wanted) for w in workers if (wanted := await self._want(w, w.free))]
            if not wants:
                return
            results: list[list[JobRecord]] = []
            try:
                results = await self.store.job_claim_many(
                    [wanted for _, wanted in wants], self.lease_seconds, now
                )
            finally:
                if self.gate.pending:  # keyed jobs were admitted: they are running now
                    self.gate.settle([job for jobs in results for job in jobs])
            again = False
            for (worker, (_, want)), jobs in zip(wants, results, strict=True):
                if not jobs:
                    continue
                if not self._hand(worker, jobs):
                    await self.on_orphans(worker, jobs)
                    continue
                # it got all it asked for yet has credit again (a report came back while
                # the claim was out): ask again; one that got less has nothing more to take
                again = again or (len(jobs) == want and worker.free > 0)
            if not again:
                return
