"""What only the SQLite engine promises: restarts, group commit, kill -9, its URL."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from conveyor.errors import ConfigError
from conveyor.job import Job, JobState
from conveyor.stores import (
    MemoryStore,
    SqliteStore,
    default_store_url,
    open_store,
)
from conveyor.stores import sqlite as sqlite_engine
from conveyor.stores.base import Claimant, Outcome
from conveyor.stores.sql import sqlite_writer
from conveyor.stores.sql.sqlite_jobs import MIGRATIONS
from conveyor.stores.sqlite import parse_sqlite_url
from conveyor.validation import JobSpec

T0 = 1_700_000_000.0
W = ("default",), {"t"}
Reopen = Callable[..., Awaitable[SqliteStore]]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/db/conveyor.db"


@pytest.fixture
async def reopen(url: str) -> AsyncIterator[Reopen]:
    """Open a store on the test's database; every store opened is closed at the end."""
    opened: list[SqliteStore] = []

    async def _open(now: float = T0, **kwargs: int) -> SqliteStore:
        store = SqliteStore(url, **kwargs)
        opened.append(store)
        await store.open(now)
        return store

    yield _open
    for store in opened:
        await store.close()


async def claim(store: SqliteStore, worker: str, limit: int, now: float = T0) -> list[Job]:
    return await store.job_claim(Claimant(worker, *W), limit, 30.0, now)


def ok(job: Job, **fields: object) -> Outcome:
    assert job.lease is not None
    return Outcome(id=job.id, lease=job.lease, ok=True, **fields)  # type: ignore[arg-type]


# -- restarts -----------------------------------------------------------------------------------
async def test_acknowledged_work_survives_a_restart(reopen: Reopen) -> None:
    store = await reopen()
    specs = [
        JobSpec(task="t", id="done", args=[1]),
        JobSpec(task="t", id="dead"),
        JobSpec(task="t", id="running", kwargs={"x": [1, 2]}),
        JobSpec(task="t", id="later", eta=T0 + 3600),
        JobSpec(task="t", id="waiting", unique_key="u1"),
    ]
    await store.job_insert_many(specs, T0)
    done, dead, running = await claim(store, "w1", 3)
    error = {"type": "KeyError", "message": "x", "traceback": "tb"}
    await store.job_report_many(
        [
            ok(done, result={"r": [1, 2.5, "s"]}),
            Outcome(dead.id, dead.lease or 0, False, error=error, reject=True),
        ],
        T0 + 1,
    )
    before = await store.stats()
    await store.close()

    store = await reopen(T0 + 10)
    after = await store.stats()
    assert after["totals"] == {**before["totals"], "requeued": 1}
    assert after["states"] == {**before["states"], "running": 0, "queued": 2}
    got_done = await store.job_get("done")
    assert got_done is not None
    assert (got_done.state, got_done.result, got_done.args) == (
        JobState.COMPLETED,
        {"r": [1, 2.5, "s"]},
        [1],
    )
    got_running = await store.job_get(running.id)
    assert got_running is not None
    assert (got_running.state, got_running.kwargs) == (JobState.QUEUED, {"x": [1, 2]})
    got_later = await store.job_get("later")
    assert got_later is not None and got_later.state is JobState.SCHEDULED
    assert await store.job_next_eta() == T0 + 3600
    # the unique key is live again, and a client id is still idempotent
    dup, again = await store.job_insert_many(
        [JobSpec(task="t", unique_key="u1"), JobSpec(task="t", id="done")], T0 + 11
    )
    assert (dup.created, dup.job.id, again.created) == (False, "waiting", False)
    # the dead job can be retried after the restart
    assert await store.dlq_retry(None, T0 + 12) == 1
    retried = await store.job_get("dead")
    assert retried is not None and retried.state is JobState.QUEUED
    assert retried.error == error


async def test_running_jobs_are_requeued_at_restart(reopen: Reopen) -> None:
    store = await reopen()
    await store.job_insert_many([JobSpec(task="t", id=f"j{i}") for i in range(3)], T0)
    claimed = await claim(store, "w1", 2)
    await store.close()

    store = await reopen(T0 + 5)
    jobs = [await store.job_get(j.id) for j in claimed]
    for job in jobs:
        assert job is not None
        assert job.state is JobState.QUEUED
        assert job.events[-1] == {
            "event": "requeued",
            "at": T0 + 5,
            "worker": "w1",
            "reason": "broker restart",
        }
    assert (await store.stats())["totals"]["requeued"] == 2


async def test_open_returns_the_requeued_jobs(url: str) -> None:
    store = SqliteStore(url)
    assert await store.open(T0) == []
    await store.job_insert_many([JobSpec(task="t", id="a"), JobSpec(task="t", id="b")], T0)
    await claim(store, "w1", 1)
    await store.close()
    store = SqliteStore(url)
    requeued = await store.open(T0 + 1)
    try:
        assert [(j.id, j.state, j.events[-1]["reason"]) for j in requeued] == [
            ("a", JobState.QUEUED, "broker restart")
        ]
        # a lease handed out before the restart can never match one handed out after
        (job,) = await claim(store, "w2", 1, T0 + 2)
        assert job.id == "a"
        assert job.lease is not None and job.lease > 1 << 32
    finally:
        await store.close()


async def test_order_survives_a_restart(reopen: Reopen) -> None:
    store = await reopen()
    specs = [JobSpec(task="t", id=i, priority=1 if i == "d" else 5) for i in "abcde"]
    await store.job_insert_many(specs, T0)
    assert [j.id for j in await claim(store, "w1", 2)] == ["d", "a"]
    assert [j.id for j in await claim(store, "w2", 2)] == ["b", "c"]
    await store.job_requeue_worker("w1", "worker lost", T0 + 1)  # d, a: front of their priority
    await store.close()

    store = await reopen(T0 + 2)
    # b, c were running: front of their priority, in their old order, before a
    order = [j.id for j in await claim(store, "w3", 10, T0 + 3)]
    assert order == ["d", "b", "c", "a", "e"]


async def test_finished_jobs_leave_memory(reopen: Reopen) -> None:
    store = await reopen(recent=10)
    await store.job_insert_many([JobSpec(task="t") for _ in range(100)], T0)
    jobs = await claim(store, "w1", 100)
    await store.job_report_many([ok(j, result=i) for i, j in enumerate(jobs)], T0 + 1)
    assert len(store._jobs) == 0
    assert len(store._recent) == 10
    first = await store.job_get(jobs[0].id)  # read back from disk
    assert first is not None and first.result == 0
    assert len(await store.job_list(state="completed", limit=1000)) == 100
    assert await store.job_prune(T0 + 2) == 100
    assert await store.job_get(jobs[0].id) is None
    assert await store.job_get(jobs[-1].id) is None
    assert (await store.stats())["states"]["completed"] == 0


async def test_prune_removes_the_rows(url: str, reopen: Reopen) -> None:
    store = await reopen()
    await store.job_insert_many([JobSpec(task="t") for _ in range(30)], T0)
    jobs = await claim(store, "w1", 20)
    await store.job_report_many([ok(j) for j in jobs], T0 + 1)
    assert await store.job_prune(T0 + 2) == 20
    await store.close()
    path, _ = parse_sqlite_url(url)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
    assert rows == [("queued", 10)]


# -- group commit -------------------------------------------------------------------------------
async def test_group_commit_batches_concurrent_inserts(reopen: Reopen) -> None:
    store = await reopen()
    start = store.commits
    calls = [[JobSpec(task="t") for _ in range(10)] for _ in range(500)]
    results = await asyncio.gather(*(store.job_insert_many(c, T0) for c in calls))
    commits = store.commits - start
    assert sum(len(r) for r in results) == 5000
    print(f"{commits} commits for 500 acknowledged calls")
    assert commits <= 50, f"{commits} commits for 500 acknowledged calls"
    assert (await store.stats())["states"]["queued"] == 5000
    await store.close()
    store = await reopen()
    assert (await store.stats())["states"]["queued"] == 5000


async def test_reads_see_writes_not_yet_committed(reopen: Reopen) -> None:
    store = await reopen()
    await store.job_insert_many([JobSpec(task="t", id="a")], T0)
    await claim(store, "w1", 1)  # staged, not awaited
    listed = await store.job_list()
    assert [(j.id, j.state) for j in listed] == [("a", JobState.RUNNING)]


KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from conveyor.stores import open_store
    from conveyor.validation import JobSpec

    async def main():
        store = open_store(sys.argv[1])
        await store.open(0.0)
        batch = 0
        while True:
            specs = [JobSpec(task="t", id=f"b{batch}-{i}") for i in range(50)]
            await asyncio.gather(
                store.job_insert_many(specs[:25], float(batch)),
                store.job_insert_many(specs[25:], float(batch)),
            )
            print(f"acked {batch}", flush=True)
            batch += 1

    asyncio.run(main())
    """
)


async def test_acknowledged_inserts_survive_kill_9(url: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, url], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 20
    try:
        while len(lines) < 40 and time.monotonic() < deadline:
            line = await asyncio.to_thread(proc.stdout.readline)
            if not line:
                break
            lines.append(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        rest, _ = await asyncio.to_thread(proc.communicate)
    lines.extend(rest.splitlines())
    acked = [int(line.split()[1]) for line in lines if line.startswith("acked")]
    assert len(acked) >= 40, "the writer process did not get going"
    assert proc.returncode == -signal.SIGKILL

    store = SqliteStore(url)
    await store.open(1.0)
    try:
        for batch in acked:
            for i in range(50):
                assert await store.job_get(f"b{batch}-{i}") is not None, (batch, i)
        assert (await store.stats())["states"]["queued"] >= 50 * len(acked)
    finally:
        await store.close()


# -- URL, schema and locking --------------------------------------------------------------------
def test_urls() -> None:
    assert parse_sqlite_url("sqlite:///rel/c.db") == ("rel/c.db", "normal")
    assert parse_sqlite_url("sqlite:////abs/c.db") == ("/abs/c.db", "normal")
    assert parse_sqlite_url("sqlite:////a%20b/c.db?synchronous=FULL") == ("/a b/c.db", "full")
    for bad in (
        "sqlite://host/c.db",
        "sqlite://",
        "sqlite:///x?synchronous=off",
        "sqlite:///x?y=1",
    ):
        with pytest.raises(ConfigError):
            parse_sqlite_url(bad)
    assert isinstance(open_store("memory://"), MemoryStore)
    assert isinstance(open_store("sqlite:///x.db"), SqliteStore)
    with pytest.raises(ConfigError, match="memory://"):
        open_store("redis://localhost")
    assert (
        default_store_url(Path("/home/me/.conveyor")) == "sqlite:////home/me/.conveyor/conveyor.db"
    )
    assert parse_sqlite_url(default_store_url(Path("/h")))[0] == "/h/conveyor.db"


PRAGMAS = ("synchronous", "journal_mode", "user_version")


async def test_synchronous_is_configurable(tmp_path: Path) -> None:
    for option, expected in (("", 1), ("?synchronous=full", 2)):
        store = SqliteStore(f"sqlite:///{tmp_path}/s{expected}.db{option}")
        await store.open(T0)
        try:
            pragmas = await store._writer.call(
                lambda c: [
                    c.execute(f"PRAGMA {p}").fetchone()[0]
                    for p in ("synchronous", "journal_mode", "user_version")
                ]
            )
        finally:
            await store.close()
        assert pragmas == [expected, "wal", len(MIGRATIONS)]


async def test_a_second_broker_cannot_open_the_same_file(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_engine, "LOCK_TIMEOUT", 0.05)
    store = SqliteStore(url)
    await store.open(T0)
    await store.close()  # the second time, there is nothing to migrate
    store = SqliteStore(url)
    await store.open(T0)
    try:
        with pytest.raises(ConfigError, match="in use"):
            await SqliteStore(url).open(T0)
    finally:
        await store.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(ConfigError, match="newer"):
        await SqliteStore(f"sqlite:///{path}").open(T0)


# -- the writer on its own ----------------------------------------------------------------------
async def test_a_failed_commit_is_reported_then_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_writer, "RETRY_AFTER_ERROR", 0.0)
    written: list[dict[str, int | None]] = []
    failures = [RuntimeError("disk full")]

    def write(conn: sqlite3.Connection, batch: dict[str, int | None], meta: object) -> int:
        if failures:
            raise failures.pop()
        written.append(dict(batch))
        return len(batch)

    committed: list[int] = []
    writer: sqlite_writer.GroupCommitWriter[int, int] = sqlite_writer.GroupCommitWriter(
        lambda: sqlite3.connect(":memory:", isolation_level=None), write, committed.append
    )
    await writer.start()
    try:
        writer.stage([("a", 1), ("b", 2)], None)
        with pytest.raises(RuntimeError, match="disk full"):
            await writer.durable()
        writer.stage([("b", 3), ("c", None)], None)  # newer than the failed batch: wins
        await writer.durable()
        final: dict[str, int | None] = {}
        for batch in written:  # the failed batch is written again (merged if still pending)
            final.update(batch)
        assert final == {"a": 1, "b": 3, "c": None}
        assert len(committed) == len(written)
        row = await writer.call(lambda conn, x: conn.execute("SELECT ?", (x,)).fetchone(), 7)
        assert row == (7,)
    finally:
        await writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        await writer.durable()


def _failing_writer(
    failures: list[Exception], written: list[dict[str, int | None]]
) -> sqlite_writer.GroupCommitWriter[int, int]:
    def write(conn: sqlite3.Connection, batch: dict[str, int | None], meta: object) -> int:
        if failures:
            raise failures[0]
        written.append(dict(batch))
        return len(batch)

    return sqlite_writer.GroupCommitWriter(
        lambda: sqlite3.connect(":memory:", isolation_level=None), write, lambda _: None
    )


async def test_a_call_after_a_failed_commit_fails_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call must never run against rows older than changes staged before it."""
    monkeypatch.setattr(sqlite_writer, "RETRY_AFTER_ERROR", 0.0)
    failures: list[Exception] = [RuntimeError("disk full")]
    written: list[dict[str, int | None]] = []
    writer = _failing_writer(failures, written)
    await writer.start()
    ran: list[int] = []
    try:
        writer.stage([("a", 1)], None)
        call = writer.call(lambda conn: ran.append(1))
        with pytest.raises(RuntimeError, match="disk full"):
            await call
        assert ran == []  # it did not run while "a" was not on disk
        failures.clear()
        await writer.durable()
        await writer.call(lambda conn: ran.append(2))
        assert ran == [2] and written[-1] == {"a": 1}
    finally:
        await writer.close()


async def test_close_while_commits_fail_settles_every_waiter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqlite_writer, "RETRY_AFTER_ERROR", 0.0)
    writer = _failing_writer([RuntimeError("disk full")], [])
    await writer.start()
    writer.stage([("a", 1)], None)
    waits = [asyncio.ensure_future(writer.durable()) for _ in range(3)]
    await writer.close()
    results = await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 5)
    assert all(isinstance(r, Exception) for r in results)  # none left hanging


async def test_cancelled_while_running_is_not_requeued_at_restart(reopen: Reopen) -> None:
    store = await reopen()
    await store.job_insert_many([JobSpec(task="t", id="a")], T0)
    await claim(store, "w1", 1)
    await store.job_cancel("a", T0 + 1)
    await store.close()
    again = await reopen(T0 + 2)
    assert (await again.job_get("a")).state is JobState.CANCELLED  # type: ignore[union-attr]
    totals = (await again.stats())["totals"]
    assert (totals["requeued"], totals["cancelled"]) == (0, 1)


async def test_the_lease_high_water_mark_is_on_disk_right_after_open(reopen: Reopen) -> None:
    store = await reopen()
    await store.job_insert_many([JobSpec(task="t")], T0)
    (job,) = await claim(store, "w1", 1)
    await store.job_report_many([ok(job)], T0)  # nothing is running at the restart
    await store.close()
    again = await reopen(T0 + 1)
    on_disk = await again._writer.call(
        lambda conn: dict(conn.execute("SELECT name, value FROM counters").fetchall())
    )
    # the restart raised the mark above every lease of the last run, and that is already
    # on disk: a crash before the next commit cannot hand the same lease out twice
    assert max(on_disk.values()) > (job.lease or 0)
