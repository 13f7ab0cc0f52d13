"""The execution pools: results, error mapping, timeouts, concurrency, crashes, cancel."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import ConfigError, Retry
from conveyor.limits import MAX_ERROR_MESSAGE, MAX_RESULT, MAX_TIMEOUT, MAX_TRACEBACK
from conveyor.protocol.payload import pack_call, unpack
from conveyor.worker import execute
from conveyor.worker.pools import (
    AsyncPool,
    Pool,
    ProcessPool,
    RunRequest,
    ThreadPool,
    make_pool,
)
from conveyor.worker.tasks import TaskRegistry, load_tasks

HERE = str(Path(__file__).parent)
MODULES = ["sample_tasks"]
KINDS = ["thread", "process", "async"]
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def registry() -> Iterator[TaskRegistry]:
    """The sample tasks, imported by name the way a worker does (children inherit sys.path)."""
    sys.path.insert(0, HERE)
    try:
        yield load_tasks(MODULES)
    finally:
        sys.path.remove(HERE)


async def _started(kind: str, registry: TaskRegistry, concurrency: int) -> Pool:
    pool = make_pool(kind, registry, concurrency, MODULES)
    await pool.start()
    return pool


@pytest.fixture(params=KINDS)
async def pool(request: pytest.FixtureRequest, registry: TaskRegistry) -> AsyncIterator[Pool]:
    p = await _started(request.param, registry, 2)
    yield p
    await p.close()


def req(task: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> RunRequest:
    return RunRequest(f"job-{next(_ids)}", task, pack_call(list(args), kwargs), timeout)


def max_overlap(path: Path) -> int:
    """Most jobs between their "start" and "end" lines at once, from the record file."""
    events = []
    for line in path.read_text().splitlines():
        what, _pid, at = line.split()
        events.append((float(at), 0 if what == "end" else 1))
    running = peak = 0
    for _, is_start in sorted(events):
        running += 1 if is_start else -1
        peak = max(peak, running)
    return peak


# -- every pool ---------------------------------------------------------------------------


async def test_runs_sync_task_and_returns_result(pool: Pool) -> None:
    result = await pool.run(req("sample.echo", 1, "two", [3], k={"v": None}))
    assert result.ok and result.result is not None
    assert unpack(result.result) == [[1, "two", [3]], {"k": {"v": None}}]


async def test_runs_async_task(pool: Pool) -> None:
    result = await pool.run(req("sample.async_where"))
    assert result.ok
    pid, thread = unpack(result.result or b"")
    if pool.kind == "process":
        assert pid != os.getpid()
    elif pool.kind == "async":
        assert (pid, thread) == (os.getpid(), "MainThread")  # on the worker's own loop
    else:
        assert thread.startswith("conveyor-thread")  # under asyncio.run in a pool thread


async def test_exception_captured_with_type_message_traceback(pool: Pool) -> None:
    result = await pool.run(req("sample.fail", "it broke"))
    assert not result.ok and not result.reject and result.retry_delay is None
    assert result.error is not None
    assert result.error["type"] == "RuntimeError"
    assert result.error["message"] == "it broke"
    tb = result.error["traceback"]
    assert tb.startswith("Traceback (most recent call last):")
    assert "_nested_failure" in tb and "RuntimeError: it broke" in tb
    assert "execute.py" not in tb  # starts in the task, not in our machinery


async def test_retry_and_reject_mapping(pool: Pool) -> None:
    retried = await pool.run(req("sample.retry", 12.5))
    assert retried.error_type == "Retry" and retried.retry_delay == 12.5 and not retried.reject
    backoff = await pool.run(req("sample.retry", None))
    assert backoff.error_type == "Retry" and backoff.retry_delay is None
    rejected = await pool.run(req("sample.reject"))
    assert rejected.error_type == "Reject" and rejected.reject
    assert rejected.error is not None and rejected.error["message"] == "this will never work"


async def test_non_retryable_exception_rejects(pool: Pool) -> None:
    result = await pool.run(req("sample.lookup", "missing"))
    assert result.error_type == "KeyError" and result.reject


async def test_unknown_task_rejected(pool: Pool) -> None:
    result = await pool.run(req("no.such.task"))
    assert result.error_type == "UnknownTask" and result.reject and not result.ok


async def test_unserializable_result_rejected(pool: Pool) -> None:
    result = await pool.run(req("sample.unserializable"))
    assert result.error_type == "UnserializableResult" and result.reject


async def test_big_results_cross_and_too_big_ones_are_rejected(pool: Pool) -> None:
    size = MAX_RESULT - 10  # characters: packed, a str header of 5 bytes comes on top
    result = await pool.run(req("sample.big", size))
    assert result.ok and unpack(result.result or b"") == "x" * size
    too_big = await pool.run(req("sample.big", MAX_RESULT + 1))
    assert too_big.error_type == "ResultTooLarge" and too_big.reject


async def test_timeout_is_retryable_timeout_error(pool: Pool) -> None:
    result = await pool.run(req("sample.sleep", 1.0, timeout=0.1))
    assert result.error_type == "TimeoutError" and not result.reject
    assert result.error is not None
    assert result.error["message"].startswith("job exceeded its 0.1s timeout")


async def test_task_timeout_applies_when_job_has_none(pool: Pool) -> None:
    result = await pool.run(req("sample.short_timeout", 1.0))
    assert result.error is not None
    assert result.error["message"].startswith("job exceeded its 0.2s timeout")


@pytest.mark.parametrize("task", ["sample.record", "sample.async_record"])
async def test_concurrency_limit_respected(pool: Pool, task: str, tmp_path: Path) -> None:
    path = tmp_path / "record.txt"
    results = await asyncio.gather(*(pool.run(req(task, str(path), 0.15)) for _ in range(6)))
    assert all(r.ok for r in results)
    assert max_overlap(path) == 2  # concurrency 2: both slots used, never a third


async def test_run_before_start_or_after_close_raises(registry: TaskRegistry) -> None:
    for kind in KINDS:
        p = make_pool(kind, registry, 1, MODULES)
        with pytest.raises(RuntimeError):
            await p.run(req("sample.echo"))


def test_make_pool_rejects_bad_arguments(registry: TaskRegistry) -> None:
    with pytest.raises(ValueError, match="unknown pool kind"):
        make_pool("fibers", registry, 1, [])
    with pytest.raises(ValueError, match="concurrency"):
        make_pool("thread", registry, 0, [])
    assert isinstance(make_pool("thread", registry, 1), ThreadPool)
    assert isinstance(make_pool("async", registry, 1), AsyncPool)
    assert isinstance(make_pool("process", registry, 1, MODULES), ProcessPool)


def test_effective_timeout() -> None:
    assert execute.effective_timeout(5, 60) == 5
    assert execute.effective_timeout(None, 60) == 60
    assert execute.effective_timeout(None, None) == MAX_TIMEOUT
    assert execute.effective_timeout(10 * MAX_TIMEOUT, None) == MAX_TIMEOUT


def test_exception_edge_cases() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    result = execute.from_exception(Unprintable())
    assert result.error is not None and result.error["message"] == "<unprintable Unprintable>"
    delays = [-5, 1e12, float("nan"), float("inf"), "soon", 2]
    assert [execute.from_exception(Retry(delay=d)).retry_delay for d in delays] == [  # type: ignore[arg-type]
        0.0,
        execute.MAX_RETRY_DELAY,
        None,
        execute.MAX_RETRY_DELAY,
        None,
        2.0,
    ]
    assert execute.success([1, {"k": (2, 3)}]).ok
    for not_json in (b"raw", {1: (2, 3)}, float("nan"), {"when": object()}):
        assert execute.success(not_json).error_type == execute.UNSERIALIZABLE


def test_failure_caps_message_and_traceback() -> None:
    result = execute.failure("X", "m" * 20_000, "t" * 100_000)
    assert result.error is not None
    assert len(result.error["message"]) == MAX_ERROR_MESSAGE
    assert len(result.error["traceback"]) == MAX_TRACEBACK


# -- thread pool --------------------------------------------------------------------------


async def test_thread_timeout_keeps_the_slot_until_the_thread_returns(
    registry: TaskRegistry, tmp_path: Path
) -> None:
    path = tmp_path / "record.txt"
    pool = await _started("thread", registry, 1)
    try:
        stuck = await pool.run(req("sample.record", str(path), 0.4, timeout=0.05))
        assert stuck.error_type == "TimeoutError"
        assert stuck.error is not None and "keeps running" in stuck.error["message"]
        assert (await pool.run(req("sample.record", str(path), 0))).ok
    finally:
        await pool.close()
    assert max_overlap(path) == 1  # the next job waited for the stuck thread to finish


# -- async pool ---------------------------------------------------------------------------


async def test_async_pool_runs_sync_tasks_in_threads(registry: TaskRegistry) -> None:
    pool = await _started("async", registry, 1)
    try:
        result = await pool.run(req("sample.where"))
    finally:
        await pool.close()
    assert result.ok and unpack(result.result or b"")[1].startswith("conveyor-async")


async def test_async_timeout_cancels_the_task(registry: TaskRegistry) -> None:
    import sample_tasks

    pool = await _started("async", registry, 1)
    try:
        result = await pool.run(req("sample.async_wait", "timed-out", 10, timeout=0.05))
    finally:
        await pool.close()
    assert result.error_type == "TimeoutError" and result.error_type != execute.CANCELLED
    assert "timed-out" in sample_tasks.CANCELLED


async def test_async_cancel(registry: TaskRegistry) -> None:
    import sample_tasks

    pool = await _started("async", registry, 1)
    try:
        job = req("sample.async_wait", "cancelled", 10)
        running = asyncio.ensure_future(pool.run(job))
        while not pool.cancel(job.job_id):
            await asyncio.sleep(0.005)
        result = await running
        assert result.error_type == execute.CANCELLED and not result.reject
        assert "cancelled" in sample_tasks.CANCELLED
        assert not pool.cancel(job.job_id)  # no longer running
        assert not pool.cancel("never-heard-of-it")
        assert (await pool.run(req("sample.async_wait", "after", 0))).ok  # slot was released
    finally:
        await pool.close()


async def test_async_caller_cancellation_propagates(registry: TaskRegistry) -> None:
    pool = await _started("async", registry, 1)
    try:
        running = asyncio.ensure_future(pool.run(req("sample.async_wait", "caller", 10)))
        await asyncio.sleep(0.02)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert (await pool.run(req("sample.async_wait", "next", 0))).ok
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("kind", "task"), [("thread", "sample.sleep"), ("async", "sample.async_wait")]
)
async def test_close_without_wait_ends_running_jobs(
    registry: TaskRegistry, kind: str, task: str
) -> None:
    pool = await _started(kind, registry, 1)
    args = [0.3] if kind == "thread" else ["closed", 10]
    running = asyncio.ensure_future(pool.run(req(task, *args)))
    await asyncio.sleep(0.05)
    await pool.close(wait=False)
    result = await running
    assert result.error_type == "WorkerShutdown" and not result.reject


async def test_close_waits_for_running_jobs(registry: TaskRegistry) -> None:
    for kind, task, args in [
        ("thread", "sample.sleep", [0.1]),
        ("async", "sample.async_wait", ["w", 0.1]),
    ]:
        pool = await _started(kind, registry, 1)
        running = asyncio.ensure_future(pool.run(req(task, *args)))
        await asyncio.sleep(0.02)
        await pool.close(wait=True)
        assert running.done() and running.result().ok


async def test_thread_and_process_pools_cannot_cancel(registry: TaskRegistry) -> None:
    for kind in ("thread", "process"):
        pool = await _started(kind, registry, 1)
        try:
            job = req("sample.sleep", 0.2)
            running = asyncio.ensure_future(pool.run(job))
            await asyncio.sleep(0.05)
            assert pool.cancel(job.job_id) is False
            assert (await running).ok
        finally:
            await pool.close()


# -- process pool -------------------------------------------------------------------------


@pytest.fixture
async def proc_pool(registry: TaskRegistry) -> AsyncIterator[ProcessPool]:
    pool = ProcessPool(registry, 1, MODULES, kill_grace=0.2)
    await pool.start()
    yield pool
    await pool.close()


async def _pid(pool: Pool) -> int:
    result = await pool.run(req("sample.where"))
    assert result.ok
    return int(unpack(result.result or b"")[0])


async def test_process_timeout_kills_and_replaces_the_child(proc_pool: ProcessPool) -> None:
    before = await _pid(proc_pool)
    assert proc_pool.pids() == [before] and before != os.getpid()
    result = await proc_pool.run(req("sample.sleep", 30, timeout=0.1))
    assert result.error_type == "TimeoutError" and not result.reject
    assert (
        result.error is not None
        and f"worker process {before} was killed" in result.error["message"]
    )
    after = await _pid(proc_pool)  # waits for the replacement, which then runs the job
    assert after != before
    assert proc_pool.pids() == [after]
    with pytest.raises(ProcessLookupError):
        os.kill(before, 0)  # killed and reaped


async def test_process_crash_is_worker_crashed_and_replaced(proc_pool: ProcessPool) -> None:
    before = await _pid(proc_pool)
    result = await proc_pool.run(req("sample.exit", 3))
    assert result.error_type == "WorkerCrashed" and not result.reject
    assert result.error is not None and "exit code 3" in result.error["message"]
    after = await _pid(proc_pool)
    assert after != before and proc_pool.pids() == [after]


async def test_process_close_without_wait_abandons_running_jobs(registry: TaskRegistry) -> None:
    pool = ProcessPool(registry, 2, MODULES, kill_grace=0.2)
    await pool.start()
    pids = pool.pids()
    assert len(pids) == 2
    running = asyncio.ensure_future(pool.run(req("sample.sleep", 30)))
    await asyncio.sleep(0.05)
    await pool.close(wait=False)
    result = await running
    assert result.error_type == "WorkerShutdown" and not result.reject
    assert pool.pids() == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_process_close_waits_for_running_jobs(registry: TaskRegistry) -> None:
    pool = ProcessPool(registry, 1, MODULES)
    await pool.start()
    running = asyncio.ensure_future(pool.run(req("sample.sleep", 0.2)))
    await asyncio.sleep(0.05)
    await pool.close(wait=True)
    assert (await running).ok
    assert pool.pids() == []


async def test_process_pool_reports_import_failure(
    registry: TaskRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_tasks_for_pool.py").write_text("raise ImportError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pool = ProcessPool(registry, 1, ["broken_tasks_for_pool"])
    with pytest.raises(ConfigError, match="boom at import"):
        await pool.start()
    assert pool.pids() == []
