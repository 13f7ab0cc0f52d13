"""Transports: they move bytes between a :class:`~conveyor.protocol.session.ClientSession`
and a TLS socket, and reconnect when a working connection is lost. Nothing else.

:class:`~conveyor.client.sync_transport.SyncTransport` blocks (a plain socket, no
threads); :class:`~conveyor.client.async_transport.AsyncTransport` runs on asyncio (the
AsyncClient's and the worker's). This module holds what both share. Both give the same
guarantees:

* the first connection tries each of the endpoint's addresses once, in the order of a
  :class:`~conveyor.client.failover.Rotation` (one address: just that one); if none
  answers it raises :class:`~conveyor.errors.BrokerUnavailable` at once, naming each
  address and why (no retry: there is nothing to come back to);
* once connected, a lost connection is retried with backoff for ``reconnect_timeout``
  seconds from the loss, each round trying the other addresses first (failover), and
  requests marked resendable are sent again on the new connection; a request not marked
  so raises :class:`~conveyor.errors.ConnectionLost`, saying it was not resent;
* a fatal ERROR caused by our own frame is raised, never resent;
* a refusal of our credentials (``unauthorized``: a bad token at HELLO, or one the broker
  ended on an open connection because it was revoked or expired) is raised as
  :class:`~conveyor.errors.AuthenticationError` and remembered: every later request raises
  it again at once, without knocking on the broker's door (a new token means a new client).
"""

from __future__ import annotations

import logging
from typing import Any

from conveyor.client.endpoint import Address, Endpoint
from conveyor.client.failover import unreachable
from conveyor.errors import AuthenticationError, ConnectionLost
from conveyor.protocol.session import Event, Welcome

log = logging.getLogger("conveyor.client")
Frame = dict[str, Any]
READ_SIZE = 262144


Failures = list[tuple[Address, BaseException]]
UNREACHABLE = (OSError, ConnectionLost, TimeoutError)  # a broker we could not use: try another


class NoneAnswered(Exception):
    """No address of a round could be used (internal: becomes BrokerUnavailable or
    ConnectionLost with the words of :func:`~conveyor.client.failover.unreachable`)."""

    def __init__(self, endpoint: Endpoint, failures: Failures) -> None:
        super().__init__(unreachable(endpoint, failures))
        self.failures = failures


class NotResent(ConnectionLost):
    """A request marked not resendable was cut off by a lost connection: the broker may
    or may not have applied it, and it was not sent again."""


def not_resent(frame: Frame, address: Address, exc: BaseException) -> NotResent:
    return NotResent(
        f"the connection to the broker at {address} was lost before it answered this "
        f"{frame.get('t')!r} request ({exc}); it was not sent again, since the broker may "
        "have applied it already: check before repeating it"
    )


def failed_over(lost: Address | None, address: Address) -> None:
    if lost is not None and lost != address:
        log.warning("lost the broker at %s; failed over to the broker at %s", lost, address)


def again(exc: AuthenticationError) -> AuthenticationError:
    """A fresh copy of a remembered refusal (re-raising one instance grows its traceback)."""
    return type(exc)(exc.code, exc.message, exc.field)


def welcome_of(event: Event) -> Frame | None:
    return event.frame if isinstance(event, Welcome) else None
