"""Shared fixtures: a real broker on an ephemeral port, real workers, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.client import failover
from conveyor.client.aio import AsyncClient
from conveyor.config import ensure_broker_files
from conveyor.worker.runner import Worker
from conveyor.worker.tasks import TaskRegistry, load_tasks
from tests.flow.conftest import HERE as FLOW_TASKS
from tests.flow.conftest import MODULES as FLOW_MODULES


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    ensure_broker_files(path, now=time.time())
    return path


@pytest.fixture
def broker_config(home: Path) -> BrokerConfig:
    return BrokerConfig(port=0, store_url="memory://", home=home)


@pytest.fixture
async def broker(broker_config: BrokerConfig) -> AsyncIterator[Broker]:
    b = Broker(broker_config)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture
async def other(home: Path) -> AsyncIterator[Broker]:
    """A second broker of the same home (same CA and tokens), on a store of its own."""
    b = Broker(BrokerConfig(port=0, store_url="memory://", home=home))
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture
def first_address_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Failover rotations start at the first address given (not a random one)."""
    monkeypatch.setattr(failover, "first_index", lambda n: 0)


@pytest.fixture
async def http(broker: Broker, home: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An admin's HTTP client of the broker's API (a test's ``broker_config`` sets
    ``http_port=0``)."""
    assert broker.dashboard_url is not None, "start the broker with http_port=0"
    headers = {"Authorization": f"Bearer {(home / 'admin.token').read_text().strip()}"}
    async with httpx.AsyncClient(base_url=broker.dashboard_url, headers=headers) as client:
        yield client


@pytest.fixture
async def client(broker: Broker, home: Path) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(broker.url, home=home)
    await c.connect()
    try:
        yield c
    finally:
        await c.close()


StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker(broker: Broker, home: Path) -> AsyncIterator[StartWorker]:
    """Start in-process workers (real sockets); all are stopped at the end of the test."""
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(registry: TaskRegistry | None = None, **kwargs: Any) -> Worker:
        kwargs.setdefault("concurrency", 2)
        worker = Worker(
            registry=registry if registry is not None else load_tasks(["conveyor.examples"]),
            url=broker.url,
            home=home,
            **kwargs,
        )
        task = asyncio.get_running_loop().create_task(worker.run())
        running.append((worker, task))
        await asyncio.wait_for(worker.connected.wait(), 10)
        return worker

    yield start
    for worker, _ in running:
        worker.stop()
    for _, task in running:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


@pytest.fixture(scope="session")
def flow_registry() -> Iterator[TaskRegistry]:
    """The tasks of tests/flow/flow_tasks.py (gates, progress, workflow steps); their
    folder is on sys.path meanwhile, so a process pool's children import them too."""
    sys.path.insert(0, FLOW_TASKS)
    try:
        yield load_tasks(FLOW_MODULES)
    finally:
        sys.path.remove(FLOW_TASKS)
