"""The token watch as a service: ``run_once(now)`` over fake sessions, no sockets, no sleep."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.broker.config import BrokerConfig
from conveyor.broker.core import BrokerCore
from conveyor.broker.tokenwatch import TokenWatch
from conveyor.clock import FakeClock
from conveyor.security.tokens import Role, TokenRegistry, hash_token
from conveyor.stores.memory import MemoryStore


@dataclass
class FakeSession:
    token_digest: str
    token_name: str = "t"
    closed: bool = False
    ended: list[str] = field(default_factory=list)

    def credentials_ended(self, reason: str) -> int:
        self.ended.append(reason)
        self.closed = True
        return 2


async def test_run_once_ends_only_the_sessions_whose_token_ended(tmp_path: Path) -> None:
    clock = FakeClock(start=time.time())
    registry = TokenRegistry(tmp_path / "tokens.json")
    now = clock.now()
    short, _ = registry.create(Role.WORKER, "short", ttl=30, now=now)
    long, _ = registry.create(Role.WORKER, "long", now=now)
    core = BrokerCore(BrokerConfig(home=tmp_path), MemoryStore(), registry, clock)
    sessions = [FakeSession(hash_token(short)), FakeSession(hash_token(long)), FakeSession("")]
    woken = []
    watch = TokenWatch(core, clock, lambda: sessions, lambda: woken.append(1))

    await watch.run_once(clock.now())
    assert [s.ended for s in sessions] == [[], [], []] and not woken
    clock.advance(31)
    await watch.run_once(clock.now())
    assert [s.ended for s in sessions] == [["token expired"], [], []]
    assert woken == [1] and core.metrics["token_ended_connections"] == 1
    await watch.run_once(clock.now())  # a closed session is not ended twice
    assert sessions[0].ended == ["token expired"]

    TokenRegistry(tmp_path / "tokens.json").revoke("long")  # in another process
    await watch.run_once(clock.now())
    assert sessions[1].ended == ["token revoked"]


async def test_a_damaged_tokens_file_keeps_open_connections(tmp_path: Path) -> None:
    clock = FakeClock(start=time.time())
    path = tmp_path / "tokens.json"
    registry = TokenRegistry(path)
    token, _ = registry.create(Role.WORKER, "w", now=clock.now())
    core = BrokerCore(BrokerConfig(home=tmp_path), MemoryStore(), registry, clock)
    session = FakeSession(hash_token(token))
    watch = TokenWatch(core, clock, lambda: [session])
    path.write_text("{not json")
    assert watch.check(clock.now()) == 0  # logged, and the last good registry stays
    assert session.ended == []
