"""Presence classifier: a ride discarded as never ridden leaves no riders' level behind.

With nobody aboard, the riders' level is the one when riders were last aboard
(docs/classifier.md, "The riders' level outlives the riders"). A pedestrian or a car
confirmed alone on an empty bus and then discarded (a short ride lost while moving) was
such a "rider": its level stayed the bus's reference, and a waiter at the next stop was
boarded on co-movement against it (full scale, tuning seed 2, shell 5 dB,
``transfer_two_buses`` r-03684, docs/classifier.md). Each test fails without the rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from edge._classifier import State
from tests.edge.test_classifier import Token, World, by_name


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
