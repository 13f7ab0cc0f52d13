"""What every protocol route shares: the peer it serves, the route signature, field errors.

A route turns one frame into a call on the core service: it checks the frame's fields
(raising :class:`~conveyor.errors.BrokerError` with a code and field; the session turns
that into an ERROR reply and the connection stays usable), calls the core, and sends the
reply frame. It either replies at once or returns a coroutine the session runs as a task.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from conveyor.broker.config import Limits
from conveyor.broker.core import BrokerCore
from conveyor.broker.dispatch import WorkerRef
from conveyor.security.tokens import Role
from conveyor.validation import invalid

__all__ = ["Peer", "Reply", "Route", "invalid"]


class Peer(Protocol):
    """The connection a route serves (the broker's Session implements it)."""

    core: BrokerCore
    limits: Limits
    peer: str
    client_name: str
    worker: WorkerRef | None
    waits: int

    @property
    def role(self) -> Role: ...

    @property
    def packed(self) -> bool:
        """The peer asked for the ``packed`` feature: payloads and results as bin."""
        ...

    def send(self, frame: dict[str, Any]) -> None: ...

    def send_batch(self, kind: str, key: str, items: list[Any]) -> None:
        """``{"t": kind, key: items}``, split over several frames if one would be too big."""
        ...

    def error(
        self, code: str, message: str, rid: int | None = None, fld: str | None = None, **extra: Any
    ) -> None: ...

    def close(self) -> None: ...

    def goodbye(self, reason: str) -> None:
        """Send GOODBYE with ``reason``, then close."""
        ...

    def take_submit_budget(self, n: int) -> bool: ...


Reply = Coroutine[Any, Any, None] | None
Route = Callable[[Peer, dict[str, Any]], Reply]
