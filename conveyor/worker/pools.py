"""Execution pools: where a worker runs its jobs. Three kinds, one interface (:class:`Pool`).

* ``thread`` (:class:`ThreadPool`) — sync tasks in a ``ThreadPoolExecutor``; an
  ``async def`` task runs there too, under its own ``asyncio.run``.
* ``process`` (:class:`~conveyor.worker.procpool.ProcessPool`) — one child process per
  slot; a timed-out or crashed child is killed/reaped and replaced.
* ``async`` (:class:`AsyncPool`) — ``async def`` tasks on the worker's own event loop;
  sync tasks on it run in threads, as in the thread pool.

``run()`` never raises for what a task does: every outcome is a :class:`RunResult`
(see :mod:`conveyor.worker.execute` for the map). Timeouts: the job's, else the
task's, capped at :data:`conveyor.job.MAX_TIMEOUT`.

**A thread cannot be killed.** When a job running in a thread times out, its result
is a ``TimeoutError`` at once, but the thread runs on until the function returns and
keeps its slot until then (so the pool never runs more than ``concurrency`` threads).
A task that never returns holds its slot for good (the threads are daemons, so it does
not delay the worker's exit, but it is cut off there): use the process pool for code
that may hang, or have the task honour its own deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from conveyor.worker import POOL_KINDS, execute
from conveyor.worker.execute import RunRequest, RunResult
from conveyor.worker.procpool import ProcessPool
from conveyor.worker.tasks import TaskDef, TaskRegistry

__all__ = ["AsyncPool", "Pool", "ProcessPool", "RunRequest", "RunResult", "ThreadPool", "make_pool"]


class Pool(Protocol):
    """What the runner drives: start, run jobs (at most ``concurrency`` at once), close."""

    kind: str
    concurrency: int

    async def start(self) -> None:
        """Get ready to run jobs (the process pool starts its children here)."""
        ...

    async def run(self, job: RunRequest) -> RunResult:
        """Run one job (waiting for a free slot first); never raises for task errors."""
        ...

    def cancel(self, job_id: str) -> bool:
        """Ask a running job to stop; True if the pool could act on it."""
        ...

    async def close(self, wait: bool = True) -> None:
        """Stop: with ``wait``, let running jobs finish; otherwise abandon them."""
        ...


_THREAD_NOTE = "the thread keeps running until the task returns"


class _LocalPool:
    """Jobs run in this process: sync ones in threads, async ones on the loop or in threads."""

    kind = "local"
    _async_on_loop = False

    def __init__(self, registry: TaskRegistry, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.registry = registry
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._threads: _Threads | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_loop: dict[str, asyncio.Task[RunResult]] = {}
        self._cancel_requested: set[str] = set()
        self._waiting: set[asyncio.Future[Any]] = set()
        self._closed = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._threads = _Threads(self.concurrency, f"conveyor-{self.kind}")

    async def run(self, job: RunRequest) -> RunResult:
        if self._closed or self._threads is None:
            raise RuntimeError(f"{self.kind} pool is not running (start() it; not after close())")
        definition = self.registry.get(job.task)
        if definition is None:
            return execute.unknown_task(job.task)
        timeout = execute.effective_timeout(job.timeout, definition.timeout)
        await self._slots.acquire()  # released by whatever runs the job, once it is really done
        if self._closed:
            self._slots.release()
            raise RuntimeError(f"{self.kind} pool closed while the job waited for a slot")
        if definition.is_async and self._async_on_loop:
            return await self._run_on_loop(job, definition, timeout)
        return await self._run_in_thread(job, definition, timeout)

    async def _run_in_thread(
        self, job: RunRequest, definition: TaskDef, timeout: float
    ) -> RunResult:
        assert self._threads is not None and self._loop is not None
        future: asyncio.Future[RunResult] = self._loop.create_future()
        self._threads.put(self._call, future, definition, job)
        self._waiting.add(future)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            return execute.timed_out(timeout, _THREAD_NOTE)
        except asyncio.CancelledError:
            if (outcome := self._interrupted(job.job_id)) is None:
                raise
            return outcome
        finally:
            self._waiting.discard(future)

    def _call(
        self, future: asyncio.Future[RunResult], definition: TaskDef, job: RunRequest
    ) -> None:
        """In a pool thread: run the job, then hand the outcome to the loop in one call
        (one wake-up of the loop per job, not one for the result and one for the slot)."""
        outcome: RunResult | BaseException
        try:
            if future.cancelled():  # given up (close(wait=False)) before it started
                outcome = execute.cancelled()
            else:
                outcome = execute.run_sync(definition, job.payload, job.current)
        except BaseException as exc:  # run_sync never raises; if it ever did, say so
            outcome = exc
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self._loop.call_soon_threadsafe(self._finished, future, outcome)

    def _finished(
        self, future: asyncio.Future[RunResult], outcome: RunResult | BaseException
    ) -> None:
        """On the loop, once the thread is really done: its slot is free again (a job that
        timed out kept it until now), and the outcome goes to whoever still waits."""
        self._slots.release()
        if future.done():  # timed out or cancelled meanwhile
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    async def _run_on_loop(self, job: RunRequest, definition: TaskDef, timeout: float) -> RunResult:
        task = asyncio.ensure_future(execute.run_async(definition, job.payload, job.current))
        task.add_done_callback(lambda _: self._slots.release())
        self._on_loop[job.job_id] = task
        self._waiting.add(task)
        try:
            return await asyncio.wait_for(task, timeout)
        except TimeoutError:
            return execute.timed_out(timeout)
        except asyncio.CancelledError:
            if (outcome := self._interrupted(job.job_id)) is None:
                raise
            return outcome
        finally:
            self._on_loop.pop(job.job_id, None)
            self._cancel_requested.discard(job.job_id)
            self._waiting.discard(task)

    def _interrupted(self, job_id: str) -> RunResult | None:
        """Why the job's future was cancelled: by cancel(), by close(wait=False), or (None)
        because our caller was cancelled, which must propagate."""
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            return None
        if job_id in self._cancel_requested:
            return execute.cancelled()
        if self._closed:
            return execute.failure(execute.WORKER_SHUTDOWN, "pool closed while the job ran")
        return None

    def cancel(self, job_id: str) -> bool:
        """Cancel an ``async def`` job running on the loop; threads cannot be (False)."""
        task = self._on_loop.get(job_id)
        if task is None or task.done():
            return False
        self._cancel_requested.add(job_id)
        task.cancel()
        return True

    async def close(self, wait: bool = True) -> None:
        """With ``wait``, wait for the jobs inside ``run()`` (not for threads stuck past their
        timeout). Without it, those jobs end now as ``WorkerShutdown``: loop tasks are
        cancelled, running threads are left to finish on their own."""
        if self._closed:
            return
        self._closed = True
        if wait and self._waiting:
            await asyncio.wait(set(self._waiting))
        elif not wait:
            for future in list(self._waiting):
                future.cancel()
        if self._threads is not None:
            self._threads.stop()


class _Threads:
    """``n`` threads taking calls from one queue: what ``ThreadPoolExecutor`` does, without
    a Future and a lock per call (the outcome goes back through the call itself). Daemon
    threads: a task that never returns does not hold up the worker's exit."""

    def __init__(self, n: int, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None]
        self._calls = queue.SimpleQueue()
        self._n = n
        for i in range(n):
            threading.Thread(target=self._serve, name=f"{name}_{i}", daemon=True).start()

    def put(self, fn: Callable[..., None], *args: Any) -> None:
        self._calls.put((fn, args))

    def stop(self) -> None:
        """Each thread ends once the calls queued before this are done."""
        for _ in range(self._n):
            self._calls.put(None)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, args = call
            fn(*args)


class ThreadPool(_LocalPool):
    """``concurrency`` threads. ``async def`` tasks run in a thread under ``asyncio.run``."""

    kind = "thread"


class AsyncPool(_LocalPool):
    """``async def`` tasks on the worker's event loop, at most ``concurrency`` at once.

    Timeouts and :meth:`cancel` cancel the asyncio task (a task that swallows
    ``CancelledError`` runs on until it returns). Sync tasks given to this pool run in
    threads of its own, counted against the same ``concurrency``.
    """

    kind = "async"
    _async_on_loop = True


def make_pool(
    kind: str, registry: TaskRegistry, concurrency: int, modules: Sequence[str] = ()
) -> Pool:
    """A pool of ``kind`` (``thread``, ``process`` or ``async``) over ``registry``.

    ``modules`` are the task modules the process pool's children import by name.
    """
    if kind == "thread":
        return ThreadPool(registry, concurrency)
    if kind == "async":
        return AsyncPool(registry, concurrency)
    if kind == "process":
        return ProcessPool(registry, concurrency, modules)
    raise ValueError(f"unknown pool kind {kind!r}; choose one of {', '.join(POOL_KINDS)}")
