"""Client: the blocking twin of AsyncClient, on a plain TLS socket (no threads)."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Iterator
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
from conveyor.client.endpoint import make_endpoint
from conveyor.client.flows import WorkflowHandle
from conveyor.client.handle import JobHandle
from conveyor.client.many import GET_MANY_WINDOW, JobRef, finishing, still_running, unique_ids
from conveyor.client.pipeline import Pipeline
from conveyor.client.sync_transport import SyncTransport
from conveyor.client.transport import NotResent
from conveyor.errors import BrokerError, Conflict, ConveyorError, JobNotFound, ResultTimeout
from conveyor.job import Job, JobState
from conveyor.limits import MAX_BATCH, MAX_GET_MANY, MAX_PAYLOAD
from conveyor.security.payload import PayloadCipher, PayloadKey, resolve_cipher
from conveyor.workflow import Node, plan


def _blocks(ids: list[str]) -> list[list[str]]:
    return [ids[i : i + MAX_GET_MANY] for i in range(0, len(ids), MAX_GET_MANY)]


class Client:
    """Talks to a broker from blocking code. Reconnects with backoff when it is lost.

    ``Client(url, token=..., ca=...)``; every argument defaults from the environment
    and ``$CONVEYOR_HOME`` (see README). ``url`` may list several brokers of one system,
    ``conveyor://a:65432,b:65432``: the client starts at a random one and fails over to
    the next when its broker is lost (docs/deploy.md says what is resent). Use as a
    context manager. Not thread-safe: give each thread its own Client. The first
    connection is made by the first request (or :meth:`connect`); if no broker answers it
    raises :class:`~conveyor.errors.BrokerUnavailable` at once.

    ``payload_key`` (one Fernet key, several with the primary first, or a
    :class:`~conveyor.security.payload.PayloadCipher`; default: the key file named by
    ``$CONVEYOR_PAYLOAD_KEY_FILE``) turns on end-to-end encryption: arguments are sealed
    before they leave, and results and error messages are opened as they come back.
    Sealed parts that no key opens are returned as they are; ``result()`` then raises
    :class:`~conveyor.errors.PayloadDecryptError`. ``self.cipher`` may be set later.

    ``pipeline=True`` makes :meth:`submit` return without waiting for the broker's
    acknowledgement (many times faster one job at a time); :meth:`flush` waits for them
    and raises :class:`~conveyor.errors.SubmitFailed` for refused ones, and every other
    request, and :meth:`close`, flush first. See :mod:`conveyor.client.pipeline`.
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
        pipeline: bool = False,
    ) -> None:
        self.endpoint = make_endpoint(url, token, ca, cert, key, home, name)
        self.cipher: PayloadCipher | None = resolve_cipher(payload_key)
        self._transport = SyncTransport(self.endpoint, reconnect_timeout=reconnect_timeout)
        self._pipeline = Pipeline(self._transport) if pipeline else None

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if e is None or self._pipeline is None:
            self.close()
            return
        try:  # leaving on an error: that error is the one to see, not a refused submit
            self._pipeline.settle()
        except ConveyorError:
            pass
        finally:
            self._transport.close()

    def connect(self) -> None:
        self._transport.connect()

    def close(self) -> None:
        """Close the connection; with ``pipeline=True`` after :meth:`flush`."""
        try:
            self.flush()
        finally:
            self._transport.close()

    def flush(self) -> None:
        """Wait until every pipelined submit is acknowledged (stored); SubmitFailed names
        the ones the broker refused. Without ``pipeline=True`` there is nothing to wait
        for."""
        if self._pipeline is not None:
            self._pipeline.flush()

    def _settle(self) -> None:
        """Wait for the pipelined submits' acknowledgements, so that what follows sees
        their jobs (their refusals wait for flush)."""
        if self._pipeline is not None and self._pipeline:
            self._pipeline.settle()

    def _request(self, frame: dict[str, Any], *, resend: bool = True) -> dict[str, Any]:
        self._settle()
        return self._transport.request(frame, resend=resend)

    def _limit(self, name: str, default: int) -> int:
        return self._transport.session.limit(name, default)

    @property
    def address(self) -> str:
        """``host:port`` of the broker in use: the one connected to, or the next to try
        (the URL may list several to fail over between)."""
        return str(self._transport.address)

    def _job(self, wire: dict[str, Any]) -> Job:
        return read_job(wire, self.cipher)

    # -- producing -----------------------------------------------------------------------
    def submit(
        self, task: TaskRef, *args: Any, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> JobHandle:
        """Submit one job of ``task`` (a name, or a ``@task`` object: then its own queue,
        priority, retries and timeout apply and the arguments are checked against it).
        Keyword arguments that are not submit options go to the task.

        Submit options: queue, priority (1 most urgent … 10), retries, retry_backoff,
        retry_backoff_max, timeout, delay (s), eta (aware datetime or epoch s),
        unique_key, concurrency_key (at most its limit run at once), job_id, after (job
        ids or handles: the job runs once they all completed, and is cancelled if one of
        them ends otherwise). Pass ``kwargs={...}`` for task arguments with those names.
        Raises :class:`~conveyor.errors.InvalidJob` naming the argument, before anything
        is sent, for what the broker would refuse.
        """
        opts, task_kwargs = split_options(options)
        max_payload = self._limit("max_payload", MAX_PAYLOAD)
        spec = job_spec(
            task,
            args,
            {**task_kwargs, **(kwargs or {})},
            cipher=self.cipher,
            max_payload=max_payload,
            **opts,
        )
        if self._pipeline is not None and opts.get("unique_key") is None:
            # pipelined: the id is the one chosen here (with a unique key, the broker may
            # answer with another job's: that submit waits for its reply)
            self._pipeline.submit({"t": "submit", "jobs": [spec]})
            return JobHandle(self, spec["id"])
        reply = self._request({"t": "submit", "jobs": [spec]})
        return JobHandle(self, submitted_ids(reply)[0])

    def submit_many(self, items: Iterable[Any]) -> list[JobHandle]:
        """Submit many jobs, as few round trips as the broker's limits allow.

        Items: ``(task, kwargs)``, ``(task, args, kwargs)`` or full spec maps.
        """
        max_payload = self._limit("max_payload", MAX_PAYLOAD)
        specs = [batch_item(i, self.cipher, max_payload) for i in items]
        session = self._transport.session
        ids: list[str] = []
        for batch in chunks(specs, self._limit("max_batch", MAX_BATCH), session.max_frame_size):
            ids.extend(submitted_ids(self._request({"t": "submit", "jobs": batch})))
        group = ResultGroup(ids)
        return [JobHandle(self, i, group) for i in ids]

    def submit_workflow(self, flow: Node) -> WorkflowHandle:
        """Submit a workflow (conveyor.workflow: ``chain``, ``group``, ``chord`` of
        signatures) as one batch of jobs; returns its handle (``.result()``)."""
        planned = plan(flow)
        max_payload = self._limit("max_payload", MAX_PAYLOAD)
        specs = workflow_specs(planned, self.cipher, max_payload)
        session = self._transport.session
        # in plan order: a job's dependencies are always in its batch or an earlier one
        for batch in chunks(specs, self._limit("max_batch", MAX_BATCH), session.max_frame_size):
            self._request({"t": "submit", "jobs": batch})
        return WorkflowHandle(self, planned)

    def job(self, job_id: str) -> JobHandle:
        return JobHandle(self, job_id)

    # -- reading -------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        return self._job(self._request({"t": "get", "id": job_id})["job"])

    def get_many(self, ids: Iterable[str], *, brief: bool = False) -> list[Job]:
        """The jobs among ``ids`` that exist, in the order asked: state, result and
        error, without arguments or history; a round trip per thousand ids. ``brief``
        leaves out all but the task, attempts and finish time too (the other fields of
        the Jobs are then their defaults)."""
        asked = list(dict.fromkeys(ids))
        self._settle()
        if asked and not self._transport.session.speaks("get_many"):  # an older broker
            return [job for job in map(self._get_or_none, asked) if job is not None]
        found: dict[str, Job] = {}
        blocks = _blocks(asked)
        while blocks:  # pipelined: the broker reads a block while the last one is unpacked
            rest: list[str] = []
            frames = functools.partial(get_many_frame, brief=brief)
            for block, reply in self._transport.exchange(blocks, frames, GET_MANY_WINDOW):
                if isinstance(reply, BrokerError):
                    raise reply
                found.update((j.id, j) for j in map(self._job, reply["jobs"]))
                rest += rest_after(block, reply)
            blocks = _blocks(rest)  # what truncated replies did not get to
        return [found[job_id] for job_id in asked if job_id in found]

    def as_completed(self, jobs: Iterable[JobRef], timeout: float | None = None) -> Iterator[Job]:
        """Each of ``jobs`` (ids or handles) as it becomes final, in the order they finish:
        those final already first, read a thousand per round trip; the rest pushed by the
        broker as they end, their WAITs pipelined on the connection and sent again after a
        reconnect. Raises ResultTimeout once ``timeout`` seconds pass with one not final,
        JobNotFound (before waiting) if an id names no job."""
        for job in self._finishing(jobs, timeout):
            if not job.state.is_final:
                raise still_running(job, timeout)
            yield job

    def wait_many(self, jobs: Iterable[JobRef], timeout: float | None = None) -> list[Job]:
        """The jobs (ids or handles), in the order given, once all are final, or after
        ``timeout`` seconds as they are then; see :meth:`as_completed`."""
        ids = unique_ids(jobs)
        done = {job.id: job for job in self._finishing(ids, timeout)}
        return [done[job_id] for job_id in ids]

    def _finishing(self, jobs: Iterable[JobRef], timeout: float | None) -> Iterator[Job]:
        ids = unique_ids(jobs)
        brief = functools.partial(self.get_many, brief=True)
        return finishing(ids, timeout, brief, self._transport.exchange, self._job)

    def _get_or_none(self, job_id: str) -> Job | None:
        try:
            return self._job(self._request(wait_frame(job_id, 0, result_only=True))["job"])
        except JobNotFound:
            return None

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once final, or (after ``timeout`` seconds) as it is then."""
        return self._job(self._request(wait_frame(job_id, timeout))["job"])

    def next_progress(
        self, job_id: str, since: float | None = 0.0, timeout: float | None = None
    ) -> Job:
        """The job once its task reports progress newer than ``since`` (a
        ``job.progress_at`` seen before; 0: any), or once it is final, or (after
        ``timeout`` seconds) as it is then. The broker pushes it: nothing polls."""
        frame = wait_frame(job_id, timeout, progress_since=since or 0.0)
        return self._job(self._request(frame)["job"])

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        """The job's result; JobFailed if it died or was cancelled; ResultTimeout if late."""
        job = self._job(self._request(wait_frame(job_id, timeout, result_only=True))["job"])
        if not job.state.is_final:
            raise ResultTimeout(f"job {job_id} is still {job.state.value} after {timeout}s")
        return final_result(job)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or scheduled job; a running one is marked, and cancelled when its
        run ends. Conflict if the job is already final.

        Cut off by a lost connection, the cancel is sent again (after a reconnect, to
        another broker if the URL lists several): repeating it by id is harmless, and if
        the first one had applied, the job found cancelled is returned."""
        frame = {"t": "cancel", "id": job_id}
        try:
            return self._job((self._request(frame, resend=False))["job"])
        except NotResent:
            pass
        try:
            return self._job((self._request(frame))["job"])
        except Conflict:
            job = self.get(job_id)
            if job.state is JobState.CANCELLED:  # our first cancel did apply
                return job
            raise

    def list_jobs(
        self,
        state: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        offset: int = 0,
        task: str | None = None,
        workflow: str | None = None,
    ) -> list[Job]:
        frame = list_frame(state, queue, limit, offset, task, workflow)
        return [self._job(j) for j in self._request(frame)["jobs"]]

    def stats(self, brief: bool = False) -> dict[str, Any]:
        """The broker's numbers (docs/protocol.md §6.6); ``brief``: only ``states`` and
        ``totals``, cheap to poll however many queues and tasks there are (a broker before
        it sends them all)."""
        frame: dict[str, Any] = {"t": "stats", "brief": True} if brief else {"t": "stats"}
        stats: dict[str, Any] = (self._request(frame))["stats"]
        return stats

    def dlq_retry(self, ids: list[str] | None = None) -> int:
        return int(self._request(dlq_frame("dlq_retry", ids), resend=False)["count"])

    def pause_queue(self, queue: str) -> None:
        """Keep taking the queue's jobs but dispatch none, until :meth:`resume_queue` (admin)."""
        self._request({"t": "queue_pause", "queue": queue})

    def resume_queue(self, queue: str) -> None:
        """Dispatch the queue's jobs again (admin)."""
        self._request({"t": "queue_resume", "queue": queue})

    def limits(
        self, set: dict[str, str | int] | None = None, clear: list[str] | None = None
    ) -> dict[str, Any]:
        """Rate and concurrency limits (admin): set ``{"task:add": "10/s", "key:domain:":
        2}``, clear targets, and return them all as in force (``set``, ``rates``, ...)."""
        limits: dict[str, Any] = self._request(limits_frame(set, clear))["limits"]
        return limits

    def dlq_purge(self, ids: list[str] | None = None) -> int:
        return int(self._request(dlq_frame("dlq_purge", ids), resend=False)["count"])

    def ping(self) -> dict[str, Any]:
        """One PING/PONG round trip (connecting first, untimed, if need be):
        ``{"rtt": seconds, "role": "producer" | "worker" | "admin", "server": "conveyor/…"}``."""
        session = self._transport.session
        started = time.perf_counter()
        self._request({"t": "ping"})
        return pong(session.welcome, time.perf_counter() - started)

    # -- schedules (a producer or admin token) -----------------------------------------
    def _schedule(self, frame: dict[str, Any], *, resend: bool = True) -> dict[str, Any]:
        _schedules.require(self._transport.session.speaks(_schedules.FEATURE))
        return self._request(frame, resend=resend)

    def schedule_add(
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
        return dict((self._schedule(frame, resend=False))["schedule"])

    def schedule_list(self) -> list[dict[str, Any]]:
        """Every schedule: its definition, ``last_run``, ``last_job``, ``next_run``."""
        return list((self._schedule({"t": "schedule", "op": "list"}))["schedules"])

    def schedule_get(self, name: str) -> dict[str, Any]:
        """One schedule's map; JobNotFound if there is none of that name."""
        return dict((self._schedule(_schedules.named_frame("get", name)))["schedule"])

    def schedule_pause(self, name: str) -> dict[str, Any]:
        """Fire no slot of it until :meth:`schedule_resume` (missed slots are skipped)."""
        return dict((self._schedule(_schedules.named_frame("pause", name)))["schedule"])

    def schedule_resume(self, name: str) -> dict[str, Any]:
        return dict((self._schedule(_schedules.named_frame("resume", name)))["schedule"])

    def schedule_remove(self, name: str) -> None:
        self._schedule(_schedules.named_frame("remove", name), resend=False)

    def schedule_run_now(self, name: str) -> JobHandle:
        """Fire one run of it now, outside its slots; returns the job's handle."""
        frame = _schedules.named_frame("run_now", name)
        reply = self._schedule(frame, resend=False)
        return JobHandle(self, str(reply["job"]["id"]))

    # -- tokens (an admin token) -------------------------------------------------------
    def token_create(
        self, role: str, name: str | None = None, ttl: float | None = None
    ) -> dict[str, Any]:
        """Create a token on the broker: ``{"token": "cvy_…", "info": {name, role, created_at,
        expires_at, revoked, hash_prefix}}``. The token is shown this once; keep it."""
        frame = token_create_frame(role, name, ttl)
        return reply_map(self._request(frame, resend=False))

    def token_list(self) -> dict[str, Any]:
        """Every token the broker knows, revoked and expired ones too: ``{"tokens": [info]}``."""
        return reply_map(self._request({"t": "token_list"}))

    def token_revoke(self, name: str) -> dict[str, Any]:
        """Revoke the named token for good: ``{"revoked": name}``; JobNotFound if unknown."""
        return reply_map(self._request({"t": "token_revoke", "name": name}))
