"""AsyncClient: the asyncio twin of Client."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from conveyor.client._base import (
    batch_item,
    chunks,
    dlq_frame,
    final_result,
    job_spec,
    list_frame,
    make_endpoint,
    read_job,
    seal_spec,
    split_options,
    split_oversized,
    wait_frame,
)
from conveyor.client._conn import AsyncConnection
from conveyor.errors import ConnectionLost, LocalProtocolError, ResultTimeout
from conveyor.job import Job, JobState
from conveyor.security.payload import PayloadCipher, PayloadKey, resolve_cipher


class AsyncJob:
    """A handle on one job: ``await handle.result(timeout=10)``."""

    __slots__ = ("client", "id")

    def __init__(self, client: AsyncClient, job_id: str) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"<AsyncJob {self.id}>"

    async def get(self) -> Job:
        return await self.client.get(self.id)

    async def status(self) -> JobState:
        return (await self.get()).state

    async def wait(self, timeout: float | None = None) -> Job:
        return await self.client.wait(self.id, timeout)

    async def result(self, timeout: float | None = None) -> Any:
        return await self.client.result(self.id, timeout)

    async def cancel(self) -> Job:
        return await self.client.cancel(self.id)


class AsyncClient:
    """Talks to a broker from asyncio code. Reconnects with backoff when it is lost.

    ``AsyncClient(url, token=..., ca=...)``; every argument defaults from the
    environment and ``$CONVEYOR_HOME`` (see README). ``payload_key`` turns on end-to-end
    payload encryption, exactly as for :class:`~conveyor.client.sync.Client`.
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
        self.reconnect_timeout = reconnect_timeout
        self._conn: AsyncConnection | None = None
        self._lock = asyncio.Lock()
        self._reconnect_failures = 0

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        conn = AsyncConnection(self.endpoint, agent="conveyor-async-client")
        await conn.connect()
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _ensure(self) -> AsyncConnection:
        """The live connection, reconnecting with backoff (one task at a time) if needed."""
        failures = self._reconnect_failures
        async with self._lock:
            if self._conn is not None and not self._conn.closed.is_set():
                return self._conn
            if self._reconnect_failures != failures:
                # another task just spent the whole reconnect budget while we queued
                raise ConnectionLost("the broker is unreachable (reconnecting timed out)")
            deadline = time.monotonic() + self.reconnect_timeout
            delay = 0.05
            while True:
                try:
                    await self.connect()
                    assert self._conn is not None
                    return self._conn
                except (OSError, ConnectionLost, TimeoutError):
                    if time.monotonic() + delay > deadline:
                        self._reconnect_failures += 1
                        raise
                    await asyncio.sleep(delay * (0.5 + random.random() / 2))
                    delay = min(delay * 2, 2.0)

    async def _request(self, frame: dict[str, Any], resend: bool = True) -> dict[str, Any]:
        """Send a request; after a lost connection, reconnect and send it again.

        Submits (client-chosen job ids), reads and waits are safe to resend; requests
        that change state otherwise (cancel, DLQ) pass ``resend=False`` and raise
        ConnectionLost instead, since the broker may have applied them already. The
        reconnect budget starts when the connection is lost, not when the request began.
        """
        deadline: float | None = None
        while True:
            conn = await self._ensure()
            try:
                return await conn.request(frame)
            except ConnectionLost:
                now = time.monotonic()
                if not resend or (deadline is not None and now > deadline):
                    raise
                if deadline is None:
                    deadline = now + self.reconnect_timeout

    def _job(self, wire: dict[str, Any]) -> Job:
        return read_job(wire, self.cipher)

    # -- producing -----------------------------------------------------------------------
    async def submit(
        self, task: str, *args: Any, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncJob:
        """Submit one job. Keyword arguments that are not submit options go to the task."""
        opts, task_kwargs = split_options(options)
        spec = job_spec(task, args, {**task_kwargs, **(kwargs or {})}, **opts)
        seal_spec(spec, self.cipher)
        reply = await self._request({"t": "submit", "jobs": [spec]})
        return AsyncJob(self, reply["jobs"][0]["id"])

    async def submit_many(self, items: Iterable[Any]) -> list[AsyncJob]:
        """Submit many jobs in one round trip per 10,000."""
        specs = [batch_item(i, self.cipher) for i in items]
        out: list[AsyncJob] = []
        for chunk in chunks(specs):
            if chunk:
                out.extend(AsyncJob(self, j["id"]) for j in await self._submit_chunk(chunk))
        return out

    async def _submit_chunk(self, chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Submit one batch; one too big for a frame is split in halves until it fits."""
        try:
            reply = await self._request({"t": "submit", "jobs": chunk})
        except LocalProtocolError as exc:
            halves = split_oversized(chunk, exc)
            return [*await self._submit_chunk(halves[0]), *await self._submit_chunk(halves[1])]
        jobs: list[dict[str, Any]] = reply["jobs"]
        return jobs

    def job(self, job_id: str) -> AsyncJob:
        return AsyncJob(self, job_id)

    # -- reading -------------------------------------------------------------------------
    async def get(self, job_id: str) -> Job:
        return self._job((await self._request({"t": "get", "id": job_id}))["job"])

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once final, or (after ``timeout`` seconds) as it is then."""
        frame = wait_frame(job_id, timeout)
        return self._job((await self._request(frame))["job"])

    async def result(self, job_id: str, timeout: float | None = None) -> Any:
        job = await self.wait(job_id, timeout)
        if not job.state.is_final:
            raise ResultTimeout(f"job {job_id} is still {job.state.value} after {timeout}s")
        return final_result(job)

    async def cancel(self, job_id: str) -> Job:
        return self._job((await self._request({"t": "cancel", "id": job_id}, resend=False))["job"])

    async def list_jobs(
        self, state: str | None = None, queue: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Job]:
        frame = list_frame(state, queue, limit, offset)
        return [self._job(j) for j in (await self._request(frame))["jobs"]]

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = (await self._request({"t": "stats"}))["stats"]
        return stats

    async def dlq_retry(self, ids: list[str] | None = None) -> int:
        frame = dlq_frame("dlq_retry", ids)
        return int((await self._request(frame, resend=False))["count"])

    async def dlq_purge(self, ids: list[str] | None = None) -> int:
        frame = dlq_frame("dlq_purge", ids)
        return int((await self._request(frame, resend=False))["count"])
