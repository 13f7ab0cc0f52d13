"""``submit --wait`` and ``result --wait``: an optional time limit, a warning when no worker
would take the job, Ctrl-C that says how to wait again, distinct exit codes."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from conveyor import AsyncClient, JobState
from conveyor.broker.app import Broker
from conveyor.cli import main
from tests.cli.helpers import cli_env, read_until, spawn


@pytest.fixture
def cli(broker: Broker, home: Path):  # type: ignore[no-untyped-def]
    env = {"CONVEYOR_HOME": str(home), "CONVEYOR_BROKER_URL": broker.url}

    async def run(*args: str) -> Result:
        return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)

    return run


async def test_a_misspelt_task_warns_with_a_did_you_mean_and_the_wait_times_out(
    cli, start_worker
) -> None:
    await start_worker()
    result = await cli("submit", "fibonaci", "n=3", "--wait", "0.2")
    assert "no connected worker offers task 'fibonaci' (did you mean 'fibonacci'?)" in (
        result.stderr
    )
    assert result.exit_code == 4  # not finished yet: not the same as failed
    assert re.search(r"job \S+ is still queued after 0.2s", result.stderr)


async def test_no_worker_at_all_and_a_queue_nobody_serves_are_both_said(cli, start_worker) -> None:
    alone = await cli("submit", "noop", "--wait=0.1")
    assert "no worker is connected to run task 'noop'" in alone.stderr
    await start_worker()
    elsewhere = await cli("submit", "add", "a=1", "b=2", "--queue", "zzz", "--wait", "0.1")
    assert "serve queues default, not 'zzz'" in elsewhere.stderr
    assert elsewhere.exit_code == 4


async def test_wait_alone_waits_for_the_result_and_failures_exit_1(cli, start_worker) -> None:
    await start_worker()
    done = await cli("submit", "add", "a=1", "b=2", "--priority", "1", "--wait")
    assert (done.exit_code, done.stdout.strip(), done.stderr) == (0, "3", "")
    dead = await cli("submit", "fail", "message=kaput", "--retries", "0", "--wait")
    assert dead.exit_code == 1
    assert re.search(r"job \S+ is dead: RuntimeError: kaput$", dead.stderr.strip())


async def test_a_wait_value_that_is_not_a_duration_is_explained(cli) -> None:
    result = await cli("submit", "fibonacci", "--wait", "n=3")
    assert result.exit_code == 2
    assert "put --wait after the payload or write --wait=30s" in result.output


async def test_result_wait_takes_a_duration_too(cli, client: AsyncClient) -> None:
    queued = await client.submit("no_worker_has_this")
    result = await cli("result", queued.id, "--wait", "0.1")
    assert result.exit_code == 4 and "still queued after 0.1s" in result.output


async def test_ctrl_c_during_the_wait_says_how_to_wait_again(
    broker: Broker, client: AsyncClient, home: Path
) -> None:
    proc = await spawn(
        "submit", "nobody_runs_this", "--wait",
        env=cli_env(CONVEYOR_HOME=str(home), CONVEYOR_BROKER_URL=broker.url),
    )  # fmt: skip
    assert proc.stderr is not None
    await read_until(proc.stderr, "Ctrl-C stops waiting")  # it is waiting now
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 130
    match = re.search(r"conveyor result (\S+) --wait", err.decode())
    assert match is not None, err.decode()
    assert "Traceback" not in err.decode() and "Aborted" not in err.decode()
    assert (await client.get(match.group(1))).state is JobState.QUEUED  # the job goes on
