"""Workers log their jobs: a line at the start and one at the end, text or JSON, with the
job's id, task, attempt and run time, and never its payload unless asked."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path

import pytest

from conveyor import AsyncClient, JobState
from conveyor.broker.app import Broker
from tests.cli.helpers import cli_env, spawn

SECRET = 424242  # an argument value that must not reach the log


async def test_json_lines_for_each_way_a_job_ends(
    broker: Broker, client: AsyncClient, home: Path
) -> None:
    proc = await spawn(
        *("worker", "--tasks", "conveyor.examples", "--log-format", "json"),
        *("--broker", broker.url, "--home", str(home)),
        env=cli_env(),
    )
    await broker.wait_until(lambda: len(broker.dispatcher.workers) == 1, 20)
    handles = {
        "completed": await client.submit("add", a=SECRET, b=1),
        "failed": await client.submit("fail", message="kaput", retries=0),
        "rejected": await client.submit("add", c=1, retries=3),  # bad arguments: no retry
        "timed_out": await client.submit("slow_task", seconds=1, timeout=0.1, retries=0),
    }
    for h in handles.values():
        assert (await h.wait(timeout=15)).state.is_final
    proc.send_signal(signal.SIGTERM)  # each line was written before its job was reported
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert str(SECRET) not in err.decode()
    lines = [json.loads(line) for line in err.decode().splitlines()]  # every line is JSON
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    jobs = [line for line in lines if line["logger"] == "conveyor.worker.jobs"]
    for outcome, handle in handles.items():
        start, end = [line for line in jobs if line["job_id"] == handle.id]
        assert start["event"] == "started" and end["event"] == outcome, (start, end)
        assert start["attempt"] == end["attempt"] == 1 and start["task"] == end["task"]
        assert end["ms"] >= 0 and handle.id in end["msg"] and end["level"] == "INFO"
        assert "args" not in start and "result" not in end
    by_event = {line["event"]: line for line in jobs}
    assert (by_event["failed"]["error_type"], by_event["failed"]["error"]) == (
        "RuntimeError",
        "kaput",
    )
    assert by_event["rejected"]["error_type"] == "InvalidArguments"
    assert by_event["timed_out"]["error_type"] == "TimeoutError"
    # the run time covers the wait for the timeout (asyncio may fire a timer a little
    # early, so not exactly 100 ms), not only the moment it was cut off
    assert by_event["timed_out"]["ms"] >= 50


@pytest.mark.parametrize("payloads", [False, True])
async def test_text_lines_show_payloads_only_when_asked(
    client: AsyncClient, start_worker, caplog: pytest.LogCaptureFixture, payloads: bool
) -> None:
    caplog.set_level(logging.INFO, logger="conveyor.worker.jobs")
    await start_worker(log_payloads=payloads)
    job = await (await client.submit("add", a=SECRET, b=1)).wait(timeout=10)
    assert job.state is JobState.COMPLETED
    start, end = [r.getMessage() for r in caplog.records if r.name == "conveyor.worker.jobs"]
    assert start == f"job {job.id} started: task add, attempt 1" + (
        f', args [] kwargs {{"a": {SECRET}, "b": 1}}' if payloads else ""
    )
    assert end.startswith(f"job {job.id} completed: task add, attempt 1, ")
    assert end.endswith(f"ms, result {SECRET + 1}" if payloads else " ms")


async def test_nothing_is_logged_below_the_level(
    client: AsyncClient, start_worker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="conveyor.worker.jobs")
    await start_worker(log_payloads=True)
    await (await client.submit("add", a=1, b=2)).wait(timeout=10)
    assert [r for r in caplog.records if r.name == "conveyor.worker.jobs"] == []
