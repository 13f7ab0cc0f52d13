"""Producers waiting for a job to finish: pushed the job the moment it is final."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from conveyor.job import JobRecord

Notify = Callable[[JobRecord], None]


class Waiters:
    """job id -> (owner, callback) pairs. A callback runs once, with the final job.

    The owner (a session) lets a closed connection drop all its waits at once.
    """

    def __init__(self) -> None:
        self._by_job: dict[str, list[tuple[object, Notify]]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_job.values())

    def add(self, job_id: str, owner: object, notify: Notify) -> None:
        self._by_job.setdefault(job_id, []).append((owner, notify))

    def discard(self, job_id: str, notify: Notify) -> None:
        entries = self._by_job.get(job_id)
        if entries is None:
            return
        entries[:] = [e for e in entries if e[1] is not notify]
        if not entries:
            del self._by_job[job_id]

    def waiting_on(self, job_ids: Iterable[str] | None) -> list[str]:
        """Those of ``job_ids`` someone waits for (None: every job waited for)."""
        if job_ids is None:
            return list(self._by_job)
        return [job_id for job_id in job_ids if job_id in self._by_job]

    def finished(self, job: JobRecord) -> None:
        """Tell everyone waiting on ``job`` (call only for a final job)."""
        for _, notify in self._by_job.pop(job.id, ()):
            notify(job)

    def drop_owner(self, owner: object) -> None:
        """Forget every wait of ``owner`` (a closed session)."""
        for job_id in list(self._by_job):
            kept = [e for e in self._by_job[job_id] if e[0] is not owner]
            if kept:
                self._by_job[job_id] = kept
            else:
                del self._by_job[job_id]
