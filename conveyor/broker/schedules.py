"""The broker's schedules: kept in the store's settings, fired as ordinary jobs.

Theory of operation
-------------------
Definitions and state live in the store's small durable settings (``meta_get`` /
``meta_set``), so they survive a restart and every broker on a shared database sees the
same ones: ``schedules`` maps each name to its definition, ``schedules.state`` to what was
last done for it (``last``: the last slot handled, fired or skipped; ``fired`` and
``job``: the last run). Two settings, whatever the number of schedules, so a round costs
two reads; definitions change only when someone manages them, the state at every firing,
and keeping them apart means a firing never overwrites a pause made on another broker.

A round (:meth:`ScheduleBook.fire_due`, run by the broker's ``Scheduler`` service) reads
both again, asks :func:`conveyor.schedules.plan` which slots to fire, submits one job per
slot through the core (one batch for the round) and only then records the new ``last``,
merged into the state as it is then (a record never goes back to an older slot). Each
job's id is made from the schedule and the slot, and the store refuses a second job with
an existing id (``created=False``): so a broker that crashed between the submit and the
record, or a second broker doing the same round, cannot fire a slot twice. The record of ``last`` in
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
    Plan,
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
STATES = "schedules.state"
Submit = Callable[[Sequence[JobRecord]], Awaitable[list[Inserted]]]
RETRY_SOON = 1.0  # seconds until a round tries again a submit the broker refused
State = dict[str, Any]


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
    async def _defs(self) -> dict[str, Schedule]:
        raw = await self.store.meta_get(INDEX)
        if not isinstance(raw, dict):
            return {}
        return {n: Schedule.from_map(d) for n, d in raw.items() if isinstance(d, dict) and d}

    async def _states(self) -> dict[str, State]:
        raw = await self.store.meta_get(STATES)
        if not isinstance(raw, dict):
            return {}
        return {n: st for n, st in raw.items() if isinstance(st, dict)}

    async def _put_defs(self, defs: dict[str, Schedule]) -> None:
        await self.store.meta_set(INDEX, {n: defs[n].to_map() for n in sorted(defs)})

    async def _merge_states(self, changed: dict[str, State], removed: Sequence[str] = ()) -> None:
        """Write these states into the stored ones as they are now; a record that another
        broker moved past meanwhile is kept (``last`` never goes back)."""
        states = await self._states()
        for name, state in changed.items():
            if state.get("last", 0.0) >= states.get(name, {}).get("last", 0.0):
                states[name] = state
        for name in removed:
            states.pop(name, None)
        await self.store.meta_set(STATES, states)

    def _get(self, defs: dict[str, Schedule], name: str) -> Schedule:
        schedule = defs.get(name)
        if schedule is None:
            raise JobNotFound("not_found", f"no schedule named {name[:MAX_ECHO]!r}")
        return schedule

    def describe(self, s: Schedule, state: State) -> dict[str, Any]:
        """A schedule as clients see it: its definition, last and next run."""
        return {
            **s.to_map(),
            "when": s.when,
            "last_run": state.get("fired"),
            "last_job": state.get("job"),
            "next_run": None if s.paused else self._next_run(s, state),
        }

    def _next_run(self, s: Schedule, state: State) -> float:
        """The slot that fires next: a due slot the catch-up policy will still fire (one may
        fall between the schedule's creation and now), else the first after now."""
        last, now = state.get("last", s.created_at), self.clock.now()
        due = plan(s, last, now).fire
        return due[0] if due else next_slot(s, max(last, now))

    async def list_all(self) -> list[dict[str, Any]]:
        defs, states = await self._defs(), await self._states()
        return [self.describe(defs[n], states.get(n, {})) for n in sorted(defs)]

    async def get(self, name: str) -> dict[str, Any]:
        s = self._get(await self._defs(), name)
        return self.describe(s, (await self._states()).get(name, {}))

    # -- changing ------------------------------------------------------------------------
    async def add(self, s: Schedule, *, replace: bool = False) -> dict[str, Any]:
        """Store a new schedule; its first slot is the first after now. An existing name is
        ``conflict`` unless ``replace`` (then its state is kept: no slot fires twice)."""
        async with self._lock:
            defs = await self._defs()
            if s.name in defs and not replace:
                raise Conflict(
                    "conflict", f"a schedule named {s.name!r} exists; remove it or replace it"
                )
            if s.name not in defs and len(defs) >= MAX_SCHEDULES:
                raise InvalidJob("invalid", f"name: at most {MAX_SCHEDULES} schedules", "name")
            fresh = s.name not in defs
            defs[s.name] = s
            await self._put_defs(defs)
            state = (await self._states()).get(s.name, {})
            if fresh or "last" not in state:
                state = {"last": s.created_at}
                await self._merge_states({}, [s.name])  # a removed namesake's record goes
                await self._merge_states({s.name: state})
        log.info("schedule %s added: %s %s", s.name, s.task, s.when)
        self.on_changed()
        return self.describe(s, state)

    async def declare(self, schedules: Sequence[Schedule]) -> None:
        """Schedules a worker's code declares (READY): added, or updated in place keeping
        their pause and their state; unchanged ones are not written again. Runs in the
        background of a READY: a failure is logged, and the worker's next READY retries."""
        try:
            await self._declare(schedules)
        except Exception:
            log.exception("declaring %d schedule(s) failed", len(schedules))

    async def _declare(self, schedules: Sequence[Schedule]) -> None:
        async with self._lock:
            defs = await self._defs()
            new: dict[str, State] = {}
            changed = False
            for s in schedules:
                old = defs.get(s.name)
                if old is not None:
                    s = s.replace(paused=old.paused, created_at=old.created_at)
                    if old.to_map() == s.to_map():
                        continue
                elif len(defs) >= MAX_SCHEDULES:
                    log.warning("schedule %s not declared: %d schedules", s.name, MAX_SCHEDULES)
                    continue
                else:
                    new[s.name] = {"last": s.created_at}
                defs[s.name] = s
                changed = True
                log.info("schedule %s declared by a worker: %s %s", s.name, s.task, s.when)
            if not changed:
                return
            await self._put_defs(defs)
            if new:
                await self._merge_states(new)
        self.on_changed()

    async def pause(self, name: str, paused: bool) -> dict[str, Any]:
        """Pause (no slot fires) or resume; slots that passed while paused are skipped."""
        async with self._lock:
            defs = await self._defs()
            s = self._get(defs, name)
            state = (await self._states()).get(name, {})
            if s.paused != paused:
                defs[name] = s = s.replace(paused=paused)
                await self._put_defs(defs)
                if not paused:  # resume from now: what passed while paused stays skipped
                    state = {**state, "last": max(state.get("last", 0.0), self.clock.now())}
                    await self._merge_states({name: state})
        self.on_changed()
        return self.describe(s, state)

    async def remove(self, name: str) -> None:
        async with self._lock:
            defs = await self._defs()
            self._get(defs, name)
            del defs[name]
            await self._put_defs(defs)
            await self._merge_states({}, [name])
        log.info("schedule %s removed", name)
        self.on_changed()

    async def run_now(self, name: str) -> Inserted:
        """Fire one run now, outside the slots (its id says ``now-``); paused or not."""
        s = self._get(await self._defs(), name)
        now = self.clock.now()
        inserted = (await self._submit([self._job(s, manual_job_id(name, now))]))[0]
        async with self._lock:
            states = await self._states()
            if name in (await self._defs()):  # not removed meanwhile
                state = {**states.get(name, {}), "fired": now, "job": inserted.job.id}
                await self._merge_states({name: state})
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
        async with self._lock:
            defs, states = await self._defs(), await self._states()
            plans: dict[str, tuple[Schedule, Plan]] = {}
            next_due: float | None = None
            for name, s in defs.items():
                if s.paused:
                    continue
                last = float(states.get(name, {}).get("last", s.created_at))
                p = plan(s, last, now)
                if p.last != last:
                    plans[name] = (s, p)
                due = next_slot(s, p.last)
                next_due = due if next_due is None else min(next_due, due)
            created, changed = await self._fire(plans, states)
            if changed:
                await self._merge_states(changed)
            if len(changed) < len(plans):  # some were refused: try them again soon
                next_due = now + RETRY_SOON
        self.next_due = next_due
        self.fired += created
        return created

    async def _fire(
        self, plans: dict[str, tuple[Schedule, Plan]], states: dict[str, State]
    ) -> tuple[int, dict[str, State]]:
        """Submit the planned slots' jobs (one batch; schedule by schedule if the batch is
        refused, so one full queue holds back only its own); the jobs made, the new states."""
        batches = [
            (name, [self._job(s, slot_job_id(name, slot)) for slot in p.fire])
            for name, (s, p) in plans.items()
        ]
        jobs = [job for _, js in batches for job in js]
        done: dict[str, list[Inserted]] = {}
        try:
            inserted = await self._submit(jobs) if jobs else []
            at = 0
            for name, js in batches:
                done[name] = inserted[at : at + len(js)]
                at += len(js)
        except BrokerError:
            for name, js in batches:
                try:
                    done[name] = await self._submit(js) if js else []
                except BrokerError as exc:  # queue full, store down: the next round retries
                    slot = plans[name][1].fire[-1]
                    log.warning("schedule %s: cannot fire %s: %s", name, slot_stamp(slot), exc)
        created = 0
        changed: dict[str, State] = {}
        for name, made in done.items():
            p = plans[name][1]
            state = {**states.get(name, {}), "last": p.last}
            if made:
                created += sum(i.created for i in made)
                state.update(fired=p.fire[-1], job=made[-1].job.id)
            changed[name] = state
            if p.skipped:
                more = "+" if p.truncated else ""
                log.info("schedule %s: skipped %d%s missed slot(s)", name, p.skipped, more)
            elif p.truncated:
                log.warning("schedule %s: fired only the latest %d missed slots", name, len(made))
        return created, changed
