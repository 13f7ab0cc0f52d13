"""The SQLite engine under pressure: a full disk, a deep queue, big results, heavy reads,
a long history at start-up, and who may read its files."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from conveyor import lifecycle
from conveyor.errors import ConfigError, StoreUnavailable
from conveyor.job import JobRecord, JobState
from conveyor.lifecycle import Outcome
from conveyor.protocol.payload import pack, pack_call
from conveyor.stores import SqliteStore
from conveyor.stores.base import Claimant, JobFilter
from conveyor.stores.sql import sqlite_writer
from conveyor.stores.sql.sqlite_jobs import list_jobs

T0 = 1_700_000_000.0
Reopen = Callable[..., Awaitable[SqliteStore]]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outside-home" / "conveyor.db"


@pytest.fixture
async def reopen(path: Path) -> AsyncIterator[Reopen]:
    opened: list[SqliteStore] = []

    async def _open(now: float = T0, **kwargs: int) -> SqliteStore:
        store = SqliteStore(f"sqlite:///{path}", **kwargs)
        opened.append(store)
        await store.open(now)
        return store

    yield _open
    for store in opened:
        with contextlib.suppress(Exception):
            await store.close()


def job(job_id: str, size: int = 0, **fields: object) -> JobRecord:
    payload = pack_call(["x" * size] if size else [], {})
    return JobRecord(id=job_id, task="t", payload=payload, **fields)  # type: ignore[arg-type]


async def insert(store: SqliteStore, *jobs: JobRecord, now: float = T0) -> None:
    await store.job_insert_many([lifecycle.born(j, now) for j in jobs])


async def claim(store: SqliteStore, limit: int, now: float = T0) -> list[JobRecord]:
    return await store.job_claim(Claimant("w1", ("default",), {"t"}), limit, 30.0, now)


async def complete(store: SqliteStore, jobs: list[JobRecord], result: object = None) -> None:
    outcomes = [Outcome(id=j.id, lease=j.lease or 0, ok=True, result=pack(result)) for j in jobs]
    await store.job_apply(
        [lifecycle.report(j, o, T0 + 1) for j, o in zip(jobs, outcomes, strict=False)]
    )


# -- a full disk --------------------------------------------------------------------------------
async def _fill_up(store: SqliteStore, path: Path) -> None:
    """Make the database unable to grow, which gives SQLITE_FULL exactly as a full disk
    does; a ballast table written by another process holds the room that comes back."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("CREATE TABLE ballast (data BLOB)")
        other.executemany("INSERT INTO ballast VALUES (?)", [(b"\0" * 4000,) for _ in range(300)])

    def cap(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")

    await store._writer.call(cap)


def _free_space(path: Path) -> None:
    """Room comes back: the ballast goes (its pages are free for the broker to reuse)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=10)) as other:
        other.execute("DROP TABLE ballast")


async def test_a_full_disk_is_named_logged_once_and_survived(
    reopen: Reopen, path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sqlite_writer, "RETRY_AFTER_ERROR", 0.001)
    monkeypatch.setattr(sqlite_writer, "RETRY_AFTER_ERROR_MAX", 0.001)
    store = await reopen()
    await insert(store, job("before"))
    await _fill_up(store, path)
    caplog.set_level(logging.WARNING, logger="conveyor.store")
    big = [job(f"big-{i}", size=4000) for i in range(50)]
    with pytest.raises(StoreUnavailable) as refused:
        await insert(store, *big)
    assert refused.value.code == "store_unavailable"
    assert "disk full" in refused.value.message and "same job ids is safe" in refused.value.message
    health = store.health
    assert health["writable"] is False and "disk full" in (health["error"] or "")
    # the writer keeps retrying, and says so once, not each time
    for _ in range(20):
        with pytest.raises(StoreUnavailable):
            await store._writer.durable()  # one more round of the kept batch
    assert store.health["failed_attempts"] >= 20
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "disk full" in errors[0].getMessage()
    assert "Traceback" not in caplog.text
    # reads keep working meanwhile, from what is committed
    before = await store.job_get("before")
    assert before is not None and before.state is JobState.QUEUED
    listed = await store.job_list(JobFilter(), limit=100)
    assert "before" in [j.id for j in listed.jobs]

    await asyncio.to_thread(_free_space, path)
    while True:  # the kept batch goes in by itself once there is room
        try:
            await store._writer.durable()
            break
        except StoreUnavailable:
            continue
    assert store.health["writable"] is True
    assert any("writes again" in r.getMessage() for r in caplog.records)
    await store.close()
    store = await reopen()
    assert len(await store.job_get_many([j.id for j in big])) == 50  # refused, yet stored


# -- files --------------------------------------------------------------------------------------
async def test_the_database_and_its_wal_are_owner_only(reopen: Reopen, path: Path) -> None:
    store = await reopen()
    await insert(store, job("a"))
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.lock")):
        assert name.exists(), name
        assert stat.S_IMODE(name.stat().st_mode) == 0o600, name
    await store.close()
    os.chmod(path, 0o644)  # made by an older version, or by hand
    store = await reopen()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_one_broker_per_database(reopen: Reopen) -> None:
    await reopen()
    with pytest.raises(ConfigError, match="in use by another process"):
        await reopen()


# -- memory -------------------------------------------------------------------------------------
async def test_a_deep_queue_keeps_only_index_entries(reopen: Reopen) -> None:
    store = await reopen(resident=10)
    await insert(store, *(job(f"j{i:03}", size=100) for i in range(300)))
    assert len(store.live.jobs) == 10  # the oldest ten: they are claimed first
    assert sorted(store.live.jobs) == [f"j{i:03}" for i in range(10)]
    assert (await store.stats())["states"]["queued"] == 300
    taken = [j.id for j in await claim(store, 100)]
    assert taken == [f"j{i:03}" for i in range(100)]  # FIFO, read back in one go
    held = await store.job_get("j250")
    assert held is not None and held.state is JobState.QUEUED and "j250" not in store.live.jobs


async def test_a_claim_deep_in_a_queue_reads_the_next_records_ahead(reopen: Reopen) -> None:
    store = await reopen(resident=10)
    await insert(store, *(job(f"j{i:03}") for i in range(300)))
    first = [j.id for j in await claim(store, 20)]
    assert first == [f"j{i:03}" for i in range(20)]
    ahead = [f"j{i:03}" for i in range(20, 30)]
    assert all(i in store.live.jobs for i in ahead)  # read with the claim, in order
    assert len(store.live.jobs) <= 20 + 10  # the claimed ones and the resident budget
    assert [j.id for j in await claim(store, 10)] == ahead
    assert (await store.stats())["states"]["queued"] == 270


async def test_the_recent_cache_is_bounded_in_bytes(reopen: Reopen) -> None:
    store = await reopen(recent_bytes=1_000_000)
    await insert(store, *(job(f"j{i}") for i in range(20)))
    jobs = await claim(store, 20)
    await complete(store, jobs, "r" * 200_000)  # 20 results of 200 KB
    assert len(store._recent) <= 5 and store._recent.bytes <= 1_000_000
    first = await store.job_get(jobs[0].id)  # read back from disk
    assert first is not None and first.state is JobState.COMPLETED


# -- start-up -----------------------------------------------------------------------------------
async def test_start_up_reads_the_stored_counts_not_the_history(reopen: Reopen, path: Path) -> None:
    store = await reopen()
    await insert(store, *(job(f"j{i}") for i in range(30)))
    await complete(store, await claim(store, 20))
    assert await store.dlq_purge(None) == 0
    expected = (await store.stats())["states"]
    await store.close()
    store = await reopen()
    assert (await store.stats())["states"] == expected
    await store.close()
    # Prove where the numbers come from: change the stored count, not the rows.
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE counts SET n = 1000000 WHERE state = 'completed'")
        conn.commit()
    store = await reopen()
    assert (await store.stats())["states"]["completed"] == 1_000_000


async def test_counts_stay_right_through_prune_and_purge(reopen: Reopen) -> None:
    store = await reopen()
    await insert(store, *(job(f"j{i}") for i in range(10)))
    await insert(store, *(job(f"d{i}", max_retries=0) for i in range(3)))
    claimed = await claim(store, 13)
    await complete(store, [j for j in claimed if j.id.startswith("j")])
    dead = [j for j in claimed if j.id.startswith("d")]
    fail = [Outcome(id=j.id, lease=j.lease or 0, ok=False, error={"type": "E"}) for j in dead]
    await store.job_apply([lifecycle.report(j, o, T0 + 1) for j, o in zip(dead, fail, strict=True)])
    assert await store.job_prune(T0 + 2) == 10
    assert await store.dlq_purge(["d0"]) == 1
    live_numbers = (await store.stats())["states"]
    assert (live_numbers["completed"], live_numbers["dead"]) == (0, 2)
    await store.close()
    store = await reopen()
    assert (await store.stats())["states"] == live_numbers


# -- reads --------------------------------------------------------------------------------------
async def test_reads_do_not_wait_for_the_writer(reopen: Reopen) -> None:
    store = await reopen(recent=0)
    await insert(store, *(job(f"j{i}") for i in range(5)))
    await complete(store, await claim(store, 5))
    release = threading.Event()
    stuck = asyncio.ensure_future(store._writer.call(lambda conn: release.wait(10)))
    try:
        done = await asyncio.wait_for(store.job_get("j0"), 5)  # on disk only
        assert done is not None and done.state is JobState.COMPLETED
        page = await asyncio.wait_for(store.job_list(JobFilter(queue="default")), 5)
        assert len(page.jobs) == 5
        assert not stuck.done()  # all of that while the writer was busy
    finally:
        release.set()
        await stuck


@pytest.mark.parametrize("column", ["state", "queue", "task", "worker", "priority", None], ids=str)
def test_every_listing_filter_has_an_index_and_needs_no_sort(
    path: Path, column: str | None
) -> None:
    from conveyor.stores.sql.sqlite_open import connect

    conn = connect(str(path), "normal")
    plans: list[str] = []
    try:
        terms = [] if column is None else [(f"{column} = ?", "x")]
        sql = "EXPLAIN QUERY PLAN SELECT rowid, payload FROM jobs"
        where = " AND ".join([t for t, _ in terms] + ["rowid < ?"])
        for row in conn.execute(
            f"{sql} WHERE {where} ORDER BY rowid DESC LIMIT 5", [v for _, v in terms] + [10]
        ):
            plans.append(row[-1])
        assert list_jobs(conn, terms, 5, 10, 0) == ([], None)  # the real query runs too
    finally:
        conn.close()
    plan = " | ".join(plans)
    assert "TEMP B-TREE" not in plan, plan
    if column is not None:
        assert f"INDEX jobs_{column} " in plan, plan
