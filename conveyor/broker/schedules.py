"""The broker's schedules: kept in the store's settings, fired as ordinary jobs.

Theory of operation
-------------------
Definitions and state live in the store's small durable settings (``meta_get`` /
``meta_set``), so they survive a restart and every broker on a shared database sees the
same ones: ``schedules`` lists the names, ``schedule:<name>`` holds a definition and
``schedule.state:<name>`` what was last done for it (``last``: the last slot handled,
fired or skipped; ``fired`` and ``job``: the last run). Definitions change only when
someone manages them; the state changes at every firing. Keeping the two apart means a
firing never overwrites a pause made meanwhile on another broker.

A round (:meth:`ScheduleBook.fire_due`, run by the broker's ``Scheduler`` service) reads
them all again, asks :func:`conveyor.schedules.plan` which slots to fire, submits one job
per slot through the core and only then records the new ``last``. Each job's id is made
from the schedule and the slot, and the store refuses a second job with an existing id
(``created=False``): so a broker that crashed between the submit and the record, or a
second broker doing the same round, cannot fire a slot twice. The record of ``last`` in
turn keeps a slot from firing again after retention has pruned its job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from conveyor.clock import Clock
from conveyor.errors import BrokerError, Conflict, InvalidJob, JobNotFound
from conveyor.job import DEFAULT_PRIORITY, JobRecord
from conveyor.limits import MAX_ECHO
from conveyor.protocol.payload import pack_call
from conveyor.schedules import (
    MAX_SCHEDULES,
    Schedule,
    manual_job_id,
    next_slot,
    plan,
    slot_job_id,
    slot_stamp,
)
from conveyor.stores.base import Inserted, Store

log = logging.getLogger("conveyor.broker")

INDEX = "schedules"
Submit = Callable[[Sequence[JobRecord]], Awaitable[list[Inserted]]]
RETRY_SOON = 1.0  # seconds until a round tries again a submit the broker refused


def _key(name: str) -> str:
    return f"schedule:{name}"


def _state_key(name: str) -> str:
    return f"schedule.state:{name}"


class ScheduleBook:
    """Add, list, pause, resume, remove and run schedules; fire the due ones."""

    def __init__(self, store: Store, clock: Clock, submit: Submit) -> None:
        self.store = store
        self.clock = clock
        self._submit = submit
        self._lock = asyncio.Lock()  # one change or round at a time in this broker
        self.next_due: float | None = None  # the earliest next slot, after the last round
        self.fired = 0  # jobs created by schedules since the broker started
        self.on_changed: Callable[[], None] = lambda: None  # wakes the scheduler

    # -- reading -------------------------------------------------------------------------
    async def _names(self) -> list[str]:
        names = await self.store.meta_get(INDEX)
        return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []

    async def _load(self, name: str) -> Schedule | None:
        raw = await self.store.meta_get(_key(name))
        return Schedule.from_map(raw) if isinstance(raw, dict) and raw else None

    async def _state(self, name: str) -> dict[str, Any]:
        raw = await self.store.meta_get(_state_key(name))
        return raw if isinstance(raw, dict) else {}

    async def _get(self, name: str) -> Schedule:
        schedule = await self._load(name)
        if schedule is None:
            raise JobNotFound("not_found", f"no schedule named {name[:MAX_ECHO]!r}")
        return schedule

    def describe(self, s: Schedule, state: dict[str, Any]) -> dict[str, Any]:
        """A schedule as clients see it: its definition, last and next run."""
        last = state.get("last", s.created_at)
        return {
            **s.to_map(),
            "when": s.when,
            "last_run": state.get("fired"),
            "last_job": state.get("job"),
            "next_run": None if s.paused else next_slot(s, max(last, self.clock.now())),
        }

    async def list_all(self) -> list[dict[str, Any]]:
        out = []
        for name in sorted(await self._names()):
            s = await self._load(name)
            if s is not None:
                out.append(self.describe(s, await self._state(name)))
        return out

    async def get(self, name: str) -> dict[str, Any]:
        s = await self._get(name)
        return self.describe(s, await self._state(name))

    # -- changing ------------------------------------------------------------------------
    async def add(self, s: Schedule, *, replace: bool = False) -> dict[str, Any]:
        """Store a new schedule; its first slot is the first after now. An existing name is
        ``conflict`` unless ``replace`` (then its state is kept: no slot fires twice)."""
        async with self._lock:
            names = await self._names()
            old = await self._load(s.name)
            if old is not None and not replace:
                raise Conflict(
                    "conflict", f"a schedule named {s.name!r} exists; remove it or replace it"
                )
            if old is None and len(names) >= MAX_SCHEDULES:
                raise InvalidJob("invalid", f"name: at most {MAX_SCHEDULES} schedules", "name")
            await self._put(s, names)
            state = await self._state(s.name)
            if old is None or "last" not in state:
                state = {"last": s.created_at}
                await self.store.meta_set(_state_key(s.name), state)
        log.info("schedule %s added: %s %s", s.name, s.task, s.when)
        self.on_changed()
        return self.describe(s, state)

    async def _put(self, s: Schedule, names: list[str]) -> None:
        await self.store.meta_set(_key(s.name), s.to_map())
        if s.name not in names:
            await self.store.meta_set(INDEX, sorted([*names, s.name]))

    async def declare(self, schedules: Sequence[Schedule]) -> None:
        """Schedules a worker's code declares (READY): added, or updated in place keeping
        their pause and their state; unchanged ones are not written again. Runs in the
        background of a READY: a failure is logged, and the worker's next READY retries."""
        try:
            await self._declare(schedules)
        except Exception:
            log.exception("declaring %d schedule(s) failed", len(schedules))

    async def _declare(self, schedules: Sequence[Schedule]) -> None:
        changed = False
        async with self._lock:
            for s in schedules:
                names = await self._names()
                old = await self._load(s.name)
                if old is not None:
                    s = s.replace(paused=old.paused, created_at=old.created_at)
                    if old.to_map() == s.to_map():
                        continue
                elif len(names) >= MAX_SCHEDULES:
                    log.warning("schedule %s not declared: %d schedules", s.name, MAX_SCHEDULES)
                    continue
                await self._put(s, names)
                if old is None:
                    await self.store.meta_set(_state_key(s.name), {"last": s.created_at})
                log.info("schedule %s declared by a worker: %s %s", s.name, s.task, s.when)
                changed = True
        if changed:
            self.on_changed()

    async def pause(self, name: str, paused: bool) -> dict[str, Any]:
        """Pause (no slot fires) or resume; slots that passed while paused are skipped."""
        async with self._lock:
            s = await self._get(name)
            state = await self._state(name)
            if s.paused != paused:
                s = s.replace(paused=paused)
                await self.store.meta_set(_key(name), s.to_map())
                if not paused:  # resume from now: what passed while paused stays skipped
                    state = {**state, "last": max(state.get("last", 0.0), self.clock.now())}
                    await self.store.meta_set(_state_key(name), state)
        self.on_changed()
        return self.describe(s, state)

    async def remove(self, name: str) -> None:
        async with self._lock:
            await self._get(name)
            names = await self._names()
            await self.store.meta_set(INDEX, [n for n in names if n != name])
            # meta has no delete: an empty map reads as "no such schedule"
            await self.store.meta_set(_key(name), {})
            await self.store.meta_set(_state_key(name), {})
        log.info("schedule %s removed", name)
        self.on_changed()

    async def run_now(self, name: str) -> Inserted:
        """Fire one run now, outside the slots (its id says ``now-``); paused or not."""
        s = await self._get(name)
        now = self.clock.now()
        inserted = (await self._submit([self._job(s, manual_job_id(name, now))]))[0]
        async with self._lock:
            state = await self._state(name)
            if state:  # not removed meanwhile
                await self.store.meta_set(
                    _state_key(name), {**state, "fired": now, "job": inserted.job.id}
                )
        return inserted

    # -- firing --------------------------------------------------------------------------
    def _job(self, s: Schedule, job_id: str) -> JobRecord:
        return JobRecord(
            id=job_id,
            task=s.task,
            payload=pack_call(s.args, s.kwargs),
            queue=s.queue or "",  # "": the task's queue (the core routes it)
            priority=DEFAULT_PRIORITY if s.priority is None else s.priority,
        )

    async def fire_due(self, now: float) -> int:
        """One round: fire every due slot of every active schedule; return the jobs made."""
        created = 0
        next_due: float | None = None
        async with self._lock:
            for name in await self._names():
                s = await self._load(name)
                if s is None or s.paused:
                    continue
                made, due = await self._fire(s, now)
                created += made
                next_due = due if next_due is None else min(next_due, due)
        self.next_due = next_due
        self.fired += created
        return created

    async def _fire(self, s: Schedule, now: float) -> tuple[int, float]:
        """Fire one schedule's due slots; the jobs made and when it is due next."""
        state = await self._state(s.name)
        last = float(state.get("last", s.created_at))
        p = plan(s, last, now)
        if p.last == last:
            return 0, next_slot(s, last)
        made = 0
        if p.fire:
            jobs = [self._job(s, slot_job_id(s.name, slot)) for slot in p.fire]
            try:
                inserted = await self._submit(jobs)
            except BrokerError as exc:  # queue full, store down: the next round tries again
                log.warning("schedule %s: cannot fire %s: %s", s.name, slot_stamp(p.fire[-1]), exc)
                return 0, now + RETRY_SOON
            made = sum(i.created for i in inserted)
            state = {**state, "fired": p.fire[-1], "job": inserted[-1].job.id}
        if p.skipped:
            more = "+" if p.truncated else ""
            log.info("schedule %s: skipped %d%s missed slot(s)", s.name, p.skipped, more)
        elif p.truncated:
            log.warning("schedule %s: fired the latest %d missed slots only", s.name, len(p.fire))
        await self.store.meta_set(_state_key(s.name), {**state, "last": p.last})
        return made, next_slot(s, p.last)
