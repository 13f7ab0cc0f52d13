"""``conveyor broker --max-queued``: a global default and per-queue limits, from flags or
the environment; a bad value is a usage error naming the flag, before anything starts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig, Limits
from conveyor.cli import main
from conveyor.cli._util import parse_max_queued
from conveyor.client.aio import AsyncClient
from conveyor.errors import QueueFull
from conveyor.limits import MAX_QUEUED


def test_values_set_the_default_and_queues_the_last_one_winning() -> None:
    assert parse_max_queued((), MAX_QUEUED) == (1_000_000, ())
    assert parse_max_queued(("500", "reports=5000", "mail=0,reports=7"), MAX_QUEUED) == (
        500,
        (("mail", 0), ("reports", 7)),
    )


@pytest.mark.parametrize("bad", ["-1", "x=", "=5", "reports=five", "a b=1", "1.5", "q!=3"])
def test_a_bad_value_names_the_flag(bad: str) -> None:
    with pytest.raises(click.BadParameter, match="QUEUE=N"):
        parse_max_queued((bad,), MAX_QUEUED)


def test_the_broker_refuses_a_bad_value_from_the_flag_or_the_environment(tmp_path: Path) -> None:
    runner = CliRunner()
    home = str(tmp_path / "home")
    ran = runner.invoke(main, ["broker", "--no-http", "--home", home, "--max-queued", "q=lots"])
    assert ran.exit_code == 2 and "--max-queued" in ran.output, ran.output
    ran = runner.invoke(
        main, ["broker", "--no-http", "--home", home], env={"CONVEYOR_MAX_QUEUED": "10 q=x"}
    )
    assert ran.exit_code == 2 and "'q=x'" in ran.output, ran.output


def test_help_documents_the_default_and_the_variable() -> None:
    ran = CliRunner().invoke(main, ["broker", "--help"], terminal_width=200)
    assert "--max-queued N|QUEUE=N" in ran.output
    assert "queue_full" in ran.output and "1,000,000" in ran.output
    assert "CONVEYOR_MAX_QUEUED" in ran.output


def test_flags_and_environment_reach_the_brokers_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.cli.broker_cmd import _limits, broker

    ctx = broker.make_context("broker", ["--max-queued", "7", "--max-queued", "reports=2"])
    limits = _limits(ctx.params)
    assert (limits.max_queued, limits.max_queued_by_queue) == (7, (("reports", 2),))
    monkeypatch.setenv("CONVEYOR_MAX_QUEUED", "0 mail=9")
    limits = _limits(broker.make_context("broker", []).params)
    assert (limits.max_queued, limits.max_queued_by_queue) == (0, (("mail", 9),))
    assert _limits(broker.make_context("broker", ["--max-queued", "3"]).params).max_queued == 3


@pytest.fixture
def broker_config(home: Path) -> BrokerConfig:
    return BrokerConfig(port=0, store_url="memory://", home=home, limits=Limits(max_queued=2))


async def test_stats_says_how_many_jobs_were_refused_for_a_full_queue(
    broker: Broker, home: Path, client: AsyncClient
) -> None:
    env = {"CONVEYOR_HOME": str(home), "CONVEYOR_BROKER_URL": broker.url}

    async def cli(*args: str) -> Result:
        return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)

    assert "refused:" not in (await cli("stats")).output  # nothing to say yet
    await client.submit_many([("add", {"a": 1, "b": 2})] * 2)
    with pytest.raises(QueueFull):
        await client.submit_many([("add", {"a": 1, "b": 2})] * 3)
    result = await cli("stats")
    assert result.exit_code == 0, result.output
    assert "refused: 3 job(s) since start" in result.output
