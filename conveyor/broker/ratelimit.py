"""Rate limits per task and per queue, as the dispatcher applies them.

Theory of operation
-------------------
Each limited task or queue has a :class:`TokenBucket`: it fills at the rate, holds at most
``burst`` tokens (1 by default: jobs go out evenly spaced, never in a clump) and each job
dispatched takes one. Before the dispatcher claims jobs for a worker it asks
:meth:`RateLimits.shape`: targets with no whole token are left out of the claim (their
jobs stay queued, the worker gets others), and the claim is made no larger than the
fewest tokens of a limited target it still includes, so no claim can overdraw a bucket.
``shape`` also says when the earliest left-out target has a token again: the dispatcher
sleeps until then (one timer), never polls. After the claim, :meth:`RateLimits.charge`
takes a token per job from its task's and its queue's buckets.

Because every dispatch of the broker passes here, the limit is global for that broker,
whatever the number of workers. When the store is shared by several brokers
(:meth:`~conveyor.stores.base.Store.rate_buckets` is not None: PostgreSQL), the true bucket
is the store's and each broker's is a :class:`GrantedBucket`: it never fills by itself, it
holds the tokens the store granted. Before shaping a claim, :meth:`RateLimits.draw` asks
the store for a small grant for each target the claim would include and has no whole token
for (one round trip for all of them; at most :data:`GRANT_SECONDS` of the rate, so a
broker never sits on tokens another could use), unless the store said it is empty until
later: then the target is left out and the one timer wakes the dispatcher when the store's
bucket has a token again. So the limit holds across brokers; its cost is that round trip
per claim of a limited target (nothing for the others).

The clock is the caller's monotonic time, so the arithmetic is tested with a fake clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from conveyor.errors import StoreUnavailable
from conveyor.job import JobRecord
from conveyor.stores.base import Claimant, RateBuckets

_EPS = 1e-9
GRANT_SECONDS = 0.05  # a grant (and a shared bucket's burst) is at most this much of the rate
RETRY_SECONDS = 1.0  # the store could not be asked: left out this long


class TokenBucket:
    """Tokens that fill at ``rate`` a second up to ``burst``; a take may leave it in debt
    (below zero: a job routed to a limited queue at claim time), repaid before the next."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, now: float, burst: float = 1.0) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now

    def _fill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now

    def available(self, now: float) -> int:
        """Whole tokens now."""
        self._fill(now)
        return max(0, math.floor(self.tokens + _EPS))

    def take(self, n: int, now: float) -> None:
        self._fill(now)
        self.tokens -= n

    def wait(self, now: float) -> float:
        """Seconds until there is a whole token (0 if there is one now)."""
        self._fill(now)
        missing = 1.0 - self.tokens
        return 0.0 if missing <= _EPS else missing / self.rate


class GrantedBucket(TokenBucket):
    """This broker's part of a bucket the store keeps: the tokens it was granted (no refill
    here), and until when the store's bucket is empty (``next_at``, monotonic)."""

    __slots__ = ("next_at",)

    def __init__(self, rate: float, now: float) -> None:
        super().__init__(rate, now, max(1.0, math.floor(rate * GRANT_SECONDS)))
        self.tokens = 0.0
        self.next_at = now

    def _fill(self, now: float) -> None:
        pass

    def wait(self, now: float) -> float:
        return 0.0 if self.tokens >= 1.0 - _EPS else max(0.0, self.next_at - now)


class RateLimits:
    """The buckets of the limited tasks and queues (see the module docstring)."""

    def __init__(self) -> None:
        self.tasks: dict[str, TokenBucket] = {}
        self.queues: dict[str, TokenBucket] = {}
        self.dispatched: dict[tuple[str, str], int] = {}  # (kind, name) -> jobs let through
        self.held = 0  # claims that left a target out for want of a token

    def __bool__(self) -> bool:
        return bool(self.tasks or self.queues)

    def configure(
        self,
        tasks: Mapping[str, float],
        queues: Mapping[str, float],
        now: float,
        *,
        shared: bool = False,
    ) -> None:
        """Set the rates (jobs a second); a target whose rate is unchanged keeps its
        bucket (and so its tokens), a new one starts full. ``shared``: the buckets are the
        store's, these hold what it grants (see :meth:`draw`)."""
        self.tasks = _rebuild(self.tasks, tasks, now, shared)
        self.queues = _rebuild(self.queues, queues, now, shared)

    async def draw(
        self, claimant: Claimant, want: int, store: RateBuckets, clock: Callable[[], float]
    ) -> None:
        """Shared buckets: ask the store for tokens for each target the claim would include
        that has none here and that the store did not say is empty (one round trip)."""
        now = clock()
        asks: list[tuple[str, GrantedBucket]] = []
        for kind, targets, offered in (
            ("task", self.tasks, claimant.tasks),
            ("queue", self.queues, claimant.queues),
        ):
            for name, bucket in targets.items():
                if (
                    isinstance(bucket, GrantedBucket)
                    and name in offered
                    and bucket.tokens < 1.0 - _EPS
                    and now >= bucket.next_at
                ):
                    asks.append((f"{kind}:{name}", bucket))
        if not asks:
            return
        try:
            got = await store.take(
                [(t, b.rate, b.burst, max(1, min(want, int(b.burst)))) for t, b in asks]
            )
        except StoreUnavailable:
            for _, bucket in asks:
                bucket.next_at = now + RETRY_SECONDS
            return
        now = clock()
        for target, bucket in asks:
            granted, left = got.get(target, (0, 0.0))
            bucket.tokens += granted
            if left < 1.0 - _EPS:  # empty: nobody here asks again before it has a token
                bucket.next_at = now + (1.0 - left) / bucket.rate

    def shape(
        self, claimant: Claimant, want: int, now: float
    ) -> tuple[Claimant | None, int, float | None]:
        """The claimant and claim size that respect every bucket, and in how many seconds
        a target left out has a token again (None: none was left out). ``None`` as the
        claimant: nothing it offers may go now."""
        drop_tasks: set[str] = set()
        drop_queues: set[str] = set()
        wake: float | None = None
        for targets, offered, dropped in (
            (self.tasks, claimant.tasks, drop_tasks),
            (self.queues, claimant.queues, drop_queues),
        ):
            for name, bucket in targets.items():
                if name not in offered:
                    continue
                n = bucket.available(now)
                if n > 0:
                    want = min(want, n)
                    continue
                dropped.add(name)
                delay = bucket.wait(now)
                wake = delay if wake is None else min(wake, delay)
        if not drop_tasks and not drop_queues:
            return claimant, want, None
        self.held += 1
        tasks = frozenset(claimant.tasks) - drop_tasks
        queues = tuple(q for q in claimant.queues if q not in drop_queues)
        if not tasks or not queues:
            return None, 0, wake
        return replace(claimant, tasks=tasks, queues=queues), want, wake

    def charge(self, jobs: Iterable[JobRecord], now: float) -> None:
        """Jobs were dispatched: a token each from their task's and their queue's bucket."""
        for job in jobs:
            for kind, targets, name in (
                ("task", self.tasks, job.task),
                ("queue", self.queues, job.queue),
            ):
                bucket = targets.get(name)
                if bucket is not None:
                    bucket.take(1, now)
                    key = (kind, name)
                    self.dispatched[key] = self.dispatched.get(key, 0) + 1

    def snapshot(self, now: float) -> dict[tuple[str, str], dict[str, float | int | bool]]:
        """Per limited target: its rate, whole tokens now (shared: granted to this broker),
        whether it is holding jobs back now (no token; shared: the store's bucket is empty),
        how many jobs it has let through here, and whether its bucket is the store's."""
        out: dict[tuple[str, str], dict[str, float | int | bool]] = {}
        for kind, targets in (("task", self.tasks), ("queue", self.queues)):
            for name, bucket in targets.items():
                tokens = bucket.available(now)
                shared = isinstance(bucket, GrantedBucket)
                out[kind, name] = {
                    "per_second": bucket.rate,
                    "tokens": tokens,
                    "limited": tokens == 0 and (not shared or bucket.wait(now) > 0),
                    "dispatched": self.dispatched.get((kind, name), 0),
                    "shared": shared,
                }
        return out


def _rebuild(
    old: dict[str, TokenBucket], rates: Mapping[str, float], now: float, shared: bool
) -> dict[str, TokenBucket]:
    out: dict[str, TokenBucket] = {}
    for name, rate in rates.items():
        bucket = old.get(name)
        same_kind = isinstance(bucket, GrantedBucket) == shared
        if bucket is not None and bucket.rate == rate and same_kind:
            out[name] = bucket
        else:
            out[name] = GrantedBucket(rate, now) if shared else TokenBucket(rate, now)
    return out
