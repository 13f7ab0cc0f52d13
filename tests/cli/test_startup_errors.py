"""What a newcomer gets wrong at start-up ends in one line and a non-zero exit, never a
traceback: a taken port, an unknown log level, a broken tasks module, a locked database."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.cli import main
from tests.cli.helpers import Ran, cli_env, run


def one_line_error(ran: Ran) -> str:
    """The one error line of a failed command (and there is no traceback)."""
    assert ran.rc == 1, ran
    assert "Traceback" not in ran.err, ran.err
    errors = [line for line in ran.err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, ran.err
    return errors[0]


async def test_a_taken_port_names_it_and_suggests_another(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = await run("broker", "--no-http", "--home", str(tmp_path / "h"), "--port", str(port))
    line = one_line_error(ran)
    assert f"port {port} is already in use" in line and "--port" in line


async def test_a_database_held_by_another_broker_is_one_line(home: Path, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    first = Broker(BrokerConfig(port=0, store_url=f"sqlite:///{db}", home=home))
    await first.start()
    try:
        ran = await run(
            *("broker", "--no-http", "--home", str(tmp_path / "h2"), "--port", "0"),
            *("--store", f"sqlite:///{db}"),
        )
    finally:
        await first.stop()
    assert f"{db} is in use by another process" in one_line_error(ran)


@pytest.mark.parametrize("command", [["broker"], ["worker", "--tasks", "x"]])
def test_an_unknown_log_level_is_a_usage_error(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--log-level", "verbose"])
    assert result.exit_code == 2
    assert "'verbose' is not one of" in result.output


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("from conveyor import task\n\n@task\ndef f(:\n    pass\n", "broken.py:4: SyntaxError"),
        ("import no_such_dependency_xyz\n", "broken.py:1: ModuleNotFoundError: No module named"),
        ("x = 1\nraise RuntimeError('no config')\n", "broken.py:2: RuntimeError: no config"),
    ],
)
async def test_a_broken_tasks_module_is_one_line_naming_file_and_line(
    tmp_path: Path, source: str, says: str
) -> None:
    (tmp_path / "broken.py").write_text(source)
    ran = await run(
        *("worker", "--tasks", "broken", "--log-level", "debug"),  # any case is accepted
        *("--broker", "conveyor://127.0.0.1:9"),
        env=cli_env(CONVEYOR_HOME=str(tmp_path / "h")),
        cwd=tmp_path,
    )
    line = one_line_error(ran)
    assert "task module 'broken'" in line and says in line, line
