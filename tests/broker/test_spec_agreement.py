"""Where docs/protocol.md and the broker once disagreed: each behaviour, on a live broker.

A client written from the spec alone found these; the text and the broker now agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.protocol.codec import encode_frame
from conveyor.protocol.payload import pack, pack_call, unpack, unpack_call
from tests.security.rawconn import Raw, admin_token


async def test_requests_pipelined_behind_hello_get_their_replies_before_the_close(
    broker: Broker, home: Path
) -> None:
    raw = await Raw.open(broker.port, home)
    try:
        hello = {"t": "hello", "v": 1, "token": admin_token(home), "name": "pipe"}
        raw.write(
            encode_frame(hello)
            + encode_frame({"t": "ping", "rid": 1})
            + encode_frame({"t": "goodbye", "reason": "done"})
        )
        frames = [await raw.recv(), await raw.recv(), await raw.recv()]
    finally:
        await raw.close()
    assert [f["t"] if f else None for f in frames] == ["welcome", "pong", None]


async def test_welcome_announces_the_lease_the_limits_and_the_features(
    broker: Broker, home: Path
) -> None:
    raw = await Raw.open(broker.port, home)
    try:
        raw.send({"t": "hello", "v": 1, "token": admin_token(home), "features": ["packed", "x"]})
        welcome = await raw.recv()
    finally:
        await raw.close()
    assert welcome is not None
    assert (welcome["lease"], welcome["heartbeat"]) == (30.0, 0.1)  # as configured below
    assert welcome["features"] == ["packed"]  # what the broker speaks of what was asked
    limits = welcome["limits"]
    assert limits["max_payload"] == broker.config.limits.max_payload
    assert limits["max_frame_size"] == welcome["max_frame_size"]
    assert (limits["max_error_message"], limits["max_traceback"]) == (10_000, 50_000)


async def _raw_worker(broker: Broker, home: Path, *, packed: bool) -> Raw:
    raw = await Raw.open(broker.port, home)
    hello: dict[str, Any] = {"t": "hello", "v": 1, "token": admin_token(home), "name": "raw w!"}
    if packed:
        hello["features"] = ["packed"]
    raw.send(hello)
    assert (await raw.recv() or {})["t"] == "welcome"
    rid = raw.rid()
    raw.send(
        {
            "t": "ready",
            "rid": rid,
            "tasks": ["t"],
            "queues": ["default"],
            "concurrency": 1,
            "prefetch": 0,
        }
    )
    (ok,) = await raw.until(rid)
    assert ok["worker"].startswith("raw_w_#")  # names are kept to a safe set of characters
    return raw


async def _submit(broker: Broker, home: Path, frame: dict[str, Any]) -> dict[str, Any]:
    producer = await Raw.open(broker.port, home, hello=True)
    try:
        rid = producer.rid()
        producer.send({"t": "submit", "rid": rid, "jobs": [frame]})
        return (await producer.until(rid))[-1]
    finally:
        await producer.close()


async def test_acked_lists_stale_results_too(broker: Broker, home: Path) -> None:
    worker = await _raw_worker(broker, home, packed=True)
    try:
        await _submit(broker, home, {"task": "t", "id": "job-1", "args": [1]})
        dispatch = await worker.recv()
        assert dispatch is not None and dispatch["t"] == "dispatch"
        (job,) = dispatch["jobs"]
        assert unpack_call(job["payload"]) == ([1], {})  # packed session: the bytes as stored
        worker.send(
            {
                "t": "report",
                "results": [
                    {"id": "job-1", "lease": job["lease"] + 99, "ok": True},  # stale
                    {"id": "nope", "lease": 1, "ok": True},  # not ours at all
                    {"id": "job-1", "lease": job["lease"], "ok": True, "result": pack(2)},
                ],
            }
        )
        acked = await worker.recv()
        assert acked == {"t": "acked", "ids": ["job-1", "nope", "job-1"]}
    finally:
        await worker.close()
    done = await broker.store.job_get("job-1")
    assert done is not None and unpack(done.result or b"") == 2


async def test_a_plain_session_gets_plain_values(broker: Broker, home: Path) -> None:
    worker = await _raw_worker(broker, home, packed=False)
    try:
        await _submit(broker, home, {"task": "t", "id": "job-2", "payload": pack_call([1], {})})
        dispatch = await worker.recv()
        assert dispatch is not None
        (job,) = dispatch["jobs"]
        assert (job["args"], job["kwargs"], "payload" in job) == ([1], {}, False)
        worker.send(
            {
                "t": "report",
                "results": [
                    {"id": "job-2", "lease": job["lease"], "ok": True, "result": {"big": 2**70}}
                ],
            }
        )
        assert (await worker.recv() or {})["t"] == "acked"
    finally:
        await worker.close()
    done = await broker.store.job_get("job-2")
    assert done is not None and unpack(done.result or b"") == {"big": 2**70}


@pytest.fixture
def broker_config(home: Path) -> BrokerConfig:
    return BrokerConfig(port=0, home=home, heartbeat=0.1, lease=30.0, deadline_grace=0.2)


async def test_the_broker_fails_a_run_its_worker_never_ends(broker: Broker, home: Path) -> None:
    """A worker that hangs (heartbeating, never reporting): the timeout is a hard deadline."""
    worker = await _raw_worker(broker, home, packed=True)
    try:
        await _submit(broker, home, {"task": "t", "id": "hung", "timeout": 0.2, "retries": 0})
        dispatch = await worker.recv()
        assert dispatch is not None
        (job,) = dispatch["jobs"]
        worker.send({"t": "heartbeat", "running": ["hung"]})  # it started
        abort = await worker.recv()  # after 0.2 s timeout + 0.2 s grace, on the reaper's tick
        assert abort == {"t": "abort", "id": "hung", "lease": job["lease"]}
        dead = await broker.store.job_get("hung")
        assert dead is not None and dead.error is not None
        assert (dead.state.value, dead.error["type"]) == ("dead", "TimeoutError")
        # its report, when it comes at last, is stale: acknowledged, changes nothing
        worker.send({"t": "report", "results": [{"id": "hung", "lease": job["lease"], "ok": True}]})
        assert await worker.recv() == {"t": "acked", "ids": ["hung"]}
        assert (await broker.store.job_get("hung")) == dead
    finally:
        await worker.close()


async def test_a_plain_list_page_with_big_integers_is_not_an_internal_error(
    broker: Broker, home: Path
) -> None:
    await _submit(broker, home, {"task": "t", "id": "big", "args": [2**80]})
    raw = await Raw.open(broker.port, home, hello=True)  # a plain session
    try:
        rid = raw.rid()
        raw.send({"t": "list", "rid": rid, "limit": 10})
        (reply,) = await raw.until(rid)
    finally:
        await raw.close()
    assert reply["t"] == "jobs" and reply["jobs"][0]["args"] == [2**80]


@pytest.mark.parametrize("cursor", ["²", "-1", "1e5", "9" * 19, ""])
async def test_a_list_cursor_that_is_not_one_is_invalid(
    broker: Broker, home: Path, cursor: str
) -> None:
    raw = await Raw.open(broker.port, home, hello=True)
    try:
        rid = raw.rid()
        raw.send({"t": "list", "rid": rid, "cursor": cursor})
        (reply,) = await raw.until(rid)
    finally:
        await raw.close()
    assert (reply["t"], reply.get("field")) == ("error", "cursor")


async def test_a_job_too_big_for_one_map_leaves_its_payload_out(broker: Broker, home: Path) -> None:
    worker = await _raw_worker(broker, home, packed=True)
    try:
        await _submit(broker, home, {"task": "t", "id": "huge", "args": ["x" * 500_000]})
        dispatch = await worker.recv()
        assert dispatch is not None
        (job,) = dispatch["jobs"]
        result = pack("y" * 500_000)
        worker.send(
            {
                "t": "report",
                "results": [{"id": "huge", "lease": job["lease"], "ok": True, "result": result}],
            }
        )
        assert (await worker.recv() or {})["t"] == "acked"
    finally:
        await worker.close()
    raw = await Raw.open(broker.port, home)
    try:
        raw.send({"t": "hello", "v": 1, "token": admin_token(home), "features": ["packed"]})
        await raw.recv()
        rid = raw.rid()
        raw.send({"t": "get", "rid": rid, "id": "huge"})
        (reply,) = await raw.until(rid)
    finally:
        await raw.close()
    assert reply["t"] == "job", reply  # not an internal error: the frame fits
    assert reply["job"]["omitted"] == ["payload"] and "payload" not in reply["job"]
    assert unpack(reply["job"]["result"]) == "y" * 500_000
