"""Built-in example tasks, for trying Conveyor out: ``conveyor worker --tasks conveyor.examples``.

Bad arguments (wrong type, out of range) raise ``ValueError``/``TypeError``, which these
tasks mark non-retryable: running them again would fail the same way.
"""

from __future__ import annotations

import asyncio
import random
import time

from conveyor.worker.progress import current_job
from conveyor.worker.tasks import task

MAX_FIBONACCI = 10_000
MAX_SLEEP = 3600.0
_BAD_INPUT = (ValueError, TypeError)
_PRIME_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
_MAX_PRIME = 3_317_044_064_679_887_385_961_981  # the bases above are exact below this


def _seconds(seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError("seconds must be a number")
    if not 0 <= seconds <= MAX_SLEEP:
        raise ValueError(f"seconds must be between 0 and {MAX_SLEEP:g}")
    return float(seconds)


@task(non_retryable=_BAD_INPUT)
def reverse_string(data: str) -> str:
    """``data`` backwards."""
    return data[::-1]


@task(non_retryable=_BAD_INPUT)
def to_uppercase(data: str) -> str:
    """``data`` in upper case."""
    return data.upper()


@task(non_retryable=_BAD_INPUT)
def fibonacci(n: int) -> int:
    """The ``n``-th Fibonacci number (``fibonacci(0) == 0``), for 0 <= n <= 10000."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError("n must be an integer")
    if not 0 <= n <= MAX_FIBONACCI:
        raise ValueError(f"n must be between 0 and {MAX_FIBONACCI}")
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


@task(non_retryable=_BAD_INPUT)
def is_prime(n: int) -> bool:
    """Whether ``n`` is prime (deterministic Miller-Rabin; n below ~3.3e24)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError("n must be an integer")
    if n >= _MAX_PRIME:
        raise ValueError(f"n must be below {_MAX_PRIME}")
    if n < 2:
        return False
    for p in _PRIME_BASES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in _PRIME_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


@task(non_retryable=_BAD_INPUT)
def slow_task(seconds: float) -> float:
    """Sleep ``seconds`` (at most an hour) and return them."""
    seconds = _seconds(seconds)
    time.sleep(seconds)
    return seconds


@task(non_retryable=_BAD_INPUT)
def add(a: float, b: float) -> float:
    """``a + b``."""
    return a + b


@task
def noop() -> None:
    """Do nothing (for measuring the queue itself)."""


@task
def fail(message: str = "failed on purpose") -> None:
    """Always raise ``RuntimeError(message)`` (retried, then dead)."""
    raise RuntimeError(message)


@task(non_retryable=_BAD_INPUT)
def flaky(p: float = 0.5) -> str:
    """Raise ``RuntimeError`` with probability ``p``, else return ``"ok"``."""
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
        raise ValueError("p must be a probability between 0 and 1")
    if random.random() < p:
        raise RuntimeError(f"flaky task failed (p={p:g})")
    return "ok"


@task(non_retryable=_BAD_INPUT)
async def async_sleep(seconds: float) -> float:
    """Sleep ``seconds`` without a thread (for the async pool) and return them."""
    seconds = _seconds(seconds)
    await asyncio.sleep(seconds)
    return seconds


@task(non_retryable=_BAD_INPUT)
def total(values: list[float], *more: float) -> float:
    """The sum of a list (a chord's callback: ``chord(group(...), sig("total"))``)."""
    if not isinstance(values, list):
        raise TypeError("values must be a list of numbers")
    return float(sum(values) + sum(more))


@task(non_retryable=_BAD_INPUT)
def steps(n: int = 10, seconds: float = 0.2) -> int:
    """Work through ``n`` steps of ``seconds`` each, reporting progress after each one."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= 10_000:
        raise ValueError("n must be an integer from 1 to 10000")
    pause = _seconds(seconds)
    job = current_job()
    job.set_meta(steps=n)
    for i in range(n):
        time.sleep(pause)
        job.progress((i + 1) / n, f"step {i + 1}/{n}")
    return n
