"""The failed-login throttle on its own: pure policy, a fake ``now``, no sockets."""

from __future__ import annotations

import pytest

from conveyor.security.throttle import LoginThrottle, source_key


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4-mapped counts as the IPv4 address
        ("fe80::1%eth0", "fe80::/64"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_sources_are_ipv4_addresses_and_ipv6_slash_64s(address: str, key: str) -> None:
    assert source_key(address) == key


def test_free_failures_then_a_doubling_block_up_to_the_cap() -> None:
    t = LoginThrottle(free=5, first_delay=0.25, max_delay=4.0)
    now = 1000.0
    blocks = []
    for _ in range(12):
        assert t.retry_after("192.0.2.1", now) == 0.0  # only ever tried once unblocked
        blocks.append(t.failed("192.0.2.1", now).blocked_for)
        now += blocks[-1] + 0.001
    assert blocks == [0, 0, 0, 0, 0, 0.25, 0.5, 1, 2, 4, 4, 4]
    assert t.failures == 12 and t.refused == 0


def test_a_blocked_source_is_refused_until_its_block_ends() -> None:
    t = LoginThrottle(free=1, first_delay=0.5, max_delay=4.0)
    t.failed("192.0.2.1", 10.0)
    assert t.failed("192.0.2.1", 10.0).blocked_for == 0.5
    assert t.retry_after("192.0.2.1", 10.1) == pytest.approx(0.4)
    assert t.retry_after("192.0.2.1", 10.5) == 0.0
    assert t.refused == 1


def test_other_sources_are_never_blocked() -> None:
    t = LoginThrottle(free=0, first_delay=1, max_delay=1)
    for _ in range(100):
        t.failed("192.0.2.1", 0.0)
        t.failed("2001:db8:1:2::5", 0.0)
    assert t.retry_after("192.0.2.1", 0.5) > 0
    assert t.retry_after("2001:db8:1:2::99", 0.5) > 0  # the same /64
    assert t.retry_after("192.0.2.2", 0.5) == 0.0
    assert t.retry_after("2001:db8:1:3::5", 0.5) == 0.0  # the next /64


def test_a_quiet_source_starts_again_from_zero() -> None:
    t = LoginThrottle(free=2, first_delay=1, max_delay=8, forget_after=60)
    for _ in range(5):
        t.failed("192.0.2.1", 0.0)
    assert t.failed("192.0.2.1", 61.0).blocked_for == 0  # forgotten: free failures again
    assert t.failed("192.0.2.1", 61.0).blocked_for == 0
    assert t.failed("192.0.2.1", 61.0).blocked_for == 1


def test_the_table_is_bounded_least_recently_failed_first() -> None:
    t = LoginThrottle(free=0, first_delay=1, max_delay=1, max_sources=3)
    for i in range(3):
        t.failed(f"192.0.2.{i}", 0.0)
    t.failed("192.0.2.0", 0.0)  # touched again: now the newest
    t.failed("192.0.2.9", 0.0)  # a fourth source evicts the least recent (192.0.2.1)
    snap = t.snapshot(0.0)
    assert snap["sources_tracked"] == 3 and snap["sources_evicted"] == 1
    assert t.retry_after("192.0.2.1", 0.5) == 0.0  # eviction only ever frees a source
    assert t.retry_after("192.0.2.0", 0.5) > 0
    for i in range(10_000):  # a flood of sources keeps the table at its bound
        t.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 1.0)
    assert t.snapshot(1.0)["sources_tracked"] == 3


def test_failures_are_logged_in_aggregate() -> None:
    t = LoginThrottle(free=5, first_delay=0.25, max_delay=4, log_interval=10)
    logged_now = 0
    for i in range(300):  # 300 bad tokens in 3 s from one address, most refused unchecked
        now = i / 100
        if t.retry_after("192.0.2.1", now) == 0:
            logged_now += t.failed("192.0.2.1", now, "unknown token").log_now
    assert logged_now == 1  # the first one, at once
    assert t.report(5.0) == []  # the interval is not over
    [line] = t.report(10.0)
    assert line.startswith("from 192.0.2.1 in the last 10s: ")
    assert f"{t.failures - 1} more bad token(s)" in line
    assert f"{t.refused} login(s) refused unchecked while throttled" in line
    assert t.failures + t.refused == 300 and t.failures < 15
    assert t.report(15.0) == []  # nothing new: no line
    assert t.report(20.0) == []  # a quiet interval ends the aggregation ...
    assert t.failed("192.0.2.1", 21.0).log_now  # ... so the next failure is logged at once


def test_quiet_sources_are_forgotten_by_the_report() -> None:
    t = LoginThrottle(forget_after=60, log_interval=10)
    t.failed("192.0.2.1", 0.0)
    t.report(10.0)
    assert t.snapshot(10.0)["sources_tracked"] == 1
    t.report(61.0)
    assert t.snapshot(61.0)["sources_tracked"] == 0


def test_max_delay_zero_turns_it_off() -> None:
    t = LoginThrottle(max_delay=0)
    for _ in range(50):
        assert t.failed("192.0.2.1", 0.0).blocked_for == 0
    assert t.retry_after("192.0.2.1", 0.0) == 0.0
