"""Tasks for the worker tests, imported by name ("sample_tasks") as a worker would."""

from __future__ import annotations

import asyncio
import os
import threading
import time

from conveyor.errors import Reject, Retry
from conveyor.worker.tasks import task

CANCELLED: list[str] = []  # async tasks that saw CancelledError (same-process pools only)


def _record(path: str, what: str) -> None:
    with open(path, "a") as f:
        f.write(f"{what} {os.getpid()} {time.monotonic():.6f}\n")


def _nested_failure(message: str) -> None:
    raise RuntimeError(message)


@task(name="sample.echo")
def echo(*args: object, **kwargs: object) -> list[object]:
    return [list(args), kwargs]


@task(name="sample.where")
def where() -> list[object]:
    return [os.getpid(), threading.current_thread().name]


@task(name="sample.async_where")
async def async_where() -> list[object]:
    await asyncio.sleep(0)
    return [os.getpid(), threading.current_thread().name]


@task(name="sample.fail")
def fail(message: str) -> None:
    _nested_failure(message)


@task(name="sample.retry")
def retry(delay: float | None) -> None:
    raise Retry("try again later", delay=delay)


@task(name="sample.reject")
def reject() -> None:
    raise Reject("this will never work")


@task(name="sample.lookup", non_retryable=(LookupError,))
def lookup(key: str) -> object:
    return {}[key]


@task(name="sample.unserializable")
def unserializable() -> object:
    return object()


@task(name="sample.big")
def big(size: int) -> str:
    return "x" * size


@task(name="sample.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task(name="sample.short_timeout", timeout=0.2)
def short_timeout(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task(name="sample.record")
def record(path: str, seconds: float) -> None:
    _record(path, "start")
    time.sleep(seconds)
    _record(path, "end")


@task(name="sample.async_record")
async def async_record(path: str, seconds: float) -> None:
    _record(path, "start")
    await asyncio.sleep(seconds)
    _record(path, "end")


@task(name="sample.async_wait")
async def async_wait(tag: str, seconds: float) -> float:
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        CANCELLED.append(tag)
        raise
    return seconds


@task(name="sample.exit")
def exit_now(code: int) -> None:
    os._exit(code)
