"""The broker's door: every login (a HELLO on the socket, a bearer token on HTTP) passes here.

A login from a source that sent too many bad tokens lately is refused unchecked with
:class:`~conveyor.errors.TooManyFailures` (its ``retry_after`` says for how long); any other
is checked against the token registry, and a bad token raises
:class:`~conveyor.errors.AuthenticationError` and counts against its source. The policy
(free failures, doubling blocks, /64 grouping, the bounded table, aggregate logging) is
:mod:`conveyor.security.throttle`; this module applies it, counts and logs. Its time is
monotonic: a wall clock stepped back an hour must not block a source for an hour.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from conveyor.errors import AuthenticationError, TooManyFailures
from conveyor.security.throttle import LoginThrottle, source_key
from conveyor.security.tokens import TokenInfo

log = logging.getLogger("conveyor.broker")
Authenticate = Callable[[Any], TokenInfo | None]
Monotonic = Callable[[], float]


class Logins:
    """Check logins behind the per-source throttle; count them in ``metrics``."""

    def __init__(
        self,
        authenticate: Authenticate,
        throttle: LoginThrottle,
        metrics: Counter[str],
        monotonic: Monotonic,
    ) -> None:
        self._authenticate = authenticate
        self.throttle = throttle
        self._metrics = metrics
        self._monotonic = monotonic

    def login(self, token: Any, address: str, *, peer: str, http: bool) -> TokenInfo:
        """The token's info; raises TooManyFailures or AuthenticationError."""
        prefix = "http_" if http else ""
        now = self._monotonic()
        wait = self.throttle.retry_after(address, now)
        if wait > 0:
            self._metrics[prefix + "auth_throttled"] += 1
            raise TooManyFailures(
                TooManyFailures.CODE,
                f"too many bad tokens from {source_key(address)}; try again in {wait:.2f}s",
                retry_after=round(wait, 3),
            )
        info = self._authenticate(token)
        if info is not None:
            return info
        why = "unknown, revoked or expired token" if token else "no token given"
        self._metrics[prefix + "auth_failures"] += 1
        failure = self.throttle.failed(address, now, why)
        if failure.log_now:
            log.warning(
                "rejected bad token from %s%s (%s)%s",
                peer,
                " (HTTP)" if http else "",
                why,
                "; further failures from there are summarised every "
                f"{self.throttle.log_interval:g}s",
            )
        raise AuthenticationError("unauthorized", why)

    def report(self) -> int:
        """Log the aggregate lines that are due; returns how many."""
        lines = self.throttle.report(self._monotonic())
        for line in lines:
            log.warning("bad tokens %s", line)
        return len(lines)

    def snapshot(self) -> dict[str, Any]:
        """The ``security`` section of stats."""
        m = self._metrics
        return {
            **self.throttle.snapshot(self._monotonic()),
            "auth_failures": m.get("auth_failures", 0),
            "auth_throttled": m.get("auth_throttled", 0),
            "http_auth_failures": m.get("http_auth_failures", 0),
            "http_auth_throttled": m.get("http_auth_throttled", 0),
            "forbidden": m.get("forbidden", 0),
            "token_ended_connections": m.get("token_ended_connections", 0),
        }
