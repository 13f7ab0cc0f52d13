"""Input at the edges, one example per edge that once broke the broker: each is refused
with an error naming its field (never ``internal``), and the connection and the broker go
on. Real broker on an ephemeral port, raw frames (tests/security/rawconn.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.limits import MAX_FRAME_SIZE
from tests.security.rawconn import Raw

HUGE = "x" * (MAX_FRAME_SIZE - 36)  # fits in a frame; an error that repeats it would not


def nested(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


@pytest.fixture
def broker_config(home: Path, tmp_path: Path) -> BrokerConfig:
    store = f"sqlite:///{tmp_path / 'edges.db'}"  # SQLite's int64 columns are an edge too
    return BrokerConfig(port=0, store_url=store, home=home, http_port=0)


@pytest.fixture
async def raw(broker: Broker, home: Path) -> AsyncIterator[Raw]:
    conn = await Raw.open(broker.port, home, hello=True)
    yield conn
    await conn.ping()  # every refusal here is non-fatal: the connection still serves
    await conn.close()


async def ask(raw: Raw, frame: dict[str, Any]) -> dict[str, Any]:
    rid = raw.rid()
    raw.send({**frame, "rid": rid})
    return (await raw.until(rid))[-1]


def refused(
    reply: dict[str, Any], code: str, field: str | None = None, longest: int = 1000
) -> dict[str, Any]:
    assert (reply["t"], reply["code"]) == ("error", code), reply
    assert reply.get("field") == field, reply
    assert len(reply["message"]) <= longest, "the error repeats the input whole"
    return reply


# -- producer requests ----------------------------------------------------------------------------
@pytest.mark.parametrize("offset", [2**31, 2**63, 2**64 - 1])
async def test_a_list_offset_beyond_the_range_is_invalid_naming_offset(
    raw: Raw, offset: int
) -> None:
    reply = refused(await ask(raw, {"t": "list", "offset": offset}), "invalid", "offset")
    assert reply["message"] == "offset must be an integer from 0 to 2147483647"


@pytest.mark.parametrize("fld", ["args", "kwargs"])
async def test_nesting_is_at_most_32_levels(raw: Raw, fld: str) -> None:
    # args and kwargs themselves are level 1
    ok = nested(32) if fld == "args" else {"k": nested(31)}
    too_deep = [ok] if fld == "args" else {"k": nested(32)}
    reply = await ask(raw, {"t": "submit", "jobs": [{"task": "t", fld: ok}]})
    assert reply["t"] == "submitted", reply
    reply = refused(await ask(raw, {"t": "submit", "jobs": [{"task": "t", fld: too_deep}]}),
                    "invalid", fld)  # fmt: skip
    assert "nested deeper than 32 levels" in reply["message"]


@pytest.mark.parametrize("kind", ["get", "wait", "cancel"])
async def test_a_job_id_too_big_to_repeat_is_not_found_not_internal(raw: Raw, kind: str) -> None:
    frame: dict[str, Any] = {"t": kind, "id": HUGE}
    if kind == "wait":
        frame["timeout"] = 1
    reply = refused(await ask(raw, frame), "not_found")
    assert reply["message"] == f"no job {HUGE[:100]!r}"


async def test_a_token_name_too_big_to_repeat_is_not_found(raw: Raw) -> None:
    refused(await ask(raw, {"t": "token_revoke", "name": HUGE}), "not_found")


async def test_a_token_name_too_big_to_create_is_invalid_not_internal(raw: Raw) -> None:
    frame = {"t": "token_create", "role": "producer", "name": HUGE[:-20]}
    reply = refused(await ask(raw, frame), "invalid", "name", longest=2003)
    assert reply["message"].endswith("...")


async def test_an_error_that_quotes_huge_map_keys_is_cut(raw: Raw) -> None:
    kwargs = {"k" * 500_000: {"j" * 500_000: float("nan")}}  # the path names both keys
    reply = refused(await ask(raw, {"t": "submit", "jobs": [{"task": "t", "kwargs": kwargs}]}),
                    "invalid", "kwargs", longest=2003)  # fmt: skip
    assert reply["message"].startswith("kwargs['kkk")


async def test_dlq_ids_are_bounded(raw: Raw) -> None:
    reply = await ask(raw, {"t": "dlq_retry", "ids": ["a"] * 10_000})
    assert reply == {"t": "ok", "rid": reply["rid"], "count": 0}
    refused(await ask(raw, {"t": "dlq_purge", "ids": ["a"] * 10_001}), "invalid", "ids")


# -- workers --------------------------------------------------------------------------------------
READY = {"t": "ready", "tasks": ["edge.t"], "queues": ["edge"], "concurrency": 4}


@pytest.mark.parametrize(
    ("changes", "fld"),
    [
        ({"pid": 2**64 - 1}, "pid"),
        ({"pid": -1}, "pid"),
        ({"tasks": [f"t{i}" for i in range(10_001)]}, "tasks"),
        ({"queues": [f"q{i}" for i in range(1_001)]}, "queues"),
        ({"concurrency": 2**63}, "concurrency"),
        ({"prefetch": 2**64 - 1}, "prefetch"),
    ],
)
async def test_ready_fields_out_of_range_are_invalid(
    raw: Raw, changes: dict[str, Any], fld: str
) -> None:
    refused(await ask(raw, {**READY, **changes}), "invalid", fld)


async def test_a_worker_with_many_tasks_and_queues_keeps_reads_cheap(
    broker: Broker, home: Path, raw: Raw
) -> None:
    tasks = [f"edge.t{i}" for i in range(10_000)]
    ready = {**READY, "tasks": tasks, "queues": [f"q{i}" for i in range(1_000)]}
    worker = await Raw.open(broker.port, home, hello=True)
    try:
        reply = await ask(worker, {**ready, "routes": {t: "q1" for t in tasks}, "pid": 4242})
        assert reply["t"] == "ok", reply
        for i in range(3):
            submitted = await ask(raw, {"t": "submit", "jobs": [{"task": "other", "id": f"o{i}"}]})
            assert submitted["t"] == "submitted"
        # every job map says whether a worker offers its task; stats for every waiting pair
        page = await ask(raw, {"t": "list", "limit": 1000})
        assert [j["waiting"] for j in page["jobs"]] == [
            "no connected worker offers task 'other'"
        ] * 3
        stats = (await ask(raw, {"t": "stats"}))["stats"]
        assert stats["waiting"] == [{"queue": "", "task": "other", "count": 3, "offered": False}]
        assert stats["workers"][0]["pid"] == 4242
    finally:
        await worker.close()


async def _worker_with_a_job(broker: Broker, home: Path, raw: Raw) -> tuple[Raw, str, int]:
    worker = await Raw.open(broker.port, home, hello=True)
    assert (await ask(worker, {**READY, "prefetch": 0}))["t"] == "ok"
    submitted = await ask(raw, {"t": "submit", "jobs": [{"task": "edge.t", "queue": "edge"}]})
    dispatch = await worker.recv()
    assert dispatch is not None and dispatch["t"] == "dispatch", dispatch
    (job,) = dispatch["jobs"]
    assert job["id"] == submitted["jobs"][0]["id"]
    return worker, job["id"], job["lease"]


async def _job(raw: Raw, job_id: str) -> dict[str, Any]:
    reply = await ask(raw, {"t": "get", "id": job_id})
    return reply["job"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "error",
    [
        {"type": nested(1000), "message": "m"},  # str() of it: RecursionError
        {"type": "E", "message": {"k": nested(999)}},
        {"type": "E", "message": 2**64, "traceback": b"\x00\x01"},
    ],
    ids=["deep-type", "deep-message", "not-text"],
)
async def test_error_fields_that_are_not_text_become_bounded_text(
    broker: Broker, home: Path, raw: Raw, error: dict[str, Any]
) -> None:
    worker, job_id, lease = await _worker_with_a_job(broker, home, raw)
    try:
        result = {"id": job_id, "lease": lease, "ok": False, "error": error, "reject": True}
        worker.send({"t": "report", "results": [result]})
        assert await worker.recv() == {"t": "acked", "ids": [job_id]}
        await worker.ping()  # the worker's connection survived it
        job = await _job(raw, job_id)
        assert job["state"] == "dead"
        assert all(isinstance(v, str) for v in job["error"].values())
        assert len(job["error"]["type"]) <= 200
    finally:
        await worker.close()


@pytest.mark.parametrize(
    "result",
    [[float("nan")], {"b": b"bytes"}, nested(33), [2**64, float("inf")]],
    ids=["nan", "bin", "33-levels", "inf"],
)
async def test_a_plain_result_that_is_not_json_compatible_is_refused(
    broker: Broker, home: Path, raw: Raw, result: Any
) -> None:
    worker, job_id, lease = await _worker_with_a_job(broker, home, raw)
    try:
        worker.send({"t": "report", "results": [{"id": job_id, "lease": lease, "ok": True,
                                                 "result": result}]})  # fmt: skip
        error = await worker.recv()
        assert error is not None and (error["code"], error["field"]) == ("invalid", "results")
        assert "the result" in error["message"]
        assert await worker.recv() == {"t": "acked", "ids": [job_id]}
        job = await _job(raw, job_id)
        assert (job["state"], job["error"]["type"]) == ("dead", "InvalidReport")
    finally:
        await worker.close()


async def test_a_plain_result_32_levels_deep_is_kept(broker: Broker, home: Path, raw: Raw) -> None:
    worker, job_id, lease = await _worker_with_a_job(broker, home, raw)
    try:
        report = {"id": job_id, "lease": lease, "ok": True, "result": nested(32)}
        worker.send({"t": "report", "results": [report]})
        assert await worker.recv() == {"t": "acked", "ids": [job_id]}
        assert (await _job(raw, job_id))["result"] == nested(32)
    finally:
        await worker.close()


async def test_a_boolean_lease_names_no_run(broker: Broker, home: Path, raw: Raw) -> None:
    """``lease: true`` is not an int (protocol section 1): a malformed result with it names
    no run, so it is refused without an ACKED and fails no job."""
    worker, job_id, _ = await _worker_with_a_job(broker, home, raw)
    try:
        worker.send({"t": "report", "results": [{"id": job_id, "lease": True, "ok": "yes"}]})
        error = await worker.recv()
        assert error is not None and (error["code"], error["field"]) == ("invalid", "results")
        worker.send({"t": "ping", "rid": 7})
        assert await worker.recv() == {"t": "pong", "rid": 7}  # no ACKED before it
        assert (await _job(raw, job_id))["state"] == "running"
    finally:
        await worker.close()


# -- the HTTP API ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "fld"),
    [
        ({"priority": True}, "priority"),
        ({"retries": True}, "retries"),
        ({"retries": 1.0}, "retries"),
        ({"timeout": True}, "timeout"),
        ({"delay": False}, "delay"),
        ({"priority": 2**64}, "priority"),
    ],
)
async def test_http_submit_refuses_booleans_and_floats_where_integers_go(
    http: httpx.AsyncClient, body: dict[str, Any], fld: str
) -> None:
    reply = await http.post("/api/jobs", json={"task": "t", **body})
    assert reply.status_code == 422, reply.text
    assert (reply.json()["error"]["code"], reply.json()["error"]["field"]) == ("invalid", fld)


async def test_http_dlq_all_must_be_a_boolean(http: httpx.AsyncClient) -> None:
    reply = await http.post("/api/dlq/retry", json={"all": 1})
    assert reply.status_code == 422 and reply.json()["error"]["field"] == "all"
    assert (await http.post("/api/dlq/retry", json={"all": True})).json() == {"count": 0}
