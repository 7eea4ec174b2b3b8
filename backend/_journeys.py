"""The sans-I/O journey builder: resolved segments -> legs -> priced journeys.

Input is one :class:`Segment` per accepted fare event whose rid resolved to a rider.

1. **One ride per bus trip (identity-aware stitching).** The backend knows which rids
   are one rider's, so it does not depend on the edge linking them: all of a rider's
   segments on one bus and one known trip are **one leg**, whatever their causes say
   (``rotated`` / ``continued``, a ``lost`` followed by the rider heard again, a rotation
   at a door that split the ride at a stop, two rids heard at once): a rider cannot leave
   a bus and catch the same trip again later. Without a trip id, segments on one bus and
   route are one leg when they touch or overlap (``stitch_gap_s``) or when the earlier
   one did not end ``alighted`` and the silence is at most ``unknown_trip_gap_s``. The
   leg boards where its earliest segment started and alights where its latest-ending
   segment ended; a leg joined across anything but a ``rotated`` -> ``continued`` link is
   flagged ``merged``.
2. **Stop order.** No leg boards at or after its alighting stop (in the trip's stop
   order; with no trip, board and alight stops must differ). A leg whose boarding stop
   is unknown (it starts ``continued``: its boarding segment is missing) boards at the
   last stop before the point where the bus was when the segment began (alighting
   position minus the distance the bus travelled during the leg, along the trip): the
   rider was aboard by then, so it never charges more than the ride. A leg still out of
   order is held (``stop_order`` + ``review``), never charged.
3. **Lost.** A leg whose last segment ends ``lost`` (or ``rotated`` with no
   continuation) is charged by the lost policy and marked for review: ``last-stop``
   (default) charges up to the last stop where the rider was confirmed on board
   (``end.stop_id`` if given, else the last known stop); ``penalty`` charges the
   route's maximum distance fare (the Korean no-tap-off rule).
4. **Overlaps.** The same rider on two buses at overlapping times cannot both be true.
   When one leg covers the other in time (within ``overlap_cover_s``), was heard at
   least ``overlap_margin_db`` stronger over their common time (the edges' median RSSI,
   weighted by time) and the weaker one sounds like a rider heard through the bus's
   windows (not above ``overlap_loser_max_dbm``), the rider was on the stronger bus and
   the other drove alongside: the weaker leg is dropped (``overlap_dropped``, never
   charged) and the stronger one charged (``overlap_resolved``). This also drops a short
   weak hop lying wholly within another bus's leg. Any other overlap longer than
   ``replay_overlap_s`` is a suspected replay: both legs are marked and held, not
   charged automatically; so is a leg that only lost to a leg that is itself held. Only
   a leg that is not itself dropped can drop another one.
5. **Distance** comes from GTFS ``shape_dist_traveled`` along the trip (or the
   route's usual pattern), falling back to the events' ``distance_m`` (overlapping
   segments counted once).
6. **Journeys and fares.** Legs are grouped by the fare engine's transfer rules
   (:func:`backend._fare_engine.group_journeys`) and priced by
   :class:`backend._fare_engine.FareEngine`.

Invariants (property-tested in ``tests/backend/test_journeys_properties.py``): never an
exception for valid segments; no charged leg boards at or after its alighting stop; a
rider is charged at most once per bus trip.

Pure and deterministic: the same segments in any order give the same journeys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from backend._fare_engine import FareEngine, FareLeg, FareQuote
from backend._fare_rules import NetworkMap
from busbell._gtfs import Feed

__all__ = [
    "FLAG_LOST",
    "FLAG_MERGED",
    "FLAG_OVERLAP_DROPPED",
    "FLAG_OVERLAP_RESOLVED",
    "FLAG_PARTIAL",
    "FLAG_PENALTY",
    "FLAG_REVIEW",
    "FLAG_STOP_ORDER",
    "FLAG_SUSPECTED_REPLAY",
    "Journey",
    "JourneyBuilder",
    "JourneyPolicy",
    "Leg",
    "LostPolicy",
    "Segment",
    "explain_journey",
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
FLAG_MERGED = "merged"
"""Segments of one bus trip joined into one leg across more than a rid rotation (a gap,
a ``lost`` end, a split at a stop, overlapping rids): one ride, charged once."""
FLAG_STOP_ORDER = "stop_order"
"""The leg's boarding stop is not before its alighting stop: held, never charged."""


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
        start_cause: ``boarded`` or ``continued``.
        end_t: segment end.
        end_stop_id: stop at the end, or ``None``.
        end_cause: ``alighted``, ``rotated`` or ``lost``.
        distance_m: distance the bus travelled during the segment.
        rssi_med: the edge's median RSSI of the rid over the segment (``evidence.rssi_med``),
            or ``None`` when the event does not say.
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
        )

    def sort_key(self) -> tuple[float, str, int]:
        """Total order: start time, then bus and sequence number."""
        return (self.start_t, self.bus_id, self.seq)


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
        weights: list[float] = []
        values: list[float] = []
        for s, e, rssi in self.heard:
            if s <= end_t and e >= start_t:
                weights.append(max(0.0, min(e, end_t) - max(s, start_t)))
                values.append(rssi)
        if not values:
            return None
        total = math.fsum(weights)
        if total <= 0.0:
            return math.fsum(values) / len(values)
        return math.fsum(w * v for w, v in zip(weights, values, strict=True)) / total


def evidence_rssi(evidence: object) -> float | None:
    """``evidence.rssi_med`` of a fare event as a float, or ``None`` if absent or not a number."""
    if not isinstance(evidence, Mapping):
        return None
    value = evidence.get("rssi_med")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


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
        overlap_margin_db: an overlap is settled in favour of the leg heard at least this
            many dB stronger (median RSSI) ... (``None``: never; hold both).
        overlap_cover_s: ... if that leg also covers the other one in time, within this
            slack at either end ...
        overlap_loser_max_dbm: ... and the weaker leg's strength is at most this (a rider
            heard through another bus's windows); a weaker leg heard louder than this
            sounds like a rider on board that bus (or a relay louder than the rider), so
            both are held (``None``: no limit).
        category: rider category priced.
        default_network: fare class of routes without a network (``None``: the rules').
    """

    lost_policy: LostPolicy = "last-stop"
    stitch_gap_s: float = 60.0
    unknown_trip_gap_s: float = 900.0
    rejoin_stop_s: float = 300.0
    replay_overlap_s: float = 60.0
    overlap_margin_db: float | None = 10.0
    overlap_cover_s: float = 60.0
    overlap_loser_max_dbm: float | None = -65.0
    category: str = "adult"
    default_network: str | None = None

    def __post_init__(self) -> None:
        if self.overlap_margin_db is not None and not self.overlap_margin_db > 0:
            raise ValueError(
                f"overlap_margin_db must be positive (got {self.overlap_margin_db}); "
                "to never drop an overlapping leg, hold overlaps (overlap_settle = false)"
            )
        for name in (
            "stitch_gap_s",
            "unknown_trip_gap_s",
            "rejoin_stop_s",
            "replay_overlap_s",
            "overlap_cover_s",
        ):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0 (got {value})")


class JourneyBuilder:
    """Builds priced journeys from resolved segments.

    Args:
        engine: the fare engine.
        feed: the GTFS feed (distances, networks), or ``None``.
        policy: the builder's policy.

    Raises:
        UnknownNetworkError: the feed maps a route to a network the rules lack.
    """

    def __init__(
        self, engine: FareEngine, feed: Feed | None = None, policy: JourneyPolicy | None = None
    ) -> None:
        self.engine = engine
        self.feed = feed
        self.policy = policy or JourneyPolicy()
        self.networks: NetworkMap = engine.rules.network_map(
            feed.networks if feed is not None else {},
            default_network=self.policy.default_network,
        )
        self._route_max: dict[str, float] = {}
        if feed is not None:
            for pattern in feed.patterns.values():
                length = pattern.dist_m[-1] - pattern.dist_m[0] if pattern.dist_m else 0.0
                self._route_max[pattern.route_id] = max(
                    length, self._route_max.get(pattern.route_id, 0.0)
                )
            for trip in feed.trips.values():
                length = trip.dist_m[-1] - trip.dist_m[0] if trip.dist_m else 0.0
                self._route_max[trip.route_id] = max(
                    length, self._route_max.get(trip.route_id, 0.0)
                )

    # ----------------------------------------------------------------- distances

    def gtfs_distance(
        self, route_id: str | None, trip_id: str | None, board: str | None, alight: str | None
    ) -> float | None:
        """Metres along the trip (or the route's pattern) between two stops, or ``None``."""
        feed = self.feed
        if feed is None or board is None or alight is None:
            return None
        trip = feed.trips.get(trip_id) if trip_id is not None else None
        if trip is not None:
            d = _between(trip.stop_ids, trip.dist_m, board, alight)
            if d is not None:
                return d
            route_id = trip.route_id
        if route_id is None:
            return None
        found: list[float] = []
        for direction in (0, 1):
            pattern = feed.pattern(route_id, direction)
            if pattern is not None:
                d = pattern.distance_between(board, alight)
                if d is not None:
                    found.append(d)
        return min(found) if found else None

    def route_max_distance(self, route_id: str | None) -> float | None:
        """The longest distance of a route in the feed (the penalty distance)."""
        if route_id is None:
            return None
        return self._route_max.get(route_id)

    # ----------------------------------------------------------------- stitching

    def stitch(self, segments: Iterable[Segment]) -> list[Leg]:
        """Join one rider's segments into legs, per bus trip (module docs, 1-2).

        Segments of one bus trip are joined when they touch or overlap
        (``stitch_gap_s``), when the earlier one did not end ``alighted`` (nothing says
        the rider left; on a known trip whatever the silence, else within
        ``unknown_trip_gap_s``), or when the later one boards at the very stop the
        earlier one alighted at within ``rejoin_stop_s`` (stepped out to let others off;
        a rotation at the door). What is left apart on one trip is separated by an
        alighting; :meth:`build_rider` joins those after the overlap rules have dropped
        the false ones.

        Returns:
            The legs in boarding order.
        """
        groups: dict[tuple[str, str | None, str | None], list[list[Segment]]] = {}
        for seg in sorted(segments, key=Segment.sort_key):
            key = (seg.bus_id, seg.trip_id, None if seg.trip_id else seg.route_id)
            chains = groups.setdefault(key, [])
            if chains and self._joins(chains[-1], seg):
                chains[-1].append(seg)
            else:
                chains.append([seg])
        legs = [self._leg(chain) for chains in groups.values() for chain in chains]
        legs.sort(key=_leg_key)
        return legs

    def _joins(self, chain: Sequence[Segment], seg: Segment) -> bool:
        """Whether ``seg`` continues ``chain`` (same bus and trip, or route if no trip)."""
        p = self.policy
        last = max(chain, key=_end_key)
        gap = seg.start_t - last.end_t
        if gap <= p.stitch_gap_s:
            return True
        if last.end_cause != "alighted":
            return seg.trip_id is not None or gap <= p.unknown_trip_gap_s
        return (
            seg.start_stop_id is not None
            and seg.start_stop_id == last.end_stop_id
            and gap <= p.rejoin_stop_s
        )

    def join_trips(self, legs: Sequence[Leg]) -> list[Leg]:
        """Join a rider's chargeable legs on one bus trip into one (charged once).

        A rider cannot leave a bus and catch the same trip again later: of two legs on
        one trip separated by an alighting, one is a false reading or the rider stepped
        out and back. The joined leg boards at the earliest boarding stop and alights at
        the latest alighting stop in the trip's stop order (in time order without one).
        Held legs stay as they are.
        """
        by_trip: dict[tuple[str, str], list[Leg]] = {}
        out: list[Leg] = []
        for leg in legs:
            if leg.trip_id is not None and _chargeable(leg):
                by_trip.setdefault((leg.bus_id, leg.trip_id), []).append(leg)
            else:
                out.append(leg)
        for group in by_trip.values():
            out.append(group[0] if len(group) == 1 else self._join(group))
        out.sort(key=_leg_key)
        return out

    def _join(self, group: Sequence[Leg]) -> Leg:
        group = sorted(group, key=_leg_key)
        first, last = group[0], max(group, key=lambda leg: (leg.alight_t, _leg_key(leg)))
        seq = self._sequence(first.route_id, first.trip_id)
        board, alight = first.board_stop_id, last.alight_stop_id
        if seq is not None:
            stops = seq[0]
            boards = [x.board_stop_id for x in group if x.board_stop_id in stops]
            alights = [x.alight_stop_id for x in group if x.alight_stop_id in stops]
            if boards:
                board = min(boards, key=lambda x: stops.index(x or ""))
            if alights:
                alight = max(alights, key=lambda x: stops.index(x or ""))
        flags = {f for x in group for f in x.flags} | {FLAG_MERGED}
        if FLAG_LOST not in last.flags:
            flags.discard(FLAG_LOST)
        distance = self.gtfs_distance(first.route_id, first.trip_id, board, alight)
        source = "gtfs"
        if distance is None:
            distance, source = math.fsum(x.distance_m for x in group), "events"
        if not _in_order(seq, board, alight):
            flags |= {FLAG_STOP_ORDER, FLAG_REVIEW}
        return dataclasses.replace(
            first,
            board_stop_id=board,
            alight_t=max(last.alight_t, first.board_t),
            alight_stop_id=alight,
            distance_m=max(0.0, distance),
            distance_source=source,
            event_ids=tuple(e for x in group for e in x.event_ids),
            flags=tuple(sorted(flags)),
            heard=tuple(h for x in group for h in x.heard),
        )

    def _leg(self, chain: Sequence[Segment]) -> Leg:
        first, last = chain[0], max(chain, key=_end_key)
        flags: set[str] = set()
        route_id = next((s.route_id for s in chain if s.route_id is not None), None)
        trip_id = next((s.trip_id for s in chain if s.trip_id is not None), None)
        if any(
            not (a.end_cause == "rotated" and b.start_cause == "continued")
            for a, b in itertools.pairwise(chain)
        ):
            flags.add(FLAG_MERGED)
        events_distance = _union_distance(chain)
        seq = self._sequence(route_id, trip_id)
        board_stop = _first_stop(seq, chain)
        alight_stop = last.end_stop_id
        lost = last.end_cause != "alighted"
        if lost:
            flags |= {FLAG_LOST, FLAG_REVIEW}
            if alight_stop is None:
                alight_stop = _last_known_stop(chain)
        if all(s.start_cause == "continued" for s in chain):
            flags |= {FLAG_PARTIAL, FLAG_REVIEW}
            if board_stop is None or not _in_order(seq, board_stop, alight_stop):
                board_stop = self._board_estimate(seq, chain, alight_stop, events_distance)
                if board_stop is None:
                    flags |= {FLAG_STOP_ORDER, FLAG_REVIEW}  # rode from nowhere we can name
        if lost and not _in_order(seq, board_stop, alight_stop):
            # the last stop named is its boarding stop: the stop it was carried past, if
            # the distance says, else unknown (charged by the events' distance)
            alight_stop = _alight_estimate(seq, board_stop, events_distance)
        distance: float | None = None
        source = "gtfs"
        if lost and self.policy.lost_policy == "penalty":
            distance = self.route_max_distance(route_id)
            flags.add(FLAG_PENALTY)
            source = "penalty"
            if distance is None:
                distance, source = events_distance, "events"
        else:
            distance = self.gtfs_distance(route_id, trip_id, board_stop, alight_stop)
            if distance is None:
                distance, source = events_distance, "events"
        if not _in_order(seq, board_stop, alight_stop):
            flags |= {FLAG_STOP_ORDER, FLAG_REVIEW}
        return Leg(
            rider_id=first.rider_id,
            bus_id=first.bus_id,
            route_id=route_id,
            trip_id=trip_id,
            board_t=first.start_t,
            board_stop_id=board_stop,
            alight_t=max(last.end_t, first.start_t),
            alight_stop_id=alight_stop,
            distance_m=max(0.0, distance),
            distance_source=source,
            network_id=self.networks.network_for(route_id) if route_id else self._default(),
            event_ids=tuple(s.event_id for s in chain),
            flags=tuple(sorted(flags)),
            heard=tuple((s.start_t, s.end_t, s.rssi_med) for s in chain if s.rssi_med is not None),
        )

    def _sequence(
        self, route_id: str | None, trip_id: str | None
    ) -> tuple[tuple[str, ...], tuple[float, ...]] | None:
        """The stop order of a leg: its trip's, or its route's only pattern; else ``None``.

        A route with patterns in both directions gives no order without a trip id.
        """
        feed = self.feed
        if feed is None:
            return None
        trip = feed.trips.get(trip_id) if trip_id is not None else None
        if trip is not None:
            return trip.stop_ids, trip.dist_m
        if route_id is None:
            return None
        found = [p for p in (feed.pattern(route_id, 0), feed.pattern(route_id, 1)) if p]
        if len(found) == 1:
            return found[0].stop_ids, found[0].dist_m
        return None

    def _board_estimate(
        self,
        seq: tuple[tuple[str, ...], tuple[float, ...]] | None,
        chain: Sequence[Segment],
        alight_stop: str | None,
        travelled_m: float,
    ) -> str | None:
        """Where a rider whose boarding segment is missing boarded, at the latest.

        The bus was ``travelled_m`` before the alighting stop when the leg's first segment
        began (the rider aboard); the last stop at or before that point was served with
        the rider aboard or before they boarded, so boarding there never overcharges.
        Without a stop order: the first stop any segment names before the alighting stop.
        """
        if seq is not None and alight_stop is not None and alight_stop in seq[0]:
            stops, dist = seq
            j = stops.index(alight_stop)
            at = dist[j] - travelled_m + _POSITION_SLACK_M
            i = max((k for k in range(j + 1) if dist[k] <= at), default=None)
            return stops[i] if i is not None and i < j else None
        named = [x for seg in chain for x in (seg.start_stop_id, seg.end_stop_id) if x]
        return next((x for x in named if x != alight_stop), None)

    def _default(self) -> str:
        return self.networks.default_network

    # ----------------------------------------------------------------- replay check

    def mark_replays(self, legs: Sequence[Leg]) -> list[Leg]:
        """Settle legs of one rider on different buses that overlap in time.

        Two legs conflict when they overlap by more than ``replay_overlap_s``, or when one
        lies wholly within the other (however short). A conflict is settled in favour of
        one leg when :meth:`_overlap_winner` finds one; only a leg that is not dropped
        itself can drop another (a leg that loses to a stronger one drops nobody), and
        a leg dropped only by legs that end up held is held with them. The dropped leg is
        flagged ``overlap_dropped``, its winner ``overlap_resolved``. Legs in a conflict
        longer than ``replay_overlap_s`` that is not settled, neither of them dropped, are
        flagged ``suspected_replay`` and held for review; a short, unsettled containment
        is not a conflict (detection latency at a transfer).
        """
        tol = self.policy.replay_overlap_s
        wins: list[tuple[int, int]] = []  # (winner, loser)
        unsettled: list[tuple[int, int]] = []
        order = sorted(range(len(legs)), key=lambda k: _leg_key(legs[k]))
        for a_pos, a in enumerate(order):
            la = legs[a]
            for b in order[a_pos + 1 :]:
                lb = legs[b]
                if lb.board_t >= la.alight_t:
                    break
                if lb.bus_id == la.bus_id:
                    continue
                overlap = min(la.alight_t, lb.alight_t) - max(la.board_t, lb.board_t)
                long = overlap > tol
                if not (long or _within(la, lb) or _within(lb, la)):
                    continue  # a transfer
                winner = self._overlap_winner(la, lb)
                win, lose = (a, b) if winner is la else (b, a)
                if winner is None:
                    if long:
                        unsettled.append((a, b))
                elif long or _within(legs[lose], legs[win]):
                    wins.append((win, lose))
        dropped, dropped_by, cyclic = _settle_wins(wins)
        suspect: set[int] = set()
        for a, b in [*unsettled, *cyclic]:
            if a not in dropped and b not in dropped:
                suspect |= {a, b}
        for lose, winners in dropped_by.items():
            if winners <= suspect:
                dropped.discard(lose)
                suspect.add(lose)
        resolved = {w for w, lose in wins if lose in dropped and w not in dropped}

        def settled(k: int, leg: Leg) -> Leg:
            if k in dropped:
                return leg.with_flags(FLAG_OVERLAP_DROPPED)
            if k in suspect:
                return leg.with_flags(FLAG_SUSPECTED_REPLAY, FLAG_REVIEW)
            if k in resolved:
                return leg.with_flags(FLAG_OVERLAP_RESOLVED)
            return leg

        return [settled(k, leg) for k, leg in enumerate(legs)]

    def _overlap_winner(self, a: Leg, b: Leg) -> Leg | None:
        """The leg of two overlapping ones that the rider was on, if the evidence says.

        The winner must cover the other leg in time (``overlap_cover_s`` of slack at
        either end) and have been heard, over their common time, at least
        ``overlap_margin_db`` stronger; the loser must not have been heard louder than
        ``overlap_loser_max_dbm``. Otherwise ``None``.
        """
        margin = self.policy.overlap_margin_db
        if margin is None:
            return None
        start, end = max(a.board_t, b.board_t), min(a.alight_t, b.alight_t)
        sa, sb = a.strength(start, end), b.strength(start, end)
        if sa is None or sb is None:
            return None
        if sa - sb >= margin:
            win, lose, weak = a, b, sb
        elif sb - sa >= margin:
            win, lose, weak = b, a, sa
        else:
            return None
        ceiling = self.policy.overlap_loser_max_dbm
        if ceiling is not None and weak > ceiling:
            return None
        cover = self.policy.overlap_cover_s
        if win.board_t - cover <= lose.board_t and lose.alight_t <= win.alight_t + cover:
            return win
        return None

    # ----------------------------------------------------------------- journeys

    def build_rider(
        self, segments: Iterable[Segment], category: str | None = None
    ) -> list[Journey]:
        """Build and price one rider's journeys."""
        cat = category or self.policy.category
        legs = self.join_trips(self.mark_replays(self.stitch(segments)))
        held = [leg for leg in legs if not _chargeable(leg)]
        chargeable = [leg for leg in legs if _chargeable(leg)]
        out: list[Journey] = []
        by_id: dict[int, Leg] = {}
        fare_legs: list[FareLeg] = []
        for leg in chargeable:
            fl = leg.fare_leg()
            by_id[id(fl)] = leg
            fare_legs.append(fl)
        for group in self.engine.journeys(fare_legs):
            journey_legs = tuple(by_id[id(fl)] for fl in group)
            quote = self.engine.price(group, cat)
            out.append(_journey(journey_legs, quote.fare_krw, True, cat, quote))
        for leg in held:
            out.append(_journey((leg,), 0, False, cat, None))
        out.sort(key=Journey.sort_key)
        return out

    def build(
        self, segments: Iterable[Segment], categories: Mapping[str, str] | None = None
    ) -> list[Journey]:
        """Build and price the journeys of every rider, sorted deterministically.

        Args:
            segments: resolved segments of any riders, any order.
            categories: rider id -> category (default: the policy's).
        """
        by_rider: dict[str, list[Segment]] = {}
        for seg in segments:
            by_rider.setdefault(seg.rider_id, []).append(seg)
        out: list[Journey] = []
        for rider_id in sorted(by_rider):
            cat = (categories or {}).get(rider_id)
            out.extend(self.build_rider(by_rider[rider_id], cat))
        return out


def _journey(
    legs: tuple[Leg, ...], fare: int, charged: bool, category: str, quote: FareQuote | None
) -> Journey:
    h = hashlib.sha256()
    h.update(legs[0].rider_id.encode())
    for leg in legs:
        for event_id in leg.event_ids:
            h.update(b"\x00" + event_id.encode())
    flags = tuple(sorted({f for leg in legs for f in leg.flags}))
    return Journey(
        journey_id=h.hexdigest()[:32],
        rider_id=legs[0].rider_id,
        legs=legs,
        fare_krw=fare,
        charged=charged,
        category=category,
        flags=flags,
        quote=quote,
    )


_POSITION_SLACK_M = 30.0
"""GNSS and odometer error allowed when a stop is placed from the distance travelled."""


def _end_key(seg: Segment) -> tuple[float, int]:
    return (seg.end_t, seg.seq)


def _first_stop(
    seq: tuple[tuple[str, ...], tuple[float, ...]] | None, chain: Sequence[Segment]
) -> str | None:
    """The boarding stop of a chain: its earliest start stop in the trip's stop order.

    Any named start is a stop the rider was aboard at; without a stop order, the
    earliest named start in time.
    """
    named = [s.start_stop_id for s in chain if s.start_stop_id is not None]
    if seq is not None:
        on_trip = [x for x in named if x in seq[0]]
        if on_trip:
            return min(on_trip, key=seq[0].index)
    return named[0] if named else None


def _in_order(
    seq: tuple[tuple[str, ...], tuple[float, ...]] | None, board: str | None, alight: str | None
) -> bool:
    """Whether ``alight`` comes after ``board`` (strictly; unknown stops do not fail)."""
    if board is None or alight is None:
        return True
    if board == alight:
        return False
    if seq is None or board not in seq[0] or alight not in seq[0]:
        return True
    stops = seq[0]
    return alight in stops[stops.index(board) + 1 :]


def _alight_estimate(
    seq: tuple[tuple[str, ...], tuple[float, ...]] | None, board: str | None, travelled_m: float
) -> str | None:
    """The last stop a lost rider was carried past: ``travelled_m`` after boarding."""
    if seq is None or board is None or board not in seq[0]:
        return None
    stops, dist = seq
    i = stops.index(board)
    at = dist[i] + travelled_m - _POSITION_SLACK_M
    j = max((k for k in range(i + 1, len(stops)) if dist[k] <= at), default=None)
    return stops[j] if j is not None else None


def _union_distance(chain: Sequence[Segment]) -> float:
    """The bus's travel over the segments' union in time (overlaps counted once).

    Each segment's distance is spread evenly over its time.
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


def _last_known_stop(chain: Sequence[Segment]) -> str | None:
    for seg in reversed(chain):
        if seg.end_stop_id is not None:
            return seg.end_stop_id
        if seg.start_stop_id is not None:
            return seg.start_stop_id
    return None


def _between(
    stop_ids: Sequence[str], dist_m: Sequence[float], board: str, alight: str
) -> float | None:
    try:
        i = stop_ids.index(board)
        j = stop_ids.index(alight, i)
    except ValueError:
        return None
    return dist_m[j] - dist_m[i]


def _within(inner: Leg, outer: Leg) -> bool:
    """``inner`` lies wholly within ``outer``'s time (no slack)."""
    return outer.board_t <= inner.board_t and inner.alight_t <= outer.alight_t


def _settle_wins(
    wins: Sequence[tuple[int, int]],
) -> tuple[set[int], dict[int, set[int]], list[tuple[int, int]]]:
    """Which legs the ``(winner, loser)`` settlements drop, winners first.

    A loser is dropped by the winners that lose to nobody still standing; the
    settlements of a dropped leg are void, and the rest are looked at again. Settlements
    left in a cycle (each leg beaten by another, which the RSSI rule makes all but
    impossible) drop nobody and are returned as conflicts to hold.

    Returns:
        The dropped legs, for each the winners that dropped it, and the cyclic pairs.
    """
    active = list(wins)
    dropped: set[int] = set()
    dropped_by: dict[int, set[int]] = {}
    while active:
        losers = {lose for _, lose in active}
        free = [(w, lose) for w, lose in active if w not in losers]
        if not free:
            break
        for w, lose in free:
            dropped.add(lose)
            dropped_by.setdefault(lose, set()).add(w)
        active = [(w, lose) for w, lose in active if w not in dropped and lose not in dropped]
    return dropped, dropped_by, active


_HELD = frozenset({FLAG_SUSPECTED_REPLAY, FLAG_OVERLAP_DROPPED, FLAG_STOP_ORDER})


def _chargeable(leg: Leg) -> bool:
    return _HELD.isdisjoint(leg.flags)


def _leg_key(leg: Leg) -> tuple[float, float, str, str]:
    return (leg.board_t, leg.alight_t, leg.bus_id, leg.event_ids[0])


def explain_journey(
    builder: JourneyBuilder, journey: Mapping[str, Any], *, category: str | None = None
) -> tuple[list[str], bool]:
    """Reprice a JOURNEYS.jsonl object and explain the fare line by line.

    Distances come from GTFS when the leg's stops are on its trip or route, else from
    the leg's ``distance_m``.

    Args:
        builder: the journey builder (feed, networks, engine).
        journey: a journey object (``rider_id``, ``legs``, ``fare_krw``).
        category: category to price (default: the journey's, else the policy's).

    Returns:
        The lines, and whether the recomputed fare differs from the recorded one.

    Raises:
        FareInputError: a leg lacks times or has invalid values.
    """
    from backend._fare_engine import FareInputError

    legs = journey.get("legs")
    if not isinstance(legs, list) or not legs:
        raise FareInputError("journey has no legs", field="legs")
    cat = category or journey.get("category") or builder.policy.category
    lines = [f"journey of rider {journey.get('rider_id')}: {len(legs)} leg(s), category {cat}"]
    fare_legs: list[FareLeg] = []
    for n, raw in enumerate(legs, 1):
        if not isinstance(raw, Mapping):
            raise FareInputError(f"leg {n} is not an object", field=f"legs[{n - 1}]")
        route_id = raw.get("route_id")
        board, alight = raw.get("board_stop_id"), raw.get("alight_stop_id")
        try:
            board_t, alight_t = float(raw["board_t"]), float(raw["alight_t"])
        except (KeyError, TypeError, ValueError):
            raise FareInputError(
                f"leg {n} needs numeric board_t and alight_t", field=f"legs[{n - 1}]"
            ) from None
        recorded = raw.get("distance_m")
        source = raw.get("distance_source")
        distance = None
        if source != "penalty":
            distance = builder.gtfs_distance(route_id, raw.get("trip_id"), board, alight)
        if distance is not None:
            how = f"GTFS shape_dist_traveled {board} -> {alight}"
        elif isinstance(recorded, int | float):
            distance = float(recorded)
            how = "recorded distance_m" + (" (lost-leg penalty)" if source == "penalty" else "")
        else:
            distance = 0.0
            how = "unknown (no GTFS match, no distance_m): 0 m"
        network = builder.networks.network_for(route_id) if route_id else builder._default()
        lines.append(
            f"leg {n} distance: route {route_id} bus {raw.get('bus_id')}, "
            f"{distance / 1000:.3f} km from {how}"
        )
        fare_legs.append(
            FareLeg(
                route_id=route_id or "",
                network_id=network,
                board_t=board_t,
                alight_t=alight_t,
                distance_m=max(0.0, distance),
                board_stop_id=board,
                alight_stop_id=alight,
                bus_id=raw.get("bus_id"),
            )
        )
    quote = builder.engine.price(fare_legs, cat)
    lines.extend(quote.explain)
    recorded_fare = journey.get("fare_krw")
    mismatch = False
    if journey.get("charged") is False:
        lines.append(
            f"recorded: not charged (flags {', '.join(journey.get('flags') or []) or 'none'})"
        )
    elif isinstance(recorded_fare, int):
        mismatch = recorded_fare != quote.fare_krw
        verdict = "differs" if mismatch else "matches"
        lines.append(f"recorded fare: {recorded_fare:,} KRW ({verdict})")
    return lines, mismatch
