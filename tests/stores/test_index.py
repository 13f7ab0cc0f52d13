"""The ready index on its own: ordering, lazy deletion, bulk load."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from conveyor.stores._index import IDLE_CLAIMS, ReadyIndex


def push(
    index: ReadyIndex, job_id: str, seq: int, priority: int = 5, queue: str = "q", task: str = "t"
) -> None:
    index.push(job_id, queue, task, priority, seq)


def test_priority_then_sequence_across_queues_and_tasks() -> None:
    index = ReadyIndex()
    push(index, "a", 1, 5)
    push(index, "b", 2, 1, queue="r")
    push(index, "c", 3, 5, task="u")
    push(index, "d", -1, 5)  # requeued: in front of its priority
    assert index.pop(["q", "r"], {"t", "u"}, 10) == ["b", "d", "a", "c"]


def test_only_the_queues_and_tasks_asked_for() -> None:
    index = ReadyIndex()
    push(index, "a", 1, queue="q")
    push(index, "b", 2, queue="r")
    push(index, "c", 3, task="u")
    assert index.pop(["r"], {"t"}, 10) == ["b"]
    assert index.pop(["q"], {"t"}, 10) == ["a"]
    assert "c" in index and len(index) == 1


def test_discard_and_reindex_skip_stale_entries() -> None:
    index = ReadyIndex()
    push(index, "a", 1)
    push(index, "b", 2)
    assert index.discard("a") and not index.discard("a")
    push(index, "b", -1)  # b indexed again under a new sequence: the old entry is stale
    assert len(index) == 1
    assert index.pop(["q"], {"t"}, 10) == ["b"]
    assert index.pop(["q"], {"t"}, 10) == []
    assert "b" not in index and index.seq_of("b") is None


def test_bulk_load_then_heapify() -> None:
    index = ReadyIndex()
    for seq, priority in ((3, 5), (1, 5), (2, 1)):
        index.load(f"j{seq}", "q", "t", priority, seq)
    index.heapify()
    assert index.pop(["q"], {"t"}, 2) == ["j2", "j1"]


def test_peek_shows_what_pop_takes_next_and_changes_nothing() -> None:
    index = ReadyIndex()
    for seq, priority in ((1, 5), (2, 1), (3, 5), (4, 9)):
        push(index, f"j{seq}", seq, priority)
    push(index, "gone", 5, 1)
    index.discard("gone")
    assert index.peek(["q"], {"t"}, 3) == ["j2", "j1", "j3"]
    assert len(index) == 4
    assert index.pop(["q"], {"t"}, 10) == ["j2", "j1", "j3", "j4"]


def test_views_agree_with_a_plain_sort_through_random_pushes_pops_and_discards() -> None:
    """Against a reference: the most urgent live (priority, seq) among the claimant's pairs."""
    import random

    rng = random.Random(7)
    index = ReadyIndex()
    live: dict[str, tuple[int, int, str, str]] = {}  # id -> (priority, seq, queue, task)
    queues, tasks = ["a", "b", "c"], [f"t{i}" for i in range(6)]
    kinds = [
        (("a",), frozenset(tasks)),
        (("a", "b"), frozenset(tasks[:3])),
        (("c", "b"), frozenset(tasks[2:])),
        (("a", "b", "c"), frozenset(tasks)),
    ]
    seq = 0
    for step in range(4000):
        roll = rng.random()
        if roll < 0.5:
            seq += 1
            job, s = f"j{seq}", seq if rng.random() < 0.9 else -seq  # some requeued in front
            q, t, p = rng.choice(queues), rng.choice(tasks), rng.randint(1, 10)
            index.push(job, q, t, p, s)
            live[job] = (p, s, q, t)
        elif roll < 0.6 and live:
            job = rng.choice(sorted(live))
            assert index.discard(job)
            del live[job]
        else:
            qs, ts = rng.choice(kinds)
            n = rng.randint(1, 3)
            want = sorted((p, s, job) for job, (p, s, q, t) in live.items() if q in qs and t in ts)[
                :n
            ]
            if roll < 0.7:
                assert index.peek(qs, ts, n) == [job for _, _, job in want], step
            got = index.pop(qs, ts, n)
            assert got == [job for _, _, job in want], step
            for job in got:
                del live[job]
        assert len(index) == len(live)


def test_a_view_no_claim_uses_is_dropped_and_built_again_when_used() -> None:
    """Claimant kinds come and go (the broker claims for the queues not paused): one no
    claim used for IDLE_CLAIMS claims is dropped, and one used again is right again."""
    index = ReadyIndex()
    for i in range(10):
        push(index, f"a{i}", i + 1, queue="a")
    idle = IDLE_CLAIMS + 64  # looked for every few claims
    for i in range(idle):
        push(index, f"b{i}", 100 + i, queue="b")
    for k in range(1, 5):  # queues resumed one by one: a kind each
        assert index.pop(["a", "b", "c", "d"][:k], {"t"}, 0) == []
    assert index.views == 4
    assert index.pop(["a"], {"t"}, 1) == ["a0"]
    for i in range(idle):
        assert index.pop(["b"], {"t"}, 1) == [f"b{i}"]
    assert index.views == 1  # only the kind in use is kept
    push(index, "a-urgent", -1, 1, queue="a")  # a head change no view is told of
    assert index.pop(["a"], {"t"}, 2) == ["a-urgent", "a1"]
    assert index.pop(["a", "b"], {"t"}, 2) == ["a2", "a3"]
    assert index.views == 3


def test_equal_offers_are_one_kind_and_a_list_changed_in_place_is_asked_afresh() -> None:
    """Views are found by the claimant's objects when they are immutable (a tuple and a
    frozenset), by their contents otherwise."""
    index = ReadyIndex()
    push(index, "a", 1, queue="q")
    push(index, "b", 2, queue="r")
    mine, theirs = frozenset({"t"}), frozenset({"t"})
    assert index.pop(("q", "r"), mine, 1) == ["a"]
    assert index.pop(("q", "r"), theirs, 0) == []
    assert index.views == 1  # equal sets: one kind of claimant
    wanted = ["q"]
    push(index, "c", 3, queue="q")
    assert index.pop(wanted, mine, 1) == ["c"]
    wanted[0] = "r"  # the same list, now another kind
    assert index.pop(wanted, mine, 1) == ["b"]
    assert index.views == 3


def test_a_claimant_known_by_its_objects_is_right_after_its_view_was_dropped() -> None:
    """The broker's claimants ask with the same tuple and frozenset each time, so the view
    is found by identity: once dropped as idle it must be built again, not used as it was
    (it is no longer told of head changes)."""
    index = ReadyIndex()
    queues, tasks = ("a", "b"), frozenset({"t"})
    other = (("c",), frozenset({"t"}))
    push(index, "a1", 1, 5, queue="a")
    assert index.pop(queues, tasks, 0) == []  # its view is built
    for i in range(IDLE_CLAIMS + 64):  # other claims: the view goes idle and is dropped
        push(index, f"c{i}", 100 + i, queue="c")
        assert index.pop(*other, 1) == [f"c{i}"]
    assert index.views == 1
    push(index, "b-urgent", 10_000, 1, queue="b")  # a new head no dropped view hears of
    push(index, "a-front", -1, 5, queue="a")
    assert index.pop(queues, tasks, 3) == ["b-urgent", "a-front", "a1"]


def test_views_agree_with_a_plain_sort_through_many_kinds_known_by_their_objects() -> None:
    """Against a reference, with more kinds than are kept (the least recently used go)
    and kinds idle long enough to be dropped, each asking with its own objects (found by
    identity), equal copies of them, or a list and a set."""
    import random

    rng = random.Random(11)
    index = ReadyIndex()
    live: dict[str, tuple[int, int, str, str]] = {}
    queues, tasks = [f"q{i}" for i in range(30)] + [""], [f"t{i}" for i in range(3)]
    kinds = [
        (tuple(rng.sample(queues, rng.randint(1, 4))), frozenset(rng.sample(tasks, 2)))
        for _ in range(80)
    ]
    seq = front = 0
    for step in range(5000):
        roll = rng.random()
        if roll < 0.45:
            seq += 1
            job = f"j{step}"
            if rng.random() < 0.15:
                front -= 1
                s = front
            else:
                s = seq
            q, t, p = rng.choice(queues), rng.choice(tasks), rng.randint(1, 10)
            index.push(job, q, t, p, s)
            live[job] = (p, s, q, t)
        elif roll < 0.52 and live:
            job = rng.choice(sorted(live))
            assert index.discard(job)
            del live[job]
        else:
            qs, ts = rng.choice(kinds[:2] if rng.random() < 0.7 else kinds)
            form = rng.random()
            asked: tuple[Sequence[str], Collection[str]] = (qs, ts)
            if form < 0.1:
                asked = (tuple(list(qs)), frozenset(set(ts)))  # equal, other objects
            elif form < 0.15:
                asked = (list(qs), set(ts))
            n = rng.randint(0, 3)
            ranked = sorted((p, s, j) for j, (p, s, q, t) in live.items() if q in qs and t in ts)
            got = index.pop(*asked, n)
            assert got == [j for _, _, j in ranked[:n]], step
            for job in got:
                del live[job]
        assert len(index) == len(live)
