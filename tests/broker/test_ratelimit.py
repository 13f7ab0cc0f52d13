"""Token buckets and the shaping of a claim, with time given by hand (no sleeping)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from conveyor.broker.ratelimit import RETRY_SECONDS, RateLimits, TokenBucket
from conveyor.errors import StoreUnavailable
from conveyor.job import JobRecord
from conveyor.stores.base import Claimant


def test_a_bucket_fills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(5.0, now=100.0)
    assert bucket.available(100.0) == 1
    bucket.take(1, 100.0)
    assert bucket.available(100.1) == 0
    assert abs(bucket.wait(100.1) - 0.1) < 1e-9
    assert bucket.available(100.2) == 1
    assert bucket.available(200.0) == 1  # idle time does not pile up beyond the burst


def test_a_bucket_in_debt_repays_before_the_next_token() -> None:
    bucket = TokenBucket(10.0, now=0.0)
    bucket.take(3, 0.0)  # two more than it had
    assert abs(bucket.wait(0.0) - 0.3) < 1e-9
    assert bucket.available(0.25) == 0
    assert bucket.available(0.3) == 1


def test_over_any_window_no_more_than_rate_times_time_plus_one_go_out() -> None:
    limits = RateLimits()
    limits.configure({"t": 5.0}, {}, now=0.0)
    claimant = Claimant("w", ("default",), frozenset({"t"}))
    sent, now = 0, 0.0
    while now < 10.0:
        shaped, want, wake = limits.shape(claimant, 8, now)
        if shaped is not None:
            job = JobRecord(id=f"j{sent}", task="t", payload=b"")
            limits.charge([job] * want, now)
            sent += want
            now += 0.013
        else:
            assert wake is not None and wake > 0
            now += wake
    assert sent <= 5 * 10 + 1
    assert sent >= 5 * 10 - 1


def test_shape_leaves_out_what_has_no_token_and_caps_the_rest() -> None:
    limits = RateLimits()
    limits.configure({"slow": 1.0, "fast": 1000.0}, {"mail": 2.0}, now=0.0)
    claimant = Claimant("w", ("default", "mail"), frozenset({"slow", "fast", "free"}))
    shaped, want, wake = limits.shape(claimant, 10, 0.0)
    assert shaped is claimant and want == 1 and wake is None  # every bucket starts with one
    limits.charge([JobRecord(id="a", task="slow", payload=b"", queue="mail")], 0.0)
    shaped, want, wake = limits.shape(claimant, 10, 0.1)
    assert shaped is not None and wake is not None
    assert set(shaped.tasks) == {"fast", "free"} and tuple(shaped.queues) == ("default",)
    assert want == 1  # "fast" has filled only one token so far (burst 1)
    assert abs(wake - 0.4) < 1e-9  # "mail" refills first: half a second after the take


def test_nothing_left_means_no_claim_and_a_wake_up() -> None:
    limits = RateLimits()
    limits.configure({"t": 2.0}, {}, now=0.0)
    claimant = Claimant("w", ("default",), frozenset({"t"}))
    limits.charge([JobRecord(id="a", task="t", payload=b"")], 0.0)
    shaped, want, wake = limits.shape(claimant, 4, 0.0)
    assert (shaped, want) == (None, 0) and wake is not None and abs(wake - 0.5) < 1e-9


def test_reconfiguring_keeps_the_buckets_whose_rate_is_unchanged() -> None:
    limits = RateLimits()
    limits.configure({"t": 2.0, "u": 1.0}, {}, now=0.0)
    kept = limits.tasks["t"]
    limits.configure({"t": 2.0, "u": 3.0}, {}, now=1.0)
    assert limits.tasks["t"] is kept and limits.tasks["u"].rate == 3.0
    assert not RateLimits()


class FakeStore:
    """A store's shared buckets on a hand-moved clock; counts the round trips."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.buckets: dict[str, TokenBucket] = {}
        self.calls = 0
        self.down = False

    async def take(self, asks: Sequence[tuple[str, float, float, int]]) -> dict[str, Any]:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("store_unavailable", "down")
        out = {}
        for target, rate, burst, n in asks:
            bucket = self.buckets.setdefault(target, TokenBucket(rate, self.clock[0], burst))
            granted = min(n, bucket.available(self.clock[0]))
            bucket.take(granted, self.clock[0])
            out[target] = (granted, bucket.tokens)
        return out


async def test_shared_buckets_hold_granted_tokens_and_ask_only_when_the_store_has_one() -> None:
    clock = [0.0]
    store = FakeStore(clock)
    limits = RateLimits()
    limits.configure({"t": 5.0}, {}, now=0.0, shared=True)
    claimant = Claimant("w", ("default",), frozenset({"t"}))
    await limits.draw(claimant, 4, store, lambda: clock[0])
    shaped, want, _ = limits.shape(claimant, 4, 0.0)
    assert shaped is claimant and want == 1  # the store's full bucket of one
    limits.charge([JobRecord(id="j", task="t", payload=b"")], 0.0)
    await limits.draw(claimant, 4, store, lambda: clock[0])  # the store said: empty till 0.2
    assert store.calls == 1
    shaped, _, wake = limits.shape(claimant, 4, 0.0)
    assert shaped is None and wake is not None and abs(wake - 0.2) < 1e-9
    assert limits.snapshot(0.0)["task", "t"]["limited"] is True
    clock[0] = 0.2
    await limits.draw(claimant, 4, store, lambda: clock[0])
    assert store.calls == 2 and limits.shape(claimant, 4, 0.2)[0] is claimant


async def test_a_store_that_cannot_be_asked_leaves_the_target_out_for_a_while() -> None:
    clock = [0.0]
    store = FakeStore(clock)
    store.down = True
    limits = RateLimits()
    limits.configure({}, {"default": 5.0}, now=0.0, shared=True)
    claimant = Claimant("w", ("default",), frozenset({"t"}))
    await limits.draw(claimant, 4, store, lambda: clock[0])
    shaped, _, wake = limits.shape(claimant, 4, 0.0)
    assert shaped is None and wake == RETRY_SECONDS
    await limits.draw(claimant, 4, store, lambda: clock[0])
    assert store.calls == 1  # not asked again before then
