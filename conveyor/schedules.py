"""Periodic schedules as pure functions: their definition, their slots, the catch-up policy.

Theory of operation
-------------------
A schedule names a task and when to run it: a cron expression in a time zone
(``--cron '30 2 * * *' --tz Europe/Berlin``, read by croniter, which handles daylight
saving), or a fixed period (``--every 30s``). Its *slots* are the instants (whole UTC
seconds) it is due at: for a period, the multiples of it since the Unix epoch (``--every
1h`` is on the hour, UTC); for cron, croniter's instants. When the wall clock repeats an
hour (the autumn change), a cron time that names its hours fires once, at the first of the
two instants, as Vixie cron does; an expression whose hour field is ``*`` fires in both.
A time the spring change skips fires at the first instant after the gap (croniter's
choice): a daily ``30 2 * * *`` in Berlin runs at 03:00 that day.

Each firing becomes an ordinary job whose id is made from the schedule's name and the
slot (:func:`slot_job_id`), so the store's refusal of a second job with an existing id is
what makes a slot fire at most once, across restarts and several brokers alike. The broker
keeps the last slot it handled for each schedule; :func:`plan` decides, from it and the
time now, which slots to fire (the catch-up policy) and what the new last slot is.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from conveyor.errors import InvalidJob
from conveyor.limits import MAX_PAYLOAD, MAX_PRIORITY, MAX_QUEUE_NAME, MAX_TASK_NAME, MIN_PRIORITY
from conveyor.protocol.payload import PayloadError, check_json, pack_call

MAX_SCHEDULE_NAME = 64  # so that "sched:<name>:now-<stamp>" fits a job id (100)
MAX_CATCH_UP = 1000  # slots one round fires under --catch-up all; older ones are skipped
MAX_EVERY = 366 * 86400  # seconds
MAX_CRON = 200  # characters of a cron expression
MAX_TZ = 64  # characters of a time zone name
MAX_GRACE = 60.0  # seconds a slot may be late and still fire under --catch-up none
MAX_SCHEDULES = 1000  # schedules one store keeps (each round reads them all)
ID_PREFIX = "sched:"

_NAME_RE = re.compile(r"[A-Za-z0-9_.:\-]+")  # a job id splits back at its last ':'
_TASK_RE = _NAME_RE
_EVERY_RE = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MACROS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
_STAMP = "%Y%m%dT%H%M%SZ"


class CatchUp(enum.StrEnum):
    """What a schedule does about slots it missed (the broker was down, or busy)."""

    NONE = "none"  # skip them; a slot more than its grace late is skipped too
    ONE = "one"  # fire one job for all of them (the latest slot's)
    ALL = "all"  # fire each of them, at most MAX_CATCH_UP (the latest ones)


DEFAULT_CATCH_UP = CatchUp.ONE


@dataclass(frozen=True, slots=True)
class Schedule:
    """One schedule's definition, as stored (the broker keeps its state apart)."""

    name: str
    task: str
    cron: str | None = None
    every: int | None = None  # seconds
    tz: str = "UTC"
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None  # None: the task's queue
    priority: int | None = None
    catch_up: CatchUp = DEFAULT_CATCH_UP
    paused: bool = False
    source: str = "api"  # "api" (added by a client) or "code" (@task(schedule=...))
    created_at: float = 0.0

    @property
    def when(self) -> str:
        """How people write it: ``cron '30 2 * * *' Europe/Berlin`` or ``every 30s``."""
        if self.cron is not None:
            return f"cron {self.cron!r}" + ("" if self.tz == "UTC" else f" {self.tz}")
        return f"every {format_every(self.every or 0)}"

    def to_map(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "cron": self.cron,
            "every": self.every,
            "tz": self.tz,
            "args": self.args,
            "kwargs": self.kwargs,
            "queue": self.queue,
            "priority": self.priority,
            "catch_up": self.catch_up.value,
            "paused": self.paused,
            "source": self.source,
            "created_at": self.created_at,
        }

    @classmethod
    def from_map(cls, raw: Mapping[str, Any]) -> Schedule:
        """A stored definition back (trusted: it was checked when it was added)."""
        return cls(
            name=raw["name"],
            task=raw["task"],
            cron=raw.get("cron"),
            every=raw.get("every"),
            tz=raw.get("tz") or "UTC",
            args=list(raw.get("args") or []),
            kwargs=dict(raw.get("kwargs") or {}),
            queue=raw.get("queue"),
            priority=raw.get("priority"),
            catch_up=CatchUp(raw.get("catch_up") or DEFAULT_CATCH_UP),
            paused=bool(raw.get("paused")),
            source=raw.get("source") or "api",
            created_at=float(raw.get("created_at") or 0.0),
        )

    def replace(self, **changes: Any) -> Schedule:
        return replace(self, **changes)


# -- checking what people give ---------------------------------------------------------------
def _invalid(fld: str, message: str) -> InvalidJob:
    return InvalidJob("invalid", f"{fld} {message}", fld)


def parse_every(value: Any) -> int:
    """A period in whole seconds: ``30s``, ``5m``, ``1h``, ``1d``, ``1h30m``, or a number."""
    if isinstance(value, bool):
        raise _invalid("every", "must be a duration such as 30s, 5m, 1h or 1d")
    if isinstance(value, int | float):
        seconds = value
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower()
        if text.isdigit():
            seconds = int(text)
        else:
            parts = _EVERY_RE.findall(text)
            if "".join(n + u for n, u in parts) != text:
                raise _invalid("every", f"{value[:40]!r} is not a duration such as 30s, 5m, 1h")
            seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    else:
        raise _invalid("every", "must be a duration such as 30s, 5m, 1h or 1d")
    if not (isinstance(seconds, int) or float(seconds).is_integer()) or not (
        1 <= seconds <= MAX_EVERY
    ):
        raise _invalid("every", f"must be whole seconds from 1s to {MAX_EVERY // 86400}d")
    return int(seconds)


def format_every(seconds: int) -> str:
    """``90`` → ``1m30s``; ``86400`` → ``1d``."""
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out) or "0s"


def check_cron(value: Any) -> str:
    """A 5-field cron expression (minute hour day month weekday) or a macro like @daily."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_CRON:
        raise _invalid("cron", f"must be a cron expression of 1 to {MAX_CRON} characters")
    text = " ".join(value.split())
    if text.startswith("@"):
        if text.lower() not in _MACROS:
            raise _invalid("cron", f"{text!r} is not one of {', '.join(sorted(_MACROS))}")
        return text.lower()
    if len(text.split()) != 5:
        raise _invalid(
            "cron", f"{text!r} must have 5 fields: minute hour day-of-month month day-of-week"
        )
    try:
        ok = croniter.is_valid(text)
    except Exception:  # croniter raises several kinds on odd input
        ok = False
    if not ok:
        raise _invalid("cron", f"{text!r} is not a valid cron expression")
    try:  # valid but never due (February 30th): croniter gives up looking, say so now
        croniter(text, datetime(2000, 1, 1, tzinfo=UTC)).get_next(float)
    except Exception:  # CroniterBadDateError
        raise _invalid("cron", f"{text!r} never matches a date") from None
    return text


def check_tz(value: Any) -> str:
    """An IANA time zone name (``Europe/Berlin``, ``UTC``)."""
    if not isinstance(value, str) or not value or len(value) > MAX_TZ:
        raise _invalid("tz", f"must be a time zone name of 1 to {MAX_TZ} characters")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise _invalid(
            "tz", f"{value!r} is not a known time zone (e.g. Europe/Berlin, UTC)"
        ) from None
    return value


def check_schedule_name(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_SCHEDULE_NAME:
        raise _invalid("name", f"must be a string of 1 to {MAX_SCHEDULE_NAME} characters")
    if not _NAME_RE.fullmatch(value):
        raise _invalid("name", "may only contain letters, digits and _ . : -")
    return value


def _check_task(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TASK_NAME:
        raise _invalid("task", f"must be a string of 1 to {MAX_TASK_NAME} characters")
    if not _TASK_RE.fullmatch(value):
        raise _invalid("task", "may only contain letters, digits and _ . : -")
    return value


def _check_call(raw: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    args, kwargs = raw.get("args") or [], raw.get("kwargs") or {}
    if not isinstance(args, list):
        raise _invalid("args", "must be a list")
    if not isinstance(kwargs, dict):
        raise _invalid("kwargs", "must be a map")
    for value, fld in ((args, "args"), (kwargs, "kwargs")):
        try:
            check_json(value, fld)
        except PayloadError as exc:
            raise _invalid(fld, str(exc).removeprefix(fld).strip()) from None
    try:
        packed = pack_call(args, kwargs)
    except PayloadError as exc:
        raise _invalid("kwargs", f"cannot be encoded: {exc}") from None
    if len(packed) > MAX_PAYLOAD:
        raise _invalid("args", f"are {len(packed)} bytes packed; the limit is {MAX_PAYLOAD}")
    return args, kwargs


def parse_schedule(raw: Any, now: float, *, source: str = "api") -> Schedule:
    """Check an untrusted schedule spec (docs/protocol.md, section 6.7) into a definition.

    ``name``, ``task``, exactly one of ``cron`` and ``every``; optional ``tz`` (cron only),
    ``args``, ``kwargs``, ``queue``, ``priority``, ``catch_up``, ``paused``.
    """
    if not isinstance(raw, Mapping):
        raise _invalid("schedule", "must be a map")
    name = check_schedule_name(raw.get("name"))
    task = _check_task(raw.get("task"))
    cron, every = raw.get("cron"), raw.get("every")
    if (cron is None) == (every is None):
        raise _invalid("cron", "or every: give exactly one (--cron '*/5 * * * *' or --every 30s)")
    tz = raw.get("tz")
    if every is not None and tz not in (None, "UTC"):
        raise _invalid(
            "tz", "applies to cron schedules only (--every counts from the epoch, in UTC)"
        )
    args, kwargs = _check_call(raw)
    queue = raw.get("queue")
    if queue is not None and (
        not isinstance(queue, str)
        or not 0 < len(queue) <= MAX_QUEUE_NAME
        or not _TASK_RE.fullmatch(queue)
    ):
        raise _invalid("queue", f"must be a queue name of 1 to {MAX_QUEUE_NAME} characters")
    priority = raw.get("priority")
    if priority is not None and (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not MIN_PRIORITY <= priority <= MAX_PRIORITY
    ):
        raise _invalid("priority", f"must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}")
    try:
        catch_up = CatchUp(raw.get("catch_up") or DEFAULT_CATCH_UP)
    except ValueError:
        raise _invalid("catch_up", "must be none, one or all") from None
    paused = raw.get("paused", False)
    if not isinstance(paused, bool):
        raise _invalid("paused", "must be a boolean")
    return Schedule(
        name=name,
        task=task,
        cron=None if cron is None else check_cron(cron),
        every=None if every is None else parse_every(every),
        tz="UTC" if tz is None else check_tz(tz),
        args=args,
        kwargs=kwargs,
        queue=queue,
        priority=priority,
        catch_up=catch_up,
        paused=paused,
        source=source,
        created_at=float(math.floor(now)),
    )


def parse_declared(raw: Any, tasks: Collection[str], now: float) -> list[Schedule]:
    """READY's ``schedules``: per offered task, the schedule its code declares (named after
    the task); any fault is ``invalid`` with field ``schedules``."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        raise _invalid("schedules", "must map task names to schedule maps")
    out = []
    for task, spec in raw.items():
        if not isinstance(task, str) or task not in tasks or not isinstance(spec, Mapping):
            raise _invalid("schedules", "must map offered task names to schedule maps")
        try:
            out.append(parse_schedule({**spec, "name": task, "task": task}, now, source="code"))
        except InvalidJob as exc:
            raise _invalid("schedules", f"of task {task!r}: {exc.message}") from None
    return out


# -- slots -----------------------------------------------------------------------------------
def _every_hour(cron: str) -> bool:
    """Whether the hour field is ``*`` (then both instants of a repeated hour fire)."""
    if cron.startswith("@"):
        return cron == "@hourly"
    hours = croniter.expand(cron)[0][1]
    return hours == ["*"] or len(hours) == 24


def _second_pass(at: float, tz: str) -> bool:
    """Whether ``at`` is the second pass through a wall-clock time the autumn change repeats
    (``fromtimestamp`` sets ``fold`` only then; croniter's own ``fold`` is not reliable)."""
    return datetime.fromtimestamp(at, ZoneInfo(tz)).fold == 1


def _cron_iter(s: Schedule, start: float) -> croniter:
    return croniter(s.cron, datetime.fromtimestamp(start, ZoneInfo(s.tz)))


def next_slot(s: Schedule, after: float) -> float:
    """The first slot strictly after ``after``."""
    if s.every is not None:
        return float((math.floor(after) // s.every + 1) * s.every)
    it = _cron_iter(s, math.floor(after))
    every_hour = _every_hour(s.cron or "")
    while True:
        at = float(it.get_next(datetime).timestamp())
        if not every_hour and _second_pass(at, s.tz):
            continue
        if at > after:
            return at


def slots_between(s: Schedule, after: float, until: float, limit: int) -> tuple[list[float], bool]:
    """The slots in ``(after, until]``, ascending: the latest ``limit`` of them, and whether
    older ones were left out. Counted back from ``until`` so a long gap costs ``limit``."""
    if s.every is not None:
        p = s.every
        last = math.floor(until) // p * p
        first = math.floor(after) // p * p + p
        if last < first:
            return [], False
        start = max(first, last - (limit - 1) * p)
        return [float(t) for t in range(start, last + 1, p)], start > first
    out: list[float] = []
    it = _cron_iter(s, math.floor(until) + 1)
    every_hour = _every_hour(s.cron or "")
    while True:
        at = float(it.get_prev(datetime).timestamp())
        if at <= after:
            break
        if not every_hour and _second_pass(at, s.tz):
            continue
        if at > until:
            continue
        if len(out) == limit:
            return out[::-1], True
        out.append(at)
    return out[::-1], False


def grace(s: Schedule, slot: float) -> float:
    """How late a slot may fire under ``--catch-up none``: half its interval, at most 60 s."""
    return min(MAX_GRACE, (next_slot(s, slot) - slot) / 2)


@dataclass(frozen=True, slots=True)
class Plan:
    """What one round does for one schedule: fire these slots, then remember ``last``."""

    fire: list[float]
    last: float
    skipped: int = 0  # due slots not fired (at least this many, if truncated)
    truncated: bool = False


def plan(s: Schedule, last: float, now: float) -> Plan:
    """Which slots after ``last`` to fire at ``now``, by the schedule's catch-up policy."""
    due, truncated = slots_between(s, last, now, MAX_CATCH_UP)
    if not due:
        return Plan([], last)
    latest = due[-1]
    if s.catch_up is CatchUp.ALL:
        return Plan(due, latest, 0, truncated)
    if s.catch_up is CatchUp.ONE:
        return Plan([latest], latest, len(due) - 1, truncated)
    if now - latest <= grace(s, latest):
        return Plan([latest], latest, len(due) - 1, truncated)
    return Plan([], latest, len(due), truncated)


# -- the jobs a schedule makes ---------------------------------------------------------------
def slot_stamp(slot: float) -> str:
    return datetime.fromtimestamp(slot, UTC).strftime(_STAMP)


def slot_job_id(name: str, slot: float) -> str:
    """``sched:<name>:<UTC stamp>``: the same schedule and slot always give the same id."""
    return f"{ID_PREFIX}{name}:{slot_stamp(slot)}"


def manual_job_id(name: str, now: float) -> str:
    """A run-now's id: ``sched:<name>:now-<UTC stamp with microseconds>``."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{ID_PREFIX}{name}:now-{stamp}"


def job_schedule(job_id: str) -> tuple[str, float | None] | None:
    """The schedule a job was fired by and its slot (None for a run-now); None if none."""
    if not job_id.startswith(ID_PREFIX):
        return None
    name, sep, stamp = job_id[len(ID_PREFIX) :].rpartition(":")
    if not sep or not _NAME_RE.fullmatch(name):
        return None
    if stamp.startswith("now-"):
        return name, None
    try:
        return name, datetime.strptime(stamp, _STAMP).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
