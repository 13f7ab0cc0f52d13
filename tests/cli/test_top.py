"""``conveyor top`` driven in a pseudo-terminal, the way a person on a server runs it."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import signal
import subprocess
import sys
from pathlib import Path

from conveyor import AsyncClient
from conveyor.broker.app import Broker

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


async def _screen_until(fd: int, wanted: list[bytes], timeout: float = 20.0) -> bytes:
    """Read the terminal until every ``wanted`` text has been drawn."""
    loop = asyncio.get_running_loop()
    seen = b""
    async with asyncio.timeout(timeout):
        while not all(w in ANSI.sub(b"", seen) for w in wanted):
            ready = loop.create_future()
            loop.add_reader(fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
    return ANSI.sub(b"", seen)


async def test_top_shows_the_numbers_workers_and_jobs_and_q_quits(
    broker: Broker, client: AsyncClient, home: Path, start_worker
) -> None:
    worker = await start_worker()
    job = await client.submit("noop", delay=600)  # stays put: scheduled
    main, child = pty.openpty()
    env = {
        **os.environ,
        "CONVEYOR_HOME": str(home),
        "CONVEYOR_BROKER_URL": broker.url,
        "COLUMNS": "160",
        "LINES": "40",
        "TERM": "xterm",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "top"],
        stdin=child,
        stdout=child,
        stderr=child,
        env=env,
        close_fds=True,
    )
    os.close(child)
    try:
        screen = await _screen_until(
            main, [b"scheduled 1", worker.worker_id.encode(), job.id.encode(), b"newest jobs"]
        )
        assert b"workers 1 (0 busy, 1 idle)" in screen
        os.write(main, b"q")
        assert await asyncio.wait_for(asyncio.to_thread(proc.wait), 10) == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        os.close(main)
