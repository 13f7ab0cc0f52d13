"""What other brokers on a shared store did, told to this broker's core.

A store that several brokers share (PostgreSQL) calls a :class:`~conveyor.stores.base.
StoreListener` when another broker's change is committed: jobs became queued (an idle
worker here may take them: a dispatch pass), jobs became final (a producer here may be
waiting for one: it is pushed the result), or a cancel was asked for a running job (the
worker here that runs it is told to stop), or a setting changed (the core reads the set
limits again). Engines that one broker owns never call it.

The listener only schedules work: it reads the jobs in a background task of the core
(``core.spawn``), since its callbacks run on the loop and must not block.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Coroutine, Sequence
from typing import Any, Protocol

from conveyor.broker.dispatch import Dispatcher
from conveyor.broker.waiters import Waiters
from conveyor.errors import StoreUnavailable
from conveyor.job import JobRecord, JobState
from conveyor.stores.base import Store

log = logging.getLogger("conveyor.broker")
_TRIES = 5  # reads of the jobs a notification names, while the database is away
_PAUSE = 1.0  # seconds between them


class WatchedCore(Protocol):
    """What the watch needs of the core (:class:`~conveyor.broker.core.BrokerCore`)."""

    store: Store
    dispatcher: Dispatcher
    waiters: Waiters

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...
    def abort_run(self, job: JobRecord) -> None: ...
    def setting_changed(self, name: str | None) -> None: ...


class StoreWatch:
    """The core's :class:`~conveyor.stores.base.StoreListener`; see the module docstring."""

    def __init__(self, core: WatchedCore) -> None:
        self.core = core

    def available(self, pairs: Collection[tuple[str, str]] | None) -> None:
        self.core.dispatcher.trigger()  # coalesced; a pass claims only what workers here run

    def finished(self, job_ids: Sequence[str] | None) -> None:
        waited = self.core.waiters.waiting_on(job_ids)
        if waited:
            self.core.spawn(self._tell_waiters(waited))

    def setting_changed(self, name: str | None) -> None:
        self.core.setting_changed(name)

    def cancel_requested(self, job_ids: Sequence[str]) -> None:
        held = [
            job_id
            for job_id in job_ids
            if any(job_id in w.holding for w in self.core.dispatcher.workers.values())
        ]
        if held:
            self.core.spawn(self._abort(held))

    async def _read(self, job_ids: list[str]) -> list[JobRecord]:
        """The jobs, read again a few times if the database is away (a notification
        arrives as it comes back, while the pools are still reconnecting); the store logs
        the outage once."""
        for _ in range(_TRIES - 1):
            try:
                return await self.core.store.job_get_many(job_ids)
            except StoreUnavailable as exc:
                log.debug("store watch: %s; reading again", exc.message)
                await asyncio.sleep(_PAUSE)
        try:
            return await self.core.store.job_get_many(job_ids)
        except StoreUnavailable as exc:  # still away: the waiters ask again themselves
            log.debug("store watch: %s; giving up on %d job(s)", exc.message, len(job_ids))
            return []

    async def _tell_waiters(self, job_ids: list[str]) -> None:
        for job in await self._read(job_ids):
            if job.state.is_final:
                self.core.waiters.finished(job)

    async def _abort(self, job_ids: list[str]) -> None:
        for job in await self._read(job_ids):
            if job.state is JobState.RUNNING and job.cancel_requested:
                self.core.abort_run(job)
