"""Failed logins are throttled per source address, counted, and logged in aggregate.

Theory of operation
-------------------
Each *source* (an IPv4 address; an IPv6 /64, the block one host or one customer usually
holds, so hopping between its addresses gains nothing) keeps a count of the bad tokens it
sent. The first :attr:`LoginThrottle.free` failures cost nothing: a mistyped token should not
lock anyone out. Each failure after those blocks the source for a delay that doubles, from
``first_delay`` to ``max_delay`` (0.25 s, 0.5 s, 1 s, 2 s, 4 s, 4 s …). While a source is
blocked, every login from it is refused with ``too_many_failures`` and a ``retry_after``,
*without checking the token* (otherwise the answer would still tell a guess from a hit, and
the block would slow nothing), so at most one guess per delay gets checked. A source that
has not failed for ``forget_after`` seconds starts again from zero.

Other sources are never affected: the state is per source, and the table is bounded
(``max_sources``, least recently failed evicted first). Eviction can only *free* a source,
so an attacker who fills the table with many addresses unblocks himself at worst, never
blocks anyone else. A success does not reset a source (an attacker behind the same NAT as a
worker would otherwise reset his own count); the block is seconds, not minutes.

Logging is aggregated: the first failure of a source is logged at once; the rest within the
next ``log_interval`` seconds are counted and summarised in one line at the end of the
interval (:meth:`LoginThrottle.report`, called by a broker service), so a flood gives one
line per source per interval instead of one per attempt.

Pure: no clock, no sockets, no logging of its own. Callers pass ``now`` (monotonic or wall
clock, as long as it is always the same one).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

FREE_FAILURES = 5
FIRST_DELAY = 0.25
MAX_DELAY = 4.0
FORGET_AFTER = 60.0
MAX_SOURCES = 4096
LOG_INTERVAL = 10.0


def source_key(address: str) -> str:
    """The source an address counts against: itself for IPv4, its /64 for IPv6 (an
    IPv4-mapped IPv6 address counts as its IPv4 address); anything unparsable as is."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(slots=True)
class _Source:
    failures: int = 0  # bad tokens since it was last forgotten
    last_failure: float = 0.0
    blocked_until: float = 0.0
    delay: float = 0.0  # the block given at the last failure
    # the aggregate log: the interval under way, and what happened in it not logged yet
    interval_start: float | None = None
    unlogged_failures: int = 0
    unlogged_refused: int = 0
    last_reason: str = ""


@dataclass(frozen=True, slots=True)
class Failure:
    """What :meth:`LoginThrottle.failed` decided about one bad token."""

    blocked_for: float  # seconds the source is now refused (0 while it has free failures)
    log_now: bool  # the first failure of the source in a while: log it at once


class LoginThrottle:
    """Per-source failure counts, blocks and the aggregate log; see the module docstring."""

    def __init__(
        self,
        *,
        free: int = FREE_FAILURES,
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
        forget_after: float = FORGET_AFTER,
        max_sources: int = MAX_SOURCES,
        log_interval: float = LOG_INTERVAL,
    ) -> None:
        self.free = free
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_sources = max_sources
        self.log_interval = log_interval
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self.failures = 0  # bad tokens, all sources, ever
        self.refused = 0  # logins refused unchecked while their source was blocked
        self.evicted = 0  # sources dropped to keep the table bounded

    @property
    def enabled(self) -> bool:
        return self.max_delay > 0

    def retry_after(self, address: str, now: float) -> float:
        """Seconds until ``address`` may try again (> 0: refuse this login unchecked)."""
        if not self.enabled:
            return 0.0
        src = self._sources.get(source_key(address))
        if src is None or now >= src.blocked_until:
            return 0.0
        self.refused += 1
        src.unlogged_refused += 1
        return src.blocked_until - now

    def failed(self, address: str, now: float, reason: str = "") -> Failure:
        """Record a bad token from ``address``; returns the block now in force."""
        self.failures += 1
        key = source_key(address)
        src = self._sources.get(key)
        if src is None:
            src = self._sources[key] = _Source()
            while len(self._sources) > self.max_sources:
                self._sources.popitem(last=False)
                self.evicted += 1
        else:
            self._sources.move_to_end(key)
            if now - src.last_failure > self.forget_after:
                src.failures = 0
        src.failures += 1
        src.last_failure = now
        src.last_reason = reason
        src.delay = self._delay(src.failures)
        if src.delay > 0:
            src.blocked_until = now + src.delay
        log_now = src.interval_start is None
        if log_now:
            src.interval_start = now
        else:
            src.unlogged_failures += 1
        return Failure(src.delay, log_now)

    def _delay(self, failures: int) -> float:
        over = failures - self.free
        if over <= 0 or not self.enabled:
            return 0.0
        if over > 64:  # 2**64 times any delay is past the cap; no float overflow
            return self.max_delay
        return float(min(self.max_delay, self.first_delay * 2.0 ** (over - 1)))

    def report(self, now: float) -> list[str]:
        """One line per source whose log interval ended with failures not yet logged; forgets
        sources that have been quiet for ``forget_after``."""
        lines: list[str] = []
        for key, src in list(self._sources.items()):
            if src.interval_start is not None and now - src.interval_start >= self.log_interval:
                if src.unlogged_failures or src.unlogged_refused:
                    lines.append(self._line(key, src, now))
                    src.interval_start = now  # still at it: the next interval starts now
                else:
                    src.interval_start = None  # quiet: its next failure is logged at once
                src.unlogged_failures = src.unlogged_refused = 0
            if (
                src.interval_start is None
                and now - src.last_failure > self.forget_after
                and now >= src.blocked_until
            ):
                del self._sources[key]
        return lines

    def _line(self, key: str, src: _Source, now: float) -> str:
        start = now if src.interval_start is None else src.interval_start
        span = round(now - start)
        parts = [f"{src.unlogged_failures} more bad token(s)"]
        if src.unlogged_refused:
            parts.append(f"{src.unlogged_refused} login(s) refused unchecked while throttled")
        block = f"; blocked {src.delay:g}s after each failure" if src.delay else ""
        reason = f" (last: {src.last_reason})" if src.last_reason else ""
        return f"from {key} in the last {span}s: {', '.join(parts)}{reason}{block}"

    def snapshot(self, now: float) -> dict[str, Any]:
        """Numbers for stats and metrics."""
        blocked = sum(1 for s in self._sources.values() if now < s.blocked_until)
        return {
            "login_failures": self.failures,
            "logins_refused_throttled": self.refused,
            "sources_tracked": len(self._sources),
            "sources_blocked": blocked,
            "sources_evicted": self.evicted,
            "throttle": {
                "free_failures": self.free,
                "first_delay": self.first_delay,
                "max_delay": self.max_delay,
                "forget_after": self.forget_after,
                "max_sources": self.max_sources,
            },
        }
