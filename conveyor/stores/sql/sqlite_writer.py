"""One thread, one SQLite connection, group commit.

Theory of operation
-------------------
The event loop *stages* changes into the pending batch (where the last version of a row
wins, so a row changed ten times between commits is written once) and awaits
:meth:`durable`.
Staging does not wake the writer thread at once: it schedules a *kick* with
``loop.call_soon``, which runs after every callback already due in this turn of the
loop. So everything the loop does in one turn (a burst of hundreds of requests) is
staged before the writer looks, and becomes one transaction.

On a kick the writer takes *everything* staged so far together with every waiter
registered so far, writes it in one transaction, commits, and resolves those waiters on
the loop (``call_soon_threadsafe``). Whatever is staged while a commit is in progress
goes into the next one, so a batch grows by itself with the load: one commit per disk
round trip instead of one per change, and no timer adds latency when the system idles.

A small batch with nobody else writing is committed *inline* instead: when the kick
finds the writer idle, someone waiting and at most :data:`INLINE_MAX` changes staged,
the loop commits them itself on the same connection (SQLite in WAL mode with
``synchronous=NORMAL`` commits a few rows in tens of microseconds, far less than the two
thread hand-offs it saves). That is the path of one ``submit()`` at a time; under load
the batches grow and go to the thread as above.

Maintenance (and reads that must see the loop's own writes at once) run on the writer
thread through :meth:`call`, right after the changes staged before them are committed.

When a commit fails (a full disk, an I/O error) the batch is kept and written again with
a growing pause, until it succeeds: nothing staged is dropped. Whoever waits for it gets
:class:`~conveyor.errors.StoreUnavailable` naming the cause and saying the request is
kept. The failure is logged once with its cause, then at most every
:data:`LOG_EVERY` seconds, and once more when the store recovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar

from conveyor.errors import ConveyorError, StoreUnavailable

B = TypeVar("B", bound="Batch")  # the changes staged for one commit
R = TypeVar("R")  # what writing a batch reports back to the loop
T = TypeVar("T")
P = ParamSpec("P")

log = logging.getLogger("conveyor.store")


class Batch(Protocol):
    """What the writer needs of a batch: is it empty, and how to fold a later one in."""

    def __bool__(self) -> bool: ...
    def __len__(self) -> int: ...
    def merge(self, later: Any) -> None: ...


#: at most this many staged rows and events (8 jobs submitted or reported) are
#: committed on the loop itself (see above)
INLINE_MAX = 16
RETRY_AFTER_ERROR = 0.1  # seconds before a failed batch is written again, doubling ...
RETRY_AFTER_ERROR_MAX = 2.0  # ... up to this
LOG_EVERY = 30.0  # seconds between log lines while commits keep failing

#: SQLite's primary result codes that mean "the storage is in trouble", in words
_CAUSES = {
    sqlite3.SQLITE_FULL: "disk full",
    sqlite3.SQLITE_IOERR: "I/O error",
    sqlite3.SQLITE_READONLY: "the database is read-only",
    sqlite3.SQLITE_CANTOPEN: "cannot open the database file",
    sqlite3.SQLITE_CORRUPT: "the database file is corrupt",
    sqlite3.SQLITE_NOTADB: "the file is not a database",
    sqlite3.SQLITE_BUSY: "the database is locked by another process",
    sqlite3.SQLITE_LOCKED: "the database is locked",
    sqlite3.SQLITE_PERM: "permission denied",
}


def storage_cause(exc: BaseException) -> str | None:
    """What a storage failure was, in words; None if ``exc`` is not one (a bug)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _CAUSES:
            return f"{_CAUSES[code & 0xFF]}: {exc}"
        if isinstance(exc, sqlite3.OperationalError):
            return str(exc)
        return None
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return None


class Health:
    """Whether commits succeed; when they do not, why, since when, and how often."""

    def __init__(self) -> None:
        self.cause: str | None = None
        self.since: float | None = None
        self.failures = 0
        self._logged_at = 0.0
        self._logged_failures = 0

    def failed(self, cause: str, exc: BaseException, known: bool) -> None:
        now = time.monotonic()
        self.failures += 1
        if self.cause is None:
            self.cause, self.since = cause, time.time()
            self._logged_at, self._logged_failures = now, self.failures
            if known:
                log.error("SQLite store cannot write (%s); keeping the changes, retrying", cause)
            else:
                log.error("SQLite store: writing failed; retrying", exc_info=exc)
        elif now - self._logged_at >= LOG_EVERY:
            log.error(
                "SQLite store still cannot write (%s): %d failed attempts in %.0fs",
                cause,
                self.failures - self._logged_failures,
                now - self._logged_at,
            )
            self._logged_at, self._logged_failures = now, self.failures
        self.cause = cause

    def recovered(self) -> None:
        if self.cause is None:
            return
        log.warning(
            "SQLite store writes again after %.1fs (%d failed attempts)",
            time.time() - (self.since or time.time()),
            self.failures,
        )
        self.cause, self.since, self.failures = None, None, 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "writable": self.cause is None,
            "error": self.cause,
            "since": self.since,
            "failed_attempts": self.failures,
        }


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` if the block raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class GroupCommitWriter(Generic[B, R]):
    """Owns the connection and the thread; see the module docstring.

    ``write(conn, batch)`` runs inside the transaction with everything staged; its
    return value is handed to ``on_commit`` on the loop thread once the commit is done.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        new_batch: Callable[[], B],
        write: Callable[[sqlite3.Connection, B], R],
        on_commit: Callable[[R], None],
        *,
        inline: bool = True,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self._connect = connect
        self._inline = inline
        self._conn: sqlite3.Connection | None = None
        self._using = threading.Lock()  # whoever runs SQL on the connection holds it
        self._new_batch = new_batch
        self._write = write
        self._on_commit = on_commit
        self._after_commit = after_commit  # any thread, right after a commit (checkpoints)
        self._held = threading.Event()  # set: no commits on the loop (a WAL truncation)
        self._cond = threading.Condition()  # guards everything below that both sides touch
        self._pending: B = new_batch()
        self._waiters: list[asyncio.Future[None]] = []
        self._calls: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._kicked = False  # the loop asks for a round
        self._busy = False  # a batch is being committed
        self._closing = False
        self._kick_scheduled = False  # loop thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        #: transactions committed with staged changes (tests and benchmarks read it)
        self.commits = 0
        self._health = Health()  # writer thread only; read through health()
        self._pause = RETRY_AFTER_ERROR

    # -- loop side -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the thread and open the connection on it; raise what connecting raised."""
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="conveyor-sqlite-writer", daemon=True
        )
        self._thread.start()
        await ready

    @contextlib.contextmanager
    def staging(self) -> Iterator[B]:
        """The pending batch, to add changes to (under the lock; keep it short)."""
        with self._cond:
            yield self._pending
        self._kick_soon()

    async def durable(self) -> None:
        """Return once everything staged before this call is committed."""
        loop = self._check_open()
        with self._cond:
            if not self._pending and not self._busy:
                return
            waiter = loop.create_future()
            self._waiters.append(waiter)
        self._kick_soon()
        await waiter

    def _commit_here(self) -> bool:
        """Commit the pending batch on the loop, if it is small and nobody else is writing
        (under the condition, at the end of a loop turn, so that what the turn staged
        commits together). False: leave it to the thread."""
        conn = self._conn
        if (
            not self._inline
            or conn is None
            or self._busy
            or self._calls
            or len(self._pending) > INLINE_MAX
            or self._health.cause is not None  # failing: the thread retries with a pause
            or self._held.is_set()
            or not self._using.acquire(blocking=False)
        ):
            return False
        try:
            batch, self._pending = self._pending, self._new_batch()
            waiters, self._waiters = self._waiters, []
            try:
                with transaction(conn):
                    result = self._write(conn, batch)
            except Exception:
                # Put it back for the thread, which names the cause and retries.
                batch.merge(self._pending)
                self._pending = batch
                self._waiters = waiters + self._waiters
                self._kicked = True
                self._cond.notify()
                return False
        finally:
            self._using.release()
        self.commits += 1
        if self._after_commit is not None:
            self._after_commit()
        self._on_commit(result)
        _settle(waiters, None)
        return True

    async def call(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn(conn, ...)`` in a transaction on the writer thread, after pending changes."""
        future: asyncio.Future[T] = self._check_open().create_future()
        with self._cond:
            self._calls.append((lambda conn: fn(conn, *args, **kwargs), future))
            self._kicked = True
            self._cond.notify()
        return await future

    async def close(self) -> None:
        """Commit what is staged, then stop the thread and close the connection."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def hold(self, held: bool) -> None:
        """Keep commits off the loop (any thread): the checkpointer is about to make the
        next commit wait for it, and the loop must not be the one waiting."""
        if held:
            self._held.set()
        else:
            self._held.clear()

    def health(self) -> dict[str, Any]:
        """``{"writable", "error", "since", "failed_attempts"}``."""
        with self._cond:
            return self._health.as_dict()

    def _check_open(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the SQLite store is not open: await store.open(now) first")
        if self._closing:
            raise RuntimeError("the SQLite store is closed")
        return self._loop

    def _kick_soon(self) -> None:
        if not self._kick_scheduled and self._loop is not None:
            self._kick_scheduled = True
            self._loop.call_soon(self._kick)

    def _kick(self) -> None:
        """End of a loop turn: commit here if that is cheap and someone waits for it, or
        wake the thread."""
        self._kick_scheduled = False
        with self._cond:
            if self._waiters and self._commit_here():
                return
            self._kicked = True
            self._cond.notify()

    # -- writer thread ---------------------------------------------------------------------
    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self._loop.call_soon_threadsafe(callback, *args)

    def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._post(_settle, [ready], exc)
            return
        self._conn = conn
        self._post(_settle, [ready], None)
        try:
            while self._round(conn):
                pass
        except BaseException as exc:  # a bug: fail loudly rather than leave waiters hanging
            log.exception("SQLite store: the writer thread stopped")
            with self._cond:
                self._closing = True
                waiters = self._waiters + [future for _, future in self._calls]
                self._waiters, self._calls = [], []
            self._post(_settle, waiters, exc)
        finally:
            with self._using:
                self._conn = None
                conn.close()

    def _round(self, conn: sqlite3.Connection) -> bool:
        """Write one batch and serve the calls queued with it; False once closed and idle."""
        with self._cond:
            while not self._kicked and not self._closing:
                self._cond.wait()
            self._kicked = False
            batch, self._pending = self._pending, self._new_batch()
            waiters, self._waiters = self._waiters, []
            calls, self._calls = self._calls, []
            self._busy = bool(batch)
        failure: Exception | None = None
        if batch:
            with self._using:
                failure, result = self._commit(conn, batch, waiters)
            with self._cond:  # committed (or kept in pending): durable() need not wait on
                self._busy = False  # the calls below
            if failure is None:
                # only now, with the connection free and not busy, so that the loop
                # going on at once finds it so and commits its next small batch itself
                self._post(self._committed, waiters, result)
        elif waiters:
            self._post(_settle, waiters, None)
        failed = failure is not None
        if failure is not None:
            # A call must see every change staged before it, and those are not on disk:
            # fail it with the commit's error rather than run it against stale rows.
            refused = StoreUnavailable.because(self._health.cause or "unknown", kept=False)
            self._post(_settle, [future for _, future in calls], refused)
            calls = []
        for fn, future in calls:
            try:
                with self._using, transaction(conn):
                    result = fn(conn)
            except Exception as exc:
                cause = storage_cause(exc)
                if cause is not None:
                    exc = StoreUnavailable.because(cause, kept=False)
                self._post(_settle, [future], exc)
            else:
                self._post(_resolve, future, result)
        with self._cond:
            self._busy = False
            more = bool(self._pending or self._waiters or self._calls)
            if self._closing and failed:
                self._abandon_on_close()
                return False
            if self._closing and not more:
                return False
            self._kicked = self._kicked or failed or (self._closing and more)
        if failed:
            time.sleep(self._pause)
            self._pause = min(self._pause * 2, RETRY_AFTER_ERROR_MAX)
        else:
            self._pause = RETRY_AFTER_ERROR
        return True

    def _abandon_on_close(self) -> None:
        """Closing while commits fail: settle everyone still waiting, say what was lost."""
        lost = len(self._pending)
        waiters = self._waiters + [future for _, future in self._calls]
        self._pending, self._waiters, self._calls = self._new_batch(), [], []
        if lost:
            log.error("SQLite store closed with %d unwritten change(s) (never acknowledged)", lost)
        self._post(_settle, waiters, ConveyorError("the SQLite store closed before writing"))

    def _commit(
        self, conn: sqlite3.Connection, batch: B, waiters: list[asyncio.Future[None]]
    ) -> tuple[Exception | None, R | None]:
        """Write and commit one batch: (None, what the write returned), or the error if it
        failed (the batch is kept to retry; the waiters are told)."""
        try:
            with transaction(conn):
                result = self._write(conn, batch)
        except Exception as exc:
            known = storage_cause(exc)
            cause = known or f"{type(exc).__name__}: {exc}"
            with self._cond:  # put the batch back under anything staged since
                batch.merge(self._pending)
                self._pending = batch
                self._health.failed(cause, exc, known is not None)
            refusal = StoreUnavailable.because(cause, kept=True)
            self._post(_settle, waiters, refusal)
            return refusal, None
        with self._cond:
            self._health.recovered()
        self.commits += 1
        if self._after_commit is not None:
            self._after_commit()
        return None, result

    def _committed(self, waiters: list[asyncio.Future[None]], result: R) -> None:
        self._on_commit(result)
        _settle(waiters, None)


def _settle(futures: list[asyncio.Future[Any]], exc: BaseException | None) -> None:
    for future in futures:
        if not future.done():
            if exc is None:
                future.set_result(None)
            else:
                future.set_exception(exc)


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)
