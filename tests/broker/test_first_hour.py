"""A newcomer's first hour: options and routing follow the task, bad submits fail at once.

Each test drives the public Client, AsyncClient, task objects or CLI the way a new user
coming from Celery or RQ would, against a real broker and real workers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from conveyor import AsyncClient, Client, InvalidJob, JobState, task
from conveyor.broker.app import Broker
from conveyor.cli import main
from conveyor.errors import BrokerUnavailable, ConveyorError
from conveyor.worker.tasks import TaskRegistry

registry = TaskRegistry()


@task(name="make_report", queue="reports", priority=2, timeout=30, registry=registry)
def make_report(title: str) -> str:
    return title.upper()


@task(name="fragile", retries=0, registry=registry)
def fragile() -> None:
    raise RuntimeError("must not run twice")


@task(name="greet", registry=registry)
def greet(name: str) -> str:
    return f"hello {name}"


async def test_task_options_apply_to_jobs_submitted_before_the_worker_joined(
    client: AsyncClient, start_worker
) -> None:
    early = await client.submit("fragile")  # no worker knows "fragile" yet
    await start_worker(registry)
    job = await early.wait(timeout=10)
    assert job.state is JobState.DEAD
    assert (job.attempts, job.max_retries) == (1, 0)  # the task's retries=0, not the default 3


async def test_a_submit_without_a_queue_follows_the_tasks_declared_queue(
    broker: Broker, client: AsyncClient, start_worker
) -> None:
    early = await client.submit("make_report", title="q3")  # before any worker declared it
    assert (await early.get()).queue == ""  # unrouted: any worker offering it takes it
    await start_worker(registry)
    assert await early.result(timeout=10) == "Q3"
    assert (await early.get()).queue == "reports"  # where the worker declares the task
    later = await client.submit("make_report", title="q4", delay=60)
    assert (await later.get()).queue == "reports"  # the broker knows the route now
    assert broker.core.workforce.routes["make_report"] == "reports"


async def test_the_cli_submit_of_a_routed_task_does_not_hang(
    broker: Broker, home: Path, start_worker
) -> None:
    await start_worker(registry)
    env = {"CONVEYOR_HOME": str(home), "CONVEYOR_BROKER_URL": broker.url}
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["submit", "make_report", "title=annual", "--wait"], env=env
    )
    assert (result.exit_code, result.output.strip()) == (0, '"ANNUAL"'), result.output


async def test_the_task_object_is_the_producer_api(
    broker: Broker, home: Path, start_worker
) -> None:
    await start_worker(registry)

    def scenario() -> None:
        with Client(broker.url, home=home) as c:
            handle = make_report.submit("monthly", client=c)
            assert handle.result(timeout=10) == "MONTHLY"
            job = handle.get()
            assert (job.queue, job.priority, job.timeout) == ("reports", 2, 30.0)
            assert c.submit(make_report, "x", priority=9).get().priority == 9  # mine wins
            with pytest.raises(InvalidJob, match="unexpected keyword argument 'nme'"):
                greet.submit(nme="x", client=c)  # refused before anything is sent
            assert len(c.list_jobs()) == 2

    await asyncio.to_thread(scenario)


async def test_wrong_arguments_fail_once_and_say_why(client: AsyncClient, start_worker) -> None:
    await start_worker(registry)
    job = await (await client.submit("greet", nme="x")).wait(timeout=10)
    assert job.state is JobState.DEAD and job.attempts == 1
    assert job.error is not None and job.error["type"] == "InvalidArguments"
    assert "unexpected keyword argument 'nme' (did you mean 'name'?)" in job.error["message"]


@pytest.mark.parametrize(
    ("kwargs", "field", "says"),
    [
        ({1: "x"}, "kwargs", "has the key 1"),
        ({"when": dt.datetime(2026, 1, 1)}, "kwargs", "kwargs['when'] is a datetime"),
        ({"blob": "x" * 2_000_000}, "payload", "the broker's limit is 524,288"),
        ({"blob": "x" * 600_000}, "payload", "the broker's limit is 524,288"),
        ({"n": float("nan")}, "kwargs", "NaN"),
    ],
)
async def test_a_bad_submit_fails_at_once_naming_the_argument(
    broker: Broker, client: AsyncClient, kwargs: dict[object, object], field: str, says: str
) -> None:
    before = broker.metrics["connections_total"]
    with pytest.raises(InvalidJob, match=re.escape(says)) as info:
        await client.submit("echo", kwargs=kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert broker.metrics["connections_total"] == before  # no reconnect, no resend
    assert (await client.stats())["totals"]["submitted"] == 0


async def test_no_broker_fails_fast_with_the_address(home: Path) -> None:
    def attempt() -> BrokerUnavailable:
        with pytest.raises(BrokerUnavailable) as info:
            Client("conveyor://127.0.0.1:9", home=home).submit("noop")
        return info.value

    error = await asyncio.wait_for(asyncio.to_thread(attempt), 5)
    assert isinstance(error, ConveyorError) and "127.0.0.1:9" in str(error)
    async with asyncio.timeout(5):
        with pytest.raises(BrokerUnavailable, match=re.escape("127.0.0.1:9")):
            await AsyncClient("conveyor://127.0.0.1:9", home=home).submit("noop")


async def test_a_paused_queue_takes_jobs_and_dispatches_none_until_resumed(
    broker: Broker, client: AsyncClient, home: Path, start_worker
) -> None:
    env = {"CONVEYOR_HOME": str(home), "CONVEYOR_BROKER_URL": broker.url}
    paused = await asyncio.to_thread(
        CliRunner().invoke, main, ["queue", "pause", "default"], env=env
    )
    assert paused.exit_code == 0 and "paused" in paused.output
    await start_worker()
    handle = await client.submit("add", a=1, b=2)
    assert (await handle.wait(timeout=0.3)).state is JobState.QUEUED  # kept, not dispatched
    assert (await client.stats())["paused"] == ["default"]
    await client.resume_queue("default")
    assert await handle.result(timeout=10) == 3
