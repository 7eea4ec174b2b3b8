"""Bounds on hostile fare input (sans-I/O): bounded JSON, quarantine and log budgets.

Nothing a bus (or anyone who can publish on a ``buses/{bus}/fares`` topic) sends may
stop ingest, abort a transaction holding someone else's valid events, or make the
ledger grow without bound:

* :func:`bounded_loads` parses a payload only after checking its size and nesting depth
  (a 100,000-deep array is rejected before :func:`json.loads` would recurse), and
  rejects ``NaN``, ``Infinity`` and numbers that overflow to infinity at every level.
* :func:`check_int_ranges` rejects integers the ledger cannot hold (``BIGINT``).
* :class:`QuarantineBudget` bounds how many rejected items are *stored* per message
  and per bus per minute (every rejection is still counted by reason).
* :class:`LogBudget` rate-limits warning logs per key, reporting how many were
  suppressed in the next line that gets through.

All of them are plain synchronous code fed timestamps; the ingest adapters own the
clock.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

__all__ = [
    "MAX_BIGINT",
    "BoundsError",
    "LogBudget",
    "QuarantineBudget",
    "bounded_loads",
    "check_int_ranges",
    "max_depth",
]

MAX_BIGINT = 2**63 - 1
"""The largest integer a ``BIGINT`` column (and SQLite's INTEGER) holds."""

_KEEP = frozenset(b'[]{}"')
_DELETE = bytes(b for b in range(256) if b not in _KEEP)
_DELTA = [0] * 256
_DELTA[ord("[")] = _DELTA[ord("{")] = 1
_DELTA[ord("]")] = _DELTA[ord("}")] = -1


class BoundsError(ValueError):
    """A payload breaks a bound; ``reason`` is a stable snake_case name.

    Attributes:
        reason: ``too_large``, ``too_deep``, ``not_json``, ``non_finite`` or
            ``int_range``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def max_depth(payload: bytes) -> int:
    """The deepest nesting of arrays/objects in ``payload`` (brackets in strings ignored).

    Works on any bytes, JSON or not, in time linear in the length.
    """
    # Escaped backslashes, then escaped quotes, go first (left to right, as a JSON
    # parser reads them); every quote left opens or closes a string, so after keeping
    # only quotes and brackets the even pieces between quotes are outside strings.
    # All of it runs in C: a few microseconds per event, linear on hostile input.
    kept = payload.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _DELETE)
    brackets = b"".join(kept.split(b'"')[::2])
    if not brackets:
        return 0
    return max(accumulate(map(_DELTA.__getitem__, brackets), initial=0))


def _reject_constant(name: str) -> Any:
    raise BoundsError("non_finite", f"{name} is not a JSON number busbell accepts")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BoundsError("non_finite", f"number {text[:40]} overflows to infinity")
    return value


def bounded_loads(payload: bytes, *, max_bytes: int, max_nesting: int) -> Any:
    """Parse JSON whose size and nesting are bounded, with finite numbers only.

    Args:
        payload: the raw bytes (UTF-8 JSON).
        max_bytes: larger payloads are rejected without parsing.
        max_nesting: deeper arrays/objects are rejected without parsing.

    Returns:
        The decoded value.

    Raises:
        BoundsError: ``too_large``, ``too_deep``, ``not_json`` or ``non_finite``.
    """
    if len(payload) > max_bytes:
        raise BoundsError("too_large", f"payload of {len(payload)} bytes is over {max_bytes}")
    depth = max_depth(payload)
    if depth > max_nesting:
        raise BoundsError("too_deep", f"payload nests {depth} deep, over {max_nesting}")
    try:
        return json.loads(payload, parse_constant=_reject_constant, parse_float=_finite_float)
    except BoundsError:
        raise
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise BoundsError("too_deep", "payload nests too deep") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BoundsError("not_json", f"payload is not JSON: {exc}") from None


def check_int_ranges(obj: object, *, limit: int = MAX_BIGINT, _depth: int = 0) -> None:
    """Reject any integer in ``obj`` (nested) outside ``[-limit-1, limit]``.

    Raises:
        BoundsError: ``int_range``.
    """
    if isinstance(obj, bool):
        return
    if isinstance(obj, int):
        if not -limit - 1 <= obj <= limit:
            raise BoundsError("int_range", "an integer is outside the 64-bit range")
        return
    if _depth > 64:  # bounded_loads limits nesting far below this
        raise BoundsError("too_deep", "value nests too deep")
    if isinstance(obj, dict):
        values: Iterable[object] = obj.values()
    elif isinstance(obj, list):
        values = obj
    else:
        return
    for v in values:
        if isinstance(v, int | dict | list):
            check_int_ranges(v, limit=limit, _depth=_depth + 1)


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
