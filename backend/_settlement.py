"""Online settlement: stored fare events -> segments -> journeys, charges, adjustments.

Ingest (:mod:`backend._ingest`) stores verified, chained fare events in ``fare_events``
(immutable facts). :class:`SettlementWorker` turns them into the *derived* tables the
rider API reads, with the same code as ``busbell backend settle``:

1. **Segments.** Per bus, the events after the bus's watermark
   (``settlement_watermarks.settled_seq``) are read in ``seq`` order. A hole in the
   stored seqs (never made by ingest, which stores only linked events, but possible after
   manual repair) stops the bus there until the event after it is ``gap_grace_s`` old.
   Each event's rid is resolved and its proof (``rtag``, ``tq``) checked by
   :func:`backend._settle.segment_of`, exactly as offline. A resolved segment goes to
   ``rider_segments``; one that is not (``unresolved_rid``, ``bad_rtag``, ...,
   ``revoked_rider``) goes to ``unresolved_segments`` with the reason, is counted and
   logged, and is never charged. The rider-days it may change are marked in
   ``settlement_dirty``. Segments, marks and the new watermark commit in one transaction.
2. **Rider-days.** Each marked rider-day is recomputed in one transaction: the rider's
   segments from ``CONTEXT_S`` before the day to ``CONTEXT_S`` after it are built and
   priced by :meth:`backend._journeys.JourneyBuilder.build_rider` (the offline function)
   with the rider's category; the journeys whose first boarding falls in the day replace
   that rider-day's ``journeys``, ``legs`` and ``charges``; the adjustments of the months
   concerned are recomputed from the rider's charges (:func:`period_adjustments`).

The *service day* of a time is the local date (fare rules' timezone) of the travel day
that starts at ``daily_cap.day_start`` (04:30 by default), like the daily cap's.

Everything here is idempotent: re-running a pass, or recomputing a rider-day, yields the
same rows (only ``computed_at`` changes; a charge keeps its ``created_at`` while its fare
is unchanged). Run one settlement worker per database.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import math
import random
import time
from collections import Counter as CountMap
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter, Gauge
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from backend._db import (
    DB_ERRORS,
    adjustments,
    chain_state,
    charges,
    engine_for,
    fare_events,
    insert_ignore,
    journeys,
    legs,
    migrate,
    missed_stops,
    rider_segments,
    riders,
    settlement_dirty,
    settlement_watermarks,
    unresolved_segments,
)
from backend._fare_engine import Charge, FareEngine, period_adjustments
from backend._fare_rules import FareRules, load_rules
from backend._ingest_bounds import LogBudget
from backend._journeys import Journey, JourneyBuilder, JourneyPolicy, Segment
from backend._legs import FLAG_OVERLAP_DROPPED, FLAG_SUSPECTED_REPLAY, evidence_invalid
from backend._resolve import (
    DEFAULT_PROOF_SLACK_S,
    ONLINE_TABLE_BYTES,
    ProofRejected,
    Resolver,
    RiderKeyring,
    TableBuilder,
)
from backend._rider_feed import RiderFeed
from backend._settle import segment_of
from backend._tentative import TENTATIVE
from backend.config import BackendConfig
from busbell import BusbellError, ConfigError, StoreError, get_logger
from busbell._gtfs import Feed
from busbell._mqtt import backoff_delays

__all__ = [
    "CATEGORIES",
    "CONTEXT_S",
    "RevokedRider",
    "RiderDay",
    "SettleFailed",
    "SettleReport",
    "SettlementFailures",
    "SettlementWorker",
    "event_of_row",
    "import_riders",
    "run_settlement",
    "settlement_failures",
]

CATEGORIES = ("adult", "youth", "child")
"""Rider fare categories."""

LINK_BATCH = 1000
"""Most tentative pieces the link retention examines in one pass (a restarted worker
catches up over several passes)."""

LINK_WINDOW_S = 12 * 3600.0
"""A rider's segments this far around the tentative pieces examined by the link retention
are read to find the groups they belong to (:meth:`SettlementWorker.forget_dropped_links`);
a group reaching within ``LINK_WINDOW_S / 2`` of that window's ends is left alone (it
could go on beyond it: a ride on one bus trip that long is not one)."""

CONTEXT_S = 3 * 3600.0
"""Segments this far before and after a service day are read when it is recomputed, so a
journey that crosses the day boundary is grouped as offline (one starting more than
``CONTEXT_S`` before a leg of the next day is beyond what the transfer rules allow)."""

SEGMENTS = Counter("busbell_settlement_segments", "Fare events settled into rider segments")
UNRESOLVED = Counter(
    "busbell_settlement_unresolved", "Fare events never charged (by reason)", ["reason"]
)
RIDER_DAYS = Counter("busbell_settlement_rider_days", "Rider-days recomputed")
FAILURES = Counter("busbell_settlement_failures", "Settlement passes and rider-days that failed")
TENTATIVE_LINKS_DELETED = Counter(
    "busbell_settlement_tentative_links_deleted",
    "rider_segments rows of dropped tentative pieces deleted after tentative_link_days",
)
UNEXPECTED = Counter(
    "busbell_settlement_unexpected_errors",
    "Unexpected exceptions the settlement worker contained (by unit: pass, bus, event,"
    " rider_day, links)",
    ["unit"],
)
RIDER_DAYS_FAILING = Gauge(
    "busbell_settlement_rider_days_failing",
    "Marked rider-days whose last recomputation failed (put aside, retried after a backoff)",
)
EVIDENCE_INVALID = Counter(
    "busbell_settlement_evidence_invalid",
    "Fare events settled with an evidence value read as absent because invalid (by key)",
    ["key"],
)
SUSPECTED_REPLAYS = Counter(
    "busbell_settlement_suspected_replays",
    "Legs newly held as a suspected replay (the rider on two buses at once: a cloned or"
    " replayed token, or an overlap the evidence did not settle)",
)
OVERLAPS_DROPPED = Counter(
    "busbell_settlement_overlaps_dropped",
    "Legs newly held as dropped by an overlap (another bus heard the rider far more"
    " strongly meanwhile: a bus beside hearing them through its windows, or a weak copy"
    " of their token: cloned, relayed or replayed)",
)


def _log() -> Any:
    return get_logger("backend.settlement")


@dataclass(slots=True)
class SettleReport:
    """What one settlement pass did.

    Attributes:
        events: fare events read from the ledger.
        segments: events that became rider segments.
        unresolved: events never charged, by reason.
        evidence_invalid: segments settled with an evidence value read as absent because
            it was invalid (:func:`backend._legs.evidence_invalid`), by key.
        tentative_links_deleted: ``rider_segments`` rows of dropped tentative pieces
            deleted (``tentative_link_days`` after they ended).
        gaps_waiting: buses stopped at a hole in their seqs (within the grace period).
        gaps_skipped: holes settled past after the grace period.
        rider_days: rider-days recomputed.
        failed_rider_days: rider-days that could not be priced (left marked with the
            error, logged, retried after a backoff).
        rider_days_waiting: marked rider-days put aside this pass: they failed before
            and their backoff has not run out (``settlement_dirty.attempts``).
        failed_buses: buses whose batch raised unexpectedly this pass (the bus waits for
            a backoff; the other buses go on).
        suspected_replays: legs held as a suspected replay that were not held so
            before (each its own uncharged journey; logged ``suspected_replay_held``).
        overlaps_dropped: legs held as dropped by an overlap (``overlap_dropped``: another
            bus heard the rider far more strongly meanwhile) that were not held so before
            (each its own uncharged journey; logged ``overlap_dropped_held``).
        journeys: journeys written.
        charges: charges written.
        adjustments: adjustments written.
    """

    events: int = 0
    segments: int = 0
    unresolved: CountMap[str] = field(default_factory=CountMap)
    evidence_invalid: CountMap[str] = field(default_factory=CountMap)
    tentative_links_deleted: int = 0
    gaps_waiting: int = 0
    gaps_skipped: int = 0
    rider_days: int = 0
    failed_rider_days: int = 0
    rider_days_waiting: int = 0
    failed_buses: int = 0
    suspected_replays: int = 0
    overlaps_dropped: int = 0
    journeys: int = 0
    charges: int = 0
    adjustments: int = 0

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "events": self.events,
            "segments": self.segments,
            "unresolved": dict(sorted(self.unresolved.items())),
            "evidence_invalid": dict(sorted(self.evidence_invalid.items())),
            "tentative_links_deleted": self.tentative_links_deleted,
            "gaps_waiting": self.gaps_waiting,
            "gaps_skipped": self.gaps_skipped,
            "rider_days": self.rider_days,
            "failed_rider_days": self.failed_rider_days,
            "rider_days_waiting": self.rider_days_waiting,
            "failed_buses": self.failed_buses,
            "suspected_replays": self.suspected_replays,
            "overlaps_dropped": self.overlaps_dropped,
            "journeys": self.journeys,
            "charges": self.charges,
            "adjustments": self.adjustments,
        }


class SettleFailed(ProofRejected):
    """Settling the event raised unexpectedly (a bad row, a bug): never charged.

    Kept in ``unresolved_segments`` with reason ``settle_error`` and the exception as
    detail (the dead letters of settlement); retried at a restarted worker's first pass.
    """

    REASON = "settle_error"

    def __init__(self, exc: BaseException) -> None:
        super().__init__(self.REASON, _describe(exc))


def _describe(exc: BaseException) -> str:
    """An exception as ``Type: message``, cut to 2,000 characters."""
    return f"{type(exc).__name__}: {exc}"[:2000]


class RevokedRider(ProofRejected):
    """The segment started after its rider was revoked: never charged."""

    def __init__(self, rider_id: str) -> None:
        super().__init__("revoked_rider", f"rider {rider_id} revoked")
        self.rider_id = rider_id


def event_of_row(row: Any) -> dict[str, Any]:
    """A ``fare_events`` row as the fare event v1 fields :func:`segment_of` reads."""
    return {
        "bus_id": row.bus_id,
        "seq": row.seq,
        "event_id": row.event_id,
        "rid": row.rid,
        "interval": row.interval,
        "route_id": row.route_id,
        "trip_id": row.trip_id,
        "start": {"t": row.start_t, "stop_id": row.start_stop_id, "cause": row.start_cause},
        "end": {"t": row.end_t, "stop_id": row.end_stop_id, "cause": row.end_cause},
        "distance_m": row.distance_m,
        "proof": {"first": row.proof_first, "last": row.proof_last},
        "evidence": row.evidence,
    }


def _segment_row(seg: Segment, now: float) -> dict[str, Any]:
    return {
        "event_id": seg.event_id,
        "rider_id": seg.rider_id,
        "bus_id": seg.bus_id,
        "seq": seg.seq,
        "interval": seg.interval,
        "route_id": seg.route_id,
        "trip_id": seg.trip_id,
        "start_t": seg.start_t,
        "start_stop_id": seg.start_stop_id,
        "start_cause": seg.start_cause,
        "end_t": seg.end_t,
        "end_stop_id": seg.end_stop_id,
        "end_cause": seg.end_cause,
        "distance_m": seg.distance_m,
        "rssi_med": seg.rssi_med,
        "n_adv": seg.n_adv,
        "co_n": seg.co[0] if seg.co else None,
        "co_lo": seg.co[1] if seg.co else None,
        "co_hi": seg.co[2] if seg.co else None,
        "riders_lvl": seg.riders_lvl,
        "settled_at": now,
    }


def _segment_of_row(row: Any) -> Segment:
    return Segment(
        rider_id=row.rider_id,
        bus_id=row.bus_id,
        seq=row.seq,
        event_id=row.event_id,
        interval=row.interval,
        route_id=row.route_id,
        trip_id=row.trip_id,
        start_t=row.start_t,
        start_stop_id=row.start_stop_id,
        start_cause=row.start_cause,
        end_t=row.end_t,
        end_stop_id=row.end_stop_id,
        end_cause=row.end_cause,
        distance_m=row.distance_m,
        rssi_med=row.rssi_med,
        n_adv=row.n_adv,
        co=(row.co_n, row.co_lo, row.co_hi) if row.co_n is not None else None,
        riders_lvl=row.riders_lvl,
    )


def _upsert(table: sa.Table, dialect: str, keys: Sequence[str], values: Sequence[str]) -> Any:
    ins = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    return ins.on_conflict_do_update(
        index_elements=list(keys), set_={v: ins.excluded[v] for v in values}
    )


class SettlementWorker:
    """Settles stored fare events into the derived tables (see the module docs).

    Args:
        engine: the ledger (migrated).
        feed: GTFS static (distances, networks), or ``None``.
        rules: the fare rules.
        resolver: the rid resolver; by default one over a keyring filled from ``riders``
            (riders enrolled later are added on each pass).
        policy: the journey builder's policy (lost policy, stitching, replay tolerance).
        gap_grace_s: how long events after a hole in a bus's seqs wait.
        batch_events: most events of one bus settled per transaction.
        default_category: category of riders whose stored one the rules lack.
        interval_s: period of :meth:`run`.
        tentative_link_days: the ``rider_segments`` rows (links of a rid to its rider)
            of tentative pieces settlement dropped are deleted this many days after the
            piece ended (:meth:`forget_dropped_links`); 0: kept.
        clock: wall clock (UNIX seconds).
        log_budget: rate limit of the per-event logs (``segment_evidence_invalid``,
            ``segment_unresolved``, ``segment_settle_failed``) per (event, kind, bus);
            default 10 lines a minute each.
        retry_max_s: longest wait before a failed pass, bus or rider-day is tried again
            (the wait doubles from ``interval_s`` with each failure in a row).
        rng: the jitter of :meth:`run`'s backoff (tests).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        feed: Feed | None,
        rules: FareRules,
        resolver: Resolver | None = None,
        policy: JourneyPolicy | None = None,
        *,
        gap_grace_s: float = 60.0,
        batch_events: int = 5000,
        default_category: str = "adult",
        interval_s: float = 5.0,
        tentative_link_days: float = 35.0,
        clock: Callable[[], float] = time.time,
        log_budget: LogBudget | None = None,
        retry_max_s: float = 300.0,
        rng: random.Random | None = None,
    ) -> None:
        self.engine = engine
        self.rules = rules
        self.builder = JourneyBuilder(FareEngine(rules), feed, policy)
        # tables are built in worker processes once the keyring is large (>= 200k riders)
        self.resolver = resolver or Resolver(
            RiderKeyring(),
            cache_intervals=16,
            proof_slack_s=DEFAULT_PROOF_SLACK_S,
            builder=TableBuilder(0),
            max_table_bytes=ONLINE_TABLE_BYTES,
            table_tails=False,  # 12 B per rider: memory before lookup speed online
        )
        self.gap_grace_s = gap_grace_s
        self.batch_events = max(1, batch_events)
        self.default_category = default_category
        self.interval_s = interval_s
        self.tentative_link_s = max(0.0, tentative_link_days) * 86400.0
        self._links_upto = -math.inf
        """Every tentative piece ending before this was examined by the link retention
        (in memory: a restarted worker examines them all once; lowered when a piece
        ending before it is settled again, e.g. after a watermark reset)."""
        self.clock = clock
        self.log_budget = log_budget or LogBudget()
        self.retry_max_s = max(interval_s, retry_max_s)
        self._rng = rng or random.Random()
        self._passes = 0
        """Passes completed (the first one retries what failed before a restart)."""
        self._bus_failures: dict[str, tuple[int, float]] = {}
        """Buses whose batch raised: failures in a row, when to try again."""
        self._dialect = engine.dialect.name
        cap = rules.daily_cap.day_start
        self._day_offset = dt.timedelta(hours=cap.hour, minutes=cap.minute, seconds=cap.second)
        categories = {c for rs in rules.rulesets for c in rs.categories}
        # only the riders changed since the last pass are read (riders.changed_seq)
        self._riders = RiderFeed(
            self.resolver.keyring,
            sorted(categories),
            default_category,
            builder=self.resolver.builder,
        )

    # ------------------------------------------------------------------ days

    def service_day(self, t: float) -> str:
        """The service day (``YYYY-MM-DD``) of UNIX time ``t``."""
        return (self.rules.local(t) - self._day_offset).date().isoformat()

    def day_bounds(self, day: str) -> tuple[float, float]:
        """UNIX times ``[start, end)`` of a service day."""
        d = dt.date.fromisoformat(day)
        start = dt.datetime.combine(d, dt.time(), tzinfo=self.rules.tzinfo) + self._day_offset
        end = (
            dt.datetime.combine(d + dt.timedelta(days=1), dt.time(), tzinfo=self.rules.tzinfo)
            + self._day_offset
        )
        return start.timestamp(), end.timestamp()

    def days_touched(self, seg: Segment) -> set[str]:
        """The service days whose journeys a segment may change."""
        return {
            self.service_day(seg.start_t - CONTEXT_S),
            self.service_day(seg.start_t),
            self.service_day(seg.end_t + CONTEXT_S),
        }

    # ------------------------------------------------------------------ riders

    async def refresh_riders(self) -> int:
        """Read the riders enrolled, re-keyed, revoked or re-categorised since the last call.

        Returns:
            How many riders were added to the keyring.
        """
        return (await self._riders.refresh(self.engine)).added

    def _warn(
        self,
        event: str,
        kind: str,
        *,
        bus_id: str = "",
        exc: BaseException | None = None,
        level: str = "warning",
        **kw: Any,
    ) -> None:
        """A log line about one event or rider-day, rate-limited per (event, kind, bus).

        By ``log_budget``: a bus (or anyone holding its key) sending thousands of such
        events, or a bug failing every rider-day, logs at most its burst a window; the
        next line let through carries ``suppressed=N``. Counters are kept by the caller,
        for every one. At ``level`` (``warning`` or ``error``); an error with the
        traceback of ``exc`` when given.
        """
        suppressed = self.log_budget.allow((event, kind, bus_id), self.clock())
        if suppressed is None:
            return
        if suppressed:
            kw["suppressed"] = suppressed
        if bus_id:
            kw["bus_id"] = bus_id
        if exc is not None:
            _log().error(event, exc_info=exc, **kw)
        elif level == "error":
            _log().error(event, **kw)
        else:
            _log().warning(event, **kw)

    def _failed(self, event: Any, exc: Exception) -> SettleFailed:
        """An event whose settling raised: logged with the traceback, counted, dead-lettered.

        ``event`` is its ``fare_events`` row. Called from the ``except`` block. The event
        is never charged and never stalls its bus: it goes to ``unresolved_segments`` as
        ``settle_error``.
        """
        UNEXPECTED.labels("event").inc()
        failed = SettleFailed(exc)
        self._warn(
            "segment_settle_failed",
            type(exc).__name__,
            bus_id=event.bus_id,
            exc=exc,
            seq=event.seq,
            event_id=event.event_id,
            error=failed.detail[:200],
        )
        return failed

    def _resolve_near(
        self, events: Sequence[dict[str, Any]], *, each: bool = False
    ) -> list[tuple[int, int] | Exception | None]:
        """Each event's rid looked up in bulk (:meth:`Resolver.resolve_near`).

        If the bulk lookup raises, each rid is looked up alone: the events whose lookup
        raises get the exception, the others their result. If every one raises (a
        resolver that does not work at all, not a bad row), the first error is raised,
        unless ``each`` (dead letters retried: one raising again stays one).
        """
        rids = [e["rid"] for e in events]
        ivs = [e["interval"] for e in events]
        try:
            return list(self.resolver.resolve_near(rids, ivs))
        except DB_ERRORS:
            raise
        except Exception:
            if len(events) < 2 and not each:
                raise
        found: list[tuple[int, int] | Exception | None] = []
        for rid, iv in zip(rids, ivs, strict=True):
            try:
                found.append(self.resolver.resolve_near([rid], [iv])[0])
            except DB_ERRORS:
                raise
            except Exception as exc:  # that event is dead-lettered
                found.append(exc)
        if not each and all(isinstance(f, Exception) for f in found):
            raise found[0]  # type: ignore[misc]
        return found

    def _resolve_batch(
        self, rows: Sequence[Any], report: SettleReport, *, each: bool = False
    ) -> list[Segment | ProofRejected]:
        """Each stored event's segment, or why it is not charged (rids looked up in bulk).

        An evidence value settlement reads but found invalid (read as absent) is counted
        in ``report`` and ``busbell_settlement_evidence_invalid_total{key}`` (every one)
        and logged (``segment_evidence_invalid``, rate-limited: :meth:`_warn`); the
        segment settles without it. An event whose settling raises unexpectedly is
        :class:`SettleFailed` (:meth:`_failed`); with ``each``, even when every lookup
        raises (:meth:`_resolve_near`).
        """
        events = [event_of_row(row) for row in rows]
        found = self._resolve_near(events, each=each)
        out: list[Segment | ProofRejected] = []
        for row, event, f in zip(rows, events, found, strict=True):
            try:
                if isinstance(f, Exception):
                    raise f
                seg = segment_of(event, self.resolver, found=f)
                bad = evidence_invalid(event["evidence"], seg.rssi_med, seg.n_adv, seg.riders_lvl)
            except ProofRejected as exc:
                out.append(exc)
                continue
            except Exception as exc:  # one bad row must not stall its bus
                out.append(self._failed(row, exc))
                continue
            if bad:
                for key in bad:
                    report.evidence_invalid[key] += 1
                    EVIDENCE_INVALID.labels(key).inc()
                self._warn(
                    "segment_evidence_invalid",
                    ",".join(bad),
                    bus_id=event["bus_id"],
                    seq=event["seq"],
                    event_id=event["event_id"],
                    keys=list(bad),
                )
            revoked_at = self._riders.revoked_at(f[0]) if f is not None else None
            if revoked_at is not None and seg.start_t >= revoked_at:
                out.append(RevokedRider(seg.rider_id))
            else:
                out.append(seg)
        return out

    def _derived(
        self, row: Any, seg: Segment, now: float
    ) -> tuple[dict[str, Any], set[str]] | SettleFailed:
        """A segment's ``rider_segments`` row and the service days it marks.

        If making them raises (e.g. a time no calendar holds), the event dead-lettered.
        """
        try:
            return _segment_row(seg, now), self.days_touched(seg)
        except Exception as exc:  # one bad row must not stall its bus
            return self._failed(row, exc)

    # ------------------------------------------------------------------ pass

    async def settle_once(self, now: float | None = None) -> SettleReport:
        """One pass: new events -> segments, then recompute the marked rider-days.

        Args:
            now: the current UNIX time (default: the clock).

        A failure of one unit does not stop the others (docs/backend.md, "Failures"): an
        event whose settling raises is dead-lettered (:class:`SettleFailed`); a bus whose
        batch raises otherwise waits ``retry_delay`` (logged ``settlement_bus_failed``); a
        rider-day that raises keeps its mark with the error and waits likewise.

        Raises:
            StoreError: the database failed (nothing half-written: retried next pass).
        """
        t = self.clock() if now is None else now
        report = SettleReport()
        try:
            added = await self.refresh_riders()
            # the tables of i-1..i+1 are built in the background: the next interval's is
            # ready before it starts and a lookup never waits for a build
            self.resolver.prepare_ahead(t)
            if added or not self._passes:
                await self._retry_unresolved(t, report)
            for bus_id, settled in await self._buses_behind():
                await self._settle_bus_guarded(bus_id, settled, t, report)
            await self._recompute_dirty(t, report)
            await self.forget_dropped_links(t, report)
        except DB_ERRORS as exc:
            FAILURES.inc()
            raise StoreError(f"settlement pass failed: {exc}") from exc
        self._passes += 1
        if (
            report.events
            or report.rider_days
            or report.tentative_links_deleted
            or report.failed_buses
            or report.failed_rider_days
            or report.suspected_replays
            or report.overlaps_dropped
        ):
            _log().info("settlement_pass_completed", **report.to_json())
        return report

    def retry_delay(self, failures: int) -> float:
        """How long a bus or rider-day that failed ``failures`` times in a row waits."""
        return min(self.retry_max_s, self.interval_s * 2.0 ** min(failures, 40))

    async def _settle_bus_guarded(
        self, bus_id: str, settled: int, now: float, report: SettleReport
    ) -> None:
        """Settle a bus's new events; if that raises unexpectedly, the bus waits.

        The batches committed before the failure stay (each moved the watermark in its
        own transaction); the bus is tried again after :meth:`retry_delay` (or at once by
        a restarted worker) and the other buses are settled meanwhile.
        """
        failures, retry_at = self._bus_failures.get(bus_id, (0, -math.inf))
        if now < retry_at:
            return
        try:
            upto: int | None = settled
            while upto is not None:
                upto = await self._settle_bus(bus_id, upto, now, report)
        except DB_ERRORS:
            raise
        except Exception as exc:  # a bug must not stop every other bus
            failures += 1
            wait = self.retry_delay(failures)
            self._bus_failures[bus_id] = (failures, now + wait)
            report.failed_buses += 1
            UNEXPECTED.labels("bus").inc()
            _log().exception(
                "settlement_bus_failed",
                bus_id=bus_id,
                settled_seq=settled,
                failures=failures,
                retry_in_s=wait,
                error=_describe(exc)[:200],
            )
            return
        self._bus_failures.pop(bus_id, None)

    async def _buses_behind(self) -> list[tuple[str, int]]:
        w = settlement_watermarks
        settled = sa.func.coalesce(w.c.settled_seq, 0)
        q = (
            sa.select(chain_state.c.bus_id, settled.label("settled"))
            .select_from(chain_state.outerjoin(w, w.c.bus_id == chain_state.c.bus_id))
            .where(chain_state.c.next_seq - 1 > settled)
            .order_by(chain_state.c.bus_id)
        )
        async with self.engine.connect() as conn:
            return [(r.bus_id, int(r.settled)) for r in (await conn.execute(q)).all()]

    async def _settle_bus(
        self, bus_id: str, settled: int, now: float, report: SettleReport
    ) -> int | None:
        """Settle one batch of a bus; returns the new watermark, ``None`` when done."""
        fe = fare_events
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(fe)
                    .where(fe.c.bus_id == bus_id, fe.c.seq > settled)
                    .order_by(fe.c.seq)
                    .limit(self.batch_events)
                )
            ).all()
            if rows:
                # missed-stop records are links of the chain too (never rides): their
                # seqs are no hole
                ms = missed_stops
                missed = {
                    int(seq)
                    for (seq,) in await conn.execute(
                        sa.select(ms.c.seq).where(
                            ms.c.bus_id == bus_id, ms.c.seq > settled, ms.c.seq < rows[-1].seq
                        )
                    )
                }
        if not rows:
            return None
        expected = settled + 1
        seg_rows: list[dict[str, Any]] = []
        bad_rows: list[dict[str, Any]] = []
        dirty: set[tuple[str, str]] = set()
        upto = settled
        taken = []
        for row in rows:
            while expected in missed:
                expected += 1
            if row.seq != expected:
                if now - row.received_at < self.gap_grace_s:
                    report.gaps_waiting += 1
                    _log().info(
                        "settlement_gap_waiting", bus_id=bus_id, from_seq=expected, to_seq=row.seq
                    )
                    break
                report.gaps_skipped += 1
                _log().warning(
                    "settlement_gap_skipped", bus_id=bus_id, from_seq=expected, to_seq=row.seq
                )
            expected = row.seq + 1
            upto = row.seq
            taken.append(row)
        report.events += len(taken)
        for row, result in zip(taken, self._resolve_batch(taken, report), strict=True):
            derived = (
                result if isinstance(result, ProofRejected) else self._derived(row, result, now)
            )
            if isinstance(derived, ProofRejected):
                report.unresolved[derived.reason] += 1
                UNRESOLVED.labels(derived.reason).inc()
                self._warn(
                    "segment_unresolved",
                    derived.reason,
                    bus_id=bus_id,
                    seq=row.seq,
                    event_id=row.event_id,
                    reason=derived.reason,
                    detail=derived.detail[:200],
                )
                bad_rows.append(self._unresolved_row(row, derived, now))
                continue
            assert isinstance(result, Segment)
            seg_row, days = derived
            report.segments += 1
            SEGMENTS.inc()
            self._settled_again(result)
            seg_rows.append(seg_row)
            dirty.update((result.rider_id, d) for d in days)
        if upto == settled:
            return None
        async with self.engine.begin() as conn:
            if seg_rows:
                await conn.execute(insert_ignore(rider_segments, self._dialect), seg_rows)
            if bad_rows:
                await conn.execute(insert_ignore(unresolved_segments, self._dialect), bad_rows)
            await self._mark(conn, dirty, now)
            await conn.execute(
                _upsert(
                    settlement_watermarks,
                    self._dialect,
                    ["bus_id"],
                    ["settled_seq", "updated_at"],
                ),
                {"bus_id": bus_id, "settled_seq": upto, "updated_at": now},
            )
        if upto < rows[-1].seq or len(rows) < self.batch_events:
            return None
        return upto

    def _unresolved_row(self, row: Any, exc: ProofRejected, now: float) -> dict[str, Any]:
        rider_id = exc.rider_id if isinstance(exc, RevokedRider) else None
        return {
            "event_id": row.event_id,
            "bus_id": row.bus_id,
            "seq": row.seq,
            "rid": row.rid,
            "interval": row.interval,
            "start_t": row.start_t,
            "reason": exc.reason,
            "detail": exc.detail[:2000],
            "rider_id": rider_id,
            "recorded_at": now,
        }

    async def _mark(
        self, conn: AsyncConnection, dirty: Iterable[tuple[str, str]], now: float
    ) -> None:
        marks = [{"rider_id": r, "service_day": d, "marked_at": now} for r, d in sorted(dirty)]
        if marks:
            await conn.execute(
                _upsert(
                    settlement_dirty, self._dialect, ["rider_id", "service_day"], ["marked_at"]
                ),
                marks,
            )

    async def _retry_unresolved(self, now: float, report: SettleReport) -> None:
        """Re-resolve ``unresolved_rid`` events after new riders were enrolled.

        At a worker's first pass, the ``settle_error`` events too (dead-lettered by an
        earlier worker: a restart may bring the fix); one that now fails otherwise
        takes its new reason, one that raises again stays (looked up alone: it never
        fails the pass, which would stop every bus at each restart).
        """
        u, fe = unresolved_segments, fare_events
        reasons = ["unresolved_rid"] if self._passes else ["unresolved_rid", SettleFailed.REASON]
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(fe, u.c.reason.label("unresolved_reason"))
                    # by fare_events' key (it has no event_id index, migration 0014)
                    .join(u, sa.and_(u.c.bus_id == fe.c.bus_id, u.c.seq == fe.c.seq))
                    .where(u.c.reason.in_(reasons))
                    .order_by(fe.c.bus_id, fe.c.seq)
                )
            ).all()
        found: list[tuple[Segment, dict[str, Any], set[str]]] = []
        changed: list[tuple[Any, ProofRejected]] = []
        resolved = self._resolve_batch(rows, report, each=True)
        for row, result in zip(rows, resolved, strict=True):
            derived = (
                result if isinstance(result, ProofRejected) else self._derived(row, result, now)
            )
            if isinstance(derived, ProofRejected):
                if row.unresolved_reason == SettleFailed.REASON != derived.reason:
                    changed.append((row, derived))
                continue
            assert isinstance(result, Segment)
            found.append((result, *derived))
        if changed:
            async with self.engine.begin() as conn:
                for row, exc in changed:
                    await conn.execute(
                        sa.update(u)
                        .where(u.c.event_id == row.event_id)
                        .values(self._unresolved_row(row, exc, now))
                    )
        if not found:
            return
        for seg, _, _ in found:
            self._settled_again(seg)
        dirty = {(seg.rider_id, d) for seg, _, days in found for d in days}
        async with self.engine.begin() as conn:
            await conn.execute(
                insert_ignore(rider_segments, self._dialect), [r for _, r, _ in found]
            )
            await conn.execute(
                sa.delete(u).where(u.c.event_id.in_([seg.event_id for seg, _, _ in found]))
            )
            await self._mark(conn, dirty, now)
        report.segments += len(found)
        _log().info("unresolved_segments_resolved", count=len(found))

    # ------------------------------------------------------------------ link retention

    def _settled_again(self, seg: Segment) -> None:
        """A tentative piece the link retention already passed is (re)settled: look again."""
        if seg.start_cause == TENTATIVE and seg.end_t < self._links_upto:
            self._links_upto = seg.end_t

    async def forget_dropped_links(self, now: float, report: SettleReport) -> int:
        """Delete the links of dropped tentative pieces ``tentative_link_days`` old.

        Deletes the ``rider_segments`` rows of dropped tentative pieces that ended
        ``tentative_link_days`` or more before ``now``; returns how many.

        A tentative piece no group kept charges nobody (:mod:`backend._tentative`), but its
        row links a rid, and so the time and place of a ride, to a rider. The row goes
        once every piece of its group (the rider's segments joined on that bus trip) ended
        that long ago: a group is dropped whole or kept whole, so the rider's journeys are
        built the same without it (:func:`~backend._tentative.dropped_tentative`), and a
        rider-day recomputed later (a late event, a watermark reset) comes out the same.
        The fare events (the chain) are untouched: they hold only rids. Re-settling an
        event re-resolves its rid and writes the row again; it is deleted again at the end
        of that pass (the pieces settled again lower the retention's mark).
        Runs at the end of every pass; only pieces that ended since the last run are read,
        at most ``LINK_BATCH`` a pass (after a restart, all of them once, over as many
        passes as that takes). Counted (``tentative_links_deleted``) and
        logged (``tentative_links_deleted``). A rider whose groups cannot be made (the
        grouping raises: a bad row, a bug) keeps those rows (fares are unaffected), logged
        ``tentative_links_failed`` with the traceback; a restarted worker tries again.
        """
        if self.tentative_link_s <= 0.0:
            return 0
        cutoff = now - self.tentative_link_s
        since = self._links_upto
        if cutoff <= since:
            return 0
        rs = rider_segments
        tentative = sa.text("rider_segments.start_cause = 'tentative'")  # (the partial index)
        q = sa.select(rs.c.rider_id, rs.c.end_t).where(tentative, rs.c.end_t < cutoff)
        if since > -math.inf:
            q = q.where(rs.c.end_t >= since)
        async with self.engine.connect() as conn:
            found = (await conn.execute(q.order_by(rs.c.end_t).limit(LINK_BATCH))).all()
            upto = cutoff
            if len(found) == LINK_BATCH:  # the rest in the next passes
                upto = float(found[-1].end_t)
                if upto <= since:  # (a batch of one end time: all of it now)
                    found = (await conn.execute(q.where(rs.c.end_t == since))).all()
                    upto = math.nextafter(since, math.inf)
        riders: dict[str, tuple[float, float]] = {}
        for rider_id, end_t in found:
            a, b = riders.get(rider_id, (end_t, end_t))
            riders[rider_id] = (min(a, end_t), max(b, end_t))
        deleted: list[str] = []
        for rider_id, (first_t, last_t) in sorted(riders.items()):
            lo, hi = float(first_t) - LINK_WINDOW_S, float(last_t) + LINK_WINDOW_S
            async with self.engine.connect() as conn:
                rows = (
                    await conn.execute(
                        sa.select(rs).where(
                            rs.c.rider_id == rider_id, rs.c.start_t >= lo, rs.c.start_t < hi
                        )
                    )
                ).all()
            try:
                dropped = self.builder.dropped_tentative([_segment_of_row(r) for r in rows])
            except Exception as exc:  # that rider's rows are kept; the others go on
                UNEXPECTED.labels("links").inc()
                self._warn(
                    "tentative_links_failed",
                    type(exc).__name__,
                    exc=exc,
                    rider_id=rider_id,
                    pieces_from=first_t,
                    pieces_to=last_t,
                    error=_describe(exc)[:200],
                )
                continue
            for group, pieces in dropped:
                if (
                    max(p.end_t for p in pieces) < cutoff
                    and group[0].start_t >= lo + LINK_WINDOW_S / 2
                    and max(g.end_t for g in group) < hi - LINK_WINDOW_S / 2
                ):
                    deleted.extend(p.event_id for p in pieces)
        for i in range(0, len(deleted), 500):
            async with self.engine.begin() as conn:
                await conn.execute(sa.delete(rs).where(rs.c.event_id.in_(deleted[i : i + 500])))
        self._links_upto = upto
        if deleted:
            report.tentative_links_deleted += len(deleted)
            TENTATIVE_LINKS_DELETED.inc(len(deleted))
            _log().info(
                "tentative_links_deleted", count=len(deleted), riders=len(riders), before=cutoff
            )
        return len(deleted)

    # ------------------------------------------------------------------ rider-days

    async def _recompute_dirty(self, now: float, report: SettleReport) -> None:
        """Recompute the marked rider-days, each in its own transaction.

        One that raises (no fare rules in force that day, a bad row, a bug) is rolled
        back and keeps its mark with ``attempts``, ``failed_at`` and ``error``: it waits
        :meth:`retry_delay` (``attempts``) before it is tried again, unless a new segment
        marks it again or the worker was restarted (its first pass tries every one), and
        the other rider-days go on. Logged ``rider_day_failed`` (with the traceback when
        not a :class:`~busbell.BusbellError`), counted; the marks failing are the gauge
        ``busbell_settlement_rider_days_failing``. A rider-day is counted, and its legs
        held anew are counted and logged, only once its transaction has committed (a
        rolled-back recomputation is done again, and reported then, once).
        """
        d = settlement_dirty
        async with self.engine.connect() as conn:
            marks = (
                await conn.execute(
                    sa.select(
                        d.c.rider_id, d.c.service_day, d.c.marked_at, d.c.attempts, d.c.failed_at
                    ).order_by(d.c.rider_id, d.c.service_day)
                )
            ).all()
        failing = 0
        for m in marks:
            if (
                m.attempts
                and self._passes
                and m.marked_at <= m.failed_at
                and now < m.failed_at + self.retry_delay(m.attempts)
            ):
                report.rider_days_waiting += 1
                failing += 1
                continue
            try:
                async with self.engine.begin() as conn:
                    done = await self.recompute_rider_day(conn, m.rider_id, m.service_day, now)
                    await conn.execute(
                        sa.delete(d).where(
                            d.c.rider_id == m.rider_id,
                            d.c.service_day == m.service_day,
                            d.c.marked_at <= m.marked_at,
                        )
                    )
            except DB_ERRORS:
                raise
            except Exception as exc:  # one rider-day must not stall every other one
                failing += 1
                await self._rider_day_failed(m, exc, now, report)
            else:
                _report_day(done, report)  # committed: counted and logged once
        RIDER_DAYS_FAILING.set(failing)

    async def _rider_day_failed(
        self, mark: Any, exc: Exception, now: float, report: SettleReport
    ) -> None:
        """Note on the mark that its rider-day failed (called from the ``except`` block)."""
        d = settlement_dirty
        attempts = mark.attempts + 1
        error = _describe(exc)
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(d)
                .where(d.c.rider_id == mark.rider_id, d.c.service_day == mark.service_day)
                .values(attempts=attempts, failed_at=now, error=error)
            )
        FAILURES.inc()
        report.failed_rider_days += 1
        expected = isinstance(exc, BusbellError)  # e.g. no fare rules in force that day
        if not expected:
            UNEXPECTED.labels("rider_day").inc()
        self._warn(
            "rider_day_failed",
            type(exc).__name__,
            exc=None if expected else exc,
            level="error",
            rider_id=mark.rider_id,
            service_day=mark.service_day,
            attempts=attempts,
            retry_in_s=self.retry_delay(attempts),
            error=error[:200],
        )

    async def recompute_rider_day(
        self, conn: AsyncConnection, rider_id: str, day: str, now: float
    ) -> RiderDay:
        """Replace one rider-day's journeys, legs, charges (and the months' adjustments).

        Runs inside the caller's transaction and counts and logs nothing: the caller
        reports the result (:func:`_report_day`) after that transaction commits, so a
        recomputation rolled back and done again is reported once (metrics, the pass's
        report, ``suspected_replay_held`` / ``overlap_dropped_held``).

        Returns:
            The day's journeys, what was written, and the legs held anew.
        """
        start, end = self.day_bounds(day)
        rs = rider_segments
        rows = (
            await conn.execute(
                sa.select(rs).where(
                    rs.c.rider_id == rider_id,
                    rs.c.start_t >= start - CONTEXT_S,
                    rs.c.start_t < end + CONTEXT_S,
                )
            )
        ).all()
        category = self._riders.category(rider_id)
        built = self.builder.build_rider([_segment_of_row(r) for r in rows], category)
        day_journeys = [j for j in built if start <= j.first_board_t < end]

        old_charges = {
            r.charge_id: (r.fare_krw, r.created_at)
            for r in (
                await conn.execute(
                    sa.select(charges.c.charge_id, charges.c.fare_krw, charges.c.created_at).where(
                        charges.c.rider_id == rider_id, charges.c.service_day == day
                    )
                )
            ).all()
        }
        old_ids = sa.select(journeys.c.journey_id).where(
            journeys.c.rider_id == rider_id, journeys.c.service_day == day
        )
        new_ids = [j.journey_id for j in day_journeys]
        held_anew = await _held_anew(conn, day_journeys)
        await conn.execute(sa.delete(legs).where(legs.c.journey_id.in_(old_ids)))
        await conn.execute(
            sa.delete(journeys).where(
                journeys.c.rider_id == rider_id, journeys.c.service_day == day
            )
        )
        await conn.execute(
            sa.delete(charges).where(charges.c.rider_id == rider_id, charges.c.service_day == day)
        )
        if new_ids:
            # a journey id is unique to its events; rows of it under another day (only
            # possible if the context was too short) are replaced, never doubled
            await conn.execute(sa.delete(legs).where(legs.c.journey_id.in_(new_ids)))
            await conn.execute(sa.delete(journeys).where(journeys.c.journey_id.in_(new_ids)))
            await conn.execute(sa.delete(charges).where(charges.c.charge_id.in_(new_ids)))
        j_rows, l_rows, c_rows = [], [], []
        for j in day_journeys:
            j_rows.append(
                {
                    "journey_id": j.journey_id,
                    "rider_id": rider_id,
                    "first_board_t": j.first_board_t,
                    "last_alight_t": max(leg.alight_t for leg in j.legs),
                    "fare_krw": j.fare_krw,
                    "category": j.category,
                    "ruleset_id": j.quote.ruleset_id if j.quote is not None else "",
                    "explain": list(j.explain),
                    "computed_at": now,
                    "service_day": day,
                    "charged": j.charged,
                    "flags": list(j.flags),
                }
            )
            for n, leg in enumerate(j.legs, 1):
                l_rows.append(
                    {
                        "journey_id": j.journey_id,
                        "leg_no": n,
                        "bus_id": leg.bus_id,
                        "route_id": leg.route_id or "",
                        "trip_id": leg.trip_id,
                        "network_id": leg.network_id,
                        "board_stop_id": leg.board_stop_id,
                        "board_t": leg.board_t,
                        "alight_stop_id": leg.alight_stop_id,
                        "alight_t": leg.alight_t,
                        "distance_m": leg.distance_m,
                        "event_ids": list(leg.event_ids),
                        "distance_source": leg.distance_source,
                        "flags": list(leg.flags),
                    }
                )
            if j.charged:
                old = old_charges.get(j.journey_id)
                created = old[1] if old is not None and old[0] == j.fare_krw else now
                c_rows.append(
                    {
                        "charge_id": j.journey_id,
                        "rider_id": rider_id,
                        "journey_id": j.journey_id,
                        "t": j.first_board_t,
                        "fare_krw": j.fare_krw,
                        "category": j.category,
                        "created_at": created,
                        "service_day": day,
                    }
                )
        if j_rows:
            await conn.execute(sa.insert(journeys), j_rows)
        if l_rows:
            await conn.execute(sa.insert(legs), l_rows)
        if c_rows:
            await conn.execute(sa.insert(charges), c_rows)
        n_adj = await self._recompute_adjustments(conn, rider_id, day, bounds=(start, end), now=now)
        return RiderDay(rider_id, day, day_journeys, len(c_rows), n_adj, held_anew)

    async def _recompute_adjustments(
        self,
        conn: AsyncConnection,
        rider_id: str,
        day: str,
        *,
        bounds: tuple[float, float],
        now: float,
    ) -> int:
        start, end = bounds
        rules = self.rules
        if not (rules.daily_cap.enabled or rules.monthly_refund.enabled):
            return 0
        months = sorted(
            {day[:7], rules.local(start).strftime("%Y-%m"), rules.local(end - 1).strftime("%Y-%m")}
        )
        tz = rules.tzinfo
        written = 0
        for month in months:
            first = dt.date.fromisoformat(month + "-01")
            nxt = (first + dt.timedelta(days=32)).replace(day=1)
            lo = dt.datetime.combine(first - dt.timedelta(days=1), dt.time(), tzinfo=tz).timestamp()
            hi = dt.datetime.combine(nxt + dt.timedelta(days=1), dt.time(), tzinfo=tz).timestamp()
            rows = (
                await conn.execute(
                    sa.select(charges).where(
                        charges.c.rider_id == rider_id, charges.c.t >= lo, charges.c.t < hi
                    )
                )
            ).all()
            found = [
                a
                for a in period_adjustments(
                    [
                        Charge(r.charge_id, r.rider_id, r._mapping["t"], r.fare_krw, r.category)
                        for r in rows
                    ],
                    rules,
                )
                if a.period.startswith(month)
            ]
            await conn.execute(
                sa.delete(adjustments).where(
                    adjustments.c.rider_id == rider_id, adjustments.c.period.startswith(month)
                )
            )
            if found:
                await conn.execute(
                    sa.insert(adjustments),
                    [
                        {
                            "adjustment_id": hashlib.sha256(
                                f"{a.kind}\0{a.rider_id}\0{a.category}\0{a.period}".encode()
                            ).hexdigest()[:32],
                            "kind": a.kind,
                            "rider_id": a.rider_id,
                            "category": a.category,
                            "period": a.period,
                            "amount_krw": a.amount_krw,
                            "paid_krw": a.paid_krw,
                            "limit_krw": a.limit_krw,
                            "charge_ids": list(a.charge_ids),
                            "reason": a.reason,
                            "created_at": now,
                        }
                        for a in found
                    ],
                )
            written += len(found)
        return written

    async def recompute(self, rider_id: str, day: str, now: float | None = None) -> list[Journey]:
        """Recompute one rider-day in its own transaction (ops, tests)."""
        t = self.clock() if now is None else now
        await self.refresh_riders()
        async with self.engine.begin() as conn:
            done = await self.recompute_rider_day(conn, rider_id, day, t)
        _report_day(done, None)
        return done.journeys

    # ------------------------------------------------------------------ loop

    def _delays(self) -> Iterator[float]:
        # the first retry after one interval (or up to half as soon), then doubling
        return backoff_delays(self.interval_s, self.retry_max_s, rng=self._rng)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Settle every ``interval_s`` until ``stop``; a failed pass is logged and retried.

        Whatever a pass raises (but a cancellation) ends that pass only: a database
        failure (:class:`~busbell.StoreError`) is logged ``settlement_pass_failed``, any
        other exception ``settlement_pass_crashed`` with the traceback (counted in
        ``busbell_settlement_unexpected_errors_total{unit="pass"}``), and both in
        ``busbell_settlement_failures_total``. After failures in a row the next pass waits
        a jittered backoff (``interval_s`` doubling up to ``retry_max_s``,
        :func:`busbell._mqtt.backoff_delays`) instead of ``interval_s``.
        """
        stop = stop or asyncio.Event()
        _log().info("settlement_started", interval_s=self.interval_s)
        delays: Iterator[float] | None = None
        while not stop.is_set():
            wait = self.interval_s
            try:
                await self.settle_once()
                delays = None
            except StoreError as exc:
                delays = delays or self._delays()
                wait = next(delays)
                _log().warning("settlement_pass_failed", error=str(exc), retry_in_s=wait)
            except Exception as exc:  # a bug must not end settlement for good
                FAILURES.inc()
                UNEXPECTED.labels("pass").inc()
                delays = delays or self._delays()
                wait = next(delays)
                _log().exception(
                    "settlement_pass_crashed", error=_describe(exc)[:200], retry_in_s=wait
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):  # not wait_for: keeps a cancel
                    await stop.wait()
        await asyncio.to_thread(self.resolver.close)
        self.resolver.builder.close()
        _log().info("settlement_stopped")


@dataclass(frozen=True, slots=True)
class RiderDay:
    """One rider-day recomputed (:meth:`SettlementWorker.recompute_rider_day`).

    Attributes:
        rider_id: the rider.
        day: the service day.
        journeys: the day's journeys, all written (charged and held).
        charges: charges written.
        adjustments: adjustments written.
        held_anew: ``(flag, journey)`` for each journey held with ``suspected_replay`` or
            ``overlap_dropped`` that was not stored held with that flag before.
    """

    rider_id: str
    day: str
    journeys: list[Journey]
    charges: int
    adjustments: int
    held_anew: tuple[tuple[str, Journey], ...]


_HELD_NOTED = (FLAG_SUSPECTED_REPLAY, FLAG_OVERLAP_DROPPED)
"""The held flags counted and logged when a leg is held with them anew."""


async def _held_anew(
    conn: AsyncConnection, day_journeys: Sequence[Journey]
) -> tuple[tuple[str, Journey], ...]:
    """``(flag, journey)`` of the held journeys with a noted flag not stored held with it.

    A journey id is the hash of its rider and events, so a held leg recomputed with the
    same events keeps its id: one stored held with the same flag by an earlier pass is not
    new (a leg held as a suspected replay before and dropped now is new as dropped).
    """
    held = [
        (flag, j) for j in day_journeys if not j.charged for flag in _HELD_NOTED if flag in j.flags
    ]
    if not held:
        return ()
    stored = {
        r.journey_id: set(r.flags or ())
        for r in await conn.execute(
            sa.select(journeys.c.journey_id, journeys.c.flags).where(
                journeys.c.journey_id.in_(sorted({j.journey_id for _, j in held})),
                journeys.c.charged.is_(False),
            )
        )
    }
    return tuple((f, j) for f, j in held if f not in stored.get(j.journey_id, ()))


def _report_day(done: RiderDay, report: SettleReport | None) -> None:
    """Count and log a recomputed rider-day; call only after its transaction committed.

    Each leg held anew (:attr:`RiderDay.held_anew`) is logged (``suspected_replay_held``,
    a warning: a cloned or relayed token, or an overlap nothing settled;
    ``overlap_dropped_held``, info: mostly a bus beside hearing its neighbour's rider,
    else a weak copy of the token) and counted (``busbell_settlement_suspected_replays``,
    ``busbell_settlement_overlaps_dropped``, and the pass's report).
    """
    RIDER_DAYS.inc()
    if report is not None:
        report.rider_days += 1
        report.journeys += len(done.journeys)
        report.charges += done.charges
        report.adjustments += done.adjustments
    log = _log()
    for flag, x in done.held_anew:
        leg = x.legs[0]
        fields: dict[str, Any] = {
            "rider_id": done.rider_id,
            "service_day": done.day,
            "journey_id": x.journey_id,
            "bus_id": leg.bus_id,
            "route_id": leg.route_id,
            "board_stop_id": leg.board_stop_id,
            "board_t": leg.board_t,
            "alight_stop_id": leg.alight_stop_id,
            "alight_t": leg.alight_t,
        }
        if flag == FLAG_SUSPECTED_REPLAY:
            SUSPECTED_REPLAYS.inc()
            if report is not None:
                report.suspected_replays += 1
            log.warning("suspected_replay_held", **fields)
            continue
        OVERLAPS_DROPPED.inc()
        if report is not None:
            report.overlaps_dropped += 1
        # the rider's other legs meanwhile, on other buses: what heard them far more strongly
        fields["beside_bus_ids"] = sorted(
            {
                other.bus_id
                for j in done.journeys
                for other in j.legs
                if other.bus_id != leg.bus_id
                and other.board_t < leg.alight_t
                and leg.board_t < other.alight_t
                and FLAG_OVERLAP_DROPPED not in other.flags
            }
        )
        log.info("overlap_dropped_held", **fields)


@dataclass(slots=True)
class SettlementFailures:
    """What settlement put aside (``busbell backend settlement-failures``).

    Attributes:
        rider_days: marked rider-days whose recomputation raised, oldest failure first:
            ``rider_id``, ``service_day``, ``attempts``, ``marked_at``, ``failed_at``,
            ``error``.
        rider_days_total: how many there are (``rider_days`` holds at most the limit).
        dead_letters: events never charged because settling them raised
            (``settle_error``), by bus and seq: ``bus_id``, ``seq``, ``event_id``,
            ``detail``, ``recorded_at``.
        dead_letters_total: how many there are.
        unresolved: every never-charged event in ``unresolved_segments``, by reason.
    """

    rider_days: list[dict[str, Any]]
    rider_days_total: int
    dead_letters: list[dict[str, Any]]
    dead_letters_total: int
    unresolved: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "rider_days": self.rider_days,
            "rider_days_total": self.rider_days_total,
            "dead_letters": self.dead_letters,
            "dead_letters_total": self.dead_letters_total,
            "unresolved": self.unresolved,
        }

    def lines(self) -> list[str]:
        """The report as text (times in UTC)."""

        def when(t: float) -> str:
            return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")

        out = [f"rider-days failing: {self.rider_days_total}"]
        out += [
            f"  {r['rider_id']} {r['service_day']}: {r['attempts']} attempt(s), last "
            f"{when(r['failed_at'])} UTC: {r['error']}"
            for r in self.rider_days
        ]
        out.append(f"events dead-lettered (settle_error): {self.dead_letters_total}")
        out += [
            f"  {r['bus_id']} seq {r['seq']} {r['event_id']} ({when(r['recorded_at'])} UTC): "
            f"{r['detail']}"
            for r in self.dead_letters
        ]
        reasons = ", ".join(f"{k} {n}" for k, n in self.unresolved.items()) or "none"
        out.append(f"events never charged, by reason: {reasons}")
        return out


async def settlement_failures(engine: AsyncEngine, *, limit: int = 1000) -> SettlementFailures:
    """Read what settlement put aside: failing rider-days, dead-lettered events.

    Read-only (docs/backend.md, "Failures"): the worker retries the rider-days after a
    backoff and everything at a restart's first pass.
    """
    d, u = settlement_dirty, unresolved_segments
    failing = d.c.attempts > 0
    dead = u.c.reason == SettleFailed.REASON
    async with engine.connect() as conn:
        days = (
            await conn.execute(
                sa.select(
                    d.c.rider_id,
                    d.c.service_day,
                    d.c.attempts,
                    d.c.marked_at,
                    d.c.failed_at,
                    d.c.error,
                )
                .where(failing)
                .order_by(d.c.failed_at, d.c.rider_id, d.c.service_day)
                .limit(limit)
            )
        ).all()
        n_days = (await conn.execute(sa.select(sa.func.count()).where(failing))).scalar_one()
        letters = (
            await conn.execute(
                sa.select(u.c.bus_id, u.c.seq, u.c.event_id, u.c.detail, u.c.recorded_at)
                .where(dead)
                .order_by(u.c.bus_id, u.c.seq)
                .limit(limit)
            )
        ).all()
        reasons = (
            await conn.execute(
                sa.select(u.c.reason, sa.func.count()).group_by(u.c.reason).order_by(u.c.reason)
            )
        ).all()
    by_reason = {str(r): int(n) for r, n in reasons}
    return SettlementFailures(
        rider_days=[dict(r._mapping) for r in days],
        rider_days_total=int(n_days),
        dead_letters=[dict(r._mapping) for r in letters],
        dead_letters_total=by_reason.get(SettleFailed.REASON, 0),
        unresolved=by_reason,
    )


async def import_riders(
    engine: AsyncEngine,
    path: str | Path,
    *,
    category: str = "adult",
    kind: str = "fob",
    now: float | None = None,
) -> int:
    """Import RIDERS.csv (``rider_id,token_key``) into ``riders``; existing riders are kept.

    Returns:
        How many riders were added.

    Raises:
        KeyFileError: the file is invalid.
    """
    from busbell._keyfiles import read_riders

    rows = [
        {
            "rider_id": rider_id,
            "token_key": key.hex(),
            "status": "active",
            "enrolled_at": time.time() if now is None else now,
            "revoked_at": None,
            "kind": kind,
            "category": category,
        }
        for rider_id, key in sorted(read_riders(path).items())
    ]
    if not rows:
        return 0
    async with engine.begin() as conn:
        known = set((await conn.execute(sa.select(riders.c.rider_id))).scalars())
        new = [r for r in rows if r["rider_id"] not in known]
        if new:
            await conn.execute(insert_ignore(riders, conn.dialect.name), new)
    return len(new)


async def run_settlement(config: BackendConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run the settlement worker from the configuration until ``stop``.

    Migrates (``[database] migrate_on_start``), imports ``[files] riders`` when set, loads
    ``[files] gtfs`` and the fare rules, then settles every ``[settlement] interval_s``.

    Raises:
        ConfigError: an invalid ``[settlement]`` option.
        StoreError: the database cannot be reached or migrated at start.
    """
    from busbell._gtfs import load_gtfs

    s = config.settlement
    if s.lost_policy not in ("last-stop", "penalty"):
        raise ConfigError(
            f"[settlement] lost_policy must be last-stop or penalty, got {s.lost_policy!r}"
        )
    if s.default_category not in CATEGORIES:
        raise ConfigError(
            f"[settlement] default_category must be one of {', '.join(CATEGORIES)}, "
            f"got {s.default_category!r}"
        )
    feed = load_gtfs(config.files.gtfs) if config.files.gtfs is not None else None
    rules = load_rules(s.rules, timezone=feed.timezone if feed is not None else None)
    db = config.database
    engine = engine_for(db)
    try:
        if db.migrate_on_start:
            await migrate(engine)
        if config.files.riders is not None:
            n = await import_riders(engine, config.files.riders, category=s.default_category)
            _log().info("riders_imported", added=n, path=str(config.files.riders))
        worker = SettlementWorker(
            engine,
            feed,
            rules,
            policy=s.journey_policy(),
            gap_grace_s=s.gap_grace_s,
            batch_events=s.batch_events,
            default_category=s.default_category,
            interval_s=s.interval_s,
            tentative_link_days=s.tentative_link_days,
            retry_max_s=s.retry_max_s,
        )
        await worker.run(stop)
    finally:
        await engine.dispose()
