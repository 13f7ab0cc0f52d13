"""The ready index with concurrency keys: refused jobs are parked, the claim goes past
them, and freed slots put back that many (the gate as the broker's dispatcher uses it)."""

from __future__ import annotations

from conveyor.broker.keygate import ConcurrencyGate
from conveyor.job import JobRecord
from conveyor.stores._index import ReadyIndex

Q, T = ("q",), frozenset({"t"})


def _claim(index: ReadyIndex, gate: ConcurrencyGate, limit: int, keys: dict[str, str]) -> list[str]:
    """What one claim does: put back what was freed, pop through the gate, settle."""
    index.unpark(gate.freed())
    ids = index.pop(Q, T, limit, gate.admit)
    gate.settle(JobRecord(id=i, task="t", payload=b"", concurrency_key=keys.get(i)) for i in ids)
    return ids


def test_a_key_at_its_limit_is_skipped_and_the_rest_flow() -> None:
    index, gate = ReadyIndex(), ConcurrencyGate(lambda task: 2)
    keys = {f"a{n}": "domain:a" for n in range(5)}
    for n in range(5):
        index.push(f"a{n}", "q", "t", 5, n + 1, "domain:a")
    for n in range(3):
        index.push(f"free{n}", "q", "t", 5, 10 + n)
    assert _claim(index, gate, 10, keys) == ["a0", "a1", "free0", "free1", "free2"]
    assert index.waiting_for_key() == {"domain:a": 3}
    assert _claim(index, gate, 10, keys) == []  # parked: not looked at again
    assert len(index) == 3  # still queued
    gate.release("domain:a")
    assert _claim(index, gate, 10, keys) == ["a2"]  # one slot freed: one comes back
    assert index.waiting_for_key() == {"domain:a": 2}


def test_a_cancelled_parked_job_never_comes_back_and_is_not_counted() -> None:
    index, gate = ReadyIndex(), ConcurrencyGate(lambda task: 1)
    keys = {"k1": "k", "k2": "k", "k3": "k"}
    for n, job_id in enumerate(keys, start=1):
        index.push(job_id, "q", "t", 5, n, "k")
    assert _claim(index, gate, 10, keys) == ["k1"]
    assert index.discard("k2")
    assert index.waiting_for_key() == {"k": 1}
    gate.release("k")
    assert _claim(index, gate, 10, keys) == ["k3"]
    assert index.waiting_for_key() == {}


def test_a_raised_limit_puts_every_parked_job_back() -> None:
    limit = {"n": 1}
    index, gate = ReadyIndex(), ConcurrencyGate(lambda task: limit["n"])
    keys = {f"j{n}": "k" for n in range(4)}
    for n in range(4):
        index.push(f"j{n}", "q", "t", 5, n + 1, "k")
    assert _claim(index, gate, 10, keys) == ["j0"]
    limit["n"] = 3
    gate.reconsider()
    assert _claim(index, gate, 10, keys) == ["j1", "j2"]


def test_broker_prefixes_win_over_the_tasks_own_limit() -> None:
    gate = ConcurrencyGate(lambda task: 5)
    gate.prefixes = {"domain:": 2, "domain:big.": 4}
    assert gate.limit("t", "domain:x") == 2
    assert gate.limit("t", "domain:big.example") == 4
    assert gate.limit("t", "other") == 5


def test_an_admitted_job_the_claim_did_not_take_frees_its_slot() -> None:
    gate = ConcurrencyGate(lambda task: 1)
    assert gate.admit("t", "k")
    gate.settle([])  # cancelled while the claim read it back
    assert gate.running == {} and gate.freed() == {"k": 1}
    assert gate.admit("t", "k")


def test_without_keys_no_gate_is_asked() -> None:
    index = ReadyIndex()
    index.push("a", "q", "t", 5, 1)

    def refuse(task: str, key: str) -> bool:
        raise AssertionError("asked about a job without a key")

    assert index.pop(Q, T, 5, refuse) == ["a"]


def _claim_for(
    index: ReadyIndex, gate: ConcurrencyGate, queues: tuple[str, ...], keys: dict[str, str]
) -> list[str]:
    index.unpark(gate.freed())
    ids = index.pop(queues, T, 10, gate.admit)
    gate.settle(JobRecord(id=i, task="t", payload=b"", concurrency_key=keys.get(i)) for i in ids)
    return ids


def _two_queues_one_key() -> tuple[ReadyIndex, ConcurrencyGate, dict[str, str]]:
    """Key ``k`` (limit 1) held by a running job; an urgent job of it queued on ``a``, a
    later one on ``b``: a claim over both parks them both."""
    index, gate = ReadyIndex(), ConcurrencyGate(lambda task: 1)
    keys = {"run": "k", "urgent-a": "k", "later-b": "k"}
    index.push("run", "b", "t", 5, 1, "k")
    assert _claim_for(index, gate, ("a", "b"), keys) == ["run"]
    index.push("urgent-a", "a", "t", 1, 2, "k")
    index.push("later-b", "b", "t", 5, 3, "k")
    assert _claim_for(index, gate, ("a", "b"), keys) == []
    assert index.waiting_for_key() == {"k": 2}
    return index, gate, keys


def test_a_freed_slot_reaches_a_claimant_that_cannot_take_the_most_urgent_parked_job() -> None:
    """Queue ``a`` paused (or its worker gone): the claims are over ``b`` alone. The freed
    slot must not go to the parked job of ``a`` only, leaving ``b``'s parked for good."""
    index, gate, keys = _two_queues_one_key()
    gate.release("k")  # the running job finished: k has room
    assert _claim_for(index, gate, ("b",), keys) == ["later-b"]
    gate.release("k")
    assert _claim_for(index, gate, ("a", "b"), keys) == ["urgent-a"]  # resumed


def test_a_freed_slot_is_not_lost_with_a_job_cancelled_before_any_claim_took_it() -> None:
    """The slot frees during another worker's claim (over ``c``); then the most urgent
    parked job is cancelled: the other one may run, nothing holds k."""
    index, gate, keys = _two_queues_one_key()
    gate.release("k")
    assert _claim_for(index, gate, ("c",), keys) == []
    assert index.discard("urgent-a")
    assert _claim_for(index, gate, ("a", "b"), keys) == ["later-b"]
    assert index.waiting_for_key() == {}


def test_a_job_put_back_for_a_freed_slot_and_cancelled_passes_the_slot_on() -> None:
    """The slot frees in a claim that fills up on a more urgent job without a key; the job
    of k put back for it is cancelled before the next claim: the next of k may run."""
    index, gate = ReadyIndex(), ConcurrencyGate(lambda task: 1)
    keys = {"run": "k", "k1": "k", "k2": "k"}
    index.push("run", "q", "t", 5, 1, "k")
    assert _claim(index, gate, 1, keys) == ["run"]
    index.push("k1", "q", "t", 5, 2, "k")
    index.push("k2", "q", "t", 5, 3, "k")
    assert _claim(index, gate, 10, keys) == []  # both parked
    index.push("urgent", "q", "t", 1, 4)
    gate.release("k")
    assert _claim(index, gate, 1, keys) == ["urgent"]  # k1 is back, not taken yet
    assert index.discard("k1")
    assert _claim(index, gate, 10, keys) == ["k2"]


def test_keyed_claims_agree_with_a_plain_scan_through_random_changes() -> None:
    """Against a reference: each claim takes, most urgent first, the jobs its queues and
    tasks offer whose key has room (running plus taken so far below its limit), through
    pushes, cancels, finished runs and claimants over different queues."""
    import random
    from collections import Counter

    rng = random.Random(3)
    limits = {"k0": 1, "k1": 2, "k2": 3}
    gate = ConcurrencyGate()
    gate.prefixes = dict(limits)
    index = ReadyIndex()
    live: dict[str, tuple[int, int, str, str, str | None]] = {}  # (p, seq, q, t, key)
    running: list[tuple[str, str | None]] = []
    queues, tasks = ["a", "b", "c", "d"], ["t0", "t1"]
    kinds = [
        (("a", "b", "c", "d"), frozenset(tasks)),
        (("b",), frozenset(tasks)),
        (("a", "c"), frozenset({"t0"})),
        (("d",), frozenset({"t1"})),
    ]
    for step in range(4000):
        roll = rng.random()
        if roll < 0.4:
            job, key = f"j{step}", rng.choice([None, "k0", "k1", "k2", "k0"])
            q, t, p = rng.choice(queues), rng.choice(tasks), rng.randint(1, 3)
            index.push(job, q, t, p, step + 1, key)
            live[job] = (p, step + 1, q, t, key)
        elif roll < 0.47 and live:
            job = rng.choice(sorted(live))
            assert index.discard(job)
            del live[job]
        elif roll < 0.6 and running:
            _, key = running.pop(rng.randrange(len(running)))
            if key is not None:
                gate.release(key)
        else:
            qs, ts = rng.choice(kinds)
            n = rng.randint(1, 4)
            held = Counter(k for _, k in running if k is not None)
            want: list[str] = []
            for _, _, job in sorted((v[0], v[1], j) for j, v in live.items() if v[2] in qs):
                key = live[job][4]
                if len(want) == n or live[job][3] not in ts:
                    continue
                if key is not None:
                    if held[key] >= limits[key]:
                        continue
                    held[key] += 1
                want.append(job)
            index.unpark(gate.freed())
            got = index.pop(qs, ts, n, gate.admit)
            gate.settle(
                JobRecord(id=i, task="t", payload=b"", concurrency_key=live[i][4]) for i in got
            )
            assert got == want, step
            for job in got:
                running.append((job, live.pop(job)[4]))
