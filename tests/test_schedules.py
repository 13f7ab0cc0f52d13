"""Schedules as pure functions: parsing, slots (DST in Europe/Berlin), catch-up, job ids."""

from __future__ import annotations

import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from conveyor.errors import InvalidJob
from conveyor.schedules import (
    MAX_CATCH_UP,
    CatchUp,
    Schedule,
    format_every,
    job_schedule,
    manual_job_id,
    next_slot,
    parse_declared,
    parse_every,
    parse_schedule,
    plan,
    slot_job_id,
    slots_between,
)

BERLIN = ZoneInfo("Europe/Berlin")


def at(*parts: int) -> float:
    """A Berlin wall-clock time as epoch seconds (the first of two, in a repeated hour)."""
    return datetime(*parts, tzinfo=BERLIN).timestamp()  # type: ignore[misc]


def local(ts: float) -> str:
    return datetime.fromtimestamp(ts, BERLIN).strftime("%m-%d %H:%M%z")


def cron(expr: str, tz: str = "Europe/Berlin", **kw: object) -> Schedule:
    return parse_schedule({"name": "n", "task": "t", "cron": expr, "tz": tz, **kw}, 0)


def every(period: str, **kw: object) -> Schedule:
    return parse_schedule({"name": "n", "task": "t", "every": period, **kw}, 0)


# -- parsing -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400), ("1h30m", 5400), ("45", 45), (2, 2)],
)
def test_every_durations(text: object, seconds: int) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize("bad", ["", "5x", "1.5s", "s", "0s", "-5s", 0, 0.5, True, None, "400d"])
def test_bad_durations_name_the_field(bad: object) -> None:
    with pytest.raises(InvalidJob) as exc:
        parse_every(bad)
    assert exc.value.field == "every"


def test_a_leap_day_schedule_is_fine() -> None:
    s = cron("0 12 29 2 *", "UTC")
    assert datetime.fromtimestamp(next_slot(s, at(2025, 1, 1))).year == 2028


def test_format_every() -> None:
    assert [format_every(s) for s in (1, 90, 3600, 86400 + 60)] == ["1s", "1m30s", "1h", "1d1m"]


@pytest.mark.parametrize(
    ("spec", "fld"),
    [
        ({"cron": "* * *"}, "cron"),
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * * * *"}, "cron"),  # no seconds field: 5 fields only
        ({"cron": "@often"}, "cron"),
        ({"cron": "0 0 30 2 *"}, "cron"),  # valid, but February has no 30th
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "tz"),
        ({"cron": "* * * * *", "tz": "../../etc/passwd"}, "tz"),
        ({"every": "30s", "tz": "Europe/Berlin"}, "tz"),
        ({}, "cron"),
        ({"cron": "* * * * *", "every": "1s"}, "cron"),
        ({"every": "1s", "catch_up": "some"}, "catch_up"),
        ({"every": "1s", "priority": 0}, "priority"),
        ({"every": "1s", "queue": "a b"}, "queue"),
        ({"every": "1s", "args": {"a": 1}}, "args"),
        ({"every": "1s", "kwargs": {"a": float("nan")}}, "kwargs"),
        ({"every": "1s", "name": "x" * 65}, "name"),
        ({"every": "1s", "name": "a b"}, "name"),
        ({"every": "1s", "task": ""}, "task"),
    ],
)
def test_bad_specs_name_the_field(spec: dict[str, object], fld: str) -> None:
    with pytest.raises(InvalidJob) as exc:
        parse_schedule({"name": "n", "task": "t", **spec}, 0)
    assert exc.value.field == fld


def test_a_spec_round_trips_through_its_stored_map() -> None:
    s = cron("*/5 * * * *", kwargs={"x": [1, 2]}, queue="q", priority=2, catch_up="all")
    assert Schedule.from_map(s.to_map()) == s
    assert s.when == "cron '*/5 * * * *' Europe/Berlin"
    assert every("90s").when == "every 1m30s"


def test_declared_schedules_are_named_after_their_task() -> None:
    [s] = parse_declared({"report:daily": {"cron": "0 3 * * *"}}, {"report:daily"}, 10.5)
    assert (s.name, s.task, s.source, s.created_at) == ("report:daily", "report:daily", "code", 10)
    with pytest.raises(InvalidJob) as exc:
        parse_declared({"other": {"cron": "0 3 * * *"}}, {"report"}, 0)
    assert exc.value.field == "schedules"
    with pytest.raises(InvalidJob, match="of task 'report'"):
        parse_declared({"report": {"cron": "nope"}}, {"report"}, 0)


# -- slots and daylight saving -----------------------------------------------------------------
def test_every_slots_are_multiples_of_the_period_since_the_epoch() -> None:
    s = every("5s")
    assert next_slot(s, 100) == 105 and next_slot(s, 101.5) == 105 and next_slot(s, 104.99) == 105
    assert slots_between(s, 100, 116, 10) == ([105.0, 110.0, 115.0], False)
    assert slots_between(s, 100, 104.9, 10) == ([], False)
    assert slots_between(s, 100, 131, 3) == ([120.0, 125.0, 130.0], True)  # the latest 3


def test_daily_0230_on_the_spring_change_runs_once_at_0300() -> None:
    s = cron("30 2 * * *")  # 2024-03-31: 02:00 CET -> 03:00 CEST, 02:30 does not exist
    slots, _ = slots_between(s, at(2024, 3, 29, 12), at(2024, 4, 2, 12), 100)
    assert [local(t) for t in slots] == [
        "03-30 02:30+0100",
        "03-31 03:00+0200",
        "04-01 02:30+0200",
        "04-02 02:30+0200",
    ]
    assert local(next_slot(s, at(2024, 3, 30, 12))) == "03-31 03:00+0200"


def test_daily_0230_on_the_autumn_change_runs_once() -> None:
    s = cron("30 2 * * *")  # 2024-10-27: 03:00 CEST -> 02:00 CET, 02:30 happens twice
    slots, _ = slots_between(s, at(2024, 10, 25, 12), at(2024, 10, 29, 12), 100)
    assert [local(t) for t in slots] == [
        "10-26 02:30+0200",
        "10-27 02:30+0200",  # the first 02:30 only
        "10-28 02:30+0100",
        "10-29 02:30+0100",
    ]
    first = next_slot(s, at(2024, 10, 26, 12))
    assert local(first) == "10-27 02:30+0200"
    assert local(next_slot(s, first)) == "10-28 02:30+0100"  # not the second 02:30 an hour on


def test_hourly_runs_in_both_passes_of_a_repeated_hour() -> None:
    s = cron("30 * * * *")
    slots, _ = slots_between(s, at(2024, 10, 27, 1, 0), at(2024, 10, 27, 4, 0), 100)
    assert [local(t) for t in slots] == [
        "10-27 01:30+0200",
        "10-27 02:30+0200",
        "10-27 02:30+0100",
        "10-27 03:30+0100",
    ]
    assert [t2 - t1 for t1, t2 in itertools.pairwise(slots)] == [3600.0] * 3


def test_forward_and_backward_counts_agree_over_a_year() -> None:
    s = cron("15 2 * * 0")  # Sundays 02:15: both changes fall on a Sunday in Berlin
    slots, truncated = slots_between(s, at(2024, 1, 1), at(2025, 1, 1), 1000)
    walked, t = [], at(2024, 1, 1)
    while (t := next_slot(s, t)) <= at(2025, 1, 1):
        walked.append(t)
    assert slots == walked and not truncated and len(slots) == 52


# -- catch-up ------------------------------------------------------------------------------
def test_on_time_every_policy_fires_the_slot() -> None:
    for policy in CatchUp:
        p = plan(every("10s", catch_up=policy.value), 100, 110.2)
        assert (p.fire, p.last) == ([110.0], 110.0)


def test_nothing_due_changes_nothing() -> None:
    p = plan(every("10s"), 110, 119.9)
    assert (p.fire, p.last) == ([], 110)


def test_catch_up_all_fires_every_missed_slot() -> None:
    p = plan(every("10s", catch_up="all"), 100, 145)
    assert (p.fire, p.last, p.skipped) == ([110.0, 120.0, 130.0, 140.0], 140.0, 0)


def test_catch_up_one_fires_the_latest_missed_slot() -> None:
    p = plan(every("10s", catch_up="one"), 100, 145)
    assert (p.fire, p.last, p.skipped) == ([140.0], 140.0, 3)


def test_catch_up_none_skips_missed_slots_and_a_late_one() -> None:
    s = every("10s", catch_up="none")
    assert plan(s, 100, 145.5).fire == []  # 140 is 5.5 s late: past half the interval
    assert plan(s, 100, 145.5).last == 140.0  # and it stays skipped
    assert plan(s, 100, 142).fire == [140.0]  # within its grace
    daily = cron("0 3 * * *", catch_up="none")
    assert plan(daily, at(2024, 1, 1, 3), at(2024, 1, 3, 3, 0, 59)).fire == [at(2024, 1, 3, 3)]
    assert plan(daily, at(2024, 1, 1, 3), at(2024, 1, 3, 3, 1, 1)).fire == []  # grace is 60 s


def test_catch_up_all_is_bounded() -> None:
    p = plan(every("1s", catch_up="all"), 0, 5000)
    assert len(p.fire) == MAX_CATCH_UP and p.fire[-1] == 5000 and p.truncated
    c = plan(cron("* * * * *", "UTC", catch_up="all"), 0, 86400 * 3)  # 4,320 missed minutes
    assert len(c.fire) == MAX_CATCH_UP and c.fire[-1] == 86400 * 3


def test_catch_up_across_the_autumn_change_with_a_fake_clock() -> None:
    s = cron("30 2 * * *", catch_up="all")
    p = plan(s, at(2024, 10, 26, 3), at(2024, 10, 28, 3))  # down over the change
    assert [local(t) for t in p.fire] == ["10-27 02:30+0200", "10-28 02:30+0100"]


# -- ids -------------------------------------------------------------------------------------
def test_job_ids_are_made_from_schedule_and_slot() -> None:
    job_id = slot_job_id("nightly", 1_700_000_000)
    assert job_id == "sched:nightly:20231114T221320Z" == slot_job_id("nightly", 1_700_000_000.0)
    assert job_schedule(job_id) == ("nightly", 1_700_000_000.0)
    assert job_schedule(slot_job_id("a:b", 60)) == ("a:b", 60.0)
    assert job_schedule(manual_job_id("nightly", 5.25)) == ("nightly", None)
    assert job_schedule("0190-plain-uuid") is None and job_schedule("sched:x:junk") is None
    longest = manual_job_id("x" * 64, 1e10)
    assert len(longest) <= 100
