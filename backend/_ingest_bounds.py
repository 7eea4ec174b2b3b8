"""Budgets for hostile fare input (sans-I/O): what is stored and what is logged.

Nothing a bus (or anyone who can publish on a ``buses/{bus}/fares`` topic) sends may
make the ledger or the logs grow without bound (parsing itself is bounded by
:func:`busbell.loads_bounded`):

* :class:`QuarantineBudget` bounds how many rejected items are *stored* per message
  and per bus per minute (every rejection is still counted by reason).
* :class:`LogBudget` rate-limits warning logs per key, reporting how many were
  suppressed in the next line that gets through.

Both are plain synchronous code fed timestamps; the ingest adapters own the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LogBudget", "QuarantineBudget"]


@dataclass(slots=True)
class QuarantineBudget:
    """How many rejected items may be stored: per message and per bus per window.

    Rejections over the budget are still counted (by reason) but not stored, so one
    message (or a flood on one bus's topic) cannot grow the ``quarantine`` table
    without bound.

    Args:
        per_message: most rows stored for one MQTT message.
        per_bus: most rows stored for one bus (topic) per ``window_s``.
        window_s: the per-bus window.
        max_buses: buses tracked at once (older windows are forgotten first).
    """

    per_message: int = 10
    per_bus: int = 120
    window_s: float = 60.0
    max_buses: int = 100_000
    _windows: dict[str, tuple[float, int]] = field(default_factory=dict)

    def admit(self, bus_id: str, wanted: int, now: float) -> int:
        """How many of ``wanted`` rejections of one message may be stored now."""
        wanted = min(wanted, self.per_message)
        if wanted <= 0:
            return 0
        start, used = self._windows.get(bus_id, (now, 0))
        if now - start >= self.window_s or now < start:
            start, used = now, 0
        take = max(0, min(wanted, self.per_bus - used))
        if bus_id not in self._windows and len(self._windows) >= self.max_buses:
            self._expire(now)
        self._windows[bus_id] = (start, used + take)
        return take

    def _expire(self, now: float) -> None:
        live = {b: w for b, w in self._windows.items() if now - w[0] < self.window_s}
        if len(live) >= self.max_buses:  # all live: forget the oldest half
            keep = sorted(live.items(), key=lambda kv: kv[1][0])[len(live) // 2 :]
            live = dict(keep)
        self._windows = live


@dataclass(slots=True)
class LogBudget:
    """Rate limit for warning logs: at most ``burst`` lines per key per ``window_s``.

    :meth:`allow` returns ``None`` when a line must be suppressed, else how many lines
    of that key were suppressed since the last one that got through (to log with it).
    """

    burst: int = 10
    window_s: float = 60.0
    max_keys: int = 10_000
    _state: dict[tuple[str, ...], list[float]] = field(default_factory=dict)

    def allow(self, key: tuple[str, ...], now: float) -> int | None:
        """Whether a line for ``key`` may be logged now (see the class doc)."""
        st = self._state.get(key)
        if st is None:
            if len(self._state) >= self.max_keys:
                self._state.clear()
            st = self._state[key] = [now, 0.0, 0.0]  # window start, used, suppressed
        if now - st[0] >= self.window_s or now < st[0]:
            st[0], st[1] = now, 0.0
        if st[1] >= self.burst:
            st[2] += 1
            return None
        st[1] += 1
        suppressed = int(st[2])
        st[2] = 0.0
        return suppressed
