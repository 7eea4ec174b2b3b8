"""Tentative segments (issue 11): pieces of one rider's ride summed across a rid rotation.

A ``tentative`` fare event is a rid the edge never confirmed alone; settlement keeps it
only joined with the same rider's adjoining rid on the same bus trip, when together they
meet what the edge needs to confirm one rid (docs/backend.md, "Tentative segments").
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from backend._fare_engine import FareEngine
from backend._fare_rules import load_rules
from backend._journeys import JourneyBuilder, JourneyPolicy
from backend._legs import Segment, evidence_co, evidence_count
from backend._resolve import Resolver, RiderKeyring
from backend._settle import Settler
from backend._tentative import dropped_tentative, settle_tentative
from busbell import (
    ChainError,
    ContractError,
    HashChain,
    event_hash,
    load_gtfs,
    read_devices,
    validate_event,
)
from busbell._fare_types import convert_event
from busbell._token import INTERVAL_S
from tests.factories.backend_world import T0, World

CARRIED = JourneyPolicy(tentative_carried_m=300.0)
"""The carried rule at its measured setting, the default (docs/backend.md, Carried)."""

BOUNDARY = (int(T0 // INTERVAL_S) + 1) * INTERVAL_S
"""A rid rotation: the rider's first rid ends here, the second begins."""


def _piece(
    world: World,
    rider: str,
    start: tuple[float, str | None, str],
    end: tuple[float, str | None, str],
    *,
    co: tuple[int, float, float] | None = (2, -92.0, -89.0),
    bus: str = "bus-01",
    trip: str | None = "T1",
    distance: float = 800.0,
    riders_lvl: float | None = None,
) -> dict[str, Any]:
    fields = world.segment_fields(
        rider,
        route_id="R1",
        trip_id=trip,
        start=start,
        end=end,
        distance_m=distance,
        riders_lvl=riders_lvl,
    )
    if co is not None:
        fields["evidence"].update({"co_n": co[0], "co_lo": co[1], "co_hi": co[2]})
    return world.buses[bus].emit(fields)


def _halves(
    world: World,
    rider: str,
    co1: tuple[int, float, float] = (2, -92.0, -89.0),
    co2: tuple[int, float, float] = (2, -91.0, -88.0),
) -> list[dict[str, Any]]:
    """Boarded S02 on its old rid, alighted S06 on its new one; neither rid confirmed."""
    return [
        _piece(
            world,
            rider,
            (BOUNDARY - 200.0, "S02", "tentative"),
            (BOUNDARY - 3.0, None, "rotated"),
            co=co1,
        ),
        _piece(
            world,
            rider,
            (BOUNDARY + 60.0, "S03", "tentative"),
            (BOUNDARY + 400.0, "S06", "alighted"),
            co=co2,
        ),
    ]


def _settle(world: World, events: list[dict[str, Any]]) -> Any:
    feed = load_gtfs(world.gtfs)
    ring = RiderKeyring.from_token_keys(sorted(world.token_keys.items()))
    builder = JourneyBuilder(FareEngine(load_rules(timezone=feed.timezone)), feed, CARRIED)
    s = Settler(read_devices(world.devices_csv), Resolver(ring), builder)
    for e in events:
        s.feed_line(json.dumps(e))
    return s.finish()


def test_two_tentative_halves_of_one_rider_are_one_leg(tmp_path: Path) -> None:
    world = World(tmp_path, riders=2, buses=1)
    res = _settle(world, _halves(world, "r0001"))
    (j,) = res.journeys
    assert j.charged
    assert j.rider_id == "r0001"
    (leg,) = j.legs
    assert (leg.board_stop_id, leg.alight_stop_id) == ("S02", "S06")  # earlier's, later's
    assert "merged" not in leg.flags
    assert "partial" not in leg.flags
    assert res.stats.rejected == {}
    assert res.stats.accepted == 2


def test_a_lone_tentative_segment_charges_nobody(tmp_path: Path) -> None:
    world = World(tmp_path, riders=2, buses=1)
    events = [_halves(world, "r0001")[0]]
    res = _settle(world, events)
    assert res.journeys == []
    assert res.stats.rejected == {"tentative_dropped": 1}
    assert res.stats.accepted == 0


def _door_to_door(
    world: World,
    rider: str = "r0001",
    *,
    start: tuple[float, str | None, str] = (T0 + 100.0, "S03", "tentative"),
    end: tuple[float, str | None, str] = (T0 + 220.0, "S04", "alighted"),
    co: tuple[int, float, float] | None = (2, -94.0, -92.0),
    distance: float = 766.0,
    riders_lvl: float | None = None,
) -> dict[str, Any]:
    """One rid heard from S03's doors to S04's (800 m apart), never confirmed.

    Full scale, tuning cell 10 seed 1, ``quiet_route``, r-00033: 13 adverts at -93 dBm, 19
    dB under the riders, 2 co-movement points, the bus 766 m on from BD006 to BD008 while
    it heard them: no rotation to sum across, the ride was missed.
    """
    return _piece(world, rider, start, end, co=co, distance=distance, riders_lvl=riders_lvl)


def test_a_lone_piece_heard_door_to_door_is_a_ride(tmp_path: Path) -> None:
    world = World(tmp_path, riders=2, buses=1)
    res = _settle(world, [_door_to_door(world)])
    (j,) = res.journeys
    assert j.charged
    (leg,) = j.legs
    assert (leg.board_stop_id, leg.alight_stop_id) == ("S03", "S04")
    assert res.stats.rejected == {}
    assert res.stats.accepted == 1
    # half the way between the stops is enough (400 of 800 m)
    world = World(tmp_path / "half", riders=2, buses=1)
    assert _settle(world, [_door_to_door(world, distance=400.0)]).journeys[0].charged
    # 30 dB under the riders is not too far (no riders' level: no bar, as above)
    for name, lvl in (("bar", -63.0), ("near", -74.0)):
        world = World(tmp_path / name, riders=2, buses=1)
        assert _settle(world, [_door_to_door(world, riders_lvl=lvl)]).journeys[0].charged


@pytest.mark.parametrize(
    ("case", "kw"),
    [
        ("heard under half the way", {"distance": 399.0}),
        ("one co-movement point", {"co": (1, -94.0, -92.0)}),
        ("levels spread 13 dB", {"co": (2, -94.0, -81.0)}),
        ("first heard off a stop", {"start": (T0 + 100.0, None, "tentative")}),
        ("lost, not seen leaving", {"end": (T0 + 220.0, "S04", "lost")}),
        ("rid rotated", {"end": (T0 + 220.0, None, "rotated")}),
        ("left at the stop it was heard at", {"end": (T0 + 220.0, "S03", "alighted")}),
        ("alighted at no named stop", {"end": (T0 + 220.0, None, "alighted")}),
        ("a stop off the trip", {"end": (T0 + 220.0, "S99", "alighted")}),
        # a car that drew up as the bus left S03 and drove beside it to S04, heard
        # through its shell and the bus's (scratch world, tuning seed 2, r-02052)
        ("31 dB under the riders", {"riders_lvl": -62.0}),
    ],
)
def test_a_lone_piece_not_heard_door_to_door_charges_nobody(
    tmp_path: Path, case: str, kw: dict[str, Any]
) -> None:
    world = World(tmp_path, riders=2, buses=1)
    res = _settle(world, [_door_to_door(world, **kw)])
    assert res.journeys == [], case
    assert res.stats.rejected == {"tentative_dropped": 1}, case


def test_a_lone_piece_door_to_door_on_a_bus_beside_the_riders_ride_is_dropped(
    tmp_path: Path,
) -> None:
    # heard door to door on bus-02 beside bus-01, which confirmed the rider over the same
    # hop (tuning cell 10 seed 1, shared_stop_three_routes, r-00195): bus-01 is charged
    world = World(tmp_path, riders=2, buses=2)
    ride = world.buses["bus-01"].emit(
        world.segment_fields(
            "r0001",
            route_id="R1",
            trip_id="T1",
            start=(T0 + 90.0, "S03", "boarded"),
            end=(T0 + 230.0, "S04", "alighted"),
            distance_m=800.0,
        )
    )
    beside = _piece(
        world,
        "r0001",
        (T0 + 100.0, "S03", "tentative"),
        (T0 + 220.0, "S04", "alighted"),
        co=(2, -94.0, -92.0),
        bus="bus-02",
        trip="T2",
        distance=766.0,
    )
    res = _settle(world, [ride, beside])
    (j,) = res.journeys
    assert [leg.bus_id for leg in j.legs] == ["bus-01"]
    assert res.stats.rejected == {"tentative_dropped": 1}


def test_the_links_of_a_lone_piece_are_kept_when_it_is_a_ride(tmp_path: Path) -> None:
    # dropped_tentative (the online settlement's deletable links) agrees with
    # settle_tentative when both are given the trip's distances (what the builder's
    # methods, which every settlement path calls, pass), and not without them
    world = World(tmp_path, riders=2, buses=1)
    feed = load_gtfs(world.gtfs)
    builder = JourneyBuilder(FareEngine(load_rules(timezone=feed.timezone)), feed)
    seg = Segment.from_event(_door_to_door(world), "r0001")
    kept = dataclasses.replace(seg, start_cause="boarded")
    assert builder.settle_tentative([seg]) == ([kept], 0)
    assert builder.dropped_tentative([seg]) == []
    assert builder.build_rider_counted([seg])[1] == 0
    assert settle_tentative([seg], builder.policy, builder.tentative_hop) == ([kept], 0)
    assert dropped_tentative([seg], builder.policy, None) == [([seg], [seg])]
    assert settle_tentative([seg], builder.policy, None) == ([], 1)


def _carried(
    world: World,
    rider: str = "r0001",
    *,
    start: tuple[float, str | None, str] = (T0 + 100.0, "S03", "tentative"),
    end: tuple[float, str | None, str] = (T0 + 168.0, None, "rotated"),
    co: tuple[int, float, float] | None = (2, -93.7, -92.5),
    distance: float = 347.0,
    riders_lvl: float | None = -77.0,
    bus: str = "bus-01",
    trip: str | None = "T1",
) -> dict[str, Any]:
    """One rid heard moving with the bus from S03 for 347 m, then rotated, never confirmed.

    Full scale, tuning cell 24 seed 1, ``rush_hour_crowd``, r-00036 (BD008 -> BD009): 19
    adverts, 2 co-movement points at -93.7..-92.5 dBm, 16 dB under the riders (-77), the
    bus 347 m on from BD008 when its rid rotated; its next rid was never heard. The
    rider's only trace of the ride: missed before.
    """
    return _piece(
        world,
        rider,
        start,
        end,
        co=co,
        distance=distance,
        riders_lvl=riders_lvl,
        bus=bus,
        trip=trip,
    )


def test_a_lone_piece_carried_past_its_stop_is_charged_to_the_next_stop(tmp_path: Path) -> None:
    world = World(tmp_path, riders=2, buses=1)
    res = _settle(world, [_carried(world)])
    (j,) = res.journeys
    assert j.charged
    (leg,) = j.legs
    # aboard 347 m past S03 (S04 800 m on): it alights at S04 or later, charged to S04
    assert (leg.board_stop_id, leg.alight_stop_id) == ("S03", "S04")
    assert "lost" in leg.flags  # (not seen alighting: the lost policy prices it)
    assert res.stats.rejected == {}
    assert res.stats.accepted == 1
    # farther: the first stop at or past where the bus was (S03 + 1,250 m: S05)
    world = World(tmp_path / "far", riders=2, buses=1)
    res = _settle(world, [_carried(world, distance=1250.0)])
    assert [(x.board_stop_id, x.alight_stop_id) for x in res.journeys[0].legs] == [("S03", "S05")]
    # at a stop, within 30 m of it: that stop
    world = World(tmp_path / "at", riders=2, buses=1)
    res = _settle(world, [_carried(world, distance=1575.0)])
    assert [(x.board_stop_id, x.alight_stop_id) for x in res.journeys[0].legs] == [("S03", "S05")]
    # seen leaving at a stop short of half the way (door to door asks half): there
    world = World(tmp_path / "door", riders=2, buses=1)
    res = _settle(world, [_carried(world, end=(T0 + 168.0, "S04", "alighted"), distance=347.0)])
    assert [(x.board_stop_id, x.alight_stop_id) for x in res.journeys[0].legs] == [("S03", "S04")]


@pytest.mark.parametrize(("stop", "distance"), [("S02", 347.0), ("S99", 347.0), ("S02", 600.0)])
def test_a_piece_carried_seen_alighting_not_past_its_stop_is_charged_to_the_next_stop(
    tmp_path: Path, stop: str, distance: float
) -> None:
    """An ``alighted`` end at a stop before the piece's own (S02) or off its trip (S99) is
    no alighting the trip allows: the leg ends where the bus carried the rider (S04), as
    for a piece lost at its own stop, never S03 -> S02 (board after alight, held) or S03
    -> S99 (charged to a stop the trip does not serve). Nor is S03 -> S02 door to door
    at 600 m (``tentative_hop`` along T1 only, not R1's reverse pattern T1R)."""
    world = World(tmp_path, riders=2, buses=1)
    end = (T0 + 168.0, stop, "alighted")
    res = _settle(world, [_carried(world, end=end, distance=distance)])
    (j,) = res.journeys
    assert j.charged
    assert [(x.board_stop_id, x.alight_stop_id) for x in j.legs] == [("S03", "S04")]


def _fob_pieces(world: World, second_end: tuple[str, str]) -> list[dict[str, Any]]:
    """A fob's two rids' pieces across the boundary, 2 + 1 points, 317 + 328 m; the later
    ending at ``second_end`` (stop, cause)."""
    b = BOUNDARY
    stop, cause = second_end
    return [
        _carried(
            world,
            start=(b - 54.0, "S03", "tentative"),
            end=(b - 1.0, None, "rotated"),
            co=(2, -94.0, -92.1),
            distance=317.0,
            riders_lvl=-74.0,
        ),
        _carried(
            world,
            start=(b + 12.0, "S03", "tentative"),
            end=(b + 68.0, stop, cause),
            co=(1, -94.0, -92.1),
            distance=328.0,
            riders_lvl=-74.0,
        ),
    ]


def test_two_rids_pieces_carried_are_one_leg_with_fewer_points_than_the_sum_asks(
    tmp_path: Path,
) -> None:
    """Cell 24 seed 1 ``token_clock_drift`` r-00057 (BD006 -> BD007): a fob's two rids, 2 +
    1 points (the sum asks 4), 317 + 328 m, the later seen leaving at BD007."""
    world = World(tmp_path, riders=2, buses=1)
    res = _settle(world, _fob_pieces(world, ("S04", "alighted")))
    (j,) = res.journeys
    assert [(x.board_stop_id, x.alight_stop_id) for x in j.legs] == [("S03", "S04")]
    assert res.stats.rejected == {}
    # the later rid lost while the bus moved, not seen leaving: the group is not carried
    world = World(tmp_path / "lost", riders=2, buses=1)
    res = _settle(world, _fob_pieces(world, ("S03", "lost")))
    assert res.journeys == []
    assert res.stats.rejected == {"tentative_dropped": 2}


@pytest.mark.parametrize(
    ("case", "kw"),
    [
        ("the bus went under 300 m", {"distance": 299.0}),
        ("one co-movement point", {"co": (1, -93.7, -92.5)}),
        ("levels spread 13 dB", {"co": (2, -94.0, -81.0)}),
        # a car occupant beside the bus (small cells 1 and 11 seed 3, quiet_route,
        # r-00032: 418 m, 40 and 36 dB under the riders)
        ("31 dB under the riders", {"co": (2, -108.5, -107.5)}),
        # lost: a live rid the bus stopped hearing while it moved, no doors open (full
        # scale, tuning cell 1 seed 2, rush_hour_crowd, r-02887, never aboard: 310 m from
        # BD004, 2 points at -87.7..-77.5 dBm, the riders at -53; unseen seed 49, cells 1
        # and 11, the two people it charged); a rider lost so is dropped too (cell 22
        # seed 2 rush_hour_crowd r-00291: closed at BD003 by the fade rules, 328 m on)
        (
            "lost while the bus moved",
            {
                "end": (T0 + 187.0, "S03", "lost"),
                "co": (2, -87.7, -77.5),
                "distance": 310.0,
                "riders_lvl": -53.0,
            },
        ),
        ("lost at its stop, 328 m on", {"end": (T0 + 133.0, "S03", "lost"), "distance": 328.0}),
        ("no riders' level", {"riders_lvl": None}),
        ("first heard off a stop", {"start": (T0 + 100.0, None, "tentative")}),
        ("past the trip's last stop", {"distance": 30_000.0}),
        ("a stop off the trip", {"start": (T0 + 100.0, "S99", "tentative")}),
    ],
)
def test_a_lone_piece_not_carried_charges_nobody(
    tmp_path: Path, case: str, kw: dict[str, Any]
) -> None:
    world = World(tmp_path, riders=2, buses=1)
    res = _settle(world, [_carried(world, **kw)])
    assert res.journeys == [], case
    assert res.stats.rejected == {"tentative_dropped": 1}, case


def test_pieces_carried_are_not_charged_beside_the_riders_ride_on_another_bus(
    tmp_path: Path,
) -> None:
    """A rider on bus-02 is not on bus-01: a confirmed segment of theirs on another bus
    overlapping the piece at all (here 10 s) keeps it uncharged, and so does one on the
    piece's own trip (the rules for pieces beside a confirmed segment decide then)."""
    world = World(tmp_path, riders=2, buses=2)
    other = world.buses["bus-02"].emit(
        world.segment_fields(
            "r0001",
            route_id="R2",
            trip_id="T2",
            start=(T0 + 158.0, "S04", "boarded"),
            end=(T0 + 400.0, "S06", "alighted"),
            distance_m=1600.0,
        )
    )
    res = _settle(world, [_carried(world), other])
    (j,) = res.journeys
    assert [leg.bus_id for leg in j.legs] == ["bus-02"]
    assert res.stats.rejected == {"tentative_dropped": 1}
    world = World(tmp_path / "trip", riders=2, buses=1)
    mine = world.buses["bus-01"].emit(
        world.segment_fields(
            "r0001",
            route_id="R1",
            trip_id="T1",
            start=(T0 + 900.0, "S10", "boarded"),
            end=(T0 + 1150.0, "S12", "alighted"),
            distance_m=1600.0,
        )
    )
    res = _settle(world, [_carried(world), mine])
    assert [(x.board_stop_id, x.alight_stop_id) for j in res.journeys for x in j.legs] == [
        ("S10", "S12")
    ]
    assert res.stats.rejected == {"tentative_dropped": 1}


def _ride_without_trip(world: World) -> dict[str, Any]:
    """r0001 confirmed on bus-01 S03 -> S06, route R1, the bus with no trip assigned."""
    return world.buses["bus-01"].emit(
        world.segment_fields(
            "r0001",
            route_id="R1",
            trip_id=None,
            start=(T0 + 50.0, "S03", "boarded"),
            end=(T0 + 400.0, "S06", "alighted"),
            distance_m=2400.0,
        )
    )


def test_pieces_carried_within_the_riders_ride_on_the_same_bus_are_not_charged_again(
    tmp_path: Path,
) -> None:
    """The rider confirmed on bus-01 S03 -> S06 without a trip id (route R1), over the
    time its piece was heard on bus-01 trip T1: one ride, charged once (not S03 -> S06
    and again S03 -> S04: the trip keys differ, so only the overlap can tell)."""
    world = World(tmp_path, riders=2, buses=1)
    res = _settle(world, [_ride_without_trip(world), _carried(world)])
    assert [(x.board_stop_id, x.alight_stop_id) for j in res.journeys for x in j.legs] == [
        ("S03", "S06")
    ]
    assert res.stats.rejected == {"tentative_dropped": 1}


def test_the_carried_rule_is_off_with_tentative_carried_m_0(tmp_path: Path) -> None:
    world = World(tmp_path, riders=2, buses=1)
    feed = load_gtfs(world.gtfs)
    seg = Segment.from_event(_carried(world), "r0001")
    on = JourneyBuilder(FareEngine(load_rules(timezone=feed.timezone)), feed, CARRIED)
    off = JourneyBuilder(
        FareEngine(load_rules(timezone=feed.timezone)),
        feed,
        JourneyPolicy(tentative_carried_m=0.0),
    )
    kept = dataclasses.replace(seg, start_cause="boarded", end_stop_id="S04")
    assert on.settle_tentative([seg]) == ([kept], 0)
    assert on.dropped_tentative([seg]) == []  # (its link is kept: it is a ride)
    assert off.settle_tentative([seg]) == ([], 1)
    assert off.dropped_tentative([seg]) == [([seg], [seg])]
    # on by default, at 300 m, since a lost end no longer counts (docs/backend.md, Carried)
    default = JourneyBuilder(FareEngine(load_rules(timezone=feed.timezone)), feed)
    assert default.policy == CARRIED
    assert default.settle_tentative([seg]) == ([kept], 0)
    # without the trip's stops (the module function alone) the rule cannot place it
    assert settle_tentative([seg], on.policy, on.tentative_hop) == ([], 1)
    assert settle_tentative([seg], on.policy, on.tentative_hop, on.tentative_reach) == ([kept], 0)


def test_too_little_evidence_in_all_charges_nobody(tmp_path: Path) -> None:
    """One point on each side: 2 < 4 (the edge's sparse_adverts); or levels 20 dB apart."""
    world = World(tmp_path, riders=2, buses=1)
    thin = _halves(world, "r0001", (1, -90.0, -90.0), (1, -90.0, -90.0))
    apart = _halves(world, "r0002", (2, -92.0, -90.0), (2, -72.0, -70.0))
    res = _settle(world, thin + apart)
    assert res.journeys == []
    assert res.stats.rejected == {"tentative_dropped": 4}


def test_pieces_of_two_riders_are_never_summed(tmp_path: Path) -> None:
    """Rider 1's old rid and rider 2's new rid adjoin on one bus trip: nobody is charged."""
    world = World(tmp_path, riders=2, buses=1)
    a, _ = _halves(world, "r0001")
    _, b = _halves(world, "r0002")
    res = _settle(world, [a, b])
    assert res.journeys == []
    assert res.stats.rejected == {"tentative_dropped": 2}


def test_a_tentative_piece_extends_the_riders_confirmed_segment(tmp_path: Path) -> None:
    """The old rid never confirmed (boarded S02); the new rid confirmed, boarded S04."""
    world = World(tmp_path, riders=1, buses=1)
    early = _piece(
        world,
        "r0001",
        (BOUNDARY - 200.0, "S02", "tentative"),
        (BOUNDARY - 3.0, None, "rotated"),
        co=(1, -90.0, -90.0),
    )
    late = world.buses["bus-01"].emit(
        world.segment_fields(
            "r0001",
            route_id="R1",
            trip_id="T1",
            start=(BOUNDARY + 100.0, "S04", "boarded"),
            end=(BOUNDARY + 400.0, "S06", "alighted"),
            distance_m=1600.0,
        )
    )
    (j,) = _settle(world, [early, late]).journeys
    assert j.charged
    assert (j.legs[0].board_stop_id, j.legs[0].alight_stop_id) == ("S02", "S06")


@pytest.mark.parametrize("trip", ["T1", None])
def test_a_rids_own_piece_after_its_confirmed_segment_extends_it(
    tmp_path: Path, trip: str | None
) -> None:
    """One rid, no rotation: confirmed S02 -> S03 (closed ``alighted`` by the fade rules
    after a 40-s silence at S03), then heard moving with the bus again and sent as a
    tentative piece S03 -> S05 starting where the segment ended (a rid's segments
    touch). Small scale, tuning seed 2, weak token corner, ``token_clock_drift`` r-00004
    (BD004 -> BD006, charged BD004 -> BD005). Segments of one rider on one bus trip that
    touch are one leg; before, the piece was not summed (no rotation) and dropped."""
    world = World(tmp_path, riders=1, buses=1)
    t = BOUNDARY - 500.0
    ride = _piece(
        world, "r0001", (t, "S02", "boarded"), (t + 90.0, "S03", "alighted"), trip=trip, co=None
    )
    piece = _piece(
        world,
        "r0001",
        (t + 90.0, "S03", "tentative"),
        (t + 210.0, "S05", "alighted"),
        trip=trip,
        co=(3, -94.0, -84.0),
    )
    assert ride["interval"] == piece["interval"]
    res = _settle(world, [ride, piece])
    (j,) = res.journeys
    assert j.charged
    assert [(x.board_stop_id, x.alight_stop_id) for x in j.legs] == [("S02", "S05")]
    assert res.stats.rejected == {}


def test_a_rids_own_piece_on_a_bus_beside_its_next_ride_is_not_joined(tmp_path: Path) -> None:
    """The rider rode bus-01 S02 -> S03 and changed there to bus-02, which drove behind:
    bus-01 heard them moving with it on their old rid (a piece S03 -> S05 touching their
    confirmed segment). The piece lies within their confirmed ride on bus-02: it is
    dropped, each bus's leg charged as ridden."""
    world = World(tmp_path, riders=1, buses=2)
    t = BOUNDARY - 500.0
    ride = _piece(world, "r0001", (t, "S02", "boarded"), (t + 90.0, "S03", "alighted"), co=None)
    next_ride = _piece(
        world,
        "r0001",
        (t + 95.0, "S03", "boarded"),
        (t + 300.0, "S07", "alighted"),
        bus="bus-02",
        trip="T2",
        co=None,
    )
    piece = _piece(world, "r0001", (t + 90.0, "S03", "tentative"), (t + 210.0, "S05", "alighted"))
    res = _settle(world, [ride, next_ride, piece])
    legs = [(x.bus_id, x.board_stop_id, x.alight_stop_id) for j in res.journeys for x in j.legs]
    assert sorted(legs) == [("bus-01", "S02", "S03"), ("bus-02", "S03", "S07")]
    assert res.stats.rejected == {"tentative_dropped": 1}


@pytest.mark.parametrize("confirmed", [False, True])
def test_without_a_trip_id_pieces_after_an_alighting_are_one_leg(
    tmp_path: Path, confirmed: bool
) -> None:
    """No trip id; the old rid ended ``alighted`` at S03 by the fade rules (tentative, or
    confirmed), the new rid's piece began at S04 100 s after: before, the new piece was a
    leg of its own (``continued``, charged alone: two journeys, two fares), as the
    trip-less legs are never joined after the overlap rules."""
    world = World(tmp_path, riders=1, buses=1)
    first = (BOUNDARY - 200.0, "S02", "boarded" if confirmed else "tentative")
    alighted = (BOUNDARY - 30.0, "S03", "alighted")
    events = [
        _piece(world, "r0001", first, alighted, trip=None, co=None if confirmed else (2, -92, -89)),
        _piece(
            world,
            "r0001",
            (BOUNDARY + 100.0, "S04", "tentative"),
            (BOUNDARY + 400.0, "S06", "alighted"),
            trip=None,
        ),
    ]
    res = _settle(world, events)
    (j,) = res.journeys
    assert j.charged
    assert [(x.board_stop_id, x.alight_stop_id) for x in j.legs] == [("S02", "S06")]
    assert res.stats.rejected == {}


def test_pieces_on_another_trip_or_not_adjoining_are_not_summed() -> None:
    def seg(n: int, interval: int, start: float, end: float, trip: str = "T1") -> Segment:
        return Segment(
            "r1",
            "b1",
            n,
            f"e{n}",
            interval,
            "R1",
            trip,
            start,
            "S01",
            "tentative",
            end,
            None,
            "rotated",
            0.0,
            co=(3, -90.0, -89.0),
        )

    p = JourneyPolicy()
    t = BOUNDARY
    iv = int(t // INTERVAL_S)
    # another trip of the same bus
    kept, dropped = settle_tentative(
        [seg(1, iv - 1, t - 99, t - 2), seg(2, iv, t + 9, t + 99, "T1R")], p, None
    )
    assert (kept, dropped) == ([], 2)
    # the same interval twice (not a rotation), or a new rid first heard after the gap
    kept, dropped = settle_tentative(
        [seg(1, iv, t + 1, t + 50), seg(2, iv, t + 60, t + 99)], p, None
    )
    assert (kept, dropped) == ([], 2)
    late = t + p.tentative_gap_s + 1
    kept, dropped = settle_tentative(
        [seg(1, iv - 1, t - 99, t - 2), seg(2, iv, late, late + 9)], p, None
    )
    assert (kept, dropped) == ([], 2)
    kept, dropped = settle_tentative(
        [seg(1, iv - 1, t - 99, t - 2), seg(2, iv, t + 9, t + 99)], p, None
    )
    assert dropped == 0
    assert [s.start_cause for s in kept] == ["boarded", "continued"]


def _signed(world: World, **over: Any) -> dict[str, Any]:
    fields = world.segment_fields(
        "r0001",
        route_id="R1",
        trip_id="T1",
        start=(T0, "S02", "tentative"),
        end=(T0 + 60.0, None, "rotated"),
        distance_m=100.0,
    )
    fields["evidence"].update({"co_n": 2, "co_lo": -91.5, "co_hi": -88.0})
    for k, v in over.items():
        fields["evidence"][k] = v
    return world.buses["bus-01"].emit(fields)


def test_the_chain_and_validation_accept_the_tentative_shape(tmp_path: Path) -> None:
    world = World(tmp_path, riders=1, buses=1)
    a, b = _signed(world), _signed(world)
    assert validate_event(a)["start"]["cause"] == "tentative"
    chain = HashChain()
    chain.check(a)
    chain.advance(a)
    chain.check(b)
    assert b["prev"] == event_hash(a)
    with pytest.raises(ChainError):
        HashChain().check(b)  # (seq 2 first: the chain still applies)


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"co_n": None}, "evidence.co_n"),
        ({"co_n": 0}, "evidence.co_n"),
        ({"co_n": 2.0}, "evidence.co_n"),
        ({"co_n": True}, "evidence.co_n"),
        # (rider_segments.co_n is 32-bit: PostgreSQL refused the row and every settlement
        # pass failed on it)
        ({"co_n": 2**31}, "evidence.co_n"),
        ({"co_lo": "x"}, "evidence.co_lo"),
        ({"co_hi": None}, "evidence.co_hi"),
        ({"co_lo": -80.0, "co_hi": -90.0}, "evidence.co_hi"),
        ({"co_lo": -900.0}, "evidence.co_lo"),
    ],
)
def test_validation_rejects_a_tentative_segment_without_its_evidence(
    tmp_path: Path, over: dict[str, Any], field: str
) -> None:
    world = World(tmp_path, riders=1, buses=1)
    ev = _signed(world, **over)
    with pytest.raises(ContractError) as exc:
        convert_event(ev)
    assert exc.value.field == field
    bad = dict(ev, start=dict(ev["start"], cause="guessed"))
    with pytest.raises(ContractError) as exc2:
        validate_event(bad)
    assert exc2.value.field == "start.cause"


def test_pieces_on_a_bus_alongside_lose_to_the_riders_confirmed_ride(tmp_path: Path) -> None:
    """A bus beside the rider's from a shared stop hears them as a sparse candidate on
    both rids (full scale, tuning seed 2, -25 dBm, shared_stop_three_routes r-00232): the
    summed pieces lose to the confirmed ride on the other bus, which is charged (summed,
    the overlap rules held both: the rider was charged nothing)."""
    world = World(tmp_path, riders=1, buses=2)
    ride = world.ride("r0001", "bus-01", board=1, alight=9, t=BOUNDARY - 300.0)
    alongside = [
        _piece(
            world,
            "r0001",
            (BOUNDARY - 150.0, "S03", "tentative"),
            (BOUNDARY - 3.0, None, "rotated"),
            bus="bus-02",
        ),
        _piece(
            world,
            "r0001",
            (BOUNDARY + 5.0, "S03", "tentative"),
            (BOUNDARY + 100.0, "S05", "alighted"),
            bus="bus-02",
        ),
    ]
    res = _settle(world, ride + alongside)
    (j,) = res.journeys
    assert j.charged
    assert [(x.bus_id, x.board_stop_id, x.alight_stop_id) for x in j.legs] == [
        ("bus-01", "S01", "S09")
    ]
    assert res.stats.rejected == {"tentative_dropped": 2}


@pytest.mark.parametrize(
    "evidence",
    [
        None,
        [1, -80.0, -70.0],
        {"co_lo": -80.0, "co_hi": -70.0},
        {"co_n": 0, "co_lo": -80.0, "co_hi": -70.0},
        {"co_n": True, "co_lo": -80.0, "co_hi": -70.0},
        {"co_n": 2, "co_lo": "-80", "co_hi": -70.0},
        {"co_n": 2, "co_lo": -80.0, "co_hi": float("nan")},
        {"co_n": 2, "co_lo": float("-inf"), "co_hi": -70.0},
        {"co_n": 2, "co_lo": -60.0, "co_hi": -70.0},
    ],
)
def test_invalid_co_movement_evidence_reads_as_none(evidence: object) -> None:
    # (validation rejects such a record at the door; the settlement reads a stored one
    # defensively: a piece without valid evidence sums nothing)
    assert evidence_co(evidence) is None


def test_valid_co_movement_evidence_and_counts_read_as_numbers() -> None:
    assert evidence_co({"co_n": 3, "co_lo": -90, "co_hi": -78.5}) == (3, -90.0, -78.5)
    assert evidence_count({"n_adv": 2**31 - 1}) == 2**31 - 1
    assert evidence_count({"n_adv": 2**31}) is None
    assert evidence_count({"n_adv": -1}) is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tentative_points", 0, "tentative_points must be >= 1"),
        ("tentative_spread_db", -1.0, "tentative_spread_db must be >= 0"),
        ("tentative_gap_s", -1.0, "tentative_gap_s must be >= 0"),
        ("overlap_rate_margin_db", 0.0, "overlap_rate_margin_db must be positive"),
        ("overlap_rate_ratio", 1.0, "overlap_rate_ratio must be > 1"),
        ("overlap_rate_alone_ratio", 1.0, "overlap_rate_alone_ratio must be > 1"),
    ],
)
def test_a_journey_policy_out_of_range_is_refused(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JourneyPolicy(**{field: value})


def test_two_confirmed_segments_of_one_ride_under_two_trip_keys_are_charged_once(
    tmp_path: Path,
) -> None:
    """The rider confirmed on bus-01 S03 -> S06 without a trip id (route R1), and over that
    time S04 -> S05 on bus-01 trip T1 (the bus's trip assigned mid-ride): a bus carries a
    rider once at a time, so the two are one ride, charged once (the review of 2026-12-07:
    before, join_trips joined only legs with one trip id, and both were charged)."""
    world = World(tmp_path, riders=2, buses=1)
    a = _ride_without_trip(world)
    b = world.buses["bus-01"].emit(
        world.segment_fields(
            "r0001",
            route_id="R1",
            trip_id="T1",
            start=(T0 + 150.0, "S04", "boarded"),
            end=(T0 + 300.0, "S05", "alighted"),
            distance_m=800.0,
        )
    )
    res = _settle(world, [a, b])
    legs = [x for j in res.journeys for x in j.legs]
    assert [(x.board_stop_id, x.alight_stop_id) for x in legs] == [("S03", "S06")]
    assert [x.trip_id for x in legs] == ["T1"]


# -- a piece naming no stop, one point: the edge's unlinked next rid (docs/classifier.md,
# "Thirty-sixth pass": full scale, cell 24, seed 4, door_sensor_stuck r-00064)


def _unlinked(world: World, rider: str, distance: float = 1500.0) -> dict[str, Any]:
    """The rider's next rid: unpaired, rode from between S05 and S06 to S07's doors."""
    return _piece(
        world,
        rider,
        (BOUNDARY + 20.0, None, "tentative"),
        (BOUNDARY + 150.0, "S07", "alighted"),
        co=(1, -93.0, -93.0),
        distance=distance,
    )


def test_an_unlinked_piece_extends_its_riders_ride_on_the_rid_before(tmp_path: Path) -> None:
    world = World(tmp_path, riders=2, buses=1)
    fields = world.segment_fields(
        "r0001",
        route_id="R1",
        trip_id="T1",
        start=(BOUNDARY - 400.0, "S02", "boarded"),
        end=(BOUNDARY - 30.0, "S06", "alighted"),
        distance_m=3000.0,
    )
    ride = world.buses["bus-01"].emit(fields)
    res = _settle(world, [ride, _unlinked(world, "r0001")])
    (j,) = res.journeys
    assert j.charged
    (leg,) = j.legs
    assert (leg.board_stop_id, leg.alight_stop_id) == ("S02", "S07")


def test_an_unlinked_piece_alone_charges_nobody(tmp_path: Path) -> None:
    # a stranger's next rid: no ride of theirs on this trip to join, one point to sum;
    # two of them adjoining (one point each) are not carried either: they name no stop
    world = World(tmp_path, riders=2, buses=1)
    alone = _settle(world, [_unlinked(world, "r0002")])
    assert [j for j in alone.journeys if j.charged] == []
    world2 = World(tmp_path / "two", riders=2, buses=1)
    later = _piece(
        world2,
        "r0002",
        (BOUNDARY + INTERVAL_S + 10.0, None, "tentative"),
        (BOUNDARY + INTERVAL_S + 200.0, "S09", "alighted"),
        co=(1, -93.0, -93.0),
        distance=1500.0,
    )
    two = _settle(world2, [_unlinked(world2, "r0002"), later])
    assert [j for j in two.journeys if j.charged] == []
