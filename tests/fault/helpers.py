"""Workers as real child processes, so tests can kill -9 and SIGSTOP them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from conveyor.broker.app import Broker


class WorkerProcess:
    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.signal(signal.SIGKILL)
            await self.proc.wait()


REPO = Path(__file__).resolve().parents[2]


async def spawn_worker(
    broker: Broker,
    home: Path,
    name: str,
    *args: str,
    wait: bool = True,
    env: dict[str, str] | None = None,
) -> WorkerProcess:
    """``conveyor worker`` in a child process; waits until the broker has seen it."""
    log_level = os.environ.get("CONVEYOR_TEST_WORKER_LOG", "WARNING")
    if "--tasks" not in args:
        args = ("--tasks", "conveyor.examples", *args)
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "conveyor", "worker", "--broker", broker.url),
        *("--home", str(home), "--name", name, "--log-level", log_level, *args),
        env={**os.environ, **(env or {})},
    )
    worker = WorkerProcess(proc, name)
    if wait:
        await broker.wait_until(lambda: worker_id(broker, name) is not None, 20)
    return worker


def worker_id(broker: Broker, name: str) -> str | None:
    for w in broker.dispatcher.workers.values():
        if w.name == name:
            return w.id
    return None
