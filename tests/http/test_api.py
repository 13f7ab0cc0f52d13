"""The REST API on a live broker: every route, its refusals, and bad input that changes nothing."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.security.tokens import Role, TokenRegistry
from tests.clocks import Later


@pytest.fixture
def broker_config(home: Path) -> BrokerConfig:
    return BrokerConfig(port=0, store_url="memory://", home=home, http_port=0)


def token(home: Path, role: Role = Role.ADMIN, **kwargs: Any) -> str:
    made, _ = TokenRegistry(home / "tokens.json").create(role, now=time.time(), **kwargs)
    return made


def error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]  # type: ignore[no-any-return]


async def wait_state(http: httpx.AsyncClient, job_id: str, state: str) -> dict[str, Any]:
    """Until the job is in ``state``: the live feed is how a client learns of changes."""
    async with http.stream("GET", "/api/events") as stream:
        async for line in stream.aiter_lines():
            job = (await http.get(f"/api/jobs/{job_id}")).json()
            if job["state"] == state:
                return job  # type: ignore[no-any-return]
            del line
    raise AssertionError("the event stream ended")


# -- reading ------------------------------------------------------------------------------------
async def test_health_is_open_and_everything_else_needs_a_token(
    broker: Broker, http: httpx.AsyncClient
) -> None:
    async with httpx.AsyncClient(base_url=broker.dashboard_url or "") as anonymous:
        health = await anonymous.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        for path in ("/api/stats", "/api/jobs", "/api/workers", "/metrics", "/api/events"):
            refused = await anonymous.get(path)
            assert refused.status_code == 401, path
            assert error(refused)["code"] == "unauthorized"
        # the API description needs none: it holds no data
        assert (await anonymous.get("/openapi.json")).json()["info"]["title"] == "Conveyor"
        docs = await anonymous.get("/docs")
        assert "swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text.lower()


async def test_submit_run_and_read_a_job(http: httpx.AsyncClient, start_worker) -> None:
    await start_worker()
    made = await http.post("/api/jobs", json={"task": "add", "payload": {"a": 2, "b": 40}})
    assert made.status_code == 201 and made.json()["created"] is True
    job = await wait_state(http, made.json()["id"], "completed")
    assert (job["kwargs"], job["result"], job["attempts"]) == ({"a": 2, "b": 40}, 42, 1)
    assert [e["event"] for e in job["events"]] == ["submitted", "started", "completed"]
    assert job["attempts_detail"][0]["outcome"] == "completed"
    alias = await http.post("/api/submit", json={"task": "add", "args": [1, 1], "id": "mine"})
    assert alias.status_code == 201 and alias.json()["id"] == "mine"
    again = await http.post("/api/submit", json={"task": "add", "args": [1, 1], "id": "mine"})
    assert again.json() == {"id": "mine", "state": again.json()["state"], "created": False}


async def test_each_failed_attempt_keeps_its_error_and_traceback(
    http: httpx.AsyncClient, start_worker
) -> None:
    await start_worker()
    made = await http.post(
        "/api/jobs", json={"task": "fail", "payload": {"message": "bad"}, "retries": 1}
    )
    job = await wait_state(http, made.json()["id"], "dead")
    runs = job["attempts_detail"]
    assert [r["outcome"] for r in runs] == ["failed", "failed"]
    assert all("RuntimeError: bad" in r["error"] and "Traceback" in r["traceback"] for r in runs)


async def test_listing_filters_pages_and_searches(http: httpx.AsyncClient) -> None:
    for i in range(7):
        body = {
            "task": "noop",
            "queue": "a" if i % 2 else "b",
            "priority": 1 + i % 3,
            "id": f"j-{i}",
        }
        assert (await http.post("/api/jobs", json=body)).status_code == 201
    seen, cursor = [], None
    while True:
        page = (
            await http.get(
                "/api/jobs", params={"limit": 3, **({"cursor": cursor} if cursor else {})}
            )
        ).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"j-{i}" for i in reversed(range(7))]
    only_a = (await http.get("/api/jobs", params={"queue": "a"})).json()["jobs"]
    assert [j["id"] for j in only_a] == ["j-5", "j-3", "j-1"]
    urgent = (await http.get("/api/jobs", params={"priority": 1})).json()["jobs"]
    assert [j["id"] for j in urgent] == ["j-6", "j-3", "j-0"]
    found = (await http.get("/api/jobs", params={"q": "j-4"})).json()["jobs"]
    assert [j["id"] for j in found] == ["j-4"]
    assert (await http.get("/api/jobs", params={"state": "dead"})).json()["jobs"] == []


async def test_stats_workers_queues_tasks_security(http: httpx.AsyncClient, start_worker) -> None:
    worker = await start_worker(concurrency=3)
    await http.post("/api/jobs", json={"task": "noop", "delay": 60})
    stats = (await http.get("/api/stats")).json()
    assert stats["states"]["scheduled"] == 1 and stats["workers"]["total"] == 1
    assert set(stats) >= {"queues", "tasks", "priorities", "jobs_per_second", "run_time"}
    (info,) = (await http.get("/api/workers")).json()
    assert (info["id"], info["concurrency"], info["pid"]) == (worker.worker_id, 3, info["pid"])
    assert info["host"] and "add" in info["tasks"]
    queues = (await http.get("/api/queues")).json()
    assert [q["name"] for q in queues] == ["default"] and queues[0]["workers"] == 1
    tasks = {t["name"]: t for t in (await http.get("/api/tasks")).json()}
    assert tasks["add"]["queues"] == ["default"] and tasks["add"]["workers"] == 1
    security = (await http.get("/api/security")).json()
    assert security["tls"] is True and security["mutual_tls"] is False
    assert security["certificate"]["subject"] and security["certificate"]["days_left"] > 300
    assert security["limits"]["max_payload"] == 512 * 1024


async def test_metrics_speak_prometheus(http: httpx.AsyncClient, start_worker) -> None:
    await start_worker()
    made = await http.post("/api/jobs", json={"task": "noop"})
    await wait_state(http, made.json()["id"], "completed")
    text = (await http.get("/metrics")).text
    assert 'conveyor_jobs{state="completed",task="noop"} 1.0' in text
    assert "conveyor_job_run_seconds_bucket" in text and 'conveyor_workers{status="idle"}' in text
    assert "conveyor_refused_connections" in text


# -- changing things ----------------------------------------------------------------------------
async def test_cancel_retry_and_the_dead_letter_queue(
    http: httpx.AsyncClient, start_worker
) -> None:
    later = (await http.post("/api/jobs", json={"task": "noop", "delay": 60})).json()["id"]
    cancelled = await http.post(f"/api/jobs/{later}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    again = await http.post(f"/api/jobs/{later}/cancel")
    assert again.status_code == 409 and error(again)["code"] == "conflict"
    await start_worker()
    dead = (await http.post("/api/jobs", json={"task": "fail", "retries": 0})).json()["id"]
    await wait_state(http, dead, "dead")
    assert [j["id"] for j in (await http.get("/api/dlq")).json()["jobs"]] == [dead]
    retried = await http.post(f"/api/jobs/{dead}/retry")
    assert retried.status_code == 200 and retried.json()["state"] in ("queued", "running", "dead")
    await wait_state(http, dead, "dead")
    assert (await http.post("/api/dlq/retry", json={"ids": [dead]})).json() == {"count": 1}
    await wait_state(http, dead, "dead")
    assert (await http.request("DELETE", "/api/dlq", params={"id": dead})).json() == {"count": 1}
    assert (await http.get(f"/api/jobs/{dead}")).status_code == 404
    not_dead = await http.post(f"/api/jobs/{later}/retry")
    assert not_dead.status_code == 409


async def test_pause_holds_a_queue_and_resume_lets_it_go(
    http: httpx.AsyncClient, start_worker
) -> None:
    await start_worker()
    paused = await http.post("/api/queues/default/pause")
    assert paused.json() == {"queue": "default", "paused": True}
    job = (await http.post("/api/jobs", json={"task": "noop"})).json()["id"]
    stats = (await http.get("/api/stats")).json()
    assert stats["paused"] == ["default"]
    assert (await http.get(f"/api/jobs/{job}")).json()["state"] == "queued"
    assert (await http.post("/api/queues/default/resume")).json()["paused"] is False
    await wait_state(http, job, "completed")


# -- refusals and bad input -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("role", "method", "path", "status"),
    [
        (Role.WORKER, "GET", "/api/stats", 403),  # workers speak the protocol, not HTTP
        (Role.WORKER, "POST", "/api/jobs", 403),
        (Role.PRODUCER, "GET", "/api/stats", 200),
        (Role.PRODUCER, "POST", "/api/queues/default/pause", 403),
        (Role.PRODUCER, "GET", "/api/dlq", 403),
        (Role.PRODUCER, "DELETE", "/api/dlq?all=true", 403),
        (Role.PRODUCER, "GET", "/metrics", 403),
        (Role.PRODUCER, "POST", "/api/dlq/retry", 403),
    ],
)
async def test_roles_are_the_sockets(
    broker: Broker, home: Path, role: Role, method: str, path: str, status: int
) -> None:
    headers = {"Authorization": f"Bearer {token(home, role)}"}
    async with httpx.AsyncClient(base_url=broker.dashboard_url or "", headers=headers) as client:
        body = {"task": "noop"} if path == "/api/jobs" else {"all": True}
        response = await client.request(method, path, json=body if method == "POST" else None)
    assert response.status_code == status, response.text
    if status == 403:
        assert error(response)["code"] == "forbidden"


async def test_an_expired_token_is_refused(broker: Broker, home: Path) -> None:
    expiring = token(home, Role.ADMIN, ttl=30)  # long enough for a loaded machine
    headers = {"Authorization": f"Bearer {expiring}"}
    async with httpx.AsyncClient(base_url=broker.dashboard_url or "", headers=headers) as client:
        assert (await client.get("/api/stats")).status_code == 200
        broker.core.clock = Later(broker.core.clock, 60.0)  # type: ignore[assignment]
        late = await client.get("/api/stats")
    assert late.status_code == 401 and "expired" in error(late)["message"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"task": "add", "priority": 11}, 422, "priority"),
        ({"task": "has space"}, 422, "task"),
        ({"task": "add", "payload": {"a": float("inf")}}, 422, "kwargs"),  # Infinity: not JSON
        ({"task": "add", "queue": ""}, 422, "queue"),
        ({"task": "add", "payload": {"a": 1}, "kwargs": {"a": 1}}, 422, "payload"),
        ({"task": "add", "surprise": 1}, 422, "surprise"),
        ({"task": "add", "payload": {"x": "y" * 600_000}}, 413, "payload"),
        ({"task": "add", "retries": -1}, 422, "retries"),
        ({"task": "add", "delay": "soon"}, 422, "delay"),
        ([1, 2], 400, None),
    ],
)
async def test_bad_input_names_the_field_and_changes_nothing(
    http: httpx.AsyncClient, body: Any, status: int, field: str | None
) -> None:
    content = json.dumps(body, allow_nan=True).encode()
    response = await http.post(
        "/api/jobs", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert error(response).get("field") == field
    assert (await http.get("/api/stats")).json()["totals"]["submitted"] == 0


async def test_a_body_over_the_cap_is_refused_before_it_is_read(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/jobs", content=b"x" * 2_000_000)
    assert response.status_code == 413 and error(response)["field"] == "body"


async def test_other_origins_get_no_cors_and_pages_carry_security_headers(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/api/stats", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    page = await http.get("/")
    assert page.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in page.headers["content-security-policy"]


async def test_the_live_feed_is_one_aggregated_tick_a_second(
    http: httpx.AsyncClient, start_worker
) -> None:
    await start_worker(concurrency=8)
    ticks: list[dict[str, Any]] = []
    burst: asyncio.Task[Any] | None = None
    async with http.stream("GET", "/api/events") as stream:
        kind = None
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "hello":  # a burst of 300 jobs
                # 300 at once through httpx's pool of 100: on a loaded machine the default
                # 5 s pool timeout can pass before a connection frees (PoolTimeout)
                posts = [
                    http.post("/api/jobs", json={"task": "noop"}, timeout=60) for _ in range(300)
                ]
                burst = asyncio.ensure_future(asyncio.gather(*posts))
            elif line.startswith("data: ") and kind == "tick":
                ticks.append(json.loads(line[6:]))
                if sum(len(t["jobs"]) + t["more"] for t in ticks) >= 900 or len(ticks) == 15:
                    break
    assert burst is not None and all(r.status_code == 201 for r in await burst)
    # each job was queued, started and completed: 900 changes, every one counted ...
    assert sum(len(t["jobs"]) + t["more"] for t in ticks) >= 900
    assert all(len(t["jobs"]) <= 50 for t in ticks)  # ... but at most 50 carried per tick
    assert len(ticks) < 15 and {"stats", "workers", "point"} <= set(ticks[0])


def test_a_public_address_without_tls_is_refused(home: Path) -> None:
    with pytest.raises(ValueError, match="without TLS"):
        BrokerConfig(home=home, http_port=0, http_host="0.0.0.0")
    BrokerConfig(home=home, http_port=0, http_host="0.0.0.0", http_insecure=True)
    BrokerConfig(home=home, http_port=0, http_host="0.0.0.0", http_tls=True)


async def test_https_with_the_brokers_certificate(home: Path) -> None:
    broker = Broker(BrokerConfig(port=0, home=home, http_port=0, http_tls=True))
    await broker.start()
    try:
        assert broker.dashboard_url and broker.dashboard_url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(home / "ca.pem"))
        async with httpx.AsyncClient(verify=trust) as client:
            assert (await client.get(broker.dashboard_url + "health")).status_code == 200
    finally:
        await broker.stop()


async def test_a_broker_stops_its_http_server(broker_config: BrokerConfig) -> None:
    broker = Broker(broker_config)
    await broker.start()
    url = broker.dashboard_url or ""
    await broker.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await asyncio.wait_for(client.get(url + "health"), 5)


async def test_sealed_jobs_show_as_encrypted(
    broker: Broker, home: Path, http: httpx.AsyncClient, start_worker, tmp_path: Path
) -> None:
    from conveyor import AsyncClient
    from conveyor.security.payload import generate_key

    key = generate_key()
    (tmp_path / "payload.keys").write_text(key + "\n")
    await start_worker(payload_key_file=tmp_path / "payload.keys")
    async with AsyncClient(broker.url, home=home, payload_key=key) as sealing:
        done = await sealing.submit("reverse_string", data="secret")
        failing = await sealing.submit("fail", message="secret reason", retries=0)
    job = await wait_state(http, done.id, "completed")
    assert job["encrypted"] is True and (job["args"], job["kwargs"]) == ([], {})
    assert job["result"] == "(encrypted)"
    dead = await wait_state(http, failing.id, "dead")
    assert dead["error_message"] == "(encrypted)" and dead["error"]["message"] == "(encrypted)"
    assert dead["attempts_detail"][0]["error"] == "RuntimeError: (encrypted)"
    assert "secret" not in json.dumps(dead) and "secret" not in json.dumps(job)
    plain = (await http.post("/api/jobs", json={"task": "add", "args": [1, 2]})).json()
    assert (await http.get(f"/api/jobs/{plain['id']}")).json()["encrypted"] is False
