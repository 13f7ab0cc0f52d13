"""The ready index: which queued job each worker should get next, in O(log n).

Queued jobs sit in one heap per (queue, task), ordered by (priority, sequence). A claim
takes, each time, the best head among the heaps the worker can serve, so priority holds
across queues and FIFO holds within a priority; the caller gives requeued jobs a negative
sequence to put them in front of their priority.

Entries are deleted lazily: an entry counts only while its job is indexed under the
same sequence number, so cancelling or re-queueing a job never searches a heap.

Finding the best head must not cost one look per heap: a worker offering 1,000 tasks
would pay 1,000 comparisons a job. So each kind of claimant (its queues and its tasks)
gets a *view*: a heap of the heads of the heaps it can serve, as ``(priority, sequence,
heap number)``. Whenever a heap's head changes, the new head is pushed into every view
that includes that heap; a view entry that is no longer its heap's head is stale and is
dropped when it comes to the top. A claim is then O(log heaps) a job. Views are built on
first use, kept for the most recent :data:`MAX_VIEWS` claimant kinds, and rebuilt when
stale entries pile up. A claimant's ``tasks`` must not change in place (the broker's are
frozensets).

The index is compact on purpose: per queued job one heap entry and one dict slot, with
the job id and the sequence number shared between them (about 220 bytes a job in
all), because the SQLite engine keeps only this in memory for a queue of millions.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Collection, Sequence

Entry = tuple[int, int, str]  # (priority, sequence, job id)
Head = tuple[int, int, int]  # (priority, sequence, heap number): a heap's head in a view
ViewKey = tuple[tuple[str, ...], frozenset[str]]

MAX_VIEWS = 64  # claimant kinds whose views are kept (LRU)


class _View:
    """The heads of the heaps one kind of claimant can serve."""

    __slots__ = ("heads", "heaps", "queues", "tasks")

    def __init__(self, queues: tuple[str, ...], tasks: frozenset[str]) -> None:
        self.queues = queues
        self.tasks = tasks
        self.heaps: set[int] = set()  # the heap numbers it includes
        self.heads: list[Head] = []

    def covers(self, queue: str, task: str) -> bool:
        return task in self.tasks and queue in self.queues


class ReadyIndex:
    """Queued jobs by queue and task, most urgent first."""

    def __init__(self) -> None:
        self._heaps: dict[str, dict[str, int]] = {}  # queue -> task -> heap number
        self._by_number: list[list[Entry]] = []
        self._views_of: list[list[_View]] = []  # heap number -> the views including it
        self._views: OrderedDict[ViewKey, _View] = OrderedDict()
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
        number = self._number(queue, task)
        heap = self._by_number[number]
        entry = (priority, seq, job_id)
        heapq.heappush(heap, entry)
        if heap[0] is entry:
            self._new_head(number)

    def load(self, job_id: str, queue: str, task: str, priority: int, seq: int) -> None:
        """Like push, without keeping heap order; call :meth:`heapify` after a bulk load."""
        self._seq[job_id] = seq
        self._by_number[self._number(queue, task)].append((priority, seq, job_id))

    def heapify(self) -> None:
        for heap in self._by_number:
            heapq.heapify(heap)
        self._views.clear()  # built again, from the heads as they are now
        for views in self._views_of:
            views.clear()

    def discard(self, job_id: str) -> bool:
        """Forget a queued job (its heap entry is skipped later); False if not indexed."""
        return self._seq.pop(job_id, None) is not None

    def pop(self, queues: Sequence[str], tasks: Collection[str], limit: int) -> list[str]:
        """Take up to ``limit`` of the most urgent job ids these queues and tasks offer."""
        view = self._view(queues, tasks)
        taken: list[str] = []
        while len(taken) < limit:
            entry = self._pop_best(view)
            if entry is None:
                break
            self.discard(entry[2])
            taken.append(entry[2])
        return taken

    def peek(self, queues: Sequence[str], tasks: Collection[str], limit: int) -> list[str]:
        """The ids :meth:`pop` would take next, leaving the index as it is (in
        O(limit log n): the entries are popped and pushed back)."""
        view = self._view(queues, tasks)
        seen: list[tuple[int, Entry]] = []
        while len(seen) < limit:
            number = self._best_heap(view)
            if number is None:
                break
            seen.append((number, self._take_head(number)))
        for number, entry in seen:
            heap = self._by_number[number]
            heapq.heappush(heap, entry)
            if heap[0] is entry:
                self._new_head(number)
        return [entry[2] for _, entry in seen]

    # -- internals ---------------------------------------------------------------------
    def _number(self, queue: str, task: str) -> int:
        by_task = self._heaps.setdefault(queue, {})
        number = by_task.get(task)
        if number is None:
            number = by_task[task] = len(self._by_number)
            self._by_number.append([])
            views = [v for v in self._views.values() if v.covers(queue, task)]
            self._views_of.append(views)
            for view in views:
                view.heaps.add(number)
        return number

    def _new_head(self, number: int) -> None:
        """The head of heap ``number`` changed: tell every view that includes it."""
        heap = self._by_number[number]
        if not heap:
            return
        priority, seq, _ = heap[0]
        for view in self._views_of[number]:
            heapq.heappush(view.heads, (priority, seq, number))
            if len(view.heads) > 4 * len(view.heaps) + 1024:  # mostly stale: start afresh
                self._fill(view)

    def _view(self, queues: Sequence[str], tasks: Collection[str]) -> _View:
        frozen = tasks if isinstance(tasks, frozenset) else frozenset(tasks)
        key = (tuple(queues), frozen)
        view = self._views.get(key)
        if view is not None:
            self._views.move_to_end(key)
            return view
        view = _View(key[0], frozen)
        for queue in view.queues:
            by_task = self._heaps.get(queue, {})
            if len(by_task) <= len(frozen):
                view.heaps.update(n for t, n in by_task.items() if t in frozen)
            else:
                view.heaps.update(by_task[t] for t in frozen if t in by_task)
        for number in view.heaps:
            self._views_of[number].append(view)
        self._fill(view)
        self._views[key] = view
        if len(self._views) > MAX_VIEWS:
            _, old = self._views.popitem(last=False)
            for number in old.heaps:
                self._views_of[number].remove(old)
        return view

    def _fill(self, view: _View) -> None:
        """The view's heads, from the heaps as they are now."""
        heaps = self._by_number
        view.heads = [(heaps[n][0][0], heaps[n][0][1], n) for n in view.heaps if heaps[n]]
        heapq.heapify(view.heads)

    def _best_heap(self, view: _View) -> int | None:
        """The number of the view's heap with the most urgent live head (stale view entries
        and dead heap entries are dropped on the way), or None if all are empty."""
        heads, heaps = view.heads, self._by_number
        while heads:
            priority, seq, number = heads[0]
            heap = heaps[number]
            if not heap or heap[0][0] != priority or heap[0][1] != seq:
                heapq.heappop(heads)  # stale: that heap's head has changed since
                continue
            if self._seq.get(heap[0][2]) == seq:
                return number
            self._take_head(number)  # a dead entry (cancelled, re-queued): skip it
        return None

    def _take_head(self, number: int) -> Entry:
        entry = heapq.heappop(self._by_number[number])
        self._new_head(number)
        return entry

    def _pop_best(self, view: _View) -> Entry | None:
        number = self._best_heap(view)
        return None if number is None else self._take_head(number)
