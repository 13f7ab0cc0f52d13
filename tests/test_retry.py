"""The retry policy: exponential backoff with full jitter, as a pure function."""

from __future__ import annotations

import random

import pytest

from conveyor.retry import backoff_delay, next_retry_at

NOW = 1_700_000_000.0


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 10, 20, 63, 64, 1000])
@pytest.mark.parametrize(("base", "cap"), [(1.0, 300.0), (0.5, 10.0), (2.0, 1e9), (0.0, 5.0)])
def test_backoff_stays_within_full_jitter_bounds(attempt: int, base: float, cap: float) -> None:
    rand = random.Random(attempt * 7919 + int(base * 10))
    ceiling = min(cap, base * 2 ** (attempt - 1))
    for _ in range(200):
        delay = backoff_delay(attempt, base, cap, rand)
        assert 0.0 <= delay <= ceiling


def test_backoff_grows_then_caps() -> None:
    """The largest of many draws approaches the ceiling: 1, 2, 4, 8, then the cap."""
    rand = random.Random(42)
    maxima = [max(backoff_delay(n, 1.0, 10.0, rand) for _ in range(2000)) for n in range(1, 7)]
    for got, ceiling in zip(maxima, [1, 2, 4, 8, 10, 10], strict=True):
        assert ceiling * 0.98 <= got <= ceiling


def test_backoff_is_jittered() -> None:
    rand = random.Random(1)
    draws = {backoff_delay(5, 1.0, 300.0, rand) for _ in range(50)}
    assert len(draws) == 50


def test_backoff_is_reproducible_with_a_seed() -> None:
    a = [backoff_delay(n, 1.0, 300.0, random.Random(9)) for n in range(1, 10)]
    b = [backoff_delay(n, 1.0, 300.0, random.Random(9)) for n in range(1, 10)]
    assert a == b


def test_backoff_of_attempt_zero_or_less_uses_base() -> None:
    rand = random.Random(3)
    for attempt in (0, -5):
        assert 0.0 <= backoff_delay(attempt, 2.0, 300.0, rand) <= 2.0


def test_backoff_without_rand_uses_module_random() -> None:
    assert 0.0 <= backoff_delay(3, 1.0, 300.0) <= 4.0


def test_huge_attempt_does_not_overflow() -> None:
    assert 0.0 <= backoff_delay(10**9, 1.0, 60.0, random.Random(0)) <= 60.0


# -- next_retry_at ----------------------------------------------------------------------


@pytest.mark.parametrize("max_retries", [0, 1, 3, 10])
def test_retries_then_dead(max_retries: int) -> None:
    """max_retries retries mean max_retries + 1 runs; after the last run, None."""
    rand = random.Random(5)
    for attempts in range(1, max_retries + 1):
        at = next_retry_at(attempts, max_retries, NOW, 1.0, 300.0, rand=rand)
        assert at is not None
        assert NOW <= at <= NOW + min(300.0, 2.0 ** (attempts - 1))
    assert next_retry_at(max_retries + 1, max_retries, NOW, 1.0, 300.0, rand=rand) is None
    assert next_retry_at(max_retries + 5, max_retries, NOW, 1.0, 300.0, rand=rand) is None


def test_reject_means_no_retry() -> None:
    assert next_retry_at(1, 10, NOW, 1.0, 300.0, rejected=True) is None
    assert next_retry_at(1, 10, NOW, 1.0, 300.0, requested_delay=5.0, rejected=True) is None


def test_explicit_delay_wins_over_backoff() -> None:
    assert next_retry_at(1, 3, NOW, 1.0, 300.0, requested_delay=42.0) == NOW + 42.0
    assert next_retry_at(3, 3, NOW, 100.0, 1.0, requested_delay=0.0) == NOW
    # beyond the cap too: the task asked for it
    assert next_retry_at(1, 3, NOW, 1.0, 10.0, requested_delay=3600.0) == NOW + 3600.0


def test_negative_explicit_delay_means_now() -> None:
    assert next_retry_at(1, 3, NOW, 1.0, 300.0, requested_delay=-10.0) == NOW


def test_explicit_delay_does_not_extend_retries() -> None:
    assert next_retry_at(4, 3, NOW, 1.0, 300.0, requested_delay=1.0) is None


def test_seeded_next_retry_matches_backoff() -> None:
    at = next_retry_at(4, 5, NOW, 1.0, 300.0, rand=random.Random(77))
    assert at == NOW + backoff_delay(4, 1.0, 300.0, random.Random(77))
