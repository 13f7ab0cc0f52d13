"""A store that cannot write (a full disk), seen from a live broker: clients get
``store_unavailable`` naming the cause, never ``internal``; the broker keeps serving;
what was refused but kept is stored, run and answered once the store recovers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from conveyor import AsyncClient, JobState
from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.errors import StoreUnavailable
from conveyor.stores import SqliteStore
from conveyor.stores.sql import sqlite_writer

if TYPE_CHECKING:
    from tests.conftest import StartWorker


@pytest.fixture
def broker_config(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BrokerConfig:
    monkeypatch.setattr(sqlite_writer, "RETRY_AFTER_ERROR", 0.005)
    monkeypatch.setattr(sqlite_writer, "RETRY_AFTER_ERROR_MAX", 0.005)
    return BrokerConfig(port=0, store_url=f"sqlite:///{tmp_path}/conveyor.db", home=home)


def _db(broker: Broker) -> Path:
    store = broker.store
    assert isinstance(store, SqliteStore)
    return Path(store.path)


async def fill_the_disk(broker: Broker) -> None:
    """SQLITE_FULL, as a full disk gives it; a ballast table holds the room to give back."""
    with contextlib.closing(sqlite3.connect(_db(broker), isolation_level=None)) as other:
        other.execute("CREATE TABLE ballast (data BLOB)")
        other.executemany("INSERT INTO ballast VALUES (?)", [(b"\0" * 4000,) for _ in range(300)])
    store = broker.store
    assert isinstance(store, SqliteStore)

    def cap(conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")

    await store._writer.call(cap)


def free_space(broker: Broker) -> None:
    with contextlib.closing(sqlite3.connect(_db(broker), timeout=10)) as other:
        other.execute("DROP TABLE ballast")


async def test_a_full_disk_is_a_clear_error_and_nothing_kept_is_lost(
    broker: Broker, client: AsyncClient, start_worker: StartWorker
) -> None:
    await fill_the_disk(broker)
    with pytest.raises(StoreUnavailable) as refused:
        await client.submit("reverse_string", data="ab" * 10_000, job_id="during-outage")
    assert refused.value.code == "store_unavailable"
    assert "disk full" in refused.value.message and "same job ids is safe" in refused.value.message

    stats = await client.stats()  # the broker still serves, and says what is wrong
    assert stats["store"]["writable"] is False and "disk full" in stats["store"]["error"]

    await asyncio.to_thread(free_space, broker)
    await start_worker()
    again = await client.submit("reverse_string", data="ab" * 10_000, job_id="during-outage")
    job = await again.wait(timeout=15)  # the kept job: same id, so no duplicate
    assert job.state is JobState.COMPLETED and await again.result() == "ba" * 10_000
    assert (await client.stats())["store"]["writable"] is True


class _Seen(logging.Handler):
    """Sets an event when a log line contains ``needle`` (the worker logs in-process)."""

    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle
        self.event = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.loop.call_soon_threadsafe(self.event.set)


async def test_a_result_reported_during_the_outage_is_acked_and_delivered_after(
    broker: Broker, client: AsyncClient, start_worker: StartWorker
) -> None:
    data = "ab" * 20_000  # its result needs room that is not there
    handle = await client.submit("reverse_string", data=data)  # stored before the disk fills
    await fill_the_disk(broker)
    seen = _Seen("store_unavailable")
    logging.getLogger("conveyor.worker").addHandler(seen)
    try:
        worker = await start_worker()
        waiting = asyncio.ensure_future(handle.wait(timeout=30))
        await asyncio.wait_for(seen.event.wait(), 15)  # the report was refused for now
        assert not waiting.done() and worker.stats.acked == 0
        await asyncio.to_thread(free_space, broker)
        job = await waiting  # published once it is durable
        assert job.state is JobState.COMPLETED and await handle.result() == data[::-1]
        await broker.wait_until(lambda: worker.stats.acked == 1, 15)
    finally:
        logging.getLogger("conveyor.worker").removeHandler(seen)
