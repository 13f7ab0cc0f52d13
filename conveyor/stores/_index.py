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
first use, kept for the :data:`MAX_VIEWS` claimant kinds used last, and rebuilt when
stale entries pile up. A view no claim has used for :data:`IDLE_CLAIMS` claims is dropped
(built again if it is used again): every view costs a push at each change of a head it
covers, and kinds come and go (the broker claims for the queues not paused, so resuming
200 queues one by one made 200 kinds, of which the 63 kept cost 8 times the claim itself).
A claimant's ``tasks`` must not change in place (the broker's are frozensets).

Jobs with a concurrency key (``JobRecord.concurrency_key``) are claimed through a gate
that says whether their key may have one more running job. One it refuses is *parked*:
set aside in a heap of its key and its (queue, task), out of every view, so the claims
after it never look at it again and go on to the jobs behind it. When the gate says slots
of a key were freed (a job holding it finished), that many of its parked jobs go back from
each (queue, task), most urgent first: every claimant that can take a job of the key then
sees the most urgent one it can take (had only the key's most urgent come back, a freed
slot could go to a job no claim reaches, its queue paused or its worker gone, and the
key's other jobs stay parked with the slot unused; or to one cancelled before any claim
took it, and the slot was lost). The jobs back beyond the key's room are parked again by
the claim that comes to them.
Jobs without a key cost nothing of this: the gate is not asked and no map grows.

The index is compact on purpose: per queued job one heap entry and one dict slot, with
the job id and the sequence number shared between them (about 220 bytes a job in
all), because the SQLite engine keeps only this in memory for a queue of millions.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence

Entry = tuple[int, int, str]  # (priority, sequence, job id)
Head = tuple[int, int, int]  # (priority, sequence, heap number): a heap's head in a view
ViewKey = tuple[tuple[str, ...], frozenset[str]]
Admit = Callable[[str, str], bool]  # (task, concurrency key) -> may one more run now

MAX_VIEWS = 64  # claimant kinds whose views are kept (the least recently used goes)
IDLE_CLAIMS = 512  # a view unused for this many claims is dropped
_SWEEP = 32  # claims between two looks for idle views


class _View:
    """The heads of the heaps one kind of claimant can serve."""

    __slots__ = ("heads", "heaps", "kept", "key", "queues", "tasks", "used")

    def __init__(self, key: ViewKey, used: int) -> None:
        self.key = key
        self.queues, self.tasks = key
        self.used = used  # the claim count when a claim last used it
        self.kept = True  # False once dropped
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
        self._views: dict[ViewKey, _View] = {}
        # (id(queues), id(tasks)) -> those very objects and their view: a claimant asking
        # again with the same objects finds its view without hashing or comparing them (a
        # worker's tasks are a frozenset of thousands of names, perhaps; an equal set of
        # another worker costs a comparison of every name)
        self._same: dict[tuple[int, int], tuple[object, object, _View]] = {}
        self._claims = 0  # calls of pop and peek: the clock of view use
        self._seq: dict[str, int] = {}  # job id -> the sequence its live entry has
        self._names: list[tuple[str, str]] = []  # heap number -> (queue, task)
        self._keys: dict[str, str] = {}  # job id -> concurrency key (keyed jobs only)
        # key -> heap number -> the key's jobs parked from that heap, a heap of entries
        self._parked: dict[str, dict[int, list[Entry]]] = {}
        self._parked_ids: set[str] = set()
        self._waiting: Counter[str] = Counter()  # key -> live parked jobs

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._seq

    def seq_of(self, job_id: str) -> int | None:
        """The sequence a queued job is indexed under (None if it is not queued)."""
        return self._seq.get(job_id)

    def __len__(self) -> int:
        return len(self._seq)

    @property
    def views(self) -> int:
        """How many claimant kinds have a view kept now."""
        return len(self._views)

    def push(
        self, job_id: str, queue: str, task: str, priority: int, seq: int, key: str | None = None
    ) -> None:
        """Index a job that just became queued (``key``: its concurrency key)."""
        self._seq[job_id] = seq
        if key is not None:
            self._keys[job_id] = key
        number = self._number(queue, task)
        heap = self._by_number[number]
        entry = (priority, seq, job_id)
        heapq.heappush(heap, entry)
        if heap[0] == entry:  # (not ``is``: compiled, a tuple is boxed anew each time)
            self._new_head(number)

    def load(
        self, job_id: str, queue: str, task: str, priority: int, seq: int, key: str | None = None
    ) -> None:
        """Like push, without keeping heap order; call :meth:`heapify` after a bulk load."""
        self._seq[job_id] = seq
        if key is not None:
            self._keys[job_id] = key
        self._by_number[self._number(queue, task)].append((priority, seq, job_id))

    def heapify(self) -> None:
        for heap in self._by_number:
            heapq.heapify(heap)
        for view in self._views.values():  # built again, from the heads as they are now
            view.kept = False
        self._views.clear()
        for views in self._views_of:
            views.clear()

    def discard(self, job_id: str) -> bool:
        """Forget a queued job (its heap entry is skipped later); False if not indexed.

        A keyed job that was in its heap (not parked) may have been put back there for a
        freed slot it now leaves unused: one more parked job of its key comes back from
        each (queue, task), or the slot could stay unused for good."""
        key = self._keys.get(job_id) if self._keys else None
        parked = job_id in self._parked_ids
        found = self._drop(job_id)
        if found and key is not None and not parked and key in self._parked:
            self.unpark({key: 1})
        return found

    def _drop(self, job_id: str) -> bool:
        if self._keys:
            key = self._keys.pop(job_id, None)
            if key is not None and job_id in self._parked_ids:
                self._parked_ids.discard(job_id)
                self._waiting[key] -= 1
                if not self._waiting[key]:
                    del self._waiting[key]
        return self._seq.pop(job_id, None) is not None

    def pop(
        self,
        queues: Sequence[str],
        tasks: Collection[str],
        limit: int,
        admit: Admit | None = None,
    ) -> list[str]:
        """Take up to ``limit`` of the most urgent job ids these queues and tasks offer;
        a keyed job ``admit`` refuses is parked instead (see the module docstring)."""
        view = self._view(queues, tasks)
        taken: list[str] = []
        if admit is None or not self._keys:  # the common path: no keyed job anywhere
            while len(taken) < limit:
                entry = self._pop_best(view)
                if entry is None:
                    break
                self._drop(entry[2])
                taken.append(entry[2])
            return taken
        while len(taken) < limit:
            number = self._best_heap(view)
            if number is None:
                break
            entry = self._take_head(number)
            key = self._keys.get(entry[2])
            if key is not None and not admit(self._names[number][1], key):
                self._park(key, entry, number)
                continue
            self._drop(entry[2])
            taken.append(entry[2])
        return taken

    def unpark(self, freed: Mapping[str, int] | None) -> None:
        """Put parked jobs back: per key and (queue, task), as many as the key has freed
        slots (most urgent first); ``None``: all of them (a limit changed)."""
        keys = list(self._parked) if freed is None else [k for k in freed if k in self._parked]
        for key in keys:
            by_heap = self._parked[key]
            for number in list(by_heap):
                heap = by_heap[number]
                n = len(heap) if freed is None else freed[key]
                while heap and n > 0:
                    entry = heapq.heappop(heap)
                    job_id, seq = entry[2], entry[1]
                    if job_id not in self._parked_ids or self._seq.get(job_id) != seq:
                        continue  # gone meanwhile (cancelled)
                    self._parked_ids.discard(job_id)
                    self._waiting[key] -= 1
                    if not self._waiting[key]:
                        del self._waiting[key]
                    target = self._by_number[number]
                    heapq.heappush(target, entry)
                    if target[0] == entry:
                        self._new_head(number)
                    n -= 1
                if not heap:
                    del by_heap[number]
            if not by_heap:
                del self._parked[key]

    def waiting_for_key(self) -> dict[str, int]:
        """Parked jobs by concurrency key: queued, waiting for a running one to finish."""
        return dict(self._waiting)

    def _park(self, key: str, entry: Entry, number: int) -> None:
        heapq.heappush(self._parked.setdefault(key, {}).setdefault(number, []), entry)
        self._parked_ids.add(entry[2])
        self._waiting[key] += 1

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
            if heap[0] == entry:
                self._new_head(number)
        return [entry[2] for _, entry in seen]

    # -- internals ---------------------------------------------------------------------
    def _number(self, queue: str, task: str) -> int:
        by_task = self._heaps.get(queue)  # not setdefault: that makes a dict every call
        if by_task is None:
            by_task = self._heaps[queue] = {}
        number = by_task.get(task)
        if number is None:
            number = by_task[task] = len(self._by_number)
            self._by_number.append([])
            self._names.append((queue, task))
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
        self._claims += 1
        if not self._claims % _SWEEP:
            self._drop_idle()
        if type(queues) is not tuple or not isinstance(tasks, frozenset):
            view = self._find(queues, tasks)  # mutable: never known by identity
        elif (
            (same := self._same.get((id(queues), id(tasks)))) is not None
            and same[0] is queues
            and same[1] is tasks
            and same[2].kept
        ):
            view = same[2]
        else:
            view = self._find(queues, tasks)
            if len(self._same) >= 4 * MAX_VIEWS:
                self._same.clear()
            self._same[id(queues), id(tasks)] = (queues, tasks, view)
        view.used = self._claims
        return view

    def _find(self, queues: Sequence[str], tasks: Collection[str]) -> _View:
        """The view of this kind of claimant, built if there is none."""
        frozen = tasks if isinstance(tasks, frozenset) else frozenset(tasks)
        key = (tuple(queues), frozen)
        view = self._views.get(key)
        if view is not None:
            return view
        view = _View(key, self._claims)
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
            self._forget(min(self._views.values(), key=lambda v: v.used))
        return view

    def _drop_idle(self) -> None:
        """Drop the views no claim used for :data:`IDLE_CLAIMS` claims."""
        for view in [v for v in self._views.values() if v.used <= self._claims - IDLE_CLAIMS]:
            self._forget(view)

    def _forget(self, view: _View) -> None:
        del self._views[view.key]
        view.kept = False
        for number in view.heaps:
            self._views_of[number].remove(view)

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
