"""Presence classifier: a candidate that lost the bus and caught up far below the riders.

Full scale, tuning seed 1, all in pockets (cell 15), ``rush_hour_crowd`` r-03286, a car: heard
at BD008's doors for the last 11 s of the dwell as it drew up behind the bus, silent 28 s as
the bus left (past its own rhythm's fade time: ``tk_apart``), heard again 271 m on, beside
the bus, at four co-movement points (the fewest the co-movement rule takes) 24 dB below the
riders and 8 dB above the receiver's floor, last heard 2.8 s after BD009's doors opened:
charged BD008 -> BD009 (docs/classifier.md, "Strong cells: one hop after losing the bus,
cars beside it"). The first test fails without the rule (``_caught_up``).
"""

from __future__ import annotations

from collections.abc import Callable

from edge._segment import SegmentDraft
from tests.edge.test_classifier import Token, World, add_riders, by_name

_CAR_DB = -86.0
"""The caught-up token's level beside the bus: 24 dB below the riders (-62 dBm)."""


def _behind_then_beside(
    rides_on: bool, beside_db: float, wobble_db: float = 2.0
) -> Callable[[World], float | None]:
    """Heard at S1's doors for their last 11 s (-90..-70 dBm, drawing up behind the bus),
    silent for the first 280 m past S1, then heard every second at ``beside_db`` +-
    ``wobble_db`` while the bus drives on, and at S2's doors for 3 s; past S2 heard only if
    ``rides_on``."""

    def f(world: World) -> float | None:
        v = world.visit
        assert v is not None
        if world.seq == 1 and v.close_t is None:
            since = world.t - v.open_t
            return -90.0 + 2.0 * (since - 32.0) if since >= 32.0 else None
        if world.seq == 1 and world.odo - world.stop_odo < 280.0:
            return None
        if world.seq >= 2 and not rides_on:
            return beside_db if world.seq == 2 and world.t - v.open_t < 3.0 else None
        if round(world.t * 2) % 2:
            return None
        return beside_db + (wobble_db if round(world.t) % 2 else -wobble_db)

    return f


def _s1_s2_s3(w: World) -> list[SegmentDraft]:
    """Dwell 43 s at S1, 800 m to S2, dwell 20 s, 800 m to S3, dwell 15 s, 600 m on."""
    w.dwell("S1", 43)
    w.move(800)
    w.dwell("S2", 20)
    w.move(800)
    w.dwell("S3", 15)
    w.move(600)
    return w.finish()


def test_a_car_that_caught_up_for_one_hop_far_below_the_riders_is_not_charged() -> None:
    # co-movement boarded it at its fourth point, 100 m before S2, and it "alighted" at S2
    # as it drove on; held to riding on past S2 with the bus, it never boards
    w = World()
    riders = add_riders(w, -62.0)
    car = w.add(Token("car", _behind_then_beside(False, _CAR_DB)))
    out = _s1_s2_s3(w)
    assert by_name(out, car) == []
    for r in riders:
        assert [(x.start.stop_id, x.end.stop_id) for x in by_name(out, r)] == [("S1", "S3")]


def test_a_rider_that_lost_the_bus_far_below_the_riders_and_rides_on_is_charged() -> None:
    # the same token riding on with the bus past S2 to S3 (a weak token silent as the bus
    # pulled out, deep in a bag): it boards once carried past S2, from S1
    w = World()
    add_riders(w, -62.0)
    tok = w.add(Token("bag", _behind_then_beside(True, _CAR_DB)))
    out = _s1_s2_s3(w)
    assert [(x.start.stop_id, x.end.stop_id) for x in by_name(out, tok)] == [("S1", "S3")]


def test_a_token_that_lost_the_bus_within_20_db_of_the_riders_boards_on_one_hop() -> None:
    # 16 dB below the riders (within the 20 dB of a car through two shells), heard for one
    # hop after its silence as the bus left, at S2's doors: charged S1 -> S2, as before
    w = World()
    add_riders(w, -62.0)
    tok = w.add(Token("near", _behind_then_beside(False, -78.0)))
    out = _s1_s2_s3(w)
    assert [(x.start.stop_id, x.end.stop_id) for x in by_name(out, tok)] == [("S1", "S2")]


def test_a_sparse_token_far_below_the_riders_never_apart_boards_on_one_hop() -> None:
    # a weak token deep in a bag heard every 16 s from S1's doors on, 24 dB below the
    # riders, never silent past its own rhythm's fade time: it boards on co-movement for
    # one hop, as before (the rule holds only a token that lost the bus)
    w = World()
    add_riders(w, -62.0)

    def bag(world: World) -> float | None:
        v = world.visit
        assert v is not None
        if world.seq >= 2:
            return _CAR_DB if world.seq == 2 and world.t - v.open_t == 2.0 else None
        return _CAR_DB if round(world.t * 2) % 32 == 0 else None

    tok = w.add(Token("bag", bag))
    out = _s1_s2_s3(w)
    assert [(x.start.stop_id, x.end.stop_id) for x in by_name(out, tok)] == [("S1", "S2")]


def test_a_token_that_lost_the_bus_exactly_20_db_below_the_riders_boards_on_one_hop() -> None:
    # the bound is lenient, as in _barred: heard at exactly 20 dB below the riders (-62 dBm)
    # after its silence as the bus left, for one hop: charged S1 -> S2 (held with ``<=``)
    w = World()
    add_riders(w, -62.0)
    tok = w.add(Token("edge", _behind_then_beside(False, -82.0, 0.0)))
    out = _s1_s2_s3(w)
    assert [(x.start.stop_id, x.end.stop_id) for x in by_name(out, tok)] == [("S1", "S2")]


def _apart_at_s1_then_bag_from_s2(world: World) -> float | None:
    """Heard every second at S1's open doors, 24 dB below the riders, silent as the bus
    leaves S1 and all the way to S2 (apart from the bus in S1's hop); from S2's doors on
    heard every 16 s at that level, never silent past its own rhythm's fade time, and once
    at S3's doors, 2 s after they opened."""
    v = world.visit
    assert v is not None
    if world.seq == 1:
        return _CAR_DB if v.close_t is None and round(world.t * 2) % 2 == 0 else None
    if world.seq >= 3:
        return _CAR_DB if world.seq == 3 and world.t - v.open_t == 2.0 else None
    return _CAR_DB if round(world.t * 2) % 32 == 0 else None


def test_a_token_apart_in_an_earlier_stops_hop_boards_on_one_hop_from_a_later_stop() -> None:
    # ``tk_apart`` names the hop it was apart in: silent past its fade time after S1 (as
    # S1's candidate, dropped), it is S2's candidate from S2's doors on, heard at its own
    # sparse rhythm through S2's hop, never apart there: it boards on co-movement for one
    # hop, S2 -> S3, as the never-apart token above (not held to riding on past S3)
    w = World()
    add_riders(w, -62.0)
    tok = w.add(Token("bag", _apart_at_s1_then_bag_from_s2))
    out = _s1_s2_s3(w)
    assert w.c._rids[tok.rid(w.t)].tk_apart == 1
    assert [(x.start.stop_id, x.end.stop_id) for x in by_name(out, tok)] == [("S2", "S3")]
