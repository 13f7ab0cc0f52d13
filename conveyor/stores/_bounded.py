"""Job records kept in memory within a count and a byte budget.

The SQLite engine keeps two of these: finished jobs just written (for quick reads of a
result), which drop their *oldest* entry when full; and committed queued jobs, which drop
their *newest* (those are the last to be claimed, so reading them back later costs least).
Sizes are estimates of what a record holds in memory, payload and result included.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Literal

from conveyor.job import JobRecord

#: a record's own slots (~210 bytes) and its entries here and in the live jobs (~270),
#: measured with tracemalloc; payload, result and error come on top
RECORD_OVERHEAD = 480


def record_size(job: JobRecord) -> int:
    """About how many bytes ``job`` holds in memory."""
    size = RECORD_OVERHEAD + len(job.id) + len(job.payload) + len(job.result or b"")
    if job.error:
        size += sum(len(str(v)) for v in job.error.values())
    return size


class BoundedRecords:
    """Records by id in insertion order; ``put`` returns what had to go to stay in budget."""

    def __init__(
        self, max_count: int, max_bytes: int, drop: Literal["oldest", "newest"] = "oldest"
    ) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._last = drop == "newest"
        self._records: OrderedDict[str, tuple[JobRecord, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._records

    def __iter__(self) -> Iterator[JobRecord]:
        return (job for job, _ in list(self._records.values()))

    def get(self, job_id: str) -> JobRecord | None:
        entry = self._records.get(job_id)
        return None if entry is None else entry[0]

    def put(self, job: JobRecord) -> list[JobRecord]:
        """Keep ``job`` (replacing an older version); the records dropped to make room,
        possibly ``job`` itself."""
        self.pop(job.id)
        size = record_size(job)
        self._records[job.id] = (job, size)
        self.bytes += size
        dropped: list[JobRecord] = []
        while self._records and (
            len(self._records) > self.max_count or self.bytes > self.max_bytes
        ):
            _, (old, old_size) = self._records.popitem(last=self._last)
            self.bytes -= old_size
            dropped.append(old)
        return dropped

    def pop(self, job_id: str) -> JobRecord | None:
        entry = self._records.pop(job_id, None)
        if entry is None:
            return None
        self.bytes -= entry[1]
        return entry[0]
