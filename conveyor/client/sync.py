"""Client: the blocking twin of AsyncClient, on a plain TLS socket (no threads)."""

from __future__ import annotations

import itertools
import random
import socket
import ssl
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from conveyor.client._base import (
    Endpoint,
    batch_item,
    chunks,
    dlq_frame,
    final_result,
    job_spec,
    list_frame,
    make_endpoint,
    read_job,
    reply_error,
    seal_spec,
    split_options,
    split_oversized,
    wait_frame,
)
from conveyor.errors import ConnectionLost, LocalProtocolError, ProtocolError, ResultTimeout
from conveyor.job import Job, JobState
from conveyor.protocol.connection import ClientConnection, ConnState
from conveyor.security.payload import PayloadCipher, PayloadKey, resolve_cipher


class JobHandle:
    """A handle on one job: ``handle.result(timeout=10)``, ``handle.status()``."""

    __slots__ = ("client", "id")

    def __init__(self, client: Client, job_id: str) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}>"

    def get(self) -> Job:
        return self.client.get(self.id)

    def status(self) -> JobState:
        return self.get().state

    def wait(self, timeout: float | None = None) -> Job:
        return self.client.wait(self.id, timeout)

    def result(self, timeout: float | None = None) -> Any:
        return self.client.result(self.id, timeout)

    def cancel(self) -> Job:
        return self.client.cancel(self.id)


class _SyncConnection:
    """One blocking TLS connection; replies matched to requests by rid."""

    def __init__(self, endpoint: Endpoint, connect_timeout: float = 10.0) -> None:
        self.conn = ClientConnection()
        raw = socket.create_connection((endpoint.host, endpoint.port), timeout=connect_timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = endpoint.ssl_context.wrap_socket(raw, server_hostname=endpoint.host)
        except BaseException:
            raw.close()
            raise
        self.sock.settimeout(None)
        self._rids = itertools.count(1)
        self._early: dict[int, dict[str, Any]] = {}
        try:
            self.sock.sendall(self.conn.hello(endpoint.token, endpoint.name, "conveyor-client"))
            welcome = self._read_frame(connect_timeout)
        except BaseException:
            self.sock.close()
            raise
        err = reply_error(welcome)
        if err is not None:
            self.close()
            raise err
        self.welcome = welcome

    def _read_frame(self, timeout: float | None = None) -> dict[str, Any]:
        self.sock.settimeout(timeout)
        try:
            while True:
                frame = self.conn.next_frame()
                if frame is not None:
                    return frame
                if self.conn.state is ConnState.CLOSED:
                    raise ConnectionLost("the broker closed the connection")
                self.conn.receive_data(self.sock.recv(262144))
        except (OSError, ProtocolError) as exc:
            if isinstance(exc, TimeoutError | socket.timeout):
                raise ConnectionLost("no reply from the broker in time") from exc
            raise ConnectionLost(f"connection to the broker lost: {exc}") from exc

    def request(self, frame: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        rid = next(self._rids)
        try:
            self.sock.sendall(self.conn.send({**frame, "rid": rid}))
        except OSError as exc:
            raise ConnectionLost(f"connection to the broker lost: {exc}") from exc
        while rid not in self._early:
            reply = self._read_frame(timeout)
            reply_rid = reply.get("rid")
            if isinstance(reply_rid, int):
                self._early[reply_rid] = reply
            elif reply.get("t") in ("goodbye", "error"):
                raise ConnectionLost(f"broker: {reply.get('reason') or reply.get('message')}")
        reply = self._early.pop(rid)
        err = reply_error(reply)
        if err is not None:
            raise err
        return reply

    def close(self) -> None:
        try:
            if self.conn.state is ConnState.OPEN:
                self.sock.sendall(self.conn.send({"t": "goodbye", "reason": "client closing"}))
        except (OSError, ssl.SSLError, ProtocolError):
            pass
        finally:
            self.sock.close()


class Client:
    """Talks to a broker from blocking code. Reconnects with backoff when it is lost.

    ``Client(url, token=..., ca=...)``; every argument defaults from the environment
    and ``$CONVEYOR_HOME`` (see README). Use as a context manager. Not thread-safe:
    give each thread its own Client.

    ``payload_key`` (one Fernet key, several with the primary first, or a
    :class:`~conveyor.security.payload.PayloadCipher`; default: the key file named by
    ``$CONVEYOR_PAYLOAD_KEY_FILE``) turns on end-to-end encryption: arguments are sealed
    before they leave, and results and error messages are opened as they come back.
    Sealed parts that no key opens are returned as they are; ``result()`` then raises
    :class:`~conveyor.errors.PayloadDecryptError`. ``self.cipher`` may be set later.
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
        self._conn: _SyncConnection | None = None

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def connect(self) -> None:
        self._conn = _SyncConnection(self.endpoint)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _reconnect(self, deadline: float) -> _SyncConnection:
        delay = 0.05
        while True:
            try:
                self.connect()
                assert self._conn is not None
                return self._conn
            except (OSError, ConnectionLost):
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, 2.0)

    def _request(
        self, frame: dict[str, Any], timeout: float | None = 60.0, resend: bool = True
    ) -> dict[str, Any]:
        """Send a request; after a lost connection, reconnect and send it again.

        Submits (client-chosen job ids), reads and waits are safe to resend; requests
        that change state otherwise (cancel, DLQ) pass ``resend=False`` and raise
        ConnectionLost instead, since the broker may have applied them already. The
        reconnect budget starts when the connection is lost, not when the request began.
        """
        deadline: float | None = None
        while True:
            try:
                if self._conn is None:
                    deadline = deadline or time.monotonic() + self.reconnect_timeout
                    conn = self._reconnect(deadline)
                else:
                    conn = self._conn
                return conn.request(frame, timeout)
            except ConnectionLost:
                if self._conn is not None:
                    self._conn.sock.close()
                self._conn = None
                now = time.monotonic()
                if not resend or (deadline is not None and now > deadline):
                    raise
                deadline = deadline or now + self.reconnect_timeout

    def _job(self, wire: dict[str, Any]) -> Job:
        return read_job(wire, self.cipher)

    # -- producing -----------------------------------------------------------------------
    def submit(
        self, task: str, *args: Any, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> JobHandle:
        """Submit one job. Keyword arguments that are not submit options go to the task.

        Submit options: queue, priority (1 most urgent … 10), retries, retry_backoff,
        retry_backoff_max, timeout, delay (s), eta (aware datetime or epoch s),
        unique_key, job_id. Pass ``kwargs={...}`` for task arguments with those names.
        """
        opts, task_kwargs = split_options(options)
        spec = job_spec(task, args, {**task_kwargs, **(kwargs or {})}, **opts)
        seal_spec(spec, self.cipher)
        reply = self._request({"t": "submit", "jobs": [spec]})
        return JobHandle(self, reply["jobs"][0]["id"])

    def submit_many(self, items: Iterable[Any]) -> list[JobHandle]:
        """Submit many jobs in one round trip per 10,000.

        Items: ``(task, kwargs)``, ``(task, args, kwargs)`` or full spec maps.
        """
        specs = [batch_item(i, self.cipher) for i in items]
        out: list[JobHandle] = []
        for chunk in chunks(specs):
            if chunk:
                out.extend(JobHandle(self, j["id"]) for j in self._submit_chunk(chunk))
        return out

    def _submit_chunk(self, chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Submit one batch; one too big for a frame is split in halves until it fits."""
        try:
            reply = self._request({"t": "submit", "jobs": chunk})
        except LocalProtocolError as exc:
            halves = split_oversized(chunk, exc)
            return [*self._submit_chunk(halves[0]), *self._submit_chunk(halves[1])]
        jobs: list[dict[str, Any]] = reply["jobs"]
        return jobs

    def job(self, job_id: str) -> JobHandle:
        return JobHandle(self, job_id)

    # -- reading -------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        return self._job(self._request({"t": "get", "id": job_id})["job"])

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once final, or (after ``timeout`` seconds) as it is then."""
        frame = wait_frame(job_id, timeout)
        read_timeout = None if timeout is None else timeout + 30.0
        return self._job(self._request(frame, read_timeout)["job"])

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        """The job's result; JobFailed if it died or was cancelled; ResultTimeout if late."""
        job = self.wait(job_id, timeout)
        if not job.state.is_final:
            raise ResultTimeout(f"job {job_id} is still {job.state.value} after {timeout}s")
        return final_result(job)

    def cancel(self, job_id: str) -> Job:
        return self._job(self._request({"t": "cancel", "id": job_id}, resend=False)["job"])

    def list_jobs(
        self, state: str | None = None, queue: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Job]:
        frame = list_frame(state, queue, limit, offset)
        return [self._job(j) for j in self._request(frame)["jobs"]]

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._request({"t": "stats"})["stats"]
        return stats

    def dlq_retry(self, ids: list[str] | None = None) -> int:
        frame = dlq_frame("dlq_retry", ids)
        return int(self._request(frame, resend=False)["count"])

    def dlq_purge(self, ids: list[str] | None = None) -> int:
        frame = dlq_frame("dlq_purge", ids)
        return int(self._request(frame, resend=False)["count"])
