"""Trace v1 (JSON Lines) reader and writer, for record and replay.

The first line is ``{"kind":"meta","format":"busbell-trace/1","bus_id":...}``; every other
line has ``t`` (UNIX seconds, GNSS time) and ``kind`` (``adv``, ``gnss``, ``door``,
``trip``). The reader streams; errors name the line number and the field. In lenient
mode (``on_error`` given) a bad line is reported and skipped and reading goes on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from busbell._errors import TraceError
from busbell._safejson import JsonLimits, JsonRejected, loads_bounded

__all__ = [
    "MAX_LINE",
    "TRACE_FORMAT",
    "AdvRecord",
    "DoorRecord",
    "GnssRecord",
    "TraceMeta",
    "TraceReader",
    "TraceRecord",
    "TraceWriter",
    "TripRecord",
    "parse_record",
    "record_to_json",
]

TRACE_FORMAT = "busbell-trace/1"
MAX_LINE = 64 * 1024
"""Longest trace line read, in characters (an advert line is ~150)."""
_LINE_LIMITS = JsonLimits(max_bytes=4 * MAX_LINE, max_depth=4)


def _bounded_lines(lines: Iterable[str], max_chars: int) -> Iterator[str | None]:
    """The lines of ``lines``; ``None`` for each line over ``max_chars`` (never read whole).

    An open text file is read with ``readline(limit)``, so a line of a gigabyte without a
    newline costs ``max_chars`` of memory, not a gigabyte.
    """
    readline = getattr(lines, "readline", None)
    if not callable(readline):
        for text in lines:
            yield None if len(text) > max_chars + 1 else text
        return
    while True:
        text = readline(max_chars + 1)
        if not text:
            return
        if len(text) > max_chars and not text.endswith("\n"):
            while True:  # drop the rest of the over-long line
                more = readline(max_chars + 1)
                if not more or more.endswith("\n"):
                    break
            yield None
            continue
        yield text


def _load_line(text: str, lineno: int) -> Any:
    try:
        return loads_bounded(text, _LINE_LIMITS)
    except JsonRejected as exc:
        detail = str(exc).split(": ", 1)[-1]
        message = f"not JSON: {detail}" if exc.reason == "not_json" else str(exc)
        raise TraceError(message, line=lineno, reason=exc.reason) from None


@dataclass(frozen=True, slots=True)
class TraceMeta:
    """The first line of a trace."""

    bus_id: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AdvRecord:
    """One BLE advertisement as the scanner reported it."""

    t: float
    addr: str
    rssi: int
    mfr: dict[int, bytes]


@dataclass(frozen=True, slots=True)
class GnssRecord:
    """A GNSS fix."""

    t: float
    lat: float
    lon: float
    speed_mps: float
    heading: float | None = None


@dataclass(frozen=True, slots=True)
class DoorRecord:
    """Any passenger door opened (``open``) or all closed."""

    t: float
    open: bool


@dataclass(frozen=True, slots=True)
class TripRecord:
    """The driver signed on to a trip."""

    t: float
    route_id: str
    direction_id: int
    trip_id: str | None = None


TraceRecord = AdvRecord | GnssRecord | DoorRecord | TripRecord


def _num(obj: dict[str, Any], key: str, line: int, *, optional: bool = False) -> float | None:
    v = obj.get(key)
    if v is None:
        if optional:
            return None
        raise TraceError("is missing", line=line, field=key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise TraceError(f"must be a finite number, got {v!r:.40}", line=line, field=key)
    return float(v)


def _str(obj: dict[str, Any], key: str, line: int, *, optional: bool = False) -> str | None:
    v = obj.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v:
        raise TraceError("must be a non-empty string", line=line, field=key)
    return v


def _parse_mfr(v: object, line: int) -> dict[int, bytes]:
    if not isinstance(v, dict):
        raise TraceError("must be an object", line=line, field="mfr")
    out: dict[int, bytes] = {}
    for k, hx in v.items():
        if not (isinstance(k, str) and k.isdigit() and int(k) <= 0xFFFF):
            raise TraceError(f"company id {k!r} is not a decimal 0-65535", line=line, field="mfr")
        if not isinstance(hx, str):
            raise TraceError(f"payload of {k} must be a hex string", line=line, field="mfr")
        try:
            out[int(k)] = bytes.fromhex(hx)
        except ValueError:
            raise TraceError(f"payload of {k} is not hex", line=line, field="mfr") from None
    return out


def parse_record(obj: Any, line: int) -> TraceRecord:
    """Turn one decoded JSON line into a record.

    Raises:
        TraceError: naming the line and field.
    """
    if not isinstance(obj, dict):
        raise TraceError("must be a JSON object", line=line)
    kind = obj.get("kind")
    t = _num(obj, "t", line)
    assert t is not None
    if kind == "adv":
        rssi = obj.get("rssi")
        if not isinstance(rssi, int) or isinstance(rssi, bool) or not -127 <= rssi <= 20:
            raise TraceError("must be an integer dBm in -127..20", line=line, field="rssi")
        addr = _str(obj, "addr", line)
        assert addr is not None
        return AdvRecord(t, addr, rssi, _parse_mfr(obj.get("mfr"), line))
    if kind == "gnss":
        lat, lon = _num(obj, "lat", line), _num(obj, "lon", line)
        assert lat is not None
        assert lon is not None
        if not -90 <= lat <= 90:
            raise TraceError("must be within -90..90", line=line, field="lat")
        if not -180 <= lon <= 180:
            raise TraceError("must be within -180..180", line=line, field="lon")
        speed = _num(obj, "speed_mps", line)
        assert speed is not None
        if speed < 0:
            raise TraceError("must not be negative", line=line, field="speed_mps")
        return GnssRecord(t, lat, lon, speed, _num(obj, "heading", line, optional=True))
    if kind == "door":
        is_open = obj.get("open")
        if not isinstance(is_open, bool):
            raise TraceError("must be true or false", line=line, field="open")
        return DoorRecord(t, is_open)
    if kind == "trip":
        route_id = _str(obj, "route_id", line)
        assert route_id is not None
        direction = obj.get("direction_id")
        if direction not in (0, 1) or isinstance(direction, bool):
            raise TraceError("must be 0 or 1", line=line, field="direction_id")
        return TripRecord(t, route_id, int(direction), _str(obj, "trip_id", line, optional=True))
    raise TraceError(f"unknown kind {kind!r:.40}", line=line, field="kind")


def record_to_json(rec: TraceRecord) -> dict[str, Any]:
    """The trace v1 JSON object of a record."""
    if isinstance(rec, AdvRecord):
        mfr = {str(k): v.hex() for k, v in rec.mfr.items()}
        return {"kind": "adv", "t": rec.t, "addr": rec.addr, "rssi": rec.rssi, "mfr": mfr}
    if isinstance(rec, GnssRecord):
        out: dict[str, Any] = {
            "kind": "gnss",
            "t": rec.t,
            "lat": rec.lat,
            "lon": rec.lon,
            "speed_mps": rec.speed_mps,
        }
        if rec.heading is not None:
            out["heading"] = rec.heading
        return out
    if isinstance(rec, DoorRecord):
        return {"kind": "door", "t": rec.t, "open": rec.open}
    trip: dict[str, Any] = {
        "kind": "trip",
        "t": rec.t,
        "route_id": rec.route_id,
        "direction_id": rec.direction_id,
    }
    if rec.trip_id is not None:
        trip["trip_id"] = rec.trip_id
    return trip


class TraceReader:
    """Stream the records of a trace.

    Args:
        lines: the trace's lines (an open text file works, and is then read line by line
            with a bound; open it with ``errors="surrogateescape"`` so a line that is not
            UTF-8 is one bad line, not the end of the file).
        on_error: if given, called with each :class:`TraceError` and the bad line is
            skipped; otherwise the first error is raised.
        max_line: longest line accepted, in characters; longer lines are skipped unread
            (reason ``too_long``). Every line is parsed with
            :func:`busbell.loads_bounded` (depth, numbers, UTF-8).

    Raises:
        TraceError: when the meta line is missing or invalid (always), or on the first
            bad record line when ``on_error`` is not given.
    """

    def __init__(
        self,
        lines: Iterable[str],
        *,
        on_error: Callable[[TraceError], None] | None = None,
        max_line: int = MAX_LINE,
    ) -> None:
        self._it = _bounded_lines(lines, max_line)
        self._on_error = on_error
        self.errors = 0
        self.lineno = 1
        try:
            first = next(self._it)
        except StopIteration:
            raise TraceError("empty trace, expected a meta line", line=1) from None
        if first is None:
            raise TraceError("meta line too long", line=1, reason="too_long")
        obj = _load_line(first, 1)
        if not isinstance(obj, dict) or obj.get("kind") != "meta":
            raise TraceError("first line must be the meta line", line=1, field="kind")
        if obj.get("format") != TRACE_FORMAT:
            raise TraceError(f"format must be {TRACE_FORMAT!r}", line=1, field="format")
        bus_id = obj.get("bus_id")
        if not isinstance(bus_id, str) or not bus_id:
            raise TraceError("must be a non-empty string", line=1, field="bus_id")
        extra = {k: v for k, v in obj.items() if k not in ("kind", "format", "bus_id")}
        self.meta = TraceMeta(bus_id, extra)

    def __iter__(self) -> Iterator[TraceRecord]:
        for text in self._it:
            self.lineno += 1
            if text is not None and not text.strip():
                continue
            try:
                if text is None:
                    raise TraceError("line too long", line=self.lineno, reason="too_long")
                rec = parse_record(_load_line(text, self.lineno), self.lineno)
            except TraceError as err:
                self.errors += 1
                if self._on_error is None:
                    raise
                self._on_error(err)
                continue
            yield rec


class TraceWriter:
    """Write a trace v1 file, one compact JSON object per line.

    Args:
        fp: a text file open for writing.
        bus_id: the bus the trace is of.
        **meta: extra meta fields (recorder version, scenario name, ...).
    """

    def __init__(self, fp: IO[str], bus_id: str, **meta: Any) -> None:
        self._fp = fp
        head = {"kind": "meta", "format": TRACE_FORMAT, "bus_id": bus_id, **meta}
        self._write(head)

    def _write(self, obj: dict[str, Any]) -> None:
        self._fp.write(json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n")

    def write(self, rec: TraceRecord) -> None:
        """Append one record."""
        self._write(record_to_json(rec))

    def flush(self) -> None:
        """Flush the underlying file."""
        self._fp.flush()
