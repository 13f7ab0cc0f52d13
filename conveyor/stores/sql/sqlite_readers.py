"""Read-only SQLite connections on their own threads, so reads never wait behind commits.

WAL lets readers work beside the one writer: each read sees the database as of its
last commit. A read that must also see changes the loop has staged but not committed
waits for that commit first (the store does that, not this module). Each thread opens
its own connection once, read-only (``mode=ro`` and ``query_only``), and keeps it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar
from urllib.parse import quote

T = TypeVar("T")
P = ParamSpec("P")

READERS = 2  # threads: the broker has a couple of cores; more would only queue on them


class ReaderPool:
    """``await pool.call(fn, *args)`` runs ``fn(conn, *args)`` on a reader thread."""

    def __init__(self, path: str, size: int = READERS) -> None:
        self._uri = f"file:{quote(str(Path(path).resolve()))}?mode=ro"
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="conveyor-sqlite-reader")

    async def call(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(self._run, fn, *args, **kwargs))

    def _run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open()
        return fn(conn, *args, **kwargs)

    def here(self) -> sqlite3.Connection:
        """This thread's connection (the loop's, for lookups by id that take microseconds:
        cheaper than a hand-off to a reader thread and back)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open()
        return conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA temp_store = MEMORY")
        with self._lock:
            self._connections.append(conn)
        return conn

    async def close(self) -> None:
        """Wait for running reads, then close every connection."""
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
