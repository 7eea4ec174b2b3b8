"""Presence classifier: riders of a bus bunched with this one (issue 11, strong cells).

Two buses that run together (``transfer_bunched``, ``shared_stop_three_routes``) hear each
other's riders loudly at the stops they stand at side by side and through two shells on
the way. The real bus records such a rider's ride; if this bus also boards them, settlement
sees one rider on two buses at once, flags both legs ``suspected_replay`` and charges
neither (full scale, tuning seed 4, cell 11: r-00032, r-00184, r-00220 missed so). Two ways
this bus boarded them:

- a candidate's next rid (``_PRED_CANDIDATE``) boarded from the stop its old rid handed
  over, on in-bus evidence that looks at no level (:meth:`PresenceClassifier._heir_near`);
- a kept candidate (``co_only``) that moved with the bus at its level, made the next stop's
  candidate when the other bus drew up beside this one there, with no convoy level: the
  rise as the buses met was read as the bus approaching someone waiting
  (:meth:`PresenceClassifier._moved_with`).
"""

from __future__ import annotations

import math

import pytest

from edge._classifier import PresenceClassifier, _Rid
from tests.edge.compiled import interpreted_only
from tests.edge.test_classifier import T0, Token, World, add_riders, by_name, ride

ROT_DT = 130.0
"""Seconds after T0 the neighbour's rid ends: 110 s into the hop from S0 (1,100 m on)."""


def _wobble(w: World) -> float:
    """A body's and a bag's few dB."""
    return (-4.0, 1.0, -2.0, 3.0, 0.0, -5.0, 2.0)[int(w.t * 2) % 7]


def _beside(w: World) -> float | None:
    """A rider of the bus beside this one from S0 to S1, through two shells (-85 dBm).

    Heard at S0's doors, silent for 30 s after they close (the other bus pulls out
    behind), then every half second over the hop; gone once this bus reaches S1.
    """
    v = w.visit
    if w.seq != 1 or v is None:
        return None
    if v.close_t is not None and w.t - v.close_t < 30.0:
        return None
    return -85.0 + _wobble(w)


def _bunched_hop(*, n: int = 3) -> tuple[World, Token, list[Token]]:
    """``n`` riders aboard from S0 at -47 dBm; the neighbour's rid rotates 1,100 m into the
    hop."""
    w = World()
    riders = add_riders(w, -47.0, n=n)
    skew = math.ceil((T0 + ROT_DT) / 600.0) * 600.0 - (T0 + ROT_DT)
    nb = w.add(Token("nb", _beside, skew=skew))
    ride(w, ("S0", 20, 2000), ("S1", 20, 500), ("S2", 20, 300))
    w.finish()
    return w, nb, riders


def _rides(w: World, tok: Token) -> list[tuple[str | None, str | None]]:
    return [(d.start.stop_id, d.end.stop_id) for d in by_name(w.out, tok)]


def test_a_candidates_next_rid_heard_through_two_shells_is_not_boarded() -> None:
    """The neighbour, a candidate of S0 (heard at its doors), kept through its silence,
    its rid ending on the hop: its next rid, heard 38 dB below the riders, is paired with
    the old one (the same address) and is not boarded from S0."""
    w, nb, riders = _bunched_hop()
    assert _rides(w, nb) == []
    for r in riders:
        assert _rides(w, r) == [("S0", "S2")]


@interpreted_only
def test_without_the_level_test_the_next_rid_is_boarded_from_s0(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same world without the rule: the next rid boards from S0 (the bunched shape)."""
    monkeypatch.setattr(PresenceClassifier, "_heir_near", lambda self, r: True)
    w, nb, _ = _bunched_hop()
    assert _rides(w, nb) == [("S0", "S1")]


def test_a_weak_rider_aboard_is_boarded_with_few_riders_in_the_level() -> None:
    """With fewer than three riders in the level it says nothing (one loud phone is no
    level of the bus): the same next rid boards as before."""
    w, nb, (rd,) = _bunched_hop(n=1)
    assert _rides(w, nb) == [("S0", "S1")]
    assert _rides(w, rd) == [("S0", "S2")]


def _heir(c: PresenceClassifier, *, mean: float, pool_lvl: float) -> _Rid:
    """A new rid paired with a pooled candidate's old rid, its in-bus mean ``mean``."""
    old = _Rid(b"old-rid-xxxx", 0, 0.0)
    old.pool_lvl = pool_lvl
    new = _Rid(b"new-rid-xxxx", 1, 600.0)
    new.n_far, new.far_sum = 10, 10 * mean
    c._olds[old.rid] = (old, 2, None)
    c._match[new.rid] = old.rid
    return new


def test_the_heir_is_judged_by_the_louder_of_the_level_now_and_at_pool_entry() -> None:
    """The riders' level sank after the old rid joined the pool (heirs of the bus beside
    confirmed one after another pull it down): the level as it joined still judges."""
    c = PresenceClassifier()
    c._riders_lvl, c._n_lvl = -62.0, 5
    assert c._heir_near(_heir(c, mean=-85.0, pool_lvl=-62.0))  # (within 25 dB)
    assert not c._heir_near(_heir(c, mean=-85.0, pool_lvl=-47.0))
    assert c._heir_near(_heir(c, mean=-85.0, pool_lvl=-math.inf))
    c._riders_lvl = -47.0
    assert not c._heir_near(_heir(c, mean=-85.0, pool_lvl=-math.inf))
    assert c._heir_near(_heir(c, mean=-70.0, pool_lvl=-47.0))
    c._n_lvl = 2  # (a level of two riders says nothing)
    assert c._heir_near(_heir(c, mean=-85.0, pool_lvl=-math.inf))


# -- a kept candidate heard with the bus, louder at the next stop: the other bus drew up ---


def _behind(w: World) -> float | None:
    """A rider of a bus running behind this one from S0: heard at S0's doors (-75), silent
    for 30 s, then at -77 over the hop; from 60 m before S1 the other bus draws up beside
    (-50), stands there while S1's doors are open (-48), follows close behind to S2
    (-50), where the rider alights from it as this bus's doors stand open."""
    v = w.visit
    if w.seq == 1 and v is not None:
        if v.close_t is None:
            return -75.0 + _wobble(w)
        if w.t - v.close_t < 30.0:
            return None
        to_s1 = 1000.0 - (w.odo - w.stop_odo)
        return (-50.0 if to_s1 < 60.0 else -77.0) + _wobble(w) / 2
    if w.seq == 2 and v is not None:
        return (-48.0 if v.close_t is None else -50.0) + _wobble(w) / 2
    if w.seq == 3 and v is not None and v.close_t is None and w.t - v.open_t < 5.0:
        return -50.0 + _wobble(w) / 2
    return None


def _drawn_up() -> tuple[World, Token]:
    w = World()
    add_riders(w, -47.0)
    tok = w.add(Token("ab", _behind))
    ride(w, ("S0", 20, 1000), ("S1", 15, 1200), ("S2", 20, 300))
    w.finish()
    return w, tok


def test_a_kept_candidate_that_moved_with_the_bus_is_a_convoy_where_the_other_bus_drew_up() -> None:
    """Kept through a silence as S0's candidate, with co-movement points over 700 m at
    -77 dBm, 27 dB louder at S1 as the other bus drew up beside this one: its convoy
    level stands (no approach exception), and it does not board at S1 on the 1,200 m it
    followed close behind to S2, where it was last heard at the open doors."""
    w, tok = _drawn_up()
    assert _rides(w, tok) == []


@interpreted_only
def test_without_the_rule_the_bus_drawn_up_beside_boards_at_s1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same world without the rule: boarded at S1, alighted at S2 (r-00184's shape)."""
    monkeypatch.setattr(PresenceClassifier, "_moved_with", lambda self, r: False)
    w, tok = _drawn_up()
    assert _rides(w, tok) == [("S1", "S2")]
