"""The worker's network side: connect, announce, take pushed jobs, run them, report.

Theory of operation
-------------------
After READY the broker pushes DISPATCH frames up to our credit (concurrency +
prefetch). Each job waits for one of ``concurrency`` slots, then runs in the pool.
The moment a job takes a slot the worker says so (a HEARTBEAT listing it, written before
the job is handed to the pool): should the job then kill this process, the broker knows
the run had started and counts the attempt, so a job that crashes its worker cannot come
back for ever. Start notices, results and what tasks say of themselves
(``current_job().progress()``, ``set_meta()``) are batched (:mod:`conveyor.worker.outbox`).
Periodic heartbeats keep our jobs ours.

If the connection drops, the broker requeues everything we held, so results of that
connection's jobs are dropped (a *generation* number tells them apart) and jobs still
waiting for a slot are abandoned; the worker reconnects with backoff and carries on.
Jobs already running keep their slot until they end; only their report is dropped (the
broker that gave them out requeues them at once if it is alive, or, sharing its store,
another broker does once their leases expire: at-least-once, the job runs again).

Given several broker addresses, the worker starts at a random one
(:class:`~conveyor.client.failover.Rotation`) and, when its broker is lost, tries the
others in turn before coming back to it, sending READY again to whichever answers. The
pace is the same as with one address (a short pause after a lost connection, doubling
after each round in which no broker answered). A refused token (``unauthorized``,
``forbidden``) stops the worker as before: it is not tried on the other brokers.

Payloads arrive packed and are handed to the pool as they are (the process pool's
children unpack them); results come back packed. With a payload key
(``payload_key_file``), sealed arguments are opened just before a job runs and its result
or error is sealed again before it is reported (:mod:`conveyor.worker.sealed`); the
broker never sees them in the clear.

``stop()`` (SIGTERM/SIGINT) drains: DRAIN tells the broker to send nothing more,
prefetched jobs that never started go back at once (RELEASE), running ones finish
and are reported, the worker waits for their ACKED, then says goodbye and exits.
``stop(force=True)``, at any time (a second Ctrl-C, a drain timeout), stops waiting:
unstarted jobs are released as above, running ones are abandoned (the connection closes
and the broker requeues them, charging the attempt), and the pool is closed without
waiting (process-pool children are killed; a thread cannot be, see ``pools``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conveyor.client.async_transport import AsyncConnection
from conveyor.client.endpoint import Address, make_endpoint
from conveyor.client.failover import Rotation
from conveyor.errors import BrokerError, ConfigError, ConnectionLost, TooManyFailures
from conveyor.security.payload import PayloadCipher, resolve_cipher
from conveyor.worker.execute import RunResult, cancelled
from conveyor.worker.held import Held, WorkerStats
from conveyor.worker.joblog import JobLog
from conveyor.worker.outbox import Outbox
from conveyor.worker.pools import Pool, make_pool
from conveyor.worker.progress import CurrentJob
from conveyor.worker.sealed import open_request, seal_result
from conveyor.worker.tasks import TaskRegistry, load_tasks

log = logging.getLogger("conveyor.worker")
ACK_WAIT = 5.0  # seconds a draining worker waits for the ACKED of its last reports


class Worker:
    """Runs tasks from ``modules`` (or a ready ``registry``) for a broker until stopped.

    ``url`` may list several brokers (``conveyor://a:65432,b:65432``) to fail over between.

    ``payload_key_file`` (a key file, a :class:`~conveyor.security.payload.PayloadCipher`,
    or default ``$CONVEYOR_PAYLOAD_KEY_FILE``) lets it run end-to-end encrypted jobs.
    Each job's start and end are logged (:mod:`conveyor.worker.joblog`); its arguments and
    result only with ``log_payloads``.
    """

    def __init__(
        self,
        modules: Sequence[str] = (),
        *,
        url: str | None = None,
        token: str | None = None,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        home: str | Path | None = None,
        concurrency: int = 4,
        pool: str = "thread",
        queues: Sequence[str] | None = None,
        prefetch: int | None = None,
        name: str | None = None,
        registry: TaskRegistry | None = None,
        payload_key_file: str | Path | PayloadCipher | None = None,
        log_payloads: bool = False,
    ) -> None:
        if registry is None and not modules:
            raise ConfigError("a worker needs task modules (--tasks myapp.tasks) or a registry")
        self.modules = list(modules)
        self.registry = registry if registry is not None else load_tasks(self.modules)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.endpoint = make_endpoint(url, token, ca, cert, key, home, self.name)
        self._rotation = Rotation(self.endpoint.addresses)
        self.cipher: PayloadCipher | None = (
            payload_key_file
            if isinstance(payload_key_file, PayloadCipher)
            else resolve_cipher(key_file=payload_key_file)
        )
        self.concurrency = concurrency
        self.prefetch = concurrency if prefetch is None else prefetch
        self.pool_kind = pool
        self.queues = list(queues) if queues else (self.registry.queues() or ["default"])
        self.pool: Pool = make_pool(pool, self.registry, concurrency, self.modules)
        self.stats = WorkerStats()
        self.joblog = JobLog(payloads=log_payloads)
        self.worker_id = ""
        self.connected = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._held: dict[str, Held] = {}
        self._conn: AsyncConnection | None = None
        self._generation = 0
        self.outbox = Outbox(self.stats, lambda: self._conn, lambda: self._generation)
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until :meth:`stop`; reconnect with backoff whenever the broker is lost."""
        await self.pool.start()
        delay = 0.1
        refused = False
        order = self._rotation.first_round()  # the addresses left to try in this round
        try:
            while not self._stopping.is_set():
                not_before = 0.0  # the broker said when to come back (too_many_failures)
                address = order.pop(0)
                try:
                    await self._session(address)
                    delay = 0.1
                    order = []  # it worked: a new round, from the address after it
                except (OSError, ConnectionLost, TimeoutError) as exc:
                    log.warning("broker at %s unavailable (%s)", address, exc)
                except TooManyFailures as exc:
                    not_before = exc.retry_after
                    log.warning("broker refused us (%s); retrying in %.1fs", exc, not_before)
                except BrokerError as exc:
                    if exc.code in ("unauthorized", "forbidden"):
                        # our jobs went back to the broker: waiting for them helps nobody
                        refused = True
                        raise
                    log.warning("broker at %s refused us (%s)", address, exc)
                if self._stopping.is_set():
                    break
                self.stats.reconnects += 1
                with contextlib.suppress(TimeoutError):
                    pause = max(not_before, delay * (0.5 + random.random()))
                    await asyncio.wait_for(self._stopping.wait(), pause)
                if not order:  # a round is over: the next goes slower, if it fails too
                    order = self._rotation.after_loss()
                    delay = min(delay * 2, 5.0)
        finally:
            await self.pool.close(wait=not (self.forced or refused))

    def stop(self, force: bool = False) -> None:
        """Begin a graceful stop; with ``force``, also stop waiting for running jobs (they
        are abandoned to the broker). Safe to call from a signal handler on the loop."""
        self._stopping.set()
        if force:
            self._forced.set()

    @property
    def forced(self) -> bool:
        """Whether :meth:`stop` was forced."""
        return self._forced.is_set()

    def _ready_frame(self) -> dict[str, Any]:
        defaults: dict[str, dict[str, Any]] = {}
        for t in self.registry:
            options: dict[str, Any] = {
                "retries": t.retries,
                "retry_backoff": t.retry_backoff,
                "retry_backoff_max": t.retry_backoff_max,
            }
            if t.timeout is not None:
                options["timeout"] = t.timeout
            if t.rate is not None:
                options["rate"] = t.rate
            if t.concurrency_limit is not None:
                options["concurrency_limit"] = t.concurrency_limit
            defaults[t.name] = options
        return {
            "t": "ready",
            "tasks": self.registry.names(),
            "queues": self.queues,
            "concurrency": self.concurrency,
            "prefetch": self.prefetch,
            "pool": self.pool_kind,
            "defaults": defaults,
            "routes": {t.name: t.queue for t in self.registry},
            "schedules": {t.name: t.schedule for t in self.registry if t.schedule},
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }

    async def _session(self, address: Address) -> None:
        agent = f"conveyor-worker/{self.pool_kind}"
        conn = AsyncConnection(self.endpoint, agent, self._on_push, address)
        welcome = await conn.connect()
        self._rotation.connected(address)
        self._generation += 1
        self._conn = conn
        try:
            reply = await conn.request(self._ready_frame())
            self.worker_id = str(reply.get("worker", ""))
            log.info(
                "worker %s ready on %s: %d task(s), queues %s, concurrency %d (%s pool)",
                self.worker_id,
                address,
                len(self.registry),
                ",".join(self.queues),
                self.concurrency,
                self.pool_kind,
            )
            self.connected.set()
            loop = asyncio.get_running_loop()
            beat = loop.create_task(self._heartbeat(conn, float(welcome.get("heartbeat", 5.0))))
            stop = loop.create_task(self._stopping.wait())
            closed = loop.create_task(conn.closed.wait())
            await asyncio.wait({stop, closed}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            closed.cancel()
            try:
                if self._stopping.is_set() and not conn.closed.is_set():
                    await self._drain(conn)  # heartbeats go on: running jobs stay ours
            finally:
                beat.cancel()
        finally:
            self.connected.clear()
            self._abandon(self._generation)
            await conn.close()
            self._conn = None
        if isinstance(conn.refused, BrokerError) and conn.refused.code == "unauthorized":
            # our token was revoked or expired while we were connected: reconnecting with
            # it would only be refused again
            raise conn.refused

    async def _heartbeat(self, conn: AsyncConnection, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(ConnectionLost):
                conn.send({"t": "heartbeat", "running": self._running_ids()})

    def _running_ids(self) -> list[str]:
        return [h.id for h in self._held.values() if h.started]

    async def _drain(self, conn: AsyncConnection) -> None:
        """Graceful stop: no more jobs, give back unstarted ones, finish running ones."""
        conn.send({"t": "drain"})
        unstarted = [h for h in self._held.values() if not h.started]
        if unstarted:
            conn.send({"t": "release", "jobs": [{"id": h.id, "lease": h.lease} for h in unstarted]})
            for h in unstarted:
                if h.task is not None:
                    h.task.cancel()
                self._forget(h)
            self.stats.released += len(unstarted)
        running = [h.task for h in self._held.values() if h.task is not None]
        if running and not self.forced:
            log.info("draining: waiting for %d running job(s)", len(running))
            await self._until_done_or_forced(running)
        self.outbox.flush_reports()
        await conn.drain()
        if self.forced:
            left = sum(1 for h in self._held.values() if h.started)
            log.warning("force stop: %d running job(s) abandoned; the broker requeues them", left)
            return
        if self.outbox.unacked:  # outcomes count once ACKED says they are stored
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.outbox.all_acked(conn), ACK_WAIT)

    async def _until_done_or_forced(self, running: list[asyncio.Task[None]]) -> None:
        """Wait for every running job, or until :meth:`stop` is forced."""
        forced = asyncio.get_running_loop().create_task(self._forced.wait())
        either: set[asyncio.Future[Any]] = {
            asyncio.gather(*running, return_exceptions=True),
            forced,
        }
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            forced.cancel()

    def _abandon(self, generation: int) -> None:
        """The connection is gone: the broker requeued our jobs; forget the unstarted ones."""
        self.outbox.unacked.clear()
        for h in list(self._held.values()):
            if h.generation == generation and not h.started and h.task is not None:
                h.task.cancel()
                self._forget(h)

    def _forget(self, held: Held) -> None:
        """Drop ``held``, unless the same job id was dispatched again since (a requeued job
        can come back to this worker under a new lease while the old run still finishes)."""
        if self._held.get(held.id) is held:
            del self._held[held.id]

    # -- pushed frames -------------------------------------------------------------------
    def _on_push(self, frame: dict[str, Any]) -> None:
        kind = frame.get("t")
        if kind == "dispatch":
            loop = asyncio.get_running_loop()
            for raw in frame["jobs"]:
                held = Held(raw["id"], raw["lease"], self._generation)
                self._held[held.id] = held
                held.task = loop.create_task(self._execute(held, raw))
            self.stats.received += len(frame["jobs"])
        elif kind == "abort":
            self._abort(frame)
        elif kind == "acked":
            ids = frame.get("ids", ())
            self.stats.acked += len(ids)
            self.outbox.acked(ids)
        elif kind == "goodbye":
            log.warning("broker said goodbye: %s", frame.get("reason", ""))
        elif kind == "error":
            log.warning("broker error: %s: %s", frame.get("code"), frame.get("message"))

    def _abort(self, frame: dict[str, Any]) -> None:
        target = self._held.get(str(frame.get("id")))
        if target is None or frame.get("lease", target.lease) != target.lease:
            return
        log.info("job %s cancelled by the broker", target.id)
        if not target.started and target.task is not None:
            # never started: drop it and say so, so the broker can finish it
            target.task.cancel()
            self._forget(target)
            self.outbox.queue_report(target, cancelled("cancelled before it started"))
        else:
            self.pool.cancel(target.id)  # cooperative where the pool can

    async def _execute(self, held: Held, raw: dict[str, Any]) -> None:
        async with self._slots:
            if self._stopping.is_set() or held.generation != self._generation:
                return  # released or abandoned while waiting for a slot
            held.started = True
            self.outbox.note_started(held)
            await asyncio.sleep(0)  # the start notice is written before the job can run
            request = open_request(raw, self.cipher)
            started = self.joblog.started(held.id, raw["task"], raw["attempt"], request)
            if isinstance(request, RunResult):
                result = outcome = request  # sealed and this worker cannot open it, or no payload
            else:
                held.current = self._current_job(held, raw)
                outcome = await self.pool.run(dataclasses.replace(request, current=held.current))
                result = seal_result(outcome, self.cipher, raw)
            self.joblog.finished(held.id, raw["task"], raw["attempt"], started, outcome)
        self._forget(held)
        if held.generation != self._generation or self._conn is None:
            return  # the broker already requeued it when the connection dropped
        self.outbox.queue_report(held, result)

    # -- progress ------------------------------------------------------------------------
    def _current_job(self, held: Held, raw: dict[str, Any]) -> CurrentJob:
        loop = asyncio.get_running_loop()

        def changed() -> None:  # from the task's thread (or the loop): once per send
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
                loop.call_soon_threadsafe(self.outbox.progress_changed, held)

        return CurrentJob(held.id, str(raw["task"]), int(raw.get("attempt") or 1), changed)
