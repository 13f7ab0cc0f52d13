"""What Client and AsyncClient share: settings, request frames, reply parsing.

The twins differ only in how they move bytes. Job ids are chosen here, on the
client, so that resending a submit after a lost connection is idempotent.

With a payload key, specs are sealed here before they leave (:func:`seal_spec`)
and jobs are opened here as they arrive (:func:`read_job`); see
:mod:`conveyor.security.payload`.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from conveyor._ids import new_job_id
from conveyor.config import ClientSettings, parse_broker_url, resolve_client_settings
from conveyor.errors import (
    BrokerError,
    ConfigError,
    InvalidJob,
    JobFailed,
    LocalProtocolError,
    PayloadDecryptError,
)
from conveyor.job import Job, JobState
from conveyor.protocol.frames import DEFAULT_MAX_BATCH
from conveyor.security.payload import (
    CALL,
    PayloadCipher,
    context,
    is_sealed,
    is_sealed_call,
)
from conveyor.security.tls import client_context

SUBMIT_OPTIONS = (
    "queue",
    "priority",
    "retries",
    "retry_backoff",
    "retry_backoff_max",
    "timeout",
    "delay",
    "eta",
    "unique_key",
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    ssl_context: ssl.SSLContext
    token: str | None
    name: str


def make_endpoint(
    url: str | None,
    token: str | None,
    ca: str | Path | None,
    cert: str | Path | None,
    key: str | Path | None,
    home: str | Path | None,
    name: str,
) -> Endpoint:
    settings: ClientSettings = resolve_client_settings(
        broker_url=url,
        token=token,
        ca=str(ca) if ca is not None else None,
        home=str(home) if home is not None else None,
    )
    host, port = parse_broker_url(settings.broker_url)
    if settings.ca_file is None:
        raise ConfigError(
            "no CA certificate to verify the broker: pass ca=..., set CONVEYOR_CA, "
            "or run where $CONVEYOR_HOME/ca.pem exists (conveyor broker creates it)"
        )
    ctx = client_context(
        settings.ca_file,
        Path(cert) if cert else settings.cert_file,
        Path(key) if key else settings.key_file,
    )
    return Endpoint(host, port, ctx, settings.token, name)


def job_spec(
    task: str, args: Iterable[Any], kwargs: Mapping[str, Any], **options: Any
) -> dict[str, Any]:
    """A submit map for one job; options left as None are not sent (broker defaults)."""
    spec: dict[str, Any] = {"id": options.pop("job_id", None) or new_job_id(), "task": task}
    args = list(args)
    if args:
        spec["args"] = args
    if kwargs:
        spec["kwargs"] = dict(kwargs)
    eta = options.pop("eta", None)
    if isinstance(eta, datetime):
        if eta.tzinfo is None:
            raise InvalidJob("invalid", "eta must be timezone-aware (use UTC)", "eta")
        eta = eta.timestamp()
    if eta is not None:
        spec["eta"] = eta
    for name, value in options.items():
        if name not in SUBMIT_OPTIONS:
            raise TypeError(f"unknown submit option {name!r}")
        if value is not None:
            spec[name] = value
    return spec


def batch_item(item: Any, cipher: PayloadCipher | None = None) -> dict[str, Any]:
    """Normalise one submit_many item: (task, kwargs), (task, args, kwargs), or a spec map."""
    if isinstance(item, Mapping):
        spec = dict(item)
        spec.setdefault("id", new_job_id())
        return seal_spec(spec, cipher)
    if isinstance(item, tuple | list):
        if len(item) == 2 and isinstance(item[1], Mapping):
            return seal_spec(job_spec(item[0], (), item[1]), cipher)
        if len(item) == 3:
            return seal_spec(job_spec(item[0], item[1], item[2]), cipher)
    raise TypeError("submit_many items are (task, kwargs), (task, args, kwargs) or spec maps")


def seal_spec(spec: dict[str, Any], cipher: PayloadCipher | None) -> dict[str, Any]:
    """The spec with its args and kwargs sealed, bound to its id and task (no key: as is)."""
    if cipher is None:
        return spec
    args, kwargs = spec.get("args", []), spec.get("kwargs", {})
    if is_sealed_call(args, kwargs):
        return spec
    spec["id"] = spec.get("id") or new_job_id()  # the seal is bound to it: it must be ours
    ctx = context(CALL, str(spec["id"]), str(spec.get("task", "")))
    spec.pop("args", None)
    _, spec["kwargs"] = cipher.seal_call(args, kwargs, ctx=ctx)
    return spec


def read_job(wire: dict[str, Any], cipher: PayloadCipher | None) -> Job:
    """A job map from the broker as a Job, its sealed parts opened where the key fits."""
    job = Job.from_wire(wire)
    return job if cipher is None else cipher.open_job(job)


def chunks(
    specs: list[dict[str, Any]], size: int = DEFAULT_MAX_BATCH
) -> list[list[dict[str, Any]]]:
    return [specs[i : i + size] for i in range(0, len(specs), size)] or [[]]


def reply_error(frame: dict[str, Any]) -> BrokerError | None:
    if frame.get("t") == "error":
        return BrokerError.from_frame(frame)
    return None


def final_result(job: Job) -> Any:
    """The job's result; JobFailed if it ended without one; PayloadDecryptError if sealed."""
    if job.state is JobState.COMPLETED:
        if is_sealed(job.result):
            raise PayloadDecryptError(
                f"the result of job {job.id} is encrypted and no configured payload key opens it"
            )
        return job.result
    raise JobFailed(job)


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate submit options (queue, priority, ...) from the task's own kwargs."""
    opts = {k: options[k] for k in (*SUBMIT_OPTIONS, "job_id") if k in options}
    rest = {k: v for k, v in options.items() if k not in opts}
    return opts, rest


def split_oversized(
    chunk: list[dict[str, Any]], exc: LocalProtocolError
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Halves of a batch whose SUBMIT frame was too large; re-raise when it cannot split."""
    if exc.code != "frame_too_large":
        raise exc
    if len(chunk) == 1:
        raise InvalidJob("invalid", f"payload is too large to send: {exc}", "payload") from exc
    mid = len(chunk) // 2
    return chunk[:mid], chunk[mid:]


# -- request frames: built once here, sent by either twin -----------------------------------
def wait_frame(job_id: str, timeout: float | None) -> dict[str, Any]:
    frame: dict[str, Any] = {"t": "wait", "id": job_id}
    if timeout is not None:
        frame["timeout"] = timeout
    return frame


def list_frame(state: str | None, queue: str | None, limit: int, offset: int) -> dict[str, Any]:
    frame: dict[str, Any] = {"t": "list", "limit": limit, "offset": offset}
    if state:
        frame["state"] = state
    if queue:
        frame["queue"] = queue
    return frame


def dlq_frame(kind: str, ids: list[str] | None) -> dict[str, Any]:
    """DLQ_RETRY or DLQ_PURGE of these ids, or of every dead job when ids is None."""
    return {"t": kind, **({"ids": ids} if ids is not None else {"all": True})}
