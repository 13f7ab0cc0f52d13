"""/api/schedules on a live broker: every route, the roles, and refusals that change nothing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.schedules import job_schedule
from conveyor.security.tokens import Role, TokenRegistry


@pytest.fixture
def broker_config(home: Path) -> BrokerConfig:
    return BrokerConfig(port=0, store_url="memory://", home=home, http_port=0)


def client_for(broker: Broker, token: str) -> httpx.AsyncClient:
    assert broker.dashboard_url is not None
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(base_url=broker.dashboard_url, headers=headers)


@pytest.fixture
async def http(broker: Broker, home: Path) -> AsyncIterator[httpx.AsyncClient]:
    token, _ = TokenRegistry(home / "tokens.json").create(Role.PRODUCER, now=time.time())
    async with client_for(broker, token) as client:  # a producer may manage schedules
        yield client


async def test_add_list_get_pause_resume_run_remove(http: httpx.AsyncClient) -> None:
    body = {"name": "nightly", "task": "add", "cron": "30 2 * * *", "tz": "Europe/Berlin",
            "kwargs": {"a": 1, "b": 2}, "catch_up": "all", "priority": 2}  # fmt: skip
    added = await http.post("/api/schedules", json=body)
    assert added.status_code == 201, added.text
    info = added.json()
    assert info["when"] == "cron '30 2 * * *' Europe/Berlin" and info["next_run"] > time.time()
    assert (await http.post("/api/schedules", json=body)).status_code == 409
    replaced = await http.post("/api/schedules?replace=true", json={**body, "priority": 4})
    assert replaced.status_code == 201 and replaced.json()["priority"] == 4
    assert [s["name"] for s in (await http.get("/api/schedules")).json()] == ["nightly"]
    paused = await http.post("/api/schedules/nightly/pause")
    assert paused.json()["paused"] is True and paused.json()["next_run"] is None
    assert (await http.get("/api/schedules/nightly")).json()["paused"] is True
    assert (await http.post("/api/schedules/nightly/resume")).json()["paused"] is False
    ran = await http.post("/api/schedules/nightly/run")
    assert ran.status_code == 201 and job_schedule(ran.json()["id"]) == ("nightly", None)
    job = (await http.get(f"/api/jobs/{ran.json()['id']}")).json()
    assert (job["task"], job["kwargs"], job["priority"]) == ("add", {"a": 1, "b": 2}, 4)
    assert job["schedule"] == {"name": "nightly", "slot": None}
    assert (await http.get("/api/schedules/nightly")).json()["last_job"] == ran.json()["id"]
    assert (await http.delete("/api/schedules/nightly")).json() == {"removed": "nightly"}
    assert (await http.get("/api/schedules")).json() == []


@pytest.mark.parametrize(
    ("body", "fld"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "tz"),
        ({"every": "soon"}, "every"),
        ({"every": 0}, "every"),
        ({}, "cron"),
        ({"every": "1s", "catch_up": "some"}, "catch_up"),
        ({"every": "1s", "bogus": 1}, "bogus"),
    ],
)
async def test_bad_schedules_are_422_naming_the_field(
    http: httpx.AsyncClient, body: dict[str, object], fld: str
) -> None:
    answer = await http.post("/api/schedules", json={"name": "s", "task": "add", **body})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == fld
    assert (await http.get("/api/schedules")).json() == []


async def test_unknown_schedules_are_404(http: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/api/schedules/ghost"),
        ("DELETE", "/api/schedules/ghost"),
        ("POST", "/api/schedules/ghost/pause"),
        ("POST", "/api/schedules/ghost/resume"),
        ("POST", "/api/schedules/ghost/run"),
    ]:
        answer = await http.request(method, path)
        assert answer.status_code == 404, (method, path)
        assert answer.json()["error"]["message"] == "no schedule named 'ghost'"


async def test_a_worker_token_may_not_touch_schedules(broker: Broker, home: Path) -> None:
    token, _ = TokenRegistry(home / "tokens.json").create(Role.WORKER, now=time.time())
    async with client_for(broker, token) as worker:
        assert (await worker.get("/api/schedules")).status_code == 403
        body = {"name": "s", "task": "add", "every": "1s"}
        assert (await worker.post("/api/schedules", json=body)).status_code == 403
    assert await broker.core.schedules.list_all() == []
