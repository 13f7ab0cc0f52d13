"""Limits that hold across every broker on one PostgreSQL schema (migration 3).

Theory of operation
-------------------
**Rate limits.** ``rate_buckets`` holds one token bucket per limited target (``task:NAME``,
``queue:NAME``): its rate, burst, tokens and the time they were counted, by the database's
clock (``clock_timestamp()``, so the brokers' clocks do not matter). :data:`TAKE` is one
``INSERT … ON CONFLICT DO UPDATE … RETURNING``: it refills the bucket from the stored time,
takes up to ``asked`` whole tokens and says how many it granted and how many are left, all
under the row's lock, so two brokers can never take the same token. A bucket is created full
at its first take; the rate travels with every take, so a changed rate applies at once.

**Concurrency keys.** ``key_slots`` holds, per concurrency key, the jobs running under it
(``held``), kept by a trigger on ``jobs`` in the transaction that moves them in or out of
running (claims, reports, requeues, rescues: every path). :data:`CLAIM_KEYED` is the claim
for brokers that have key limits: it passes over jobs whose key is full (a plain read:
cheap, and it keeps a full key from hiding the jobs behind it), then locks the ``key_slots``
rows of the keys it picked (an upsert, in key order: brokers never deadlock on them) and
admits per key only as many as its limit leaves, reading ``held`` as the latest committed
value (a row lock sees what the other broker's claim just committed, a snapshot would not).
The limit of a job is :func:`key_limit`, as :class:`~conveyor.broker.keygate.
ConcurrencyGate` computes it: the longest key prefix set on the broker, else the task's own.
When keyed jobs stop running the trigger NOTIFYs ``{"k": [...]}``: every broker runs a
dispatch pass, so jobs another broker's slot was holding back go out without polling.

**Settings.** A trigger on ``meta`` NOTIFYs ``{"m": name}`` when a setting changes, so the
other brokers read the set limits again at once (``StoreListener.setting_changed``).

The claim without key limits (:data:`~conveyor.stores.sql.pg_queries.CLAIM`) is unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from conveyor.stores.base import KeyLimits
from conveyor.stores.sql.pg_queries import claim_tail

Run = Callable[..., Awaitable[list[Any]]]  # Connections.run: one statement, its rows

V3 = (
    "CREATE TABLE rate_buckets (target text PRIMARY KEY, rate double precision NOT NULL,"
    " burst double precision NOT NULL, tokens double precision NOT NULL,"
    " at double precision NOT NULL, asked integer NOT NULL, granted integer NOT NULL)",
    "CREATE TABLE key_slots (key text PRIMARY KEY, held integer NOT NULL)",
    # what is running now, per key, for the brokers already on the schema
    "INSERT INTO key_slots (key, held) SELECT concurrency_key, count(*) FROM jobs"
    " WHERE state = 'running' AND concurrency_key IS NOT NULL GROUP BY 1",
    # stats: the queued jobs waiting for a full key
    "CREATE INDEX jobs_keyed ON jobs (concurrency_key)"
    " WHERE state = 'queued' AND concurrency_key IS NOT NULL",
    """
    CREATE FUNCTION key_limit(key text, task text, prefixes text[], limits integer[],
        tasks text[], task_limits integer[]) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
        SELECT coalesce(
            (SELECT p.n FROM unnest(prefixes, limits) AS p(prefix, n)
             WHERE starts_with(key, p.prefix) ORDER BY length(p.prefix) DESC LIMIT 1),
            (SELECT t.n FROM unnest(tasks, task_limits) AS t(name, n) WHERE t.name = task
             LIMIT 1))
    $$
    """,
    """
    CREATE FUNCTION key_slots_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        freed jsonb;
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM new_rows WHERE concurrency_key IS NOT NULL) THEN
            RETURN NULL;  -- the usual case: not a keyed job in the statement
        END IF;
        INSERT INTO key_slots AS s (key, held)
        SELECT key, sum(d) FROM (
            SELECT n.concurrency_key AS key,
                CASE WHEN n.state = 'running' THEN 1 ELSE -1 END AS d
            FROM new_rows n JOIN old_rows o USING (id)
            WHERE n.concurrency_key IS NOT NULL
            AND (n.state = 'running') <> (o.state = 'running')) x
        GROUP BY key HAVING sum(d) <> 0 ORDER BY key
        ON CONFLICT (key) DO UPDATE SET held = greatest(0, s.held + excluded.held);
        SELECT jsonb_agg(DISTINCT o.concurrency_key) INTO freed
        FROM new_rows n JOIN old_rows o USING (id)
        WHERE o.concurrency_key IS NOT NULL AND o.state = 'running' AND n.state <> 'running';
        IF freed IS NOT NULL THEN
            IF jsonb_array_length(freed) > 50 THEN
                freed := 'null'::jsonb;
            END IF;
            PERFORM pg_notify('conveyor_' || TG_TABLE_SCHEMA, jsonb_build_object(
                'b', coalesce(current_setting('conveyor.broker', true), ''), 'k', freed)::text);
        END IF;
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER jobs_key_slots AFTER UPDATE ON jobs"
    " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION key_slots_changed()",
    # a setting changed (the set limits above all): the other brokers read it again
    """
    CREATE FUNCTION meta_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('conveyor_' || TG_TABLE_SCHEMA, jsonb_build_object(
            'b', coalesce(current_setting('conveyor.broker', true), ''), 'm', NEW.name)::text);
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER meta_changed AFTER INSERT OR UPDATE ON meta"
    " FOR EACH ROW EXECUTE FUNCTION meta_changed()",
)

#: take up to ``asked`` tokens from each bucket (created full at the first take)
TAKE = """
INSERT INTO rate_buckets AS b (target, rate, burst, tokens, at, asked, granted)
SELECT r.target, r.rate, r.burst, r.burst - least(r.asked, floor(r.burst)), c.now, r.asked,
    least(r.asked, floor(r.burst))
FROM unnest(%(targets)s::text[], %(rates)s::double precision[],
    %(bursts)s::double precision[], %(asked)s::integer[]) AS r(target, rate, burst, asked),
    (SELECT extract(epoch FROM clock_timestamp())::double precision AS now) c
ORDER BY r.target
ON CONFLICT (target) DO UPDATE SET
    tokens = least(excluded.burst, b.tokens + greatest(0, excluded.at - b.at) * b.rate)
        - least(excluded.asked,
            floor(least(excluded.burst, b.tokens + greatest(0, excluded.at - b.at) * b.rate)
                + 1e-9)),
    granted = least(excluded.asked,
        floor(least(excluded.burst, b.tokens + greatest(0, excluded.at - b.at) * b.rate) + 1e-9)),
    at = greatest(b.at, excluded.at),
    rate = excluded.rate,
    burst = excluded.burst
RETURNING target, granted, tokens, rate
"""

_LIMIT = (
    "key_limit({alias}.concurrency_key, {alias}.task, %(kprefix)s::text[],"
    " %(klimit)s::integer[], %(ktask)s::text[], %(ktlimit)s::integer[])"
)

#: the claim with key limits: CLAIM's statement with the key gate (see the docstring)
CLAIM_KEYED = f"""
WITH pairs AS (
    SELECT queue, task FROM counts
    WHERE state = 'queued' AND queue = ANY(%(queues)s::text[]) AND task = ANY(%(tasks)s::text[])
    GROUP BY queue, task HAVING sum(n) > 0
), picked AS (
    SELECT j.* FROM pairs p CROSS JOIN LATERAL (
        SELECT jobs.*, CASE WHEN jobs.concurrency_key IS NOT NULL
            THEN {_LIMIT.format(alias="jobs")} END AS klim
        FROM jobs
        WHERE state = 'queued' AND queue = p.queue AND task = p.task
        AND (concurrency_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM key_slots s WHERE s.key = jobs.concurrency_key
            AND s.held >= {_LIMIT.format(alias="jobs")}))
        ORDER BY priority, seq LIMIT %(n)s FOR UPDATE SKIP LOCKED
    ) j
    ORDER BY j.priority, j.seq LIMIT %(n)s
), slots AS (
    INSERT INTO key_slots AS s (key, held)
    SELECT DISTINCT concurrency_key, 0 FROM picked WHERE klim IS NOT NULL ORDER BY 1
    ON CONFLICT (key) DO UPDATE SET held = s.held
    RETURNING key, held
), admitted AS (
    SELECT r.* FROM (
        SELECT p.*, row_number() OVER (
            PARTITION BY p.concurrency_key ORDER BY p.priority, p.seq) AS rank
        FROM picked p) r
    LEFT JOIN slots s ON s.key = r.concurrency_key
    WHERE r.klim IS NULL OR r.rank <= r.klim - s.held
){claim_tail("admitted", "admitted", "%(worker)s", "", "%(worker)s::text")}
"""

#: queued jobs whose key is full under the given limits
KEYS_WAITING = f"""
SELECT j.concurrency_key, count(*) FROM jobs j JOIN key_slots s ON s.key = j.concurrency_key
WHERE j.state = 'queued' AND j.concurrency_key IS NOT NULL
AND s.held >= {_LIMIT.format(alias="j")}
GROUP BY 1 ORDER BY 1
"""
#: keys nothing runs under (their rows come back at the next claim or start)
KEYS_PRUNE = "DELETE FROM key_slots WHERE held <= 0"


def key_arrays(limits: KeyLimits) -> dict[str, list[Any]]:
    """The key limits as the parameters of :data:`CLAIM_KEYED` and :data:`KEYS_WAITING`."""
    prefixes = sorted(limits.prefixes.items())
    tasks = sorted(limits.tasks.items())
    return {
        "kprefix": [p for p, _ in prefixes],
        "klimit": [n for _, n in prefixes],
        "ktask": [t for t, _ in tasks],
        "ktlimit": [n for _, n in tasks],
    }


async def keys_waiting(run: Run, keyed: dict[str, list[Any]]) -> dict[str, int]:
    """Queued jobs set aside because their key is full, by key (for stats)."""
    return {k: int(n) for k, n in await run(KEYS_WAITING, keyed)}


class SharedBuckets:
    """The schema's token buckets (:data:`TAKE`), a :class:`~conveyor.stores.base.
    RateBuckets`."""

    def __init__(self, run: Run) -> None:
        self._run = run

    async def take(
        self, asks: Sequence[tuple[str, float, float, int]]
    ) -> dict[str, tuple[int, float]]:
        params = {
            "targets": [a[0] for a in asks],
            "rates": [a[1] for a in asks],
            "bursts": [a[2] for a in asks],
            "asked": [a[3] for a in asks],
        }
        rows = await self._run(TAKE, params, fast=True)
        return {target: (int(granted), float(left)) for target, granted, left, _ in rows}
