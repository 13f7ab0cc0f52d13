"""Failed logins are throttled per source address, on a running broker (socket and HTTP).

Before, 300 wrong tokens from one address were all checked and answered at once, each with
its own WARNING line. Now a source that keeps failing is refused unchecked for a growing
while (``too_many_failures`` with ``retry_after``; HTTP 429 with ``Retry-After``), the log
gets one line per source per interval, stats and metrics count it all, and every other
address still logs in at once. Other loopback addresses (127.0.0.2, ...) stand in for
other hosts: on Linux all of 127.0.0.0/8 reaches a broker listening on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig, Limits
from conveyor.client.aio import AsyncClient
from conveyor.errors import AuthenticationError, RateLimited, TooManyFailures
from conveyor.security.tokens import Role, TokenRegistry
from tests.clocks import Later
from tests.security.rawconn import Raw, admin_token

BAD = "cvy_" + "A" * 43
BLOCK = 30.0  # long enough that no test can outrun it by accident


@pytest.fixture
def broker_config(home: Path, request: pytest.FixtureRequest) -> BrokerConfig:
    limits = getattr(request, "param", Limits(login_delay_first=BLOCK, login_delay_max=BLOCK))
    return BrokerConfig(port=0, store_url="memory://", home=home, limits=limits, http_port=0)


def make(home: Path, role: Role = Role.PRODUCER) -> str:
    token, _ = TokenRegistry(home / "tokens.json").create(role, now=time.time())
    return token


async def hello(broker: Broker, home: Path, token: str, source: str = "127.0.0.1") -> Any:
    """HELLO with ``token`` from ``source``: the WELCOME, or the fatal ERROR (then closed)."""
    raw = await Raw.open(broker.port, home, source=source)
    try:
        reply = await raw.hello(token)
        assert reply is not None, "closed without a reply"
        if reply["t"] == "error":
            assert await raw.recv() is None, "a fatal error must close the connection"
        return reply
    finally:
        await raw.close()


async def test_a_failing_address_is_throttled_and_no_other_is(
    broker: Broker, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "conveyor.broker")
    good = make(home)
    # five free failures, and a sixth that starts the block: all checked, all unauthorized
    for _ in range(6):
        assert (await hello(broker, home, BAD))["code"] == "unauthorized"
    # blocked now: refused unchecked, with how long to wait
    refused = await hello(broker, home, BAD)
    assert refused["code"] == "too_many_failures", refused
    assert 0 < refused["retry_after"] <= BLOCK
    assert "127.0.0.1" in refused["message"]
    # even a good token from there waits (otherwise the answer would still tell a hit)
    assert (await hello(broker, home, good))["code"] == "too_many_failures"
    # ... but every other address logs in at once, bad tokens there are merely bad
    started = time.monotonic()
    assert (await hello(broker, home, good, source="127.0.0.2"))["t"] == "welcome"
    assert time.monotonic() - started < 2.0
    assert (await hello(broker, home, BAD, source="127.0.0.3"))["code"] == "unauthorized"
    assert (await hello(broker, home, good, source="127.0.0.3"))["t"] == "welcome"

    security = (await broker.core.stats())["security"]
    assert security["login_failures"] == 7 and security["auth_failures"] == 7
    assert security["logins_refused_throttled"] == 2 and security["auth_throttled"] == 2
    assert security["sources_blocked"] == 1 and security["sources_tracked"] == 2
    # one line per source at once, the rest in the aggregate report
    lines = [r.getMessage() for r in caplog.records if "bad token" in r.getMessage()]
    assert len(lines) == 2, lines
    broker.core.logins.throttle.log_interval = 0  # end the interval now
    assert broker.core.logins.report() == 1
    [summary] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("bad tokens")]
    assert summary.startswith("bad tokens from 127.0.0.1 in the last ")
    assert "5 more bad token(s), 2 login(s) refused unchecked while throttled" in summary


async def test_the_block_ends(broker: Broker, home: Path) -> None:
    for _ in range(6):
        await hello(broker, home, BAD)
    good = make(home)
    assert (await hello(broker, home, good))["code"] == "too_many_failures"
    broker.core.clock = Later(broker.core.clock, BLOCK + 1, monotonic=True)  # type: ignore[assignment]
    assert (await hello(broker, home, good))["t"] == "welcome"


async def test_the_client_library_raises_too_many_failures(broker: Broker, home: Path) -> None:
    for _ in range(6):
        await hello(broker, home, BAD)
    client = AsyncClient(broker.url, home=home, token=make(home), reconnect_timeout=0)
    with pytest.raises(TooManyFailures) as caught:
        await client.connect()
    assert isinstance(caught.value, RateLimited)
    assert not isinstance(caught.value, AuthenticationError)  # not a verdict on the token
    assert caught.value.code == "too_many_failures"
    assert 0 < caught.value.retry_after <= BLOCK
    await client.close()


async def test_http_bearer_failures_share_the_throttle(broker: Broker, home: Path) -> None:
    url = broker.dashboard_url or ""
    bad = {"Authorization": f"Bearer {BAD}"}
    good = {"Authorization": f"Bearer {make(home)}"}
    async with httpx.AsyncClient(base_url=url) as http:
        for _ in range(3):  # no token at all is not a guess: never counted
            assert (await http.get("/api/stats")).status_code == 401
        for _ in range(6):
            assert (await http.get("/api/stats", headers=bad)).status_code == 401
        throttled = await http.get("/api/stats", headers=good)
        assert throttled.status_code == 429, throttled.text
        assert throttled.json()["error"]["code"] == "too_many_failures"
        assert 1 <= int(throttled.headers["retry-after"]) <= BLOCK
    # one throttle for both faces: the socket refuses that address too
    assert (await hello(broker, home, make(home)))["code"] == "too_many_failures"
    # another address is untouched, and sees the numbers
    admin = {"Authorization": f"Bearer {admin_token(home)}"}
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(base_url=url, transport=transport, headers=admin) as http:
        assert (await http.get("/api/stats", headers=good)).status_code == 200
        panel = (await http.get("/api/security")).json()["logins"]
        assert panel["http_auth_failures"] == 6 and panel["http_auth_throttled"] == 1
        assert panel["auth_throttled"] == 1 and panel["sources_blocked"] == 1
        metrics = (await http.get("/metrics")).text
    assert 'conveyor_auth_failures_total{channel="http"} 6.0' in metrics
    assert 'conveyor_auth_throttled_total{channel="http"} 1.0' in metrics
    assert 'conveyor_auth_throttled_total{channel="socket"} 1.0' in metrics
    assert "conveyor_auth_sources_blocked 1.0" in metrics


@pytest.mark.slow
@pytest.mark.parametrize("broker_config", [Limits()], indirect=True, ids=["defaults"])
async def test_300_wrong_tokens_from_one_address(
    broker: Broker, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the hostile-run figure, with the default limits (5 free, 0.25 s doubling to 4 s)
    caplog.set_level(logging.INFO, "conveyor.broker")
    outcomes: Counter[str] = Counter()
    gate = asyncio.Semaphore(10)

    async def one() -> None:
        async with gate:
            outcomes[(await hello(broker, home, BAD))["code"]] += 1

    good = make(home)
    started = time.monotonic()
    flood = asyncio.gather(*(one() for _ in range(300)))
    # while the flood goes on, another address logs in at once
    other = time.monotonic()
    assert (await hello(broker, home, good, source="127.0.0.2"))["t"] == "welcome"
    other = time.monotonic() - other
    await flood
    elapsed = time.monotonic() - started
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    print(
        f"\n300 wrong tokens from one address: {elapsed:.2f}s, {dict(outcomes)}, "
        f"{len(lines)} WARNING line(s); another address logged in in {other * 1000:.0f} ms"
    )
    assert sum(outcomes.values()) == 300
    assert set(outcomes) == {"unauthorized", "too_many_failures"}
    # checked guesses: the 5 free ones plus about one per block (0.25+0.5+1+2+4+4... s)
    assert outcomes["unauthorized"] <= 5 + 2 + elapsed / 0.25
    assert len(lines) <= 2, [r.getMessage() for r in lines]
    assert other < 2.0


async def test_ipv6_sources_count_by_slash_64(home: Path) -> None:
    # a broker on ::1: the peer's address is parsed out of "::1:port" and grouped by /64
    limits = Limits(login_delay_first=BLOCK, login_delay_max=BLOCK)
    broker = Broker(
        BrokerConfig(host="::1", port=0, store_url="memory://", home=home, limits=limits)
    )
    await broker.start()
    try:
        for _ in range(6):
            with pytest.raises(AuthenticationError):
                await AsyncClient(broker.url, home=home, token=BAD).connect()
        with pytest.raises(TooManyFailures, match=r"from ::/64"):
            await AsyncClient(broker.url, home=home, token=make(home)).connect()
        assert (await broker.core.stats())["security"]["sources_blocked"] == 1
    finally:
        await broker.stop()
