"""Calls that arrive together go to the database together: one statement for many callers.

Under load the broker makes many small calls at once (a report per worker, a job read
per waiting producer). A :class:`Coalescer` gathers every call made in one turn of the
event loop, and every call made while its statements are in flight, into the next batch:
one statement and one round trip for all of them, each caller handed its own part of the
result. Idle, a call goes out at the end of the loop turn it was made in, so a lone call
waits for nothing. (SQLite's group commit, :mod:`conveyor.stores.sql.sqlite_writer`, is
the same idea for a single writer.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")  # an item of a call
Out = TypeVar("Out")  # what the batch says about one item

IN_FLIGHT = 2  # batches in flight at once: one on the wire while the next one gathers
MAX_ITEMS = 5000  # items per batch (a statement's arrays stay a few MB at most)


class Coalescer(Generic[In, Out]):
    """``await c.call(items)`` → one result per item, from ``run(batch)`` over many calls."""

    def __init__(self, run: Callable[[list[In]], Awaitable[list[Out]]]) -> None:
        self._run = run
        self._pending: list[tuple[Sequence[In], asyncio.Future[list[Out]]]] = []
        self._in_flight = 0
        self._scheduled = False

    async def call(self, items: Sequence[In]) -> list[Out]:
        future: asyncio.Future[list[Out]] = asyncio.get_running_loop().create_future()
        self._pending.append((items, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if not self._scheduled and self._pending and self._in_flight < IN_FLIGHT:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        if not self._pending or self._in_flight >= IN_FLIGHT:
            return
        calls: list[tuple[Sequence[In], asyncio.Future[list[Out]]]] = []
        count = 0
        while self._pending and (not calls or count + len(self._pending[0][0]) <= MAX_ITEMS):
            items, future = self._pending.pop(0)
            calls.append((items, future))
            count += len(items)
        self._in_flight += 1
        asyncio.get_running_loop().create_task(self._flush(calls))

    async def _flush(self, calls: list[tuple[Sequence[In], asyncio.Future[list[Out]]]]) -> None:
        try:
            batch = [item for items, _ in calls for item in items]
            try:
                results = await self._run(batch)
            except BaseException as exc:
                for _, future in calls:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            start = 0
            for items, future in calls:
                if not future.done():
                    future.set_result(results[start : start + len(items)])
                start += len(items)
        finally:
            self._in_flight -= 1
            self._schedule()
