"""SCHEDULE over the protocol, and schedules declared in code (@task(schedule=...)) through
READY: refusals name the field, a worker token cannot manage schedules, declared ones fire."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from conveyor import AsyncClient, JobState
from conveyor.broker.app import Broker
from conveyor.errors import Conflict, InvalidJob, JobNotFound, PermissionDenied
from conveyor.schedules import job_schedule
from conveyor.security.tokens import Role, TokenRegistry
from conveyor.worker.tasks import TaskRegistry, task
from tests.security.rawconn import Raw


def new_token(home: Path, role: Role) -> str:
    token, _ = TokenRegistry(home / "tokens.json").create(role, now=time.time())
    return token


async def test_the_client_manages_schedules(broker: Broker, client: AsyncClient) -> None:
    added = await client.schedule_add("s", "add", kwargs={"a": 1}, every="1h", catch_up="none")
    assert added["when"] == "every 1h" and added["next_run"] % 3600 == 0
    with pytest.raises(Conflict):
        await client.schedule_add("s", "add", every="1h")
    assert [s["name"] for s in await client.schedule_list()] == ["s"]
    assert (await client.schedule_pause("s"))["paused"] is True
    assert (await client.schedule_resume("s"))["paused"] is False
    handle = await client.schedule_run_now("s")
    assert job_schedule(handle.id) == ("s", None)
    assert (await client.get(handle.id)).kwargs == {"a": 1}
    await client.schedule_remove("s")
    with pytest.raises(JobNotFound):
        await client.schedule_get("s")


@pytest.mark.parametrize(
    ("options", "fld"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * * *", "tz": "Nowhere/Else"}, "tz"),
        ({"every": "1 parsec"}, "every"),
        ({"every": True}, "every"),
        ({"every": "1s", "catch_up": "most"}, "catch_up"),
        ({"every": "1s", "priority": 11}, "priority"),
        ({"every": "1s", "queue": ""}, "queue"),
    ],
)
async def test_bad_specs_are_invalid_naming_the_field(
    broker: Broker, client: AsyncClient, options: dict[str, Any], fld: str
) -> None:
    with pytest.raises(InvalidJob) as exc:
        await client.schedule_add("s", "add", **options)
    assert exc.value.field == fld
    assert await client.schedule_list() == []  # and the connection goes on


async def test_frame_level_refusals(broker: Broker, home: Path) -> None:
    raw = await Raw.open(broker.port, home, hello=True)
    try:
        for frame, fld in [
            ({"op": "fly"}, "op"),
            ({"op": "add"}, "schedule"),
            ({"op": "add", "schedule": {"name": "s", "task": "t"}}, "cron"),
            ({"op": "pause"}, "name"),
            ({"op": "get", "name": "a b"}, "name"),
        ]:
            rid = raw.rid()
            raw.send({"t": "schedule", "rid": rid, **frame})
            [reply] = [f for f in await raw.until(rid) if f.get("rid") == rid]
            assert (reply["t"], reply["code"], reply["field"]) == ("error", "invalid", fld), reply
        rid = raw.rid()
        raw.send({"t": "schedule", "rid": rid, "op": "get", "name": "ghost"})
        [reply] = [f for f in await raw.until(rid) if f.get("rid") == rid]
        assert (reply["code"], reply["message"]) == ("not_found", "no schedule named 'ghost'")
        raw.send({"t": "schedule", "rid": raw.rid(), "op": "get", "name": 7})  # not a str
        assert (await raw.recv())["code"] == "bad_frame"  # type: ignore[index]
    finally:
        await raw.close()


async def test_a_worker_token_cannot_add_schedules(broker: Broker, home: Path) -> None:
    async with AsyncClient(broker.url, token=new_token(home, Role.WORKER), home=home) as c:
        with pytest.raises(PermissionDenied, match="role worker may not send schedule"):
            await c.schedule_add("s", "add", every="1s")
        with pytest.raises(PermissionDenied):
            await c.schedule_list()
    assert await broker.core.schedules.list_all() == []
    async with AsyncClient(broker.url, token=new_token(home, Role.PRODUCER), home=home) as c:
        await c.schedule_add("s", "add", every="1s")  # a producer may
    assert [s["name"] for s in await broker.core.schedules.list_all()] == ["s"]


async def test_a_schedule_declared_in_code_is_registered_and_fires(
    broker: Broker, client: AsyncClient, start_worker
) -> None:
    registry = TaskRegistry()
    task(name="heartbeat", schedule="every 1s", registry=registry)(lambda: "beat")
    task(name="nightly", schedule={"cron": "0 3 * * *", "tz": "Europe/Berlin"}, registry=registry)(
        lambda: None
    )
    await start_worker(registry)
    await broker.wait_until(lambda: broker.core.schedules.fired >= 1, 10)
    by_name = {s["name"]: s for s in await client.schedule_list()}
    assert by_name["heartbeat"]["source"] == "code" and by_name["heartbeat"]["every"] == 1
    assert by_name["nightly"]["when"] == "cron '0 3 * * *' Europe/Berlin"
    job_id = by_name["heartbeat"]["last_job"] or ""
    assert job_schedule(job_id) is not None
    assert (await client.wait(job_id, timeout=10)).state is JobState.COMPLETED


def test_bad_schedules_in_code_fail_at_decoration() -> None:
    registry = TaskRegistry()
    with pytest.raises(ValueError, match="@task 'x': schedule cron"):
        task(name="x", schedule="61 * * * *", registry=registry)(lambda: None)
    with pytest.raises(ValueError, match="tz"):
        task(name="y", schedule={"cron": "* * * * *", "tz": "Mars/X"}, registry=registry)(
            lambda: None
        )
    with pytest.raises(TypeError):
        task(name="z", schedule=5, registry=registry)(lambda: None)  # type: ignore[arg-type]


async def test_ready_with_a_bad_schedules_field_is_invalid(broker: Broker, home: Path) -> None:
    raw = await Raw.open(broker.port, home, token=new_token(home, Role.WORKER))
    try:
        for schedules in ({"other": {"every": "1s"}}, {"add": {"cron": "nope"}}, {"add": 1}):
            rid = raw.rid()
            raw.send(
                {"t": "ready", "rid": rid, "tasks": ["add"], "queues": ["default"],
                 "concurrency": 1, "schedules": schedules}
            )  # fmt: skip
            [reply] = [f for f in await raw.until(rid) if f.get("rid") == rid]
            assert (reply["code"], reply["field"]) == ("invalid", "schedules"), reply
    finally:
        await raw.close()
    assert await broker.core.schedules.list_all() == []
