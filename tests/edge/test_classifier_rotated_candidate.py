"""Presence classifier: a candidate's new rid boards on the rotation path only at its level.

Full scale, cell 1 (default radio), tuning seed 3, ``transfer_bunched`` (docs/classifier.md,
"A candidate's heir heard far below it"): riders of the bus bunched beside this one at the
shared stop BD003 were this bus's candidates there; their rids ended as the doors closed,
the rotation pairing handed each candidacy to the token's new rid, heard 21-29 dB below the
candidate's level through two shells, and ``_check_rotating`` confirmed it ``boarded`` at
BD003 on its own 20 s, four adverts and 100 m. The first test fails without the rule
(``PresenceClassifier._fell_from_candidate``); the second guards the riders' margin.
"""

from __future__ import annotations

import math

from tests.edge.test_classifier import T0, Token, World, add_riders, by_name

_BND = (math.floor(T0 / 600) + 3) * 600.0
"""A rid boundary: the candidate's rid ends 10 s after S1's doors closed, 100 m on (its
new rid is no candidate of S1: first heard past the stop, it is a rotating rid)."""


def _candidate(after: float) -> Token:
    """Heard from S1's doors at -68 dBm (the riders' level) until its rid ends as the bus
    leaves; under its next rid at ``after`` dBm, moving with the bus, until 150 m before
    S2 (a vehicle beside the bus drives on as it halts), then never again."""

    def f(w: World) -> float | None:
        if w.seq != 2:
            return None
        if w.t < _BND:
            return -68.0
        return after if w.t >= _BND + 1.0 and w.odo < _S2_ODO - 150.0 else None

    return Token("cand", f)


_S2_ODO = 1500.0 + 3000.0


def _segments(after: float) -> list[tuple[str | None, str | None, str]]:
    w = World(t0=_BND - 200.0)
    add_riders(w, -66.0)
    cand = w.add(_candidate(after))
    w.dwell("S0", 15)
    w.move(1500)  # 150 s at 10 m/s: S1's doors open 35 s before the boundary
    w.dwell("S1", _BND - 10.0 - w.t)
    w.move(3000)
    w.dwell("S2", 15)
    w.move(600)
    return [(s.start.stop_id, s.end.stop_id, s.end.cause) for s in by_name(w.finish(), cand)]


def test_a_candidates_new_rid_heard_far_below_it_is_not_boarded_at_its_stop() -> None:
    """20 dB below the candidate's level at S1 (22 dB below the riders: in-bus by the
    riders' margin): a rider of a vehicle beside, not this bus's. Without the rule the
    rotation path boarded it at S1 and, silent as the bus pulled in 2.85 km on, it
    "alighted" at S2."""
    assert _segments(-88.0) == []


def test_a_candidates_new_rid_a_little_below_it_still_boards_at_its_stop() -> None:
    """14 dB below its level at S1 (a phone put in a pocket as its owner sat down; the
    riders' heirs on the tuning seeds were at most 7 dB below): boarded at S1 by the
    pairing, alighted at S2 (the first doors after its last advert, 2.85 km ridden).
    Fails if the bound were the drift bound (12 dB)."""
    assert _segments(-82.0) == [("S1", "S2", "alighted")]
