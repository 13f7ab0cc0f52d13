"""The ready index: which queued job each worker should get next, in O(log n).

Queued jobs sit in one heap per (queue, task), ordered by (priority, sequence). A claim
looks only at the heaps the worker can serve and takes the best head each time, so
priority holds across queues and FIFO holds within a priority; the caller gives
requeued jobs a negative sequence to put them in front of their priority.

Entries are deleted lazily: an entry counts only while its job is indexed under the
same sequence number, so cancelling or re-queueing a job never searches a heap. The
index also keeps the number of queued jobs per (queue, task), for "who is waiting".
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Collection, Sequence

from conveyor.job import JobRecord

Entry = tuple[int, int, str]  # (priority, sequence, job id)


class ReadyIndex:
    """Queued jobs by queue and task, most urgent first."""

    def __init__(self) -> None:
        self._heaps: dict[str, dict[str, list[Entry]]] = {}  # queue -> task -> heap
        self._seq: dict[str, int] = {}  # job id -> the sequence its live entry has
        self._key: dict[str, tuple[str, str]] = {}  # job id -> (queue, task)
        self._waiting: Counter[tuple[str, str]] = Counter()

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._seq

    def seq_of(self, job_id: str) -> int | None:
        """The sequence a queued job is indexed under (None if it is not queued)."""
        return self._seq.get(job_id)

    def push(self, job: JobRecord, seq: int) -> None:
        """Index a job that just became queued."""
        self._note(job, seq)
        heapq.heappush(self._heap(job), (job.priority, seq, job.id))

    def load(self, job: JobRecord, seq: int) -> None:
        """Like push, without keeping heap order; call :meth:`heapify` after a bulk load."""
        self._note(job, seq)
        self._heap(job).append((job.priority, seq, job.id))

    def heapify(self) -> None:
        for by_task in self._heaps.values():
            for heap in by_task.values():
                heapq.heapify(heap)

    def discard(self, job_id: str) -> bool:
        """Forget a queued job (its heap entry is skipped later); False if not indexed."""
        if self._seq.pop(job_id, None) is None:
            return False
        key = self._key.pop(job_id)
        self._waiting[key] -= 1
        if not self._waiting[key]:
            del self._waiting[key]
        return True

    def pop(self, queues: Sequence[str], tasks: Collection[str], limit: int) -> list[str]:
        """Take up to ``limit`` of the most urgent job ids these queues and tasks offer."""
        heaps = self._candidates(queues, tasks)
        taken: list[str] = []
        while heaps and len(taken) < limit:
            job_id = self._pop_best(heaps)
            if job_id is None:
                break
            taken.append(job_id)
        return taken

    def waiting(self) -> dict[tuple[str, str], int]:
        """Queued job counts by (queue, task)."""
        return dict(self._waiting)

    # -- internals ---------------------------------------------------------------------
    def _note(self, job: JobRecord, seq: int) -> None:
        if job.id not in self._seq:
            key = (job.queue, job.task)
            self._key[job.id] = key
            self._waiting[key] += 1
        self._seq[job.id] = seq

    def _heap(self, job: JobRecord) -> list[Entry]:
        return self._heaps.setdefault(job.queue, {}).setdefault(job.task, [])

    def _candidates(self, queues: Sequence[str], tasks: Collection[str]) -> list[list[Entry]]:
        heaps: list[list[Entry]] = []
        for queue in queues:
            by_task = self._heaps.get(queue)
            if not by_task:
                continue
            if len(by_task) <= len(tasks):
                heaps.extend(h for t, h in by_task.items() if h and t in tasks)
            else:
                heaps.extend(by_task[t] for t in tasks if by_task.get(t))
        return heaps

    def _pop_best(self, heaps: list[list[Entry]]) -> str | None:
        """Pop the most urgent live entry among the heaps' heads."""
        while True:
            best: list[Entry] | None = None
            for heap in heaps:
                if heap and (best is None or heap[0] < best[0]):
                    best = heap
            if best is None:
                return None
            _, seq, job_id = heapq.heappop(best)
            if self._seq.get(job_id) == seq:
                self.discard(job_id)
                return job_id
