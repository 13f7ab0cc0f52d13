"""``conveyor`` as a real child process: for exit codes, signals and what reaches stderr."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Ran:
    rc: int
    out: str
    err: str


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a child ``conveyor``: this tree first on the path, no stray
    CONVEYOR_* settings from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


async def spawn(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> asyncio.subprocess.Process:
    """``python -m conveyor ARGS`` with stdout and stderr piped."""
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "conveyor", *args),
        env=env if env is not None else cli_env(),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 30
) -> Ran:
    """Run ``conveyor ARGS`` to its end."""
    proc = await spawn(*args, env=env, cwd=cwd)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


async def read_until(stream: asyncio.StreamReader, needle: str, timeout: float = 20) -> str:
    """Lines from ``stream`` up to and including the first that contains ``needle``."""
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            line = (await stream.readline()).decode()
            if not line:
                raise AssertionError(f"EOF before {needle!r}; got:\n{''.join(seen)}")
            seen.append(line)
            if needle in line:
                return "".join(seen)
