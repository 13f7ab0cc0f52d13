"""The bench's own system: a broker and workers as child processes, in a throwaway home,
and what the scenarios share (progress bars, polling the broker, process memory)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from conveyor._compiled import compiled_modules
from conveyor.client.aio import AsyncClient

console = Console(stderr=True)
BATCH = 1000


class LocalSystem:
    """A broker (or several on one PostgreSQL store) and workers as child processes, in a
    throwaway home. With several brokers the workers are dealt out across them in turn
    and :attr:`url` (the producers' broker) is the first one's."""

    def __init__(
        self,
        store: str,
        workers: int,
        concurrency: int | None,
        pool: str | None,
        brokers: int = 1,
    ) -> None:
        # a PostgreSQL store gets a schema of its own for the run, dropped at the end
        self.store, self._drop_schema = _throwaway_schema(store)
        self.n_workers = workers
        self.concurrency = concurrency  # None: the worker's own default
        self.pool = pool
        self.queues = "default"
        self._tmp = tempfile.TemporaryDirectory(prefix="conveyor-bench-")
        self.home = Path(self._tmp.name)
        self.n_brokers = brokers
        self.url = ""
        self.urls: list[str] = []  # every broker's, the first one's is :attr:`url`
        self.broker: subprocess.Popen[str] | None = None
        self.more_brokers: list[subprocess.Popen[str]] = []
        self.workers: list[subprocess.Popen[str]] = []

    @property
    def store_url(self) -> str:
        """The store URL with ``{home}`` filled in."""
        return self.store.replace("{home}", str(self.home))

    @property
    def broker_pid(self) -> int:
        assert self.broker is not None, "the broker is not running"
        return self.broker.pid

    def start_broker(self, extra: Sequence[str] = ()) -> float:
        """Start the broker(s); the seconds from starting the first to its ready line."""
        took = 0.0
        self.urls = []
        for i in range(self.n_brokers):  # one after the other: the first makes the home
            proc, url, seconds = self._start_one(extra)
            self.urls.append(url)
            if i == 0:
                self.broker, self.url, took = proc, url, seconds
            else:
                self.more_brokers.append(proc)
        return took

    def _start_one(self, extra: Sequence[str]) -> tuple[subprocess.Popen[str], str, float]:
        started = time.perf_counter()
        cmd = [
            *(sys.executable, "-m", "conveyor", "broker", "--no-http", "--port", "0"),
            *("--store", self.store_url, "--home", str(self.home), "--log-level", "WARNING"),
            *extra,
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise click.ClickException("the bench broker exited early")
            found = re.search(r"broker ready on (conveyor://\S+)", line)
            if found:
                return proc, found.group(1), time.perf_counter() - started
        raise click.ClickException("the bench broker did not start")

    def start_workers(self, queues: str | None = None) -> None:
        """Start the worker processes (``conveyor.bench.tasks``) on ``queues``."""
        for i in range(self.n_workers):
            cmd = [
                *(sys.executable, "-m", "conveyor", "worker", "--tasks", "conveyor.bench.tasks"),
                *("--broker", self.urls[i % len(self.urls)], "--home", str(self.home)),
                *("--queues", queues or self.queues, "--name", f"bench-{i + 1}"),
                *("--log-level", "WARNING"),
            ]
            if self.concurrency is not None:
                cmd += ["--concurrency", str(self.concurrency)]
            if self.pool is not None:
                cmd += ["--pool", self.pool]
            self.workers.append(subprocess.Popen(cmd, text=True))

    def stop_workers(self) -> None:
        _stop(self.workers)
        self.workers = []

    def stop_broker(self) -> None:
        """Stop the broker(s) (SIGTERM: each flushes its store), keeping the home."""
        if self.broker is not None:
            _stop([self.broker, *self.more_brokers])
            self.broker, self.more_brokers = None, []

    def stop(self) -> None:
        self.stop_workers()
        self.stop_broker()
        self._tmp.cleanup()
        if self._drop_schema is not None:
            self._drop_schema()


def _throwaway_schema(store: str) -> tuple[str, Callable[[], None] | None]:
    """``postgresql://…?schema=bench`` → the same on ``bench_<random>``, and how to drop it
    (a run never measures, nor leaves behind, the jobs of another)."""
    if not store.startswith(("postgresql:", "postgres:")):
        return store, None
    from conveyor.stores.sql.pg_conn import DEFAULT_SCHEMA, parse_postgres_url

    conninfo, schema, _ = parse_postgres_url(store)
    run = f"{schema or DEFAULT_SCHEMA}_{secrets.token_hex(3)}"[:40]
    parts = urlsplit(store)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "schema"]
    url = urlunsplit(parts._replace(query=urlencode([*query, ("schema", run)])))

    def drop() -> None:
        import psycopg

        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{run}" CASCADE')

    return url, drop


def _stop(procs: Sequence[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


@contextlib.contextmanager
def progress(description: str, total: int) -> Iterator[Any]:
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.update(task, completed=n)


async def wait_completed(c: AsyncClient, target: int, update: Any, timeout: float = 600) -> None:
    """Watch the broker's completed count until it reaches ``target`` (cheap polling)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = (await c.stats(brief=True))["totals"]["completed"]
        update(done)
        if done >= target:
            return
        await asyncio.sleep(0.05)  # stats is a full snapshot: poll it gently
    raise click.ClickException(f"timed out waiting for {target} completions")


async def submit_all(c: AsyncClient, n: int, update: Any, task: str = "noop") -> None:
    sent = 0
    in_flight: set[asyncio.Task[Any]] = set()
    while sent < n:
        size = min(BATCH, n - sent)
        in_flight.add(asyncio.ensure_future(c.submit_many([(task, {})] * size)))
        sent += size
        if len(in_flight) >= 4:  # a few batches in flight hides the round trip
            done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for d in done:
                d.result()
            update(sent)
    for d in in_flight:
        await d
    update(sent)


async def wait_workers(c: AsyncClient, n: int, timeout: float = 120) -> None:
    """Wait until ``n`` workers are connected (fifty starting at once take a while)."""
    deadline = time.monotonic() + timeout
    while len((await c.stats())["workers"]) < n:
        if time.monotonic() > deadline:
            raise click.ClickException("workers did not connect")
        await asyncio.sleep(0.005)


async def wait_all_workers(system: LocalSystem, timeout: float = 120) -> None:
    """Wait until every broker of ``system`` has its share of the workers connected."""
    for i, url in enumerate(system.urls):
        share = len(range(i, system.n_workers, len(system.urls)))
        async with AsyncClient(url, home=str(system.home)) as c:
            await wait_workers(c, share, timeout)


def machine() -> dict[str, Any]:
    try:
        import uvloop

        loop = f"uvloop {getattr(uvloop, '__version__', '?')}"
    except ImportError:
        loop = "asyncio"
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loop": loop,
        # the modules this interpreter (and so the bench's broker and workers, started with
        # it) imports compiled with mypyc: `make compiled`
        "compiled": compiled_modules(),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """The resident memory of a process (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise click.ClickException(f"no VmRSS for process {pid}")
