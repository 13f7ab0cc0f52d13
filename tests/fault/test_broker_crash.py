"""kill -9 the broker mid-work: every acknowledged job survives and completes."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest

from conveyor import AsyncClient, JobState

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
N_JOBS = 10_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _start_broker(home: Path, port: int, db: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "conveyor",
        "broker",
        "--no-http",
        "--port",
        str(port),
        "--home",
        str(home),
        "--store",
        f"sqlite:///{db}",
        "--log-level",
        "WARNING",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, "the broker exited before it was ready"
        if re.search(r"broker ready on conveyor://", line):
            return proc


async def test_kill_9_broker_with_10000_jobs_loses_none(home: Path, tmp_path: Path) -> None:
    port = _free_port()
    db = tmp_path / "conveyor.db"
    record = tmp_path / "executions.txt"
    env = dict(os.environ, CONVEYOR_TEST_RECORD=str(record), PYTHONPATH=str(REPO))
    url = f"conveyor://127.0.0.1:{port}"
    broker = await _start_broker(home, port, db)
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "conveyor",
        "worker",
        "--broker",
        url,
        "--home",
        str(home),
        "--tasks",
        "tests.fault.recording_tasks",
        "--concurrency",
        "8",
        "--log-level",
        "ERROR",
        env=env,
    )
    try:
        async with AsyncClient(url, home=home, reconnect_timeout=60) as client:
            handles = await client.submit_many(
                [("record", {"i": i}) for i in range(N_JOBS)]
            )  # acknowledged: committed to the database
            while (await client.stats())["totals"]["completed"] < N_JOBS // 10:
                await asyncio.sleep(0.005)
            broker.send_signal(signal.SIGKILL)
            await broker.wait()
            broker = await _start_broker(home, port, db)
            # the worker and this client reconnect by themselves
            jobs = [await h.wait(timeout=120) for h in handles]
            stats = await client.stats()
        assert all(j.state is JobState.COMPLETED for j in jobs)
        assert sorted(j.result for j in jobs) == list(range(N_JOBS))
        runs = collections.Counter(int(x) for x in record.read_text().split())
        assert set(runs) == set(range(N_JOBS))  # at least once: none lost
        duplicates = sum(runs.values()) - N_JOBS
        requeued = stats["totals"]["requeued"]
        print(f"\nbroker kill -9: {N_JOBS} jobs, {duplicates} ran twice, {requeued} requeued")
        # At least once: a run may repeat if its outcome was not yet committed at the kill
        # (the jobs in the worker's hands, and reports the broker had taken but not yet
        # committed: credit comes back before the commit, so that window holds as many
        # jobs as the drain rate fills in one commit). That is a few hundred at most, never
        # a large share: a broker that lost reports wholesale would rerun most of them.
        assert duplicates < N_JOBS // 10
    finally:
        for proc in (worker, broker):
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
