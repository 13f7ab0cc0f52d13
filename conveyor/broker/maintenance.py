"""Background services of the broker: each a ``run_once(now)`` and a thin loop around it.

- :class:`LeaseReaper`: workers that stopped heartbeating lose their jobs; runs past their
  deadline fail (both in :meth:`Workforce.reap <conveyor.broker.workforce.Workforce.reap>`);
  on a store several brokers share, the jobs of a broker that is gone come back
  (:meth:`BrokerCore.rescue <conveyor.broker.core.BrokerCore.rescue>`).
- :class:`Promoter` moves due scheduled jobs (delays, retries) to queued, on time: it
  sleeps exactly until the earliest ETA and is woken early when an earlier one arrives.
- :class:`RetentionCleaner` prunes completed and cancelled jobs past the retention.
- :class:`LoginReport` logs failed logins in aggregate (one line per source address per
  interval, :mod:`conveyor.security.throttle`) and forgets quiet sources.

Tests call ``run_once(now)`` with a fake clock's time instead of sleeping.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging

from conveyor.broker.core import BrokerCore
from conveyor.clock import Clock
from conveyor.errors import StoreUnavailable

log = logging.getLogger("conveyor.broker")


class Service(abc.ABC):
    """A loop calling ``run_once`` every ``interval`` seconds (or sooner when woken)."""

    interval = 1.0

    def __init__(self, core: BrokerCore, clock: Clock) -> None:
        self.core = core
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @abc.abstractmethod
    async def run_once(self, now: float) -> None:
        """Do one round of the service's work."""

    async def next_delay(self) -> float:
        return self.interval

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        # A flag as well as the cancel: a library may swallow a cancel (psycopg_pool waits
        # with asyncio.wait_for, which on Python 3.11 loses one that races its wake-up).
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            # wait, not await: a cancel of our caller must reach it, not end up suppressed
            await asyncio.wait([self._task])

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.run_once(self.clock.now())
            except StoreUnavailable as exc:  # the store logs the outage, once
                log.debug("%s: %s; will try again", type(self).__name__, exc.message)
            except Exception:
                log.exception("%s failed; will try again", type(self).__name__)
            try:
                delay = await self.next_delay()
            except Exception:  # a store that cannot be read now (a database away): retry
                log.debug("%s: next delay unknown", type(self).__name__, exc_info=True)
                delay = self.interval
            self._wake.clear()
            if self._stopping:
                return
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that
            # arrives as its timeout expires, and this loop would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, delay)):
                    await self._wake.wait()


class LeaseReaper(Service):
    async def run_once(self, now: float) -> None:
        await self.core.workforce.reap(now)
        await self.core.rescue(now)  # a shared store: the jobs of brokers that are gone


class Promoter(Service):
    max_sleep = 1.0

    async def run_once(self, now: float) -> None:
        await self.core.promote(now)

    async def next_delay(self) -> float:
        eta = await self.core.store.job_next_eta()
        if eta is None:
            return self.max_sleep
        return min(self.max_sleep, eta - self.clock.now())


class RetentionCleaner(Service):
    interval = 60.0

    async def run_once(self, now: float) -> None:
        pruned = await self.core.prune(now)
        if pruned:
            log.info("retention: pruned %d finished job(s)", pruned)


class LoginReport(Service):
    interval = 1.0

    async def run_once(self, now: float) -> None:
        self.core.logins.report()  # on the monotonic clock the throttle keeps its time by
