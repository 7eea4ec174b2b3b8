"""Presence classifier: a candidate's tentative piece that fell silent while the bus moved.

Full scale, cell 11 (+3 dBm tokens, 5-dB shells), tuning seed 3, ``bus_alongside_red_light``
r-01935 (a car beside ``bus-55-01-r2``; docs/classifier.md, "Thirty-ninth pass"): heard at
BD006's open doors (-92..-69 dBm, 18 dB below the riders), silent 40 s as the bus left,
then beside it for 2.2 km at -95..-72, silent the last 38 s (400 m) before BD010's doors
opened. Never confirmed (the co-movement rule's ``_moved_on``: a car beside the bus to a
stop fades there), but still a candidate when its interval ended: sent as a tentative
piece, which the fade rules closed ``alighted`` at BD010 (nobody leaves a moving bus), and
the backend's door-to-door rule charged it BD006 -> BD010.
"""

from __future__ import annotations

from backend._legs import JourneyPolicy, Segment
from backend._tentative import settle_tentative
from edge._segment import SegmentDraft
from tests.edge.test_classifier import T0, Token, World, by_name


def _car_beside(w: World, *, to_doors: bool) -> list[SegmentDraft]:
    """Three riders at -70 dBm from S0; the bus dwells 30 s at S1, drives 2600 m at 10 m/s
    to S2 (10 s there) and 600 m on; the rids' interval ends 10 s after S2's doors close.
    The token ``car``: heard at S1's doors from 14 s after they opened, silent 40 s as the
    bus leaves, then every half second at -93..-89 dBm (22 dB below the riders); silent
    from 400 m before S2 (or, ``to_doors``, heard until S2's doors open) and never again."""
    for i in range(3):
        w.add(Token(f"rd{i}", lambda _: -70.0))
    state = {"leg": "before"}

    def car(world: World) -> float | None:
        v = world.visit
        if state["leg"] == "s1" and v is not None and v.close_t is None:
            return -92.0 if world.t - v.open_t >= 14.0 else None
        if state["leg"] == "road" and world.t - state_t["left"] >= 40.0:
            if not to_doors and world.odo > state_t["s2_odo"] - 400.0:
                return None
            return -92.0 + (3.0 if int(world.t * 2) % 3 == 0 else -1.0)
        return None

    state_t = {"left": 0.0, "s2_odo": 0.0}
    w.add(Token("car", car))
    w.dwell("S0", 15)
    w.move(600)
    state["leg"] = "s1"
    w.dwell("S1", 30)
    state["leg"], state_t["left"], state_t["s2_odo"] = "road", w.t, w.odo + 2600.0
    w.move(2600)
    state["leg"] = "gone"
    w.dwell("S2", 10)
    w.move(600)
    return w.finish()


def _pieces(to_doors: bool) -> list[SegmentDraft]:
    w = World(t0=T0 + 175.0)  # (the interval ends 385 s into the world)
    out = _car_beside(w, to_doors=to_doors)
    car = next(x for x in w.tokens if x.name == "car")
    assert by_name(out, car) == []  # never a ride of its own
    return by_name(out, car, tentative=True)


def _charged(piece: SegmentDraft) -> bool:
    """Whether settlement keeps the piece alone (door to door: a 2600-m hop)."""
    seg = Segment.from_event(
        {**piece.to_event_fields(), "bus_id": "B", "seq": 1, "event_id": "e1"}, "R"
    )
    kept, dropped = settle_tentative([seg], JourneyPolicy(), lambda _: 2600.0)
    return len(kept) == 1 and dropped == 0


def test_a_candidates_piece_silent_while_the_bus_moved_is_lost_not_alighted() -> None:
    # before: closed alighted at S2 (it rode over lost_min_m, and nobody leaves a moving
    # bus), and the backend kept it door to door; a candidate was never known aboard, and
    # the co-movement rule refused it for that silence (_moved_on)
    (piece,) = _pieces(to_doors=False)
    assert (piece.start.stop_id, piece.end.stop_id, piece.end.cause) == ("S1", "S1", "lost")
    assert not _charged(piece)


def test_a_candidates_piece_heard_until_the_doors_opened_alighted_there() -> None:
    # a weak rider riding one hop is heard up to the doors where they get off: as before
    (piece,) = _pieces(to_doors=True)
    assert (piece.start.stop_id, piece.end.stop_id, piece.end.cause) == ("S1", "S2", "alighted")
    assert _charged(piece)
