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
4. **Overlaps** of one rider on two buses are settled by :mod:`backend._overlaps`:
   a much weaker leg covered by a stronger one is dropped (or a weaker one whose bus
   also decoded far fewer of the token's adverts), any other long overlap held but a
   change of buses at one stop (the earlier leg alighting where the later boarded); a
   bus that drove beside the rider's until it let them off at S and carried them on
   past a further stop boards them at S (:func:`backend._overlaps.changes_beside`; the
   earlier bus the stronger, or the later one hearing the rider far further under its
   riders); a leg stitched on past its alighting at S, where the rider boarded a bus
   bunched beside, ends at S when its bus heard the rest far under its riders
   (:func:`backend._overlaps.changes_bunched`; the rest is held, ``overlap_dropped``);
   of a held pair that made one ride on two buses side by side, the leg whose bus decoded
   far more of the token's adverts is charged, the other held (``overlap_preferred``).
5. **Distance** comes from GTFS ``shape_dist_traveled`` along the trip (or the
   route's usual pattern), falling back to the events' ``distance_m`` (overlapping
   segments counted once).
6. **Journeys and fares.** Legs are grouped by the fare engine's transfer rules
   (:func:`backend._fare_engine.group_journeys`) and priced by
   :class:`backend._fare_engine.FareEngine`.
7. **Transfer stops.** Within a journey, where a rider left one bus at one stop and the
   next leg begins at the next stop of a trip, too soon to have walked there: if the edge
   saw that boarding and the later bus does not call at the earlier stop on its way (it
   could not have taken the rider from there), the earlier leg alights there (it rode on:
   weak tokens fade out a stop early); if the edge did not see it (first heard moving),
   the later leg boards where the earlier one alighted
   (:meth:`JourneyBuilder.transfer_stops`, flagged ``transfer_stop``).

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
import operator
from collections.abc import Iterable, Mapping, Sequence

from backend._fare_engine import FareEngine, FareLeg, FareQuote
from backend._fare_rules import NetworkMap
from backend._legs import (
    FLAG_LOST,
    FLAG_MERGED,
    FLAG_PARTIAL,
    FLAG_PENALTY,
    FLAG_REVIEW,
    FLAG_STOP_ORDER,
    FLAG_TRANSFER_STOP,
    Journey,
    JourneyPolicy,
    Leg,
    LostPolicy,
    Segment,
    chargeable,
    union_distance,
)
from backend._overlaps import changes_beside, changes_bunched, settle_overlaps
from backend._tentative import dropped_tentative as _dropped_tentative
from backend._tentative import settle_tentative as _settle_tentative
from busbell._gtfs import Feed

__all__ = [
    "Journey",
    "JourneyBuilder",
    "JourneyPolicy",
    "Leg",
    "LostPolicy",
    "Segment",
]


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

    def tentative_hop(self, seg: Segment) -> float | None:
        """Metres along a segment's trip from its start stop to its end stop, or ``None``.

        What :func:`backend._tentative.settle_tentative` asks of a lone piece heard door to
        door, and of a carried piece's alighting stop (:meth:`settle_tentative` and
        :meth:`dropped_tentative` pass it). On a trip of the feed, along that trip only
        (``None`` for an end stop before the start stop: not the route's reverse pattern,
        as :meth:`gtfs_distance` falls back to).
        """
        feed = self.feed
        trip = feed.trips.get(seg.trip_id) if feed is not None and seg.trip_id else None
        if trip is not None:
            if seg.start_stop_id is None or seg.end_stop_id is None:
                return None
            return _between(trip.stop_ids, trip.dist_m, seg.start_stop_id, seg.end_stop_id)
        return self.gtfs_distance(seg.route_id, seg.trip_id, seg.start_stop_id, seg.end_stop_id)

    def tentative_reach(self, seg: Segment, travelled_m: float) -> str | None:
        """The first stop of a segment's trip at or past ``travelled_m`` beyond its start stop.

        Where a rider heard aboard until the bus had gone that far from the stop alights at
        the earliest (:func:`backend._tentative._carried_to`; 30 m slack, as for the other
        estimates from the distance). ``None``: no stop order, the start stop off the trip,
        or past its last stop.
        """
        seq = self._sequence(seg.route_id, seg.trip_id)
        if seq is None or seg.start_stop_id is None or seg.start_stop_id not in seq[0]:
            return None
        stops, dist = seq
        i = stops.index(seg.start_stop_id)
        at = dist[i] + travelled_m - _POSITION_SLACK_M
        return next((stops[k] for k in range(i + 1, len(stops)) if dist[k] >= at), None)

    def settle_tentative(self, segments: Sequence[Segment]) -> tuple[list[Segment], int]:
        """One rider's segments with the tentative ones kept or dropped, and how many dropped.

        :func:`backend._tentative.settle_tentative` with this builder's policy and the
        trip's distances (:meth:`tentative_hop`, :meth:`tentative_reach`): what every
        settlement path uses, so none can keep a piece another drops.
        """
        return _settle_tentative(segments, self.policy, self.tentative_hop, self.tentative_reach)

    def dropped_tentative(
        self, segments: Sequence[Segment]
    ) -> list[tuple[list[Segment], list[Segment]]]:
        """The joined groups whose tentative pieces :meth:`settle_tentative` drops.

        :func:`backend._tentative.dropped_tentative`, given what :meth:`settle_tentative`
        is.
        """
        return _dropped_tentative(segments, self.policy, self.tentative_hop, self.tentative_reach)

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
        if isinstance(segments, list | tuple) and len(segments) == 1:
            return [self._leg(segments)]  # one segment, one leg (what the loop gives)
        groups: dict[tuple[str, str | None, str | None], list[list[Segment]]] = {}
        for seg in sorted(segments, key=_SEGMENT_ORDER):
            key = (seg.bus_id, seg.trip_id, None if seg.trip_id else seg.route_id)
            chains = groups.setdefault(key, [])
            if chains and self._joins(chains[-1], seg):
                chains[-1].append(seg)
            else:
                chains.append([seg])
        legs = [self._leg(chain) for chains in groups.values() for chain in chains]
        legs.sort(key=Leg.sort_key)
        return legs

    def _joins(self, chain: Sequence[Segment], seg: Segment) -> bool:
        """Whether ``seg`` continues ``chain`` (same bus and trip, or route if no trip)."""
        p = self.policy
        last = chain[0] if len(chain) == 1 else max(chain, key=_end_key)
        gap = seg.start_t - last.end_t
        if gap <= p.stitch_gap_s:
            return True
        if last.end_cause != "alighted":
            return seg.trip_id is not None or gap <= p.unknown_trip_gap_s
        if (
            seg.start_stop_id is not None
            and seg.start_stop_id == last.end_stop_id
            and gap <= p.rejoin_stop_s
        ):
            return True
        return seg.trip_id is None and gap <= p.unknown_trip_gap_s and self._rode_on(last, seg)

    def _rode_on(self, last: Segment, seg: Segment) -> bool:
        """Whether the bus carried the rider on from ``last``'s alighting to ``seg``.

        ``seg`` (on the same bus and route, no trip id) places the rider aboard farther on
        along the route from the stop ``last`` alighted at -- at its boarding stop, else
        its distance before its alighting stop -- than anyone walks (at
        :data:`_ON_FOOT_M_S`) in the time between: they never left the bus (an old rid
        closed ``alighted`` by the edge's fade rules while its successor rode on).
        """
        s = last.end_stop_id
        if s is None:
            return False
        if seg.start_stop_id is not None:
            along = self.gtfs_distance(seg.route_id, None, s, seg.start_stop_id)
        elif seg.end_stop_id is not None:
            d = self.gtfs_distance(seg.route_id, None, s, seg.end_stop_id)
            along = None if d is None else d - seg.distance_m
        else:
            return False
        return along is not None and along > (seg.start_t - last.end_t) * _ON_FOOT_M_S

    def join_trips(self, legs: Sequence[Leg]) -> list[Leg]:
        """Join a rider's chargeable legs on one bus trip into one (charged once).

        A rider cannot leave a bus and catch the same trip again later: of two legs on
        one trip separated by an alighting, one is a false reading or the rider stepped
        out and back. The joined leg boards at the earliest boarding stop and alights at
        the latest alighting stop in the trip's stop order (in time order without one).
        Held legs stay as they are.

        A leg without a trip id (the bus had none assigned when it was heard) that
        overlaps in time another leg of the rider on the same bus is that ride too: a bus
        carries a rider once at a time, so the two are charged once, under the trip id
        the other leg has (before, the two trip keys differed and both were charged).
        """
        if len(legs) < 2:
            return list(legs)
        groups: list[list[Leg]] = []
        by_trip: dict[tuple[str, str], list[Leg]] = {}
        out: list[Leg] = []
        for leg in sorted(legs, key=lambda x: x.trip_id is None):  # (trip ids first)
            if not chargeable(leg):
                out.append(leg)
            elif leg.trip_id is not None:
                group = by_trip.get((leg.bus_id, leg.trip_id))
                if group is None:
                    group = by_trip[(leg.bus_id, leg.trip_id)] = []
                    groups.append(group)
                group.append(leg)
            else:
                self._join_loose(groups, leg)
        for group in groups:
            out.append(group[0] if len(group) == 1 else self._join(group))
        out.sort(key=Leg.sort_key)
        return out

    @staticmethod
    def _join_loose(groups: list[list[Leg]], leg: Leg) -> None:
        """File a chargeable leg without a trip id with the legs of its bus it overlaps.

        Every group of its bus with a leg overlapping it in time is merged with it into
        one group; with none, it makes a group of its own.
        """
        home: list[Leg] = [leg]
        for group in [g for g in groups if g[0].bus_id == leg.bus_id]:
            if any(x.board_t < leg.alight_t and leg.board_t < x.alight_t for x in group):
                groups.remove(group)
                home.extend(group)
        groups.append(home)

    def _join(self, group: Sequence[Leg]) -> Leg:
        group = sorted(group, key=Leg.sort_key)
        first, last = group[0], max(group, key=lambda leg: (leg.alight_t, leg.sort_key()))
        if first.trip_id is None:  # (a leg without a trip joins one by time alone)
            tripped = next((x for x in group if x.trip_id is not None), first)
            first = dataclasses.replace(first, route_id=tripped.route_id, trip_id=tripped.trip_id)
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
            counted=tuple(c for x in group for c in x.counted),
            under=tuple(u for x in group for u in x.under),
        )

    def _leg(self, chain: Sequence[Segment]) -> Leg:
        first = chain[0]
        flags: set[str] = set()
        if len(chain) == 1:  # most legs: what the loops below give for one segment
            last, route_id, trip_id = first, first.route_id, first.trip_id
            events_distance = 0.0 + first.distance_m
        else:
            last = max(chain, key=_end_key)
            route_id = next((s.route_id for s in chain if s.route_id is not None), None)
            trip_id = next((s.trip_id for s in chain if s.trip_id is not None), None)
            if any(
                not (a.end_cause == "rotated" and b.start_cause == "continued")
                for a, b in itertools.pairwise(chain)
            ):
                flags.add(FLAG_MERGED)
            events_distance = union_distance(chain)
        seq = self._sequence(route_id, trip_id)
        board_stop = _first_stop(seq, chain)
        alight_stop = last.end_stop_id
        lost = last.end_cause != "alighted"
        if lost:
            flags |= {FLAG_LOST, FLAG_REVIEW}
            if alight_stop is None:
                alight_stop = _last_known_stop(chain)
        if first.start_cause == "continued" and all(s.start_cause == "continued" for s in chain):
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
            event_ids=(first.event_id,) if len(chain) == 1 else tuple(s.event_id for s in chain),
            flags=tuple(sorted(flags)) if flags else (),
            heard=_heard(chain),
            counted=_counted(chain),
            under=_under(chain),
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

    # ----------------------------------------------------------------- transfers

    def transfer_stops(self, legs: Sequence[Leg], seen: frozenset[str]) -> tuple[Leg, ...]:
        """Make the stops of each transfer in one journey meet (module docs, 7).

        Of two consecutive legs on two buses, the earlier alighting at ``S`` and the later
        boarding at ``T``, a different stop, too far apart along the trip to walk (at
        :data:`_ON_FOOT_M_S`) in the time between the earlier leg's end and the later
        one's start: when the edge saw the later leg's boarding (its first segment
        ``boarded`` at a door, in ``seen``) and ``T`` is the next stop of the earlier
        leg's trip after ``S``, the earlier leg alights at ``T`` (the rider rode on to the
        stop where they were seen boarding; a weak token's alighting fades a stop early)
        -- unless the later bus calls, or may call, at ``S`` before ``T``
        (:meth:`_may_call_before`): the rider may as well have boarded it at ``S``, its
        edge seeing the boarding a stop late, and neither leg is charged for ``S -> T``
        (never charged for where they were not).
        When the edge did not see it (a tentative piece, a ``continued`` start: first heard
        moving) and ``S`` is the stop of the later leg's trip just before ``T``, the later
        leg boards at ``S`` (where the rider had just got off).
        Either way the leg is flagged ``transfer_stop`` and its distance taken along its
        trip, unless it is a ``penalty`` leg, which keeps its penalty distance. Nothing else
        changes: times, the other leg, legs on one bus.

        Args:
            legs: one journey's chargeable legs in boarding order (a transfer by the fare
                rules).
            seen: event ids of the segments whose boarding the edge saw.
        """
        out = list(legs)
        for k in range(1, len(out)):
            a, b = out[k - 1], out[k]
            s, t = a.alight_stop_id, b.board_stop_id
            if a.bus_id == b.bus_id or s is None or t is None or s == t or b.board_t < a.alight_t:
                continue
            gap = b.board_t - a.alight_t
            if b.event_ids[0] in seen:
                if (
                    a.distance_source != "penalty"
                    and self._no_walk(a, s, t, gap)
                    and not self._may_call_before(b, s, t)
                ):
                    out[k - 1] = self._moved(a, a.board_stop_id, t)
            elif self._no_walk(b, s, t, gap):
                out[k] = self._moved(b, s, b.alight_stop_id)
        return tuple(out)

    def _may_call_before(self, leg: Leg, s: str, t: str) -> bool:
        """Whether ``leg``'s bus may have called at ``s`` on its way to ``t``.

        ``s`` comes before ``t`` in the leg's stop order, or that order is unknown (no trip
        and a route with patterns both ways, or ``t`` not on it): the rider may have
        boarded it at ``s``, the edge seeing the boarding a stop late.
        """
        seq = self._sequence(leg.route_id, leg.trip_id)
        if seq is None or t not in seq[0]:
            return True
        stops = seq[0]
        return s in stops[: stops.index(t)]

    def _no_walk(self, leg: Leg, s: str, t: str, gap: float) -> bool:
        """Whether ``t`` is the stop after ``s`` on ``leg``'s trip, too far to walk in ``gap``.

        Along the trip, farther than :data:`_ON_FOOT_M_S` covers in ``gap`` seconds: the
        rider did not walk from one to the other between the two buses.
        """
        seq = self._sequence(leg.route_id, leg.trip_id)
        if seq is None or s not in seq[0]:
            return False
        stops, dist = seq
        i = stops.index(s)
        return (
            i + 1 < len(stops) and stops[i + 1] == t and gap * _ON_FOOT_M_S < dist[i + 1] - dist[i]
        )

    def _board_at(self, leg: Leg, stop: str, t: float) -> Leg | None:
        """``leg`` boarded at ``stop`` at ``t``, if it carried the rider on from ``stop``.

        ``stop`` lies strictly after its boarding stop in the trip's stop order, and its
        alighting stop at least two stops after ``stop``: past the next stop, which a bus
        beside the stop can still reach hearing a rider who got off there (walking off,
        or on a third bus beside it; the overlap rules hold that for a person) -- no bus
        hears someone it does not carry past a further stop
        (:func:`backend._overlaps.changes_beside`). Flagged ``transfer_stop``.
        """
        pos = self._on_trip(leg, stop)
        if pos is None or not pos[1] < pos[2] < pos[3] - 1:
            return None
        return dataclasses.replace(self._moved(leg, stop, leg.alight_stop_id), board_t=t)

    def _on_trip(self, leg: Leg, stop: str) -> tuple[tuple[float, ...], int, int, int] | None:
        """The trip's distances and ``leg``'s boarding stop, ``stop``, ``leg``'s alighting stop.

        The three as indices in the trip's stop order; ``None`` when any is unknown.
        """
        seq = self._sequence(leg.route_id, leg.trip_id)
        if seq is None or leg.board_stop_id is None or leg.alight_stop_id is None:
            return None
        stops, dist = seq
        if not (leg.board_stop_id in stops and stop in stops and leg.alight_stop_id in stops):
            return None
        return (
            dist,
            stops.index(leg.board_stop_id),
            stops.index(stop),
            stops.index(leg.alight_stop_id),
        )

    def _together(self, first: Leg, beside: Leg) -> bool:
        """Whether ``first``'s bus was at ``beside``'s boarding stop when ``beside`` boarded.

        That stop lies on ``first``'s trip from its boarding stop (inclusive) to before its
        alighting stop, and ``first``'s bus passed it, by the trip's distances between the
        leg's boarding and alighting times, within :data:`_TOGETHER_S` of ``beside``'s
        boarding (:func:`backend._overlaps.changes_beside`).
        """
        pos = None if beside.board_stop_id is None else self._on_trip(first, beside.board_stop_id)
        if pos is None:
            return False
        dist, i, j, k = pos
        if not (i <= j < k and dist[i] < dist[k]):
            return False
        frac = (dist[j] - dist[i]) / (dist[k] - dist[i])
        at = first.board_t + frac * (first.alight_t - first.board_t)
        return abs(at - beside.board_t) <= _TOGETHER_S

    def _split_at(
        self, leg: Leg, stop: str, by_id: Mapping[str, Segment]
    ) -> tuple[Leg, Leg] | None:
        """``leg`` up to its last segment that ended ``alighted`` at ``stop``, and the rest.

        ``None`` unless such a segment is followed by segments ending after it (a leg
        stitched on past an alighting: a rid rotating at the door, heard on from beside;
        :func:`backend._overlaps.changes_bunched`).
        """
        chain = sorted((by_id[e] for e in leg.event_ids if e in by_id), key=_SEGMENT_ORDER)
        ends = [
            s.end_t
            for s in chain
            if s.end_cause == "alighted" and s.end_stop_id == stop and s.end_t < leg.alight_t
        ]
        if not ends:
            return None
        cut = max(ends)
        head = [s for s in chain if s.end_t <= cut]
        tail = [s for s in chain if s.end_t > cut]
        if not head or not tail:
            return None
        return self._leg(head), self._leg(tail)

    def _moved(self, leg: Leg, board: str | None, alight: str | None) -> Leg:
        distance = (
            None  # a penalty leg keeps its penalty (the route's longest distance)
            if leg.distance_source == "penalty"
            else self.gtfs_distance(leg.route_id, leg.trip_id, board, alight)
        )
        return dataclasses.replace(
            leg,
            board_stop_id=board,
            alight_stop_id=alight,
            distance_m=leg.distance_m if distance is None else max(0.0, distance),
            distance_source=leg.distance_source if distance is None else "gtfs",
            flags=tuple(sorted({*leg.flags, FLAG_TRANSFER_STOP})),
        )

    # ----------------------------------------------------------------- journeys

    def build_rider(
        self, segments: Iterable[Segment], category: str | None = None
    ) -> list[Journey]:
        """Build and price one rider's journeys."""
        return self.build_rider_counted(segments, category)[0]

    def build_rider_counted(
        self, segments: Iterable[Segment], category: str | None = None
    ) -> tuple[list[Journey], int]:
        """Build and price one rider's journeys; and how many tentative segments dropped.

        :meth:`build_rider`, with the count :meth:`settle_tentative` gives (the offline
        settler counts them as rejected, ``tentative_dropped``).
        """
        cat = category or self.policy.category
        segments, dropped = self.settle_tentative(list(segments))
        legs = self.stitch(segments)
        tails: list[Leg] = []
        if len(legs) > 1:
            seg_by_id = {s.event_id: s for s in segments}
            legs, tails = changes_bunched(
                legs, self.policy, lambda leg, stop: self._split_at(leg, stop, seg_by_id)
            )
        legs = changes_beside(legs, self.policy, self._board_at, self._together)
        legs = self.join_trips([*settle_overlaps(legs, self.policy), *tails])
        held = [leg for leg in legs if not chargeable(leg)]
        to_charge = [leg for leg in legs if chargeable(leg)]
        out: list[Journey] = []
        by_id: dict[int, Leg] = {}
        fare_legs: list[FareLeg] = []
        for leg in to_charge:
            fl = leg.fare_leg()
            by_id[id(fl)] = leg
            fare_legs.append(fl)
        # one leg is one journey; price() looks up its rule set as grouping would have
        groups = [fare_legs] if len(fare_legs) == 1 else self.engine.journeys(fare_legs)
        seen: frozenset[str] | None = None
        for grouped in groups:
            journey_legs = tuple(by_id[id(fl)] for fl in grouped)
            group = grouped
            if len(journey_legs) > 1:
                if seen is None:
                    seen = _boardings_seen(segments)
                moved = self.transfer_stops(journey_legs, seen)
                if moved != journey_legs:
                    journey_legs, group = moved, [leg.fare_leg() for leg in moved]
            quote = self.engine.price(group, cat)
            out.append(_journey(journey_legs, quote.fare_krw, True, cat, quote))
        for leg in held:
            out.append(_journey((leg,), 0, False, cat, None))
        if len(out) > 1:
            out.sort(key=Journey.sort_key)
        return out, dropped

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
    # the hash of the rider id and each event id, each after a NUL, as UTF-8
    ids = [legs[0].rider_id]
    for leg in legs:
        ids.extend(leg.event_ids)
    if len(legs) == 1 and not legs[0].flags:
        flags: tuple[str, ...] = ()
    else:
        flags = tuple(sorted({f for leg in legs for f in leg.flags}))
    return Journey(
        journey_id=hashlib.sha256("\x00".join(ids).encode()).hexdigest()[:32],
        rider_id=legs[0].rider_id,
        legs=legs,
        fare_krw=fare,
        charged=charged,
        category=category,
        flags=flags,
        quote=quote,
    )


def _boardings_seen(segments: Iterable[Segment]) -> frozenset[str]:
    """Event ids of the segments whose boarding the edge saw at a door.

    ``boarded`` and not a tentative piece (:mod:`backend._tentative` makes the earliest
    piece it keeps ``boarded`` and leaves its ``co``): such a leg was first heard moving.
    """
    return frozenset(s.event_id for s in segments if s.start_cause == "boarded" and s.co is None)


_ON_FOOT_M_S = 2.0
"""Faster than anyone walks between two stops (a brisk walk is about 1.5 m/s): a rider
who got from one stop to the next in less time than this allows rode a bus there."""

_TOGETHER_S = 120.0
"""How far apart in time two buses may reach a stop and still be there together (the
rider's bus placed by its trip's distances between its boarding and alighting: +-55 s
against the truth's door times on tuning transfer_bunched/transfer_two_buses, cells 1,
2, 11, seeds 1-3)."""

_POSITION_SLACK_M = 30.0
"""GNSS and odometer error allowed when a stop is placed from the distance travelled."""


def _heard(chain: Sequence[Segment]) -> tuple[tuple[float, float, float], ...]:
    """``(start_t, end_t, rssi_med)`` of each segment with a median RSSI."""
    if len(chain) == 1:
        s = chain[0]
        return () if s.rssi_med is None else ((s.start_t, s.end_t, s.rssi_med),)
    return tuple([(s.start_t, s.end_t, s.rssi_med) for s in chain if s.rssi_med is not None])


def _counted(chain: Sequence[Segment]) -> tuple[tuple[float, float, int], ...]:
    """``(start_t, end_t, n_adv)`` of each segment with a count of adverts decoded."""
    if len(chain) == 1:
        s = chain[0]
        return () if s.n_adv is None else ((s.start_t, s.end_t, s.n_adv),)
    return tuple([(s.start_t, s.end_t, s.n_adv) for s in chain if s.n_adv is not None])


def _under(chain: Sequence[Segment]) -> tuple[tuple[float, float, float], ...]:
    """``(start_t, end_t, riders_lvl - rssi_med)`` of each segment with both levels."""
    return tuple(
        [
            (s.start_t, s.end_t, s.riders_lvl - s.rssi_med)
            for s in chain
            if s.riders_lvl is not None and s.rssi_med is not None
        ]
    )


_SEGMENT_ORDER = operator.attrgetter("start_t", "bus_id", "seq")
""":meth:`Segment.sort_key`, made in C."""

_end_key = operator.attrgetter("end_t", "seq")
"""A segment's end, then its seq: the latest-ending segment of a chain is its last."""


def _first_stop(
    seq: tuple[tuple[str, ...], tuple[float, ...]] | None, chain: Sequence[Segment]
) -> str | None:
    """The boarding stop of a chain: its earliest start stop in the trip's stop order.

    Any named start is a stop the rider was aboard at; without a stop order, the
    earliest named start in time.
    """
    named = [s.start_stop_id for s in chain if s.start_stop_id is not None]
    if len(named) == 1:
        return named[0]  # the one named, on the trip or not
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
    if seq is None:
        return True
    stops = seq[0]
    try:
        i = stops.index(board)
    except ValueError:
        return True  # a stop off the trip: nothing to say
    try:
        stops.index(alight, i + 1)
    except ValueError:
        return alight not in stops[:i]  # before the boarding stop, or off the trip
    return True


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
