"""Which broker to dial next, when an endpoint lists several (no sockets here).

Theory of operation
-------------------
A :class:`Rotation` starts at a random address, so that many clients and workers given the
same list spread over the brokers instead of all landing on the first. The first
connection tries each address once, from there (:meth:`Rotation.first_round`). Once
connected, the address that worked is *current*; when its connection is lost, a round
starts at the address after it and ends with it (:meth:`Rotation.after_loss`), so a
client fails over to another broker at once and comes back to the lost one last. Between
rounds that all fail, the transports sleep with their :class:`~conveyor.protocol.session.Backoff`.

What a round gives up on: only failures to *reach* a broker (refused, unreachable, timed
out, TLS that does not verify for that host, a broker that hangs up during the handshake).
A broker that answers and refuses our credentials (``unauthorized``, ``forbidden``,
``too_many_failures``) ends the round and is raised: every broker of one system shares the
tokens, so another would say the same, and knocking on each would only feed the
failed-login throttle.

:func:`unreachable` words the error of a round that failed everywhere.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Sequence

from conveyor.client.endpoint import Address, Endpoint


def first_index(n: int) -> int:
    """Where a new rotation over ``n`` addresses starts: anywhere, so load spreads."""
    return random.randrange(n)


class Rotation:
    """The order to dial an endpoint's addresses in; see the module docstring."""

    def __init__(self, addresses: Sequence[Address], start: int | None = None) -> None:
        if not addresses:
            raise ValueError("a rotation needs at least one address")
        self.addresses = tuple(addresses)
        n = len(self.addresses)
        self._current = first_index(n) if start is None else start % n

    @property
    def current(self) -> Address:
        """The address last connected to (before any: where the first round starts)."""
        return self.addresses[self._current]

    def first_round(self) -> list[Address]:
        """Every address once, from the current one."""
        return self._from(self._current)

    def after_loss(self) -> list[Address]:
        """Every address once, from the one after the current (lost) one; it comes last."""
        return self._from(self._current + 1)

    def connected(self, address: Address) -> None:
        """``address`` works now: the next loss starts the round after it."""
        self._current = self.addresses.index(address)

    def _from(self, start: int) -> list[Address]:
        n = len(self.addresses)
        return [self.addresses[(start + i) % n] for i in range(n)]


def failure_detail(endpoint: Endpoint, address: Address, exc: BaseException) -> str:
    """Why one address could not be used, in a few words a person can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        ca = f"the CA in {endpoint.ca_file}" if endpoint.ca_file else "the system's CAs"
        return (
            f"cannot verify the broker at {address} against {ca}: "
            f"{exc.verify_message or exc} (give the broker's CA with --ca / CONVEYOR_CA; "
            "its certificate must name this host: conveyor broker --hosts)"
        )
    detail = (
        exc.strerror
        if isinstance(exc, OSError) and exc.strerror
        else str(exc) or type(exc).__name__
    )
    return f"cannot reach the broker at {address}: {detail}"


HINT = "is `conveyor broker` running there? check --broker / CONVEYOR_BROKER_URL"


def unreachable(endpoint: Endpoint, failures: Sequence[tuple[Address, BaseException]]) -> str:
    """The message for a round in which no address could be used."""
    details = [failure_detail(endpoint, address, exc) for address, exc in failures]
    if len(details) == 1:
        verified = isinstance(failures[0][1], ssl.SSLCertVerificationError)
        return details[0] if verified else f"{details[0]} ({HINT})"
    return f"no broker of {endpoint.address} could be reached: " + "; ".join(details) + f" ({HINT})"
