"""The ready index on its own: ordering, lazy deletion, waiting counts."""

from __future__ import annotations

from conveyor.job import Job
from conveyor.stores._index import ReadyIndex


def job(job_id: str, priority: int = 5, queue: str = "q", task: str = "t") -> Job:
    return Job(id=job_id, task=task, queue=queue, priority=priority)


def test_priority_then_sequence_across_queues_and_tasks() -> None:
    index = ReadyIndex()
    index.push(job("a", 5), 1)
    index.push(job("b", 1, queue="r"), 2)
    index.push(job("c", 5, task="u"), 3)
    index.push(job("d", 5), -1)  # requeued: in front of its priority
    assert index.pop(["q", "r"], {"t", "u"}, 10) == ["b", "d", "a", "c"]


def test_only_the_queues_and_tasks_asked_for() -> None:
    index = ReadyIndex()
    index.push(job("a", queue="q"), 1)
    index.push(job("b", queue="r"), 2)
    index.push(job("c", task="u"), 3)
    assert index.pop(["r"], {"t"}, 10) == ["b"]
    assert index.pop(["q"], {"t"}, 10) == ["a"]
    assert index.waiting() == {("q", "u"): 1}


def test_discard_and_reindex_skip_stale_entries() -> None:
    index = ReadyIndex()
    index.push(job("a"), 1)
    index.push(job("b"), 2)
    assert index.discard("a") and not index.discard("a")
    index.push(job("b"), -1)  # b indexed again under a new sequence: the old entry is stale
    assert index.waiting() == {("q", "t"): 1}
    assert index.pop(["q"], {"t"}, 10) == ["b"]
    assert index.pop(["q"], {"t"}, 10) == []
    assert "b" not in index and index.seq_of("b") is None


def test_bulk_load_then_heapify() -> None:
    index = ReadyIndex()
    for seq, priority in ((3, 5), (1, 5), (2, 1)):
        index.load(job(f"j{seq}", priority), seq)
    index.heapify()
    assert index.pop(["q"], {"t"}, 2) == ["j2", "j1"]
