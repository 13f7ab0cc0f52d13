"""GET_MANY and the results of a submit_many read together, on a real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from conveyor import Client, JobFailed, JobState
from conveyor.broker.app import Broker
from conveyor.client.aio import AsyncClient
from conveyor.errors import InvalidJob
from conveyor.limits import MAX_GET_MANY
from tests.client.helpers import count_requests
from tests.security.rawconn import Raw


async def test_get_many_keeps_the_order_skips_unknown_ids_and_leaves_the_arguments_out(
    client: AsyncClient, start_worker: Any
) -> None:
    await start_worker()
    a, b = await client.submit("add", 1, 2), await client.submit("add", 3, 4)
    await b.wait(timeout=10)
    await a.wait(timeout=10)
    jobs = await client.get_many([b.id, "no-such-job", a.id, b.id])
    assert [j.id for j in jobs] == [b.id, a.id]
    assert [j.result for j in jobs] == [7, 3]
    assert all(j.state is JobState.COMPLETED and j.args == [] for j in jobs)  # left out


async def test_results_of_a_batch_are_read_a_thousand_at_a_time(
    broker: Broker, home: Path, start_worker: Any
) -> None:
    await start_worker(concurrency=16)
    n = MAX_GET_MANY + 500

    def scenario() -> tuple[list[Any], dict[str, int]]:
        with Client(broker.url, home=home) as c:
            handles = c.submit_many([("add", [i, 1], {}) for i in range(n)])
            c.wait(handles[-1].id, timeout=60)
            for h in handles:  # all finished before the reading starts
                c.wait(h.id, timeout=60)
            counts = count_requests(c)
            return [h.result(timeout=10) for h in handles], counts

    results, counts = await asyncio.to_thread(scenario)
    assert results == [i + 1 for i in range(n)]
    assert counts == {"get_many": 2}  # not one WAIT per job


async def test_a_batch_read_together_still_raises_for_failed_jobs_and_waits_for_late_ones(
    client: AsyncClient, start_worker: Any
) -> None:
    await start_worker()
    dead, slow = await client.submit_many(
        [
            {"task": "fail", "kwargs": {"message": "no"}, "retries": 0},
            {"task": "slow_task", "kwargs": {"seconds": 0.3}},
        ]
    )
    await dead.wait(timeout=10)
    counts = count_requests(client)
    with pytest.raises(JobFailed, match="no"):
        await dead.result(timeout=10)  # read with GET_MANY, which found slow unfinished
    assert await slow.result(timeout=10) == 0.3  # so it is waited for on its own
    assert counts == {"get_many": 1, "wait": 1}


async def test_get_many_splits_a_reply_too_big_for_one_frame(
    broker: Broker, home: Path, start_worker: Any
) -> None:
    await start_worker()

    def scenario() -> list[int]:
        with Client(broker.url, home=home) as c:
            handles = c.submit_many([("reverse_string", ["x" * 400_000], {}) for _ in range(5)])
            for h in handles:
                c.wait(h.id, timeout=30)
            counts = count_requests(c)
            jobs = c.get_many([h.id for h in handles])
            assert counts["get_many"] >= 2  # 5 x 400 KB results do not fit one 1 MiB frame
            return [len(j.result) for j in jobs]

    assert await asyncio.to_thread(scenario) == [400_000] * 5


@pytest.mark.parametrize(
    ("ids", "why"),
    [
        ([], "1 to"),
        (["x"] * (MAX_GET_MANY + 1), "1 to"),
        ([7], "ids"),
        (["y" * 101], "ids"),
    ],
)
async def test_bad_id_lists_are_refused_naming_the_field(
    broker: Broker, home: Path, ids: list[Any], why: str
) -> None:
    raw = await Raw.open(broker.port, home, hello=True)
    try:
        rid = raw.rid()
        raw.send({"t": "get_many", "rid": rid, "ids": ids})
        reply = (await raw.until(rid))[-1]
        assert reply["t"] == "error" and reply["code"] == "invalid", reply
        assert reply["field"] == "ids" and why in reply["message"] + reply["field"]
        await raw.ping()  # still serving
    finally:
        await raw.close()


async def test_the_client_checks_nothing_it_cannot_and_the_broker_names_the_field(
    client: AsyncClient,
) -> None:
    with pytest.raises(InvalidJob) as info:
        await client.get_many(["z" * 101])
    assert info.value.field == "ids"


async def test_against_a_broker_without_get_many_the_client_asks_one_job_at_a_time(
    broker: Broker, home: Path, start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor.broker import session

    monkeypatch.setattr(session, "FEATURES", ("packed",))  # a broker from before GET_MANY
    await start_worker()
    async with AsyncClient(broker.url, home=home) as client:
        handles = await client.submit_many([("add", [i, 1], {}) for i in range(3)])
        for h in handles:
            await h.wait(timeout=10)
        counts = count_requests(client)
        assert [await h.result(timeout=10) for h in handles] == [1, 2, 3]
        found = await client.get_many([handles[0].id, "no-such-job"])
        assert [j.id for j in found] == [handles[0].id]
    assert "get_many" not in counts


async def test_results_asked_out_of_order_are_still_read_by_the_thousand(
    client: AsyncClient, start_worker: Any
) -> None:
    await start_worker(concurrency=16)
    n = 2 * MAX_GET_MANY
    handles = await client.submit_many([("add", [i, 0], {}) for i in range(n)])
    for h in handles:
        await h.wait(timeout=60)
    counts = count_requests(client)
    assert await handles[-1].result() == n - 1  # reads the second block
    assert [await h.result() for h in handles[:-1]] == list(range(n - 1))
    assert counts == {"get_many": 2}
    assert await handles[0].result() == 0  # handed out once: asked again, it is waited for
    assert counts == {"get_many": 2, "wait": 1}


async def test_a_brief_get_many_carries_only_what_a_result_needs(
    broker: Broker, home: Path, start_worker: Any
) -> None:
    await start_worker()
    async with AsyncClient(broker.url, home=home) as c:
        ok, dead = await c.submit_many(
            [("add", [2, 3], {}), {"task": "fail", "kwargs": {"message": "no"}, "retries": 0}]
        )
        await ok.wait(timeout=10)
        await dead.wait(timeout=10)
    raw = await Raw.open(broker.port, home, hello=True)
    try:
        rid = raw.rid()
        raw.send({"t": "get_many", "rid": rid, "ids": [ok.id, dead.id], "brief": True})
        reply = (await raw.until(rid))[-1]
    finally:
        await raw.close()
    assert reply["t"] == "jobs"
    first, second = reply["jobs"]
    fields = {"id", "task", "state", "attempts", "error", "finished_at", "result"}
    assert set(first) == set(second) == fields
    assert (first["state"], first["result"], first["error"]) == ("completed", 5, None)
    assert second["state"] == "dead" and second["error"]["message"] == "no"
