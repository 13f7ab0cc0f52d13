"""Waiting on many jobs at once: ``Client.as_completed`` / ``wait_many`` and their async
twins.

One plan for both clients. The jobs already final are read first, a thousand per
GET_MANY round trip (brief maps: state, result, error). Every other job gets a WAIT for
its result only, pipelined: up to :data:`WINDOW` of them outstanding on the connection at
once, each answered by the broker the moment its job ends (pushed, nothing polls), so
the jobs come back in the order they finish. A WAIT is safe to send again, so after a
lost connection (a broker restart, a failover) the unanswered ones are resent and the
wait carries on.

With a ``timeout``, each WAIT asks for what is left of it; a job still not final when
it passes comes back as it is then: ``wait_many`` returns it so, ``as_completed`` raises
:class:`~conveyor.errors.ResultTimeout`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol

from conveyor.client._base import wait_frame
from conveyor.errors import BrokerError, InvalidJob, JobNotFound, ResultTimeout
from conveyor.job import Job
from conveyor.limits import MAX_ECHO, MAX_JOB_ID
from conveyor.protocol.frames import ErrorCode
from conveyor.validation import check_name

Frame = dict[str, Any]

WINDOW = 500
"""WAITs outstanding at once on one connection (the broker allows ``max_waits``, 10,000 by
default, and counts them while they wait): enough to keep every reply in flight, few
enough that the requests and the replies never fill the socket buffers both ways."""

GET_MANY_WINDOW = 4
"""GET_MANYs (of up to 1,000 ids each) in flight at once: enough for the broker to read the
next block while the client unpacks the last."""


class HasId(Protocol):
    @property
    def id(self) -> str: ...


JobRef = str | HasId
"""A job id or anything with an ``id`` (a handle, a Job)."""


def unique_ids(jobs: Iterable[JobRef]) -> list[str]:
    """The ids of ``jobs``, each once, in the order given."""
    return list(dict.fromkeys(j if isinstance(j, str) else j.id for j in jobs))


def check_ids(ids: list[str]) -> None:
    """JobNotFound for an id that cannot be one, as WAIT answers for it (GET_MANY would
    refuse the whole list as invalid)."""
    for job_id in ids:
        try:
            check_name(job_id, "id", MAX_JOB_ID)
        except InvalidJob:
            raise JobNotFound(ErrorCode.NOT_FOUND, f"no job {job_id[:MAX_ECHO]!r}") from None


def check_found(ids: list[str], found: list[Job]) -> None:
    """JobNotFound naming the first of ``ids`` that the read did not find."""
    if len(found) == len(ids):
        return
    seen = {job.id for job in found}
    missing = [job_id for job_id in ids if job_id not in seen]
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise JobNotFound(ErrorCode.NOT_FOUND, f"no job {missing[0][:MAX_ECHO]!r}{more}")


class Deadline:
    """What is left of a ``timeout`` (None: no limit)."""

    def __init__(self, timeout: float | None) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be at least 0")
        self.at = None if timeout is None else time.monotonic() + timeout

    def left(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())


def still_running(job: Job, timeout: float | None) -> ResultTimeout:
    return ResultTimeout(f"job {job.id} is still {job.state.value} after {timeout}s")


# -- the blocking client ----------------------------------------------------------------------
Exchange = Callable[
    [list[str], Callable[[str], Frame], int], Iterator[tuple[str, Frame | BrokerError]]
]


def finishing(
    ids: list[str],
    timeout: float | None,
    get_many: Callable[[list[str]], list[Job]],
    exchange: Exchange,
    read: Callable[[Frame], Job],
) -> Iterator[Job]:
    """Each job of ``ids`` once final (or, past ``timeout``, as it is then), in the order
    they finish; the final ones first."""
    deadline = Deadline(timeout)
    check_ids(ids)
    found = get_many(ids)
    check_found(ids, found)
    rest = []
    for job in found:
        if job.state.is_final:
            yield job
        else:
            rest.append(job.id)

    def wait(job_id: str) -> Frame:  # made as it is sent: its timeout is what is left
        return wait_frame(job_id, deadline.left(), result_only=True)

    for _, reply in exchange(rest, wait, WINDOW):
        if isinstance(reply, BrokerError):
            raise reply
        yield read(reply["job"])


# -- the asyncio client -----------------------------------------------------------------------
async def finishing_async(
    ids: list[str],
    timeout: float | None,
    get_many: Callable[[list[str]], Awaitable[list[Job]]],
    request: Callable[[Frame], Awaitable[Frame]],
    read: Callable[[Frame], Job],
) -> AsyncIterator[Job]:
    """:func:`finishing` on asyncio: the WAITs are concurrent requests, at most
    :data:`WINDOW` at a time; the ones still out are cancelled if the caller stops."""
    deadline = Deadline(timeout)
    check_ids(ids)
    found = await get_many(ids)
    check_found(ids, found)
    rest = []
    for job in found:
        if job.state.is_final:
            yield job
        else:
            rest.append(job.id)
    window = asyncio.Semaphore(WINDOW)

    async def one(job_id: str) -> Job:
        async with window:
            frame = wait_frame(job_id, deadline.left(), result_only=True)
            return read((await request(frame))["job"])

    tasks = [asyncio.ensure_future(one(job_id)) for job_id in rest]
    try:
        for next_done in asyncio.as_completed(tasks):
            yield await next_done
    finally:
        for task in tasks:
            task.cancel()
