"""What Client and AsyncClient share: settings, building and checking requests, reading replies.

The twins differ only in how they move bytes (``sync_transport.py``,
``async_transport.py``). Everything a submit carries is checked here, before anything is
sent: a value that is not JSON-compatible, a payload over the broker's limit or a bad
option raises :class:`~conveyor.errors.InvalidJob` naming the argument at once. Job ids
are chosen here, on the client, so that sending a submit again after a lost connection is
idempotent. Payloads travel packed
(:mod:`conveyor.protocol.payload`): packed once here, unpacked once by the worker.

With a payload key, calls are sealed here before they leave (:func:`seal_call`) and jobs
are opened here as they arrive (:func:`read_job`); see :mod:`conveyor.security.payload`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from conveyor._ids import new_job_id
from conveyor.errors import InvalidJob, JobFailed, PayloadDecryptError
from conveyor.job import Job, JobState
from conveyor.limits import FRAME_OVERHEAD, MAX_BATCH, MAX_GET_MANY, MAX_PAYLOAD
from conveyor.protocol.payload import PayloadError, check_json, pack_call
from conveyor.security.payload import CALL, PayloadCipher, context, is_sealed
from conveyor.workflow import Plan

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
    "concurrency_key",
    "after",
)


def seal_call(
    job_id: str, task: str, args: list[Any], kwargs: dict[str, Any], cipher: PayloadCipher | None
) -> tuple[list[Any], dict[str, Any]]:
    """The call as it leaves: sealed, bound to its id and task, when there is a key."""
    if cipher is None:
        return args, kwargs
    return cipher.seal_call(args, kwargs, ctx=context(CALL, job_id, task))


class TaskDefinition(Protocol):
    """What a task object (``@task``) offers a producer: conveyor.worker.tasks.TaskDef."""

    @property
    def name(self) -> str: ...

    def submit_options(self) -> dict[str, Any]: ...

    def check_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None: ...


TaskRef = Any  # a task name, or a task object (``@task``) that has ``__conveyor_task__``


def resolve_task(
    task: TaskRef, args: Iterable[Any], kwargs: Mapping[str, Any], options: dict[str, Any]
) -> str:
    """The task's name; for a task object, also check the call against its signature and
    fill in its own options where the producer gave none (``options`` is updated)."""
    if isinstance(task, str):
        return task
    definition: TaskDefinition | None = getattr(task, "__conveyor_task__", None)
    if definition is None:
        raise InvalidJob(
            "invalid", f"task must be a task name or a @task, not {type(task).__name__}", "task"
        )
    definition.check_call(tuple(args), dict(kwargs))
    for name, value in definition.submit_options().items():
        if options.get(name) is None:
            options[name] = value
    return definition.name


def job_spec(
    task: TaskRef,
    args: Iterable[Any],
    kwargs: Mapping[str, Any],
    *,
    cipher: PayloadCipher | None = None,
    max_payload: int = MAX_PAYLOAD,
    **options: Any,
) -> dict[str, Any]:
    """A checked submit map for one job, its payload packed; unset options are not sent."""
    args, kwargs = list(args), dict(kwargs)
    task = resolve_task(task, args, kwargs, options)
    job_id = options.pop("job_id", None) or new_job_id()
    spec: dict[str, Any] = {"id": job_id, "task": task}
    call_args, call_kwargs = list(args), dict(kwargs)
    for value, fld in ((call_args, "args"), (call_kwargs, "kwargs")):
        try:
            check_json(value, fld)
        except PayloadError as exc:
            raise InvalidJob("invalid", str(exc), fld) from None
    payload = pack_call(*seal_call(job_id, task, call_args, call_kwargs, cipher))
    if len(payload) > max_payload:
        raise InvalidJob(
            "invalid",
            f"payload is {len(payload):,} bytes packed; the broker's limit is {max_payload:,} "
            "(store big inputs elsewhere and pass a reference)",
            "payload",
        )
    spec["payload"] = payload
    eta = options.pop("eta", None)
    if isinstance(eta, datetime):
        if eta.tzinfo is None:
            raise InvalidJob("invalid", "eta must be timezone-aware (use UTC)", "eta")
        eta = eta.timestamp()
    if eta is not None:
        spec["eta"] = eta
    after = options.pop("after", None)
    if after:  # ids, or handles (anything with an ``id``)
        spec["after"] = [a if isinstance(a, str) else str(a.id) for a in after]
    for name, value in options.items():
        if name not in SUBMIT_OPTIONS:
            raise TypeError(f"unknown submit option {name!r}")
        if value is not None:
            spec[name] = value
    return spec


def batch_item(item: Any, cipher: PayloadCipher | None, max_payload: int) -> dict[str, Any]:
    """One submit_many item: (task, kwargs), (task, args, kwargs), or a spec map."""
    if isinstance(item, Mapping):
        spec = dict(item)
        task = spec.pop("task", None)
        args, kwargs = spec.pop("args", ()), spec.pop("kwargs", {})
        if "id" in spec:
            spec["job_id"] = spec.pop("id")
        return job_spec(task, args, kwargs, cipher=cipher, max_payload=max_payload, **spec)
    if isinstance(item, tuple | list):
        if len(item) == 2 and isinstance(item[1], Mapping):
            return job_spec(item[0], (), item[1], cipher=cipher, max_payload=max_payload)
        if len(item) == 3:
            return job_spec(item[0], item[1], item[2], cipher=cipher, max_payload=max_payload)
    raise TypeError("submit_many items are (task, kwargs), (task, args, kwargs) or spec maps")


def chunks(
    specs: list[dict[str, Any]], max_batch: int = MAX_BATCH, max_frame: int = 1 << 20
) -> list[list[dict[str, Any]]]:
    """Split specs into SUBMIT batches that fit the broker's count and frame-size limits.

    A spec costs its payload plus a bounded overhead (names, id, options: FRAME_OVERHEAD
    at most), so batches never need to be encoded to be measured.
    """
    out: list[list[dict[str, Any]]] = []
    batch: list[dict[str, Any]] = []
    room = budget = max_frame - FRAME_OVERHEAD
    for spec in specs:
        cost = (
            len(spec["payload"])
            + FRAME_OVERHEAD // 4
            + sum(len(v) for v in spec.values() if isinstance(v, str))
        )
        if batch and (len(batch) >= max_batch or cost > room):
            out.append(batch)
            batch, room = [], budget
        batch.append(spec)
        room -= cost
    if batch:
        out.append(batch)
    return out


def read_job(wire: dict[str, Any], cipher: PayloadCipher | None) -> Job:
    """A job map from the broker as a Job, its sealed parts opened where the key fits."""
    job = Job.from_wire(wire)
    return job if cipher is None else cipher.open_job(job)


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


# -- request frames: built once here, sent by either twin -----------------------------------
def wait_frame(
    job_id: str,
    timeout: float | None,
    *,
    result_only: bool = False,
    progress_since: float | None = None,
) -> dict[str, Any]:
    """A WAIT; ``result_only`` leaves the history and the arguments out of the reply;
    ``progress_since`` also ends it at a progress report newer than that time."""
    frame: dict[str, Any] = {"t": "wait", "id": job_id}
    if timeout is not None:
        frame["timeout"] = timeout
    if result_only:
        frame["events"] = frame["payload"] = False
    if progress_since is not None:
        frame["progress"] = max(0.0, progress_since)
        frame["events"] = False
    return frame


def limits_frame(set: dict[str, str | int] | None, clear: list[str] | None) -> dict[str, Any]:
    """A LIMITS: limits to set (target -> value) and targets to clear; none: only read."""
    frame: dict[str, Any] = {"t": "limits"}
    if set:
        frame["set"] = dict(set)
    if clear:
        frame["clear"] = list(clear)
    return frame


def get_many_frame(ids: Sequence[str], brief: bool = False) -> dict[str, Any]:
    """A GET_MANY: state, result and error of each job, without arguments or history
    (``brief``: only those, the task, attempts and finish time)."""
    frame: dict[str, Any] = {"t": "get_many", "ids": list(ids)}
    if brief:
        frame["brief"] = True
    return frame


def rest_after(asked: list[str], reply: dict[str, Any]) -> list[str]:
    """The ids of ``asked`` that a GET_MANY reply did not get to (it was truncated)."""
    if not reply.get("truncated") or not reply["jobs"]:
        return []
    return asked[asked.index(reply["jobs"][-1]["id"]) + 1 :]


class ResultGroup:
    """The handles of one ``submit_many``: the first ``result()`` asked of one of them
    reads the finished jobs of its block of :data:`MAX_GET_MANY` handles in one
    GET_MANY, so that ``[h.result() for h in handles]`` costs a round trip per thousand,
    not per job, in whatever order they are asked. Results taken this way are as of that
    read; a job not finished then is waited for on its own."""

    __slots__ = ("_done", "_ids", "_index", "_read")

    def __init__(self, ids: list[str]) -> None:
        self._ids = ids
        self._index = {job_id: n for n, job_id in enumerate(ids)}
        self._done: dict[str, Job] = {}
        self._read: set[int] = set()  # the blocks read already

    def take(self, job_id: str) -> Job | None:
        """The finished job, if a read found it so (each is handed out once)."""
        return self._done.pop(job_id, None)

    def window(self, job_id: str) -> list[str]:
        """The ids to read for ``job_id`` (empty if its block was read already)."""
        n = self._index.get(job_id)
        if n is None or n // MAX_GET_MANY in self._read:
            return []
        block = n // MAX_GET_MANY
        self._read.add(block)
        return self._ids[block * MAX_GET_MANY : (block + 1) * MAX_GET_MANY]

    def keep(self, jobs: Iterable[Job], asked_for: str) -> None:
        """Keep the finished jobs of a read (not the one it was made for: that one is
        handed out at once)."""
        self._done.update(
            (job.id, job) for job in jobs if job.state.is_final and job.id != asked_for
        )


def list_frame(
    state: str | None,
    queue: str | None,
    limit: int,
    offset: int,
    task: str | None = None,
    workflow: str | None = None,
) -> dict[str, Any]:
    frame: dict[str, Any] = {"t": "list", "limit": limit, "offset": offset}
    for name, value in (("state", state), ("queue", queue), ("task", task), ("workflow", workflow)):
        if value:
            frame[name] = value
    return frame


def dlq_frame(kind: str, ids: list[str] | None) -> dict[str, Any]:
    """DLQ_RETRY or DLQ_PURGE of these ids, or of every dead job when ids is None."""
    return {"t": kind, **({"ids": ids} if ids is not None else {"all": True})}


def token_create_frame(role: str, name: str | None, ttl: float | None) -> dict[str, Any]:
    """TOKEN_CREATE for a role, with a name and a lifetime (seconds) when given."""
    frame: dict[str, Any] = {"t": "token_create", "role": role}
    if name is not None:
        frame["name"] = name
    if ttl is not None:
        frame["ttl"] = ttl
    return frame


def pong(welcome: dict[str, Any] | None, rtt: float) -> dict[str, Any]:
    """What ``ping()`` returns: the round trip in seconds and who we are to the broker."""
    welcome = welcome or {}
    return {"rtt": rtt, "role": welcome.get("role"), "server": welcome.get("server")}


def reply_map(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply's fields without the envelope (``t`` and ``rid``)."""
    return {k: v for k, v in reply.items() if k not in ("t", "rid")}


def submitted_ids(reply: dict[str, Any]) -> list[str]:
    return [str(j["id"]) for j in reply["jobs"]]


def workflow_specs(
    flow: Plan, cipher: PayloadCipher | None, max_payload: int
) -> list[dict[str, Any]]:
    """The submit maps of a planned workflow (conveyor.workflow.plan), in its order."""
    specs: list[dict[str, Any]] = []
    for job in flow.jobs:
        if cipher is not None and job.feed is not None:
            # a sealed result opens only for the job that made it: the next step would get
            # the envelope, not the value
            raise InvalidJob(
                "invalid",
                "a workflow that passes results on cannot use payload encryption; "
                "submit its steps with after=[...] instead",
                "feed",
            )
        step = job.step
        options = dict(step.options)
        task: TaskRef = step.task
        definition: TaskDefinition | None = getattr(task, "__conveyor_task__", None)
        if definition is not None and job.feed is not None:
            # its first argument comes from the workflow: the call cannot be checked yet
            task = definition.name
            for name, value in definition.submit_options().items():
                if options.get(name) is None:
                    options[name] = value
        spec = job_spec(
            task,
            step.args,
            step.kwargs,
            cipher=cipher,
            max_payload=max_payload,
            job_id=job.id,
            after=list(job.after) or None,
            **options,
        )
        spec["workflow"] = flow.id
        if job.feed is not None:
            spec["feed"] = job.feed
        specs.append(spec)
    return specs
