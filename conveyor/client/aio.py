"""AsyncClient: the asyncio twin of Client (same methods, awaited)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from conveyor.client import _schedules
from conveyor.client._base import (
    ResultGroup,
    TaskRef,
    batch_item,
    chunks,
    dlq_frame,
    final_result,
    get_many_frame,
    job_spec,
    limits_frame,
    list_frame,
    pong,
    read_job,
    reply_map,
    rest_after,
    split_options,
    submitted_ids,
    token_create_frame,
    wait_frame,
    workflow_specs,
)
from conveyor.client.async_transport import AsyncTransport
from conveyor.client.endpoint import make_endpoint
from conveyor.client.flows import AsyncWorkflow
from conveyor.client.many import GET_MANY_WINDOW, JobRef, finishing_async, still_running, unique_ids
from conveyor.client.transport import NotResent
from conveyor.errors import Conflict, JobNotFound, ResultTimeout
from conveyor.job import Job, JobState
from conveyor.limits import MAX_BATCH, MAX_GET_MANY, MAX_PAYLOAD
from conveyor.security.payload import PayloadCipher, PayloadKey, resolve_cipher
from conveyor.workflow import Node, plan


class AsyncJob:
    """A handle on one job: ``await handle.result(timeout=10)``."""

    __slots__ = ("client", "group", "id")

    def __init__(self, client: AsyncClient, job_id: str, group: ResultGroup | None = None) -> None:
        self.client = client
        self.id = job_id
        self.group = group  # the handles submitted with it, whose results are read together

    def __repr__(self) -> str:
        return f"<AsyncJob {self.id}>"

    async def get(self) -> Job:
        return await self.client.get(self.id)

    async def status(self) -> JobState:
        return (await self.get()).state

    async def wait(self, timeout: float | None = None) -> Job:
        return await self.client.wait(self.id, timeout)

    async def next_progress(self, since: float | None = 0.0, timeout: float | None = None) -> Job:
        return await self.client.next_progress(self.id, since, timeout)

    async def result(self, timeout: float | None = None) -> Any:
        group = self.group
        if group is not None:
            job = group.take(self.id)
            if job is None and (window := group.window(self.id)):
                found = await self.client.get_many(window, brief=True)
                group.keep(found, self.id)
                job = next((j for j in found if j.id == self.id and j.state.is_final), None)
            if job is not None:
                return final_result(job)
        return await self.client.result(self.id, timeout)

    async def cancel(self) -> Job:
        return await self.client.cancel(self.id)


class AsyncClient:
    """Talks to a broker from asyncio code. Reconnects with backoff when it is lost.

    ``AsyncClient(url, token=..., ca=...)``; every argument defaults from the
    environment and ``$CONVEYOR_HOME`` (see README); ``url`` may list several brokers to
    fail over between, as for :class:`~conveyor.client.sync.Client`. ``payload_key``
    turns on end-to-end payload encryption, exactly as for Client. Safe to use from many
    tasks at once: their requests share one connection.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        home: str | Path | None = None,
        name: str = "producer",
        reconnect_timeout: float = 30.0,
        payload_key: PayloadKey | PayloadCipher | None = None,
    ) -> None:
        self.endpoint = make_endpoint(url, token, ca, cert, key, home, name)
        self.cipher: PayloadCipher | None = resolve_cipher(payload_key)
        self._transport = AsyncTransport(self.endpoint, reconnect_timeout=reconnect_timeout)

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        await self._transport.connect()

    async def close(self) -> None:
        await self._transport.close()

    async def _request(self, frame: dict[str, Any], *, resend: bool = True) -> dict[str, Any]:
        return await self._transport.request(frame, resend=resend)

    async def _limit(self, name: str, default: int) -> int:
        return (await self._transport.session()).limit(name, default)

    @property
    def address(self) -> str:
        """``host:port`` of the broker in use: the one connected to, or the next to try
        (the URL may list several to fail over between)."""
        return str(self._transport.address)

    def _job(self, wire: dict[str, Any]) -> Job:
        return read_job(wire, self.cipher)

    # -- producing -----------------------------------------------------------------------
    async def submit(
        self, task: TaskRef, *args: Any, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncJob:
        """Submit one job. Keyword arguments that are not submit options go to the task."""
        opts, task_kwargs = split_options(options)
        max_payload = await self._limit("max_payload", MAX_PAYLOAD)
        spec = job_spec(
            task,
            args,
            {**task_kwargs, **(kwargs or {})},
            cipher=self.cipher,
            max_payload=max_payload,
            **opts,
        )
        reply = await self._request({"t": "submit", "jobs": [spec]})
        return AsyncJob(self, submitted_ids(reply)[0])

    async def submit_many(self, items: Iterable[Any]) -> list[AsyncJob]:
        """Submit many jobs, as few round trips as the broker's limits allow."""
        session = await self._transport.session()
        max_payload = session.limit("max_payload", MAX_PAYLOAD)
        specs = [batch_item(i, self.cipher, max_payload) for i in items]
        ids: list[str] = []
        for batch in chunks(specs, session.limit("max_batch", MAX_BATCH), session.max_frame_size):
            ids.extend(submitted_ids(await self._request({"t": "submit", "jobs": batch})))
        group = ResultGroup(ids)
        return [AsyncJob(self, i, group) for i in ids]

    async def submit_workflow(self, flow: Node) -> AsyncWorkflow:
        """Submit a workflow (conveyor.workflow: ``chain``, ``group``, ``chord`` of
        signatures) as one batch of jobs; returns its handle (``.result()``)."""
        planned = plan(flow)
        session = await self._transport.session()
        specs = workflow_specs(planned, self.cipher, session.limit("max_payload", MAX_PAYLOAD))
        # in plan order: a job's dependencies are always in its batch or an earlier one
        max_batch = session.limit("max_batch", MAX_BATCH)
        for batch in chunks(specs, max_batch, session.max_frame_size):
            await self._request({"t": "submit", "jobs": batch})
        return AsyncWorkflow(self, planned)

    def job(self, job_id: str) -> AsyncJob:
        return AsyncJob(self, job_id)

    # -- reading -------------------------------------------------------------------------
    async def get(self, job_id: str) -> Job:
        return self._job((await self._request({"t": "get", "id": job_id}))["job"])

    async def get_many(self, ids: Iterable[str], *, brief: bool = False) -> list[Job]:
        """The jobs among ``ids`` that exist, in the order asked: state, result and
        error, without arguments or history; a round trip per thousand ids. ``brief``
        leaves out all but the task, attempts and finish time too (the other fields of
        the Jobs are then their defaults)."""
        asked = list(dict.fromkeys(ids))
        if asked and not (await self._transport.session()).speaks("get_many"):  # an older broker
            old = [await self._get_or_none(job_id) for job_id in asked]
            return [job for job in old if job is not None]
        found: dict[str, Job] = {}
        window = asyncio.Semaphore(GET_MANY_WINDOW)  # a few in flight, as Client.get_many

        async def read(block: list[str]) -> None:
            async with window:
                reply = await self._request(get_many_frame(block, brief))
            found.update((j.id, j) for j in map(self._job, reply["jobs"]))
            if rest := rest_after(block, reply):  # a truncated reply: the rest, in turn
                await read(rest)

        blocks = [asked[i : i + MAX_GET_MANY] for i in range(0, len(asked), MAX_GET_MANY)]
        try:
            async with asyncio.TaskGroup() as group:  # one fails: the others are cancelled
                for block in blocks:
                    group.create_task(read(block))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None  # the error a caller expects, not a group
        return [found[job_id] for job_id in asked if job_id in found]

    async def as_completed(
        self, jobs: Iterable[JobRef], timeout: float | None = None
    ) -> AsyncIterator[Job]:
        """Each of ``jobs`` as it becomes final, in the order they finish (see
        :meth:`Client.as_completed`): ``async for job in client.as_completed(handles)``."""
        async for job in self._finishing(jobs, timeout):
            if not job.state.is_final:
                raise still_running(job, timeout)
            yield job

    async def wait_many(self, jobs: Iterable[JobRef], timeout: float | None = None) -> list[Job]:
        """The jobs, in the order given, once all are final, or after ``timeout`` seconds
        as they are then (see :meth:`Client.wait_many`)."""
        ids = unique_ids(jobs)
        done = {job.id: job async for job in self._finishing(ids, timeout)}
        return [done[job_id] for job_id in ids]

    def _finishing(self, jobs: Iterable[JobRef], timeout: float | None) -> AsyncIterator[Job]:
        ids = unique_ids(jobs)
        brief = functools.partial(self.get_many, brief=True)
        return finishing_async(ids, timeout, brief, self._request, self._job)

    async def _get_or_none(self, job_id: str) -> Job | None:
        try:
            frame = wait_frame(job_id, 0, result_only=True)
            return self._job((await self._request(frame))["job"])
        except JobNotFound:
            return None

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once final, or (after ``timeout`` seconds) as it is then."""
        return self._job((await self._request(wait_frame(job_id, timeout)))["job"])

    async def next_progress(
        self, job_id: str, since: float | None = 0.0, timeout: float | None = None
    ) -> Job:
        """The job once its task reports progress newer than ``since`` (0: any), or once
        it is final, or after ``timeout`` seconds (see :meth:`Client.next_progress`)."""
        frame = wait_frame(job_id, timeout, progress_since=since or 0.0)
        return self._job((await self._request(frame))["job"])

    async def result(self, job_id: str, timeout: float | None = None) -> Any:
        frame = wait_frame(job_id, timeout, result_only=True)
        job = self._job((await self._request(frame))["job"])
        if not job.state.is_final:
            raise ResultTimeout(f"job {job_id} is still {job.state.value} after {timeout}s")
        return final_result(job)

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued or scheduled job; a running one is marked, and cancelled when its
        run ends. Conflict if the job is already final.

        Cut off by a lost connection, the cancel is sent again (after a reconnect, to
        another broker if the URL lists several): repeating it by id is harmless, and if
        the first one had applied, the job found cancelled is returned."""
        frame = {"t": "cancel", "id": job_id}
        try:
            return self._job((await self._request(frame, resend=False))["job"])
        except NotResent:
            pass
        try:
            return self._job((await self._request(frame))["job"])
        except Conflict:
            job = await self.get(job_id)
            if job.state is JobState.CANCELLED:  # our first cancel did apply
                return job
            raise

    async def list_jobs(
        self,
        state: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        offset: int = 0,
        task: str | None = None,
        workflow: str | None = None,
    ) -> list[Job]:
        frame = list_frame(state, queue, limit, offset, task, workflow)
        return [self._job(j) for j in (await self._request(frame))["jobs"]]

    async def stats(self, brief: bool = False) -> dict[str, Any]:
        """The broker's numbers (docs/protocol.md §6.6); ``brief``: only ``states`` and
        ``totals``, cheap to poll however many queues and tasks there are (a broker before
        it sends them all)."""
        frame: dict[str, Any] = {"t": "stats", "brief": True} if brief else {"t": "stats"}
        stats: dict[str, Any] = (await self._request(frame))["stats"]
        return stats

    async def dlq_retry(self, ids: list[str] | None = None) -> int:
        return int((await self._request(dlq_frame("dlq_retry", ids), resend=False))["count"])

    async def pause_queue(self, queue: str) -> None:
        """Keep taking the queue's jobs but dispatch none, until :meth:`resume_queue` (admin)."""
        await self._request({"t": "queue_pause", "queue": queue})

    async def resume_queue(self, queue: str) -> None:
        """Dispatch the queue's jobs again (admin)."""
        await self._request({"t": "queue_resume", "queue": queue})

    async def limits(
        self, set: dict[str, str | int] | None = None, clear: list[str] | None = None
    ) -> dict[str, Any]:
        """Rate and concurrency limits (admin): see :meth:`Client.limits`."""
        limits: dict[str, Any] = (await self._request(limits_frame(set, clear)))["limits"]
        return limits

    async def dlq_purge(self, ids: list[str] | None = None) -> int:
        return int((await self._request(dlq_frame("dlq_purge", ids), resend=False))["count"])

    async def ping(self) -> dict[str, Any]:
        """One PING/PONG round trip (connecting first, untimed, if need be):
        ``{"rtt": seconds, "role": "producer" | "worker" | "admin", "server": "conveyor/…"}``."""
        session = await self._transport.session()
        started = time.perf_counter()
        await self._request({"t": "ping"})
        return pong(session.welcome, time.perf_counter() - started)

    # -- schedules (a producer or admin token) -----------------------------------------
    async def _schedule(self, frame: dict[str, Any], *, resend: bool = True) -> dict[str, Any]:
        _schedules.require((await self._transport.session()).speaks(_schedules.FEATURE))
        return await self._request(frame, resend=resend)

    async def schedule_add(
        self,
        name: str,
        task: TaskRef,
        args: list[Any] | tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Add a periodic schedule: ``cron="*/5 * * * *"`` (with ``tz="Europe/Berlin"``) or
        ``every="30s"``; also ``queue``, ``priority``, ``catch_up`` ("none", "one", "all"),
        ``paused``, ``replace`` (else an existing name is a Conflict). Returns its map."""
        frame = _schedules.add_frame(name, task, args, kwargs, **options)
        return dict((await self._schedule(frame, resend=False))["schedule"])

    async def schedule_list(self) -> list[dict[str, Any]]:
        """Every schedule: its definition, ``last_run``, ``last_job``, ``next_run``."""
        return list((await self._schedule({"t": "schedule", "op": "list"}))["schedules"])

    async def schedule_get(self, name: str) -> dict[str, Any]:
        """One schedule's map; JobNotFound if there is none of that name."""
        return dict((await self._schedule(_schedules.named_frame("get", name)))["schedule"])

    async def schedule_pause(self, name: str) -> dict[str, Any]:
        """Fire no slot of it until :meth:`schedule_resume` (missed slots are skipped)."""
        return dict((await self._schedule(_schedules.named_frame("pause", name)))["schedule"])

    async def schedule_resume(self, name: str) -> dict[str, Any]:
        return dict((await self._schedule(_schedules.named_frame("resume", name)))["schedule"])

    async def schedule_remove(self, name: str) -> None:
        await self._schedule(_schedules.named_frame("remove", name), resend=False)

    async def schedule_run_now(self, name: str) -> AsyncJob:
        """Fire one run of it now, outside its slots; returns the job's handle."""
        frame = _schedules.named_frame("run_now", name)
        reply = await self._schedule(frame, resend=False)
        return AsyncJob(self, str(reply["job"]["id"]))

    # -- tokens (an admin token) -------------------------------------------------------
    async def token_create(
        self, role: str, name: str | None = None, ttl: float | None = None
    ) -> dict[str, Any]:
        """Create a token on the broker: ``{"token": "cvy_…", "info": {name, role, created_at,
        expires_at, revoked, hash_prefix}}``. The token is shown this once; keep it."""
        frame = token_create_frame(role, name, ttl)
        return reply_map(await self._request(frame, resend=False))

    async def token_list(self) -> dict[str, Any]:
        """Every token the broker knows, revoked and expired ones too: ``{"tokens": [info]}``."""
        return reply_map(await self._request({"t": "token_list"}))

    async def token_revoke(self, name: str) -> dict[str, Any]:
        """Revoke the named token for good: ``{"revoked": name}``; JobNotFound if unknown."""
        return reply_map(await self._request({"t": "token_revoke", "name": name}))
