"""Edge validation of submissions: every bad field is named; good input gets defaults."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.errors import BrokerError, InvalidJob
from conveyor.job import DEFAULT_PRIORITY, JobRecord, JobState
from conveyor.limits import (
    MAX_DEPTH,
    MAX_JOB_ID,
    MAX_PAYLOAD,
    MAX_QUEUE_NAME,
    MAX_RETRIES,
    MAX_TASK_NAME,
    MAX_TIMEOUT,
    MAX_UNIQUE_KEY,
)
from conveyor.protocol.payload import pack_call, unpack_call
from conveyor.validation import parse_job, parse_task_options

NOW = 1_700_000_000.0
MAX_ID_LENGTH = MAX_JOB_ID
DEFAULT_MAX_PAYLOAD = MAX_PAYLOAD


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def invalid(raw: Any, max_payload: int = DEFAULT_MAX_PAYLOAD) -> InvalidJob:
    with pytest.raises(InvalidJob) as info:
        parse_job(raw, NOW, max_payload)
    err = info.value
    assert isinstance(err, BrokerError)
    assert err.code == "invalid"
    assert err.message.startswith(err.field or "?")  # "priority must be ...", "args[0] is ..."
    return err


def call(job: JobRecord) -> tuple[list[Any], dict[str, Any]]:
    return unpack_call(job.payload)


# -- valid input ----------------------------------------------------------------------------


def test_minimal_spec_gets_defaults() -> None:
    job = parse_job({"task": "add"}, NOW)
    assert call(job) == ([], {})
    assert job.queue == ""  # routed by its task when stored
    assert job.priority == DEFAULT_PRIORITY == 5
    assert job.state is JobState.QUEUED
    # unset retry options stay None: a worker's claim resolves them from the task's own
    # definition, else the global defaults
    assert (job.max_retries, job.retry_backoff, job.retry_backoff_max) == (None, None, None)
    assert (job.timeout, job.eta, job.unique_key) == (None, None, None)
    assert job.id  # chosen by the broker when the producer did not


def test_full_spec() -> None:
    raw: dict[str, Any] = {
        "task": "mail.send_v2:fast-path",
        "args": [1, 2.5, "x", None, True, [1, {"a": []}]],
        "kwargs": {"to": "a@b.c", "opts": {"retry": False}},
        "queue": "emails.high",
        "priority": 1,
        "retries": 0,
        "retry_backoff": 0.5,
        "retry_backoff_max": 60,
        "timeout": 30,
        "eta": NOW + 3600,
        "unique_key": "user:42 welcome mail",
        "id": "order-42.mail:1",
    }
    job = parse_job(raw, NOW)
    assert job == JobRecord(
        id="order-42.mail:1",
        task=raw["task"],
        payload=pack_call(raw["args"], raw["kwargs"]),
        queue="emails.high",
        priority=1,
        max_retries=0,
        retry_backoff=0.5,
        retry_backoff_max=60.0,
        timeout=30.0,
        eta=NOW + 3600,
        unique_key="user:42 welcome mail",
    )
    assert isinstance(job.retry_backoff_max, float)
    assert isinstance(job.timeout, float)


def test_a_packed_payload_is_taken_as_it_is() -> None:
    payload = pack_call([1], {"k": "v"})
    assert parse_job({"task": "t", "payload": payload}, NOW).payload is payload
    assert invalid({"task": "t", "payload": b"\x91\x90"}).field == "payload"  # not [a, k]
    assert invalid({"task": "t", "payload": "text"}).field == "payload"
    assert invalid({"task": "t", "payload": payload, "args": [1]}).field == "payload"
    big = pack_call(["x" * 2000], {})
    assert invalid({"task": "t", "payload": big}, max_payload=1000).field == "payload"


def test_unknown_fields_are_ignored() -> None:
    job = parse_job({"task": "t", "colour": "blue", "id": "x"}, NOW)
    assert job == parse_job({"task": "t", "id": "x"}, NOW)


def test_delay_becomes_eta() -> None:
    assert parse_job({"task": "t", "delay": 10}, NOW).eta == NOW + 10
    assert parse_job({"task": "t", "delay": 0.25}, NOW).eta == NOW + 0.25


def test_zero_delay_runs_now() -> None:
    assert parse_job({"task": "t", "delay": 0}, NOW).eta is None


def test_past_eta_runs_now() -> None:
    assert parse_job({"task": "t", "eta": NOW - 5}, NOW).eta is None
    assert parse_job({"task": "t", "eta": NOW}, NOW).eta is None


@pytest.mark.parametrize("priority", [1, 5, 10])
def test_priority_bounds_accepted(priority: int) -> None:
    assert parse_job({"task": "t", "priority": priority}, NOW).priority == priority


def test_limits_at_the_edge_are_accepted() -> None:
    raw = {
        "task": "t" * MAX_TASK_NAME,
        "queue": "q" * MAX_QUEUE_NAME,
        "id": "i" * MAX_ID_LENGTH,
        "unique_key": "u" * MAX_UNIQUE_KEY,
        "retries": MAX_RETRIES,
        "timeout": MAX_TIMEOUT,
        "args": [nested(MAX_DEPTH - 1)],  # args is level 1: the innermost list is level 32
        "kwargs": {"big": 2**64, "small": -(2**63) - 1, "huge": 10**40},
    }
    job = parse_job(raw, NOW)
    assert job.max_retries == MAX_RETRIES
    assert call(job)[1]["huge"] == 10**40  # big integers travel (as an extension type)


def test_payload_at_the_limit_is_accepted() -> None:
    # [["x"*n], {}] packs as fixarray, fixarray, str16 header (3 bytes), n bytes, fixmap
    n = 1000 - 6
    parse_job({"task": "t", "args": ["x" * n]}, NOW, max_payload=1000)
    assert invalid({"task": "t", "args": ["x" * (n + 1)]}, max_payload=1000).field == "payload"


def test_task_options_from_ready() -> None:
    options = parse_task_options({"t": {"retries": 0, "timeout": 5}})
    assert options["t"].retries == 0 and options["t"].timeout == 5.0
    for bad in ({"t": {"retries": -1}}, {"t": 5}, [1], {"t": {"timeout": 0}}):
        with pytest.raises(InvalidJob) as info:
            parse_task_options(bad)
        assert info.value.field == "defaults"


# -- invalid input, one field at a time -----------------------------------------------------


def test_job_must_be_a_map() -> None:
    raws: list[Any] = [None, [], "task", 5]
    for raw in raws:
        assert invalid(raw).field == "job"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        # task
        ({}, "task"),
        ({"task": ""}, "task"),
        ({"task": None}, "task"),
        ({"task": 5}, "task"),
        ({"task": b"add"}, "task"),
        ({"task": "has space"}, "task"),
        ({"task": "slash/name"}, "task"),
        ({"task": "é"}, "task"),
        ({"task": "add\n"}, "task"),
        ({"task": "t" * (MAX_TASK_NAME + 1)}, "task"),
        # queue
        ({"task": "t", "queue": ""}, "queue"),
        ({"task": "t", "queue": "a b"}, "queue"),
        ({"task": "t", "queue": "q" * (MAX_QUEUE_NAME + 1)}, "queue"),
        # priority
        ({"task": "t", "priority": 0}, "priority"),
        ({"task": "t", "priority": 11}, "priority"),
        ({"task": "t", "priority": -1}, "priority"),
        ({"task": "t", "priority": "1"}, "priority"),
        ({"task": "t", "priority": True}, "priority"),
        ({"task": "t", "priority": 1.0}, "priority"),
        ({"task": "t", "priority": None}, "priority"),
        # args / kwargs shapes
        ({"task": "t", "args": {"a": 1}}, "args"),
        ({"task": "t", "args": "abc"}, "args"),
        ({"task": "t", "args": None}, "args"),
        ({"task": "t", "kwargs": [1]}, "kwargs"),
        ({"task": "t", "kwargs": "k"}, "kwargs"),
        ({"task": "t", "kwargs": None}, "kwargs"),
        # args / kwargs contents: JSON-compatible only
        ({"task": "t", "kwargs": {1: "x"}}, "kwargs"),
        ({"task": "t", "kwargs": {b"k": "x"}}, "kwargs"),
        ({"task": "t", "args": [{1: 2}]}, "args"),
        ({"task": "t", "kwargs": {"a": {(1, 2): 3}}}, "kwargs"),
        ({"task": "t", "args": [b"bytes"]}, "args"),
        ({"task": "t", "kwargs": {"b": bytearray(b"x")}}, "kwargs"),
        ({"task": "t", "args": [float("nan")]}, "args"),
        ({"task": "t", "kwargs": {"x": [float("nan")]}}, "kwargs"),
        ({"task": "t", "args": [float("inf")]}, "args"),
        ({"task": "t", "args": [float("-inf")]}, "args"),
        ({"task": "t", "args": [{1, 2}]}, "args"),
        ({"task": "t", "args": [object()]}, "args"),
        ({"task": "t", "args": [nested(MAX_DEPTH)]}, "args"),  # 33 levels with args
        ({"task": "t", "args": [nested(MAX_DEPTH + 1)]}, "args"),
        ({"task": "t", "kwargs": {"deep": nested(MAX_DEPTH + 1)}}, "kwargs"),
        # retries
        ({"task": "t", "retries": -1}, "retries"),
        ({"task": "t", "retries": MAX_RETRIES + 1}, "retries"),
        ({"task": "t", "retries": "3"}, "retries"),
        ({"task": "t", "retries": True}, "retries"),
        ({"task": "t", "retries": 2.0}, "retries"),
        # backoff
        ({"task": "t", "retry_backoff": -1}, "retry_backoff"),
        ({"task": "t", "retry_backoff": "1"}, "retry_backoff"),
        ({"task": "t", "retry_backoff": True}, "retry_backoff"),
        ({"task": "t", "retry_backoff": float("nan")}, "retry_backoff"),
        ({"task": "t", "retry_backoff_max": -1}, "retry_backoff_max"),
        ({"task": "t", "retry_backoff_max": float("inf")}, "retry_backoff_max"),
        # timeout
        ({"task": "t", "timeout": 0}, "timeout"),
        ({"task": "t", "timeout": -5}, "timeout"),
        ({"task": "t", "timeout": MAX_TIMEOUT + 1}, "timeout"),
        ({"task": "t", "timeout": "30"}, "timeout"),
        ({"task": "t", "timeout": False}, "timeout"),
        ({"task": "t", "timeout": float("nan")}, "timeout"),
        # delay / eta
        ({"task": "t", "delay": -1}, "delay"),
        ({"task": "t", "delay": "10"}, "delay"),
        ({"task": "t", "delay": 366 * 86400}, "delay"),
        ({"task": "t", "delay": 10, "eta": NOW + 10}, "delay"),
        ({"task": "t", "delay": 0, "eta": NOW + 10}, "delay"),
        ({"task": "t", "eta": -1}, "eta"),
        ({"task": "t", "eta": "tomorrow"}, "eta"),
        ({"task": "t", "eta": True}, "eta"),
        ({"task": "t", "eta": 1e12}, "eta"),
        ({"task": "t", "eta": 10**400}, "eta"),
        # unique_key
        ({"task": "t", "unique_key": ""}, "unique_key"),
        ({"task": "t", "unique_key": 5}, "unique_key"),
        ({"task": "t", "unique_key": b"k"}, "unique_key"),
        ({"task": "t", "unique_key": "u" * (MAX_UNIQUE_KEY + 1)}, "unique_key"),
        # id
        ({"task": "t", "id": ""}, "id"),
        ({"task": "t", "id": 42}, "id"),
        ({"task": "t", "id": "has space"}, "id"),
        ({"task": "t", "id": "a/b"}, "id"),
        ({"task": "t", "id": "i" * (MAX_ID_LENGTH + 1)}, "id"),
    ],
)
def test_invalid_field_is_named(raw: dict[str, Any], field: str) -> None:
    assert invalid(raw).field == field


def test_oversized_payload_names_payload() -> None:
    err = invalid({"task": "t", "args": ["x" * DEFAULT_MAX_PAYLOAD]})
    assert err.field == "payload"
    assert str(DEFAULT_MAX_PAYLOAD) in err.message


def test_payload_counts_args_and_kwargs_together() -> None:
    half = {"task": "t", "args": ["x" * 600], "kwargs": {"k": "y" * 600}}
    assert invalid(half, max_payload=1000).field == "payload"
    parse_job(half, NOW, max_payload=2000)


def test_first_bad_field_wins() -> None:
    """Checks run in a fixed order, so the same input always names the same field."""
    err = invalid({"task": "", "queue": "", "priority": 0})
    assert err.field == "task"


def test_message_is_human_readable() -> None:
    err = invalid({"task": "t", "priority": 11})
    assert err.message == "priority must be an integer from 1 to 10"
    assert str(err) == "invalid: priority must be an integer from 1 to 10"


def test_names_found_good_once_are_still_checked_as_what_they_are() -> None:
    """parse_job remembers good task and queue names; that must not let a bad one in."""
    parse_job({"task": "t-ok", "queue": "q-ok"}, 0.0)
    parse_job({"task": "t-ok", "queue": "q-ok"}, 0.0)  # the remembered path
    for bad, fld in (
        ({"task": ["t-ok"]}, "task"),  # unhashable: invalid, not a TypeError
        ({"task": "t ok"}, "task"),
        ({"task": "t-ok", "queue": "q ok"}, "queue"),
        ({"task": "t-ok", "queue": "x" * 201}, "queue"),
        ({"task": "t-ok", "queue": {"q-ok": 1}}, "queue"),
    ):
        with pytest.raises(InvalidJob) as caught:
            parse_job(bad, 0.0)
        assert caught.value.field == fld
