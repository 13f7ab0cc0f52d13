"""What only the SQLite engine promises: restarts, group commit, kill -9, its URL."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from conveyor import lifecycle
from conveyor.errors import ConfigError, StoreUnavailable
from conveyor.job import JobRecord, JobState
from conveyor.lifecycle import Outcome
from conveyor.protocol.payload import pack, pack_call, unpack
from conveyor.stores import (
    MemoryStore,
    SqliteStore,
    default_store_url,
    open_store,
)
from conveyor.stores.base import Claimant, JobFilter
from conveyor.stores.sql import sqlite_open, sqlite_writer
from conveyor.stores.sql.sqlite_jobs import MUTABLE, change_row
from conveyor.stores.sql.sqlite_open import parse_sqlite_url
from conveyor.stores.sql.sqlite_schema import COLUMNS, MIGRATIONS, job_row

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


def job(job_id: str, **fields: object) -> JobRecord:
    args = fields.pop("args", [])
    kwargs = fields.pop("kwargs", {})
    return JobRecord(id=job_id, task="t", payload=pack_call(args, kwargs), **fields)  # type: ignore[arg-type]


async def insert(store: SqliteStore, *jobs: JobRecord, now: float = T0) -> None:
    await store.job_insert_many([lifecycle.born(j, now) for j in jobs])


async def claim(store: SqliteStore, worker: str, limit: int, now: float = T0) -> list[JobRecord]:
    return await store.job_claim(Claimant(worker, *W), limit, 30.0, now)


async def report(store: SqliteStore, outcomes: list[Outcome], now: float) -> list[JobRecord | None]:
    jobs = {j.id: j for j in await store.job_get_many([o.id for o in outcomes])}
    return await store.job_apply([lifecycle.report(jobs[o.id], o, now) for o in outcomes])


def ok(job: JobRecord, result: object = None) -> Outcome:
    assert job.lease is not None
    return Outcome(id=job.id, lease=job.lease, ok=True, result=pack(result))


# -- restarts -----------------------------------------------------------------------------------
async def test_acknowledged_work_survives_a_restart(reopen: Reopen) -> None:
    store = await reopen()
    await insert(
        store,
        job("done", args=[1]),
        job("dead"),
        job("running", kwargs={"x": [1, 2]}),
        job("later", eta=T0 + 3600),
        job("waiting", unique_key="u1"),
        job("keyed", concurrency_key="domain:x"),
    )
    done, dead, _ = await claim(store, "w1", 3)
    error = {"type": "KeyError", "message": "x", "traceback": "tb"}
    await report(
        store,
        [
            ok(done, {"r": [1, 2.5, "s"]}),
            Outcome(dead.id, dead.lease or 0, False, None, error, None, True),
        ],
        T0 + 1,
    )
    before = await store.stats()
    await store.close()

    store = SqliteStore(store.url)
    back = await store.open(T0 + 10)
    try:
        assert [j.id for j in back] == ["running"]  # for the broker to requeue
        assert await store.stats() == before
        got_done = await store.job_get("done")
        assert got_done is not None and got_done.state is JobState.COMPLETED
        assert unpack(got_done.result or b"") == {"r": [1, 2.5, "s"]}
        assert unpack(got_done.payload) == [[1], {}]
        got_later = await store.job_get("later")
        assert got_later is not None and got_later.state is JobState.SCHEDULED
        assert await store.job_next_eta() == T0 + 3600
        keyed = await store.job_get("keyed")
        assert keyed is not None and keyed.concurrency_key == "domain:x"
        # the unique key is still held, and a client id is still idempotent
        dup, again = await store.job_insert_many(
            [
                lifecycle.born(job("other", unique_key="u1"), T0 + 11),
                lifecycle.born(job("done"), T0),
            ]
        )
        assert (dup.created, dup.job.id, again.created) == (False, "waiting", False)
        # the dead job, read back from disk, can be retried
        (on_disk,) = await store.job_dead(None)
        (retried,) = await store.job_apply([lifecycle.dlq_retry(on_disk, T0 + 12)])
        assert retried is not None and retried.state is JobState.QUEUED
        assert retried.error == error
        events = [e["event"] for e in await store.job_events("dead")]
        assert events == ["submitted", "started", "failed", "dead", "retried"]
    finally:
        await store.close()


async def test_open_returns_running_jobs_oldest_first_and_never_reuses_a_lease(url: str) -> None:
    store = SqliteStore(url)
    assert await store.open(T0) == []
    await insert(store, job("a"), job("b"), job("c"))
    (first,) = await claim(store, "w1", 1)
    await claim(store, "w1", 1)
    await store.close()
    store = SqliteStore(url)
    running = await store.open(T0 + 1)
    try:
        assert [j.id for j in running] == ["a", "b"]
        # a lease handed out before the restart can never match one handed out after
        (c,) = await claim(store, "w2", 1, T0 + 2)
        assert c.id == "c" and (c.lease or 0) > (first.lease or 0) + (1 << 32)
    finally:
        await store.close()


async def test_order_survives_a_restart(reopen: Reopen) -> None:
    store = await reopen()
    await insert(store, *(job(i, priority=1 if i == "d" else 5) for i in "abcde"))
    assert [j.id for j in await claim(store, "w1", 2)] == ["d", "a"]
    taken = await claim(store, "w2", 2)
    assert [j.id for j in taken] == ["b", "c"]
    for j in reversed(taken):  # front of their priority, in their old order
        (back,) = await store.job_apply([lifecycle.release(j, T0 + 1)])
        assert back is not None
    await store.close()
    store = await reopen(T0 + 2)
    # d and a are still running (the broker requeues them); b, c kept their place
    order = [j.id for j in await claim(store, "w3", 10, T0 + 3)]
    assert order == ["b", "c", "e"]


async def test_finished_jobs_leave_memory(reopen: Reopen) -> None:
    store = await reopen(recent=10)
    await insert(store, *(job(f"j{i}") for i in range(100)))
    jobs = await claim(store, "w1", 100)
    await report(store, [ok(j, i) for i, j in enumerate(jobs)], T0 + 1)
    assert len(store.live.jobs) == 0
    assert len(store._recent) == 10
    first = await store.job_get(jobs[0].id)  # read back from disk
    assert first is not None and unpack(first.result or b"") == 0
    page = await store.job_list(JobFilter(state=JobState.COMPLETED), limit=1000)
    assert len(page.jobs) == 100
    assert await store.job_prune(T0 + 2) == 100
    assert await store.job_get(jobs[0].id) is None
    assert await store.job_get(jobs[-1].id) is None
    assert (await store.stats())["states"]["completed"] == 0


async def test_prune_removes_the_rows_and_their_events(url: str, reopen: Reopen) -> None:
    store = await reopen()
    await insert(store, *(job(f"j{i}") for i in range(30)))
    jobs = await claim(store, "w1", 20)
    await report(store, [ok(j) for j in jobs], T0 + 1)
    assert await store.job_prune(T0 + 2) == 20
    await store.close()
    path, _ = parse_sqlite_url(url)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
        events = conn.execute("SELECT count(DISTINCT job_id) FROM events").fetchone()
    assert rows == [("queued", 10)]
    assert events == (10,)


async def test_a_state_change_never_rewrites_the_payload(url: str, reopen: Reopen) -> None:
    """The payload is written once; claims and reports are narrow updates."""
    assert set(MUTABLE) & {"payload", "id", "task"} == set()
    assert len(change_row(job("x"), None)) == len(MUTABLE) + 1
    assert len(job_row(job("x"), None)) == len(COLUMNS)
    store = await reopen()
    statements: list[str] = []
    await store._writer.call(lambda conn: conn.set_trace_callback(statements.append))
    await insert(store, job("a", args=["x" * 1000]))
    (claimed,) = await claim(store, "w1", 1)
    await report(store, [ok(claimed, 1)], T0 + 1)
    await store._writer.call(lambda conn: conn.set_trace_callback(None))
    writes = [s for s in statements if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]
    payload_writes = [s for s in writes if "payload" in s]
    assert len(payload_writes) == 1 and payload_writes[0].lstrip().upper().startswith("INSERT")


# -- group commit -------------------------------------------------------------------------------
async def test_group_commit_batches_concurrent_inserts(reopen: Reopen) -> None:
    store = await reopen()
    start = store.commits
    calls = [[lifecycle.born(job(f"c{c}-{i}"), T0) for i in range(10)] for c in range(500)]
    results = await asyncio.gather(*(store.job_insert_many(c) for c in calls))
    commits = store.commits - start
    assert sum(len(r) for r in results) == 5000
    print(f"{commits} commits for 500 acknowledged calls")
    assert commits <= 50, f"{commits} commits for 500 acknowledged calls"
    assert (await store.stats())["states"]["queued"] == 5000
    await store.close()
    store = await reopen()
    assert (await store.stats())["states"]["queued"] == 5000


def _commits_on(store: SqliteStore) -> list[str]:
    """Record the thread of every batch written from now on."""
    threads: list[str] = []
    write = store._writer._write

    def spy(conn: Any, batch: Any) -> Any:
        threads.append(threading.current_thread().name)
        return write(conn, batch)

    store._writer._write = spy
    return threads


async def test_a_lone_small_commit_happens_on_the_loop_without_a_hand_off(reopen: Reopen) -> None:
    store = await reopen()
    threads = _commits_on(store)
    await insert(store, job("a"))
    await insert(store, *(job(f"b{i}") for i in range(sqlite_writer.INLINE_MAX + 1)))
    assert threads == [threading.current_thread().name, "conveyor-sqlite-writer"]
    assert (await store.stats())["states"]["queued"] == 2 + sqlite_writer.INLINE_MAX


async def test_with_synchronous_full_every_commit_is_on_the_writer_thread(url: str) -> None:
    store = SqliteStore(f"{url}?synchronous=full")
    await store.open(T0)
    try:
        threads = _commits_on(store)
        await insert(store, job("a"))
        assert threads == ["conveyor-sqlite-writer"]
    finally:
        await store.close()


async def test_reads_see_writes_not_yet_committed(reopen: Reopen) -> None:
    store = await reopen()
    await insert(store, job("a"))
    await claim(store, "w1", 1)  # staged, not awaited
    page = await store.job_list(JobFilter())
    assert [(j.id, j.state) for j in page.jobs] == [("a", JobState.RUNNING)]


KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from conveyor import lifecycle
    from conveyor.job import JobRecord
    from conveyor.stores import open_store

    async def main():
        store = open_store(sys.argv[1])
        await store.open(0.0)
        batch = 0
        while True:
            empty = b"\\x92\\x90\\x80"
            jobs = [
                lifecycle.born(JobRecord(id=f"b{batch}-{i}", task="t", payload=empty), 0.0)
                for i in range(50)
            ]
            await asyncio.gather(store.job_insert_many(jobs[:25]), store.job_insert_many(jobs[25:]))
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
        ids = [f"b{batch}-{i}" for batch in acked for i in range(50)]
        assert len(await store.job_get_many(ids)) == len(ids)
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
    monkeypatch.setattr(sqlite_open, "LOCK_TIMEOUT", 0.05)
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
class DictBatch(dict[str, int | None]):
    """The smallest batch a GroupCommitWriter can stage: the last value of a key wins."""

    def merge(self, later: DictBatch) -> None:
        self.update(later)


def _writer(
    failures: list[Exception], written: list[dict[str, int | None]], *, once: bool = False
) -> sqlite_writer.GroupCommitWriter[DictBatch, int]:
    def write(conn: sqlite3.Connection, batch: DictBatch) -> int:
        if failures:
            raise failures.pop() if once else failures[0]
        written.append(dict(batch))
        return len(batch)

    committed: list[int] = []
    return sqlite_writer.GroupCommitWriter(
        lambda: sqlite3.connect(":memory:", isolation_level=None),
        DictBatch,
        write,
        committed.append,
    )


async def test_a_failed_commit_is_reported_then_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_writer, "RETRY_AFTER_ERROR", 0.0)
    written: list[dict[str, int | None]] = []
    writer = _writer([RuntimeError("disk full")], written, once=True)
    await writer.start()
    try:
        with writer.staging() as batch:
            batch.update(a=1, b=2)
        with pytest.raises(StoreUnavailable, match=r"disk full.*kept"):
            await writer.durable()
        with writer.staging() as batch:
            batch.update(b=3, c=None)  # newer than the failed batch: wins
        await writer.durable()
        final: dict[str, int | None] = {}
        for part in written:  # the failed batch is written again (merged if still pending)
            final.update(part)
        assert final == {"a": 1, "b": 3, "c": None}
        row = await writer.call(lambda conn, x: conn.execute("SELECT ?", (x,)).fetchone(), 7)
        assert row == (7,)
    finally:
        await writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        await writer.durable()


async def test_a_call_after_a_failed_commit_fails_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call must never run against rows older than changes staged before it."""
    monkeypatch.setattr(sqlite_writer, "RETRY_AFTER_ERROR", 0.0)
    failures: list[Exception] = [RuntimeError("disk full")]
    written: list[dict[str, int | None]] = []
    writer = _writer(failures, written)
    await writer.start()
    ran: list[int] = []
    try:
        with writer.staging() as batch:
            batch["a"] = 1
        call = writer.call(lambda conn: ran.append(1))
        with pytest.raises(StoreUnavailable, match=r"disk full.*not done"):
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
    writer = _writer([RuntimeError("disk full")], [])
    await writer.start()
    with writer.staging() as batch:
        batch["a"] = 1
    waits = [asyncio.ensure_future(writer.durable()) for _ in range(3)]
    await writer.close()
    results = await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 5)
    assert all(isinstance(r, Exception) for r in results)  # none left hanging


async def test_the_lease_high_water_mark_is_on_disk_right_after_open(reopen: Reopen) -> None:
    store = await reopen()
    await insert(store, job("a"))
    (claimed,) = await claim(store, "w1", 1)
    await report(store, [ok(claimed)], T0)  # nothing is running at the restart
    await store.close()
    again = await reopen(T0 + 1)
    on_disk = await again._writer.call(
        lambda conn: dict(conn.execute("SELECT name, value FROM counters").fetchall())
    )
    # the restart raised the mark above every lease of the last run, and that is already
    # on disk: a crash before the next commit cannot hand the same lease out twice
    assert max(on_disk.values()) > (claimed.lease or 0)


V1_ROW = (
    "old-1",
    "completed",
    "default",
    "t",
    5,
    None,
    None,
    1.0,
    2.0,
    7,
    msgpack.packb(
        {
            "args": [1],
            "kwargs": {"k": "v"},
            "result": {"r": 1},
            "attempts": 1,
            "worker": "w#1",
            "events": [{"event": "submitted", "at": 1.0}, {"event": "completed", "at": 2.0}],
        }
    ),
)


async def test_a_version_1_database_is_migrated_without_losing_a_job(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        MIGRATIONS[0](conn)
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", V1_ROW)
        conn.execute("INSERT INTO counters VALUES ('completed', 1), ('submitted', 1)")
    store = SqliteStore(f"sqlite:///{path}")
    await store.open(T0)
    try:
        old = await store.job_get("old-1")
        assert old is not None and old.state is JobState.COMPLETED
        assert (unpack(old.payload), unpack(old.result or b"")) == ([[1], {"k": "v"}], {"r": 1})
        assert (old.attempts, old.worker) == (1, "w#1")
        assert [e["event"] for e in await store.job_events("old-1")] == ["submitted", "completed"]
        assert (await store.stats())["totals"]["completed"] == 1
    finally:
        await store.close()


def test_the_statements_of_a_commit_find_rows_by_key_never_by_scanning() -> None:
    """A commit's cost must not grow with the table (an UPDATE ... FROM scanned it all)."""
    from conveyor.stores.sql.sqlite_jobs import _APPLY_CHANGES, new_connection_setup
    from conveyor.stores.sql.sqlite_schema import migrate

    with contextlib.closing(sqlite3.connect(":memory:", isolation_level=None)) as conn:
        migrate(conn)
        new_connection_setup(conn)
        plan = [row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + _APPLY_CHANGES)]
    assert not [step for step in plan if step.startswith("SCAN")], plan


async def test_waiting_jobs_and_their_dependencies_survive_a_restart(reopen: Reopen) -> None:
    store = await reopen(resident=0, recent=0)
    await insert(
        store,
        job("a"),
        job("b", depends_on=("a",), workflow="wf", feed="result"),
        job("c", depends_on=("a", "b"), workflow="wf", feed="results"),
    )
    await store.close()
    again = await reopen(resident=0, recent=0)
    assert [j.id for j in await again.job_waiting_on(["a"])] == ["b", "c"]
    (c,) = await again.job_get_many(["c"])
    assert (c.state, c.depends_on, c.workflow, c.feed) == (
        JobState.WAITING,
        ("a", "b"),
        "wf",
        "results",
    )
    assert (await again.stats())["states"]["waiting"] == 2
