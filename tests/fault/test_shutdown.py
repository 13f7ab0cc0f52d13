"""Graceful stops: a worker drains on SIGTERM; the broker says goodbye on stop."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from conveyor import AsyncClient, JobState
from conveyor.broker.app import Broker
from conveyor.worker.tasks import load_tasks
from tests.fault.helpers import REPO, spawn_worker

pytestmark = pytest.mark.slow


async def test_worker_sigterm_finishes_running_and_releases_prefetched(
    broker: Broker,
    client: AsyncClient,
    home: Path,
    start_worker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = tmp_path / "started.txt"
    monkeypatch.setenv("CONVEYOR_TEST_RECORD", str(tmp_path / "stayer.txt"))
    leaving = await spawn_worker(
        *(broker, home, "leaving", "--concurrency", "2", "--prefetch", "4"),
        *("--tasks", "tests.fault.recording_tasks"),
        env={"CONVEYOR_TEST_RECORD": str(started), "PYTHONPATH": str(REPO)},
    )
    handles = await client.submit_many(
        [("record_slow", {"i": i, "seconds": 0.4}) for i in range(6)]
    )
    while not started.exists() or len(started.read_text().split()) < 2:
        await asyncio.sleep(0.01)  # until the worker has started its two jobs
    leaving.signal(signal.SIGTERM)
    assert await asyncio.wait_for(leaving.proc.wait(), 15) == 0
    stayer = await start_worker(load_tasks(["tests.fault.recording_tasks"]), concurrency=4)
    jobs = [await h.wait(timeout=15) for h in handles]
    assert all(j.state is JobState.COMPLETED for j in jobs)
    by_leaver = [j for j in jobs if j.worker != stayer.worker_id]
    assert len(by_leaver) == 2  # the two it was running when told to stop
    released = [j for j in jobs if j.worker == stayer.worker_id]
    assert len(released) == 4
    for job in released:  # given back unstarted: no attempt was spent, nothing "requeued"
        assert job.attempts == 1
        assert not [e for e in job.events if e["event"] == "requeued"]


async def test_broker_stop_says_goodbye_and_clients_reconnect(
    broker: Broker, client: AsyncClient, home: Path
) -> None:
    handle = await client.submit("noop")
    conn = client._transport._conn  # the connection itself: to watch its pushed frames
    assert conn is not None
    goodbye: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
    conn.on_push = lambda f: goodbye.done() or goodbye.set_result(f)  # type: ignore[func-returns-value]
    await broker.stop()
    frame = await asyncio.wait_for(goodbye, 5)
    assert frame == {"t": "goodbye", "reason": "shutting down"}
    await asyncio.wait_for(conn.closed.wait(), 5)
    # a new broker on the same port: the client reconnects on its own and carries on
    restarted = Broker(broker.config.__class__(**{**_fields(broker), "port": broker.port}))
    await restarted.start()
    try:
        again = await client.submit("noop")
        assert (await again.get()).state is JobState.QUEUED
        assert handle.id != again.id
    finally:
        await restarted.stop()
        broker.stop = _noop  # type: ignore[method-assign]  # the fixture must not stop it twice


async def _noop() -> None:
    return None


def _fields(broker: Broker) -> dict[str, object]:
    cfg = broker.config
    return {name: getattr(cfg, name) for name in cfg.__dataclass_fields__}
