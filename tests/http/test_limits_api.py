"""/api/limits on a live broker: read, set, clear; bad input refused, nothing changed;
the limits in /api/stats and /metrics."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from conveyor.broker.config import BrokerConfig


@pytest.fixture
def broker_config(home: Path) -> BrokerConfig:
    return BrokerConfig(port=0, store_url="memory://", home=home, http_port=0)


async def test_set_read_and_clear_limits(http: httpx.AsyncClient) -> None:
    assert (await http.get("/api/limits")).json()["set"] == {}
    made = await http.put("/api/limits/task:send", json={"value": "10/m"})
    assert made.status_code == 200, made.text
    assert made.json()["rates"][0]["target"] == "task:send"
    key = await http.put("/api/limits/key:domain:", json={"value": 2})
    assert key.json()["set"] == {"task:send": "10/m", "key:domain:": 2}
    stats = (await http.get("/api/stats")).json()
    assert stats["limits"]["set"] == {"task:send": "10/m", "key:domain:": 2}
    metrics = (await http.get("/metrics")).text
    assert 'conveyor_rate_limit{target="task:send"}' in metrics
    cleared = await http.delete("/api/limits/task:send")
    assert cleared.json()["set"] == {"key:domain:": 2}
    gone = await http.delete("/api/limits/task:send")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("target", "value", "needle"),
    [
        ("task:send", "abc", "must be a rate"),
        ("task:send", "0/s", "more than 0"),
        ("task:send", "-3/s", "must be a rate"),
        ("queue:q", 5, "must be a rate"),
        ("key:d", 0, "integer from 1"),
        ("key:d", -1, "integer from 1"),
        ("nope:x", "1/s", "task:NAME"),
        ("task:bad name", "1/s", "task name"),
    ],
)
async def test_bad_input_is_a_clear_422_and_changes_nothing(
    http: httpx.AsyncClient, target: str, value: object, needle: str
) -> None:
    refused = await http.put(f"/api/limits/{target}", json={"value": value})
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid" and needle in error["message"], error
    assert (await http.get("/api/limits")).json()["set"] == {}


async def test_a_submit_may_carry_a_concurrency_key(http: httpx.AsyncClient) -> None:
    made = await http.post("/api/jobs", json={"task": "t", "concurrency_key": "domain:x"})
    assert made.status_code == 201, made.text
    job = (await http.get(f"/api/jobs/{made.json()['id']}")).json()
    assert job["concurrency_key"] == "domain:x"
    bad = await http.post("/api/jobs", json={"task": "t", "concurrency_key": "bad key"})
    assert bad.status_code == 422
