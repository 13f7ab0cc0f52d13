"""The ready index: which queued job each worker should get next, in O(log n).

Queued jobs sit in one heap per (queue, task), ordered by (priority, sequence). A claim
looks only at the heaps the worker can serve and takes the best head each time, so
priority holds across queues and FIFO holds within a priority; the caller gives
requeued jobs a negative sequence to put them in front of their priority.

Entries are deleted lazily: an entry counts only while its job is indexed under the
same sequence number, so cancelling or re-queueing a job never searches a heap.

The index is compact on purpose: per queued job one heap entry and one dict slot, with
the job id and the sequence number shared between them (about 220 bytes a job in
all), because the SQLite engine keeps only this in memory for a queue of millions.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Sequence

Entry = tuple[int, int, str]  # (priority, sequence, job id)


class ReadyIndex:
    """Queued jobs by queue and task, most urgent first."""

    def __init__(self) -> None:
        self._heaps: dict[str, dict[str, list[Entry]]] = {}  # queue -> task -> heap
        self._seq: dict[str, int] = {}  # job id -> the sequence its live entry has

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._seq

    def seq_of(self, job_id: str) -> int | None:
        """The sequence a queued job is indexed under (None if it is not queued)."""
        return self._seq.get(job_id)

    def __len__(self) -> int:
        return len(self._seq)

    def push(self, job_id: str, queue: str, task: str, priority: int, seq: int) -> None:
        """Index a job that just became queued."""
        self._seq[job_id] = seq
        heapq.heappush(self._heap(queue, task), (priority, seq, job_id))

    def load(self, job_id: str, queue: str, task: str, priority: int, seq: int) -> None:
        """Like push, without keeping heap order; call :meth:`heapify` after a bulk load."""
        self._seq[job_id] = seq
        self._heap(queue, task).append((priority, seq, job_id))

    def heapify(self) -> None:
        for by_task in self._heaps.values():
            for heap in by_task.values():
                heapq.heapify(heap)

    def discard(self, job_id: str) -> bool:
        """Forget a queued job (its heap entry is skipped later); False if not indexed."""
        return self._seq.pop(job_id, None) is not None

    def pop(self, queues: Sequence[str], tasks: Collection[str], limit: int) -> list[str]:
        """Take up to ``limit`` of the most urgent job ids these queues and tasks offer."""
        heaps = self._candidates(queues, tasks)
        taken: list[str] = []
        while heaps and len(taken) < limit:
            found = self._pop_best(heaps)
            if found is None:
                break
            job_id = found[1][2]
            self.discard(job_id)
            taken.append(job_id)
        return taken

    def peek(self, queues: Sequence[str], tasks: Collection[str], limit: int) -> list[str]:
        """The ids :meth:`pop` would take next, leaving the index as it is (in
        O(limit log n): the entries are popped and pushed back)."""
        heaps = self._candidates(queues, tasks)
        seen: list[tuple[list[Entry], Entry]] = []
        while heaps and len(seen) < limit:
            found = self._pop_best(heaps)
            if found is None:
                break
            seen.append(found)
        for heap, entry in seen:
            heapq.heappush(heap, entry)
        return [entry[2] for _, entry in seen]

    # -- internals ---------------------------------------------------------------------
    def _heap(self, queue: str, task: str) -> list[Entry]:
        return self._heaps.setdefault(queue, {}).setdefault(task, [])

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

    def _pop_best(self, heaps: list[list[Entry]]) -> tuple[list[Entry], Entry] | None:
        """Pop the most urgent live entry among the heaps' heads (stale ones are dropped)."""
        while True:
            best: list[Entry] | None = None
            for heap in heaps:
                if heap and (best is None or heap[0] < best[0]):
                    best = heap
            if best is None:
                return None
            entry = heapq.heappop(best)
            if self._seq.get(entry[2]) == entry[1]:
                return best, entry
