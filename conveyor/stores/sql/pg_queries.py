"""The PostgreSQL engine's named queries. Each write is one statement (data-modifying CTEs),
so on an autocommit connection it is one round trip and one transaction.

The claim is the hot one: per (queue, task) pair that has queued jobs (from ``counts``:
a few rows, never the jobs) and that the claimant serves, the most urgent queued jobs by
the ``jobs_ready`` index, locked with ``FOR UPDATE SKIP LOCKED`` (a job another broker is
claiming is skipped, never waited for), the best ``n`` of them moved to running in one
UPDATE that records the claiming broker, a fresh lease and the ``started`` event. One claim
serves several workers with the same offer (``slots``: the k-th job in priority order goes
to ``slots[k]``, the dispatcher interleaves the workers so that they share the work).
"""

from __future__ import annotations

from typing import Any

from conveyor.job import DEFAULT_QUEUE, DEFAULT_RETRIES, DEFAULT_RETRY_BACKOFF
from conveyor.job import DEFAULT_RETRY_BACKOFF_MAX as _BACKOFF_MAX
from conveyor.stores.base import JobFilter
from conveyor.stores.sql.pg_rows import (
    CHANGE_COLUMNS,
    INSERT_COLUMNS,
    SELECT,
    select_from,
    unnest_of,
)

LIVE = "('waiting', 'queued', 'scheduled', 'running')"

_INSERT_UNNEST, _INSERT_NAMES = unnest_of(INSERT_COLUMNS)
_INSERT = """
WITH c AS (
    SELECT *, nextval('job_seq') AS s FROM {unnest}
    WITH ORDINALITY AS c({names}, ord) ORDER BY ord
){mark}, ins AS (
    INSERT INTO jobs ({names}, sub, seq, dependants)
    SELECT {names}, s, CASE WHEN state = 'queued' THEN s END, {dependants} FROM c ORDER BY ord
    ON CONFLICT DO NOTHING
    RETURNING id
), ev AS (
    INSERT INTO events (job_id, data)
    SELECT e.id, e.data::jsonb FROM unnest(%(eids)s::text[], %(edata)s::text[])
    WITH ORDINALITY AS e(id, data, ord)
    WHERE e.id IN (SELECT id FROM ins) ORDER BY e.ord
)
SELECT id FROM ins
"""
#: a batch of new jobs none of which waits on another
INSERT = _INSERT.format(unnest=_INSERT_UNNEST, names=_INSERT_NAMES, mark="", dependants="false")
#: the same when some wait on others (``deps``: their dependencies' ids): the stored ones
#: are marked as having dependants (no new version: a transition in flight still applies),
#: and so are those of the batch itself
INSERT_WAITING = _INSERT.format(
    unnest=_INSERT_UNNEST,
    names=_INSERT_NAMES,
    mark=""", mark AS (
    UPDATE jobs SET dependants = true
    WHERE id = ANY(%(deps)s::text[]) AND dependants IS DISTINCT FROM true
)""",
    dependants="id = ANY(%(deps)s::text[])",
)

#: the stored jobs an insert met instead: by id, or holding the unique key
HOLDERS = f"""
SELECT {SELECT} FROM jobs WHERE id = ANY(%(ids)s::text[])
UNION ALL
SELECT {SELECT} FROM jobs WHERE unique_key = ANY(%(keys)s::text[]) AND state IN {LIVE}
"""


def claim_tail(source: str, tasks_of: str, worker: str, returning: str, event_worker: str) -> str:
    """The end of a claim, shared by :data:`CLAIM` and ``pg_limits.CLAIM_KEYED``: the chosen
    jobs (CTE ``source``) moved to running with their task's options, and their ``started``
    events. ``tasks_of``: the CTE whose tasks' options to join (only those: a worker may
    declare options for a thousand tasks, and the join would scan them all for every job);
    ``worker``: the claiming worker's id as an expression of ``p`` (a source row) or a
    parameter, ``event_worker`` the same for the event."""
    return f"""
, opts AS MATERIALIZED (
    SELECT * FROM unnest(%(otask)s::text[], %(oretries)s::integer[],
        %(obackoff)s::double precision[], %(obackoff_max)s::double precision[],
        %(oroute)s::text[]) AS o(task, retries, backoff, backoff_max, route)
    WHERE o.task IN (SELECT task FROM {tasks_of})
), claimed AS (
    UPDATE jobs j SET
        state = 'running',
        attempts = p.attempts + 1,
        queue = CASE WHEN p.queue = '' THEN coalesce(o.route, '{DEFAULT_QUEUE}') ELSE p.queue END,
        worker = {worker},
        broker = %(broker)s,
        lease = nextval('job_seq'),
        lease_expires = %(expires)s,
        started_at = %(now)s,
        max_retries = coalesce(p.max_retries, o.retries, {DEFAULT_RETRIES}),
        retry_backoff = coalesce(p.retry_backoff, o.backoff, {DEFAULT_RETRY_BACKOFF}),
        retry_backoff_max = coalesce(p.retry_backoff_max, o.backoff_max, {_BACKOFF_MAX}),
        version = p.version + 1
    FROM {source} p LEFT JOIN opts o ON o.task = p.task
    WHERE j.id = p.id
    RETURNING {select_from("p")}, j.lease AS new_lease, p.seq AS old_seq{returning}
), ev AS (
    INSERT INTO events (job_id, data)
    SELECT id, jsonb_build_object('event', 'started', 'at', %(at)s::jsonb,
        'worker', {event_worker}, 'attempt', attempts + 1)
    FROM claimed
)
SELECT * FROM claimed ORDER BY priority, old_seq"""


CLAIM = f"""
WITH pairs AS (
    SELECT queue, task FROM counts
    WHERE state = 'queued' AND queue = ANY(%(queues)s::text[]) AND task = ANY(%(tasks)s::text[])
    GROUP BY queue, task HAVING sum(n) > 0
), picked AS (
    SELECT j.* FROM pairs p CROSS JOIN LATERAL (
        SELECT * FROM jobs
        WHERE state = 'queued' AND queue = p.queue AND task = p.task
        ORDER BY priority, seq LIMIT %(n)s FOR UPDATE SKIP LOCKED
    ) j
    ORDER BY j.priority, j.seq LIMIT %(n)s
), slotted AS (
    SELECT p.*, (%(slots)s::text[])[1 + (row_number() OVER (ORDER BY p.priority, p.seq) - 1)
        %% cardinality(%(slots)s::text[])] AS slot
    FROM picked p
){claim_tail("slotted", "picked", "p.slot", ", p.slot AS slot", "slot")}
"""

PROMOTE = f"""
WITH picked AS (
    SELECT * FROM jobs WHERE state = 'scheduled' AND eta <= %(now)s
    ORDER BY eta LIMIT %(n)s FOR UPDATE SKIP LOCKED
), promoted AS (
    UPDATE jobs j SET state = 'queued', seq = nextval('job_seq'), lease = NULL,
        lease_expires = NULL, broker = NULL, version = p.version + 1
    FROM picked p WHERE j.id = p.id
    RETURNING {select_from("p")}
)
SELECT * FROM promoted ORDER BY eta
"""

_APPLY_UNNEST, _APPLY_NAMES = unnest_of(
    (("id", "text"), ("old_version", "integer"), ("front", "boolean"), *CHANGE_COLUMNS)
)
_SET = ",\n        ".join(f"{name} = c.{name}" for name, _ in CHANGE_COLUMNS)
#: conditional changes: each row only if the job is still at the version it was read at;
#: a job that becomes queued takes a place (front: negative, the newest frontmost)
APPLY = f"""
WITH c AS (
    SELECT *, CASE WHEN front THEN -nextval('job_seq') ELSE nextval('job_seq') END AS s
    FROM {_APPLY_UNNEST} WITH ORDINALITY AS c({_APPLY_NAMES}, ord) ORDER BY ord
), u AS (
    UPDATE jobs j SET
        {_SET},
        seq = CASE WHEN c.state = 'queued' AND (j.state <> 'queued' OR j.queue <> c.queue)
            THEN c.s ELSE j.seq END,
        broker = CASE WHEN c.state = 'running' THEN j.broker END
    FROM c WHERE j.id = c.id AND j.version = c.old_version
    RETURNING j.id, j.dependants
), ev AS (
    INSERT INTO events (job_id, data)
    SELECT e.id, e.data::jsonb FROM unnest(%(eids)s::text[], %(edata)s::text[])
    WITH ORDINALITY AS e(id, data, ord)
    WHERE e.id IN (SELECT id FROM u) ORDER BY e.ord
)
SELECT id, dependants FROM u
"""


def listing(
    where: JobFilter, limit: int, cursor: str | None, offset: int
) -> tuple[str, tuple[Any, ...]]:
    """``job_list``: the query and its parameters (one row more than a page: is there a
    next one?), newest first by submission order."""
    clauses: list[str] = []
    params: list[Any] = []
    if where.state is not None:
        clauses.append("state = %s")
        params.append(where.state.value)
    for column in ("queue", "task", "worker", "priority", "workflow"):
        value = getattr(where, column)
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    if where.id_prefix is not None:  # a range scan of the primary key
        clauses += ["id >= %s", "id < %s"]
        params += [where.id_prefix, where.id_prefix + "\U0010ffff"]
    if cursor:
        try:
            before = int(cursor)
        except ValueError:
            before = 0
        clauses.append("sub < %s")
        params.append(before)
    sql_where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return (
        f"SELECT {SELECT}, sub FROM jobs {sql_where} ORDER BY sub DESC LIMIT %s OFFSET %s",
        (*params, limit + 1, offset),
    )


GET_MANY = f"SELECT {SELECT} FROM jobs WHERE id = ANY(%s::text[])"
#: jobs by id, read for the waiting jobs that depend on them, marked as having dependants:
#: the UPDATE takes the lock of each not marked yet (a final UPDATE in flight commits
#: first, and the row is returned as it left it) and returns it as it is then; those
#: marked already are read as the statement's snapshot has them
GET_DEPENDED = f"""
WITH m AS (
    UPDATE jobs SET dependants = true
    WHERE id = ANY(%(ids)s::text[]) AND dependants IS DISTINCT FROM true
    RETURNING {SELECT}
)
SELECT * FROM m
UNION ALL
SELECT {SELECT} FROM jobs WHERE id = ANY(%(ids)s::text[]) AND id NOT IN (SELECT id FROM m)
"""
#: waiting jobs whose packed ``depends_on`` holds one of the ids' bytes: a superset of
#: those that depend on them (the caller checks each), filtered on the server
WAITING_ON = f"""
SELECT {SELECT} FROM jobs j WHERE state = 'waiting' AND EXISTS (
    SELECT 1 FROM unnest(%s::text[]) AS d(id)
    WHERE position(convert_to(d.id, 'UTF8') IN j.depends_on) > 0)
"""
EVENTS = "SELECT data FROM events WHERE job_id = %s ORDER BY n"
DEAD_ALL = f"SELECT {SELECT} FROM jobs WHERE state = 'dead' ORDER BY sub"
DEAD_SOME = f"SELECT {SELECT} FROM jobs WHERE state = 'dead' AND id = ANY(%s::text[]) ORDER BY sub"
NEXT_ETA = "SELECT min(eta) FROM jobs WHERE state = 'scheduled'"
WAITING = (
    "SELECT queue, task, sum(n) FROM counts WHERE state = 'queued'"
    " GROUP BY queue, task HAVING sum(n) > 0"
)
#: stats_brief(): jobs by state ('s') and events by kind ('t'), one round trip
STATS_BRIEF = """
SELECT 's', state, sum(n) FROM counts GROUP BY state HAVING sum(n) <> 0
UNION ALL SELECT 't', kind, sum(n) FROM totals GROUP BY kind
"""
#: the numbers of stats() in one round trip: jobs by (state, queue, task, priority) ('c'),
#: events by kind ('t'), jobs running by concurrency key ('k')
STATS = """
SELECT 'c', state, queue, task, priority, sum(n) FROM counts
GROUP BY state, queue, task, priority HAVING sum(n) <> 0
UNION ALL SELECT 't', kind, NULL, NULL, NULL, sum(n) FROM totals GROUP BY kind
UNION ALL SELECT 'k', key, NULL, NULL, NULL, held::numeric FROM key_slots WHERE held > 0
"""

PURGE = """
WITH d AS (
    DELETE FROM jobs WHERE state = 'dead' AND (%(all)s OR id = ANY(%(ids)s::text[]))
    RETURNING id
), e AS (DELETE FROM events WHERE job_id IN (SELECT id FROM d))
SELECT count(*) FROM d
"""
PRUNE = """
WITH d AS (
    DELETE FROM jobs WHERE id IN (
        SELECT id FROM jobs WHERE state IN ('completed', 'cancelled') AND finished_at < %(before)s
        LIMIT %(n)s FOR UPDATE SKIP LOCKED)
    RETURNING id
), e AS (DELETE FROM events WHERE job_id IN (SELECT id FROM d))
SELECT count(*) FROM d
"""

META_GET = "SELECT value FROM meta WHERE name = %s"
META_SET = (
    "INSERT INTO meta (name, value) VALUES (%s, %s)"
    " ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)

# -- several brokers: registration, lease renewal, rescue -------------------------------------
BROKER_JOIN = (
    "INSERT INTO brokers (id, started_at, heartbeat_at, host, pid) VALUES (%s, %s, %s, %s, %s)"
)
BROKER_LEAVE = "DELETE FROM brokers WHERE id = %s"
#: one round trip: this broker is alive, its held leases are renewed, and the running jobs
#: whose lease expired more than the grace ago under a broker that is gone (or under this
#: one, but no longer held here: a claim whose reply was lost) are returned to requeue
HEARTBEAT = f"""
WITH hb AS (
    INSERT INTO brokers (id, started_at, heartbeat_at, host, pid)
    VALUES (%(me)s, %(now)s, %(now)s, %(host)s, %(pid)s)
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at
), renew AS (
    UPDATE jobs SET lease_expires = %(expires)s
    WHERE id = ANY(%(held)s::text[]) AND state = 'running' AND broker = %(me)s
    AND lease_expires < %(renew_before)s
)
SELECT {SELECT} FROM jobs j
WHERE state = 'running' AND lease_expires < %(expired_before)s
AND NOT (id = ANY(%(held)s::text[]))
AND (broker IS NULL OR broker = %(me)s OR NOT EXISTS (
    SELECT 1 FROM brokers b WHERE b.id = j.broker AND b.heartbeat_at >= %(alive_after)s))
ORDER BY lease_expires LIMIT %(n)s
"""
BROKERS = "SELECT id, started_at, heartbeat_at, host, pid FROM brokers ORDER BY started_at"

# -- workflows: a page of them, newest first, off the jobs_workflow index ---------------------
_WORKFLOWS = """
WITH page AS (
    SELECT DISTINCT workflow FROM jobs WHERE workflow IS NOT NULL{before}
    ORDER BY workflow DESC LIMIT %(n)s
)
SELECT workflow, state, depends_on IS NULL, feed IS NOT DISTINCT FROM 'results',
       count(*), min(created_at)
FROM jobs WHERE workflow IN (SELECT workflow FROM page)
GROUP BY 1, 2, 3, 4
"""
WORKFLOWS_FIRST = _WORKFLOWS.format(before="")
WORKFLOWS_BEFORE = _WORKFLOWS.format(before=" AND workflow < %(before)s")
