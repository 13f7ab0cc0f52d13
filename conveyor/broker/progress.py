"""What running jobs say about themselves: progress, a message and small metadata.

Theory of operation
-------------------
A task calls ``conveyor.current_job().progress(0.4, "resized 40/100")`` or
``set_meta(...)``; its worker coalesces the calls and sends the latest state of each job
in PROGRESS frames, a few a second at most (docs/protocol.md, section 9.5a). The broker
keeps, in :class:`ProgressBoard`, the latest state of each *running* job, counting only
reports from the worker that holds the job under that very lease, and publishes a
:class:`~conveyor.broker.events.JobProgress` on the event hub (the HTTP live feed shows
it) and wakes the producers that asked to hear of it (WAIT with ``progress``).

Live progress is memory only: no store write per report. When the run ends (reported,
lost, past its deadline, cancelled) the core stores the last state with the job's
change (:meth:`BrokerCore.transition` asks :meth:`ProgressBoard.attach`), so a finished
job keeps its last progress and metadata, and a restart keeps what was stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from conveyor.broker.dispatch import WorkerRef
from conveyor.broker.events import EventHub, JobProgress
from conveyor.clock import Clock
from conveyor.job import JobRecord, JobState
from conveyor.lifecycle import Transition

Watch = Callable[[], None]


@dataclass(frozen=True, slots=True)
class Update:
    """One job's state as a PROGRESS frame gives it (checked by the route)."""

    id: str
    lease: int
    value: float | None
    message: str | None
    meta: dict[str, Any]


class ProgressBoard:
    """The latest progress of each running job, and who waits to hear of the next."""

    def __init__(self, hub: EventHub, clock: Clock) -> None:
        self._hub = hub
        self._clock = clock
        self._latest: dict[str, dict[str, Any]] = {}  # job id -> the progress map
        self._watchers: dict[str, list[tuple[object, Watch]]] = {}

    def __len__(self) -> int:
        return len(self._latest)

    def report(self, worker: WorkerRef, updates: Iterable[Update]) -> int:
        """Keep the updates for jobs this worker holds under that lease; returns how many
        counted. Each one published, and its watchers told."""
        now = self._clock.now()
        counted = 0
        for update in updates:
            if worker.holding.get(update.id) != update.lease:
                continue  # stale (requeued, reported) or not this worker's
            state = {"value": update.value, "message": update.message, "meta": update.meta}
            state["at"] = now
            self._latest[update.id] = state
            counted += 1
            self._hub.publish(JobProgress(update.id, state, now))
            for _, watch in self._watchers.pop(update.id, ()):
                watch()
        return counted

    def of(self, job: JobRecord) -> dict[str, Any] | None:
        """The job's progress: the live one while it runs here, else the stored one."""
        if job.state is JobState.RUNNING:
            return self._latest.get(job.id, job.progress)
        return job.progress

    def attach(self, t: Transition) -> Transition:
        """A run that ends keeps its last progress: ``t`` with it stored."""
        latest = self._latest.get(t.old.id) if t.old.state is JobState.RUNNING else None
        if latest is None or t.new.state is JobState.RUNNING:
            return t
        return Transition(t.old, t.new.replace(progress=latest), t.events, t.front)

    def ended(self, job: JobRecord) -> None:
        """The job left running (its last progress went with the change)."""
        self._latest.pop(job.id, None)

    # -- producers waiting for the next report -------------------------------------------
    def watch(self, job_id: str, owner: object, notify: Watch) -> None:
        """Call ``notify`` once, at the job's next progress report."""
        self._watchers.setdefault(job_id, []).append((owner, notify))

    def unwatch(self, job_id: str, notify: Watch) -> None:
        entries = self._watchers.get(job_id)
        if entries is None:
            return
        entries[:] = [e for e in entries if e[1] is not notify]
        if not entries:
            del self._watchers[job_id]

    def drop_owner(self, owner: object) -> None:
        """Forget every watch of ``owner`` (a closed session)."""
        for job_id in list(self._watchers):
            kept = [e for e in self._watchers[job_id] if e[0] is not owner]
            if kept:
                self._watchers[job_id] = kept
            else:
                del self._watchers[job_id]
