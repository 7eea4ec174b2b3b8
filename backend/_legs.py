"""What the journey builder works with: segments in, legs and journeys out, and its policy.

Plain frozen data (no I/O): :class:`Segment` (one accepted, resolved fare event),
:class:`Leg` (one ride on one bus), :class:`Journey` (legs joined by the transfer rules,
priced), the ``FLAG_*`` markers a leg or journey carries, and :class:`JourneyPolicy`.
The rules that turn one into the other live in :mod:`backend._journeys` and
:mod:`backend._overlaps`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from backend._fare_engine import FareLeg, FareQuote
from backend._frozen import fast_init

__all__ = [
    "FLAG_LOST",
    "FLAG_MERGED",
    "FLAG_OVERLAP_DROPPED",
    "FLAG_OVERLAP_PREFERRED",
    "FLAG_OVERLAP_RESOLVED",
    "FLAG_PARTIAL",
    "FLAG_PENALTY",
    "FLAG_REVIEW",
    "FLAG_STOP_ORDER",
    "FLAG_SUSPECTED_REPLAY",
    "FLAG_TRANSFER_STOP",
    "HELD_FLAGS",
    "Journey",
    "JourneyPolicy",
    "Leg",
    "LostPolicy",
    "Segment",
    "chargeable",
    "evidence_co",
    "evidence_count",
    "evidence_invalid",
    "evidence_level",
    "evidence_rssi",
    "union_distance",
]

LostPolicy = Literal["last-stop", "penalty"]

FLAG_LOST = "lost"
"""The rider was not seen alighting; the lost policy priced the leg."""
FLAG_PENALTY = "penalty"
"""The lost policy ``penalty`` charged the route's maximum distance."""
FLAG_PARTIAL = "partial"
"""The leg starts with a ``continued`` segment that has no predecessor."""
FLAG_REVIEW = "review"
"""A person should look at this leg or journey."""
FLAG_SUSPECTED_REPLAY = "suspected_replay"
"""The rider was on another bus at an overlapping time; not charged automatically."""
FLAG_OVERLAP_DROPPED = "overlap_dropped"
"""Another bus heard the rider much more strongly over the whole leg: never charged."""
FLAG_OVERLAP_RESOLVED = "overlap_resolved"
"""An overlapping, much weaker leg on another bus was dropped in favour of this one."""
FLAG_OVERLAP_PREFERRED = "overlap_preferred"
"""Held with an overlapping leg on a bus beside as the same ride, but charged: its bus
decoded far more of the token's adverts (the other leg stays held for review)."""
FLAG_TRANSFER_STOP = "transfer_stop"
"""The leg's stop at a transfer is the stop where the rider's other leg of the transfer
was seen: its alighting there (the rider was seen boarding the next bus at the next stop
of its trip) or its boarding there (the next bus's boarding was not seen, and the stop
the rider alighted at is the one before its first)."""
FLAG_MERGED = "merged"
"""Segments of one bus trip joined into one leg across more than a rid rotation (a gap,
a ``lost`` end, a split at a stop, overlapping rids): one ride, charged once."""
FLAG_STOP_ORDER = "stop_order"
"""The leg's boarding stop is not before its alighting stop: held, never charged."""


@fast_init
@dataclass(frozen=True, slots=True)
class Segment:
    """One accepted, resolved fare event (one rid presence segment of one rider).

    Attributes:
        rider_id: the resolved rider.
        bus_id: the bus that emitted the event.
        seq: the event's sequence number on that bus.
        event_id: the event id.
        interval: the rid interval.
        route_id: the trip's route, or ``None``.
        trip_id: the trip, or ``None``.
        start_t: segment start (bus GNSS time).
        start_stop_id: stop at the start, or ``None``.
        start_cause: ``boarded``, ``continued`` or ``tentative`` (charged alone only door to door:
            :mod:`backend._tentative`).
        end_t: segment end.
        end_stop_id: stop at the end, or ``None``.
        end_cause: ``alighted``, ``rotated`` or ``lost``.
        distance_m: distance the bus travelled during the segment.
        rssi_med: the edge's median RSSI of the rid over the segment (``evidence.rssi_med``),
            or ``None`` when the event does not say.
        n_adv: adverts of the rid the edge decoded over the segment (``evidence.n_adv``),
            or ``None`` when the event does not say.
        co: a ``tentative`` segment's co-movement evidence (``evidence.co_n``, ``co_lo``,
            ``co_hi``: points, lowest and highest level), else ``None``.
        riders_lvl: the level (dBm) at which the bus heard its riders aboard while it heard
            this rid (``evidence.riders_lvl``), or ``None`` when the event does not say.
    """

    rider_id: str
    bus_id: str
    seq: int
    event_id: str
    interval: int
    route_id: str | None
    trip_id: str | None
    start_t: float
    start_stop_id: str | None
    start_cause: str
    end_t: float
    end_stop_id: str | None
    end_cause: str
    distance_m: float
    rssi_med: float | None = None
    n_adv: int | None = None
    co: tuple[int, float, float] | None = None
    riders_lvl: float | None = None

    @classmethod
    def from_event(cls, event: Mapping[str, Any], rider_id: str) -> Segment:
        """Make a segment from a validated fare event v1 and its resolved rider."""
        start, end = event["start"], event["end"]
        return cls(
            rider_id=rider_id,
            bus_id=event["bus_id"],
            seq=event["seq"],
            event_id=event["event_id"],
            interval=event["interval"],
            route_id=event["route_id"],
            trip_id=event["trip_id"],
            start_t=float(start["t"]),
            start_stop_id=start["stop_id"],
            start_cause=start["cause"],
            end_t=float(end["t"]),
            end_stop_id=end["stop_id"],
            end_cause=end["cause"],
            distance_m=float(event["distance_m"]),
            rssi_med=evidence_rssi(event.get("evidence")),
            n_adv=evidence_count(event.get("evidence")),
            co=evidence_co(event.get("evidence")) if start["cause"] == "tentative" else None,
            riders_lvl=evidence_level(event.get("evidence"), "riders_lvl"),
        )

    def sort_key(self) -> tuple[float, str, int]:
        """Total order: start time, then bus and sequence number."""
        return (self.start_t, self.bus_id, self.seq)


@fast_init
@dataclass(frozen=True, slots=True)
class Leg:
    """One ride of one rider on one bus, stitched from one or more segments.

    Attributes:
        rider_id: the rider.
        bus_id: the bus.
        route_id: the route (``None`` when the driver had not signed on).
        trip_id: the trip, if known.
        board_t: boarding time (first segment's start).
        board_stop_id: boarding stop, if known.
        alight_t: alighting time (last segment's end).
        alight_stop_id: alighting stop (by the lost policy when lost), if known.
        distance_m: the distance charged for.
        distance_source: ``gtfs``, ``events`` or ``penalty``.
        network_id: the fare class.
        event_ids: the events stitched, in order.
        flags: sorted flags (see the ``FLAG_*`` constants).
        heard: ``(start_t, end_t, rssi_med)`` of each stitched segment whose event gave a
            median RSSI (used to settle overlaps; not part of the output).
        counted: ``(start_t, end_t, n_adv)`` of each stitched segment whose event gave its
            count of adverts decoded (used to settle overlaps; not part of the output).
        under: ``(start_t, end_t, riders_lvl - rssi_med)`` of each stitched segment whose
            event gave both: how far below its riders aboard the bus heard the rider (used
            to settle overlaps; not part of the output).
    """

    rider_id: str
    bus_id: str
    route_id: str | None
    trip_id: str | None
    board_t: float
    board_stop_id: str | None
    alight_t: float
    alight_stop_id: str | None
    distance_m: float
    distance_source: str
    network_id: str
    event_ids: tuple[str, ...]
    flags: tuple[str, ...] = ()
    heard: tuple[tuple[float, float, float], ...] = field(default=(), compare=False)
    counted: tuple[tuple[float, float, int], ...] = field(default=(), compare=False)
    under: tuple[tuple[float, float, float], ...] = field(default=(), compare=False)

    def fare_leg(self) -> FareLeg:
        """This leg as the fare engine sees it."""
        return FareLeg(
            route_id=self.route_id or "",
            network_id=self.network_id,
            board_t=self.board_t,
            alight_t=self.alight_t,
            distance_m=self.distance_m,
            board_stop_id=self.board_stop_id,
            alight_stop_id=self.alight_stop_id,
            bus_id=self.bus_id,
        )

    def to_json(self) -> dict[str, Any]:
        """The JOURNEYS.jsonl leg object: the contract keys plus extras."""
        return {
            "bus_id": self.bus_id,
            "route_id": self.route_id,
            "board_stop_id": self.board_stop_id,
            "board_t": self.board_t,
            "alight_stop_id": self.alight_stop_id,
            "alight_t": self.alight_t,
            "trip_id": self.trip_id,
            "distance_m": round(self.distance_m, 1),
            "distance_source": self.distance_source,
            "network_id": self.network_id,
            "event_ids": list(self.event_ids),
            "flags": list(self.flags),
        }

    def sort_key(self) -> tuple[float, float, str, str]:
        """Total order: boarding, then alighting time, bus and first event."""
        return (self.board_t, self.alight_t, self.bus_id, self.event_ids[0])

    def with_flags(self, *flags: str) -> Leg:
        """A copy with more flags."""
        return dataclasses.replace(self, flags=tuple(sorted(set(self.flags) | set(flags))))

    def strength(self, start_t: float, end_t: float) -> float | None:
        """The median RSSI of this leg's segments over a time span, weighted by time.

        Each segment that overlaps the span counts by how long it overlaps it (so a short
        rotated segment does not outweigh the long one beside it); when the span or the
        overlaps are instants, the plain mean of the segments touching it. ``None`` when
        no segment with an RSSI touches the span.
        """
        return _weighted(self.heard, start_t, end_t)

    def under_riders(self, start_t: float, end_t: float) -> float | None:
        """How far (dB) below its riders aboard the bus heard the rider over a time span.

        The segments' ``riders_lvl - rssi_med``, weighted by time as :meth:`strength`
        weighs their RSSI. ``None`` when no segment with both touches the span.
        """
        return _weighted(self.under, start_t, end_t)

    def advert_rate(self, start_t: float, end_t: float) -> float | None:
        """Adverts decoded per second over a time span, from the segments' counts.

        Each segment's adverts are spread evenly over its time; the rate is the adverts
        of the parts of the segments inside the span over the time those parts cover
        (segments that last no time are left out). ``None`` when no segment with a count
        covers any of the span.
        """
        adverts = 0.0
        covered = 0.0
        for s, e, n in self.counted:
            if s <= end_t and e >= start_t and e > s:
                part = max(0.0, min(e, end_t) - max(s, start_t))
                adverts += n * part / (e - s)
                covered += part
        if covered <= 0.0:
            return None
        return adverts / covered


def _weighted(
    spans: Sequence[tuple[float, float, float]], start_t: float, end_t: float
) -> float | None:
    """The mean of the values of ``(start, end, value)`` spans over a time span, by time.

    Each span that overlaps it counts by how long it overlaps it; when the span or the
    overlaps are instants, the plain mean of the spans touching it. ``None`` when none
    touches it.
    """
    weights: list[float] = []
    values: list[float] = []
    for s, e, value in spans:
        if s <= end_t and e >= start_t:
            weights.append(max(0.0, min(e, end_t) - max(s, start_t)))
            values.append(value)
    if not values:
        return None
    total = math.fsum(weights)
    if total <= 0.0:
        return math.fsum(values) / len(values)
    return math.fsum(w * v for w, v in zip(weights, values, strict=True)) / total


_INT32_MAX = 2**31 - 1


def evidence_count(evidence: object) -> int | None:
    """``evidence.n_adv`` of a fare event as an int >= 0, or ``None`` if absent or invalid.

    Above ``2**31 - 1`` it is invalid (no bus decodes that many adverts of one rid): the
    ledger keeps it in a 32-bit column (``rider_segments.n_adv``), which PostgreSQL would
    refuse, failing every settlement pass.
    """
    if type(evidence) is not dict and not isinstance(evidence, Mapping):
        return None
    value = evidence.get("n_adv")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT32_MAX:
        return None
    return value


def evidence_co(evidence: object) -> tuple[int, float, float] | None:
    """A tentative segment's ``evidence.co_n``, ``co_lo``, ``co_hi``, or ``None`` if invalid."""
    if type(evidence) is not dict and not isinstance(evidence, Mapping):
        return None
    n, lo, hi = evidence.get("co_n"), evidence.get("co_lo"), evidence.get("co_hi")
    if type(n) is not int or n < 1 or type(lo) not in (int, float) or type(hi) not in (int, float):
        return None
    lo, hi = float(lo), float(hi)  # type: ignore[arg-type]
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        return None
    return n, lo, hi


def evidence_rssi(evidence: object) -> float | None:
    """``evidence.rssi_med`` of a fare event as a float, or ``None`` if absent or invalid."""
    return evidence_level(evidence, "rssi_med")


LEVEL_MIN_DBM = -200.0
LEVEL_MAX_DBM = 50.0
"""The levels (dBm) the backend reads from a fare event's evidence: those a tentative
segment's ``co_lo``/``co_hi`` must lie in (``busbell._fare_types``). Beyond them no radio
heard it, and a float near its limits made the overlap rule's weighted sums infinite
(``math.fsum`` raised on ``inf - inf``; ``float()`` on an integer beyond a float)."""


def evidence_level(evidence: object, key: str) -> float | None:
    """``evidence[key]`` of a fare event as a float, or ``None`` if absent or invalid.

    Invalid: not a number (a bool is not), or outside ``LEVEL_MIN_DBM..LEVEL_MAX_DBM``
    (NaN and infinities included).
    """
    if type(evidence) is not dict and not isinstance(evidence, Mapping):
        return None
    value = evidence.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not LEVEL_MIN_DBM <= value <= LEVEL_MAX_DBM:  # (an int of any size compares exactly)
        return None
    return float(value)


def evidence_invalid(
    evidence: object, rssi_med: float | None, n_adv: int | None, riders_lvl: float | None
) -> tuple[str, ...]:
    """The evidence keys settlement reads that an event carries but were read as absent.

    ``rssi_med``, ``n_adv`` and ``riders_lvl`` as read (:func:`evidence_rssi`,
    :func:`evidence_count`, :func:`evidence_level`): a value read as ``None`` although
    the key holds something other than ``null`` was invalid (a string, a bool, a level
    outside ``LEVEL_MIN_DBM..LEVEL_MAX_DBM``, a count beyond 32 bits). The event is still
    settled, without that value (rejecting it would stall its bus's chain); the caller
    counts and logs what this returns. ``()`` (the usual case) costs no lookup when all
    three were read.
    """
    if rssi_med is not None and n_adv is not None and riders_lvl is not None:
        return ()
    if type(evidence) is not dict and not isinstance(evidence, Mapping):
        return ()
    return tuple(
        key
        for key, read in (("n_adv", n_adv), ("riders_lvl", riders_lvl), ("rssi_med", rssi_med))
        if read is None and evidence.get(key) is not None
    )


@fast_init
@dataclass(frozen=True, slots=True)
class Journey:
    """A rider's journey: legs joined by the transfer rules, with its fare.

    Attributes:
        journey_id: deterministic id (hash of the rider and the events).
        rider_id: the rider.
        legs: the legs in boarding order.
        fare_krw: the fare (0 when not charged).
        charged: ``False`` for journeys held for review without a charge.
        category: rider category priced.
        flags: union of the legs' flags.
        quote: the fare engine's quote (``None`` when not charged).
    """

    journey_id: str
    rider_id: str
    legs: tuple[Leg, ...]
    fare_krw: int
    charged: bool
    category: str
    flags: tuple[str, ...]
    quote: FareQuote | None = field(default=None, compare=False)

    @property
    def first_board_t(self) -> float:
        """Time of the first boarding."""
        return self.legs[0].board_t

    @property
    def explain(self) -> tuple[str, ...]:
        """The fare engine's explanation lines (empty when not charged)."""
        return self.quote.explain if self.quote is not None else ()

    def to_json(self) -> dict[str, Any]:
        """The JOURNEYS.jsonl object: ``rider_id``, ``legs``, ``fare_krw`` plus extras."""
        return {
            "rider_id": self.rider_id,
            "legs": [leg.to_json() for leg in self.legs],
            "fare_krw": self.fare_krw,
            "journey_id": self.journey_id,
            "charged": self.charged,
            "category": self.category,
            "ruleset_id": self.quote.ruleset_id if self.quote is not None else None,
            "flags": list(self.flags),
        }

    def sort_key(self) -> tuple[str, float, str, str]:
        """Deterministic output order."""
        return (self.rider_id, self.first_board_t, self.legs[0].bus_id, self.journey_id)


@dataclass(frozen=True, slots=True)
class JourneyPolicy:
    """Tunable rules of the journey builder.

    Attributes:
        lost_policy: ``last-stop`` or ``penalty`` (see the module docs).
        stitch_gap_s: without a trip id, segments on one bus and route this close in
            time (or overlapping) are one leg.
        unknown_trip_gap_s: without a trip id, a segment that did not end ``alighted``
            and the rider's next segment on the same bus and route at most this much
            later are one leg (the rider was not heard for a while, e.g. a quiet stretch).
        rejoin_stop_s: a segment that boards at the stop where the rider's previous one
            on the same bus trip alighted, at most this much later, continues it (the
            rider stepped out to let others off, or the rid rotated at the door).
        replay_overlap_s: how long two legs on different buses may overlap before it is
            a suspected replay (detection latency at a transfer makes small overlaps
            normal).
        change_overlap_s: a rider seen alighting from one bus at the stop where another
            bus was seen boarding them is a transfer (not a suspected replay) when the
            two legs overlap by at most this: the later bus stood at the stop, doors
            open, before the earlier let the rider off (holding for the change), plus
            the approach over which its edge heard them as it drew up. Longer, no bus
            waited for them there: a token boarding at the rider's stop while the rider
            was still riding towards it (a clone) is held.
        beside_overlap_s: a change from a bus beside
            (:func:`backend._overlaps.changes_beside`: the later bus heard the rider
            through the windows from a stop where it stood with the earlier one, and
            carried them on from the stop where the earlier let them off) is placed only
            when the two legs overlap by at most this: the buses ran together at most
            this long before the change. Longer, both are held (a copy of the token
            riding a bus beside the rider's bus for longer than any change measured).
        overlap_margin_db: an overlap is settled in favour of the leg heard at least this
            many dB stronger (median RSSI) ... (``None``: never; hold both).
        overlap_cover_s: ... if that leg also covers the other one in time, within this
            slack at either end ...
        overlap_loser_max_dbm: ... and the weaker leg's strength is at most this (a rider
            heard through another bus's windows); a weaker leg heard louder than this
            sounds like a rider on board that bus (or a relay louder than the rider), so
            both are held (``None``: no limit) ...
        overlap_loser_under_riders_db: ... unless it was heard at least this many dB
            below the riders its own bus carried while it heard it (``evidence.riders_lvl``):
            the same ceiling relative to that bus's riders, which holds at any token power,
            or this much further below them than the winner's bus, ``overlap_margin_db``
            stronger, heard the rider below its own, the winner at most this much over its
            riders and the weaker at least half this under its own
            (:func:`backend._overlaps._rider_of_one`); and the winner need not
            cover the weaker leg where that leg's bus heard the rider, beyond the
            winner's ride, this far below its riders and this much further below them
            than the winner's bus heard the rider below its own (``None``: the absolute
            ceiling and the cover alone).
        overlap_rate_margin_db: a leg heard at least this many dB stronger (but less than
            ``overlap_margin_db``) also wins if its bus decoded the token's adverts at
            least ``overlap_rate_ratio`` times as often over the common time (the same
            token's adverts at two scanners: the bus it is in hears it better on both
            counts), or if the other leg is a hop within its ride, which began
            ``overlap_cover_s`` before the hop and ended that long after it (the rider
            would have caught the same trip again); cover and loser ceiling as above
            (``None``: RSSI margin alone).
        overlap_rate_ratio: ... that ratio (> 1).
        overlap_rate_alone_ratio: a leg whose bus decoded the token's adverts at least this
            many times as often per second over the common time wins on that alone, heard
            stronger by less than ``overlap_rate_margin_db`` or even weaker by up to that
            (two scanners near their floor: the far one decodes only the token's strongest
            packets, so its median RSSI says little); cover and loser ceiling as above
            (``None``: off; off too without ``overlap_rate_margin_db``).
        category: rider category priced.
        default_network: fare class of routes without a network (``None``: the rules').
        tentative_points: tentative pieces of one ride (:mod:`backend._tentative`) are
            kept when their co-movement points add up to this (the edge's
            ``sparse_adverts``) ...
        tentative_spread_db: ... at levels within this many dB (the edge's
            ``sparse_fall_db``) ...
        tentative_gap_s: ... each piece starting at most this long after the previous
            rid's piece ended (a weak token's new rid is first heard up to minutes late).
        tentative_carried_m: a group of tentative pieces alone, the rider's only evidence
            on that bus trip, is charged as **carried** (to the first stop at or past
            where the bus was when it last heard them) when the bus went this far while
            hearing them, at two or more co-movement points, and no confirmed segment of
            the rider on another bus overlaps them, and the last of them did not end ``lost``
            (:func:`backend._tentative._carried_to`; 0: off; docs/backend.md) ...
        tentative_carried_under_db: ... each piece's co-movement levels at most this many
            dB below the riders its bus heard (``riders_lvl``).
    """

    lost_policy: LostPolicy = "last-stop"
    stitch_gap_s: float = 60.0
    unknown_trip_gap_s: float = 900.0
    rejoin_stop_s: float = 300.0
    replay_overlap_s: float = 60.0
    change_overlap_s: float = 180.0
    beside_overlap_s: float = 360.0
    overlap_margin_db: float | None = 10.0
    overlap_cover_s: float = 60.0
    overlap_loser_max_dbm: float | None = -65.0
    overlap_loser_under_riders_db: float | None = 10.0
    overlap_rate_margin_db: float | None = 5.0
    overlap_rate_ratio: float = 1.5
    overlap_rate_alone_ratio: float | None = 3.0
    category: str = "adult"
    default_network: str | None = None
    tentative_points: int = 4
    tentative_spread_db: float = 12.0
    tentative_gap_s: float = 600.0
    tentative_carried_m: float = 300.0
    tentative_carried_under_db: float = 30.0

    def __post_init__(self) -> None:
        if self.overlap_margin_db is not None and not self.overlap_margin_db > 0:
            raise ValueError(
                f"overlap_margin_db must be positive (got {self.overlap_margin_db}); "
                "to never drop an overlapping leg, hold overlaps (overlap_settle = false)"
            )
        if self.overlap_rate_margin_db is not None and not self.overlap_rate_margin_db > 0:
            raise ValueError(
                f"overlap_rate_margin_db must be positive (got {self.overlap_rate_margin_db})"
            )
        under = self.overlap_loser_under_riders_db
        if under is not None and not under > 0:
            raise ValueError(f"overlap_loser_under_riders_db must be positive (got {under})")
        if not self.overlap_rate_ratio > 1:
            raise ValueError(f"overlap_rate_ratio must be > 1 (got {self.overlap_rate_ratio})")
        alone = self.overlap_rate_alone_ratio
        if alone is not None and not alone > 1:
            raise ValueError(f"overlap_rate_alone_ratio must be > 1 (got {alone})")
        if not self.tentative_points >= 1:
            raise ValueError(f"tentative_points must be >= 1 (got {self.tentative_points})")
        for name in (
            "stitch_gap_s",
            "unknown_trip_gap_s",
            "rejoin_stop_s",
            "replay_overlap_s",
            "change_overlap_s",
            "beside_overlap_s",
            "overlap_cover_s",
            "tentative_spread_db",
            "tentative_gap_s",
            "tentative_carried_m",
            "tentative_carried_under_db",
        ):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0 (got {value})")


HELD_FLAGS: frozenset[str] = frozenset(
    {FLAG_SUSPECTED_REPLAY, FLAG_OVERLAP_DROPPED, FLAG_STOP_ORDER}
)
"""A leg with any of these flags is held, never charged."""


def chargeable(leg: Leg) -> bool:
    """Whether a leg may be charged (it carries none of :data:`HELD_FLAGS`)."""
    return HELD_FLAGS.isdisjoint(leg.flags)


def union_distance(chain: Sequence[Segment]) -> float:
    """The bus's travel over the segments' union in time (overlaps counted once).

    Each segment's distance is spread evenly over its time. What the journey builder
    counts for a chain of segments and the tentative rules for a group of pieces
    (:func:`backend._tentative._carried_to`).
    """
    spans = sorted((s.start_t, max(s.end_t, s.start_t), s.distance_m) for s in chain)
    total = 0.0
    covered = -math.inf
    for start, end, dist in spans:
        if end <= covered:
            continue
        if start >= covered or end == start:
            total += dist
        else:
            total += dist * (end - covered) / (end - start)
        covered = max(covered, end)
    return total
