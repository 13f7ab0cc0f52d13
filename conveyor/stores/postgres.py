"""``postgresql://user@host:port/db?schema=NAME``: the engine several brokers can share.

Theory of operation
-------------------
The database is the truth, for claims above all: the engine keeps no index of its own.
Every write is one statement on an autocommit connection (:mod:`conveyor.stores.sql.
pg_queries`), so it is one round trip and committed before the method returns; batches
travel as column arrays (``unnest``), so a submit of 10,000 jobs is one statement too. A
claim is one ``UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED) RETURNING``: two brokers
never claim one job, and neither waits for the other. Claims, promotions and the
heartbeat ride a second pool with ``synchronous_commit=off`` (a lost claim is simply
run again, as the store contract allows); everything acknowledged to a client is a
synchronous commit. The claims (:mod:`conveyor.stores.sql.pg_claiming`) and the reads
(:mod:`conveyor.stores.sql.pg_reads`) are mixins of :class:`PostgresStore`; this module
holds opening and closing, the writes and the heartbeat.

Every state change is computed by :mod:`conveyor.lifecycle` as on the other engines: the
broker's transitions are applied conditionally (``WHERE version = …``); a claim and a
promotion return the rows as they were, and the lifecycle makes the new records from
them (the SQL sets the same columns). Counts, event totals and notifications are kept by
triggers in the same transactions (:mod:`conveyor.stores.sql.pg_schema`).

Several brokers: each engine has a random broker id (the ``brokers`` table holds one row
per running broker and its heartbeat); a running job records the broker that claimed it
and a lease expiry that broker renews while one of its workers holds the job. Every
broker's lease reaper calls :meth:`PostgresStore.job_rescue_expired`: the running jobs
whose lease lapsed more than ``lease_grace`` seconds ago under a broker that has not
heartbeated for ``dead_after`` seconds (or under this one but not held here, a claim
whose reply was lost) go back to the broker's core, which requeues them through the
lifecycle. A restarting broker has a new id, so :meth:`open` returns no running jobs:
those of its previous life come back by that rescue once their lease lapses. Other
brokers' changes reach this one by LISTEN/NOTIFY (:mod:`conveyor.stores.sql.pg_notify`).

When the database cannot be reached, each call raises
:class:`~conveyor.errors.StoreUnavailable` (after at most ``connect_timeout`` seconds)
and nothing is kept: the client is told its request was not done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from typing import Any

import psycopg

from conveyor import lifecycle
from conveyor.errors import ConfigError, IllegalTransition, StoreUnavailable
from conveyor.job import TRANSITIONS, Event, JobRecord, JobState
from conveyor.lifecycle import Transition
from conveyor.stores.base import Inserted, KeyLimits, RateBuckets, StoreListener
from conveyor.stores.sql import pg_limits
from conveyor.stores.sql import pg_queries as q
from conveyor.stores.sql.pg_batch import Coalescer
from conveyor.stores.sql.pg_claim import Claimants
from conveyor.stores.sql.pg_claiming import PgClaiming
from conveyor.stores.sql.pg_conn import Connections, parse_postgres_url
from conveyor.stores.sql.pg_insert import insert_jobs
from conveyor.stores.sql.pg_notify import NotifyListener
from conveyor.stores.sql.pg_reads import PgReads
from conveyor.stores.sql.pg_rows import (
    change_arrays,
    event_json,
    literals,
    pack_map,
    row_job,
    unpack_map,
)
from conveyor.stores.sql.pg_schema import FOLD_COUNTS, migrate

log = logging.getLogger("conveyor.store")

PROMOTE_BATCH = 1000
PRUNE_CHUNK = 10_000
RESCUE_BATCH = 1000
FOLD_EVERY = 60.0


class PostgresStore(PgClaiming, PgReads):
    """The database for truth, several brokers on it; see the module docstring. Its claims
    are :class:`~conveyor.stores.sql.pg_claiming.PgClaiming`, its reads
    :class:`~conveyor.stores.sql.pg_reads.PgReads`."""

    durable = True
    shared = True
    bulk_claims = True
    remembers = True

    def __init__(self, url: str, *, broker_id: str | None = None) -> None:
        self.url = url
        conninfo, self.schema, self.options = parse_postgres_url(url)
        self.broker_id = broker_id or secrets.token_hex(4)
        self.db = Connections(conninfo, self.schema, self.broker_id, self.options)
        self._run = self.db.run
        self._listener: StoreListener | None = None
        self._notify: NotifyListener | None = None
        self._applies: Coalescer[Transition, JobRecord | None] = Coalescer(self._apply_batch)
        self._reads: Coalescer[str, JobRecord | None] = Coalescer(self._read_batch)
        self._depended: Coalescer[str, JobRecord | None] = Coalescer(self._depended_batch)
        # the workflow service asks after every batch of final jobs: one look for many
        self._waits: Coalescer[str, list[JobRecord]] = Coalescer(self._waiting_batch)
        self._claimants = Claimants()
        self._held: dict[str, int] = {}  # job id -> lease, claimed here and still running
        # held jobs as this engine last wrote them (job_get_recent): a report needs no read
        self._recent: dict[str, JobRecord] = {}
        # jobs this engine ended that nothing waits on (as their final UPDATE said)
        self._no_dependants: set[str] = set()
        self._lease_seconds = 30.0
        self._next_heartbeat = 0.0
        self._next_fold = 0.0
        self._key_limits: tuple[KeyLimits, dict[str, list[Any]]] | None = None

    @property
    def health(self) -> dict[str, Any]:
        return {**self.db.health(), "broker_id": self.broker_id, "schema": self.schema}

    # -- open and close --------------------------------------------------------------------
    def watch(self, listener: StoreListener) -> None:
        self._listener = listener

    async def open(self, now: float) -> list[JobRecord]:
        """Migrate the schema, register this broker, start listening. A restarted broker
        has a new id: what ran under its previous life is rescued when its lease lapses."""
        try:
            conn = await self.db.connect(schema=False)
        except psycopg.OperationalError as exc:
            raise ConfigError(f"cannot open the PostgreSQL store: {exc}") from exc
        try:
            applied = await migrate(conn, self.schema)
        finally:
            await conn.close()
        for step in applied:
            log.info("PostgreSQL schema %s migrated to v%d", self.schema, step.version)
        await self.db.open()
        await self._fold()
        await self._run(
            q.BROKER_JOIN, (self.broker_id, now, now, socket.gethostname(), os.getpid())
        )
        if self._listener is not None:
            self._notify = NotifyListener(self.db, self._listener)
            await self._notify.start()
        return []

    async def close(self) -> None:
        if self._notify is not None:
            await self._notify.stop()
        with contextlib.suppress(StoreUnavailable, RuntimeError):
            await self._run(q.BROKER_LEAVE, (self.broker_id,))
        await self.db.close()

    async def _fold(self) -> None:
        """Fold the counters of closed backends into one row (one broker at a time)."""
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT pg_try_advisory_xact_lock(hashtext(%s))", (f"conveyor-fold:{self.schema}",)
            )
            row = await cur.fetchone()
            if row and row[0]:
                for statement in FOLD_COUNTS:
                    await conn.execute(statement)

    # -- writes ----------------------------------------------------------------------------
    async def job_insert_many(
        self, jobs: Sequence[tuple[JobRecord, Event]], *, durable: bool = True
    ) -> list[Inserted]:
        return await insert_jobs(self._run, jobs)

    def rate_buckets(self) -> RateBuckets:
        return pg_limits.SharedBuckets(self._run)

    async def job_promote_due(self, now: float) -> list[JobRecord]:
        promoted: list[JobRecord] = []
        while True:
            rows = await self._run(q.PROMOTE, {"now": now, "n": PROMOTE_BATCH}, fast=True)
            promoted.extend(lifecycle.promote(row_job(r), now).new for r in rows)
            if len(rows) < PROMOTE_BATCH:
                return promoted

    async def job_apply(
        self, transitions: Sequence[Transition], *, durable: bool = True
    ) -> list[JobRecord | None]:
        if not transitions:
            return []
        return await self._applies.call(transitions)

    async def _apply_batch(self, transitions: list[Transition]) -> list[JobRecord | None]:
        """Many callers' transitions in one statement (see :mod:`.sql.pg_batch`)."""
        for t in transitions:  # applied only at t.old's version: t.old is the stored state
            old, new = t.old.state, t.new.state
            if new is not old and new not in TRANSITIONS[old]:
                raise IllegalTransition(  # only a hand-made transition gets here: a bug
                    f"job {t.old.id} cannot go from {old.value} to {new.value}"
                )
        ids = [t.old.id for t in transitions]
        if len(set(ids)) < len(ids):  # one UPDATE changes a row once: one at a time
            out: list[JobRecord | None] = []
            for t in transitions:
                out.extend(await self._apply_batch([t]))
            return out
        params = literals(
            {
                "c0": ids,
                "c1": [t.old.version for t in transitions],
                "c2": [t.front for t in transitions],
                **change_arrays(transitions, first=3),
                "eids": [t.old.id for t in transitions for _ in t.events],
                "edata": [event_json(ev) for t in transitions for ev in t.events],
            }
        )
        try:
            applied = dict(await self._run(q.APPLY, params))
        except StoreUnavailable:
            # Unknown whether it committed: let their leases lapse, so that a job still
            # running here is rescued (by this broker) rather than renewed forever.
            for job_id in ids:
                self._held.pop(job_id, None)
                self._recent.pop(job_id, None)
            raise
        result: list[JobRecord | None] = []
        for t in transitions:
            if t.old.id not in applied:
                self._recent.pop(t.old.id, None)  # it changed elsewhere: read it next time
                result.append(None)
            elif t.new.state is not JobState.RUNNING:
                self._held.pop(t.old.id, None)
                self._recent.pop(t.old.id, None)
                if t.new.state.is_final and applied[t.old.id] is False:
                    self._no_dependants.add(t.old.id)  # job_waiting_on need not look
                else:  # an earlier end's "none" no longer holds (a dead job retried, say)
                    self._no_dependants.discard(t.old.id)
                result.append(t.new)
            else:
                if t.old.id in self._recent:
                    self._recent[t.old.id] = t.new
                result.append(t.new)
        return result

    async def dlq_purge(self, ids: Sequence[str] | None) -> int:
        rows = await self._run(q.PURGE, {"all": ids is None, "ids": list(ids or ())})
        return int(rows[0][0])

    async def job_prune(self, finished_before: float) -> int:
        total = 0
        while True:
            rows = await self._run(q.PRUNE, {"before": finished_before, "n": PRUNE_CHUNK})
            total += int(rows[0][0])
            if rows[0][0] < PRUNE_CHUNK:
                await self._run(pg_limits.KEYS_PRUNE)
                return total

    # -- several brokers -------------------------------------------------------------------
    async def job_rescue_expired(self, now: float) -> list[JobRecord]:
        """Heartbeat (at most every ``heartbeat`` seconds): this broker is alive, its held
        leases are renewed, and the running jobs of brokers that are gone come back."""
        if now < self._next_heartbeat:
            return []
        self._next_heartbeat = now + self.options["heartbeat"]
        lease = self._lease_seconds
        rows = await self._run(
            q.HEARTBEAT,
            {
                "me": self.broker_id,
                "now": now,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "held": list(self._held),
                "expires": now + lease,
                "renew_before": now + lease / 2,
                "expired_before": now - self.options["lease_grace"],
                "alive_after": now - self.options["dead_after"],
                "n": RESCUE_BATCH,
            },
            fast=True,
        )
        for job_id, job in self._recent.items():  # as the statement renewed them
            if job.lease_expires is not None and job.lease_expires < now + lease / 2:
                self._recent[job_id] = job.replace(lease_expires=now + lease)
        if now >= self._next_fold:
            self._next_fold = now + FOLD_EVERY
            with contextlib.suppress(StoreUnavailable, psycopg.Error):
                await self._fold()
        return [row_job(r) for r in rows]

    @property
    def notifications(self) -> int:
        """Notifications received from the database so far (LISTEN)."""
        return 0 if self._notify is None else self._notify.received

    async def brokers(self) -> list[dict[str, Any]]:
        """The brokers registered on this schema, with their last heartbeat."""
        rows = await self._run(q.BROKERS)
        keys = ("id", "started_at", "heartbeat_at", "host", "pid")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # -- settings --------------------------------------------------------------------------
    async def meta_get(self, name: str) -> Any:
        rows = await self._run(q.META_GET, (name,))
        return unpack_map(bytes(rows[0][0])) if rows else None

    async def meta_set(self, name: str, value: Any) -> None:
        await self._run(q.META_SET, (name, pack_map(value)))
