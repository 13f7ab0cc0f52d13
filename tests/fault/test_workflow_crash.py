"""kill -9 the broker in the middle of a chain and a chord: after a restart on the same
SQLite file both finish, the chain's results passed along, the chord's callback once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from conveyor import AsyncClient, JobState, chain, chord, group, sig
from tests.fault.test_broker_crash import REPO, _free_port, _start_broker

pytestmark = pytest.mark.slow


async def test_kill_9_mid_workflow(home: Path, tmp_path: Path) -> None:
    port = _free_port()
    db = tmp_path / "conveyor.db"
    gate, runs = tmp_path / "gate", tmp_path / "callbacks.txt"
    url = f"conveyor://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests' / 'flow'}")
    broker = await _start_broker(home, port, db)
    worker = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "conveyor", "worker", "--broker", url, "--home", str(home)),
        *("--tasks", "flow_tasks", "--concurrency", "8", "--log-level", "ERROR"),
        env=env,
    )
    try:
        async with AsyncClient(url, home=home, reconnect_timeout=60) as client:
            line = await client.submit_workflow(
                chain(sig("flow.add", 1, 2), sig("flow.hold", str(gate)), sig("flow.add", 4))
            )
            fan = await client.submit_workflow(
                chord(
                    group(sig("flow.wait_for", str(gate), i) for i in range(6)),
                    sig("flow.tally", str(runs), "chord"),
                )
            )
            assert (await client.wait(line.ids[0], timeout=30)).state is JobState.COMPLETED
            broker.send_signal(signal.SIGKILL)  # the chain's second step and the group held
            await broker.wait()
            broker = await _start_broker(home, port, db)
            gate.touch()
            assert await line.result(timeout=60) == 7
            assert await fan.result(timeout=60) == list(range(6))
        assert runs.read_text().split() == ["chord"]  # the callback ran once
    finally:
        for proc in (worker, broker):
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
