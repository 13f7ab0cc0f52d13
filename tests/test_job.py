"""Job states, their legal moves, and the job's wire form."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from conveyor.job import (
    FINAL_STATES,
    RECORD_FIELDS,
    TRANSITIONS,
    EventKind,
    Job,
    JobRecord,
    JobState,
    can_move,
    event,
)
from conveyor.protocol.payload import pack, pack_call


def test_every_state_has_a_transitions_entry() -> None:
    assert set(TRANSITIONS) == set(JobState)
    for targets in TRANSITIONS.values():
        assert targets <= set(JobState)


def test_final_states() -> None:
    assert {
        JobState.COMPLETED,
        JobState.DEAD,
        JobState.CANCELLED,
    } == FINAL_STATES
    for state in JobState:
        assert state.is_final is (state in FINAL_STATES)


def test_final_states_have_no_exit_but_dlq_retry() -> None:
    assert TRANSITIONS[JobState.COMPLETED] == frozenset()
    assert TRANSITIONS[JobState.CANCELLED] == frozenset()
    assert TRANSITIONS[JobState.DEAD] == frozenset({JobState.QUEUED})


def test_no_state_moves_to_itself() -> None:
    for state, targets in TRANSITIONS.items():
        assert state not in targets


def test_every_state_is_reachable_from_birth() -> None:
    seen = {JobState.QUEUED, JobState.SCHEDULED, JobState.WAITING}  # born in one of these
    frontier = list(seen)
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(JobState)


@pytest.mark.parametrize(
    ("src", "dst", "ok"),
    [
        (JobState.SCHEDULED, JobState.QUEUED, True),  # eta reached
        (JobState.QUEUED, JobState.RUNNING, True),  # dispatched
        (JobState.RUNNING, JobState.COMPLETED, True),
        (JobState.RUNNING, JobState.SCHEDULED, True),  # retry after backoff
        (JobState.RUNNING, JobState.QUEUED, True),  # requeued
        (JobState.RUNNING, JobState.DEAD, True),
        (JobState.RUNNING, JobState.CANCELLED, True),
        (JobState.QUEUED, JobState.CANCELLED, True),
        (JobState.SCHEDULED, JobState.CANCELLED, True),
        (JobState.DEAD, JobState.QUEUED, True),  # dlq retry
        (JobState.SCHEDULED, JobState.RUNNING, False),
        (JobState.QUEUED, JobState.COMPLETED, False),
        (JobState.COMPLETED, JobState.QUEUED, False),
        (JobState.CANCELLED, JobState.QUEUED, False),
        (JobState.DEAD, JobState.RUNNING, False),
    ],
)
def test_can_move(src: JobState, dst: JobState, ok: bool) -> None:
    assert can_move(src, dst) is ok


def test_states_and_events_are_wire_strings() -> None:
    assert [s.value for s in JobState] == [
        "waiting",
        "scheduled",
        "queued",
        "running",
        "completed",
        "dead",
        "cancelled",
    ]
    assert {e.value for e in EventKind} == {
        "submitted",
        "started",
        "released",
        "ready",
        "cancel_requested",
        "requeued",
        "retried",
        "completed",
        "failed",
        "dead",
        "cancelled",
    }


def test_event_drops_none_details() -> None:
    assert event(EventKind.FAILED, 5.0, worker="w#1", reason=None, attempt=2) == {
        "event": "failed",
        "at": 5.0,
        "worker": "w#1",
        "attempt": 2,
    }


# -- wire form ------------------------------------------------------------------------------


def _full_job() -> Job:
    return Job(
        id="0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        task="mail.send",
        args=[1, "two", [3]],
        kwargs={"to": "a@b.c"},
        queue="emails",
        priority=2,
        state=JobState.DEAD,
        max_retries=1,
        retry_backoff=0.5,
        retry_backoff_max=9.0,
        timeout=30.0,
        eta=1_700_000_010.0,
        unique_key="welcome:42",
        attempts=2,
        worker="host-1#3",
        lease=17,
        lease_expires=1_700_000_040.0,
        result=None,
        error={"type": "ValueError", "message": "bad", "traceback": "Traceback ..."},
        created_at=1_700_000_000.0,
        started_at=1_700_000_005.0,
        finished_at=1_700_000_006.0,
        cancel_requested=False,
        events=(
            event(EventKind.SUBMITTED, 1_700_000_000.0),
            event(EventKind.STARTED, 1_700_000_001.0, worker="host-1#3"),
            event(EventKind.FAILED, 1_700_000_002.0, worker="host-1#3", attempt=1, error="E: x"),
            event(EventKind.DEAD, 1_700_000_006.0, reason="retries exhausted"),
        ),
    )


@pytest.mark.parametrize(
    "job",
    [
        Job(id="j1", task="t"),
        Job(id="j2", task="t", args=[1], state=JobState.COMPLETED, result={"sum": 3}),
        _full_job(),
    ],
    ids=["defaults", "completed", "full"],
)
def test_wire_round_trip(job: Job) -> None:
    wire = job.to_wire()
    assert wire["state"] == job.state.value
    assert isinstance(wire["args"], list)
    assert isinstance(wire["events"], list)
    assert Job.from_wire(wire) == job
    # and through MessagePack, as it travels
    packed = msgpack.unpackb(msgpack.packb(wire, use_bin_type=True), raw=False)
    assert Job.from_wire(packed) == job


def test_wire_has_every_field() -> None:
    wire = _full_job().to_wire()
    split = {"progress_message", "meta", "progress_at"}  # inside the "progress" map
    assert set(wire) == {f.name for f in dataclasses.fields(Job)} - split


def test_progress_travels_as_one_map() -> None:
    job = Job(id="x", task="t", progress=0.25, progress_message="a", meta={"k": 1}, progress_at=2.0)
    wire = job.to_wire()
    assert wire["progress"] == {"value": 0.25, "message": "a", "meta": {"k": 1}, "at": 2.0}
    assert Job.from_wire(wire) == job
    assert Job.from_wire({"id": "x", "task": "t"}).progress is None


def test_wire_without_events() -> None:
    wire = _full_job().to_wire(events=False)
    assert "events" not in wire
    assert Job.from_wire(wire).events == ()


def test_from_wire_ignores_unknown_fields_and_defaults_state() -> None:
    job = Job.from_wire({"id": "x", "task": "t", "waiting": "no worker offers t", "new": 1})
    assert job == Job(id="x", task="t", waiting="no worker offers t")
    assert job.state is JobState.QUEUED


def test_from_wire_reads_packed_payload_and_result() -> None:
    wire = {"id": "x", "task": "t", "state": "completed"}
    wire |= {"payload": pack_call([1, 2**70], {"k": "v"}), "result": pack({"big": -(2**80)})}
    job = Job.from_wire(wire)
    assert (job.args, job.kwargs, job.result) == ([1, 2**70], {"k": "v"}, {"big": -(2**80)})


def test_record_replace_copies_and_refuses_unknown_fields() -> None:
    record = JobRecord(id="x", task="t", payload=b"\x92\x90\x80")
    moved = record.replace(state=JobState.RUNNING, attempts=1)
    assert (moved.state, moved.attempts, record.state) == (JobState.RUNNING, 1, JobState.QUEUED)
    assert {f.name for f in dataclasses.fields(JobRecord)} == set(RECORD_FIELDS)
    with pytest.raises(TypeError, match="nope"):
        record.replace(nope=1)


def test_from_wire_rejects_unknown_state() -> None:
    with pytest.raises(ValueError):
        Job.from_wire({"id": "x", "task": "t", "state": "exploded"})


def test_job_is_frozen() -> None:
    job = Job(id="x", task="t")
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.state = JobState.RUNNING  # type: ignore[misc]
