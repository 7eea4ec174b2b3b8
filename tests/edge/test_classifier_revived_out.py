"""Presence classifier: a revived rider last heard standing at the next stop walked out there.

A rider closed at a stop as its token fell silent just past it (``alighted``), heard aboard
again far past it at its ride's level, is revived as that stop's candidate (nobody leaves a
moving bus and boards it again). Heard in the bus standing at the next stop's open doors,
``stay_s`` after they opened, and never after, it walked out there: the ride goes on to that
stop. Without the rule the revived candidacy had too little evidence for any boarding rule
(its stretch began far past its stop, a short one) and was dropped, so the ride stopped a
stop early (full scale, cell 24, tuning seed 1, ``shared_stop_three_routes`` r-00167,
BD003 -> BD010 charged BD003 -> BD009; docs/classifier.md, "Fortieth pass"). The first test
fails without the rule.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.edge.test_classifier import Token, World, add_riders, by_name

Legs = list[tuple[str | None, str | None]]


def _tok(
    *, s3_until: float, after_s3: bool = False, s3_level: float = -85.0
) -> Callable[[World], float | None]:
    """A fob heard every 2 s at -85 dBm: at S1's doors and on the way to S2, at S2's doors
    and 150 m past them, silent, heard again 900 m past S2 to S3, at S3's open doors up to
    ``s3_until`` s after they opened (at ``s3_level``), and on past S3 if ``after_s3``."""

    def f(w: World) -> float | None:
        v = w.visit
        assert v is not None
        if round(w.t / 0.5) % 4:
            return None
        d = w.odo - w.stop_odo
        if w.seq == 1:
            return -85.0
        if w.seq == 2:
            if v.close_t is None or d < 150.0 or d >= 900.0:
                return -85.0
            return None
        if w.seq == 3:
            if v.close_t is None:
                return s3_level if w.t - v.open_t <= s3_until else None
            return -85.0 if after_s3 else None
        return None

    return f


def _run(tok_rssi: Callable[[World], float | None]) -> tuple[Legs, Legs]:
    """The token's legs and the three riders' (S1 -> S4 at -70 dBm)."""
    w = World()
    riders = add_riders(w, -70.0)
    tok = w.add(Token("tok", tok_rssi))
    w.dwell("S1", 20)
    w.move(1500)
    w.dwell("S2", 15)
    w.move(1000)
    w.dwell("S3", 15)
    w.move(800)
    w.dwell("S4", 10)
    w.move(200)
    out = w.finish()
    legs = [(x.start.stop_id, x.end.stop_id) for r in riders for x in by_name(out, r)]
    return [(x.start.stop_id, x.end.stop_id) for x in by_name(out, tok)], legs


def test_a_revived_rider_standing_at_the_next_doors_and_never_after_alighted_there() -> None:
    # closed at S2 (silent 150 m past it), revived 900 m on, heard at S3's doors 6 s after
    # they opened, never again: S2 -> S3 joins the ride S1 -> S2 (settlement: one rid, the
    # two segments touch); without the rule the revived candidacy was dropped
    tok, riders = _run(_tok(s3_until=6.0))
    assert tok == [("S1", "S2"), ("S2", "S3")]
    assert riders == [("S1", "S4")] * 3


def test_a_revived_token_gone_as_the_doors_opened_is_not_taken_to_that_stop() -> None:
    # guard: last heard 2 s after S3's doors opened (before stay_s): it did not stand in the
    # bus there (a car that drove on as the bus halted); the ride keeps its end at S2
    tok, _ = _run(_tok(s3_until=2.0))
    assert tok == [("S1", "S2")]


def test_a_revived_token_far_above_its_ride_at_the_doors_is_not_taken_there() -> None:
    # guard: heard at S3's doors 15 dB louder than its ride (someone at the stop, not the
    # rider standing in the bus): not this rule
    tok, _ = _run(_tok(s3_until=6.0, s3_level=-70.0))
    assert tok == [("S1", "S2")]


def test_a_revived_rider_heard_on_past_the_next_stop_rides_on() -> None:
    # guard: heard past S3 too: the other rules board it (it rode on), not this one
    tok, _ = _run(_tok(s3_until=15.0, after_s3=True))
    assert tok[0] == ("S1", "S2")
    assert tok[1][0] == "S2"
    assert tok[1][1] != "S3"
