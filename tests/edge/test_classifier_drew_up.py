"""Presence classifier: a car that drew up beside the bus as the riders alighted at its stop.

Full scale, tuning seeds 3-4, +3 dBm, shell 5 dB, sigma 6 dB (cell 11),
``bus_alongside_red_light``: every tracked rider of the route-55 bus alights at BD006. As
they walk off, heard ever weaker until they fade, the riders' level sinks (-47 dBm as the
doors opened, -70 by the time the car below was judged). Cars r-01933, r-01935 and r-02019
drew up beside the standing bus 14-29 s after the doors opened, 3-15 s before they closed,
heard there 38-42 dB below the riders the bus had brought to BD006 and 14-20 dB below the
sunken level, then drove beside the bus for 2 km: confirmed from BD006 (unbroken stretch,
co-movement) or sent as a tentative piece, against the sunken level. Unseen seed 47 charged
two such cars BD006 -> BD010 (docs/classifier.md, "Twenty-first pass (strong cells)"). The
first test fails without the rule (:meth:`edge._classifier.PresenceClassifier._lvl_at`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from edge._segment import SegmentDraft
from tests.edge.test_classifier import T0, Token, World, by_name

_DWELL_S = 27.0
_HOP_M = 2400.0


def _walk_off(level: float, every_s: float = 0.5) -> Callable[[World], float | None]:
    """A rider heard at ``level`` every ``every_s`` from S1 on who alights at S2: heard at
    ``level`` for the first 6 s of S2's dwell, then walking off, 3 dB weaker each second,
    until out of hearing (-95 dBm)."""

    def f(world: World) -> float | None:
        v = world.visit
        assert v is not None
        if round(world.t * 2) % round(every_s * 2):
            return None
        if world.seq < 2:
            return level
        if world.seq > 2 or v.close_t is not None:
            return None
        since = world.t - v.open_t
        rssi = level if since < 6.0 else level - 3.0 * (since - 6.0)
        return rssi if rssi >= -95.0 else None

    return f


def _drew_up(beside_db: float, first_s: float = 22.0) -> Callable[[World], float | None]:
    """Heard at S2 from ``first_s`` after its doors opened (drawing up beside the standing
    bus, -90 dBm), then beside the bus every second at ``beside_db`` +-2 dB to S3's doors,
    where it drives on (heard for the first 2 s of S3's dwell)."""

    def f(world: World) -> float | None:
        v = world.visit
        assert v is not None
        if world.seq < 2:
            return None
        if world.seq == 2 and v.close_t is None:
            return -90.0 if world.t - v.open_t >= first_s else None
        if world.seq >= 3:
            return beside_db if world.seq == 3 and world.t - v.open_t < 2.0 else None
        if round(world.t * 2) % 2:
            return None
        return beside_db + (2.0 if round(world.t) % 2 else -2.0)

    return f


def _s1_s2_s3(w: World) -> list[SegmentDraft]:
    """Dwell 30 s at S1, 900 m to S2, dwell 27 s, 2.4 km to S3, dwell 15 s, 600 m on."""
    w.dwell("S1", 30)
    w.move(900)
    w.dwell("S2", _DWELL_S)
    w.move(_HOP_M)
    w.dwell("S3", 15)
    w.move(600)
    return w.finish()


def _riders_alighting_at_s2(w: World) -> list[Token]:
    """Three riders heard every 0.5 s at -45 dBm and two weak ones heard every 4 s at
    -72 dBm (sigma-6 dB phones in bags), all alighting at S2: the weak ones' fade time is
    their rhythm's (8 of their gaps), the loud ones' 15 s, so the weak are the riders left
    aboard, and their level the riders', once the loud have faded (-45 dBm as S2's doors
    opened, -72 as the car below is judged, as in the full-scale runs)."""
    loud = [w.add(Token(f"rd{i}", _walk_off(-45.0))) for i in range(3)]
    weak = [w.add(Token(f"wk{i}", _walk_off(-72.0, 4.0))) for i in range(2)]
    return loud + weak


def test_a_car_that_drew_up_as_the_riders_alighted_is_not_charged() -> None:
    # beside the bus at -84 dBm: 39 dB below the riders the bus brought to S2, 12 dB below
    # the level they left behind as they walked off. Judged against that level it boarded
    # from S2 and "alighted" at S3 as it drove on; judged against the riders as S2's doors
    # opened it drew up outside (heard late in the dwell, far below them) and boards on no
    # rule, nor sends a tentative piece
    w = World()
    riders = _riders_alighting_at_s2(w)
    car = w.add(Token("car", _drew_up(-84.0)))
    out = _s1_s2_s3(w)
    assert by_name(out, car) == []
    assert by_name(out, car, tentative=True) == []
    for r in riders:
        assert [(x.start.stop_id, x.end.stop_id) for x in by_name(out, r)] == [("S1", "S2")]


def test_a_rider_that_boarded_last_near_the_riders_level_is_charged() -> None:
    # the same late arrival at S2's doors, but heard in the bus within 25 dB of the riders
    # who came in (someone who ran up and boarded last, a phone in a pocket): it rides to
    # S3, as before
    w = World()
    _riders_alighting_at_s2(w)
    tok = w.add(Token("late", _drew_up(-62.0)))
    out = _s1_s2_s3(w)
    assert [(x.start.stop_id, x.end.stop_id) for x in by_name(out, tok)] == [("S2", "S3")]


def test_a_car_that_drew_up_sends_no_tentative_piece_across_its_rids_rotation() -> None:
    # the same car, its rid rotating 150 s into the hop: unconfirmed as its rid ends, the
    # candidate's co-movement points would go to the backend as a tentative piece (summed
    # across the rotation, 12 points: charged S2 -> S3 at full scale, tuning seed 3,
    # r-01935, when only the co-movement rule judged by the riders as the doors opened);
    # judged by the same level it sends none
    w = World(t0=(math.floor(T0 / 600) + 1) * 600.0 - 300.0)
    _riders_alighting_at_s2(w)
    car = w.add(Token("car", _drew_up(-84.0)))
    out = _s1_s2_s3(w)
    assert by_name(out, car) == []
    assert by_name(out, car, tentative=True) == []
