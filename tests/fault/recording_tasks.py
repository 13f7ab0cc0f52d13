"""A task that appends its argument to a file, so a test can count every execution."""

from __future__ import annotations

import os
import time

from conveyor import task


@task(name="record")
def record(i: int) -> int:
    fd = os.open(os.environ["CONVEYOR_TEST_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)
    return i


@task(name="record_slow")
def record_slow(i: int, seconds: float) -> int:
    """Record that the job started, then take ``seconds``."""
    record(i)
    time.sleep(seconds)
    return i
