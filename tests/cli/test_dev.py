"""``conveyor dev`` as a user runs it: a second copy fails clearly, SIGTERM stops every child."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import pytest

from tests.cli.helpers import cli_env, read_until, run, spawn

pytestmark = pytest.mark.slow


def children_of(pid: int) -> set[int]:
    """The live child processes of ``pid`` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


@pytest.mark.parametrize(
    ("sig", "second_copy"),
    [(signal.SIGTERM, True), (signal.SIGINT, False)],  # SIGINT: Ctrl-C
)
async def test_a_second_copy_fails_and_a_signal_stops_every_child(
    tmp_path: Path, sig: signal.Signals, second_copy: bool
) -> None:
    home = tmp_path / "home"
    first = await spawn(
        "dev", "--port", "0", "--http-port", "0", "--home", str(home), env=cli_env()
    )
    assert first.stdout is not None
    try:
        await read_until(first.stdout, "Conveyor is up", timeout=30)
        dashboard = await read_until(first.stdout, "Dashboard:", timeout=5)
        assert "http://127.0.0.1:" in dashboard
        if second_copy:  # the same home: its database is taken
            second = await run(
                "dev", "--port", "0", "--http-port", "0", "--home", str(home), env=cli_env()
            )
            assert second.rc == 1 and "Conveyor is up" not in second.out
            assert "conveyor.db is in use by another process" in second.err
            assert "the broker did not start" in second.err and "Traceback" not in second.err

        children = children_of(first.pid)
        assert len(children) == 3  # the broker and two workers
        first.send_signal(sig)
        _, err = await asyncio.wait_for(first.communicate(), 30)
        assert first.returncode == 0, err.decode()
        assert "stopping: flushing the store" in err.decode()  # the broker stopped cleanly
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]  # no orphans
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()


async def test_a_taken_port_fails_before_anything_is_up(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = await run(
            "dev",
            "--port",
            str(port),
            "--http-port",
            "0",
            "--home",
            str(tmp_path / "h"),
            env=cli_env(),
        )
    assert ran.rc == 1 and "Conveyor is up" not in ran.out
    assert f"port {port} is already in use" in ran.err and "the broker did not start" in ran.err
