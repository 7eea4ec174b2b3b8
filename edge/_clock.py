"""The bus's time, disciplined by GNSS.

Tokens are accepted only if their time is within a few seconds of the bus's (DESIGN:
``tq`` within the window of GNSS time), fare events carry the bus's times and fleet keys
are chosen by the bus's UTC day. The onboard unit's system clock may be wrong (no RTC
battery, no NTP without a network), so once a GNSS fix has been seen the bus's time is
the last fix's time plus the monotonic time elapsed since it. Until then it is the
system clock.

Sans-I/O: the system and monotonic clocks are injected; the daemon feeds
:meth:`GnssClock.observe` with every GNSS fix it receives.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["GnssClock"]


class GnssClock:
    """Callable returning the bus's time (UNIX seconds).

    It does not go backwards by the small amounts a late fix would make it (a fix that
    puts the time up to ``step_s`` behind what was already returned holds the clock
    until it catches up); a larger correction (the first fix after a wrong system clock,
    a GNSS receiver that fixed its week) is a step, taken at once.

    Args:
        system: the system clock (fallback before the first fix).
        monotonic: a monotonic clock (seconds).
        step_s: smallest backward correction taken as a step.
    """

    def __init__(
        self,
        system: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        step_s: float = 5.0,
    ) -> None:
        self._system = system
        self._monotonic = monotonic
        self._step_s = step_s
        self._anchor: tuple[float, float] | None = None  # (gnss time, monotonic then)
        self._last = float("-inf")
        self.fixes = 0

    @property
    def source(self) -> str:
        """``gnss`` once a fix has been seen, else ``system``."""
        return "system" if self._anchor is None else "gnss"

    def observe(self, gnss_t: float) -> None:
        """A GNSS fix with this time arrived now."""
        self._anchor = (gnss_t, self._monotonic())
        self.fixes += 1
        if self.fixes == 1 or gnss_t < self._last - self._step_s:
            self._last = float("-inf")

    def __call__(self) -> float:
        if self._anchor is None:
            now = self._system()
        else:
            gnss_t, mono = self._anchor
            now = gnss_t + (self._monotonic() - mono)
        if now < self._last:
            return self._last
        self._last = now
        return now

    def offset_s(self) -> float:
        """The bus's time minus the system clock (0 before the first fix)."""
        if self._anchor is None:
            return 0.0
        return self() - self._system()
