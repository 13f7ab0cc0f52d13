"""The PostgreSQL store's claims: the statements sent, the rows made records and held here.

A mixin of :class:`~conveyor.stores.postgres.PostgresStore` (which sets the attributes
declared below). Claimants with the same offer share one ``CLAIM`` (:mod:`.pg_claim`
makes the arrays and deals the jobs); a claimant under key limits claims on its own
through ``CLAIM_KEYED`` (:mod:`.pg_limits`). Every claimed job is held here (its lease
renewed by the heartbeat) and remembered as claimed (``job_get_recent``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from conveyor import lifecycle
from conveyor.job import JobRecord
from conveyor.stores.base import Claimant, KeyLimits, Store
from conveyor.stores.sql import pg_limits
from conveyor.stores.sql import pg_queries as q
from conveyor.stores.sql.pg_claim import LEASE, SLOT, Claimants, deal
from conveyor.stores.sql.pg_rows import array_literal, row_job


class PgClaiming(Store):
    """``job_claim`` and ``job_claim_many`` of the PostgreSQL store."""

    broker_id: str
    _run: pg_limits.Run
    _claimants: Claimants
    _held: dict[str, int]  # job id -> lease, claimed here and still running
    _recent: dict[str, JobRecord]  # held jobs as this engine last wrote them
    _lease_seconds: float
    _key_limits: tuple[KeyLimits, dict[str, list[Any]]] | None

    async def job_claim(
        self, claimant: Claimant, limit: int, lease_seconds: float, now: float
    ) -> list[JobRecord]:
        return (await self.job_claim_many([(claimant, limit)], lease_seconds, now))[0]

    async def job_claim_many(
        self, wants: Sequence[tuple[Claimant, int]], lease_seconds: float, now: float
    ) -> list[list[JobRecord]]:
        """One statement per group of claimants that offer the same (identical workers:
        one for all of them), the jobs dealt out in turn (see :func:`deal`)."""
        out: list[list[JobRecord]] = [[] for _ in wants]
        self._lease_seconds = lease_seconds
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, (claimant, limit) in enumerate(wants):
            if limit <= 0 or not claimant.tasks:
                continue
            keyed = self._key_arrays(claimant)
            if keyed is not None:  # key limits in force: its own claim, with the key gate
                out[i] = await self._claim_keyed(claimant, limit, keyed, lease_seconds, now)
                continue
            groups.setdefault(self._claimants.arrays(claimant)[1], []).append(i)
        if not groups:
            return out
        for members in groups.values():
            by_worker = {wants[i][0].worker: i for i in members}
            slots = deal([(wants[i][0].worker, wants[i][1]) for i in members])
            rows = await self._run(
                q.CLAIM,
                {
                    **self._claimants.arrays(wants[members[0]][0])[0],
                    "n": len(slots),
                    "slots": array_literal(slots),
                    "broker": self.broker_id,
                    "expires": now + lease_seconds,
                    "now": now,
                    "at": json.dumps(now),
                },
                fast=True,
            )
            for row in rows:
                i = by_worker[row[SLOT]]
                out[i].append(self._claimed(wants[i][0], row, row[LEASE], lease_seconds, now))
        return out

    async def _claim_keyed(
        self,
        claimant: Claimant,
        limit: int,
        keyed: dict[str, list[Any]],
        lease_seconds: float,
        now: float,
    ) -> list[JobRecord]:
        """One claimant's claim through the key gate (``pg_limits.CLAIM_KEYED``): past
        keys at their limit, counting every broker's running jobs."""
        rows = await self._run(
            pg_limits.CLAIM_KEYED,
            {
                **keyed,
                **self._claimants.arrays(claimant)[0],
                "n": limit,
                "worker": claimant.worker,
                "broker": self.broker_id,
                "expires": now + lease_seconds,
                "now": now,
                "at": json.dumps(now),
            },
            fast=True,
        )
        # a keyed claim's row ends with its new lease and its old seq
        return [self._claimed(claimant, row, row[-2], lease_seconds, now) for row in rows]

    def _claimed(
        self, claimant: Claimant, row: Any, lease: int, lease_seconds: float, now: float
    ) -> JobRecord:
        """A claimed row (the job as it was) as the lifecycle's new record, held here."""
        old = row_job(row)
        t = lifecycle.claim(
            old,
            claimant.worker,
            lease,
            lease_seconds,
            now,
            claimant.options.get(old.task),
            claimant.route(old.task),
        )
        self._held[old.id] = lease
        self._recent[old.id] = t.new
        return t.new

    def _key_arrays(self, claimant: Claimant) -> dict[str, list[Any]] | None:
        """The key limits of the claimant's gate as arrays (None: no limit is in force, the
        plain claim), made once per change of the limits."""
        limits = claimant.gate.key_limits() if claimant.gate is not None else None
        if not limits:
            if limits is not None:
                self._key_limits = None  # cleared: stats count no key as full
            return None
        if self._key_limits is None or self._key_limits[0] is not limits:
            self._key_limits = (limits, pg_limits.key_arrays(limits))
        return self._key_limits[1]
