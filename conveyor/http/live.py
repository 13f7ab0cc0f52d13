"""``GET /api/events``: the live feed, as Server-Sent Events.

Each subscriber gets one message a second (a *tick*): the numbers, the workers, the job
changes since the last tick and the latest progress of the running jobs that reported any,
at most :data:`MAX_CHANGES` of each (the count of the rest of the changes is given).
Under load that is still one message a second, never one per job, and what waits for a
slow reader is bounded: a subscriber keeps only the last changes, and a reader that
does not read holds the generator at its ``yield`` (the server's flow control), not the
broker's memory.

The reader's token is checked again before every tick: once it is revoked, removed or
expired the feed sends one ``end`` message naming why (``{"reason": "token revoked"}``) and
ends, as the broker closes a protocol connection whose token ended.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from conveyor.broker.core import BrokerCore
from conveyor.broker.events import (
    BrokerEvent,
    JobChanged,
    JobProgress,
    QueueChanged,
    WorkerChanged,
    WorkerJoined,
    WorkerLeft,
)
from conveyor.broker.history import History
from conveyor.http import views

MAX_CHANGES = 50
TICK = 1.0


class Subscriber:
    """One reader's pending changes, bounded."""

    def __init__(self, max_changes: int = MAX_CHANGES) -> None:
        self.jobs: deque[dict[str, Any]] = deque(maxlen=max_changes)
        self.seen = 0
        self.joined: list[str] = []
        self.left: list[str] = []
        self.queues: dict[str, bool] = {}
        #: running jobs' latest progress since the last tick (bounded like the changes)
        self.progress: dict[str, dict[str, Any]] = {}
        self.max_changes = max_changes
        self.unsubscribe: Callable[[], None] = lambda: None

    def __call__(self, event: BrokerEvent) -> None:
        if isinstance(event, JobChanged):
            job = event.job
            self.seen += 1
            self.jobs.append(
                {
                    "id": job.id,
                    "task": job.task,
                    "queue": job.queue,
                    "priority": job.priority,
                    "state": job.state.value,
                    "from": event.old.value if event.old else None,
                    "worker": job.worker,
                    "at": event.at,
                }
            )
        elif isinstance(event, JobProgress):
            if event.job_id in self.progress or len(self.progress) < self.max_changes:
                self.progress[event.job_id] = {"id": event.job_id, **event.progress}
        elif isinstance(event, WorkerJoined):
            self.joined.append(event.worker.id)
        elif isinstance(event, WorkerLeft):
            self.left.append(event.worker.id)
        elif isinstance(event, QueueChanged):
            self.queues[event.queue] = event.paused
        elif isinstance(event, WorkerChanged):
            pass  # the tick carries every worker's current state anyway

    def take(self) -> dict[str, Any]:
        out = {
            "jobs": list(self.jobs),
            "more": max(0, self.seen - len(self.jobs)),
            "joined": self.joined,
            "left": self.left,
            "queues": self.queues,
            "progress": list(self.progress.values()),
        }
        self.progress = {}
        self.jobs.clear()
        self.seen = 0
        self.joined, self.left, self.queues = [], [], {}
        return out


def sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def feed(
    core: BrokerCore,
    history: History,
    disconnected: Callable[[], Any],
    tick: float = TICK,
    token_digest: str = "",
) -> AsyncIterator[bytes]:
    """The SSE byte stream for one reader, until it goes away or its token ends."""
    subscriber = Subscriber()
    subscriber.unsubscribe = core.hub.subscribe(subscriber)
    try:
        yield sse("hello", await _numbers(core, history))
        while not await disconnected():
            await asyncio.sleep(tick)  # the tick is the message rate, not a poll for news
            ended = token_digest and core.tokens.why_inactive(token_digest, core.clock.now())
            if ended:
                yield sse("end", {"reason": ended})
                return
            yield sse("tick", {**await _numbers(core, history), **subscriber.take()})
    finally:
        subscriber.unsubscribe()


async def _numbers(core: BrokerCore, history: History) -> dict[str, Any]:
    workers = list(core.dispatcher.workers.values())
    point = history.points[-1].as_dict() if history.points else None
    return {
        "at": core.clock.now(),
        "stats": await views.stats(core, history),
        "workers": [views.worker_info(w) for w in workers],
        "point": point,
    }
