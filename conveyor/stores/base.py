"""The store interface: persistence and indexes, no job logic. Every engine implements it.

Theory of operation
-------------------
Stores keep job records, their history and the indexes the broker's hot paths need (the
most urgent queued job a worker can take, the next due ETA, live unique keys, counts).
They decide nothing about a job's life: :mod:`conveyor.lifecycle` computes every change
as a :class:`~conveyor.lifecycle.Transition` and a store applies it *conditionally*, only
if the stored job is still at the version the transition was computed from (river's
"set state if running" idea, generalised). Two operations pick jobs and change them in one
step, so the engine calls the lifecycle itself: :meth:`Store.job_claim`
(``lifecycle.claim``) and :meth:`Store.job_promote_due` (``lifecycle.promote``).

Methods are grouped by area and named noun-first. All take ``now`` (UTC epoch seconds)
from the caller's clock instead of reading time themselves. A write that the broker
acknowledges to a client returns only once it is durable in that engine (for SQLite,
committed); claims and promotions need not be (a lost claim is simply run again).
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from conveyor.job import DEFAULT_QUEUE, FEED_RESULTS, Event, JobRecord, JobState
from conveyor.lifecycle import TaskOptions, Transition

TOTALS = ("submitted", "completed", "failed", "retried", "requeued", "dead", "cancelled")
"""Event counters every engine keeps (stats ``totals``): how many events of each kind."""


@dataclass(frozen=True, slots=True)
class Inserted:
    job: JobRecord
    created: bool  # False: an existing job was returned (same id, or same live unique_key)


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """The concurrency limits in force: per key prefix (set on the broker, the longest
    matching wins) and per task (declared), for engines that count in their database."""

    prefixes: Mapping[str, int] = field(default_factory=dict)
    tasks: Mapping[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.prefixes or self.tasks)


class KeyGate(Protocol):
    """Per-key concurrency limits as a claim sees them (the broker's
    :class:`~conveyor.broker.keygate.ConcurrencyGate` is one).

    A claim asks :meth:`admit` for each job that has a concurrency key, before taking it;
    a job refused stays queued, and the engine should not offer it again until
    :meth:`freed` names its key (the memory and SQLite engines park it aside).
    """

    def admit(self, task: str, key: str) -> bool:
        """Reserve a running slot of ``key`` for one job of ``task``; False: at its limit."""
        ...

    def freed(self) -> Mapping[str, int] | None:
        """Slots freed per key since the last call (the call forgets them); ``None``:
        limits changed, every refused job may be tried again."""
        ...

    def key_limits(self) -> KeyLimits:
        """The limits themselves (the same object until they change): an engine shared by
        several brokers counts running jobs per key in its database instead of asking
        :meth:`admit` (PostgreSQL: :mod:`conveyor.stores.sql.pg_limits`)."""
        ...


class RateBuckets(Protocol):
    """Token buckets kept by a store that several brokers share (see
    :meth:`Store.rate_buckets`)."""

    async def take(
        self, asks: Sequence[tuple[str, float, float, int]]
    ) -> dict[str, tuple[int, float]]:
        """For each ``(target, rate, burst, n)``: take up to ``n`` whole tokens from the
        target's bucket (created full at the first take; ``rate`` and ``burst`` replace the
        stored ones). Returns per target ``(granted, tokens left)``."""
        ...


@dataclass(frozen=True, slots=True)
class Claimant:
    """What a worker can take: its id, queues, tasks, and per task its own options and
    declared queue (``routes``: where an unrouted job of that task goes when claimed).

    Every claimant also takes unrouted jobs (queue ``UNROUTED``) of the tasks it offers.
    With a ``gate``, a job that has a concurrency key is taken only if the gate admits it.
    """

    worker: str
    queues: Sequence[str]
    tasks: Collection[str]
    options: Mapping[str, TaskOptions] = field(default_factory=dict)
    routes: Mapping[str, str] = field(default_factory=dict)
    gate: KeyGate | None = None

    def route(self, task: str) -> str:
        return self.routes.get(task, DEFAULT_QUEUE)


@dataclass(frozen=True, slots=True)
class JobFilter:
    """LIST filters; None means any."""

    state: JobState | None = None
    queue: str | None = None
    task: str | None = None
    worker: str | None = None
    priority: int | None = None
    id_prefix: str | None = None
    workflow: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing, newest first; ``cursor`` asks for the next page (None: last)."""

    jobs: list[JobRecord]
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class WorkflowSummary:
    """One workflow as a listing shows it: its jobs by state, how many wait for none
    (``roots``) and how many receive a list of results (``joins``: a chord's callback),
    and when its first job was submitted."""

    id: str
    counts: dict[str, int]
    members: int
    roots: int
    joins: int
    created_at: float


@dataclass(frozen=True, slots=True)
class WorkflowPage:
    """Workflows, newest first (by id: UUIDv7 ids sort by time); ``cursor`` asks for the
    next page (None: last)."""

    workflows: list[WorkflowSummary]
    cursor: str | None = None


#: a group of one workflow's jobs: (workflow, state, is a root, is a join, count, created)
MemberGroup = tuple[str, str, bool, bool, int, float]


def summarize(ids: Sequence[str], groups: Iterable[MemberGroup]) -> list[WorkflowSummary]:
    """The summaries of workflows ``ids`` (in that order) from their jobs, grouped; a
    workflow with no job left is left out."""
    counts: dict[str, Counter[str]] = {i: Counter() for i in ids}
    roots: Counter[str] = Counter()
    joins: Counter[str] = Counter()
    created: dict[str, float] = {}
    for workflow, state, root, join, n, at in groups:
        counts[workflow][state] += n
        roots[workflow] += n if root else 0
        joins[workflow] += n if join else 0
        created[workflow] = min(created.get(workflow, at), at)
    return [
        WorkflowSummary(i, dict(c), c.total(), roots[i], joins[i], created[i])
        for i, c in counts.items()
        if c
    ]


def member_group(job: JobRecord) -> MemberGroup:
    """One job as a group of one (engines that read the jobs themselves)."""
    workflow = job.workflow or ""
    return (
        workflow,
        job.state.value,
        not job.depends_on,
        job.feed == FEED_RESULTS,
        1,
        job.created_at,
    )


class StoreListener(Protocol):
    """What an engine shared by several brokers tells its own broker about changes the
    *other* brokers made (see :meth:`Store.watch`). Callbacks run on the event loop and
    must not block; None means "anything may have changed" (after a lost connection)."""

    def available(self, pairs: Collection[tuple[str, str]] | None) -> None:
        """Jobs of these (queue, task) pairs became queued."""

    def finished(self, job_ids: Sequence[str] | None) -> None:
        """These jobs became final (completed, dead or cancelled)."""

    def cancel_requested(self, job_ids: Sequence[str]) -> None:
        """A cancel was asked for these running jobs."""

    def setting_changed(self, name: str | None) -> None:
        """The setting ``name`` (:meth:`Store.meta_set`) was changed."""


class Store(abc.ABC):
    """Abstract base of every engine. See the module docstring for the contract."""

    #: jobs survive a restart of the broker
    durable: bool = False
    #: several brokers may share the engine's data (it calls :meth:`watch`'s listener)
    shared: bool = False
    #: a claim is a round trip to a server: the dispatcher claims every idle worker's whole
    #: credit in one :meth:`job_claim_many` rather than a small slice per worker at a time
    bulk_claims: bool = False
    #: :meth:`job_get_recent` may answer from what this engine last wrote (see there)
    remembers: bool = False
    url: str = ""

    def rate_buckets(self) -> RateBuckets | None:
        """The store's shared token buckets, for rate limits that hold across brokers;
        None (memory, SQLite: one broker) keeps them in the broker's memory."""
        return None

    def watch(self, listener: StoreListener) -> None:
        """Tell ``listener`` of changes other brokers make (call before :meth:`open`).
        Engines that only one broker uses (memory, SQLite) never call it."""

    async def job_rescue_expired(self, now: float) -> list[JobRecord]:
        """Renew this broker's leases and return the running jobs whose lease has lapsed
        under a broker that is gone (several brokers on one database), for the caller to
        requeue through the lifecycle. Engines that one broker owns return none: their
        broker requeues what was running at :meth:`open`."""
        return []

    @property
    def health(self) -> dict[str, Any]:
        """``{"writable", "error", "since", "failed_attempts"}``: can the engine write now?"""
        return {"writable": True, "error": None, "since": None, "failed_attempts": 0}

    async def open(self, now: float) -> list[JobRecord]:
        """Open the engine; return the jobs it holds as running (from before a restart)."""
        return []

    async def close(self) -> None:
        """Flush and release resources."""

    # -- jobs: writes ------------------------------------------------------------------------
    @abc.abstractmethod
    async def job_insert_many(
        self, jobs: Sequence[tuple[JobRecord, Event]], *, durable: bool = True
    ) -> list[Inserted]:
        """Store new jobs (already born: queued or scheduled) with their first event.

        A job whose id exists, or whose unique key a live job holds, is not stored: the
        existing job is returned with ``created=False`` (also between jobs of one call).
        With ``durable=False`` it returns before the jobs are durable (see :meth:`flush`).
        """

    @abc.abstractmethod
    async def job_claim(
        self, claimant: Claimant, limit: int, lease_seconds: float, now: float
    ) -> list[JobRecord]:
        """Move up to ``limit`` of the most urgent queued jobs the claimant can run to running
        (``lifecycle.claim``), by priority (1 first), then FIFO; each gets a fresh lease."""

    async def job_claim_many(
        self, wants: Sequence[tuple[Claimant, int]], lease_seconds: float, now: float
    ) -> list[list[JobRecord]]:
        """:meth:`job_claim` for several claimants, one list each in order (engines with
        ``bulk_claims`` do it in fewer round trips); this default claims for each in turn."""
        return [await self.job_claim(c, n, lease_seconds, now) for c, n in wants]

    @abc.abstractmethod
    async def job_promote_due(self, now: float) -> list[JobRecord]:
        """Scheduled jobs whose eta has come become queued (``lifecycle.promote``)."""

    @abc.abstractmethod
    async def job_apply(
        self, transitions: Sequence[Transition], *, durable: bool = True
    ) -> list[JobRecord | None]:
        """Apply each transition if the job is still at ``transition.old.version``.

        Returns the new record, or None where the job changed meanwhile (or is gone): the
        caller reads it again and decides anew.
        """

    @abc.abstractmethod
    async def dlq_purge(self, ids: Sequence[str] | None) -> int:
        """Delete dead jobs (these, or all when None); return how many."""

    @abc.abstractmethod
    async def job_prune(self, finished_before: float) -> int:
        """Delete completed and cancelled jobs finished before the given time."""

    async def flush(self) -> None:
        """Return once every change made so far is durable. Raises
        :class:`~conveyor.errors.StoreUnavailable` while the engine cannot write; the
        changes are kept and written when it can."""

    # -- jobs: reads -------------------------------------------------------------------------
    @abc.abstractmethod
    async def job_get(self, job_id: str, *, payload: bool = True) -> JobRecord | None:
        """The job, or None. ``payload=False``: the caller will not look at the payload
        (a result read), so an engine that keeps large payloads apart need not read them
        and may give ``b""`` instead; never pass such a record on to a change."""

    @abc.abstractmethod
    async def job_get_many(self, ids: Sequence[str], *, payload: bool = True) -> list[JobRecord]:
        """The jobs with these ids that exist, in the order of ``ids`` (repeats once);
        ``payload`` as for :meth:`job_get`."""

    async def job_get_depended(self, ids: Sequence[str]) -> list[JobRecord]:
        """Like :meth:`job_get_many`, for the workflow service reading the dependencies of
        waiting jobs to decide on them: an engine that records whether a job has
        dependants (PostgreSQL's ``jobs.dependants``) marks the ones it reads, so that a
        dependency read here as live is looked after when it ends, whoever stored it."""
        return await self.job_get_many(ids)

    async def job_get_recent(self, ids: Sequence[str]) -> list[JobRecord]:
        """Like :meth:`job_get_many`, but a job this engine changed itself may come as it
        last wrote it, without a read: possibly stale (another broker changed it since), so
        only for computing a transition that :meth:`job_apply` then applies at that version
        (a stale one is refused, and read again). Engines with ``remembers`` override it."""
        return await self.job_get_many(ids)

    @abc.abstractmethod
    async def job_events(self, job_id: str) -> list[Event]:
        """The job's history, oldest first (empty for an unknown job)."""

    @abc.abstractmethod
    async def job_dead(self, ids: Sequence[str] | None) -> list[JobRecord]:
        """Dead jobs: these (those that are dead), or all when None; oldest first."""

    @abc.abstractmethod
    async def job_list(
        self,
        where: JobFilter,
        limit: int = 100,
        cursor: str | None = None,
        offset: int = 0,
        *,
        payload: bool = True,
    ) -> Page:
        """Jobs matching ``where``, newest first (by submission); ``payload`` as for
        :meth:`job_get`."""

    async def job_waiting_on(self, ids: Sequence[str]) -> list[JobRecord]:
        """The ``waiting`` jobs that depend on any of ``ids`` (the workflow service
        releases or cancels them when those end). This default pages through every
        waiting job; engines with an index of their own override it."""
        wanted = set(ids)
        out: list[JobRecord] = []
        cursor: str | None = None
        while True:
            page = await self.job_list(JobFilter(state=JobState.WAITING), 1000, cursor)
            out.extend(j for j in page.jobs if wanted.intersection(j.depends_on))
            if page.cursor is None:
                return out
            cursor = page.cursor

    @abc.abstractmethod
    async def workflow_list(self, limit: int = 50, cursor: str | None = None) -> WorkflowPage:
        """Workflows (the jobs that carry a ``workflow`` id, summed up as one), newest
        first by id, through an index of that id: never a scan of every job."""

    @abc.abstractmethod
    async def job_next_eta(self) -> float | None:
        """The earliest eta among scheduled jobs (for the promoter's sleep)."""

    @abc.abstractmethod
    async def queue_waiting(self) -> dict[tuple[str, str], int]:
        """Queued job counts by (queue, task): tells the broker what is waiting for whom."""

    # -- small durable settings (task routes, paused queues) --------------------------------
    @abc.abstractmethod
    async def meta_get(self, name: str) -> Any:
        """A setting stored with :meth:`meta_set` (None if never set)."""

    @abc.abstractmethod
    async def meta_set(self, name: str, value: Any) -> None:
        """Store a small MessagePack-able setting durably, replacing the old value."""

    # -- numbers -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def stats(self) -> dict[str, Any]:
        """``{"states": {state: n}, "queues": {queue: {state: n}}, "totals": {kind: n}}``;
        optionally ``"waiting_for_key": {key: n}`` (queued jobs a gate refused) and, on an
        engine that counts keys in its database, ``"running_by_key": {key: n}`` (every
        broker's)."""

    async def stats_brief(self) -> dict[str, Any]:
        """Only ``states`` and ``totals`` of :meth:`stats`: what one polling for progress
        needs, at a cost that does not grow with the number of queues and tasks (engines
        that keep their counts in memory override it)."""
        full = await self.stats()
        return {"states": full["states"], "totals": full["totals"]}
