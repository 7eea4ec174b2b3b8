"""Tentative segments: pieces of one rider's ride the edge could not confirm rid by rid.

A ``tentative`` fare event (``start.cause``) is a rid the edge never confirmed aboard on
its own evidence, but which was alive across a rid rotation (its interval ended while it
was a candidate, or it was first heard soon after its interval began) and moved with the
bus: ``evidence.co_n`` co-movement points whose smoothed level lay between ``co_lo`` and
``co_hi`` dBm. A weak token's evidence splits at the rotation, and where its BLE address
changes with its rid (a fob) the edge cannot link the two rids; the backend can, because
it knows whose rids they are.

:func:`settle_tentative` runs on one rider's resolved segments before they are stitched:

* a tentative segment is **never charged alone**, unless heard **door to door**: a lone
  piece first heard at a stop, moving with the bus at two or more points, lost as the
  doors opened at another stop, over at least half the way between them, not far under
  the riders (:func:`_door_to_door`; the caller gives the trip's distances); or **carried**: pieces
  alone, the rider's only evidence on that bus trip, moving with the bus at two or more
  points near the riders' level for ``tentative_carried_m`` or more, with no confirmed
  segment of the rider on another bus then, charged to the first stop at or past where
  the bus last heard them (:func:`_carried_to`; the caller gives the trip's stops);
* tentative pieces on one bus and trip (route, without a trip id) that **adjoin across a
  rotation** (consecutive intervals, the later one starting at most
  ``tentative_gap_s`` after the earlier ended, overlapping by at most ``stitch_gap_s``)
  are joined, transitively, with each other and with any confirmed segment of the rider
  that adjoins them the same way; so is a rid's own piece that **touches** (within
  ``stitch_gap_s``) that rid's confirmed segment (:func:`_touch`: the edge closed the
  ride at a stop by the fade rules, then heard the rid moving with the bus again), unless
  the piece overlaps a confirmed segment of the rider on another bus (:func:`_elsewhere`);
  so overlapping, a piece of a rid this bus also confirmed is not joined across the
  rotation either (the bus heard beside the rider's: issue 11);
* a joined group with a confirmed segment keeps its tentative pieces (the rider was
  aboard: they extend the leg to the stop where the earlier piece began or the later one
  ended); a group of tentative pieces only is kept if their points add up to
  ``tentative_points`` (the edge's ``sparse_adverts``) within ``tentative_spread_db``
  (the edge's ``sparse_fall_db``) of one another: what the edge needs to confirm one rid;
* pieces kept only by their own sum that overlap a confirmed segment of the rider on
  another bus (by more than ``replay_overlap_s``, or one within the other) are dropped:
  a bus beside the rider's hears them as sparsely as a weak rider, and its summed leg
  would make the overlap rules hold the true one;
* kept pieces become ordinary segments: the earliest ``boarded`` (when tentative), the
  others ``continued``; the journey builder stitches them into one leg (board stop from
  the earlier piece, alight stop from the later; without a trip id, a member that ended
  ``alighted`` before the next rid's piece is read as ``rotated``, :func:`_one_ride`).
  The others are dropped and counted.

Pure and deterministic; riders never mix (the caller passes one rider's segments).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

from backend._legs import JourneyPolicy, Segment, union_distance

__all__ = ["TENTATIVE", "Carried", "Hop", "dropped_tentative", "settle_tentative"]

TENTATIVE = "tentative"

Hop = Callable[[Segment], "float | None"]
"""The distance (m) along a segment's trip from its start stop to its end stop, or ``None``."""

Carried = Callable[[Segment, float], "str | None"]
"""The first stop of a segment's trip at or past the point the bus reached after going that
many metres from the segment's start stop (a rider aboard there alights there or later), or
``None`` (no trip order, the start stop off the trip, or past the last stop)."""

DOOR_TO_DOOR_COVER = 0.5
"""A lone piece heard door to door is kept when the bus travelled at least this share of
the way between its two stops while it was heard (:func:`_door_to_door`)."""


def _key(s: Segment) -> tuple[str, str | None, str | None]:
    return (s.bus_id, s.trip_id, None if s.trip_id else s.route_id)


def _adjoin(a: Segment, b: Segment, policy: JourneyPolicy) -> bool:
    """Whether ``a`` and ``b`` (one bus trip) are consecutive rids of one ride.

    Or one rid's confirmed segment and its own tentative piece touching it
    (:func:`_touch`).
    """
    if a.interval > b.interval:
        a, b = b, a
    if b.interval == a.interval:
        return _touch(a, b, policy)
    if b.interval != a.interval + 1:
        return False
    gap = b.start_t - a.end_t
    return -policy.stitch_gap_s <= gap <= policy.tentative_gap_s


def _touch(a: Segment, b: Segment, policy: JourneyPolicy) -> bool:
    """Whether one rid's confirmed segment and its own tentative piece touch (one ride).

    ``a`` and ``b``: one rid on one bus trip; touching: within ``stitch_gap_s``.

    The edge closed the rid's ride at a stop by the fade rules (a weak token silent as the
    doors opened), then heard it moving with the bus again, never confirmed: the piece
    starts where the segment ended (one rid's segments never overlap). Segments of one
    rider on one bus trip that touch are one leg (issue 11). Two pieces of one rid are
    not summed (each failed alone; no rotation split the evidence).
    """
    if (a.start_cause == TENTATIVE) == (b.start_cause == TENTATIVE):
        return False
    first, later = sorted((a, b), key=Segment.sort_key)
    return abs(later.start_t - first.end_t) <= policy.stitch_gap_s


def settle_tentative(
    segments: Sequence[Segment],
    policy: JourneyPolicy,
    hop: Hop | None,
    carried: Carried | None = None,
) -> tuple[list[Segment], int]:
    """One rider's segments with the tentative ones kept (as rides) or dropped.

    ``hop`` gives the distance between a piece's stops along its trip (a lone piece heard
    door to door: :func:`_door_to_door`); with ``None`` a lone piece is never kept. Given
    explicitly, never by default: the settlement calls this through
    :meth:`backend._journeys.JourneyBuilder.settle_tentative`, which passes the trip's
    distances (``None`` is for tests of the rule without them) and ``carried``, the stop
    a rider carried that far alights at the earliest (:func:`_carried_to`; ``None``: the
    rule is off).

    Returns:
        The segments to stitch (confirmed ones unchanged, but for an ``alighted`` end
        followed by a kept piece without a trip id: :func:`_one_ride`) and how many
        tentative segments were dropped.
    """
    if not any(s.start_cause == TENTATIVE for s in segments):
        return list(segments), 0
    out = [s for s in segments if s.start_cause != TENTATIVE]
    firm = out[:]
    dropped = 0
    for cluster, pieces in _clusters(segments, firm, policy):
        if _kept(cluster, pieces, policy, hop) and not _beaten(cluster, pieces, firm, policy):
            first = cluster[0]  # (sorted by start)
            kept = [
                dataclasses.replace(s, start_cause="boarded" if s is first else "continued")
                for s in pieces
            ]
        elif (
            stop := _carried_to(cluster, pieces, firm, policy, hop=hop, carried=carried)
        ) is not None:
            first = cluster[0]
            last = max(cluster, key=_ends)
            kept = [
                dataclasses.replace(
                    s,
                    start_cause="boarded" if s is first else "continued",
                    end_stop_id=stop if s is last else s.end_stop_id,
                )
                for s in pieces
            ]
        else:
            dropped += len(pieces)
            continue
        if first.trip_id is None:
            kept = _one_ride(cluster, kept, out, policy)
        out.extend(kept)
    return out, dropped


def dropped_tentative(
    segments: Sequence[Segment],
    policy: JourneyPolicy,
    hop: Hop | None,
    carried: Carried | None = None,
) -> list[tuple[list[Segment], list[Segment]]]:
    """The joined groups whose tentative pieces :func:`settle_tentative` drops.

    Given the same ``hop`` (:meth:`backend._journeys.JourneyBuilder.dropped_tentative`
    passes the one :meth:`~backend._journeys.JourneyBuilder.settle_tentative` does).

    Each as ``(group, its tentative pieces)``, the group sorted by start. A group is a
    connected set of one rider's segments on one bus trip: dropping it whole leaves every
    other group, and so :func:`settle_tentative`'s result, as it was. That is what makes
    the links of dropped pieces deletable (``[settlement] tentative_link_days``): without
    their rows, the rider's journeys are built the same.
    """
    if not any(s.start_cause == TENTATIVE for s in segments):
        return []
    firm = [s for s in segments if s.start_cause != TENTATIVE]
    return [
        (cluster, pieces)
        for cluster, pieces in _clusters(segments, firm, policy)
        if not (_kept(cluster, pieces, policy, hop) and not _beaten(cluster, pieces, firm, policy))
        and _carried_to(cluster, pieces, firm, policy, hop=hop, carried=carried) is None
    ]


def _clusters(
    segments: Sequence[Segment], firm: Sequence[Segment], policy: JourneyPolicy
) -> Iterator[tuple[list[Segment], list[Segment]]]:
    """The joined groups of segments with tentative pieces, and their pieces.

    Per bus trip (:func:`_key`), the segments joined transitively by :func:`_adjoin`,
    unless the piece lies within a confirmed ride on another bus (:func:`_elsewhere`)
    and is its rid's own piece touching its confirmed segment, or a piece of a rid this
    bus also confirmed: such a piece is not the next rid's predecessor (the rid's
    confirmed segment is); it is this bus heard beside the rider's (issue 11: G6000
    drawing up beside 17 heard a transfer rider 12 s at BD003, two stops before the
    change; linked to the next rid 555 s on it made G6000's leg board at BD003, held
    with 17's).
    """
    by_trip: dict[tuple[str, str | None, str | None], list[Segment]] = {}
    for s in segments:
        by_trip.setdefault(_key(s), []).append(s)
    for group in by_trip.values():
        tent = [s for s in group if s.start_cause == TENTATIVE]
        if not tent:
            continue
        group.sort(key=Segment.sort_key)
        confirmed = {s.interval for s in group if s.start_cause != TENTATIVE}
        parent = list(range(len(group)))
        for i, a in enumerate(group):
            for j in range(i + 1, len(group)):
                b = group[j]
                if (
                    TENTATIVE in (a.start_cause, b.start_cause)
                    and _adjoin(a, b, policy)
                    and not any(
                        # (a rid's own piece touching its confirmed segment included:
                        # :func:`_adjoin` joins one rid's segments only so)
                        p.interval in confirmed and _elsewhere(p, firm, policy)
                        for p in (a, b)
                        if p.start_cause == TENTATIVE
                    )
                ):
                    parent[_find(parent, j)] = _find(parent, i)
        clusters: dict[int, list[Segment]] = {}
        for i, s in enumerate(group):
            clusters.setdefault(_find(parent, i), []).append(s)
        for cluster in clusters.values():
            pieces = [s for s in cluster if s.start_cause == TENTATIVE]
            if pieces:
                yield cluster, pieces


def _beaten(
    cluster: Sequence[Segment],
    pieces: Sequence[Segment],
    firm: Sequence[Segment],
    policy: JourneyPolicy,
) -> bool:
    """Whether tentative pieces alone are contradicted by a confirmed ride on another bus.

    A bus driving beside the rider's bus from a shared stop hears the rider as a
    candidate moving with it, as sparsely as a weak rider; summed, its pieces would be a
    leg overlapping the rider's confirmed one, and the overlap rules would hold both
    (the rider charged nothing). Pieces never confirmed are the weakest evidence there
    is: they lose to any confirmed segment of the rider on another bus overlapping them
    by more than ``replay_overlap_s``, or lying within them or they within it.
    """
    if len(pieces) < len(cluster):
        return False  # (confirmed on this bus too: the overlap rules decide, as before)
    return _elsewhere(cluster, firm, policy)


def _elsewhere(
    span: Segment | Sequence[Segment], firm: Sequence[Segment], policy: JourneyPolicy
) -> bool:
    """Whether a confirmed segment of the rider on another bus overlaps ``span``.

    By more than ``replay_overlap_s``, or one lies within the other (:func:`_beaten`).
    Also asked of a rid's own piece touching its confirmed segment (:func:`_touch`): a
    rider who alighted and boarded a bus driving behind is heard moving with the first
    bus on the same rid.
    """
    segs = [span] if isinstance(span, Segment) else span
    bus = segs[0].bus_id
    a = min(s.start_t for s in segs)
    b = max(s.end_t for s in segs)
    for s in firm:
        if s.bus_id == bus:
            continue
        common = min(b, s.end_t) - max(a, s.start_t)
        if common > policy.replay_overlap_s or (
            common > 0.0
            and ((a >= s.start_t and b <= s.end_t) or (s.start_t >= a and s.end_t <= b))
        ):
            return True
    return False


def _one_ride(
    cluster: Sequence[Segment], kept: list[Segment], out: list[Segment], policy: JourneyPolicy
) -> list[Segment]:
    """A kept cluster without a trip id as one ride for the stitcher.

    Without a trip id the legs of one ride cannot be joined after the overlap rules
    (:meth:`~backend._journeys.JourneyBuilder.join_trips` needs the trip): a member that
    ended ``alighted`` (the fade rules at a stop) more than ``stitch_gap_s`` before the
    rider's next rid adjoining it began elsewhere would leave that next piece a leg of
    its own, charged alone. The rider's next rid moved with the bus: they did not
    alight, their rid rotated (``rotated``, as the edge writes a rotation aboard).
    Returns ``kept`` with those ends rewritten; confirmed members are rewritten in ``out``.
    """
    early = {
        a.event_id
        for a in cluster
        for b in cluster
        if a.end_cause == "alighted"
        and b.interval == a.interval + 1
        and b.end_t > a.end_t
        and TENTATIVE in (a.start_cause, b.start_cause)
        and _adjoin(a, b, policy)
    }
    if not early:
        return kept

    def ride_on(s: Segment) -> Segment:
        return dataclasses.replace(s, end_cause="rotated") if s.event_id in early else s

    ids = {id(s) for s in cluster}
    out[:] = [ride_on(s) if id(s) in ids else s for s in out]
    return [ride_on(s) for s in kept]


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _kept(
    cluster: Sequence[Segment], pieces: Sequence[Segment], policy: JourneyPolicy, hop: Hop | None
) -> bool:
    if len(cluster) == 1:
        return hop is not None and _door_to_door(cluster[0], policy, hop)
    co = _co_summed(pieces)
    if co is None:
        return False  # no evidence to sum
    if len(pieces) < len(cluster):
        return True  # the rider was confirmed aboard on a rid adjoining these
    points, spread = co
    return points >= policy.tentative_points and spread <= policy.tentative_spread_db


def _co_summed(pieces: Sequence[Segment]) -> tuple[int, float] | None:
    """The pieces' co-movement points added up, and the spread of their levels (dB).

    ``None`` when a piece has no co-movement evidence (nothing to sum).
    """
    cos = [s.co for s in pieces if s.co is not None]
    if len(cos) < len(pieces):
        return None
    if not cos:
        return 0, 0.0
    return sum(c[0] for c in cos), max(c[2] for c in cos) - min(c[1] for c in cos)


def _door_to_door(piece: Segment, policy: JourneyPolicy, hop: Hop) -> bool:
    """Whether a lone tentative piece is a ride of its own, heard from door to door.

    The edge first heard the rid at a stop (``start.stop_id``), heard it move with the bus
    at two or more co-movement points (``co_n``, levels within ``tentative_spread_db``),
    and lost it as the doors opened at a later stop (``alighted`` at another named stop),
    the bus having travelled at least :data:`DOOR_TO_DOOR_COVER` of the way between the
    two stops along its trip while it heard it. A weak rider riding one hop is heard so
    (too sparsely for the edge to confirm: issue 11, weak cells); someone left at the
    first stop, walking to the next or met near it is heard near one end only (tuning
    seeds 1-2, cells 2, 10, 20, full: such pieces covered 12-42 % of the way, the missed
    riders' 61-100 %). A rider of a bus beside heard door to door is dropped as before
    when their own bus confirmed them (:func:`_beaten`).

    And not heard through two shells (thirty-seventh pass): its co-movement levels at most
    ``tentative_carried_under_db`` below the riders its bus heard (``riders_lvl``), the
    bar the carried rule asks (none when the bus had no riders' level). A car that drew
    up at a stop as the bus left and drove beside it to the next stop is heard so, door
    to door, 35 dB under the riders (scratch worlds of ``bus_alongside_red_light`` with
    five times the cars, tuning seed 2: r-02052, 14 points at -83..-94 dBm, BD003 ->
    BD006 on the 17, charged); riders' pieces lie at most 28.5 dB under them.
    """
    co = piece.co
    if (
        co is None
        or co[0] < 2
        or co[2] - co[1] > policy.tentative_spread_db
        or piece.end_cause != "alighted"
    ):
        return False  # (co is None only for an event validation refuses as tentative)
    lvl = piece.riders_lvl
    if lvl is not None and (co[1] + co[2]) / 2.0 < lvl - policy.tentative_carried_under_db:
        return False  # (a vehicle beside the bus, through its shell and the bus's)
    way = hop(piece)  # None: a stop unknown or off the trip; 0: the same stop
    return way is not None and way > 0.0 and piece.distance_m >= DOOR_TO_DOOR_COVER * way


def _carried_to(
    cluster: Sequence[Segment],
    pieces: Sequence[Segment],
    firm: Sequence[Segment],
    policy: JourneyPolicy,
    *,
    hop: Hop | None,
    carried: Carried | None,
) -> str | None:
    """Where a group of tentative pieces alone is charged to as **carried**, or ``None``.

    What the backend alone knows lets it keep a rider's pieces that neither the sum nor
    door to door keeps (issue 11, weak cells: a one-hop rider heard moving with the bus at
    two or three co-movement points, lost before the next doors opened or rotated on the
    way, the rider's only trace of that ride): the group is kept when

    * it is the rider's only evidence on that bus trip (no confirmed segment of the rider
      there) and it names the stop it was a candidate of;
    * its pieces moved with the bus: co-movement points adding up to 2 or more, at levels
      within ``tentative_spread_db`` of one another and, each piece, at most
      ``tentative_carried_under_db`` below the riders its bus heard (``riders_lvl``; a car
      beside the bus is heard through two shells, 36-40 dB below them);
    * the bus went ``tentative_carried_m`` or more while it heard them (the union of the
      pieces' distances);
    * the last piece did not end ``lost``: it ended ``rotated`` (heard moving with the bus
      until its rid's interval ended: the rotation, not the token leaving, ended it) or
      ``alighted`` (it faded as doors opened). A ``lost`` end is a live rid the bus
      stopped hearing while it moved, no doors open: what the edge itself reads, for a
      rid it confirmed, as someone in a vehicle alongside and drops unless it rode
      ``lost_min_m`` (2 km), far more than any carried group (issue 11: the people not
      on the bus the rule charged, full-scale strong cells, were lone pieces ending so);
    * and no confirmed segment of the rider on another bus overlaps them at all: a rider
      on another bus is not on this one (nor one on this bus under another trip key,
      ``trip_id`` ``None``: that ride is charged already).

    The leg then ends at the stop the last piece alighted at when that is a later stop
    of the trip (``hop``: the edge saw the doors open there), else at the first stop of
    the trip at or past the point the bus had reached when it last heard them
    (``carried``): a rider aboard between two stops alights at the next one or later, so
    this is the least ride consistent with the hearing. Only the
    rider's confirmed segments are asked, never another group's pieces: dropping a dropped
    group's rows leaves this decision as it was (:func:`dropped_tentative`).
    """
    if carried is None or policy.tentative_carried_m <= 0.0 or len(pieces) < len(cluster):
        return None
    first = cluster[0]
    co = _co_summed(pieces)
    if first.start_stop_id is None or co is None or co[0] < 2:
        return None
    if co[1] > policy.tentative_spread_db:
        return None
    for s in pieces:
        assert s.co is not None
        if s.riders_lvl is None or (s.co[1] + s.co[2]) / 2.0 < (
            s.riders_lvl - policy.tentative_carried_under_db
        ):
            return None
    key = _key(first)
    a = min(s.start_t for s in cluster)
    b = max(s.end_t for s in cluster)
    for s in firm:
        if _key(s) == key:
            return None  # (confirmed on this trip: the rules above decide)
        if min(b, s.end_t) > max(a, s.start_t):
            return None  # (on another bus, or on this one under another trip key)
    last = max(cluster, key=_ends)
    if last.end_cause == "lost":
        return None  # (vanished while the bus moved: what the edge drops as alongside)
    travelled = union_distance(cluster)
    if travelled < policy.tentative_carried_m:
        return None
    if last.end_cause == "alighted" and hop is not None:
        way = hop(dataclasses.replace(first, end_stop_id=last.end_stop_id))
        if way is not None and way > 0.0:  # (a later stop of the trip: as door to door)
            return last.end_stop_id
    return carried(first, travelled)


def _ends(s: Segment) -> tuple[float, float, str, int]:
    """The order in which segments end (the last one names the leg's alighting)."""
    return (s.end_t, *s.sort_key())
