"""What every handler module shares: the handler signature and field errors."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from conveyor.errors import BrokerError, InvalidJob
from conveyor.protocol.frames import ErrorCode

if TYPE_CHECKING:
    from conveyor.broker.session import Session

Reply = Coroutine[Any, Any, None] | None
Handler = Callable[["Session", dict[str, Any]], Reply]


def invalid(fld: str, message: str) -> BrokerError:
    """An ``invalid`` error naming the offending field (the connection stays usable)."""
    return InvalidJob(ErrorCode.INVALID, message, fld)
