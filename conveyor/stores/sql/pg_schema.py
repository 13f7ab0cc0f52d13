"""The PostgreSQL schema: versioned migrations, taken under an advisory lock.

Theory of operation
-------------------
Every Conveyor system lives in its own PostgreSQL schema (``?schema=NAME`` in the store
URL, ``conveyor`` by default), so several systems can share one database. The schema's
``schema_version`` table lists the migrations applied; :data:`MIGRATIONS` are ordered SQL
steps, each applied in its own transaction with its row in ``schema_version``. The whole
run holds a session advisory lock keyed by the schema name, so brokers starting together
(and ``conveyor db migrate``) take turns: the first migrates, the others find nothing to do.

Tables (v1):

- ``jobs``: a column for every field of a job (so a state change is a narrow UPDATE), the
  payload written once at insert. ``sub`` is submission order (listings, newest first);
  ``seq`` the place of a queued job within its priority (negative: sent to the front);
  ``broker`` the id of the broker whose worker holds a running job, whose ``lease_expires``
  that broker renews.
- ``events``: the history, one jsonb row per event, appended, never rewritten.
- ``counts``: jobs per (state, queue, task, priority), and ``totals``: events per kind,
  both kept by statement triggers in the transaction that changes the rows, in one row per
  database backend (``shard`` = its pid) so concurrent writers never wait on each other's
  counters; readers add the shards up and :data:`FOLD_COUNTS` folds those of closed
  backends into shard 0.
- ``meta``: small settings (task routes, paused queues), ``brokers``: one row per running
  broker with its heartbeat.

v3 adds ``rate_buckets`` and ``key_slots``, the limits every broker shares
(:mod:`conveyor.stores.sql.pg_limits`).

v4 adds ``jobs.dependants``: true once a waiting job that depends on this one has been
stored (set by the same INSERT, under the row's lock), false for a job nothing waits on,
NULL (unknown: looked at) for the rows of an older schema or of an older broker. When a
job ends, the UPDATE that ends it returns the flag, so the workflow service looks for its
dependants only when there can be some: one statement less per batch of reports, and no
look at all for the plain jobs most systems run. v4 also rewrites the trigger function:
one join of a statement's old and new rows finds what to notify (v1's made three).

The same triggers NOTIFY the schema's channel (``conveyor_<schema>``): the (queue, task)
pairs of jobs that became queued, the ids of jobs that became final and of running jobs
whose cancel was asked for (see :mod:`conveyor.stores.sql.pg_notify`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from conveyor.errors import ConfigError
from conveyor.stores.base import TOTALS
from conveyor.stores.sql import pg_limits

SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")
NOTIFY_IDS = 50  # job ids per notification: well within PostgreSQL's 8,000-byte payload

_TOTALS = ", ".join(f"'{kind}'" for kind in TOTALS)
_FINAL = "('completed', 'dead', 'cancelled')"

_V1 = (
    "CREATE SEQUENCE job_seq",
    """
    CREATE TABLE jobs (
        id                text PRIMARY KEY,
        sub               bigint NOT NULL,
        task              text NOT NULL,
        queue             text NOT NULL,
        priority          integer NOT NULL,
        state             text NOT NULL,
        seq               bigint,
        eta               double precision,
        unique_key        text,
        max_retries       integer,
        retry_backoff     double precision,
        retry_backoff_max double precision,
        timeout           double precision,
        attempts          integer NOT NULL,
        worker            text,
        broker            text,
        lease             bigint,
        lease_expires     double precision,
        cancel_requested  boolean NOT NULL,
        version           integer NOT NULL,
        created_at        double precision NOT NULL,
        started_at        double precision,
        finished_at       double precision,
        error             bytea,
        result            bytea,
        payload           bytea NOT NULL
    )
    """,
    # the claim: per (queue, task), the most urgent queued job first
    "CREATE INDEX jobs_ready ON jobs (queue, task, priority, seq) WHERE state = 'queued'",
    # a live job holds its unique key: two brokers cannot both create one
    "CREATE UNIQUE INDEX jobs_unique ON jobs (unique_key)"
    " WHERE unique_key IS NOT NULL AND state IN ('queued', 'scheduled', 'running')",
    "CREATE INDEX jobs_due ON jobs (eta) WHERE state = 'scheduled'",
    "CREATE INDEX jobs_leases ON jobs (lease_expires) WHERE state = 'running'",
    "CREATE INDEX jobs_prunable ON jobs (finished_at) WHERE state IN ('completed', 'cancelled')",
    "CREATE INDEX jobs_sub ON jobs (sub)",
    "CREATE INDEX jobs_state_sub ON jobs (state, sub)",
    "CREATE TABLE events (n bigint GENERATED ALWAYS AS IDENTITY, job_id text NOT NULL,"
    " data jsonb NOT NULL)",
    "CREATE INDEX events_job ON events (job_id, n)",
    "CREATE TABLE counts (shard integer NOT NULL, state text NOT NULL, queue text NOT NULL,"
    " task text NOT NULL, priority integer NOT NULL, n bigint NOT NULL,"
    " PRIMARY KEY (shard, state, queue, task, priority))",
    "CREATE TABLE totals (shard integer NOT NULL, kind text NOT NULL, n bigint NOT NULL,"
    " PRIMARY KEY (shard, kind))",
    "CREATE TABLE meta (name text PRIMARY KEY, value bytea NOT NULL)",
    "CREATE TABLE brokers (id text PRIMARY KEY, started_at double precision NOT NULL,"
    " heartbeat_at double precision NOT NULL, host text, pid integer)",
    f"""
    CREATE FUNCTION jobs_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        channel text := 'conveyor_' || TG_TABLE_SCHEMA;
        me text := coalesce(current_setting('conveyor.broker', true), '');
        pairs jsonb;
        chunk jsonb;
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO counts AS c (shard, state, queue, task, priority, n)
            SELECT pg_backend_pid(), state, queue, task, priority, count(*) FROM new_rows
            GROUP BY state, queue, task, priority ORDER BY 2, 3, 4, 5
            ON CONFLICT (shard, state, queue, task, priority) DO UPDATE SET n = c.n + excluded.n;
            SELECT jsonb_agg(DISTINCT jsonb_build_array(queue, task)) INTO pairs
            FROM new_rows WHERE state = 'queued';
        ELSIF TG_OP = 'UPDATE' THEN
            INSERT INTO counts AS c (shard, state, queue, task, priority, n)
            SELECT pg_backend_pid(), state, queue, task, priority, sum(d) FROM (
                SELECT state, queue, task, priority, -1 AS d FROM old_rows
                UNION ALL SELECT state, queue, task, priority, 1 FROM new_rows) x
            GROUP BY state, queue, task, priority HAVING sum(d) <> 0 ORDER BY 2, 3, 4, 5
            ON CONFLICT (shard, state, queue, task, priority) DO UPDATE SET n = c.n + excluded.n;
            SELECT jsonb_agg(DISTINCT jsonb_build_array(n.queue, n.task)) INTO pairs
            FROM new_rows n JOIN old_rows o USING (id)
            WHERE n.state = 'queued' AND (o.state <> 'queued' OR o.queue <> n.queue);
            FOR chunk IN
                SELECT jsonb_agg(id) FROM (
                    SELECT n.id, (row_number() OVER ()) / {NOTIFY_IDS} AS g
                    FROM new_rows n JOIN old_rows o USING (id)
                    WHERE n.state IN {_FINAL} AND o.state NOT IN {_FINAL}) f
                GROUP BY g
            LOOP
                PERFORM pg_notify(channel, jsonb_build_object('b', me, 'f', chunk)::text);
            END LOOP;
            FOR chunk IN
                SELECT jsonb_agg(id) FROM (
                    SELECT n.id, (row_number() OVER ()) / {NOTIFY_IDS} AS g
                    FROM new_rows n JOIN old_rows o USING (id)
                    WHERE n.state = 'running' AND n.cancel_requested
                    AND NOT o.cancel_requested) f
                GROUP BY g
            LOOP
                PERFORM pg_notify(channel, jsonb_build_object('b', me, 'c', chunk)::text);
            END LOOP;
        ELSE
            INSERT INTO counts AS c (shard, state, queue, task, priority, n)
            SELECT pg_backend_pid(), state, queue, task, priority, -count(*) FROM old_rows
            GROUP BY state, queue, task, priority ORDER BY 2, 3, 4, 5
            ON CONFLICT (shard, state, queue, task, priority) DO UPDATE SET n = c.n + excluded.n;
        END IF;
        IF pairs IS NOT NULL THEN
            IF jsonb_array_length(pairs) > 100 THEN
                pairs := 'null'::jsonb;  -- too many to name: "look everywhere"
            END IF;
            PERFORM pg_notify(channel, jsonb_build_object('b', me, 'a', pairs)::text);
        END IF;
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION jobs_changed()",
    "CREATE TRIGGER jobs_updated AFTER UPDATE ON jobs"
    " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION jobs_changed()",
    "CREATE TRIGGER jobs_deleted AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION jobs_changed()",
    f"""
    CREATE FUNCTION events_added() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO totals AS t (shard, kind, n)
        SELECT pg_backend_pid(), data->>'event', count(*) FROM new_rows
        WHERE data->>'event' IN ({_TOTALS}) GROUP BY 2 ORDER BY 2
        ON CONFLICT (shard, kind) DO UPDATE SET n = t.n + excluded.n;
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER events_inserted AFTER INSERT ON events REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION events_added()",
)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


_V2 = (
    "ALTER TABLE jobs ADD COLUMN concurrency_key text, ADD COLUMN workflow text,"
    " ADD COLUMN depends_on bytea, ADD COLUMN feed text, ADD COLUMN inputs bytea,"
    " ADD COLUMN progress bytea",
    "CREATE INDEX jobs_workflow ON jobs (workflow) WHERE workflow IS NOT NULL",
    # a waiting job holds its unique key too, as on the other engines
    "DROP INDEX jobs_unique",
    "CREATE UNIQUE INDEX jobs_unique ON jobs (unique_key)"
    " WHERE unique_key IS NOT NULL AND state IN ('waiting', 'queued', 'scheduled', 'running')",
)

_V4 = (
    # NULL (unknown) for the rows already there, and with no default for those a broker
    # of an older version stores while it still runs beside the new ones: every INSERT of
    # this version says true or false
    "ALTER TABLE jobs ADD COLUMN dependants boolean",
    # the same notifications as v1's, from one join of the old and new rows (there were
    # three: one each for the pairs, the final jobs and the cancels)
    f"""
    CREATE OR REPLACE FUNCTION jobs_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        channel text := 'conveyor_' || TG_TABLE_SCHEMA;
        me text := coalesce(current_setting('conveyor.broker', true), '');
        pairs jsonb;
        finals text[];
        cancels text[];
        i integer;
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO counts AS c (shard, state, queue, task, priority, n)
            SELECT pg_backend_pid(), state, queue, task, priority, count(*) FROM new_rows
            GROUP BY state, queue, task, priority ORDER BY 2, 3, 4, 5
            ON CONFLICT (shard, state, queue, task, priority) DO UPDATE SET n = c.n + excluded.n;
            SELECT jsonb_agg(DISTINCT jsonb_build_array(queue, task)) INTO pairs
            FROM new_rows WHERE state = 'queued';
        ELSIF TG_OP = 'UPDATE' THEN
            INSERT INTO counts AS c (shard, state, queue, task, priority, n)
            SELECT pg_backend_pid(), state, queue, task, priority, sum(d) FROM (
                SELECT state, queue, task, priority, -1 AS d FROM old_rows
                UNION ALL SELECT state, queue, task, priority, 1 FROM new_rows) x
            GROUP BY state, queue, task, priority HAVING sum(d) <> 0 ORDER BY 2, 3, 4, 5
            ON CONFLICT (shard, state, queue, task, priority) DO UPDATE SET n = c.n + excluded.n;
            SELECT
                jsonb_agg(DISTINCT jsonb_build_array(n.queue, n.task)) FILTER (
                    WHERE n.state = 'queued' AND (o.state <> 'queued' OR o.queue <> n.queue)),
                array_agg(n.id) FILTER (
                    WHERE n.state IN {_FINAL} AND o.state NOT IN {_FINAL}),
                array_agg(n.id) FILTER (
                    WHERE n.state = 'running' AND n.cancel_requested AND NOT o.cancel_requested)
            INTO pairs, finals, cancels
            FROM new_rows n JOIN old_rows o USING (id);
            FOR i IN 1 .. coalesce(cardinality(finals), 0) BY {NOTIFY_IDS} LOOP
                PERFORM pg_notify(channel, jsonb_build_object(
                    'b', me, 'f', to_jsonb(finals[i : i + {NOTIFY_IDS - 1}]))::text);
            END LOOP;
            FOR i IN 1 .. coalesce(cardinality(cancels), 0) BY {NOTIFY_IDS} LOOP
                PERFORM pg_notify(channel, jsonb_build_object(
                    'b', me, 'c', to_jsonb(cancels[i : i + {NOTIFY_IDS - 1}]))::text);
            END LOOP;
        ELSE
            INSERT INTO counts AS c (shard, state, queue, task, priority, n)
            SELECT pg_backend_pid(), state, queue, task, priority, -count(*) FROM old_rows
            GROUP BY state, queue, task, priority ORDER BY 2, 3, 4, 5
            ON CONFLICT (shard, state, queue, task, priority) DO UPDATE SET n = c.n + excluded.n;
        END IF;
        IF pairs IS NOT NULL THEN
            IF jsonb_array_length(pairs) > 100 THEN
                pairs := 'null'::jsonb;  -- too many to name: "look everywhere"
            END IF;
            PERFORM pg_notify(channel, jsonb_build_object('b', me, 'a', pairs)::text);
        END IF;
        RETURN NULL;
    END $$
    """,
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "jobs, events, counts, totals, meta, brokers; counting and notifying", _V1),
    Migration(2, "concurrency keys, workflows (waiting jobs, their inputs) and progress", _V2),
    Migration(3, "limits across brokers: rate_buckets, key_slots (see pg_limits)", pg_limits.V3),
    Migration(4, "jobs.dependants: does a waiting job depend on this one; one join to notify", _V4),
)
LATEST = MIGRATIONS[-1].version

#: counters of backends that are gone, folded into shard 0 (so the tables stay small)
FOLD_COUNTS = (
    """
    WITH gone AS (
        DELETE FROM counts c WHERE shard <> 0
        AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = c.shard)
        RETURNING state, queue, task, priority, n)
    INSERT INTO counts AS c (shard, state, queue, task, priority, n)
    SELECT 0, state, queue, task, priority, sum(n) FROM gone
    GROUP BY state, queue, task, priority ORDER BY 2, 3, 4, 5
    ON CONFLICT (shard, state, queue, task, priority) DO UPDATE SET n = c.n + excluded.n
    """,
    """
    WITH gone AS (
        DELETE FROM totals t WHERE shard <> 0
        AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = t.shard)
        RETURNING kind, n)
    INSERT INTO totals AS t (shard, kind, n)
    SELECT 0, kind, sum(n) FROM gone GROUP BY kind ORDER BY 1
    ON CONFLICT (shard, kind) DO UPDATE SET n = t.n + excluded.n
    """,
    "DELETE FROM counts WHERE shard = 0 AND n = 0",
)


def check_schema_name(name: str) -> str:
    if not SCHEMA_NAME.match(name):
        raise ConfigError(
            f"bad schema name {name!r}: use lowercase letters, digits and _ (at most 40)"
        )
    return name


def lock_key(schema: str) -> int:
    """The advisory lock key of a schema's migrations (a stable 63-bit number)."""
    import hashlib

    digest = hashlib.sha256(f"conveyor-migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


async def current_version(conn: psycopg.AsyncConnection[Any], schema: str) -> int | None:
    """The schema's version: None when the schema or its version table does not exist."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}".schema_version',))
    row = await cur.fetchone()
    if not row or not row[0]:
        return None
    cur = await conn.execute(
        sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_version").format(
            sql.Identifier(schema)
        )
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def migrate(conn: psycopg.AsyncConnection[Any], schema: str) -> list[Migration]:
    """Create the schema if missing and apply the migrations it lacks, under the schema's
    advisory lock (``conn`` in autocommit mode). Returns the migrations applied."""
    ident = sql.Identifier(schema)
    await conn.execute("SELECT pg_advisory_lock(%s)", (lock_key(schema),))
    try:
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        await conn.execute(sql.SQL("SET search_path TO {}").format(ident))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY,"
            " description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        version = await current_version(conn, schema) or 0
        if version > LATEST:
            raise ConfigError(
                f"the PostgreSQL schema {schema} is version {version}, newer than this "
                f"Conveyor understands ({LATEST}); upgrade Conveyor"
            )
        applied = []
        for step in MIGRATIONS[version:]:
            async with conn.transaction():
                for statement in step.statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                    (step.version, step.description),
                )
            applied.append(step)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key(schema),))


async def status(conn: psycopg.AsyncConnection[Any], schema: str) -> dict[str, Any]:
    """The schema's version, the migrations it lacks, and the brokers registered on it."""
    version = await current_version(conn, schema)
    out: dict[str, Any] = {
        "schema": schema,
        "exists": version is not None,
        "version": version or 0,
        "latest": LATEST,
        "pending": [
            {"version": m.version, "description": m.description}
            for m in MIGRATIONS[(version or 0) :]
        ],
        "brokers": [],
    }
    if version:
        cur = await conn.execute(
            sql.SQL(
                "SELECT id, host, pid, heartbeat_at FROM {}.brokers ORDER BY started_at"
            ).format(sql.Identifier(schema))
        )
        keys = ("id", "host", "pid", "heartbeat_at")
        out["brokers"] = [dict(zip(keys, row, strict=True)) for row in await cur.fetchall()]
    return out
