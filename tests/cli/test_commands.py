"""The producer and admin commands against a real broker (click's runner, on a thread)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from conveyor import AsyncClient, JobState
from conveyor.broker.app import Broker
from conveyor.cli import main


@pytest.fixture
def cli(broker: Broker, home: Path):  # type: ignore[no-untyped-def]
    env = {"CONVEYOR_HOME": str(home), "CONVEYOR_BROKER_URL": broker.url}

    async def run(*args: str) -> Result:
        return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)

    return run


async def test_submit_parses_pairs_and_json(cli, client: AsyncClient) -> None:
    result = await cli("submit", "add", "a=2", "--json", '{"b": 40}', "--priority", "2")
    assert result.exit_code == 0, result.output
    job = await client.get(result.output.strip())
    assert (job.kwargs, job.priority, job.state) == ({"a": 2, "b": 40}, 2, JobState.QUEUED)
    result = await cli("submit", "reverse_string", "data=hello", "--delay", "1m", "--id", "r1")
    assert result.output.strip() == "r1"
    assert (await client.get("r1")).state is JobState.SCHEDULED


async def test_submit_refuses_bad_input_with_a_clear_message(cli) -> None:
    for args, needle in [
        (("submit", "add", "oops"), "is not key=value"),
        (("submit", "add", "--json", "[1]"), "must be a JSON object"),
        (("submit", "add", "--json", "{bad"), "not valid JSON"),
        (("submit", "add", "--priority", "0"), "1<=x<=10"),
        (("submit", "bad name!"), "task may only contain"),
        (("submit", "add", "--delay", "soon"), "is not a duration"),
    ]:
        result = await cli(*args)
        assert result.exit_code != 0
        assert needle in result.output, (args, result.output)


async def test_jobs_status_cancel_and_stats(cli, client: AsyncClient) -> None:
    handle = await client.submit("no_worker_has_this", x=1)
    status = await cli("status", handle.id)
    assert "queued" in status.output and "no connected worker offers" in status.output
    listed = await cli("jobs", "--state", "queued", "--json")
    assert [j["id"] for j in json.loads(listed.output)] == [handle.id]
    cancelled = await cli("cancel", handle.id)
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.output
    again = await cli("cancel", handle.id)
    assert again.exit_code == 1 and "conflict" in again.output
    stats = json.loads((await cli("stats", "--json")).output)
    assert stats["states"]["cancelled"] == 1
    assert (await cli("status", "nope")).output.strip().endswith("no job nope")


async def test_result_of_a_failed_and_an_unfinished_job(
    cli, client: AsyncClient, start_worker
) -> None:
    await start_worker()
    dead = await client.submit("fail", message="kaput", retries=0)
    await dead.wait(timeout=10)
    failed = await cli("result", dead.id)
    assert failed.exit_code == 1 and "kaput" in failed.output
    queued = await client.submit("no_worker_has_this")
    pending = await cli("result", queued.id)
    assert pending.exit_code == 4 and "use --wait" in pending.output  # not done is not failed


async def test_dlq_list_retry_and_purge(cli, client: AsyncClient, start_worker) -> None:
    await start_worker()
    handles = [await client.submit("fail", retries=0) for _ in range(3)]
    for h in handles:
        await h.wait(timeout=10)
    listed = await cli("dlq", "list", "--json")
    assert sorted(j["id"] for j in json.loads(listed.output)) == sorted(h.id for h in handles)
    assert "give JOB_ID(s) or --all" in (await cli("dlq", "retry")).output
    retried = await cli("dlq", "retry", handles[0].id)
    assert "requeued 1 dead job(s)" in retried.output
    await handles[0].wait(timeout=10)
    purged = await cli("dlq", "purge", "--yes")
    assert "purged 3 dead job(s)" in purged.output
    assert json.loads((await cli("dlq", "list", "--json")).output) == []


async def test_unreachable_broker_is_one_clear_line(home: Path) -> None:
    env = {"CONVEYOR_HOME": str(home), "CONVEYOR_BROKER_URL": "conveyor://127.0.0.1:1"}
    result = await asyncio.to_thread(CliRunner().invoke, main, ["stats"], env=env)
    assert result.exit_code == 3
    assert "cannot reach the broker at 127.0.0.1:1" in result.output


def test_a_worker_needs_its_task_modules() -> None:
    """No demo tasks by surprise in production: --tasks (or CONVEYOR_TASKS) is required."""
    result = CliRunner().invoke(main, ["worker"], env={"CONVEYOR_TASKS": ""})
    assert result.exit_code == 2
    assert "Missing option '--tasks'" in result.output


async def test_stats_shows_failed_logins(cli, broker: Broker, home: Path) -> None:
    from tests.security.rawconn import Raw

    quiet = await cli("stats")
    assert quiet.exit_code == 0 and "security:" not in quiet.output  # nothing to say
    raw = await Raw.open(broker.port, home)
    assert (await raw.hello("cvy_" + "A" * 43) or {}).get("code") == "unauthorized"
    await raw.close()
    result = await cli("stats")
    assert result.exit_code == 0, result.output
    assert "security: 1 bad token(s), 0 login(s) refused while throttled" in result.output
    data = json.loads((await cli("stats", "--json")).output)
    assert data["security"]["login_failures"] == 1 and data["security"]["sources_tracked"] == 1


async def test_submit_after_and_status_show_the_dependency_and_progress(
    cli, client: AsyncClient, start_worker
) -> None:
    first = await client.submit("no_worker_has_this")
    result = await cli("submit", "add", "a=1", "b=2", "--after", first.id)
    assert result.exit_code == 0, result.output
    later = result.output.strip()
    status = await cli("status", later)
    assert "waiting" in status.output and f"after {first.id}" in status.output
    await start_worker()
    steps = await client.submit("steps", n=2, seconds=0)
    await steps.wait(timeout=20)
    shown = (await cli("status", steps.id)).output
    assert "progress 100% step 2/2" in shown and 'meta {"steps": 2}' in shown
