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

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from busbell import canonical_bytes

__all__ = ["LogBudget", "QuarantineBudget", "ledger_problem", "signed_and_full"]

_BIGINT_MAX = 2**63 - 1
_TEXT_COLUMNS = ("route_id", "trip_id")


def ledger_problem(ev: Mapping[str, Any]) -> str | None:
    """Why a schema-valid chain record still cannot be a ledger row, or ``None``.

    The integers must fit ``BIGINT`` and the text columns must not hold NUL (PostgreSQL
    text cannot); such a record is rejected (``schema``) online and offline alike, never
    left to fail a transaction.
    """
    missed = ev["type"] == "missed"
    for key in ("seq",) if missed else ("seq", "interval"):
        if ev[key] > _BIGINT_MAX:
            return f"{key} {str(ev[key])[:30]} is over {_BIGINT_MAX}"
    if missed:
        texts = [ev["trip_id"], ev["request_id"], ev["route_id"], ev["stop_id"]]
    else:
        texts = [ev[k] for k in _TEXT_COLUMNS] + [ev["start"]["stop_id"], ev["end"]["stop_id"]]
    for text in texts:
        if text is not None and "\x00" in text:
            return "a text field holds NUL"
    return None


_SEQ_KEY = b',"seq":'
_B64 = re.compile(r"[A-Za-z0-9+/=]*")


def signed_and_full(ev: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """The canonical bytes ``sig`` signs and the canonical bytes with ``sig``, serialised once.

    Keys are sorted and every key after ``"seq"`` at the top level of a v1 chain record
    sorts after ``"sig"``, while no nested object after ``seq`` has a ``seq`` key; so the
    full bytes are the signed bytes with ``"sig":...`` spliced in after ``seq``'s value.

    Raises:
        ValueError: when ``ev`` cannot be serialised (NaN, a lone surrogate).
        TypeError: for values that are not JSON types.
    """
    body = {k: v for k, v in ev.items() if k != "sig"}
    signed = canonical_bytes(body)
    if "sig" not in ev:
        return signed, signed
    at = signed.rfind(_SEQ_KEY)
    end = signed.find(b",", at + len(_SEQ_KEY))
    sig = ev["sig"]
    # a valid sig is base64 (nothing to escape); anything else is serialised properly
    sig_json = b'"' + sig.encode("ascii") + b'"' if _B64.fullmatch(sig) else canonical_bytes(sig)
    if at < 0 or end < 0:  # pragma: no cover - validate_event guarantees seq is not last
        return signed, canonical_bytes(ev)
    return signed, signed[:end] + b',"sig":' + sig_json + signed[end:]


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

    def admit(self, bus_id: str, wanted: int, now: float, *, stored: int = 0) -> int:
        """How many of ``wanted`` rejections of one message may be stored now.

        Args:
            bus_id: the bus (topic) of the message.
            wanted: its rejections to store.
            now: the clock.
            stored: rows of the same message admitted before (its rejections decided in
                two steps: when decoded, and by the run decision of the batch).
        """
        wanted = min(wanted, self.per_message - stored)
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
