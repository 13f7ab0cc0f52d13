"""GET /api/workflows on a live broker: the recent workflows as one thing each (kind,
summary state, jobs by state), paged; their detail; refusals; and the numbers the Limits
panel reads (what each limit holds back), with who may change them."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from conveyor import chain, chord, group, sig
from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.client.aio import AsyncClient
from conveyor.security.tokens import Role, TokenRegistry
from tests.conftest import StartWorker


@pytest.fixture
def broker_config(home: Path) -> BrokerConfig:
    return BrokerConfig(port=0, store_url="memory://", home=home, http_port=0)


def client_as(broker: Broker, home: Path, role: Role) -> httpx.AsyncClient:
    token, _ = TokenRegistry(home / "tokens.json").create(role, now=time.time())
    assert broker.dashboard_url is not None
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(base_url=broker.dashboard_url, headers=headers)


async def test_workflows_are_listed_newest_first_as_one_thing(
    http: httpx.AsyncClient, client: AsyncClient, start_worker: StartWorker
) -> None:
    assert (await http.get("/api/workflows")).json() == {"workflows": [], "next_cursor": None}
    await client.submit("add", a=1, b=2)  # a job of no workflow is no workflow
    done = await client.submit_workflow(chain(sig("add", 1, 2), sig("add", 10)))
    parallel = await client.submit_workflow(group(sig("nobody_runs_this"), sig("nor_this")))
    joined = await client.submit_workflow(chord(group(sig("add", 1, 1)), sig("never")))
    await start_worker()
    assert await done.result(timeout=20) == 13
    await client.result(joined.ids[0], timeout=20)  # the header ran; "never" runs nowhere

    listed = (await http.get("/api/workflows")).json()
    assert listed["next_cursor"] is None
    rows = {w["id"]: w for w in listed["workflows"]}
    assert [w["id"] for w in listed["workflows"]] == [joined.id, parallel.id, done.id]
    assert (rows[done.id]["kind"], rows[done.id]["state"]) == ("chain", "completed")
    assert (rows[done.id]["members"], rows[done.id]["counts"]) == (2, {"completed": 2})
    assert (rows[parallel.id]["kind"], rows[parallel.id]["state"]) == ("group", "running")
    assert rows[parallel.id]["counts"] == {"queued": 2}
    assert rows[joined.id]["kind"] == "chord"
    assert rows[joined.id]["counts"] == {"completed": 1, "queued": 1}
    assert all(w["created_at"] > 0 for w in listed["workflows"])

    first = (await http.get("/api/workflows", params={"limit": 2})).json()
    assert [w["id"] for w in first["workflows"]] == [joined.id, parallel.id]
    rest = (await http.get("/api/workflows", params={"cursor": first["next_cursor"]})).json()
    assert [w["id"] for w in rest["workflows"]] == [done.id] and rest["next_cursor"] is None

    detail = (await http.get(f"/api/workflows/{joined.id}")).json()
    assert (detail["kind"], detail["state"]) == ("chord", "running")
    assert [j["task"] for j in detail["jobs"]] == ["add", "never"]


@pytest.mark.parametrize(
    ("params", "fld"),
    [({"limit": 0}, "limit"), ({"limit": 501}, "limit"), ({"cursor": "no spaces"}, "cursor")],
)
async def test_bad_listing_arguments_are_422_naming_the_field(
    http: httpx.AsyncClient, params: dict[str, object], fld: str
) -> None:
    answer = await http.get("/api/workflows", params=params)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == fld


async def test_who_may_read_workflows_and_change_limits(broker: Broker, home: Path) -> None:
    async with client_as(broker, home, Role.WORKER) as worker:
        assert (await worker.get("/api/workflows")).status_code == 403
        assert (await worker.post("/api/schedules/x/pause")).status_code == 403
    async with client_as(broker, home, Role.PRODUCER) as producer:
        assert (await producer.get("/api/workflows")).status_code == 200
        assert (await producer.get("/api/limits")).status_code == 200
        refused = await producer.put("/api/limits/key:dom:", json={"value": 1})
        assert refused.status_code == 403, refused.text
        assert (await producer.delete("/api/limits/key:dom:")).status_code == 403
        assert (await producer.get("/api/limits")).json()["set"] == {}


async def test_each_limit_says_what_it_holds_back(
    http: httpx.AsyncClient, client: AsyncClient
) -> None:
    await http.put("/api/limits/key:dom:", json={"value": 1})
    await http.put("/api/limits/task:mail", json={"value": "1/h"})
    for _ in range(3):
        await client.submit("mail")  # no worker: queued, behind its rate
    info = (await http.get("/api/limits")).json()
    assert [(r["target"], r["queued"]) for r in info["rates"]] == [("task:mail", 3)]
    (key,) = info["concurrency"]
    assert (key["target"], key["running"], key["waiting"]) == ("key:dom:", 0, 0)
    stats = (await http.get("/api/stats")).json()
    assert stats["limits"]["rates"][0]["queued"] == 3  # what the dashboard's tick carries
