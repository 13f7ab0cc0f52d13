"""Opening the SQLite file: its URL, the one-broker lock, connections, the index at a restart."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from conveyor.errors import ConfigError
from conveyor.stores._live import LiveJobs
from conveyor.stores.sql.sqlite_jobs import Start, new_connection_setup
from conveyor.stores.sql.sqlite_schema import migrate

CACHE_KIB = 64 << 10  # the writer's page cache: a constant, whatever the queue depth
#: A restart skips this many sequence numbers, so that a lease handed out in the last
#: moments before a crash (never committed) is not handed out again for the same job.
RESTART_GAP = 1 << 32
SYNCHRONOUS = ("normal", "full", "extra")
LOCK_TIMEOUT = 2.0  # seconds to wait for a broker that is still letting go of the file
SEQ_HWM = "seq_hwm"  # counters row: the highest sequence/lease number given out


def parse_sqlite_url(url: str) -> tuple[str, str]:
    """``sqlite:///rel/path.db`` or ``sqlite:////abs/path.db`` → (path, synchronous)."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or len(parts.path) < 2:
        raise ConfigError(
            f"bad SQLite store URL {url!r}: use sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db"
        )
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    synchronous = options.pop("synchronous", "normal").lower()
    if synchronous not in SYNCHRONOUS:
        raise ConfigError(
            f"bad SQLite store URL {url!r}: synchronous must be normal, full or extra"
        )
    if options:
        raise ConfigError(f"bad SQLite store URL {url!r}: unknown option {next(iter(options))}")
    return unquote(parts.path[1:]), synchronous


def lock_database(path: str) -> int:
    """Hold ``<path>.lock`` exclusively (released when the process ends, however it ends):
    one broker per database. Returns the descriptor to close to let go."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise ConfigError(f"{path} is in use by another process (another broker?)") from exc
    return fd


def _owner_only(path: str) -> None:
    """The database and its WAL files readable by their owner only: SQLite gives the WAL
    and shared-memory files the database file's mode, so creating that 0600 is enough;
    an existing one is narrowed."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path, f"{path}-wal", f"{path}-shm"):
        with contextlib.suppress(FileNotFoundError):
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)


def connect(path: str, synchronous: str) -> sqlite3.Connection:
    """Open (creating, 0600) the database in WAL mode, migrated: the writer's connection,
    which leaves checkpoints to the :class:`Checkpointer`."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        _owner_only(path)
    # check_same_thread off: the writer thread owns it, and the loop commits small
    # batches on it too, never at the same time (GroupCommitWriter._using)
    conn = sqlite3.connect(
        path, timeout=LOCK_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        if path != ":memory:":
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the Checkpointer's thread does it
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        migrate(conn)
        new_connection_setup(conn)
    except sqlite3.OperationalError as exc:
        conn.close()
        raise ConfigError(f"cannot open the SQLite store {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def connect_checkpointer(path: str, synchronous: str) -> sqlite3.Connection:
    """The checkpoint thread's connection (the writer's has made the database)."""
    conn = sqlite3.connect(
        path, timeout=LOCK_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA synchronous = {synchronous}")  # how a checkpoint syncs
    return conn


def new_live(start: Start) -> LiveJobs:
    """The index after a restart: sequence numbers and leases continue past every one
    handed out before (plus a gap for those never committed), the front below the lowest."""
    hwm = max(start.counters.get(SEQ_HWM, 0), start.highest)
    live = LiveJobs(hwm + RESTART_GAP + 1 if hwm else 1, min(0, start.lowest) - 1)
    for name, value in start.counters.items():
        if name != SEQ_HWM:
            live.totals[name] = value
    return live
