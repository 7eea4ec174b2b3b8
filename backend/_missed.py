"""The operator's report of missed stops: per route and stop, how many waits were missed.

A missed stop is a ``missed`` record in a bus's fare chain, signed by the bus's device
key (the bus passed the stop without opening its doors while a boarding wait was
live). Ingest verifies and stores it in ``missed_stops``; this module reads that table
and checks every record again, independently of ingest, so the report is evidence:

* the stored ``record`` is a valid ``missed`` record whose ids match its row,
* its SHA-256 is the stored ``event_hash`` (the link the next chain record's ``prev``
  names),
* its ``sig`` verifies with the bus's public key in the device registry.

:func:`missed_report` returns a :class:`MissedReport` (``to_json`` for the API,
:func:`format_report` for ``busbell backend missed-report``); :func:`ops_router` serves
``GET /ops/missed-stops`` and ``GET /ops/missed-stops/{event_id}`` (the signed record
and the bus's public key, for anyone to verify it again).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Query
from sqlalchemy.ext.asyncio import AsyncEngine

from backend._durations import duration_text
from busbell._errors import BusbellError
from busbell._fare_event import event_hash, validate_event, verify_event
from busbell._signing import PublicKey

__all__ = [
    "CHECKS",
    "MissedRecord",
    "MissedReport",
    "StopMissed",
    "check_record",
    "format_report",
    "missed_report",
    "ops_router",
]

CHECKS = ("verified", "malformed", "mismatch", "hash_mismatch", "unknown_device", "bad_signature")
"""The outcome of checking a stored record: ``verified`` or why not."""


@dataclass(frozen=True, slots=True)
class MissedRecord:
    """One missed stop: which bus, when, how close, and whether its record verifies."""

    bus_id: str
    seq: int
    event_id: str
    request_id: str
    route_id: str
    trip_id: str | None
    stop_id: str
    wait_t: float
    passed_t: float
    distance_m: float | None
    speed_mps: float | None
    assist: bool
    source: str | None
    check: str
    wait_expires_t: float | None = None
    """The wait's ``expires_t`` (its lifetime: ``wait_t`` up to it), from the record."""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "bus_id": self.bus_id,
            "seq": self.seq,
            "event_id": self.event_id,
            "request_id": self.request_id,
            "trip_id": self.trip_id,
            "wait_t": self.wait_t,
            "wait_expires_t": self.wait_expires_t,
            "passed_t": self.passed_t,
            "distance_m": self.distance_m,
            "speed_mps": self.speed_mps,
            "assist": self.assist,
            "source": self.source,
            "check": self.check,
        }


@dataclass(slots=True)
class StopMissed:
    """The missed stops at one stop of one route."""

    route_id: str
    stop_id: str
    stop_name: str | None
    records: list[MissedRecord] = field(default_factory=list)

    @property
    def buses(self) -> dict[str, int]:
        """How many times each bus missed the stop, most first."""
        return dict(Counter(r.bus_id for r in self.records).most_common())

    def to_json(self) -> dict[str, Any]:
        """JSON-ready fields."""
        times = [r.passed_t for r in self.records]
        return {
            "stop_id": self.stop_id,
            "stop_name": self.stop_name,
            "missed": len(self.records),
            "verified": sum(r.check == "verified" for r in self.records),
            "buses": self.buses,
            "first_t": min(times),
            "last_t": max(times),
            "records": [r.to_json() for r in self.records],
        }


@dataclass(slots=True)
class MissedReport:
    """Missed stops in a time window, by route and stop (most missed first)."""

    since: float | None
    until: float | None
    stops: list[StopMissed]
    truncated: bool = False

    @property
    def total(self) -> int:
        """Missed stops in the report."""
        return sum(len(s.records) for s in self.stops)

    @property
    def checks(self) -> dict[str, int]:
        """Records by check outcome."""
        return dict(Counter(r.check for s in self.stops for r in s.records))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready report: ``routes`` -> ``stops`` -> ``records``."""
        routes: dict[str, list[StopMissed]] = {}
        for s in self.stops:
            routes.setdefault(s.route_id, []).append(s)
        return {
            "since": self.since,
            "until": self.until,
            "total": self.total,
            "checks": self.checks,
            "truncated": self.truncated,
            "routes": [
                {
                    "route_id": route_id,
                    "missed": sum(len(s.records) for s in stops),
                    "stops": [s.to_json() for s in stops],
                }
                for route_id, stops in sorted(
                    routes.items(), key=lambda kv: (-sum(len(s.records) for s in kv[1]), kv[0])
                )
            ],
        }


def check_record(row: Any, public_key_hex: str | None) -> tuple[str, dict[str, Any] | None]:
    """Check a stored ``missed_stops`` row; returns the outcome (:data:`CHECKS`) and record."""
    try:
        record = json.loads(row.record)
        validate_event(record)
    except (ValueError, RecursionError, BusbellError):
        return "malformed", None
    if record.get("type") != "missed" or any(
        record.get(k) != getattr(row, k)
        for k in ("bus_id", "seq", "event_id", "request_id", "route_id", "stop_id")
    ):
        return "mismatch", record
    if event_hash(record) != row.event_hash:
        return "hash_mismatch", record
    if public_key_hex is None:
        return "unknown_device", record
    try:
        verify_event(record, PublicKey(bytes.fromhex(public_key_hex)))
    except (ValueError, BusbellError):
        return "bad_signature", record
    return "verified", record


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


async def missed_report(
    engine: AsyncEngine,
    *,
    since: float | None = None,
    until: float | None = None,
    route_id: str | None = None,
    stop_id: str | None = None,
    bus_id: str | None = None,
    limit: int = 10_000,
    stop_names: Mapping[str, str] | None = None,
) -> MissedReport:
    """The missed stops passed in ``[since, until)``, by route and stop, each checked.

    Args:
        engine: the ledger database.
        since: first passing time (UNIX seconds), or ``None``.
        until: end of the window, or ``None``.
        route_id: only this route.
        stop_id: only this stop.
        bus_id: only this bus.
        limit: most records read (the newest); ``truncated`` says when there were more.
        stop_names: stop id -> name (GTFS).
    """
    from backend._db import devices, missed_stops

    q = sa.select(missed_stops)
    if since is not None:
        q = q.where(missed_stops.c.passed_t >= since)
    if until is not None:
        q = q.where(missed_stops.c.passed_t < until)
    for col, value in (("route_id", route_id), ("stop_id", stop_id), ("bus_id", bus_id)):
        if value is not None:
            q = q.where(missed_stops.c[col] == value)
    q = q.order_by(missed_stops.c.passed_t.desc(), missed_stops.c.id).limit(limit + 1)
    async with engine.connect() as conn:
        rows = (await conn.execute(q)).all()
        buses = {r.bus_id for r in rows}
        keys = dict(
            (
                await conn.execute(
                    sa.select(devices.c.bus_id, devices.c.public_key).where(
                        devices.c.bus_id.in_(sorted(buses))
                    )
                )
            ).all()
        )
    truncated = len(rows) > limit
    by_stop: dict[tuple[str, str], StopMissed] = {}
    names = stop_names or {}
    for row in rows[:limit]:
        check, record = check_record(row, keys.get(row.bus_id))
        passed = record.get("passed", {}) if record else {}
        wait = record.get("wait", {}) if record else {}
        rec = MissedRecord(
            bus_id=row.bus_id,
            seq=int(row.seq),
            event_id=row.event_id,
            request_id=row.request_id,
            route_id=row.route_id,
            trip_id=row.trip_id,
            stop_id=row.stop_id,
            wait_t=row.wait_t,
            passed_t=row.passed_t,
            distance_m=_number(passed.get("distance_m")),
            speed_mps=_number(passed.get("speed_mps")),
            assist=wait.get("assist") is True,
            source=wait.get("source") if isinstance(wait.get("source"), str) else None,
            check=check,
            wait_expires_t=_number(wait.get("expires_t")),
        )
        key = (row.route_id, row.stop_id)
        if key not in by_stop:
            by_stop[key] = StopMissed(row.route_id, row.stop_id, names.get(row.stop_id))
        by_stop[key].records.append(rec)
    stops = sorted(by_stop.values(), key=lambda s: (-len(s.records), s.route_id, s.stop_id))
    return MissedReport(since, until, stops, truncated)


def _when(t: float | None, tz: dt.tzinfo) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M:%S")


def _wait_made(r: MissedRecord, tz: dt.tzinfo) -> str:
    """When the wait was made, and how long before the bus passed.

    ``wait_t`` is the time the backend stamped on the wait (the rider API's clock, or the
    stop call unit's), ``passed_t`` the bus's (its GNSS clock): one time line in service.
    A wait stamped after the pass, or before it by more than its lifetime, was stamped on
    another clock (the edge would not have held it): the report says so instead of
    printing the two as if they were one.
    """
    made = _when(r.wait_t, tz)
    same_day = made[:10] == _when(r.passed_t, tz)[:10]
    text = f"wait made {made[11:] if same_day else made}"
    lead = r.passed_t - r.wait_t
    lifetime = None if r.wait_expires_t is None else r.wait_expires_t - r.wait_t
    if lead < 0 or (lifetime is not None and lead > lifetime):
        return f"{text} (by another clock than the bus's: not comparable with the pass)"
    return f"{text}, {duration_text(lead)} before"


def format_report(report: MissedReport, tz: dt.tzinfo = dt.UTC) -> list[str]:
    """The report as text lines for operators (times in ``tz``)."""
    zone = dt.datetime.now(tz).strftime("%Z") or str(tz)
    head = (
        f"missed stops {_when(report.since, tz)} .. {_when(report.until, tz)} {zone}: "
        f"{report.total}"
    )
    checks = report.checks
    if report.total:
        head += " (" + ", ".join(f"{n} {c}" for c, n in sorted(checks.items())) + ")"
    lines = [head]
    if report.truncated:
        lines.append("  (only the newest records: narrow the window or raise --limit)")
    routes: dict[str, list[StopMissed]] = {}
    for s in report.stops:
        routes.setdefault(s.route_id, []).append(s)
    for route_id, stops in sorted(routes.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"route {route_id}: {sum(len(s.records) for s in stops)} missed")
        for s in stops:
            where = f"{s.stop_name} ({s.stop_id})" if s.stop_name else s.stop_id
            by = ", ".join(f"{b} ({n})" for b, n in s.buses.items())
            lines.append(f"  {where}: {len(s.records)} missed, by {by}")
            for r in s.records:
                how = []
                if r.distance_m is not None and r.speed_mps is not None:
                    how.append(f"passed {r.distance_m:.0f} m away at {r.speed_mps:.1f} m/s")
                how.append(_wait_made(r, tz))
                if r.assist:
                    how.append("assistance asked")
                lines.append(
                    f"    {_when(r.passed_t, tz)}  {r.bus_id} seq {r.seq}  {r.request_id}  "
                    f"{', '.join(how)}  [{r.check}]"
                )
    return lines


def ops_router(engine: AsyncEngine, stop_names: Mapping[str, str] | None = None) -> APIRouter:
    """The operator's endpoints: ``/ops/missed-stops`` (report) and one signed record."""
    router = APIRouter(tags=["ops"])

    @router.get("/ops/missed-stops")
    async def missed_stops_report(  # noqa: PLR0917 - FastAPI query parameters
        since: float | None = Query(None, description="From this passing time (UNIX s)."),
        until: float | None = Query(None, description="Before this passing time (UNIX s)."),
        route_id: str | None = Query(None, max_length=128),
        stop_id: str | None = Query(None, max_length=128),
        bus_id: str | None = Query(None, max_length=64),
        limit: int = Query(1000, ge=1, le=10_000, description="Most records (newest)."),
    ) -> dict[str, Any]:
        """Missed stops by route and stop: how many, when, by which bus.

        Each record is checked again: ``verified``, or ``malformed``, ``mismatch``,
        ``hash_mismatch``, ``unknown_device``, ``bad_signature``.
        """
        report = await missed_report(
            engine,
            since=since,
            until=until,
            route_id=route_id,
            stop_id=stop_id,
            bus_id=bus_id,
            limit=limit,
            stop_names=stop_names,
        )
        return report.to_json()

    @router.get("/ops/missed-stops/{event_id}")
    async def missed_stop_record(event_id: str) -> dict[str, Any]:
        """One missed stop's signed chain record, its check, and the bus's public key.

        The key is the hex of the bus's 32-byte Ed25519 public key: ``sig`` verifies over
        the canonical bytes of the record without ``sig``.
        """
        from backend._db import devices, missed_stops

        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(missed_stops).where(missed_stops.c.event_id == event_id)
                )
            ).first()
            if row is None:
                raise HTTPException(404, f"no missed stop {event_id!r}")
            key = (
                await conn.execute(
                    sa.select(devices.c.public_key).where(devices.c.bus_id == row.bus_id)
                )
            ).scalar_one_or_none()
        check, record = check_record(row, key)
        return {
            "event_id": event_id,
            "check": check,
            "bus_id": row.bus_id,
            "public_key": key,
            "event_hash": row.event_hash,
            "record": record,
        }

    return router
