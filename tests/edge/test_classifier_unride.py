"""Presence classifier: a ride discarded as never ridden leaves no riders' level behind.

With nobody aboard, the riders' level is the one when riders were last aboard
(docs/classifier.md, "The riders' level outlives the riders"). A pedestrian or a car
confirmed alone on an empty bus and then discarded (a short ride lost while moving) was
such a "rider": its level stayed the bus's reference, and a waiter at the next stop was
boarded on co-movement against it (full scale, tuning seed 2, shell 5 dB,
``transfer_two_buses`` r-03684, docs/classifier.md). Each test fails without the rule;
the level goes back to the one when a ride last ended that was not discarded (before:
to the one when the first ride discarded in a tick was confirmed, which brought a first
non-rider's level back through a second confirmed while the first was aboard).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from edge._classifier import State
from tests.edge.test_classifier import T0, Token, World, by_name


def _heard(level: float, *spans: tuple[int, float, float]) -> Callable[[World], float | None]:
    """Heard at ``level`` at stop visit ``seq`` from ``a`` to ``b`` metres past the stop
    (``a`` = 0: from the doors' opening) for each ``(seq, a, b)``."""

    def f(world: World) -> float | None:
        d = world.odo - world.stop_odo
        return level if any(world.seq == s and a <= d < b for s, a, b in spans) else None

    return f


def _walker(level: float, seq: int, metres: float) -> Callable[[World], float | None]:
    """Heard at ``level`` at stop visit ``seq`` and for ``metres`` after it, then never."""

    def f(world: World) -> float | None:
        v = world.visit
        near = v is not None and (v.close_t is None or world.odo - world.stop_odo < metres)
        return level if world.seq == seq and near else None

    return f


def test_a_short_ride_discarded_on_an_empty_bus_leaves_no_riders_level() -> None:
    # heard in the bus at S1 and for 500 m on (confirmed: an unbroken stretch), then
    # never again: at S2 its ride is a short ride lost while moving, discarded. The bus
    # has carried nobody: its riders' level is none again (before: the pedestrian's -65)
    w = World()
    tok = w.add(Token("ped", _walker(-65.0, 1, 500.0)))
    w.dwell("S1", 20)
    w.move(500)
    assert w.c.state_of(tok.rid(w.t)) is State.ONBOARD
    assert w.c._riders_lvl == -65.0
    w.move(700)
    w.dwell("S2", 20)
    w.move(300)
    assert w.c.discarded == 1
    assert w.c._riders_lvl == math.inf
    assert by_name(w.finish(), tok) == []


def test_a_discarded_ride_gives_back_the_level_of_the_riders_before_it() -> None:
    # riders at -60 ride S1 -> S2 and alight; someone heard in the bus at S2 at -80 and for
    # 500 m on is confirmed alone, then discarded: the level is the riders' again
    w = World()
    riders = [w.add(Token(f"rd{i}", _walker(-60.0, 1, 2500.0))) for i in range(3)]
    tok = w.add(Token("ped", _walker(-80.0, 2, 500.0)))
    w.dwell("S1", 20)
    w.move(2600)
    w.dwell("S2", 20)
    w.move(500)
    assert w.c.state_of(tok.rid(w.t)) is State.ONBOARD
    assert w.c._riders_lvl == -80.0
    w.move(700)
    w.dwell("S3", 20)
    w.move(300)
    assert w.c._riders_lvl == -60.0
    out = w.finish()
    assert by_name(out, tok) == []
    for r in riders:
        assert [(x.start.stop_id, x.end.stop_id) for x in by_name(out, r)] == [("S1", "S2")]


def test_a_ride_kept_keeps_its_level() -> None:
    # guard: a rider alone aboard who rode S1 -> S2 (2.6 km) sets the level that outlives
    # them, as before
    w = World()
    tok = w.add(Token("rd", _walker(-65.0, 1, 2500.0)))
    w.dwell("S1", 20)
    w.move(2600)
    w.dwell("S2", 20)
    w.move(300)
    assert w.c._riders_lvl == -65.0
    assert [(x.start.stop_id, x.end.stop_id) for x in by_name(w.finish(), tok)] == [("S1", "S2")]


def _two_non_riders(w: World) -> tuple[Token, Token]:
    """A car at -65 beside the bus from S1 for 500 m, confirmed first and alone (the
    level is its -65), and one at -80 lost 100-300 m past S1, confirmed later (against
    that -65), silent through S2's doors, heard again 50-300 m past S2 and never after."""
    a = w.add(Token("cara", _heard(-65.0, (1, 0, 500))))
    b = w.add(Token("carb", _heard(-80.0, (1, 0, 100), (1, 300, 1000), (2, 50, 300))))
    return a, b


def test_two_non_riders_dropped_one_after_the_other_leave_no_level() -> None:
    # the first is dropped after S2's doors with the second aboard (the level is the
    # second's), the second after S3's: nobody rode, the level is none again (before:
    # the first's -65 came back, the level when the second was confirmed)
    w = World()
    a, b = _two_non_riders(w)
    w.dwell("S1", 20)
    w.move(1000)
    assert w.c.state_of(b.rid(w.t)) is State.ONBOARD
    assert w.c._riders_lvl == -65.0
    w.dwell("S2", 20)
    w.move(1000)
    assert (w.c.discarded, w.c._riders_lvl) == (1, -80.0)
    w.dwell("S3", 20)
    w.move(300)
    assert w.c.discarded == 2
    assert (w.c._riders_lvl, w.c._riders_key) == (math.inf, None)
    out = w.finish()
    assert by_name(out, a) == by_name(out, b) == []


def test_two_non_riders_dropped_together_leave_no_level() -> None:
    # both silent from 500 m / 900 m past S1 on, held aboard to S2 and dropped there in
    # one tick: the level is none again, whichever was confirmed first
    w = World()
    a = w.add(Token("cara", _heard(-65.0, (1, 0, 500))))
    b = w.add(Token("carb", _heard(-80.0, (1, 0, 100), (1, 300, 900))))
    w.dwell("S1", 20)
    w.move(1000)
    assert w.c._riders_lvl == -65.0
    w.dwell("S2", 20)
    w.move(300)
    assert (w.c.discarded, w.c._riders_lvl) == (2, math.inf)
    out = w.finish()
    assert by_name(out, a) == by_name(out, b) == []


def test_a_non_rider_confirmed_before_a_rider_gives_back_the_riders_level() -> None:
    # a car at -65 confirmed alone past S1 (against no level), riders at -80 boarding at
    # S2 ride on to S3 and alight there; the car, silent from 500 m past S1 on and held
    # aboard, is dropped at S2: the level is the riders' from then on, and after they
    # left it is still theirs
    # ... and a car confirmed at S3 after them, dropped at S4, gives the riders' back
    w = World()
    car = w.add(Token("cara", _heard(-65.0, (1, 0, 500))))
    riders = [w.add(Token(f"rd{i}", _heard(-80.0, (2, 0, 2000), (3, 0, 1)))) for i in range(3)]
    car2 = w.add(Token("carb", _heard(-60.0, (3, 0, 500))))
    w.dwell("S1", 20)
    w.move(1000)
    w.dwell("S2", 20)
    w.move(2000)
    assert w.c.discarded == 1
    assert w.c._riders_lvl == -80.0
    w.dwell("S3", 20)
    w.move(1000)
    assert w.c.state_of(car2.rid(w.t)) is State.ONBOARD
    assert w.c._riders_lvl == -60.0
    w.dwell("S4", 20)
    w.move(300)
    assert (w.c.discarded, w.c._riders_lvl, w.c._riders_key) == (2, -80.0, -80)
    out = w.finish()
    assert by_name(out, car) == by_name(out, car2) == []
    for r in riders:
        assert [(x.start.stop_id, x.end.stop_id) for x in by_name(out, r)] == [("S2", "S3")]


def test_a_rider_after_a_non_rider_is_not_measured_against_its_level() -> None:
    # the car at -65 alone past S1, dropped after S2; a rider at -80 waiting through a
    # long dwell at S3 and riding on 1.5 km: its event's riders' level is its own -80,
    # none of its adverts counted at the dropped car's level (before: those heard before
    # it was confirmed, most of them, were counted at -65: the settlement's "how far
    # below its riders" read 15 dB off)
    w = World()
    w.add(Token("cara", _heard(-65.0, (1, 0, 500))))
    rider = w.add(Token("rd0", _heard(-80.0, (3, 0, 1500), (4, 0, 1))))
    w.dwell("S1", 20)
    w.move(1000)
    w.dwell("S2", 20)
    w.move(1000)
    assert (w.c.discarded, w.c._riders_lvl) == (1, math.inf)
    w.dwell("S3", 120)
    w.move(1500)
    w.dwell("S4", 20)
    w.move(300)
    (seg,) = by_name(w.finish(), rider)
    assert (seg.start.stop_id, seg.end.stop_id) == ("S3", "S4")
    assert seg.evidence["riders_lvl"] == -80


def test_a_ride_drafted_late_gives_back_the_level_as_its_rid_left_the_riders() -> None:
    # (review of c049005) a rider alone at -48 rides S1 -> S2 and alights there 7 s before
    # its rid's boundary: its rid goes to the rotation pool and its segment is drafted
    # ~30 s later, once nothing pairs it. Meanwhile two people at -65, heard at S2's doors
    # and for 500 m on, are confirmed (the level is theirs as the rider's segment is
    # drafted), then dropped at S3 as short rides: the level goes back to the rider's -48,
    # as its rid left the riders (before the fix's lvl_out, taken at the draft: -65, a
    # non-rider's; tuning cell 11 seed 2 bus-55-01-r3 brought back a passer-by's -87).
    # (Two: since d588253 the rider's rid waiting in the pool counts in the level, and
    # with one person at -65 the level at the draft was the rider's -48 all the same)
    w = World()
    boundary = (math.floor(w.t / 600) + 1) * 600.0

    def rider(world: World) -> float | None:
        v = world.visit
        at_s2 = world.seq == 2 and v is not None and v.close_t is None
        return -48.0 if world.seq == 1 or (at_s2 and world.t < boundary - 1) else None

    rd = w.add(Token("rd", rider))
    peds = [w.add(Token(f"ped{i}", _walker(-65.0, 2, 500.0))) for i in range(2)]
    w.dwell("S1", 20)
    w.move(4900)
    w.dwell("S2", 43)
    assert w.t < boundary - 5  # the doors closed before its boundary ...
    while w.odo - w.stop_odo < 500:
        w.move(10)
    (seg,) = by_name(w.out, rd)  # ... its ride drafted after the non-riders' confirmation
    assert (seg.start.stop_id, seg.end.stop_id, seg.end.cause) == ("S1", "S2", "alighted")
    assert w.c._riders_lvl == -65.0
    w.move(700)
    w.dwell("S3", 20)
    w.move(300)
    assert (w.c.discarded, w.c._riders_lvl, w.c._riders_key) == (2, -48.0, -48)
    out = w.finish()
    assert by_name(out, peds[0]) == by_name(out, peds[1]) == []


def test_a_tentative_piece_leaves_no_riders_level_behind() -> None:
    # (review of c049005) a tentative piece is no ride: only a ride that ended sets the
    # level the riders' level goes back to. A pedestrian at -65 (clock 300 s behind) heard
    # at S1's doors and for 500 m on is confirmed alone on an empty bus; a weak fob at -85
    # boards at S1 and is heard in 2-s bursts every 20 s, its rid ending 90 s in and its
    # new rid (another address) silent for 40 s: its old rid, two co-movement points at
    # the pedestrian's level, is sent as a tentative piece while the pedestrian is aboard.
    # The pedestrian is dropped at S2 as a short ride: nobody rode, the level is none
    # again (with the piece taken for a ride, the pedestrian's -65 came back)
    w = World(t0=T0 + 470.0)
    ped = w.add(Token("ped", _walker(-65.0, 1, 500.0), skew=-300.0))
    fob = w.add(Token("wb", lambda _: None))
    at_s2: list[float] = []

    def weak(world: World) -> float | None:
        into = world.t - T0
        if into >= 560.0:
            fob.addr = "addr-wb-next"
        if at_s2:
            return -85.0 if world.t < at_s2[0] + 1.0 else None
        if world.odo == world.stop_odo:
            return -85.0  # standing in the bus at S1
        if 560.0 <= into < 600.0:
            return None  # its new rid unheard for 40 s
        return -85.0 if (into - 15.0) % 20.0 < 2.0 else None

    fob.rssi = weak
    w.dwell("S1", 20)
    w.move(740, speed=5.0)
    assert (w.c.tentative, w.c._riders_lvl) == (1, -65.0)
    at_s2.append(w.t)
    w.dwell("S2", 10)
    w.move(600)
    assert w.c.discarded == 1
    assert (w.c._riders_lvl, w.c._riders_key) == (math.inf, None)
    out = w.finish()
    assert by_name(out, ped) == by_name(out, fob) == []
    (piece, *_) = by_name(out, fob, tentative=True)
    assert (piece.start.stop_id, piece.end.cause) == ("S1", "rotated")


def test_the_level_given_back_is_the_ride_that_ended_last_not_the_one_drafted_last() -> None:
    # (review of c049005) riders at S1 -> S2: one at -48 whose rid ends 8 s after S2's doors
    # close, two at -75 and one at -70 heard every 2.5 s (clocks 80 s behind). At S2 the
    # -48 rider and the two -75 riders step off 5 s before the doors close, the -70 rider
    # as they close. The first three fade together 15 s after the doors close (the level
    # was -70 with all four aboard: that is the level as they left); the -48 rider's rid
    # goes to the rotation pool (nothing pairs it; it counts in the level: -48 with the
    # -70 rider), the -70 rider fades 5 s later by its own rhythm (the level as it left:
    # -48) and is drafted first, the -48 rider's ride 5 s after that from the pool, though
    # it ended 3.5 s earlier. A pedestrian at -65 confirmed alone past S3 and dropped at S4
    # gives back the level as the ride that ended last left it: -48 (by draft order: -70)
    w = World()
    boundary = (math.floor(w.t / 600) + 1) * 600.0

    def at_doors(world: World) -> bool:
        v = world.visit
        return world.seq == 2 and v is not None and v.close_t is None

    def early(level: float) -> Callable[[World], float | None]:
        def f(world: World) -> float | None:
            off = at_doors(world) and world.t < boundary - 13
            return level if world.seq == 1 or off else None

        return f

    def sparse(world: World) -> float | None:
        heard = world.seq == 1 or at_doors(world)
        return -70.0 if heard and (world.t - T0) % 2.5 < 0.5 else None

    rd = w.add(Token("rd", early(-48.0)))
    others = [w.add(Token(f"wk{i}", early(-75.0), skew=-80.0)) for i in range(2)]
    last = w.add(Token("last", sparse, skew=-80.0))
    ped = w.add(Token("ped", _walker(-65.0, 3, 500.0), skew=-300.0))
    w.dwell("S1", 20)
    w.move(4900)
    w.dwell("S2", 42)
    assert w.t == boundary - 8
    w.move(600)
    (seg,) = by_name(w.out, rd)
    (last_seg,) = by_name(w.out, last)
    assert last_seg.end.t > seg.end.t  # ended later ...
    assert w.out.index(last_seg) < w.out.index(seg)  # ... drafted first
    w.dwell("S3", 20)
    w.move(1200)
    w.dwell("S4", 20)
    w.move(300)
    assert (w.c.discarded, w.c._riders_lvl) == (1, -48.0)
    out = w.finish()
    assert by_name(out, ped) == []
    for r in [rd, *others, last]:
        assert [(x.start.stop_id, x.end.stop_id) for x in by_name(out, r)] == [("S1", "S2")]
