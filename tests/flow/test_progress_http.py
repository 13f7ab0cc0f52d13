"""Progress and workflows on the HTTP face: GET /api/jobs/{id}, /api/workflows/{id} and
the /api/events live feed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor import JobFailed, chain, sig
from conveyor.broker.config import BrokerConfig
from conveyor.client.aio import AsyncClient
from conveyor.worker.tasks import TaskRegistry
from tests.conftest import StartWorker
from tests.flow.conftest import MODULES


@pytest.fixture
def broker_config(home: Path) -> BrokerConfig:
    return BrokerConfig(port=0, store_url="memory://", home=home, http_port=0)


async def test_the_api_and_the_live_feed_carry_progress(
    http: httpx.AsyncClient,
    client: AsyncClient,
    start_worker: StartWorker,
    flow_registry: TaskRegistry,
    tmp_path: Path,
) -> None:
    await start_worker(flow_registry, modules=MODULES)
    gate = tmp_path / "gate"
    seen: dict[str, Any] | None = None
    async with http.stream("GET", "/api/events") as stream:
        kind = None
        handle = None
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "hello":
                handle = await client.submit("flow.steps", str(gate), 4)
            elif line.startswith("data: ") and kind == "tick":
                tick = json.loads(line[6:])
                mine = [p for p in tick["progress"] if handle and p["id"] == handle.id]
                if mine and mine[-1]["value"] == 0.5:
                    seen = mine[-1]
                    break
    assert handle is not None and seen is not None
    assert seen["message"] == "resized 2/4" and "at" in seen
    detail = (await http.get(f"/api/jobs/{handle.id}")).json()
    assert detail["state"] == "running"
    assert detail["progress"]["value"] == 0.5
    assert detail["progress"]["meta"] == {"stage": "resize", "n": 4}
    gate.touch()
    await handle.wait(timeout=20)
    detail = (await http.get(f"/api/jobs/{handle.id}")).json()
    assert (detail["state"], detail["progress"]["message"]) == ("completed", "done")


async def test_a_workflow_is_one_thing_with_its_jobs(
    http: httpx.AsyncClient,
    client: AsyncClient,
    start_worker: StartWorker,
    flow_registry: TaskRegistry,
) -> None:
    await start_worker(flow_registry, modules=MODULES)
    flow = await client.submit_workflow(
        chain(sig("flow.add", 1), sig("flow.boom"), sig("flow.add", 2))
    )
    with pytest.raises(JobFailed):
        await flow.result(timeout=30)
    body = (await http.get(f"/api/workflows/{flow.id}")).json()
    assert body["state"] == "failed"
    assert [j["id"] for j in body["jobs"]] == flow.ids  # in the order planned
    assert [j["state"] for j in body["jobs"]] == ["completed", "dead", "cancelled"]
    assert body["jobs"][2]["depends_on"] == [flow.ids[1]]
    assert body["counts"] == {"completed": 1, "dead": 1, "cancelled": 1}
    detail = (await http.get(f"/api/jobs/{flow.ids[2]}")).json()
    assert (detail["workflow"], detail["depends_on"]) == (flow.id, [flow.ids[1]])
    assert (await http.get("/api/workflows/nope")).status_code == 404
    listed = (await http.get("/api/jobs", params={"state": "cancelled"})).json()
    assert flow.ids[2] in [j["id"] for j in listed["jobs"]]
