"""``GET /api/workflows`` (the recent workflows) and ``GET /api/workflows/{id}`` (one, with
its jobs): a workflow as one thing (docs/workflows.md).

A workflow is no record of its own: it is the jobs that carry its id (``workflow``). The
list is the store's :meth:`~conveyor.stores.base.Store.workflow_list` (off the index of
that id, newest first); one workflow is the store's listing by workflow, oldest first (the
order it was planned in, each job after those it waits for). Its kind is read from the
shape of its jobs (:func:`conveyor.workflow.kind_of`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from conveyor.http import views
from conveyor.http.api import ERRORS, Reader, job_id
from conveyor.http.errors import HttpError
from conveyor.job import FEED_RESULTS, JobRecord, JobState
from conveyor.limits import MAX_JOB_ID, NAME_PATTERN
from conveyor.stores.base import JobFilter
from conveyor.workflow import kind_of

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


STATE = Field(
    description="completed (every job), failed (one dead or cancelled: the rest follow), or running"
)
KIND = Field(description="chain, group, chord, or workflow (a mix), from its jobs' shape")


class WorkflowDetail(BaseModel):
    id: str
    kind: str = KIND
    state: str = STATE
    counts: dict[str, int] = Field(description="its jobs by state")
    jobs: list[WorkflowMember]
    truncated: bool = False


class WorkflowInfo(BaseModel):
    id: str
    kind: str = KIND
    state: str = STATE
    members: int = Field(description="how many jobs it has")
    counts: dict[str, int] = Field(description="its jobs by state")
    created_at: float = Field(description="when its first job was submitted")


class WorkflowList(BaseModel):
    workflows: list[WorkflowInfo]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page")


def summary_state(states: Collection[str]) -> str:
    """One word for the whole, from its jobs' states: completed, failed, or running."""
    present = set(states)
    if present == {JobState.COMPLETED.value}:
        return "completed"
    if present & {JobState.DEAD.value, JobState.CANCELLED.value}:
        return "failed"
    return "running"


@router.get("/api/workflows", response_model=WorkflowList, tags=["jobs"])
async def workflows(
    ctx: Reader,
    cursor: Annotated[
        str | None, Query(min_length=1, max_length=MAX_JOB_ID, pattern=f"^{NAME_PATTERN}$")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """Recent workflows, newest first: kind, summary state, jobs by state; keyset pages."""
    page = await ctx.core.store.workflow_list(limit, cursor)
    return {
        "workflows": [
            {
                "id": w.id,
                "kind": kind_of(w.members, w.roots, w.joins),
                "state": summary_state(w.counts),
                "members": w.members,
                "counts": w.counts,
                "created_at": w.created_at,
            }
            for w in page.workflows
        ],
        "next_cursor": page.cursor,
    }


@router.get("/api/workflows/{workflow}", response_model=WorkflowDetail, tags=["jobs"])
async def workflow(workflow: str, ctx: Reader) -> dict[str, Any]:
    """A workflow and its jobs, in the order they were planned."""
    wanted = job_id(workflow)
    members: list[JobRecord] = []
    cursor: str | None = None
    while len(members) < MAX_MEMBERS:
        page = await ctx.core.list_jobs(JobFilter(workflow=wanted), 1000, cursor, payload=False)
        members.extend(page.jobs)
        if page.cursor is None:
            break
        cursor = page.cursor
    if not members:
        raise HttpError(404, "not_found", f"no workflow {wanted}")
    members.reverse()  # the listing is newest first
    roots = sum(1 for j in members if not j.depends_on)
    joins = sum(1 for j in members if j.feed == FEED_RESULTS)
    return {
        "id": wanted,
        "kind": kind_of(len(members), roots, joins),
        "state": summary_state({j.state.value for j in members}),
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
