"""Large payloads on the SQLite engine: written once, in a file beside the database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from conveyor import lifecycle
from conveyor.job import JobRecord, JobState
from conveyor.lifecycle import Outcome
from conveyor.protocol.payload import pack, pack_call, unpack
from conveyor.stores import SqliteStore
from conveyor.stores.base import Claimant, JobFilter
from conveyor.stores.sql import sqlite_payloads
from conveyor.stores.sql.sqlite_open import parse_sqlite_url
from conveyor.stores.sql.sqlite_schema import MIGRATIONS, job_row

T0 = 1_700_000_000.0
W = ("default",), {"t"}
BIG = 200_000
Reopen = Callable[..., Awaitable[SqliteStore]]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/db/conveyor.db"


@pytest.fixture
async def reopen(url: str) -> AsyncIterator[Reopen]:
    opened: list[SqliteStore] = []

    async def _open(now: float = T0, **kwargs: int) -> SqliteStore:
        store = SqliteStore(url, **kwargs)
        opened.append(store)
        await store.open(now)
        return store

    yield _open
    for store in opened:
        await store.close()


def big_job(job_id: str, marker: bytes = b"") -> JobRecord:
    # random bytes: a slice of them found in a file can only have come from this payload
    data = marker + os.urandom(BIG)
    return JobRecord(id=job_id, task="t", payload=pack_call([data], {}))


async def insert(store: SqliteStore, *jobs: JobRecord) -> None:
    await store.job_insert_many([lifecycle.born(j, T0) for j in jobs])


async def run_to_completion(store: SqliteStore, job_id: str) -> JobRecord:
    (claimed,) = await store.job_claim(Claimant("w1", *W), 1, 30.0, T0)
    assert claimed.id == job_id and claimed.lease is not None
    outcome = Outcome(id=job_id, lease=claimed.lease, ok=True, result=pack(1))
    (done,) = await store.job_apply([lifecycle.report(claimed, outcome, T0 + 1)])
    assert done is not None and done.state is JobState.COMPLETED
    return done


def payload_files(url: str) -> list[Path]:
    directory = Path(f"{parse_sqlite_url(url)[0]}-payloads")
    return sorted(directory.iterdir()) if directory.exists() else []


def database_bytes(url: str) -> bytes:
    path = parse_sqlite_url(url)[0]
    return b"".join(Path(p).read_bytes() for p in (path, f"{path}-wal") if Path(p).exists())


@pytest.mark.parametrize("file_min", [sqlite_payloads.FILE_MIN, 1 << 30])
async def test_a_large_payload_is_written_once_across_submit_claim_and_complete(
    url: str, reopen: Reopen, file_min: int
) -> None:
    """With the file threshold below the payload, its bytes are written once (one file)
    and never reach the database or its WAL; with it above (the old layout), the same
    check finds them there: the test can fail."""
    store = await reopen(payload_file_min=file_min)
    job = big_job("a")
    await insert(store, job)
    await run_to_completion(store, "a")
    await store.flush()
    # short slices of the random part: a long one could straddle two overflow pages
    stored = database_bytes(url)
    samples = [job.payload[i : i + 64] for i in range(10_000, BIG, 20_000)]
    in_database = any(sample in stored for sample in samples)
    if file_min > BIG:
        assert in_database and store.payload_files.written == 0 and payload_files(url) == []
        return
    assert not in_database
    assert store.payload_files.written == 1
    (only,) = payload_files(url)
    assert only.read_bytes() == job.payload
    assert only.stat().st_mode & 0o077 == 0  # readable by the owner only, as the database


async def test_reads_that_need_a_file_payload_get_it(url: str, reopen: Reopen) -> None:
    """A job read back from disk (no record cached), a running job at a restart and a
    dead job for a retry all come with their payloads."""
    store = await reopen(recent=0, resident=0)
    a, b, c = big_job("a"), big_job("b"), big_job("c")
    await insert(store, a, b, c)
    assert [j.payload for j in await store.job_get_many(["a", "b"])] == [a.payload, b.payload]
    (claimed,) = await store.job_claim(Claimant("w1", *W), 1, 30.0, T0)
    assert claimed.payload == a.payload
    (second,) = await store.job_claim(Claimant("w1", *W), 1, 30.0, T0)
    assert second.lease is not None
    failed = Outcome(id="b", lease=second.lease, ok=False, error={"type": "E"}, reject=True)
    (dead,) = await store.job_apply([lifecycle.report(second, failed, T0 + 1)])
    assert dead is not None and dead.state is JobState.DEAD
    await store.close()

    again = await reopen(T0 + 2, recent=0, resident=0)
    running = await again.job_get("a")
    assert running is not None and running.payload == a.payload
    (from_dlq,) = await again.job_dead(["b"])
    assert from_dlq.payload == b.payload
    queued = await again.job_get("c")
    assert queued is not None and queued.payload == c.payload
    assert again.payload_files.written == 0  # reading never writes one again


async def test_reads_for_the_result_or_a_summary_leave_the_file_unread(
    reopen: Reopen, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await reopen(recent=0, resident=0)
    await insert(store, big_job("a"))
    await run_to_completion(store, "a")
    await store.flush()
    reads: list[str] = []
    real_read = store.payload_files.read
    monkeypatch.setattr(store.payload_files, "read", lambda name: reads.append(name) or b"")
    done = await store.job_get("a", payload=False)
    (many,) = await store.job_get_many(["a"], payload=False)
    (listed,) = (await store.job_list(JobFilter(), payload=False)).jobs
    assert listed.id == "a" and listed.state is JobState.COMPLETED
    assert done is not None and done.state is JobState.COMPLETED
    assert unpack(done.result or b"") == unpack(many.result or b"") == 1
    assert reads == []  # the result is in the row; the payload file was never opened
    monkeypatch.setattr(store.payload_files, "read", real_read)
    full = await store.job_get("a")
    assert full is not None and len(full.payload) > BIG
    (listed_full,) = (await store.job_list(JobFilter())).jobs  # LIST replies carry it
    assert listed_full.payload == full.payload


async def test_retention_and_dlq_purge_delete_the_files(url: str, reopen: Reopen) -> None:
    store = await reopen()
    await insert(store, big_job("done"), big_job("dead"))
    await run_to_completion(store, "done")
    (claimed,) = await store.job_claim(Claimant("w1", *W), 1, 30.0, T0)
    assert claimed.lease is not None
    failed = Outcome(id="dead", lease=claimed.lease, ok=False, error={"type": "E"}, reject=True)
    await store.job_apply([lifecycle.report(claimed, failed, T0 + 1)])
    assert len(payload_files(url)) == 2
    assert await store.job_prune(T0 + 2) == 1
    assert len(payload_files(url)) == 1
    assert await store.dlq_purge(None) == 1
    assert payload_files(url) == []


async def test_open_removes_the_files_no_row_names(url: str, reopen: Reopen) -> None:
    """What a crash leaves behind (a file whose row never committed) goes at the next
    open; the files rows name stay."""
    store = await reopen()
    await insert(store, big_job("a"))
    await store.close()
    (kept,) = payload_files(url)
    leftover = kept.with_name(sqlite_payloads.PayloadFiles.new_name())
    leftover.write_bytes(b"from a batch that never committed")
    assert len(payload_files(url)) == 2
    again = await reopen()
    assert payload_files(url) == [kept]
    job = await again.job_get("a")
    assert job is not None and job.payload == kept.read_bytes()


async def test_with_synchronous_full_the_file_is_fsynced_before_the_row_commits(
    url: str, reopen: Reopen, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    store = await reopen()  # creates the database
    await store.close()
    store = SqliteStore(f"{url}?synchronous=full")
    await store.open(T0)
    try:
        monkeypatch.setattr(sqlite_payloads.os, "fsync", fsync)
        await insert(store, big_job("a"))
        assert len(synced) >= 2  # the file, then its directory
        monkeypatch.setattr(sqlite_payloads.os, "fsync", real_fsync)
    finally:
        await store.close()


async def test_a_version_6_database_opens_and_keeps_its_payloads(tmp_path: Path) -> None:
    """Rows of the old layout keep their payloads in the row; they are read, claimed and
    completed as they are, and survive a restart."""
    path = tmp_path / "v6.db"
    old = big_job("old")
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for number, step in enumerate(MIGRATIONS[:6], start=1):
            step(conn)
            conn.execute(f"PRAGMA user_version = {number}")
        columns = [r[1] for r in conn.execute("PRAGMA table_info(jobs)")]
        assert "payload_file" not in columns
        born, _ = lifecycle.born(old, T0)
        row = job_row(born, 1)[: len(columns)]
        conn.execute(
            f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", row
        )
        conn.execute("INSERT INTO counts VALUES ('queued', 'default', 't', 5, 1)")
    url = f"sqlite:///{path}"
    store = SqliteStore(url)
    await store.open(T0)
    try:
        got = await store.job_get("old")
        assert got is not None and got.payload == old.payload
        done = await run_to_completion(store, "old")
        assert done.payload == old.payload
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
    store = SqliteStore(url)
    await store.open(T0 + 2)
    try:
        again = await store.job_get("old")
        assert again is not None and again.payload == old.payload
        assert unpack(again.result or b"") == 1
    finally:
        await store.close()
    assert payload_files(url) == []  # nothing was moved


KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    from conveyor import lifecycle
    from conveyor.job import JobRecord
    from conveyor.protocol.payload import pack_call
    from conveyor.stores import open_store

    async def main():
        store = open_store(sys.argv[1])
        await store.open(0.0)
        batch = 0
        while True:
            jobs = [
                lifecycle.born(JobRecord(
                    id=f"b{batch}-{i}", task="t",
                    payload=pack_call([f"b{batch}-{i}".encode() * 20_000], {})), 0.0)
                for i in range(4)
            ]
            await asyncio.gather(store.job_insert_many(jobs[:2]), store.job_insert_many(jobs[2:]))
            print(f"acked {batch}", flush=True)
            batch += 1

    asyncio.run(main())
    """
)


async def test_after_kill_9_every_committed_row_has_its_whole_payload(url: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, url], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 20
    try:
        while len(lines) < 30 and time.monotonic() < deadline:
            line = await asyncio.to_thread(proc.stdout.readline)
            if not line:
                break
            lines.append(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        rest, _ = await asyncio.to_thread(proc.communicate)
    lines.extend(rest.splitlines())
    acked = [int(line.split()[1]) for line in lines if line.startswith("acked")]
    assert len(acked) >= 30, "the writer process did not get going"

    path, _ = parse_sqlite_url(url)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM jobs WHERE payload_file IS NOT NULL")]
    assert set(ids) >= {f"b{batch}-{i}" for batch in acked for i in range(4)}
    store = SqliteStore(url)
    await store.open(1.0)
    try:
        jobs = await store.job_get_many(ids)
        assert len(jobs) == len(ids)
        for job in jobs:  # every committed row, acked or not
            assert job.payload == pack_call([job.id.encode() * 20_000], {})
        assert len(payload_files(url)) == len(ids)  # the killed batch's files were swept
    finally:
        await store.close()
