"""The process pool: one child process per slot, each running one job at a time.

Theory of operation
-------------------
``start()`` spawns ``concurrency`` children. Each imports the task modules *by name*
(the same list the worker was started with), answers "ready", then loops: read a
request, run it, write the outcome. Both ways the pipe carries msgpack bytes only —
``[task name, payload, job id, attempt]`` down (the job's packed arguments, as they came
from the broker: only the child unpacks them), ``[ok, packed result, error, retry_delay,
reject]`` up, after any number of progress reports ``[{value, message, meta}]`` (a thread
of the child sends the job's latest at most every ``PROGRESS_INTERVAL``) — so no callable
and no pickle of job data ever crosses it.

``run()`` takes an idle child, sends the request and waits (in a small thread pool,
one thread per slot, so the wait is portable) for the answer. If the job outlives
its timeout the child gets SIGTERM, then SIGKILL after ``kill_grace`` seconds, and
the result is a ``TimeoutError``. If a child dies on its own (``os._exit``, a
segfault, the OOM killer) the result is ``WorkerCrashed`` (retryable). Either way a
fresh child is spawned in the background and joins the idle set once ready.

Children start with the ``spawn`` context by default: measured here, a spawned child
is ready in ~70 ms against ~40 ms for ``forkserver`` — a difference paid only at
start and on replacement — while spawn works on every platform and shares no global
server state. ``fork`` is not offered: forking a process that runs threads and an
event loop can deadlock the child.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import multiprocessing.util
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from contextlib import suppress
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any

import msgpack

from conveyor.errors import ConfigError
from conveyor.limits import MAX_RESULT, MAX_TRACEBACK, PROGRESS_INTERVAL
from conveyor.worker import execute
from conveyor.worker.execute import RunRequest, RunResult
from conveyor.worker.progress import CurrentJob
from conveyor.worker.tasks import TaskRegistry, load_tasks

log = logging.getLogger("conveyor.worker")

CONTEXTS = ("spawn", "forkserver")
_STOP_WAIT = 5.0  # seconds to wait for a SIGKILLed child to be reaped
_MAX_REPLY = MAX_RESULT + 2 * MAX_TRACEBACK + 64 * 1024  # result + capped error + framing


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class _ChildReporter:
    """A child's progress reports: a thread sends the running job's latest state at most
    every PROGRESS_INTERVAL, and the last one goes before the job's outcome (one lock
    keeps the two writers of the pipe apart)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.job: CurrentJob | None = None
        threading.Thread(target=self._loop, name="conveyor-progress", daemon=True).start()

    def start(self, job_id: str, task: str, attempt: int) -> CurrentJob:
        job = CurrentJob(job_id, task, attempt, self.wake.set)
        with self.lock:
            self.job = job
        return job

    def _loop(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            with self.lock:
                self._send_latest()
            time.sleep(PROGRESS_INTERVAL)  # the throttle: one report per interval at most

    def _send_latest(self) -> None:
        state = self.job.take() if self.job is not None else None
        if state is not None:
            with suppress(OSError):
                self.conn.send_bytes(_pack([state]))

    def finish(self, outcome: bytes) -> None:
        with self.lock:
            self._send_latest()
            self.job = None
            self.conn.send_bytes(outcome)


def _child_main(conn: Connection, modules: list[str], sys_path: list[str]) -> None:
    """A child's whole life: import the task modules, then serve requests until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the worker to handle
    sys.path[:] = sys_path
    try:
        registry = load_tasks(modules)
    except BaseException as exc:  # any import failure goes back to the parent
        conn.send_bytes(_pack([False, "".join(traceback.format_exception(exc))]))
        return
    conn.send_bytes(_pack([True, None]))
    reporter = _ChildReporter(conn)
    while True:
        try:
            name, payload, job_id, attempt = _unpack(conn.recv_bytes())
        except (EOFError, OSError):
            return  # the pool closed our pipe (or died): time to go
        definition = registry.get(name)
        if definition is None:
            outcome = execute.unknown_task(name)
        else:
            current = reporter.start(job_id, name, attempt)
            outcome = execute.run_sync(definition, payload, current)
        try:
            reporter.finish(
                _pack(
                    [outcome.ok, outcome.result, outcome.error, outcome.retry_delay, outcome.reject]
                )
            )
        except OSError:
            return  # the pool is gone


def _decode(data: bytes) -> RunResult:
    ok, result, error, retry_delay, reject = _unpack(data)
    return RunResult(ok=ok, result=result, error=error, retry_delay=retry_delay, reject=reject)


def _round_trip(conn: Connection, payload: bytes, current: CurrentJob | None = None) -> bytes:
    """Send a job, hand its progress reports (one-element arrays) to ``current``, and
    return the outcome's bytes."""
    conn.send_bytes(payload)
    while True:
        data = conn.recv_bytes(_MAX_REPLY)  # a longer reply is an OSError: the child is replaced
        if data[:1] != b"\x91":  # not a progress report: the outcome
            return data
        (state,) = _unpack(data)
        if current is not None and isinstance(state, dict):
            current.put(state)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        with suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


def _kill_at_exit(children: set[_Child]) -> None:
    """Interpreter exit without close(): kill the children so exit does not wait on them."""
    for child in list(children):
        with suppress(Exception):
            if child.process.exitcode is None:
                child.process.kill()
                child.process.join(1.0)


class _Child:
    """One child process and our end of its pipe."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.pid = process.pid
        self.conn = conn
        self.exitcode: int | None = None  # kept once stopped (the process object is closed)
        self.pending: concurrent.futures.Future[bytes] | None = None  # a read in flight
        self.stopping: asyncio.Task[None] | None = None


class ProcessPool:
    """``concurrency`` child processes that import ``modules`` and run one job each at a time.

    Timeouts kill the child (SIGTERM, then SIGKILL after ``kill_grace``); a child that
    dies is reported as ``WorkerCrashed``; both are replaced. :meth:`cancel` cannot stop
    a job in a child and returns False (the runner marks the job cancelled at report).
    """

    kind = "process"

    def __init__(
        self,
        registry: TaskRegistry,
        concurrency: int,
        modules: Sequence[str],
        *,
        context: str = "spawn",
        kill_grace: float = 1.0,
        start_timeout: float = 60.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {', '.join(CONTEXTS)}, not {context!r}")
        self.registry = registry
        self.concurrency = concurrency
        self.modules = list(modules)
        self.kill_grace = kill_grace
        self.start_timeout = start_timeout
        self._ctx: SpawnContext | ForkServerContext = (
            multiprocessing.get_context("spawn")
            if context == "spawn"
            else multiprocessing.get_context("forkserver")
        )
        self._idle: asyncio.Queue[_Child | None] = asyncio.Queue()
        self._children: set[_Child] = set()  # every child not yet fully stopped
        self._replacing: set[asyncio.Task[None]] = set()
        self._running: set[asyncio.Future[bytes]] = set()
        self._wanting = 0  # run() calls waiting for an idle child
        self._io: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = asyncio.Event()
        self._finalizer = multiprocessing.util.Finalize(
            self, _kill_at_exit, args=(self._children,), exitpriority=10
        )

    def pids(self) -> list[int]:
        """Process ids of the live children (for tests and monitoring)."""
        return sorted(c.pid for c in self._children if c.pid and c.process.exitcode is None)

    async def start(self) -> None:
        self._io = concurrent.futures.ThreadPoolExecutor(
            self.concurrency, thread_name_prefix="conveyor-process"
        )
        spawned = await asyncio.gather(
            *(self._spawn() for _ in range(self.concurrency)), return_exceptions=True
        )
        for outcome in spawned:
            if isinstance(outcome, BaseException):
                await self.close(wait=False)
                raise outcome
        for child in spawned:
            assert isinstance(child, _Child)
            self._idle.put_nowait(child)

    async def _spawn(self) -> _Child:
        """Start one child and wait until it has imported the task modules."""
        assert self._io is not None
        ours, theirs = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_child_main,
            args=(theirs, self.modules, list(sys.path)),
            name="conveyor-task-process",
        )
        try:
            process.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        child = _Child(process, ours)
        self._children.add(child)
        try:
            child.pending = self._io.submit(ours.recv_bytes, _MAX_REPLY)
            ready, detail = _unpack(
                await asyncio.wait_for(asyncio.wrap_future(child.pending), self.start_timeout)
            )
        except BaseException as exc:
            await asyncio.shield(self._stop(child))
            if isinstance(exc, EOFError | OSError):
                raise RuntimeError(
                    f"worker process {child.pid} died while starting "
                    f"({_describe_exit(child.exitcode)})"
                ) from exc
            if isinstance(exc, TimeoutError):
                raise RuntimeError(
                    f"worker process {child.pid} did not import {self.modules} within "
                    f"{self.start_timeout:g}s"
                ) from exc
            raise
        child.pending = None
        if not ready:
            await asyncio.shield(self._stop(child))
            raise ConfigError(f"a worker process could not import the task modules:\n{detail}")
        return child

    async def run(self, job: RunRequest) -> RunResult:
        if self._closed.is_set() or self._io is None:
            raise RuntimeError("process pool is not running (start() it; not after close())")
        definition = self.registry.get(job.task)
        if definition is None:
            return execute.unknown_task(job.task)
        timeout = execute.effective_timeout(job.timeout, definition.timeout)
        current = job.current
        payload = _pack(
            [job.task, job.payload, job.job_id, current.attempt if current is not None else 1]
        )
        self._wanting += 1
        try:
            child = await self._idle.get()
        finally:
            self._wanting -= 1
        if child is None or self._closed.is_set():
            if child is not None:
                self._idle.put_nowait(child)
            raise RuntimeError("process pool closed while the job waited for a process")
        return await self._run_in(child, payload, timeout, current)

    async def _run_in(
        self, child: _Child, payload: bytes, timeout: float, current: CurrentJob | None = None
    ) -> RunResult:
        assert self._io is not None
        child.pending = self._io.submit(_round_trip, child.conn, payload, current)
        future = asyncio.wrap_future(child.pending)
        self._running.add(future)
        try:
            data = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._replace(child)
            return execute.timed_out(timeout, f"worker process {child.pid} was killed")
        except (EOFError, OSError):
            if self._closed.is_set():
                return execute.failure(execute.WORKER_SHUTDOWN, "pool closed while job ran")
            code = await self._reap(child.process, 1.0)
            self._replace(child)
            return execute.failure(
                execute.WORKER_CRASHED,
                f"worker process {child.pid} died while running the job ({_describe_exit(code)})",
            )
        except BaseException:
            self._replace(child)  # cancelled from outside: the child's state is unknown
            raise
        finally:
            self._running.discard(future)
        child.pending = None
        self._idle.put_nowait(child)
        return _decode(data)

    def cancel(self, job_id: str) -> bool:
        """A job in a child process cannot be cancelled cooperatively: always False."""
        return False

    def _replace(self, child: _Child) -> None:
        """Stop ``child`` and spawn a successor in the background."""
        if self._closed.is_set():
            self._stop(child)  # close() waits for it: the child stays in _children till then
            return
        task = asyncio.ensure_future(self._replace_now(child))
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _replace_now(self, child: _Child) -> None:
        await asyncio.shield(self._stop(child))
        delay = 0.5
        while not self._closed.is_set():
            try:
                successor = await self._spawn()
            except Exception as exc:
                log.error("could not start a worker process (retry in %.1fs): %s", delay, exc)
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), delay)
                delay = min(delay * 2, 30.0)
                continue
            if self._closed.is_set():
                await asyncio.shield(self._stop(successor))
            else:
                self._idle.put_nowait(successor)
            return

    @staticmethod
    async def _reap(process: BaseProcess, wait: float) -> int | None:
        """Poll until ``process`` has exited (or ``wait`` seconds pass); its exit code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        step = 0.002
        while process.exitcode is None and loop.time() < deadline:
            await asyncio.sleep(step)
            step = min(step * 2, 0.05)
        return process.exitcode

    def _stop(self, child: _Child, graceful: bool = False) -> asyncio.Task[None]:
        """Stop ``child`` once, however many ask; returns the (shared) stopping task."""
        if child.stopping is None:
            child.stopping = asyncio.ensure_future(self._stop_now(child, graceful))
        return child.stopping

    async def _stop_now(self, child: _Child, graceful: bool) -> None:
        process = child.process
        if graceful and child.pending is None:
            child.conn.close()  # EOF: the child's loop ends and it exits by itself
            await self._reap(process, self.kill_grace)
        if process.exitcode is None:
            process.terminate()
            await self._reap(process, self.kill_grace)
        if process.exitcode is None:
            process.kill()
            await self._reap(process, _STOP_WAIT)
        if child.pending is not None:
            # The reader thread wakes with EOF now that the child is gone; only then is it
            # safe to close the pipe (closing under a blocked read could recycle the fd).
            with suppress(Exception):  # EOFError, OSError or TimeoutError: all fine here
                await asyncio.wait_for(asyncio.wrap_future(child.pending), _STOP_WAIT)
        if child.pending is None or child.pending.done():
            child.conn.close()
        child.exitcode = process.exitcode
        if process.exitcode is not None:
            process.close()
        else:
            log.error("worker process %s survived SIGKILL; leaving it", child.pid)
        self._children.discard(child)

    async def close(self, wait: bool = True) -> None:
        """Stop the children: with ``wait`` after the running jobs finish; else kill them."""
        if self._closed.is_set():
            return
        self._closed.set()
        if wait and self._running:
            await asyncio.wait(set(self._running))
        for _ in range(self._wanting):  # wake the run() calls waiting for a child
            self._idle.put_nowait(None)
        if self._replacing:
            await asyncio.wait(set(self._replacing))
        stops = [self._stop(child, graceful=wait) for child in list(self._children)]
        if stops:
            await asyncio.wait(stops)
        if self._io is not None:
            self._io.shutdown(wait=False, cancel_futures=True)
        self._finalizer.cancel()
