"""The REST routes of schedules: ``/api/schedules`` (GET, POST), ``/api/schedules/{name}``
(GET, DELETE) and its ``pause``, ``resume`` and ``run`` actions.

Checked exactly as over the protocol (:func:`conveyor.schedules.parse_schedule`); reading
needs the ``read`` right, changing the ``submit`` right (producer or admin, as on the
socket, where SCHEDULE is a producer frame).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field, Strict

from conveyor.http.api import ERRORS, Reader, Submitter
from conveyor.http.errors import HttpError
from conveyor.http.schemas import Int, Submitted
from conveyor.limits import MAX_PRIORITY, MIN_PRIORITY
from conveyor.schedules import (
    MAX_CRON,
    MAX_SCHEDULE_NAME,
    MAX_TZ,
    check_schedule_name,
    parse_schedule,
)

NAME = r"^[A-Za-z0-9_.:\-]+$"
ScheduleName = Annotated[str, Path(min_length=1, max_length=MAX_SCHEDULE_NAME, pattern=NAME)]
router = APIRouter(responses=ERRORS, tags=["schedules"])


class ScheduleBody(BaseModel):
    """A schedule: ``cron`` (5 fields, in ``tz``) or ``every`` (``"30s"``, ``"5m"``, or
    seconds); the task's ``kwargs`` or ``args``; what to do with missed slots."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_SCHEDULE_NAME, pattern=NAME)
    task: str = Field(min_length=1, max_length=200, pattern=NAME)
    cron: str | None = Field(None, min_length=1, max_length=MAX_CRON, examples=["*/5 * * * *"])
    every: str | Int | None = Field(None, examples=["30s"])
    tz: str | None = Field(None, min_length=1, max_length=MAX_TZ, examples=["Europe/Berlin"])
    kwargs: dict[str, Any] | None = None
    args: list[Any] | None = None
    queue: str | None = Field(None, min_length=1, max_length=100, pattern=NAME)
    priority: Int | None = Field(None, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    catch_up: Literal["none", "one", "all"] | None = None
    paused: Annotated[bool, Strict()] = False


class ScheduleInfo(BaseModel):
    """A schedule with its last and next run (UTC epoch seconds; next is null if paused)."""

    name: str
    task: str
    when: str = Field(description="as people write it: cron '30 2 * * *' Europe/Berlin")
    cron: str | None
    every: int | None = Field(description="seconds")
    tz: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str | None
    priority: int | None
    catch_up: str
    paused: bool
    source: str = Field(description='"api", or "code" when a worker declared it (@task)')
    created_at: float
    last_run: float | None = Field(description="the slot (or run-now time) of the last run")
    last_job: str | None = Field(description="the id of the last run's job")
    next_run: float | None


class Removed(BaseModel):
    removed: str


def _name(value: str) -> str:
    try:
        return check_schedule_name(value)
    except Exception:  # the path pattern lets through nothing else; say "not found" anyway
        raise HttpError(404, "not_found", f"no schedule named {value[:100]!r}") from None


@router.get("/api/schedules", response_model=list[ScheduleInfo])
async def schedules(ctx: Reader) -> list[dict[str, Any]]:
    """Every schedule, by name."""
    return await ctx.core.schedules.list_all()


@router.post("/api/schedules", status_code=201, response_model=ScheduleInfo)
async def add(
    body: ScheduleBody, ctx: Submitter, replace: Annotated[bool, Query()] = False
) -> dict[str, Any]:
    """Add a schedule (``?replace=true`` replaces one of that name, keeping its state)."""
    parsed = parse_schedule(body.model_dump(exclude_none=True), ctx.core.clock.now())
    return await ctx.core.schedules.add(parsed, replace=replace)


@router.get("/api/schedules/{name}", response_model=ScheduleInfo)
async def get(name: ScheduleName, ctx: Reader) -> dict[str, Any]:
    return await ctx.core.schedules.get(_name(name))


@router.delete("/api/schedules/{name}", response_model=Removed)
async def remove(name: ScheduleName, ctx: Submitter) -> dict[str, Any]:
    """Remove it (its jobs stay)."""
    await ctx.core.schedules.remove(_name(name))
    return {"removed": name}


@router.post("/api/schedules/{name}/pause", response_model=ScheduleInfo)
async def pause(name: ScheduleName, ctx: Submitter) -> dict[str, Any]:
    """Fire none of its slots until resumed (those in between are skipped)."""
    return await ctx.core.schedules.pause(_name(name), True)


@router.post("/api/schedules/{name}/resume", response_model=ScheduleInfo)
async def resume(name: ScheduleName, ctx: Submitter) -> dict[str, Any]:
    return await ctx.core.schedules.pause(_name(name), False)


@router.post("/api/schedules/{name}/run", status_code=201, response_model=Submitted)
async def run_now(name: ScheduleName, ctx: Submitter) -> dict[str, Any]:
    """Fire one run now, outside its slots."""
    inserted = await ctx.core.schedules.run_now(_name(name))
    return {"id": inserted.job.id, "state": inserted.job.state.value, "created": inserted.created}
