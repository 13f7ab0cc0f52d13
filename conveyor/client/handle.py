"""JobHandle: the sync Client's handle on one job (what ``submit`` returns)."""

from __future__ import annotations

from typing import Any, Protocol

from conveyor.client._base import ResultGroup, final_result
from conveyor.job import Job, JobState


class Reader(Protocol):
    """What a handle asks of its client (conveyor.client.sync.Client)."""

    def get(self, job_id: str) -> Job: ...
    def get_many(self, ids: list[str], *, brief: bool = False) -> list[Job]: ...
    def wait(self, job_id: str, timeout: float | None = None) -> Job: ...
    def next_progress(
        self, job_id: str, since: float | None = 0.0, timeout: float | None = None
    ) -> Job: ...
    def result(self, job_id: str, timeout: float | None = None) -> Any: ...
    def cancel(self, job_id: str) -> Job: ...


class JobHandle:
    """A handle on one job: ``handle.result(timeout=10)``, ``handle.status()``."""

    __slots__ = ("client", "group", "id")

    def __init__(self, client: Reader, job_id: str, group: ResultGroup | None = None) -> None:
        self.client = client
        self.id = job_id
        self.group = group  # the handles submitted with it, whose results are read together

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}>"

    def get(self) -> Job:
        return self.client.get(self.id)

    def status(self) -> JobState:
        return self.get().state

    def wait(self, timeout: float | None = None) -> Job:
        return self.client.wait(self.id, timeout)

    def next_progress(self, since: float | None = 0.0, timeout: float | None = None) -> Job:
        return self.client.next_progress(self.id, since, timeout)

    def result(self, timeout: float | None = None) -> Any:
        group = self.group
        if group is not None:
            job = group.take(self.id)
            if job is None and (window := group.window(self.id)):
                found = self.client.get_many(window, brief=True)
                group.keep(found, self.id)
                job = next((j for j in found if j.id == self.id and j.state.is_final), None)
            if job is not None:
                return final_result(job)
        return self.client.result(self.id, timeout)

    def cancel(self) -> Job:
        return self.client.cancel(self.id)
