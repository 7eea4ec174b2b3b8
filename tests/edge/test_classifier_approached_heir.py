"""Presence classifier: a candidate's heir approached at a later stop boards there.

Scratch worlds of ``rush_hour_crowd`` with five times the cars and waiters (full scale,
default radio, tuning seed 4; docs/classifier.md, "Thirty-seventh pass"): a car that drew
up at BD008 and kept beside the bus was BD008's candidate at -87 dBm when its rid ended
near BD009; the rotation pairing gave its boarding to the new rids of two riders waiting
at BD009 (heard at -93 dBm 100 m off, -50 at the doors), charged BD008 -> BD010 for BD009
-> BD010 (unseen seed 52's r-00212 shape). The first test fails without the rule
(``PresenceClassifier._approached``).
"""

from __future__ import annotations

import math

from tests.edge.test_classifier import T0, Ends, Token, World, add_riders, ends

START = T0 + 400.0
"""160 s before the tokens' rid boundary (T0 is 40 s into an interval)."""
BOUNDARY = (math.floor(START / 600) + 1) * 600.0


def _run(at_doors: float) -> Ends:
    """Three riders at -60 dBm; someone at S2 heard every 3 s at -88 dBm at its open doors
    and up to 100 m past them, never after (its rid ends 3-13 s later: the rotation
    pairing's candidate); someone waiting at S3, 350 m past S2, whose new rid (another
    address) is first heard 250 m past S2 at -93 dBm, louder as the bus comes, at
    ``at_doors`` dBm at S3's open doors and aboard to S4, where it alights. Its ends."""
    w = World(t0=START)
    add_riders(w, -60.0)

    def first(world: World) -> float | None:
        v = world.visit
        if world.seq != 2 or round(world.t * 2) % 6:
            return None
        if v is not None and v.close_t is not None and world.odo - world.stop_odo > 100.0:
            return None
        return -88.0

    def waiter(world: World) -> float | None:
        if world.seq < 2 or round(world.t * 2) % 2:
            return None
        if world.seq == 2:
            past = world.odo - world.stop_odo
            if past < 250.0 or world.visit is None or world.visit.close_t is None:
                return None
            return -93.0 + (at_doors + 93.0) * (past - 250.0) / 100.0  # (the approach)
        v = world.visit
        if world.seq >= 4 and (v is None or v.close_t is not None or world.t - v.open_t > 3.0):
            return None  # (alighted at S4)
        return at_doors

    w.add(Token("wt", first))
    tok = w.add(Token("nx", waiter))
    w.dwell("S1", 15)
    w.move(1150)
    w.dwell("S2", 17)
    assert w.t < BOUNDARY - 10.0
    w.move(350)
    assert w.t > BOUNDARY
    w.dwell("S3", 20)
    w.move(1000)
    w.dwell("S4", 15)
    w.move(600)
    w.finish()
    return ends(w, tok)


def test_a_waiter_approached_at_the_next_stop_boards_there_not_at_the_candidates() -> None:
    # heard at S3's doors 33 dB above the level S2's candidate was heard at as the bus
    # left S2: someone waiting at S3, heard from afar as the bus came, not the candidate's
    # token (without the rule: boarded S2, the candidate's stop, charged S2 -> S4)
    assert _run(-55.0) == [("S3", "S4", "boarded", "alighted")]


def test_a_candidates_heir_at_its_level_keeps_its_boarding() -> None:
    # guard: heard at S3's doors at the candidate's own level (within sparse_fall_db), it
    # may be the candidate's token that rode on: the pairing's boarding at S2 stands
    assert _run(-86.0)[0][0] == "S2"
