"""The broker's rate and concurrency limits: the table people set, durable, applied.

Theory of operation
-------------------
Limits come from three places, the later winning per target: what tasks declare
(``@task(rate="10/m", concurrency_limit=2)``, learnt as workers announce them), what the
store keeps (set at run time: ``conveyor limits set``, the LIMITS frame, ``PUT
/api/limits/...``) and the broker's command line (``--rate``/``--concurrency``, written
into the store at every start). The table of set limits is one store setting
(:data:`LIMITS`), so it survives a restart.

:class:`Limiter` keeps that table and configures the dispatcher's two mechanisms from it:
the rate buckets (:mod:`conveyor.broker.ratelimit`) and the concurrency gate
(:mod:`conveyor.broker.keygate`). A change applies at the next dispatch pass; jobs held
back by a concurrency limit are looked at again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from conveyor import limitspec
from conveyor.broker.dispatch import Dispatcher
from conveyor.clock import Clock
from conveyor.errors import InvalidJob, JobNotFound, StoreUnavailable
from conveyor.lifecycle import TaskOptions
from conveyor.stores.base import Store

log = logging.getLogger("conveyor.broker")

LIMITS = "limits"  # the store setting that keeps the set limits: {target: value}


class Limiter:
    """The set limits (durable) and the tasks' own, applied to the dispatcher."""

    def __init__(self, store: Store, clock: Clock, dispatcher: Dispatcher) -> None:
        self.store = store
        self.clock = clock
        self.dispatcher = dispatcher
        self.table: dict[str, str | int] = {}  # target -> value, as set on the broker
        self.declared: dict[str, TaskOptions] = {}  # task -> options naming a limit

    async def open(self, flags: Mapping[str, str | int]) -> None:
        """Read the stored table; the command line's limits win, and are stored."""
        stored = await self.store.meta_get(LIMITS) or {}
        try:
            table = limitspec.check_table(stored)
        except InvalidJob as exc:  # written by a newer or broken version: start afresh
            log.warning("ignoring the stored limits: %s", exc.message)
            table = {}
        if flags:
            table.update(limitspec.check_table(dict(flags)))
            await self.store.meta_set(LIMITS, table)
        self.table = table
        self._apply()

    async def reload(self) -> None:
        """Another broker changed the stored table (a shared store): read it again."""
        try:
            table = limitspec.check_table(await self.store.meta_get(LIMITS) or {})
        except StoreUnavailable:
            return  # the store says so once; the next change or reconnect reads it again
        except InvalidJob as exc:
            log.warning("ignoring the stored limits: %s", exc.message)
            return
        if table != self.table:
            self.table = table
            log.info("limits changed by another broker: %s", table)
            self._apply()

    # -- changes -------------------------------------------------------------------------
    def check(self, target: Any, value: Any = None, fld: str | None = None) -> None:
        """Refuse (InvalidJob) a bad target, or a bad value for it when one is given; the
        error names ``fld``, else ``target`` or ``value``."""
        kind, _ = limitspec.parse_target(target, fld or "target")
        if value is not None:
            limitspec.parse_value(kind, value, fld or "value")

    async def set(self, target: Any, value: Any) -> dict[str, str | int]:
        """Set one limit (checked: InvalidJob names the field); returns the table."""
        kind, _ = limitspec.parse_target(target)
        normal = limitspec.normal(kind, limitspec.parse_value(kind, value))
        if target not in self.table and len(self.table) >= limitspec.MAX_LIMITS:
            raise limitspec.invalid("target", f"at most {limitspec.MAX_LIMITS} limits may be set")
        table = {**self.table, target: normal}
        await self.store.meta_set(LIMITS, table)
        self.table = table
        log.info("limit %s set to %s", target, normal)
        self._apply()
        return dict(table)

    async def clear(self, target: Any) -> dict[str, str | int]:
        """Remove one set limit (a task's own limit applies again); returns the table."""
        limitspec.parse_target(target)
        if target not in self.table:
            raise JobNotFound("not_found", f"no limit is set for {target!r}")
        table = {t: v for t, v in self.table.items() if t != target}
        await self.store.meta_set(LIMITS, table)
        self.table = table
        log.info("limit %s cleared", target)
        self._apply()
        return dict(table)

    def learn(self, options: Mapping[str, TaskOptions]) -> None:
        """A worker announced its tasks' options: keep the limits they declare."""
        changed = False
        for task, opts in options.items():
            if opts.rate is None and opts.concurrency_limit is None:
                if self.declared.pop(task, None) is not None:
                    changed = True
            elif self.declared.get(task) != opts:
                self.declared[task] = opts
                changed = True
        if changed:
            self._apply()

    def task_limit(self, task: str) -> int | None:
        opts = self.declared.get(task)
        return None if opts is None else opts.concurrency_limit

    # -- applying ------------------------------------------------------------------------
    def rates(self) -> dict[str, tuple[str, str]]:
        """Every rate in force: target -> (rate, where from: ``broker`` or ``task``)."""
        out = {f"task:{t}": (o.rate, "task") for t, o in self.declared.items() if o.rate}
        for target, value in self.table.items():
            if not target.startswith("key:"):
                out[target] = (str(value), "broker")
        return out

    def _apply(self) -> None:
        tasks: dict[str, float] = {}
        queues: dict[str, float] = {}
        for target, (rate, _) in self.rates().items():
            kind, name = target.split(":", 1)
            per_second = limitspec.parse_rate(rate).per_second
            (tasks if kind == "task" else queues)[name] = per_second
        self.dispatcher.rates.configure(
            tasks, queues, self.clock.monotonic(), shared=self.dispatcher.shared_rates is not None
        )
        gate = self.dispatcher.gate
        gate.task_limit = self.task_limit
        gate.configure(
            {t[4:]: int(v) for t, v in self.table.items() if t.startswith("key:")},
            {t: o.concurrency_limit for t, o in self.declared.items() if o.concurrency_limit},
        )
        self.dispatcher.trigger()

    # -- numbers -------------------------------------------------------------------------
    def snapshot(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """What stats shows, from the store's stats ``data``: each rate with its bucket and
        the queued jobs it holds back now, each concurrency limit, the keys with running
        jobs (the store's count when it has one: every broker's) and the jobs waiting for
        one."""
        buckets = self.dispatcher.rates.snapshot(self.clock.monotonic())
        rates = []
        held_jobs = 0
        for target, (rate, source) in sorted(self.rates().items()):
            kind, name = target.split(":", 1)
            bucket = buckets[kind, name]
            counts = data.get("tasks" if kind == "task" else "queues", {}).get(name, {})
            held = int(counts.get("queued", 0)) if bucket["limited"] else 0
            held_jobs += held
            rates.append(
                {"target": target, "rate": rate, "source": source, **bucket, "held_jobs": held}
            )
        concurrency = [
            {"target": t, "limit": v, "source": "broker"}
            for t, v in sorted(self.table.items())
            if t.startswith("key:")
        ]
        concurrency += [
            {"target": f"task:{t}", "limit": o.concurrency_limit, "source": "task"}
            for t, o in sorted(self.declared.items())
            if o.concurrency_limit is not None
        ]
        running = data.get("running_by_key")
        if running is None:
            running = dict(self.dispatcher.gate.running)
        waiting = dict(data.get("waiting_for_key") or {})
        return {
            "set": dict(self.table),
            "rates": rates,
            "concurrency": concurrency,
            "running_by_key": dict(sorted(running.items())),
            "waiting_for_key": waiting,
            "held": self.dispatcher.rates.held,
            "held_by_rate": held_jobs,
            "waiting_for_keys": sum(waiting.values()),
            "shared": self.dispatcher.shared_rates is not None,
        }
