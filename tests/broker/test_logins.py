"""The broker's door on its own: the throttle keeps monotonic time, counts per face."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conveyor.broker.config import BrokerConfig, Limits
from conveyor.broker.core import BrokerCore
from conveyor.clock import FakeClock
from conveyor.errors import AuthenticationError, TooManyFailures
from conveyor.security.tokens import Role, TokenRegistry
from conveyor.stores.memory import MemoryStore

BAD = "cvy_" + "B" * 43


class SteppedClock(FakeClock):
    """A fake clock whose wall time can jump on its own, as NTP makes it."""

    def set_wall(self, now: float) -> None:
        self._now = now


def core_for(tmp_path: Path, clock: FakeClock) -> tuple[BrokerCore, str]:
    registry = TokenRegistry(tmp_path / "tokens.json")
    token, _ = registry.create(Role.PRODUCER, "p", now=clock.now())
    limits = Limits(login_free_failures=2, login_delay_first=10, login_delay_max=10)
    return BrokerCore(
        BrokerConfig(home=tmp_path, limits=limits), MemoryStore(), registry, clock
    ), token


def test_a_wall_clock_stepped_back_does_not_stretch_a_block(tmp_path: Path) -> None:
    clock = SteppedClock(start=time.time())
    core, good = core_for(tmp_path, clock)
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            core.logins.login(BAD, "192.0.2.1", peer="192.0.2.1:1", http=False)
    with pytest.raises(TooManyFailures) as refused:
        core.logins.login(good, "192.0.2.1", peer="192.0.2.1:2", http=False)
    assert refused.value.retry_after == pytest.approx(10)
    clock.advance(11)  # 11 s really pass ...
    clock.set_wall(clock.now() - 3600)  # ... and NTP steps the wall clock back an hour
    assert core.logins.login(good, "192.0.2.1", peer="192.0.2.1:3", http=False).name == "p"


def test_each_face_is_counted_and_one_throttle_serves_both(tmp_path: Path) -> None:
    clock = FakeClock(start=time.time())
    core, good = core_for(tmp_path, clock)
    with pytest.raises(AuthenticationError):
        core.logins.login(BAD, "192.0.2.1", peer="p", http=True)
    for _ in range(2):
        with pytest.raises(AuthenticationError):
            core.logins.login(BAD, "192.0.2.1", peer="p", http=False)
    with pytest.raises(TooManyFailures):
        core.logins.login(good, "192.0.2.1", peer="p", http=True)
    snap = core.logins.snapshot()
    assert (snap["http_auth_failures"], snap["auth_failures"], snap["http_auth_throttled"]) == (
        1,
        2,
        1,
    )
    assert snap["login_failures"] == 3 and snap["sources_blocked"] == 1
    assert core.logins.login(good, "192.0.2.2", peer="q", http=False).name == "p"
