"""Limits as people write them: what is accepted, and what each refusal says."""

from __future__ import annotations

import pytest

from conveyor import limitspec
from conveyor.errors import InvalidJob


@pytest.mark.parametrize(
    ("text", "per_second", "shown"),
    [
        ("10/s", 10.0, "10/s"),
        ("100/m", 100 / 60, "100/m"),
        ("0.5/s", 0.5, "0.5/s"),
        ("20", 20.0, "20/s"),
        (" 3 / h ", 3 / 3600, "3/h"),
    ],
)
def test_rates(text: str, per_second: float, shown: str) -> None:
    rate = limitspec.parse_rate(text)
    assert abs(rate.per_second - per_second) < 1e-12 and str(rate) == shown


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("abc", "must be a rate"),
        ("0/s", "more than 0"),
        ("-1/s", "must be a rate"),
        ("5/x", "must be a rate"),
        ("", "must be a rate"),
        ("1e400/s", "more than 0"),
        ("2000000/s", "at most"),
    ],
)
def test_bad_rates_say_what_a_rate_looks_like(text: str, needle: str) -> None:
    with pytest.raises(InvalidJob, match=needle) as caught:
        limitspec.parse_rate(text)
    assert caught.value.field == "rate" and caught.value.code == "invalid"


def test_targets_and_assignments() -> None:
    assert limitspec.parse_target("task:add") == ("task", "add")
    assert limitspec.parse_target("key:domain:") == ("key", "domain:")
    assert limitspec.parse_assignment("task:add=100/s") == ("task:add", "100/s")
    assert limitspec.parse_assignment("key:domain:=2") == ("key:domain:", 2)
    assert limitspec.check_table({"queue:mail": "6/m", "key:k": "3"}) == {
        "queue:mail": "6/m",
        "key:k": 3,
    }
    for bad, needle in [
        ("add", "task:NAME"),
        ("job:add", "task:NAME"),
        ("task:", "task name"),
        ("task:bad name", "task name"),
    ]:
        with pytest.raises(InvalidJob, match=needle):
            limitspec.parse_target(bad)
    for bad in ("task:add", "key:d=0", "key:d=-1", "key:d=x", "task:add=abc"):
        with pytest.raises(InvalidJob):
            limitspec.parse_assignment(bad)
