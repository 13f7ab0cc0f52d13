"""The broker: wires store, sessions, dispatcher, waiters and services into one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sys
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from conveyor.broker.config import BrokerConfig
from conveyor.broker.dispatch import Dispatcher, WorkerRef
from conveyor.broker.maintenance import LeaseReaper, Promoter, RetentionCleaner
from conveyor.broker.server import TLSServer
from conveyor.broker.session import Session
from conveyor.broker.waiters import Waiters
from conveyor.clock import SYSTEM_CLOCK, Clock
from conveyor.job import Job, JobState
from conveyor.security.tls import server_context
from conveyor.security.tokens import TokenInfo, TokenRegistry
from conveyor.stores import open_store
from conveyor.stores.base import Inserted, Store

log = logging.getLogger("conveyor.broker")


class Broker:
    """One broker process. ``await start()``, then ``port`` is the bound port."""

    def __init__(
        self, config: BrokerConfig, store: Store | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.config = config
        self.clock = clock
        self.store = store if store is not None else open_store(config.store_url)
        self.tokens = TokenRegistry(config.tokens_file or config.home / "tokens.json")
        self.dispatcher = Dispatcher(self.store, clock, config.lease, self.changed)
        self.waiters = Waiters()
        # the @task options workers announced: used when a producer leaves them unset
        self.task_defaults: dict[str, dict[str, Any]] = {}
        self.sessions: set[Session] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.metrics: Counter[str] = Counter()
        self.started_at = 0.0
        self._session_prefix = secrets.token_hex(4)
        self._session_seq = 0
        ctx = server_context(
            config.cert_file or config.home / "server.pem",
            config.key_file or config.home / "server.key",
            config.client_ca_file,
        )
        self.server = TLSServer(
            config.host,
            config.port,
            ctx,
            lambda peer, on_close: Session(self, peer, on_close),
            config.limits,
            self.metrics,
        )
        self.reaper = LeaseReaper(self.store, clock, self._leases_expired)
        self.promoter = Promoter(self.store, clock, self.dispatcher.trigger)
        self.cleaner = RetentionCleaner(self.store, clock, config.retention)
        self.reaper.interval = min(1.0, config.lease / 4)
        self._stopped = asyncio.Event()
        self._changed = asyncio.Event()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"conveyor://{host}:{self.port}"

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        # The SQLite writer thread must get the GIL back quickly after each statement, or
        # commits (and so every acknowledgement) wait behind a busy event loop; 5 ms is
        # Python's default hand-over interval, 1 ms keeps commit latency low.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
        self.started_at = self.clock.now()
        requeued = await self.store.open(self.started_at)
        if requeued:
            log.warning("requeued %d job(s) that were running at the last stop", len(requeued))
        await self.server.start()
        for service in (self.reaper, self.promoter, self.cleaner):
            service.start()
        log.info("broker listening on %s (store %s)", self.url, self.store.url)

    async def stop(self) -> None:
        """Stop accepting, say goodbye to every client, flush the store."""
        await self.server.stop()
        for service in (self.reaper, self.promoter, self.cleaner):
            await service.stop()
        for session in list(self.sessions):
            session.goodbye("shutting down")
        # let the closed connections run their callbacks (a lost worker's requeue is a
        # task) before the store closes under them
        with contextlib.suppress(TimeoutError):
            await self.wait_until(lambda: not self.sessions, 2.0)
        for task in list(self.tasks):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 2.0)
        await self.store.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def changed(self) -> None:
        """Something observable happened (worker joined/left, job reported)."""
        self._changed.set()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds, re-checking whenever the broker changes."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- sessions ------------------------------------------------------------------------
    def authenticate(self, token: Any) -> TokenInfo | None:
        if not isinstance(token, str) or not token:
            return None
        return self.tokens.verify(token, self.clock.now())

    def new_session_id(self) -> str:
        self._session_seq += 1
        return f"{self._session_prefix}-{self._session_seq}"

    def session_opened(self, session: Session) -> None:
        self.sessions.add(session)
        self.metrics["connections_total"] += 1

    def session_closed(self, session: Session) -> None:
        self.sessions.discard(session)
        self.waiters.drop_owner(session)
        worker = session.worker
        if worker is not None and self.dispatcher.remove(worker.id) is not None:
            log.info("worker %s left (%d job(s) held)", worker.id, len(worker.holding))
            self.spawn(self._worker_lost(worker))
        self.changed()

    async def _worker_lost(self, worker: WorkerRef) -> None:
        jobs = await self.store.job_requeue_worker(worker.id, "worker lost", self.clock.now())
        if jobs:
            log.warning("requeued %d job(s) of lost worker %s", len(jobs), worker.id)
            self._requeued(jobs)
        self.dispatcher.trigger()

    def worker_joined(self, worker: WorkerRef) -> None:
        log.info(
            "worker %s joined from %s: tasks=%s queues=%s concurrency=%d",
            worker.id,
            worker.peer,
            ",".join(sorted(worker.tasks)) or "-",
            ",".join(worker.queues),
            worker.concurrency,
        )
        self.dispatcher.add(worker)
        self.changed()

    # -- job events ----------------------------------------------------------------------
    def jobs_inserted(self, inserted: list[Inserted]) -> None:
        if any(i.created and i.job.state is JobState.SCHEDULED for i in inserted):
            self.promoter.wake()
        self.dispatcher.trigger()

    def job_reported(self, job: Job) -> None:
        self.changed()
        if job.state.is_final:
            self.waiters.finished(job)
        elif job.state is JobState.SCHEDULED:
            self.promoter.wake()

    def _leases_expired(self, jobs: list[Job]) -> None:
        """A connected worker let leases lapse (hung, stopped): stop feeding it."""
        for job in jobs:
            lost_by = job.events[-1].get("worker", "") if job.events else ""
            worker = self.dispatcher.workers.get(lost_by)
            if worker is not None and not worker.stalled:
                worker.stalled = True
                log.warning("worker %s stopped heartbeating; no new jobs until it does", worker.id)
        self._requeued(jobs)

    def _requeued(self, jobs: list[Job]) -> None:
        for job in jobs:
            for worker in self.dispatcher.workers.values():
                worker.holding.pop(job.id, None)
            if job.state.is_final:  # a cancel asked for while it ran took effect
                self.waiters.finished(job)
        self.metrics["requeued"] += len(jobs)
        self.changed()
        self.dispatcher.trigger()

    def abort_running(self, job: Job) -> None:
        """Tell the worker running ``job`` to stop it (cancel of a running job)."""
        for session in self.sessions:
            if session.worker is not None and session.worker.id == job.worker:
                session.send({"t": "abort", "id": job.id, "lease": job.lease})

    def describe_job(self, job: Job) -> dict[str, Any]:
        """The job map for a reply, plus a note when no connected worker can run it."""
        wire = job.to_wire()
        if job.state is JobState.QUEUED and (job.queue, job.task) not in self.dispatcher.offered():
            wire["waiting"] = f"no connected worker offers task {job.task!r} on queue {job.queue!r}"
        return wire

    async def stats(self) -> dict[str, Any]:
        data = await self.store.stats()
        offered = self.dispatcher.offered()
        waiting = await self.store.queue_tasks_waiting()
        data["waiting"] = [
            {"queue": q, "task": t, "count": n, "offered": (q, t) in offered}
            for (q, t), n in sorted(waiting.items())
        ]
        data["workers"] = [w.describe() for w in self.dispatcher.workers.values()]
        data["broker"] = {
            "url": self.url,
            "store": self.store.url,
            "pid": os.getpid(),
            "uptime": self.clock.now() - self.started_at,
            **dict(self.metrics),
            "connections": len(self.sessions),
            "dispatched": self.dispatcher.dispatched,
            "waiters": len(self.waiters),
        }
        return data
