"""The bus's time, disciplined by GNSS.

Tokens are accepted only if their time is within a few seconds of the bus's (DESIGN:
``tq`` within the window of GNSS time), fare events carry the bus's times and fleet keys
are chosen by the bus's UTC day. The onboard unit's system clock may be wrong (no RTC
battery, no NTP without a network), so once a GNSS fix has been seen the bus's time is
the last fix's time plus the monotonic time elapsed since it. Until then it is the
system clock.

Fixes do not always arrive in order or on time: after an MQTT reconnect a persistent
session delivers the fixes queued while the bus was away, all at once. So the clock
never goes back because of one fix:

* the first fix is taken at once, wherever it puts the time (it defines the source);
* a fix no later than the one the clock is anchored on is stale and ignored;
* a fix up to ``step_s`` behind what the clock says is taken, and the clock holds
  until it catches up (it does not go back by such small amounts);
* a fix more than ``step_s`` behind is taken as a backward step only once ``confirm``
  such fixes agree on it: their implied offsets (fix time minus monotonic time) within
  ``agree_s`` of each other, arriving over at least ``agree_s`` of monotonic time. A
  receiver that really stepped back gives a steady offset fix after fix; a queued
  backlog arrives in a burst whose times race ahead of the monotonic clock, and live
  fixes resuming in between cancel the candidate step;
* forward corrections of any size are taken at once.

Before the first fix the system clock holds the same way: it does not go back by up to
``step_s`` (an NTP slew, a jittery RTC), but a larger backward jump (an NTP step, an
operator setting the date) is taken at once rather than freezing the clock for the
size of the jump.

The state is guarded by a lock: the clock is called from the event loop per
advertisement and may be read from a metrics thread.

Sans-I/O: the system and monotonic clocks are injected; the daemon feeds
:meth:`GnssClock.observe` with every GNSS fix it receives.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from busbell import get_logger

__all__ = ["GnssClock"]

_log = get_logger("edge.clock")


class GnssClock:
    """Callable returning the bus's time (UNIX seconds); never goes back by less than a step.

    Args:
        system: the system clock (fallback before the first fix).
        monotonic: a monotonic clock (seconds).
        step_s: smallest backward correction taken as a step (smaller ones hold).
        confirm: fixes that must agree before a backward step is taken.
        agree_s: how closely their implied offsets must agree, and the least monotonic
            time they must span.

    Attributes:
        fixes: fixes taken (the clock anchored on them).
        fixes_ignored: fixes not taken: stale, or behind by a step not (yet) confirmed.
        stepped_s: the sum of the clock's steps so far (seconds, signed): the first fix's
            correction of the system clock, confirmed backward steps, forward corrections
            and backward system-clock jumps, each counted when larger than ``step_s``. A
            holder of times read before a step shifts them by the change of this sum.
    """

    def __init__(
        self,
        system: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        step_s: float = 5.0,
        confirm: int = 3,
        agree_s: float = 1.0,
    ) -> None:
        self._system = system
        self._monotonic = monotonic
        self._step_s = step_s
        self._confirm = confirm
        self._agree_s = agree_s
        self._anchor: tuple[float, float] | None = None  # (gnss time, monotonic then)
        self._last = float("-inf")
        # a backward step being confirmed: (implied offset, monotonic of its first fix, fixes)
        self._candidate: tuple[float, float, int] | None = None
        self._lock = threading.Lock()
        self.fixes = 0
        self.fixes_ignored = 0
        self.stepped_s = 0.0

    @property
    def source(self) -> str:
        """``gnss`` once a fix has been seen, else ``system``."""
        return "system" if self._anchor is None else "gnss"

    def observe(self, gnss_t: float) -> None:
        """A GNSS fix with this time arrived now."""
        with self._lock:
            mono = self._monotonic()
            anchor = self._anchor
            if anchor is None:
                self._count_step(gnss_t - max(self._system(), self._last))
                self._take(gnss_t, mono)
                return
            says = max(anchor[0] + (mono - anchor[1]), self._last)
            if gnss_t < says - self._step_s:
                if self._confirmed(gnss_t - mono, mono):
                    _log.warning("clock_stepped", source="gnss", step_s=round(gnss_t - says, 3))
                    self._count_step(gnss_t - says)
                    self._take(gnss_t, mono)
                else:
                    self.fixes_ignored += 1
                return
            if gnss_t <= anchor[0]:
                self.fixes_ignored += 1
                return
            self._candidate = None
            self._count_step(gnss_t - says)
            self._anchor = (gnss_t, mono)
            self.fixes += 1

    def _count_step(self, step: float) -> None:
        if abs(step) > self._step_s:
            self.stepped_s += step

    def _confirmed(self, offset: float, mono: float) -> bool:
        """Count a fix towards a backward step; whether the step is now confirmed."""
        cand = self._candidate
        if cand is None or abs(offset - cand[0]) > self._agree_s:
            self._candidate = (offset, mono, 1)
            return self._confirm <= 1
        first_offset, first_mono, n = cand
        self._candidate = (first_offset, first_mono, n + 1)
        return n + 1 >= self._confirm and mono - first_mono >= self._agree_s

    def _take(self, gnss_t: float, mono: float) -> None:
        self._anchor = (gnss_t, mono)
        self._last = float("-inf")
        self._candidate = None
        self.fixes += 1

    def __call__(self) -> float:
        with self._lock:
            anchor = self._anchor
            if anchor is None:
                now = self._system()
                if now < self._last - self._step_s:
                    step = round(now - self._last, 3)
                    _log.warning("clock_stepped", source="system", step_s=step)
                    self.stepped_s += now - self._last
                    self._last = now
                    return now
            else:
                now = anchor[0] + (self._monotonic() - anchor[1])
            if now < self._last:
                return self._last
            self._last = now
            return now

    def offset_s(self) -> float:
        """The bus's time minus the system clock (0 before the first fix)."""
        if self._anchor is None:
            return 0.0
        return self() - self._system()
