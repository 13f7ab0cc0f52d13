"""The retry policy: a pure function, exponential backoff with full jitter."""

from __future__ import annotations

import random


def backoff_delay(
    attempt: int, base: float, cap: float, rand: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based).

    Full jitter (AWS architecture blog, "Exponential Backoff and Jitter"): a uniform
    draw from [0, min(cap, base * 2**(attempt-1))], which spreads a thundering herd.
    """
    ceiling = min(cap, base * (2 ** max(0, min(attempt - 1, 62))))
    return (rand or random).uniform(0.0, ceiling)


def next_retry_at(
    attempts: int,
    max_retries: int,
    now: float,
    base: float,
    cap: float,
    requested_delay: float | None = None,
    rejected: bool = False,
    rand: random.Random | None = None,
) -> float | None:
    """When a job that just failed its ``attempts``-th run should run again, or None if dead.

    ``max_retries`` retries mean ``max_retries + 1`` runs in all. A task's explicit
    ``Retry(delay=...)`` wins over the backoff; ``Reject`` means no retry at all.
    """
    if rejected or attempts > max_retries:
        return None
    if requested_delay is not None:
        return now + max(0.0, requested_delay)
    return now + backoff_delay(attempts, base, cap, rand)
