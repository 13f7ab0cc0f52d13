"""WAL checkpoints on their own thread: no commit pays for one, and the WAL stays bounded."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor import lifecycle
from conveyor.job import JobRecord
from conveyor.protocol.payload import pack_call
from conveyor.stores import SqliteStore
from conveyor.stores.sql.sqlite_checkpoint import Checkpointer

T0 = 1_700_000_000.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(f"sqlite:///{tmp_path}/conveyor.db")
    await opened.open(T0)
    yield opened
    await opened.close()


def _checkpointer(store: SqliteStore) -> Checkpointer:
    assert store._checkpointer is not None
    return store._checkpointer


async def _insert(store: SqliteStore, *ids: str) -> None:
    jobs = [JobRecord(id=i, task="t", payload=pack_call([i], {})) for i in ids]
    await store.job_insert_many([lifecycle.born(j, T0) for j in jobs])


async def _next_checkpoint(checkpointer: Checkpointer) -> None:
    assert await asyncio.to_thread(checkpointer.ran.wait, 10), "no checkpoint ran"


async def test_the_writer_never_checkpoints_the_thread_does(store: SqliteStore) -> None:
    assert store._writer._conn is not None
    (auto,) = store._writer._conn.execute("PRAGMA wal_autocheckpoint").fetchone()
    assert auto == 0
    checkpointer = _checkpointer(store)
    checkpointer.ran.clear()
    for i in range(50):  # one commit each, as single submits make them
        await _insert(store, f"j{i}")
    await _next_checkpoint(checkpointer)
    assert checkpointer.checkpoints >= 1
    # everything committed so far is in the database file: a checkpoint finds nothing left
    with sqlite3.connect(store.path) as other:
        busy, frames, done = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and frames == done


async def test_a_wal_past_its_limit_is_emptied_and_nothing_is_lost(
    store: SqliteStore, tmp_path: Path
) -> None:
    checkpointer = _checkpointer(store)
    checkpointer._wal_limit = 1  # any WAL is too big
    await _insert(store, *(f"j{i}" for i in range(100)))
    # A checkpoint poked at open may be running still and end before the insert's commit
    # lands: wait for runs that began after it (each one poked, and waited for, here).
    for _ in range(3):
        checkpointer.ran.clear()
        checkpointer.poke()
        await _next_checkpoint(checkpointer)
        if os.stat(f"{store.path}-wal").st_size == 0:
            break
    assert checkpointer.truncations >= 1
    assert os.stat(f"{store.path}-wal").st_size == 0
    assert not store._writer._held.is_set()  # let go again
    await _insert(store, "after")
    assert (await store.stats())["states"]["queued"] == 101


async def test_while_held_commits_stay_off_the_loop(store: SqliteStore) -> None:
    threads: list[str] = []
    write = store._writer._write

    def spy(conn: sqlite3.Connection, batch: object) -> object:
        threads.append(threading.current_thread().name)
        return write(conn, batch)  # type: ignore[arg-type]

    store._writer._write = spy  # type: ignore[assignment]
    store._writer.hold(True)
    await _insert(store, "held")
    store._writer.hold(False)
    await _insert(store, "free")
    assert threads == ["conveyor-sqlite-writer", threading.current_thread().name]


async def test_close_stops_the_thread_and_the_data_stays(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/conveyor.db"
    first = SqliteStore(url)
    await first.open(T0)
    await _insert(first, "a", "b")
    thread = _checkpointer(first)._thread
    await first.close()
    assert thread is not None and not thread.is_alive()
    again = SqliteStore(url)
    await again.open(T0)
    try:
        assert {j.id for j in await again.job_get_many(["a", "b"])} == {"a", "b"}
    finally:
        await again.close()
