"""Presence classifier: one-hop riders gone as the next stop's doors open (issue 11, tenth pass).

Scripted worlds (``tests.edge.test_classifier.World``) of the legs missed in the full-scale
runs of tuning seeds 1-2 (``busbell edge trace-rider``; docs/classifier.md, "Tenth pass");
the first test fails without the rule, the others are its guards.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.edge.test_classifier import Token, World, add_riders, by_name, ride

AtDoors = Callable[[float], float | None]
"""A token's level at S1's open doors, by seconds since they opened (None: not heard)."""


def _one_hop(at_s1: AtDoors) -> list[str]:
    """Three riders at -74 dBm; a weak token heard at ``at_s1`` while S1's doors stand open
    (45 s), silent for the first 390 m of the 850-m hop, then at -94..-90 dBm at four places
    390-830 m past S1 (three co-movement points, one short of `sparse_adverts`), then 0.5-1.5 s
    after S2's doors opened, then never again (full scale, tuning seed 2, -25 dBm,
    ``rush_hour_crowd`` r-00184, BD009 -> BD010). Its segments' stops."""
    w = World()
    add_riders(w, -74.0)

    def weak(world: World) -> float | None:
        v = world.visit
        assert v is not None
        if world.seq == 1:
            if v.close_t is None:
                return at_s1(world.t - v.open_t)
            past = world.odo - (v.close_odo_m or 0.0)
            for at, level in ((390.0, -94.0), (718.0, -94.0), (805.0, -90.0), (828.0, -90.0)):
                if at <= past < at + 5.0:
                    return level
            return None
        if world.seq == 2 and v.close_t is None:
            return -90.0 if 0.5 <= world.t - v.open_t < 1.5 else None
        return None

    tok = w.add(Token("bag", weak))
    ride(w, ("S1", 45, 850), ("S2", 30, 600), ("S3", 10, 300))
    return [f"{s.start.stop_id}->{s.end.stop_id}" for s in by_name(w.finish(), tok)]


def test_a_weak_rider_standing_at_its_stop_carried_one_hop_gone_at_the_doors_rode_it() -> None:
    # heard in the bus standing at S1 for 22 s (four adverts 16-38 s after the doors opened),
    # carried at its level through the hop, gone as S2's doors opened: it rode S1 -> S2
    # (before: three co-movement points, one short of `sparse_adverts`, and not in the bus
    # standing at S2 `stay_s` after the doors opened: missed)
    def standing(at: float) -> float | None:
        return -93.0 if any(a <= at < a + 0.5 for a in (16.0, 22.0, 28.0, 38.0)) else None

    assert _one_hop(standing) == ["S1->S2"]


def test_a_token_passing_the_standing_bus_then_beside_it_for_a_hop_is_not_charged() -> None:
    # the guard: heard at S1 for 1 s only (a car passing the bus at the stop), then the same
    # hop and the same fade at S2's doors: nothing shows it stood in the bus at S1
    def passing(at: float) -> float | None:
        return -93.0 if 38.0 <= at < 39.5 else None

    assert _one_hop(passing) == []


def test_a_rider_of_a_bus_beside_this_one_at_the_stop_is_not_charged_one_hop() -> None:
    # the guard: heard every 0.5 s through S1's dwell (a rider of another bus standing beside
    # this one), then silent for 390 m, far past its own rhythm's fade time: apart from this
    # bus on the way (full scale, tuning seed 1, -25 dBm, shared_stop_three_routes r-00089
    # and r-00094 on the other route's bus, BD004 -> BD005)
    def dense(at: float) -> float | None:
        return -93.0 if at >= 2.0 else None

    assert _one_hop(dense) == []
