"""Property tests of the HTTP API's bodies and queries on a live broker: whatever a client
sends, the answer is never a 500 (``internal``), always the JSON error shape, and the broker
keeps serving. Derandomized, on a SQLite store."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

INTS = [2**64, 2**63, -(2**63) - 1, 2**53 + 1, 2**31, -1, 0, 1, 10, 11, 100, 101, 10**40]
FLOATS = [math.nan, math.inf, -0.0, 1e308, 5e-324, 0.0009, 86400.5, 31536000.5]
TEXT = ["", "x" * 101, "x" * 201, "é", "a b", "\x00", "default", "00000000000000000001"]


def nested(levels: int, as_map: bool) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"k": value} if as_map else [value]
    return value


scalars = (
    st.sampled_from(INTS + FLOATS + TEXT)
    | st.booleans()
    | st.none()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
)
values = st.recursive(
    scalars | st.builds(nested, st.sampled_from([33, 32, 1000]), st.booleans()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
FIELDS = ["task", "payload", "kwargs", "args", "priority", "queue", "delay", "retries"]
FIELDS += ["timeout", "unique_key", "id", "eta", "x"]
bodies = st.fixed_dictionaries(
    {"task": st.just("t") | values}, optional={k: values for k in FIELDS if k != "task"}
)
QUERY_KEYS = ["state", "task", "queue", "priority", "worker", "q", "cursor", "limit", "seconds"]
queries = st.dictionaries(st.sampled_from(QUERY_KEYS), scalars, max_size=3)
PATHS = ["/api/jobs", "/api/dlq", "/api/history", "/api/stats", "/api/queues", "/api/tasks"]


def as_json(value: Any) -> str:
    return json.dumps(value)  # NaN and Infinity as Python writes them: not standard JSON


@pytest.fixture
def broker_config(home: Path, tmp_path: Path) -> BrokerConfig:
    store = f"sqlite:///{tmp_path / 'http.db'}"
    return BrokerConfig(port=0, store_url=store, home=home, http_port=0)


@pytest.fixture
async def http(broker: Broker, home: Path) -> AsyncIterator[httpx.AsyncClient]:
    assert broker.dashboard_url is not None
    headers = {
        "Authorization": f"Bearer {(home / 'admin.token').read_text().strip()}",
        "Content-Type": "application/json",
    }
    async with httpx.AsyncClient(base_url=broker.dashboard_url, headers=headers) as client:
        yield client
        assert (await client.get("/health")).status_code == 200  # still serving
        made = await client.post("/api/jobs", json={"task": "after", "args": [1]})
        assert made.status_code == 201, made.text


def answered(reply: httpx.Response) -> None:
    assert reply.status_code < 500, reply.text
    if reply.status_code >= 400:
        error = reply.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str), error


@settings(PROPERTY, max_examples=60)
@given(body=bodies)
async def test_submit_bodies_never_get_a_500(http: httpx.AsyncClient, body: dict[str, Any]) -> None:
    answered(await http.post("/api/jobs", content=as_json(body)))


@settings(PROPERTY, max_examples=40)
@given(path=st.sampled_from(PATHS), query=queries, ids=st.lists(scalars, max_size=3))
async def test_queries_and_dlq_bodies_never_get_a_500(
    http: httpx.AsyncClient, path: str, query: dict[str, Any], ids: list[Any]
) -> None:
    text = "&".join(f"{k}={quote(as_json(v).strip(chr(34)))}" for k, v in query.items())
    answered(await http.get(f"{path}?{text}"))
    answered(await http.post("/api/dlq/retry", content=as_json({"ids": ids})))
    answered(await http.delete("/api/dlq?" + "&".join(f"id={quote(str(i))}" for i in ids)))
