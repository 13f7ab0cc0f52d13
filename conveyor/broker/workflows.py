"""Workflows: jobs held ``waiting`` until the jobs they depend on have completed.

Theory of operation
-------------------
A chain, a group, a chord and ``submit(after=[...])`` are all ordinary jobs (see
docs/workflows.md): a job with ``depends_on`` is born ``waiting``; ``feed`` says whether
it receives the result of its one dependency (``"result"``, a chain's next step) or the
list of its dependencies' results in their order (``"results"``, a chord's callback) as
its first positional argument. :class:`Workflows` moves waiting jobs on:

* every dependency ``completed``: ``lifecycle.ready`` (queued, or scheduled for a future
  eta), with ``inputs`` set to the packed results it receives (composed as bytes: the
  broker never decodes a result; the worker gets them before its own arguments);
* one ended otherwise (``dead``, ``cancelled``) or does not exist: ``lifecycle.blocked``,
  ``cancelled`` with the reason in its history, which in turn ends *its* dependants the
  same way (a failed chain cancels the rest of it, step by step);
* otherwise it keeps waiting.

When it looks: whenever the core publishes a job that became final (:meth:`finished`,
batched per loop turn), after a submit of waiting jobs (their dependencies may be done
already), and when the broker opens (:meth:`resume`: every waiting job, so a release lost
in a crash or a stop happens then). Looking again is always safe.

Exactly once: the release is a transition of the waiting job, applied by the store only
if the job is still at the version it was computed from (``job_apply``). However many
members of a chord finish at the same moment, on one broker or on several sharing a
database, only one release of the callback can win; the others find it no longer waiting
and do nothing.

This module sits below the core and reaches it through the narrow :class:`Core` protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, Protocol

from conveyor import lifecycle
from conveyor.clock import Clock
from conveyor.errors import StoreUnavailable
from conveyor.job import FEED_RESULT, FEED_RESULTS, JobRecord, JobState
from conveyor.lifecycle import Transition
from conveyor.limits import MAX_PAYLOAD
from conveyor.protocol.payload import array_header, pack_packed
from conveyor.stores.base import JobFilter, Store

log = logging.getLogger("conveyor.broker")

_NIL = b"\xc0"  # the packed result of a job that returned nothing
_PAGE = 1000  # waiting jobs read per page at open
_RETRY_AFTER = 1.0  # seconds before looking again for dependants when the store is away


class Core(Protocol):
    """What the workflow service needs of the broker core."""

    store: Store
    clock: Clock

    async def transition(
        self,
        ids: Iterable[str],
        compute: Callable[[JobRecord], Transition | None],
        *,
        durable: bool = True,
    ) -> list[JobRecord]: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...


class Workflows:
    """Releases (or cancels) waiting jobs as the jobs they depend on end."""

    def __init__(self, core: Core, max_inputs: int = MAX_PAYLOAD) -> None:
        self.core = core
        self.max_inputs = max_inputs  # bytes of results one job may receive
        self._ended: list[str] = []  # final jobs whose dependants are to be looked at
        self._scheduled = False

    def finished(self, job: JobRecord) -> None:
        """``job`` became final: look at its dependants (soon, with the others of this
        loop turn, in one read)."""
        self._ended.append(job.id)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._look)

    def _look(self) -> None:
        self._scheduled = False
        ended, self._ended = self._ended, []
        self.core.spawn(self._dependants_of(ended))

    async def _dependants_of(self, ids: Sequence[str]) -> None:
        try:
            waiting = await self.core.store.job_waiting_on(ids)
            if waiting:
                await self.settle(waiting)
        except StoreUnavailable as exc:  # the store logs the outage, once: look again soon
            log.debug("dependants of %d job(s): %s; will look again", len(ids), exc.message)
            await asyncio.sleep(_RETRY_AFTER)
            for job_id in ids:
                self._ended.append(job_id)
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._look)

    async def submitted(self, jobs: Sequence[JobRecord]) -> None:
        """New jobs were stored: the waiting ones may be ready already."""
        waiting = [j for j in jobs if j.state is JobState.WAITING]
        if waiting:
            await self.settle(waiting)

    async def resume(self) -> int:
        """At open: look at every waiting job (a release may have been lost in a crash).
        Returns how many moved on."""
        moved = 0
        cursor: str | None = None
        while True:
            page = await self.core.store.job_list(JobFilter(state=JobState.WAITING), _PAGE, cursor)
            if page.jobs:
                moved += len(await self.settle(page.jobs))
            if page.cursor is None:
                break
            cursor = page.cursor
        if moved:
            log.info("workflows: %d waiting job(s) moved on at open", moved)
        return moved

    async def settle(self, waiting: Sequence[JobRecord]) -> list[JobRecord]:
        """Release or cancel those of ``waiting`` whose dependencies have all ended."""
        wanted = list(dict.fromkeys(d for j in waiting for d in j.depends_on))
        # read and marked as depended on: one that is live now is looked after when it ends
        deps = {d.id: d for d in await self.core.store.job_get_depended(wanted)}
        now = self.core.clock.now()

        def compute(job: JobRecord) -> Transition | None:
            if job.state is not JobState.WAITING:
                return None  # released or cancelled meanwhile (by us, or another broker)
            return decide(job, deps, now, self.max_inputs)

        return await self.core.transition([j.id for j in waiting], compute)


def decide(
    job: JobRecord, deps: dict[str, JobRecord], now: float, max_inputs: int = MAX_PAYLOAD
) -> Transition | None:
    """What a waiting job becomes, given the jobs it depends on as they are now."""
    results: list[bytes] = []
    pending = False
    for dep_id in job.depends_on:
        dep = deps.get(dep_id)
        if dep is None:
            return lifecycle.blocked(job, now, f"dependency {dep_id} does not exist")
        if dep.state in (JobState.DEAD, JobState.CANCELLED):
            return lifecycle.blocked(job, now, f"dependency {dep_id} is {dep.state.value}")
        if dep.state is not JobState.COMPLETED:
            pending = True  # still to run; keep looking, a later one may have failed
        else:
            results.append(dep.result if dep.result is not None else _NIL)
    if pending:
        return None
    inputs: bytes | None = None
    if job.feed == FEED_RESULT:
        inputs = array_header(1) + results[0]
    elif job.feed == FEED_RESULTS:
        inputs = array_header(1) + pack_packed(results)
    if inputs is not None and len(inputs) + len(job.payload) > max_inputs:
        return lifecycle.blocked(
            job,
            now,
            f"the results it would receive ({len(inputs)} bytes) and its own arguments "
            f"exceed the payload limit of {max_inputs} bytes",
        )
    return lifecycle.ready(job, now, inputs)
