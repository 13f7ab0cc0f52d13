"""Handles on submitted workflows (``client.submit_workflow(chain(...))``), sync and async.

A workflow is its jobs (conveyor.workflow): the handle knows their ids, which of them give
the workflow's result, and whether that result is a list (it ends in a group).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol

from conveyor.job import Job
from conveyor.workflow import Plan


class _Sync(Protocol):
    def result(self, job_id: str, timeout: float | None = None) -> Any: ...
    def get_many(self, ids: Iterable[str], *, brief: bool = False) -> list[Job]: ...
    def cancel(self, job_id: str) -> Job: ...


class _Async(Protocol):
    async def result(self, job_id: str, timeout: float | None = None) -> Any: ...
    async def get_many(self, ids: Iterable[str], *, brief: bool = False) -> list[Job]: ...
    async def cancel(self, job_id: str) -> Job: ...


class WorkflowHandle:
    """``handle.result(timeout)``: the last step's result (a chain, a chord), or the list
    of results in order (a group, a chain ending in one). Raises JobFailed if the job it
    reads failed or was cancelled (a failed step cancels the rest)."""

    def __init__(self, client: _Sync, flow: Plan) -> None:
        self.client = client
        self.id = flow.id
        self.ids = [j.id for j in flow.jobs]  # every job, each after those it waits for
        self.tails = list(flow.tails)
        self.many = flow.many

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.id}: {len(self.ids)} job(s)>"

    def result(self, timeout: float | None = None) -> Any:
        results = [self.client.result(t, timeout) for t in self.tails]
        return results if self.many else results[0]

    def jobs(self) -> list[Job]:
        """Every job of the workflow as it is now, in plan order."""
        return self.client.get_many(self.ids)

    def cancel(self) -> None:
        """Cancel the jobs not finished yet (running ones end cancelled when their run
        ends; the waiting ones after them are cancelled in turn)."""
        for job in self.jobs():
            if not job.state.is_final:
                self.client.cancel(job.id)


class AsyncWorkflow:
    """The :class:`WorkflowHandle` of an AsyncClient: the same, awaited."""

    def __init__(self, client: _Async, flow: Plan) -> None:
        self.client = client
        self.id = flow.id
        self.ids = [j.id for j in flow.jobs]
        self.tails = list(flow.tails)
        self.many = flow.many

    def __repr__(self) -> str:
        return f"<AsyncWorkflow {self.id}: {len(self.ids)} job(s)>"

    async def result(self, timeout: float | None = None) -> Any:
        results = await asyncio.gather(*(self.client.result(t, timeout) for t in self.tails))
        return list(results) if self.many else results[0]

    async def jobs(self) -> list[Job]:
        return await self.client.get_many(self.ids)

    async def cancel(self) -> None:
        for job in await self.jobs():
            if not job.state.is_final:
                await self.client.cancel(job.id)
