"""Presence classifier: a sparse rider's echo first heard by the bus stops after its own.

Twenty-fourth pass (docs/classifier.md, issue 11, weak cells): a weak token heard by the
bus only far along its ride, its echo naming this bus since the stop it boarded at. The
echo rule's stop counted only if the bus first heard the stretch at that stop's doors or
in the hop after it (:meth:`PresenceClassifier._echo_near`); it now counts when the bus
first heard it between two stops, ``confirm_distance_m`` from each, in any hop since (a
waiter at a later stop is heard near that stop), and, on the echo rule's own boarding,
as the bus drew near a stop it then heard the stretch ``confirm_distance_m`` past. Each
shape through the real classifier (:mod:`tests.edge.test_classifier_echo`'s world: S0 ..
S5, 800 m apart); each rider test fails with the rule taken out (the old ``_echo_near``),
each guard test with the guard taken out.
"""

from __future__ import annotations

import math

from edge._classifier import _Rid
from edge._params import ClassifierParams
from tests.edge.test_classifier_echo import EchoWorld, Plan, _thin, clear, other, own

FAR: Plan = {3: ((), (300.0, 500.0)), 4: ((6.0, 8.0), ())}
"""Boarded at S1, never heard at S1, S2 or S3: first heard 300 m past S3 (500 m before S4),
again 500 m past it, then in the bus standing at S4 as it walks out (full scale, tuning
seed 2, cell 22, ``rush_hour_crowd`` r-00191: first heard 675 m past BD009, five stops
after its own, at two points and at BD010's doors; echo since BD004)."""


def test_a_sparse_rider_first_heard_stops_after_its_own_is_boarded_from_its_echos_stop() -> None:
    assert _thin(None, plan=FAR) == []
    assert _thin(own(1), plan=FAR) == ["S1->S4"]


def test_a_rider_of_a_bus_alongside_heard_so_is_not_charged() -> None:
    # the same hearing, its phone echoing the bus it rides (heard without a gap longer)
    assert _thin(other(1), plan=FAR) == []
    # and with the echo off, nobody is boarded on this shape
    assert _thin(own(1), ClassifierParams(echo_evidence=False), plan=FAR) == []


def test_a_waiter_at_a_later_stop_who_heard_the_bus_since_an_earlier_one_is_not_charged() -> None:
    # a route looping back: someone waiting at S4 has heard the bus since it served S1; the
    # bus hears them only as it draws near S4 (100 and 5 m before its doors) and at its
    # doors, never past them (small scale, tuning seed 3, cell 22, shared_stop_three_routes
    # r-00007)
    waiter: Plan = {3: ((), (700.0, 795.0)), 4: ((2.0, 4.0, 6.0, 8.0), ())}
    # its stretch is old (S2 and S3 served before the bus heard it), and its one point (100 m
    # before S4's doors) boards it (thirty-eighth pass) unless the feed says the echo may
    # be no rider's (edge._beacon.EchoSeqs): a bus of another pattern sends its seq at S4
    # (r-00007's: bus-17 at BD005, echo since BD003, seq 2, route 55 serves BD005 as its
    # index 2), or, forty-first pass, S1 lies within echo_reach_m of where the bus first
    # heard it: standing at S4, it can have heard the bus without a gap since S1 only where
    # the route loops back past S1 within a beacon's reach (the span tests' world is one
    # straight road, 800 m a hop: there nobody at S4 holds that echo). Either, or no feed
    # to tell: not charged
    assert _thin(own(1), plan=waiter, level=-85.0, ambiguous=lambda i, s: (i, s) == (4, 1)) == []
    assert _thin(own(1), plan=waiter, level=-85.0) == []
    # with both ruled out, whoever holds it moved with the bus from S1: heard so it is the
    # one-point rule's rider (full scale, tuning seed 1, cells 23 and 25, rush_hour_crowd
    # r-00330: one point 14 m before BD010's doors, three adverts at them, echo since BD003)
    assert _thin(own(1), plan=waiter, level=-85.0, ambiguous=clear) == ["S1->S4"]
    # first heard at S3's doors, then on the hop and at S4's: the other rules' (S3), as before
    at_doors: Plan = {3: ((6.0, 8.0), (200.0, 350.0, 500.0)), 4: ((6.0, 8.0), ())}
    assert _thin(own(1), plan=at_doors) == ["S3->S4"]


APPROACH: Plan = {2: ((), (740.0,)), 3: ((), (300.0, 500.0)), 4: ((6.0, 8.0), ())}
"""Boarded at S1: first heard 60 m before S3's doors, silent at S3, heard 300 and 500 m past
it and at S4's doors (full scale, tuning seed 1, cell 22, ``shared_stop_three_routes``
r-00239: first heard 4.5 s before BD006's doors, dropped, heard again 751-779 m past BD006
and at BD008's doors; echo since BD003)."""


def test_a_sparse_rider_first_heard_as_the_bus_drew_near_a_stop_it_rode_through() -> None:
    assert _thin(None, plan=APPROACH) == []
    assert _thin(own(1), plan=APPROACH) == ["S1->S4"]


def test_a_dense_rider_first_heard_near_its_stop_keeps_it() -> None:
    """Heard 60 m before S3's doors, then densely from them on: the dense rules board it at
    S3, and its echo since S1 (a beacon carries farther than a token) does not move its
    boarding: first heard near S3, it may have waited there."""
    plan: Plan = {
        2: ((), (740.0,)),
        3: (tuple(float(s) for s in range(20)), tuple(float(m) for m in range(0, 800, 5))),
        4: (tuple(float(s) for s in range(4)), ()),
    }
    assert _thin(None, plan=plan, level=-75.0) == ["S3->S4"]
    # its one point 60 m before S3's doors, its stretch old (S2 served before), boards it
    # from S1 as the point is heard (thirty-eighth pass), unless the feed says the echo may
    # be no rider's: a bus of another pattern sends that seq at S3 (the stop the bus was
    # coming to), or S1 lies within echo_reach_m of where the bus first heard it (forty-
    # first pass: someone waiting at S3 where the route loops back past S1), or there is
    # no feed to tell
    assert _thin(own(1), plan=plan, level=-75.0, ambiguous=lambda i, s: (i, s) == (3, 1)) == [
        "S3->S4"
    ]
    assert _thin(own(1), plan=plan, level=-75.0) == ["S3->S4"]
    # with both ruled out nobody waiting at S3 holds an echo since S1: it rode from S1
    assert _thin(own(1), plan=plan, level=-75.0, ambiguous=clear) == ["S1->S4"]


def test_where_the_bus_first_heard_the_stretch_counts() -> None:
    """The bus first heard the stretch 120 m past S1's doors (closer than
    ``confirm_distance_m``): as at them, S1 counts for a candidacy of a later stop (full
    scale, tuning seed 1, cell 24, ``shared_stop_three_routes`` r-00240, BD003 -> BD005:
    first heard 16 m past BD003, dropped, heard again 1,176-1,421 m on and at BD005's doors,
    a candidate of BD005 there; ``transfer_two_buses`` r-00103, BD003 -> BD005: its next rid
    first heard 44 m past BD003, charged from BD004). Just past a later stop's doors it is
    someone left there, or who boarded there: S1 does not count."""
    w = EchoWorld()
    w.dwell("S0", 20)
    w.move(800)
    s1 = w.dwell("S1", 20)
    w.move(120)
    t1, odo1 = w.t, w.odo
    w.move(680)
    s2 = w.dwell("S2", 20)
    w.move(120)
    t2, odo2 = w.t, w.odo
    w.move(280)
    t3, odo3 = w.t, w.odo
    w.move(400)
    w.dwell("S3", 20)
    r = _Rid(b"x" * 12, math.floor(t1 / 600), t1)
    r.d_min = 0.0
    r.eo_t0, r.eo_odo0 = t1, odo1
    assert w.c._echo_near(r, s1)
    r.eo_t0, r.eo_odo0 = t2, odo2
    assert s2.seq == s1.seq + 1
    assert not w.c._echo_near(r, s1)
    # mid-hop, a hop later: its own stretch counts; one that began before the rid's interval
    # by its token's clock (taken over from an earlier rid, maybe another token's dropped
    # one: full scale, tuning seed 1, cell 22, shared_stop_three_routes r-03002, a
    # pedestrian charged BD004 -> BD006 on a first try) only in the hop after S1
    r.eo_t0, r.eo_odo0 = t3, odo3
    r.interval = math.floor(t3 / 600)
    assert w.c._echo_near(r, s1)
    r.interval = math.floor(t3 / 600) + 1  # (its interval began after the stretch did)
    assert not w.c._echo_near(r, s1)


THROUGH: Plan = {3: ((), (100.0,)), 4: ((), (300.0, 500.0)), 5: ((6.0, 8.0), ())}
"""Boarded at S1, never heard at S1, S2 or S3: first heard 100 m past S3 (just past a later
stop's doors), then 300 and 500 m past S4 and at S5's doors as it walks out (full scale,
tuning seed 2, cells 23 and 25, ``quiet_route`` r-00038, BD004 -> BD010: its next rid first
heard 53 m past BD006, then at four points past BD009 and at BD010's doors; echo since
BD004)."""


def test_a_stretch_first_heard_just_past_a_later_stop_boards_once_heard_past_the_next() -> None:
    assert _thin(None, plan=THROUGH) == []
    assert _thin(own(1), plan=THROUGH) == ["S1->S5"]
    # the phone echoing the bus it rides, or the echo off: nobody
    assert _thin(other(1), plan=THROUGH) == []
    assert _thin(own(1), ClassifierParams(echo_evidence=False), plan=THROUGH) == []


def test_a_stretch_first_heard_just_past_a_stop_and_gone_by_the_next_is_not_dated_back() -> None:
    """First heard 100 m past S3, two points on that hop, heard at S4's doors, never past them:
    someone who left the bus at S3, or boarded there, is heard so; S1 does not count."""
    plan: Plan = {3: ((), (100.0, 300.0, 500.0)), 4: ((6.0, 8.0), ())}
    assert not any(g.startswith("S1") for g in _thin(own(1), plan=plan))
