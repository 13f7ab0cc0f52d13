"""The CLI given several broker addresses: it uses the one that answers; a bad list is one
clear line, for the client commands and the worker alike."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from click.testing import CliRunner, Result

from conveyor.broker.app import Broker
from conveyor.cli import main


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def invoke(home: Path, *args: str, url: str | None = None) -> Result:
    env = {"CONVEYOR_HOME": str(home)}
    if url is not None:
        env["CONVEYOR_BROKER_URL"] = url
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)


async def test_commands_use_whichever_listed_broker_answers(broker: Broker, home: Path) -> None:
    listed = f"conveyor://127.0.0.1:{dead_port()},127.0.0.1:{broker.port}"
    for _ in range(4):  # whichever address a run starts at, it ends on the live one
        ping = await invoke(home, "ping", "--broker", listed)
        assert ping.exit_code == 0, ping.output
        assert ping.stdout.startswith(f"conveyor://127.0.0.1:{broker.port}  ")
    submitted = await invoke(home, "submit", "noop", "--id", "from-a-list", url=listed)
    assert submitted.exit_code == 0 and submitted.stdout.strip() == "from-a-list"


async def test_no_listed_broker_answering_exits_3_naming_each(home: Path) -> None:
    one, two = dead_port(), dead_port()
    result = await invoke(home, "stats", "--broker", f"127.0.0.1:{one},127.0.0.1:{two}")
    assert result.exit_code == 3
    assert f"cannot reach the broker at 127.0.0.1:{one}" in result.stderr
    assert f"cannot reach the broker at 127.0.0.1:{two}" in result.stderr


async def test_a_bad_list_is_one_clear_line_for_clients_and_the_worker(home: Path) -> None:
    stats = await invoke(home, "stats", "--broker", "conveyor://127.0.0.1:1,,127.0.0.1:2")
    assert stats.exit_code == 3
    assert "has an empty entry (number 2)" in stats.stderr and "Traceback" not in stats.output
    worker = await invoke(
        home, "worker", "--tasks", "conveyor.examples", url="127.0.0.1:1,127.0.0.1:1"
    )
    assert worker.exit_code != 0
    assert "lists 127.0.0.1:1 twice" in worker.output
    assert "came from CONVEYOR_BROKER_URL" in worker.output


async def test_help_says_a_list_is_accepted(home: Path) -> None:
    for command in ("worker", "stats", "submit"):
        helped = await invoke(home, command, "--help")
        assert "conveyor://a:65432,b:65432" in " ".join(helped.output.split()), command
