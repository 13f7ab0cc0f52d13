"""Tokens end on open connections too: the token watch.

A token is checked at HELLO, but a connection lives on for hours (a worker's for days). So
every half second (and at once after a TOKEN_REVOKE) :class:`TokenWatch` asks the registry
about the token of each open connection; one whose token was revoked, removed from the
tokens file or has expired is closed with a fatal ERROR ``unauthorized`` naming why
("token revoked", "token expired", "token removed"). A worker's jobs then go back to their
queues, as for any lost worker. Checking costs one ``stat`` of the tokens file (it is
re-read only when it changed) and one dict lookup per connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from conveyor.broker.core import BrokerCore
from conveyor.broker.maintenance import Service
from conveyor.clock import Clock
from conveyor.errors import ConfigError

log = logging.getLogger("conveyor.broker")


class Credentialed(Protocol):
    """A connection as the watch sees it (the broker's Session implements it)."""

    @property
    def token_digest(self) -> str:
        """The SHA-256 of the token it authenticated with ("" before the handshake)."""
        ...

    @property
    def token_name(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    def credentials_ended(self, reason: str) -> int:
        """Close with ERROR ``unauthorized`` and ``reason`` as its message; returns how many
        jobs its worker held (requeued now)."""
        ...


class TokenWatch(Service):
    interval = 0.5

    def __init__(
        self,
        core: BrokerCore,
        clock: Clock,
        sessions: Callable[[], Iterable[Credentialed]],
        on_ended: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(core, clock)
        self._sessions = sessions
        self._on_ended = on_ended
        self._broken: str | None = None  # the tokens file's last error, logged once

    async def run_once(self, now: float) -> None:
        self.check(now)

    def check(self, now: float) -> int:
        """Close every connection whose token may no longer be used; returns how many."""
        registry = self.core.tokens
        try:
            registry.reload_if_changed()
        except ConfigError as exc:
            # keep the last good registry for open connections (new ones fail closed)
            if str(exc) != self._broken:
                log.error("token watch: %s; open connections keep the tokens read before", exc)
                self._broken = str(exc)
            return 0
        self._broken = None
        # (token name, reason) -> [connections, jobs requeued]: one log line per token
        ended: dict[tuple[str, str], list[int]] = {}
        for session in list(self._sessions()):
            digest = session.token_digest
            if not digest or session.closed:
                continue
            reason = registry.why_inactive(digest, now, reload=False)
            if reason is not None:
                counts = ended.setdefault((session.token_name, reason), [0, 0])
                counts[0] += 1
                counts[1] += session.credentials_ended(reason)
        for (name, reason), (connections, jobs) in ended.items():
            log.warning(
                "token %s: %s; closed %d connection(s)%s",
                name,
                reason,
                connections,
                f", {jobs} job(s) back to their queues" if jobs else "",
            )
        total = sum(c for c, _ in ended.values())
        if total:
            self.core.metrics["token_ended_connections"] += total
            self._on_ended()
        return total
