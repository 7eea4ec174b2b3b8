"""Presence classifier: a waiter at a later stop does not go on with a passer-by's echo point.

Twenty-fifth pass (docs/classifier.md, issue 11, weak cells): full scale, tuning seed 3,
cell 22, ``shared_stop_three_routes`` r-00313, someone at BD009 heard only as bus-55-01
drew near and at its doors, echoing the bus since BD006 (a beacon carries farther than a
token), went on, by :meth:`PresenceClassifier._echo_link`, with another token's dropped
rid (r-00284, a passer-by heard for 1.5 s at one echo point mid-hop): one point each made
the echo rule's two, and it was charged BD006 -> BD009. A dropped rid now hands its
stretch on only with ``echo_points`` points of its own. Scripted through the real
classifier (:mod:`tests.edge.test_classifier_echo`'s world: S0 .. S5, 800 m apart, 20-s
dwells, 10 m/s); the test fails on the code before this pass.
"""

from __future__ import annotations

from tests.edge.test_classifier import Token, add_riders, by_name
from tests.edge.test_classifier_echo import EchoWorld, Plan, _marks, _trip, clear, own


def _segments(w: EchoWorld, tok: Token) -> list[str]:
    return [
        f"{d.start.stop_id}->{d.end.stop_id}"
        for d in by_name(w.finish(), tok)
        if d.start.cause != "tentative"
    ]


PASSER: Plan = {1: ((), (300.0,))}
"""Heard once, 300 m past S1 (an echo point), never again: someone the bus passed."""

WAITER: Plan = {2: ((), (700.0, 790.0)), 3: ((2.0, 4.0, 6.0, 8.0), ())}
"""Heard 100 and 10 m before S3's doors (the first an echo point) and at them: someone
waiting at S3 who does not board."""


def _g6000(index: int, seq: int) -> bool:
    """A bus of another pattern serves S3 as its stop index 1 (G6000 serves BD009 as its
    index 3, which bus-55 reads as BD006): the thirty-eighth pass's collision guard."""
    return (index, seq) == (3, 1)


def _passer_and_waiter(*, passer: bool = True, guard: bool = True, feed: bool = True) -> list[str]:
    """The passer-by and the waiter, both echoing this bus since S1, on one clock whose rid
    rotates between them (the passer-by's rid of one interval, the waiter's of the next):
    the waiter's segments. ``guard``: the bus knows the other pattern's seq at S3; else its
    feed rules out a collision and a route looping back (``clear``); ``feed`` False: the
    bus has no feed to tell."""
    w = EchoWorld()
    if feed:
        w.c.echo_ambiguous = _g6000 if guard else clear
    add_riders(w, -80.0)
    skew = 350.0  # (rids change 250 s after the world's interval began: on the hop to S2)
    if passer:
        w.add(Token("passer", lambda world: -92.0 if _marks(world, PASSER) else None, skew=skew))  # type: ignore[arg-type]
    tok = w.add(Token("waiter", lambda world: -92.0 if _marks(world, WAITER) else None, skew=skew))  # type: ignore[arg-type]
    w.echoes["passer"] = w.echoes["waiter"] = own(1)
    _trip(w)
    return _segments(w, tok)


def test_a_waiter_does_not_go_on_with_a_passers_by_one_echo_point() -> None:
    """Full scale, tuning seed 3, cell 22, shared_stop_three_routes r-00313 on bus-55-01:
    first heard 761 m past BD008 as the bus drew near BD009 (one point), at BD009's doors,
    never past them; its echo since BD006. Linked with r-00284's dropped rid (one point,
    1.5 s mid-hop BD006 -> BD008; the same interval, stop, seq and clock), the two points
    made the echo rule's two: charged BD006 -> BD009.

    Thirty-eighth pass: its stretch is old (the bus served BD008 after BD006 before it first
    heard it), so one point of its own boards it, unless its seq may be another bus's at
    BD009: r-00313's echo is a code collision with a G6000 run there (its index 3 of
    BD009, seq 3, read by bus-55 as BD006). Where the feed rules out a collision and a
    route looping back past S1 (forty-first pass), waiter alone or linked, it is charged
    S1 -> S3; without a feed to tell, not."""
    assert _passer_and_waiter() == []
    assert _passer_and_waiter(passer=False) == []
    assert _passer_and_waiter(feed=False) == []
    assert _passer_and_waiter(guard=False) == _passer_and_waiter(passer=False, guard=False)
    assert _passer_and_waiter(guard=False) == ["S1->S3"]
