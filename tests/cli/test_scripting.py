"""The CLI in scripts: full ids one per line when piped, filters, several ids at once, JSON
from a file or stdin, ping, exit codes that tell failed from not done, dates not epochs."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from conveyor import AsyncClient, JobState
from conveyor.broker.app import Broker
from conveyor.broker.events import JobChanged
from conveyor.cli import _show, main
from tests.cli.helpers import cli_env, spawn


@pytest.fixture
def cli(broker: Broker, home: Path):  # type: ignore[no-untyped-def]
    env = {"CONVEYOR_HOME": str(home), "CONVEYOR_BROKER_URL": broker.url}

    async def run(*args: str, stdin: str | None = None) -> Result:
        return await asyncio.to_thread(CliRunner().invoke, main, list(args), stdin, env=env)

    return run


async def test_piped_jobs_are_one_line_each_full_id_first(cli, client: AsyncClient) -> None:
    made = [await client.submit(t, queue="q") for t in ("nobody_a", "nobody_b", "nobody_a")]
    listed = await cli("jobs")
    lines = listed.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [h.id for h in reversed(made)]
    assert all(len(line.split("\t")) == 7 for line in lines)
    only_a = await cli("jobs", "--task", "nobody_a")
    assert [line.split("\t")[1] for line in only_a.stdout.splitlines()] == ["nobody_a"] * 2


async def test_on_a_terminal_the_columns_never_cut_an_id(
    cli, client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_show, "on_terminal", lambda: True)
    handle = await client.submit("a_task_with_a_rather_long_name_indeed", queue="reports")
    shown = (await cli("jobs", "--state", "queued")).stdout.splitlines()
    assert shown[0] == "1 job(s)"
    assert shown[1].startswith("id") and shown[1].rstrip().endswith("created (UTC)")
    assert shown[2].startswith(handle.id + "  ")  # whole, however wide the line gets


async def test_cancel_takes_several_ids_and_says_which_failed(cli, client: AsyncClient) -> None:
    a, b = await client.submit("nobody"), await client.submit("nobody")
    result = await cli("cancel", a.id, b.id, "nope")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [f"{a.id} cancelled", f"{b.id} cancelled"]
    assert "nope: not_found" in result.stderr and "1 of 3 job(s) not cancelled" in result.stderr
    assert (await client.get(b.id)).state is JobState.CANCELLED


async def test_json_from_a_file_or_stdin(cli, client: AsyncClient, tmp_path: Path) -> None:
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"a": 1, "b": 2}))
    from_file = await cli("submit", "add", "--json", f"@{args}", "b=5")  # a pair wins
    assert (await client.get(from_file.stdout.strip())).kwargs == {"a": 1, "b": 5}
    from_stdin = await cli("submit", "add", "--json", "-", stdin='{"a": 7, "b": 8}')
    assert (await client.get(from_stdin.stdout.strip())).kwargs == {"a": 7, "b": 8}
    missing = await cli("submit", "add", "--json", f"@{tmp_path / 'nope.json'}")
    assert missing.exit_code == 2 and "cannot read" in missing.output


async def test_ping_says_where_how_fast_and_who(cli, broker: Broker, home: Path) -> None:
    result = await cli("ping")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        rf"conveyor://127\.0\.0\.1:{broker.port}  \d+\.\d ms  role admin  \(\S+\)",
        result.stdout.strip(),
    ), result.stdout
    env = {"CONVEYOR_HOME": str(home), "CONVEYOR_BROKER_URL": "conveyor://127.0.0.1:9"}
    down = await asyncio.to_thread(CliRunner().invoke, main, ["ping"], env=env)
    assert down.exit_code == 3 and "cannot reach the broker at 127.0.0.1:9" in down.stderr


async def test_dlq_retry_of_jobs_that_are_not_dead(cli, client: AsyncClient, start_worker) -> None:
    await start_worker()
    done = await client.submit("noop")
    dead = await client.submit("fail", retries=0)
    await done.wait(timeout=10)
    await dead.wait(timeout=10)
    nothing = await cli("dlq", "retry", done.id, "ghost")
    assert nothing.exit_code == 1 and "nothing was retried" in nothing.stderr
    assert f"not dead, so not retried: {done.id} (completed), ghost (no such job)" in (
        nothing.stderr
    )
    some = await cli("dlq", "retry", done.id, dead.id)
    assert some.exit_code == 0 and some.stdout.strip() == "requeued 1 dead job(s)"
    assert f"{done.id} (completed)" in some.stderr


async def test_a_cancelled_job_and_times_read_well(
    cli, broker: Broker, client: AsyncClient, start_worker
) -> None:
    cancelled = await client.submit("nobody")
    await client.cancel(cancelled.id)
    result = await cli("result", cancelled.id)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: job {cancelled.id} is cancelled"  # no ": : "
    await start_worker()
    scheduled: set[str] = set()
    broker.core.hub.subscribe(
        lambda e: (
            isinstance(e, JobChanged)
            and e.job.state is JobState.SCHEDULED
            and scheduled.add(e.job.id)
        )
    )
    retried = await client.submit("fail", retries=1, retry_backoff=3600)
    await broker.wait_until(lambda: retried.id in scheduled)  # failed once, retry far ahead
    status = (await cli("status", retried.id)).stdout
    assert re.search(r"retried\s+eta=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC", status), status
    assert not re.search(r"\b1\d{9}\.\d", status)  # no epoch seconds anywhere


async def test_worker_options_come_from_the_environment(broker: Broker, home: Path) -> None:
    env = cli_env(
        CONVEYOR_CONCURRENCY="3",
        CONVEYOR_POOL="async",
        CONVEYOR_QUEUES="alpha,beta",
        CONVEYOR_PREFETCH="1",
        CONVEYOR_TASKS="conveyor.examples",
    )
    proc = await spawn("worker", "--broker", broker.url, "--home", str(home), env=env)
    try:
        await broker.wait_until(lambda: len(broker.dispatcher.workers) == 1, 20)
        [w] = [w.describe() for w in broker.dispatcher.workers.values()]
        assert (w["concurrency"], w["pool"], w["queues"], w["prefetch"]) == (
            3,
            "async",
            ["alpha", "beta"],
            1,
        )
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), 20)
