"""The administrative half of :class:`~conveyor.broker.core.BrokerCore`, mixed into it:
tokens, rate and concurrency limits, and the numbers ``stats`` shows. It holds no state of
its own; what it uses of the core is declared below (set by ``BrokerCore.__init__``).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from conveyor.broker import heldback
from conveyor.broker.backlog import Backlog
from conveyor.broker.dispatch import Dispatcher
from conveyor.broker.limiter import Limiter
from conveyor.broker.logins import Logins
from conveyor.broker.waiters import Waiters
from conveyor.clock import Clock
from conveyor.security.tokens import Role, TokenInfo, TokenRegistry
from conveyor.stores.base import Store


class CoreAdmin:
    """Tokens, limits and stats: the calls of the admin commands and of the dashboard."""

    store: Store
    tokens: TokenRegistry
    clock: Clock
    dispatcher: Dispatcher
    limiter: Limiter
    logins: Logins
    waiters: Waiters
    backlog: Backlog
    metrics: Counter[str]
    info: dict[str, Any]
    gauges: dict[str, Callable[[], Any]]
    started_at: float
    on_tokens_changed: Callable[[], None]

    # -- tokens --------------------------------------------------------------------------
    def authenticate(self, token: Any) -> TokenInfo | None:
        if not isinstance(token, str) or not token:
            return None
        return self.tokens.verify(token, self.clock.now())

    async def token_create(
        self, role: Role, name: str | None, ttl: float | None
    ) -> tuple[str, TokenInfo]:
        # the registry locks and fsyncs its file: keep that off the event loop
        return await asyncio.to_thread(self.tokens.create, role, name, ttl, now=self.clock.now())

    def token_list(self) -> list[TokenInfo]:
        return self.tokens.list()

    async def token_revoke(self, name: str) -> bool:
        revoked = await asyncio.to_thread(self.tokens.revoke, name)
        self.on_tokens_changed()  # its open connections close now, not at the next tick
        return revoked

    # -- limits --------------------------------------------------------------------------
    def limits_info(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The limits in force and what they hold back, from the store's stats ``data``
        (its queued jobs per task and queue; ``waiting_for_key``: queued jobs set aside
        by key; ``running_by_key`` on a store several brokers share: every broker's), with
        each limit's own counts (:mod:`conveyor.broker.heldback`)."""
        return heldback.add_counts(self.limiter.snapshot(data), data)

    async def limits(
        self, changes: dict[str, Any] | None = None, clears: list[str] | None = None
    ) -> dict[str, Any]:
        """Clear, then set limits (each checked first: InvalidJob names the field); return
        them as :meth:`limits_info` does."""
        for target in clears or ():
            self.limiter.check(target)
        for target, value in (changes or {}).items():
            self.limiter.check(target, value)
        for target in clears or ():
            if target in self.limiter.table:
                await self.limiter.clear(target)
        for target, value in (changes or {}).items():
            await self.limiter.set(target, value)
        return self.limits_info(await self.store.stats())

    # -- numbers -------------------------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        data = await self.store.stats()
        waiting = await self.store.queue_waiting()
        data["waiting"] = [
            {"queue": q, "task": t, "count": n, "offered": self.dispatcher.offers(q, t)}
            for (q, t), n in sorted(waiting.items())
        ]
        workers = list(self.dispatcher.workers.values())
        data["workers"] = [w.describe() for w in workers]
        data["paused"] = sorted(self.dispatcher.paused)
        data["limits"] = self.limits_info(data)
        data.pop("waiting_for_key", None)
        data.pop("running_by_key", None)
        data["store"] = {"url": self.store.url, **self.store.health}
        data["security"] = self.logins.snapshot()
        data["broker"] = {
            **self.info,
            "pid": os.getpid(),
            "uptime": self.clock.now() - self.started_at,
            **dict(self.metrics),
            **{name: gauge() for name, gauge in self.gauges.items()},
            "dispatched": self.dispatcher.dispatched,
            "waiters": len(self.waiters),
            "queue_full": self.backlog.refused,  # jobs refused: their queue was at its limit
        }
        return data
