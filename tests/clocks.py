"""A clock some seconds ahead of another, for tests that let a token expire or a block
lapse without waiting for it."""

from __future__ import annotations

from typing import Any


class Later:
    """``clock``, ``ahead`` seconds later: wall time always, monotonic time too with
    ``monotonic=True`` (what the login throttle reads)."""

    def __init__(self, clock: Any, ahead: float, *, monotonic: bool = False) -> None:
        self._clock, self._ahead = clock, ahead
        self._mono_ahead = ahead if monotonic else 0.0

    def now(self) -> float:
        return float(self._clock.now()) + self._ahead

    def monotonic(self) -> float:
        return float(self._clock.monotonic()) + self._mono_ahead
