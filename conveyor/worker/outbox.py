"""The worker's outgoing job frames, batched: start notices, progress, reports until ACKED.

A job's start notice (a HEARTBEAT listing it) and its report each join the others of the
same loop turn: every start in one turn leaves in one frame, written at once; every
result in one REPORT frame (or as few as fit). Progress (``current_job().progress()``,
``set_meta()``) leaves in PROGRESS frames, the latest state of every job that changed, at
most one frame per ``PROGRESS_INTERVAL``, and a job's last state just before its report.
Frames go out on the worker's connection of the moment; with none, they are dropped (the
broker requeued those jobs when the connection was lost).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from conveyor.client.async_transport import AsyncConnection
from conveyor.errors import ConnectionLost
from conveyor.limits import PROGRESS_INTERVAL
from conveyor.protocol.session import split_to_fit
from conveyor.worker.execute import RunResult, failure
from conveyor.worker.held import Held, WorkerStats


class Outbox:
    """Batches what a :class:`~conveyor.worker.runner.Worker` says of its jobs.

    ``conn`` gives the worker's current connection (None between connections) and
    ``generation`` its number; both are asked when a batch is flushed. ``unacked`` holds
    the ids of the jobs reported but not yet ACKED.
    """

    def __init__(
        self,
        stats: WorkerStats,
        conn: Callable[[], AsyncConnection | None],
        generation: Callable[[], int],
    ) -> None:
        self.stats = stats
        self._conn = conn
        self._generation = generation
        self._reports: list[dict[str, Any]] = []
        self._reports_scheduled = False
        self._starts: list[str] = []
        self._starts_scheduled = False
        self._progressed: dict[str, Held] = {}  # jobs whose progress changed, not yet sent
        self._progress_timer: asyncio.TimerHandle | None = None
        self._progress_sent = 0.0  # loop time of the last PROGRESS frame
        self.unacked: set[str] = set()
        self._acked = asyncio.Event()

    # -- start notices -------------------------------------------------------------------
    def note_started(self, held: Held) -> None:
        self._starts.append(held.id)
        if not self._starts_scheduled:
            self._starts_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_starts)

    def _flush_starts(self) -> None:
        self._starts_scheduled = False
        starts, self._starts = self._starts, []
        conn = self._conn()
        if starts and conn is not None:
            with contextlib.suppress(ConnectionLost):
                conn.send({"t": "heartbeat", "running": starts})
                conn.flush()  # now, not at the end of this loop turn

    # -- progress ------------------------------------------------------------------------
    def progress_changed(self, held: Held) -> None:
        """A job's progress changed: send it with the others, at most once an interval."""
        self._progressed[held.id] = held
        if self._progress_timer is None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, self._progress_sent + PROGRESS_INTERVAL - loop.time())
            self._progress_timer = loop.call_later(delay, self._flush_progress)

    def _flush_progress(self, only: list[Held] | None = None) -> None:
        if only is None:
            self._progress_timer = None
            self._progress_sent = asyncio.get_running_loop().time()
            pending, self._progressed = list(self._progressed.values()), {}
        else:
            pending = [h for h in only if self._progressed.pop(h.id, None) is not None]
        entries = []
        for held in pending:
            state = held.current.take() if held.current is not None else None
            if state is not None and held.generation == self._generation():
                entries.append({"id": held.id, "lease": held.lease, **state})
        conn = self._conn()
        if entries and conn is not None:
            with contextlib.suppress(ConnectionLost):
                conn.send({"t": "progress", "jobs": entries})

    # -- reports -------------------------------------------------------------------------
    def queue_report(self, held: Held, result: RunResult) -> None:
        if held.current is not None:
            self._flush_progress([held])  # its last progress goes before its report
        report: dict[str, Any] = {"id": held.id, "lease": held.lease, "ok": result.ok}
        if result.ok:
            report["result"] = result.result
            self.stats.completed += 1
        else:
            report["error"] = result.error
            if result.retry_delay is not None:
                report["retry_delay"] = result.retry_delay
            if result.reject:
                report["reject"] = True
            self.stats.failed += 1
        self._reports.append(report)
        if not self._reports_scheduled:
            self._reports_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush_reports)

    def flush_reports(self) -> None:
        self._reports_scheduled = False
        conn = self._conn()
        if not self._reports or conn is None:
            return
        reports, self._reports = self._reports, []
        self.unacked.update(r["id"] for r in reports)
        with contextlib.suppress(ConnectionLost):
            _send_reports(conn, reports)

    def acked(self, ids: Iterable[str]) -> None:
        """ACKED: these reports are stored."""
        self.unacked.difference_update(ids)
        self._acked.set()

    async def all_acked(self, conn: AsyncConnection) -> None:
        """Until every report is ACKED, or ``conn`` closes."""
        while self.unacked and not conn.closed.is_set():
            self._acked.clear()
            await self._acked.wait()


def _send_reports(conn: AsyncConnection, reports: list[dict[str, Any]]) -> None:
    """As few REPORT frames as fit; a result too big even alone fails its job instead."""
    session = conn.session
    for data in split_to_fit(
        reports, lambda part: session.send({"t": "report", "results": part}), _too_large
    ):
        conn.write(data)


def _too_large(report: dict[str, Any]) -> dict[str, Any]:
    error = failure("ResultTooLarge", "the result does not fit in a protocol frame")
    return {
        "id": report["id"],
        "lease": report["lease"],
        "ok": False,
        "error": error.error,
        "reject": True,
    }
