"""Large payloads as files beside the database, each written once.

Why: SQLite rewrites a whole row (its overflow pages included) on any UPDATE, and in WAL
mode every page is written twice (to the WAL, then to the database at a checkpoint). A
job's row changes at submit, claim and completion, so a 400 KB argument kept in the row
cost ~6.3x its size in writes. A payload of at least :data:`FILE_MIN` bytes is therefore
written once to ``<db>-payloads/<name>`` and the row keeps only the name
(``payload_file``); smaller ones stay in the row, where they share the row's pages.

Crash safety: the file is written (and, with ``synchronous=full`` or ``extra``, fsynced
together with its directory) inside the batch's transaction, before the COMMIT, so a
committed row never names a file that is not there. A name is random and never reused,
so writing a batch again after a failed commit overwrites the same file, and a job id
submitted again after its old job was pruned gets a new file. Files are deleted after the
commit that deleted their rows (a crash between the two, or before a written file's row
committed, leaves a file no row names, never a row without its payload; :meth:`sweep`
removes those at the next open).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("conveyor.store")

#: payloads of at least this many bytes go to a file (smaller ones stay in the row)
FILE_MIN = 64 * 1024


class PayloadFiles:
    """The payload directory of one database; ``sync`` fsyncs what it writes."""

    def __init__(self, directory: str | None, sync: bool, file_min: int = FILE_MIN) -> None:
        self.directory = directory  # None (":memory:"): every payload stays in its row
        self.sync = sync
        self.file_min = file_min
        self.written = 0  # files written (tests read it)
        self._made = False

    @classmethod
    def beside(cls, db_path: str, sync: bool, file_min: int = FILE_MIN) -> PayloadFiles:
        return cls(None if db_path == ":memory:" else f"{db_path}-payloads", sync, file_min)

    def wants(self, payload: bytes) -> bool:
        """Whether this payload goes to a file."""
        return self.directory is not None and len(payload) >= self.file_min

    @staticmethod
    def new_name() -> str:
        return secrets.token_hex(16)

    def write(self, files: Iterable[tuple[str, bytes]]) -> None:
        """Write each (name, payload) to its file; with ``sync``, make them durable (the
        files, then the directory) before returning. Runs before the rows' COMMIT."""
        directory = self._directory()
        wrote = False
        for name, payload in files:
            fd = os.open(
                os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
            )
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
                if self.sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            self.written += 1
            wrote = True
        if wrote and self.sync:
            _fsync_dir(directory)

    def read(self, name: str) -> bytes:
        """The payload in file ``name``; ``b""`` (and a warning) if it is missing: a read
        that raced the deletion of its job, or a file removed by hand."""
        assert self.directory is not None
        try:
            return Path(self.directory, name).read_bytes()
        except FileNotFoundError:
            log.warning(
                "SQLite store: payload file %s/%s is missing (its job just deleted?)",
                self.directory,
                name,
            )
            return b""

    def sweep(self, named: set[str]) -> int:
        """Delete the files no row names (at open, before anything is written: a crash
        after a file was written but before its row committed, or after a row's deletion
        committed but before its file went, leaves one behind). Returns how many."""
        if self.directory is None or not os.path.isdir(self.directory):
            return 0
        orphans = [n for n in os.listdir(self.directory) if n not in named]
        self.delete(orphans)
        if orphans:
            log.info("SQLite store: removed %d payload file(s) no job names", len(orphans))
        return len(orphans)

    def delete(self, names: Iterable[str]) -> None:
        """Remove these files (after the commit that deleted their rows)."""
        if self.directory is None:
            return
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, name))

    def _directory(self) -> str:
        assert self.directory is not None
        if not self._made:
            existed = os.path.isdir(self.directory)
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            if not existed and self.sync:
                _fsync_dir(os.path.dirname(os.path.abspath(self.directory)))
            self._made = True
        return self.directory


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
