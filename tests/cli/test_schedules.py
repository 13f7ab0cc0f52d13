"""conveyor schedule: every subcommand against a real broker, and its refusals."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from conveyor import AsyncClient, JobState
from conveyor.broker.app import Broker
from conveyor.cli import main
from conveyor.schedules import job_schedule


@pytest.fixture
def cli(broker: Broker, home: Path):  # type: ignore[no-untyped-def]
    env = {"CONVEYOR_HOME": str(home), "CONVEYOR_BROKER_URL": broker.url}

    async def run(*args: str) -> Result:
        return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)

    return run


async def test_add_list_pause_resume_remove(cli, client: AsyncClient) -> None:
    added = await cli(
        "schedule", "add", "nightly", "add", "a=1", "--json", '{"b": 2}',
        "--cron", "30 2 * * *", "--tz", "Europe/Berlin", "--queue", "reports",
        "--priority", "3", "--catch-up", "all",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "schedule nightly added: add cron '30 2 * * *' Europe/Berlin" in added.output
    assert (await cli("schedule", "add", "beat", "add", "--every", "1h")).exit_code == 0
    [beat, nightly] = json.loads((await cli("schedule", "list", "--json")).output)
    assert (nightly["kwargs"], nightly["queue"], nightly["priority"]) == (
        {"a": 1, "b": 2},
        "reports",
        3,
    )
    assert (nightly["catch_up"], beat["every"], beat["catch_up"]) == ("all", 3600, "one")
    table = (await cli("schedule", "list")).output
    assert "NEXT RUN (UTC)" in table and "every 1h" in table and "active" in table
    assert (await cli("schedule", "pause", "beat")).output.strip() == "schedule beat paused"
    assert "paused" in (await cli("schedule", "list")).output
    assert (await client.schedule_get("beat"))["next_run"] is None
    resumed = await cli("schedule", "resume", "beat")
    assert resumed.exit_code == 0 and "next run" in resumed.output
    assert (await cli("schedule", "remove", "beat")).exit_code == 0
    assert [s["name"] for s in await client.schedule_list()] == ["nightly"]


async def test_run_now_waits_for_its_result_and_status_names_the_schedule(
    cli, client: AsyncClient, start_worker
) -> None:
    await start_worker()
    await cli("schedule", "add", "sum", "add", "a=40", "b=2", "--every", "1d")
    ran = await cli("schedule", "run-now", "sum", "--wait", "10s")
    assert ran.exit_code == 0, ran.output
    job_id, result = ran.output.split()
    assert result == "42" and job_schedule(job_id) == ("sum", None)
    assert (await client.get(job_id)).state is JobState.COMPLETED
    status = await cli("status", job_id)
    assert "schedule sum  run now" in status.output
    assert (await client.schedule_get("sum"))["last_job"] == job_id


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--cron", "61 * * * *"), "is not a valid cron expression"),
        (("--cron", "* * *"), "must have 5 fields"),
        (("--cron", "* * * * *", "--tz", "Mars/Olympus"), "is not a known time zone"),
        (("--every", "soon"), "is not a duration"),
        (("--every", "0s"), "whole seconds from 1s"),
        (("--every", "1s", "--tz", "Europe/Berlin"), "--tz applies to --cron only"),
        ((), "give one of --cron EXPR and --every PERIOD"),
        (("--cron", "* * * * *", "--every", "1m"), "give one of --cron EXPR and --every PERIOD"),
        (("--every", "1s", "--catch-up", "some"), "'some' is not one of"),
        (("--every", "1s", "--priority", "0"), "1<=x<=10"),
        (("--every", "1s", "oops"), "is not key=value"),
    ],
)
async def test_add_refuses_bad_input_as_a_usage_error(
    cli, args: tuple[str, ...], needle: str
) -> None:
    result = await cli("schedule", "add", "s", "add", *args)
    assert result.exit_code == 2, result.output
    assert needle in result.output


async def test_bad_names_and_unknown_schedules(cli) -> None:
    bad = await cli("schedule", "add", "a b", "add", "--every", "1s")
    assert bad.exit_code == 2 and "may only contain" in bad.output
    for sub in ("pause", "resume", "remove", "run-now"):
        result = await cli("schedule", sub, "ghost")
        assert result.exit_code == 1, (sub, result.output)
        assert "not_found: no schedule named 'ghost'" in result.output
    await cli("schedule", "add", "twice", "add", "--every", "1s")
    again = await cli("schedule", "add", "twice", "add", "--every", "2s")
    assert again.exit_code == 1 and "conflict" in again.output
    assert (
        await cli("schedule", "add", "twice", "add", "--every", "2s", "--replace")
    ).exit_code == 0
    bad_task = await cli("schedule", "add", "t", "bad task!", "--every", "1s")
    assert bad_task.exit_code == 1 and "task may only contain" in bad_task.output


async def test_list_with_none_says_how_to_add_one(cli) -> None:
    result = await cli("schedule", "list")
    assert result.exit_code == 0 and result.output.strip() == ""  # piped: nothing to list
    assert json.loads((await cli("schedule", "list", "--json")).output) == []
