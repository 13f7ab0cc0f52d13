"""WAL checkpoints on a thread of their own, so that no commit pays for one.

SQLite's automatic checkpoint runs inside the commit that pushes the WAL past 1,000
pages: on this engine that is every hundred or so single-job commits, and that commit
then copies the WAL into the database and syncs it, 10-30 ms on the event loop, which
was four fifths of a single submit's commit time. So the writer connection runs with
``wal_autocheckpoint = 0`` and calls :meth:`Checkpointer.poke` after each commit; this
thread, on its own connection, runs a ``PASSIVE`` checkpoint (it never blocks the writer)
a moment later, covering every commit of that moment at once.

A passive checkpoint cannot reset the WAL while commits keep coming, so under sustained
load the WAL file would only grow. Past :data:`WAL_LIMIT` bytes the thread asks the
writer to stop committing on the loop (:meth:`hold`: commits go to the writer thread,
which may wait), runs a ``TRUNCATE`` checkpoint, which waits for the current writer, copies what is
left and empties the WAL file, and lets go.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable

log = logging.getLogger("conveyor.store")

#: how long after a commit the checkpoint runs (commits meanwhile share it)
CHECKPOINT_AFTER = 0.05
#: WAL file size past which the WAL is emptied (a short pause of the writer thread)
WAL_LIMIT = 64 * 1024 * 1024


class Checkpointer:
    """Checkpoints the WAL of ``path`` after commits; see the module docstring.

    ``hold(True/False)`` tells the writer to keep its commits off the loop meanwhile.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        path: str,
        hold: Callable[[bool], None],
        wal_limit: int = WAL_LIMIT,
    ) -> None:
        self._connect = connect
        self._wal = f"{path}-wal"
        self._hold = hold
        self._wal_limit = wal_limit
        self._poked = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: checkpoints run, and WAL truncations among them (tests read them)
        self.checkpoints = 0
        self.truncations = 0
        #: set after each checkpoint (tests clear it and wait)
        self.ran = threading.Event()

    def start(self) -> None:
        conn = self._connect()  # here, so that a bad path fails the store's open
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="conveyor-sqlite-checkpoint", daemon=True
        )
        self._thread.start()

    def poke(self) -> None:
        """A commit happened (any thread; cheap)."""
        self._poked.set()

    def close(self) -> None:
        """Stop the thread (the last connection to close checkpoints what is left)."""
        self._stop.set()
        self._poked.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                self._poked.wait()
                # let the commits of this moment pile up, unless we are told to stop
                if self._stop.wait(CHECKPOINT_AFTER):
                    return
                self._poked.clear()
                self._checkpoint(conn)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            if self._wal_size() > self._wal_limit:
                self._truncate(conn)
            self.checkpoints += 1
        except sqlite3.Error as exc:
            # a full disk or a busy database: the next commit pokes us again
            log.warning("SQLite store: checkpoint failed (%s); retrying after the next commit", exc)
        finally:
            self.ran.set()

    def _truncate(self, conn: sqlite3.Connection) -> None:
        self._hold(True)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            self.truncations += 1
        finally:
            self._hold(False)

    def _wal_size(self) -> int:
        try:
            return os.stat(self._wal).st_size
        except FileNotFoundError:
            return 0
