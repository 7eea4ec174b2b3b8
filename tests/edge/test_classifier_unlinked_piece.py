"""Presence classifier: an unpaired new rid that rode like a rider is sent as a piece.

Full scale, cell 24 (every token's address changes with its rid), tuning seed 4,
``door_sensor_stuck`` on ``bus-17-01-r2`` (docs/classifier.md, "Thirty-sixth pass"):
r-00064 rode BD002 -> BD007; its ride was closed ``alighted`` at BD006 as its rid faded,
and its next rid, first heard 311 m past BD006 from another address, rode at its level to
BD007's doors and was never sent (unpaired, never through a stop's doors): charged
BD002 -> BD006. Sent as a tentative piece naming no stop with one co-movement point, the
backend joins it to the rider's confirmed segment (``backend/_tentative.py``); alone it
charges nobody. The first test fails without ``PresenceClassifier._unlinked_piece``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from edge._params import ClassifierParams
from tests.edge.test_classifier import T0, Token, World, add_riders, by_name, ends

START = T0 + 400.0
BOUNDARY = (math.floor(START / 600) + 1) * 600.0


def _fob(world: World) -> float | None:
    """Heard every 2 s at -80 dBm from S1's doors through S2's and 40 m past S2 at -90
    (its rid ends some 10 s later)."""
    if round(world.t * 2) % 4 or world.seq > 2:
        return None
    v = world.visit
    if world.seq < 2 or (v is not None and v.close_t is None):
        return -80.0
    return -90.0 if world.odo - world.stop_odo <= 40.0 else None


def _next_rid(first_m: float, stop: int) -> Callable[[World], float | None]:
    """Heard every second at -80 dBm from ``first_m`` past S2 to the bus drawing up at the
    stop after ``stop``; never at a stop's doors."""

    def f(world: World) -> float | None:
        v = world.visit
        if world.seq != stop or (v is not None and v.close_t is None) or round(world.t * 2) % 2:
            return None
        return -80.0 if world.seq > 2 or world.odo - world.stop_odo >= first_m else None

    return f


def _run(
    nxt_heard: Callable[[World], float | None], params: ClassifierParams | None = None
) -> tuple[World, Token, Token]:
    w = World(params, t0=START)
    add_riders(w, -78.0)
    fob = w.add(Token("fb", _fob))
    fob.addr = "C3:5A:10:22:7E:01"  # static: drawn afresh with every rid
    nxt = w.add(Token("nx", nxt_heard))
    nxt.addr = "F1:45:6A:5C:C0:B4"
    w.dwell("S1", 15)
    w.move(1150)
    w.dwell("S2", 17)
    assert w.t < BOUNDARY - 10.0  # (the fob's rid ends past S2)
    w.move(1500)
    w.dwell("S3", 15)
    w.move(600)
    w.finish()
    return w, fob, nxt


def test_an_unpaired_next_rid_that_rode_is_sent_as_a_piece_naming_no_stop() -> None:
    # first heard 200 m past S2, 16 s after the fob's last advert (past its pairing window
    # of six 2-s gaps) and 7 s into its interval, riding at the riders' level to S3, silent
    # at its doors (without the rule: dropped `rotating_silent`, nothing sent)
    w, fob, nxt = _run(_next_rid(200.0, 2))
    assert ends(w, fob) == [("S1", "S2", "boarded", "alighted")]
    assert ends(w, nxt) == []  # (no ride)
    (piece,) = by_name(w.out, nxt, tentative=True)
    assert (piece.start.stop_id, piece.end.stop_id, piece.end.cause) == (None, "S3", "alighted")
    assert piece.evidence["co_n"] == 1
    assert piece.evidence["co_lo"] == piece.evidence["co_hi"] == -80.0


def test_an_unpaired_next_rid_heard_briefly_sends_nothing() -> None:
    # heard only over the last 100 m before S3: it did not ride like a rider
    w, _, nxt = _run(_next_rid(1400.0, 2))
    assert by_name(w.out, nxt, tentative=True) == []


def test_no_unlinked_piece_with_tentative_pieces_off() -> None:
    w, _, nxt = _run(_next_rid(200.0, 2), ClassifierParams(tentative_points=0))
    assert by_name(w.out, nxt, tentative=True) == []
