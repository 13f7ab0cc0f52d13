"""A broker on a non-default port is found by every command through its home's config.toml,
and its start hint says the whole command."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from click.testing import CliRunner

from conveyor.cli import main
from conveyor.cli.broker_cmd import _submit_hint
from conveyor.config import read_config
from conveyor.worker.runner import Worker
from conveyor.worker.tasks import load_tasks
from tests.cli.helpers import cli_env, read_until, spawn


async def test_clients_and_workers_find_the_broker_through_its_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = await spawn(
        *("broker", "--no-http", "--port", "0", "--home", str(home), "--store", "memory://"),
        env=cli_env(),
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    try:
        seen = await read_until(proc.stdout, "submit a job:")
        url = read_config(home)["broker_url"]
        assert url.startswith("conveyor://127.0.0.1:") and f"broker ready on {url}" in seen
        hint = seen.splitlines()[-1]
        assert hint.endswith(f"conveyor submit fibonacci n=30 --wait --broker {url} --home {home}")

        worker = Worker(registry=load_tasks(["conveyor.examples"]), home=home)  # no URL given
        running = asyncio.get_running_loop().create_task(worker.run())
        await asyncio.wait_for(worker.connected.wait(), 10)
        env = {"CONVEYOR_HOME": str(home), "CONVEYOR_BROKER_URL": None}  # only the home
        result = await asyncio.to_thread(
            CliRunner().invoke, main, ["submit", "add", "a=1", "b=2", "--wait"], env=env
        )
        assert (result.exit_code, result.stdout.strip()) == (0, "3"), result.output
        worker.stop()
        await asyncio.wait_for(running, 10)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 20)


def test_the_default_port_and_home_need_no_flags_in_the_hint() -> None:
    assert _submit_hint("conveyor://127.0.0.1:65432", Path(".conveyor")) == (
        "conveyor submit fibonacci n=30 --wait"
    )


def test_shell_completion_as_the_readme_says() -> None:
    result = CliRunner().invoke(
        main, [], prog_name="conveyor", env={"_CONVEYOR_COMPLETE": "bash_source"}
    )
    assert result.exit_code == 0 and "_conveyor_completion" in result.output
