"""``GET /api/workflows/{id}``: a workflow as one thing, with its jobs (docs/workflows.md).

A workflow is no record of its own: it is the jobs that carry its id (``workflow``), read
through the store's listing by workflow, oldest first (the order it was planned in, each
job after those it waits for).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from conveyor.http import views
from conveyor.http.api import ERRORS, Reader, job_id
from conveyor.http.errors import HttpError
from conveyor.job import JobRecord, JobState
from conveyor.stores.base import JobFilter

router = APIRouter(responses=ERRORS)
MAX_MEMBERS = 10_000  # jobs shown of one workflow


class WorkflowMember(BaseModel):
    id: str
    task: str
    state: str
    attempts: int
    depends_on: list[str]
    created_at: float
    finished_at: float | None
    error_type: str | None = None
    progress: dict[str, Any] | None = None


class WorkflowDetail(BaseModel):
    id: str
    state: str = Field(
        description="completed (every job), failed (one dead or cancelled: the rest follow), "
        "or running"
    )
    counts: dict[str, int] = Field(description="its jobs by state")
    jobs: list[WorkflowMember]
    truncated: bool = False


def summary_state(jobs: list[JobRecord]) -> str:
    """One word for the whole: completed, failed, or running."""
    states = {j.state for j in jobs}
    if states == {JobState.COMPLETED}:
        return "completed"
    if states & {JobState.DEAD, JobState.CANCELLED}:
        return "failed"
    return "running"


@router.get("/api/workflows/{workflow}", response_model=WorkflowDetail, tags=["jobs"])
async def workflow(workflow: str, ctx: Reader) -> dict[str, Any]:
    """A workflow and its jobs, in the order they were planned."""
    wanted = job_id(workflow)
    members: list[JobRecord] = []
    cursor: str | None = None
    while len(members) < MAX_MEMBERS:
        page = await ctx.core.list_jobs(JobFilter(workflow=wanted), 1000, cursor)
        members.extend(page.jobs)
        if page.cursor is None:
            break
        cursor = page.cursor
    if not members:
        raise HttpError(404, "not_found", f"no workflow {wanted}")
    members.reverse()  # the listing is newest first
    return {
        "id": wanted,
        "state": summary_state(members),
        "counts": dict(Counter(j.state.value for j in members)),
        "jobs": [
            {
                **views.job_summary(j, ctx.core),
                "depends_on": list(j.depends_on),
                "progress": ctx.core.progress.of(j),
            }
            for j in members[:MAX_MEMBERS]
        ],
        "truncated": len(members) > MAX_MEMBERS,
    }
