"""The scheduler service: fires due schedule slots (:mod:`conveyor.broker.schedules`).

It sleeps until the earliest next slot, at most :attr:`Scheduler.max_sleep` seconds so
that schedules another broker on the same database added are seen soon, and is woken at
once when a schedule changes here. Tests call ``run_once(now)`` with a fake clock.
"""

from __future__ import annotations

from conveyor.broker.maintenance import Service


class Scheduler(Service):
    max_sleep = 5.0

    async def run_once(self, now: float) -> None:
        await self.core.schedules.fire_due(now)

    async def next_delay(self) -> float:
        due = self.core.schedules.next_due
        if due is None:
            return self.max_sleep
        # a hair after the slot: a round that starts early would find nothing due yet
        return min(self.max_sleep, due - self.clock.now() + 0.005)
