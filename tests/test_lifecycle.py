"""Every job state change, as the pure functions of conveyor.lifecycle (no store, no clock)."""

from __future__ import annotations

import random

import pytest

from conveyor import lifecycle
from conveyor.errors import Conflict, IllegalTransition
from conveyor.job import TRANSITIONS, JobRecord, JobState
from conveyor.lifecycle import Outcome, TaskOptions
from conveyor.protocol.payload import EMPTY_CALL, pack

T = 1_700_000_000.0
ERROR = {"type": "ValueError", "message": "bad", "traceback": "tb"}


def queued(**fields: object) -> JobRecord:
    job, _ = lifecycle.born(JobRecord(id="j", task="t", payload=EMPTY_CALL, **fields), T)  # type: ignore[arg-type]
    return job


def running(**fields: object) -> JobRecord:
    return lifecycle.claim(queued(**fields), "w#1", 7, 30.0, T + 1).new


def test_birth_is_queued_or_scheduled() -> None:
    job, first = lifecycle.born(JobRecord(id="j", task="t", payload=EMPTY_CALL), T)
    assert (job.state, job.created_at, job.version, first["event"]) == (
        JobState.QUEUED,
        T,
        1,
        "submitted",
    )
    later, _ = lifecycle.born(JobRecord(id="j", task="t", payload=EMPTY_CALL, eta=T + 5), T)
    assert (later.state, later.eta) == (JobState.SCHEDULED, T + 5)
    past, _ = lifecycle.born(JobRecord(id="j", task="t", payload=EMPTY_CALL, eta=T - 5), T)
    assert (past.state, past.eta) == (JobState.QUEUED, None)


def test_claim_counts_an_attempt_and_resolves_options() -> None:
    t = lifecycle.claim(queued(), "w#1", 7, 30.0, T + 1, TaskOptions(retries=0))
    job = t.new
    assert (job.state, job.attempts, job.worker, job.lease) == (JobState.RUNNING, 1, "w#1", 7)
    assert (job.lease_expires, job.started_at, job.version) == (T + 31, T + 1, 2)
    assert (job.max_retries, job.retry_backoff, job.retry_backoff_max) == (0, 1.0, 300.0)
    assert t.events == ({"event": "started", "at": T + 1, "worker": "w#1", "attempt": 1},)
    mine = lifecycle.claim(queued(max_retries=4), "w#1", 7, 30.0, T, TaskOptions(retries=0))
    assert mine.new.max_retries == 4  # the producer's choice beats the task's


def test_a_successful_report_completes_and_drops_the_lease() -> None:
    t = lifecycle.report(running(), Outcome("j", 7, True, pack(42)), T + 2)
    assert (t.new.state, t.new.result, t.new.lease, t.new.lease_expires) == (
        JobState.COMPLETED,
        pack(42),
        None,
        None,
    )
    assert t.new.finished_at == T + 2 and [e["event"] for e in t.events] == ["completed"]


def test_failures_retry_with_backoff_then_die() -> None:
    rng = random.Random(1)
    job = running(max_retries=1, retry_backoff=2.0)
    t = lifecycle.report(job, Outcome("j", 7, False, error=ERROR), T + 2, rng)
    assert t.new.state is JobState.SCHEDULED and T + 2 <= (t.new.eta or 0) <= T + 4
    assert [e["event"] for e in t.events] == ["failed", "retried"]
    again = lifecycle.claim(lifecycle.promote(t.new, T + 5).new, "w#2", 8, 30, T + 5).new
    t = lifecycle.report(again, Outcome("j", 8, False, error=ERROR), T + 6)
    assert (t.new.state, t.new.error, t.new.finished_at) == (JobState.DEAD, ERROR, T + 6)
    assert t.events[-1] == {"event": "dead", "at": T + 6, "reason": "retries exhausted"}


def test_reject_and_retry_delay() -> None:
    dead = lifecycle.fail(running(max_retries=5), ERROR, T + 2, reject=True).new
    assert dead.state is JobState.DEAD
    later = lifecycle.fail(running(), ERROR, T + 2, retry_delay=60.0).new
    assert (later.state, later.eta) == (JobState.SCHEDULED, T + 62)


def test_a_cancel_request_wins_over_any_outcome() -> None:
    job = running()
    asked = lifecycle.cancel(job, T + 2)
    assert asked is not None and asked.new.cancel_requested
    assert asked.new.state is JobState.RUNNING and asked.new.version == job.version + 1
    assert lifecycle.cancel(asked.new, T + 3) is None  # asked already: nothing to change
    for ending in (
        lifecycle.report(asked.new, Outcome("j", 7, True, pack(1)), T + 4),
        lifecycle.requeue(asked.new, T + 4, "worker lost", True),
        lifecycle.release(asked.new, T + 4),
    ):
        assert ending.new.state is JobState.CANCELLED and ending.new.result is None


def test_cancel_queued_at_once_and_final_conflicts() -> None:
    t = lifecycle.cancel(queued(), T + 1)
    assert t is not None and t.new.state is JobState.CANCELLED
    with pytest.raises(Conflict, match="already cancelled"):
        lifecycle.cancel(t.new, T + 2)


def test_requeue_charges_started_runs_and_spares_prefetched_ones() -> None:
    job = running(max_retries=1)
    charged = lifecycle.requeue(job, T + 2, "worker lost", charged=True)
    assert (charged.new.state, charged.new.attempts, charged.front) == (JobState.QUEUED, 1, True)
    assert charged.events[0]["charged"] is True and charged.new.worker is None
    spared = lifecycle.requeue(job, T + 2, "worker lost", charged=False)
    assert spared.new.attempts == 0 and spared.events[0]["charged"] is False


def test_a_run_that_kills_its_worker_on_every_attempt_ends_dead() -> None:
    job = running(max_retries=1)
    job = lifecycle.requeue(job, T + 2, "worker lost", charged=True).new
    job = lifecycle.claim(job, "w#2", 8, 30.0, T + 3).new
    assert job.attempts == 2
    t = lifecycle.requeue(job, T + 4, "worker lost", charged=True)
    assert t.new.state is JobState.DEAD and t.new.error is not None
    assert t.new.error["type"] == lifecycle.WORKER_LOST
    assert [e["event"] for e in t.events] == ["failed", "dead"]


def test_release_gives_the_attempt_back() -> None:
    t = lifecycle.release(running(), T + 2)
    assert (t.new.state, t.new.attempts, t.front) == (JobState.QUEUED, 0, True)
    assert t.events[0]["event"] == "released"


def test_deadline_fails_with_timeout() -> None:
    t = lifecycle.deadline(running(timeout=1.0, max_retries=0), T + 20, 1.0, grace=10.0)
    assert t.new.state is JobState.DEAD and t.new.error is not None
    assert t.new.error["type"] == "TimeoutError" and "10s" in t.new.error["message"]


def test_dlq_retry_gives_fresh_attempts() -> None:
    dead = lifecycle.fail(running(), ERROR, T + 2, reject=True).new
    t = lifecycle.dlq_retry(dead, T + 3)
    assert (t.new.state, t.new.attempts, t.new.finished_at) == (JobState.QUEUED, 0, None)
    assert t.events[0] == {"event": "retried", "at": T + 3, "reason": "dlq retry"}


@pytest.mark.parametrize("state", list(JobState))
def test_every_illegal_move_raises(state: JobState) -> None:
    job = queued().replace(state=state)
    for target in JobState:
        if target in TRANSITIONS[state]:
            assert lifecycle.move(job, target).new.state is target
        else:
            with pytest.raises(IllegalTransition):
                lifecycle.move(job, target)


def test_functions_refuse_jobs_in_the_wrong_state() -> None:
    done = lifecycle.report(running(), Outcome("j", 7, True, pack(1)), T + 2).new
    for wrong in (
        lambda: lifecycle.claim(done, "w", 1, 30, T),
        lambda: lifecycle.promote(done, T),
        lambda: lifecycle.release(queued(), T),
        lambda: lifecycle.dlq_retry(queued(), T),
        lambda: lifecycle.requeue(done, T, "lost", True),
    ):
        with pytest.raises(IllegalTransition):
            wrong()


def test_a_job_with_dependencies_is_born_waiting_and_released_when_ready() -> None:
    job, _ = lifecycle.born(JobRecord(id="j", task="t", payload=EMPTY_CALL, depends_on=("a",)), T)
    assert job.state is JobState.WAITING
    t = lifecycle.ready(job, T + 1, b"\x91\x01")
    assert (t.new.state, t.new.inputs) == (JobState.QUEUED, b"\x91\x01")
    assert t.events[0]["event"] == "ready"
    later, _ = lifecycle.born(
        JobRecord(id="k", task="t", payload=EMPTY_CALL, depends_on=("a",), eta=T + 60), T
    )
    assert lifecycle.ready(later, T + 1).new.state is JobState.SCHEDULED
    gone = lifecycle.blocked(job, T + 1, "dependency a is dead")
    assert gone.new.state is JobState.CANCELLED
    assert gone.events[0]["reason"] == "dependency a is dead"
