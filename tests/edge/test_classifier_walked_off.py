"""Presence classifier: an old rid that may have walked off gets no lossy-channel pairing window.

Full scale, cell 1 (default radio), tuning seed 3, ``phone_deep_in_bag`` on
``bus-55-01-r2`` (docs/classifier.md, "Thirty-fourth pass"): r-00082 rode BD005 -> BD008
at -80 dBm (heard every 1.84 s on average), was heard at BD008's doors and 1-39 m past
them at -84..-94 dBm as it walked off, as its rid ended. A passer-by's new rid, first
heard 130 m on, 8.8 s after r-00082's last advert (within six of its gaps, the rotation
pairing's window for a token heard through a lossy channel), was paired with it,
confirmed ``continued`` and charged BD008 -> BD009 (r-01197). In
``shared_stop_three_routes`` a passer-by at BD009 (r-02794), heard on the approach and
at the doors and last as they closed, was BD009's candidate as its rid ended; another
passer-by's new rid first heard 96 m on, 14 s later, took over its boarding and was
charged from BD009 (r-03012), closed ``lost`` by ``finish`` at the trace's end. The first
test of each shape fails without the rule (``PresenceClassifier._walked_off``); the
guards of the lossy-channel window fail with the rider's or the candidate's clause made
always true; a token's own next rid (its address) pairs at any gap as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from edge._classifier import _may_change_with_rid
from tests.edge.test_classifier import T0, Ends, Token, World, add_riders, ends

START = T0 + 400.0
"""160 s before the tokens' rid boundary (T0 is 40 s into an interval)."""
BOUNDARY = (math.floor(START / 600) + 1) * 600.0


def _rider(last_m: float, level_after: float) -> Callable[[World], float | None]:
    """Heard every 2 s at -80 dBm from S1's doors through S2's (a lossy channel: six of its
    gaps are 12 s), and past S2 at ``level_after`` up to ``last_m`` past its departure,
    never after (its rid ends 9-13 s later)."""

    def f(world: World) -> float | None:
        if round(world.t * 2) % 4 or world.seq > 2:
            return None
        v = world.visit
        if world.seq < 2 or (v is not None and v.close_t is None):
            return -80.0
        return level_after if world.odo - world.stop_odo <= last_m else None

    return f


def _passer_by(world: World) -> float | None:
    """First heard 140 m past S2 (just after the boundary), every second at -83 dBm, for
    300 m; never at a stop's doors."""
    v = world.visit
    if world.seq != 2 or (v is not None and v.close_t is None) or round(world.t * 2) % 2:
        return None
    past = world.odo - world.stop_odo
    return -83.0 if 140.0 <= past <= 440.0 else None


def _far_off(world: World) -> float | None:
    """Someone at S1 heard at the receiver's floor (-96 dBm) while its doors stand open."""
    v = world.visit
    return -96.0 if world.seq == 1 and v is not None and v.close_t is None else None


def _run(rider: Token, passer: Token, s2_dwell: float = 17.0) -> tuple[Ends, Ends]:
    w = World(t0=START)
    add_riders(w, -60.0)
    w.add(Token("fo", _far_off))  # (the receiver's floor: -96 dBm)
    w.add(rider)
    w.add(passer)
    w.dwell("S1", 15)
    w.move(1150)
    w.dwell("S2", s2_dwell)
    assert w.t < BOUNDARY - 10.0  # (the rider's rid ends past S2)
    w.move(1500)
    w.dwell("S3", 15)
    w.move(600)
    w.finish()
    return ends(w, rider), ends(w, passer)


def test_a_passer_by_first_heard_after_a_rider_walked_off_does_not_continue_its_ride() -> None:
    # the rider is heard 40 m past S2 at -90 dBm (10 dB under its ride) as its rid ends;
    # the passer-by's new rid, first heard 140 m past S2 10 s later (within six of the
    # rider's 2-s gaps), is not paired with it: the rider alighted at S2, nobody is
    # charged S2 -> S3 (without the rule: the passer-by's rid continued it to S3)
    rider, passer = _run(Token("lf", _rider(40.0, -90.0)), Token("ps", _passer_by))
    assert rider == [("S1", "S2", "boarded", "alighted")]
    assert passer == []


def test_its_own_next_rid_from_its_address_still_continues_the_ride() -> None:
    # the same shape, but the new rid is the rider's own (a phone keeps its BLE address):
    # paired by its address whatever the gap, the ride goes on to S3
    rider = Token("lf", _rider(40.0, -90.0))
    passer = Token("ps", _passer_by)
    passer.addr = rider.addr
    rider_ends, passer_ends = _run(rider, passer)
    assert rider_ends == [("S1", "S2", "boarded", "rotated")]  # (its rid ended by S2)
    assert passer_ends == [(None, "S3", "continued", "alighted")]


def test_a_rider_at_the_receivers_floor_keeps_the_lossy_window() -> None:
    # the same walk-off shape, but the bus's floor is the rider's own level (nobody weaker
    # heard): at the floor a silence is lost packets as well as a walk (full scale, cell 24,
    # tuning seed 1, transfer_bunched r-00059: at -88 dBm, 6 dB above the floor, last heard
    # 23 m past BD006, its next rid from a new address 6 s later); the passer-by's new rid
    # continues the ride as before the rule
    w = World(t0=START)
    add_riders(w, -60.0)
    rider = w.add(Token("lf", _rider(40.0, -90.0)))
    passer = w.add(Token("ps", _passer_by))
    w.dwell("S1", 15)
    w.move(1150)
    w.dwell("S2", 17)
    w.move(1500)
    w.dwell("S3", 15)
    w.move(600)
    w.finish()
    assert ends(w, rider) == [("S1", "S2", "boarded", "rotated")]
    assert ends(w, passer) == [(None, "S3", "continued", "alighted")]


def test_a_rider_heard_at_its_level_well_past_the_stop_keeps_the_lossy_window() -> None:
    # heard at its ride's level 160 m past S2 as its rid ends, it rode on (nobody leaves a
    # moving bus): a new rid of another address (a fob) first heard 100 m on, 10 s later
    # (within six of its gaps), continues its ride as before
    def fob(world: World) -> float | None:
        v = world.visit
        if world.seq != 2 or (v is not None and v.close_t is None) or round(world.t * 2) % 2:
            return None
        return -80.0 if world.odo - world.stop_odo >= 260.0 else None

    rider_ends, fob_ends = _run(Token("lf", _rider(160.0, -80.0)), Token("fb", fob), 10.0)
    assert rider_ends == [("S1", None, "boarded", "rotated")]
    assert fob_ends == [(None, "S3", "continued", "alighted")]


def _candidate_run(first_m: float, waiter_m: float = -1.0) -> Ends:
    """Three riders at -75 dBm; a waiter at S2 heard every 3 s at -88 dBm at its open doors
    and up to ``waiter_m`` past them, never after (its rid ends 3-13 s later); a new rid
    of another address first heard ``first_m`` past S2, every second at -86 dBm, to the
    end of the trace 600 m past S2 (``finish``). The new rid's ends."""
    w = World(t0=START)
    add_riders(w, -75.0)

    def waiter(world: World) -> float | None:
        v = world.visit
        if world.seq != 2 or round(world.t * 2) % 6:
            return None
        if v is not None and v.close_t is not None and world.odo - world.stop_odo > waiter_m:
            return None
        return -88.0

    def passer(world: World) -> float | None:
        v = world.visit
        if world.seq != 2 or (v is not None and v.close_t is None) or round(world.t * 2) % 2:
            return None
        return -86.0 if world.odo - world.stop_odo >= first_m else None

    w.add(Token("wt", waiter))
    ps = w.add(Token("ps", passer))
    w.dwell("S1", 15)
    w.move(1150)
    w.dwell("S2", 17)
    assert w.t < BOUNDARY - 10.0
    w.move(600)
    w.finish()
    return ends(w, ps)


def test_a_passer_by_first_heard_after_a_waiter_stayed_at_the_stop_does_not_board() -> None:
    # the waiter's rid ends as the doors close (never heard past the stop); a passer-by's
    # new rid first heard 150 m on, 15 s after its last advert (within six of its 3-s
    # gaps), does not take over its boarding: nobody is charged from S2 (without the
    # rule: boarded S2, closed `lost` by `finish`, as r-03012 was)
    assert _candidate_run(150.0) == []


def test_a_waiter_heard_past_the_stop_hands_its_boarding_on_at_its_rhythm() -> None:
    # heard 100 m past S2 at its level as its rid ends (the bus had carried it away from
    # the stop), it boarded: its next rid from another address (a fob), first heard 15 s
    # later, within six of its 3-s gaps, takes over its boarding at S2 as before
    assert _candidate_run(250.0, 100.0) == [("S2", "S2", "boarded", "lost")]


# -- a token whose address may change with its rid (docs/classifier.md, "Thirty-sixth pass")

STATIC = "C3:5A:10:22:7E:01"
"""A static random address (top bits 11): a busbell fob draws one with every rid."""
STATIC_NEXT = "F1:45:6A:5C:C0:B4"
RPA = "5D:D1:6F:E7:E8:5B"
"""A resolvable private address (top bits 01): a phone's host re-draws it on its own timer."""


def test_a_fobs_next_rid_from_a_new_address_continues_its_ride_past_a_fade() -> None:
    # the walk-off shape, but the rider's address is static random: its next rid comes
    # from another address (a fob's, cell 24: every token's), known only by the lossy
    # window; the new rid first heard 140 m past S2, 10 s later, continues the ride to S3
    # (with the rule: the ride closed `alighted` S2 and the new rid went unpaired)
    rider = Token("lf", _rider(40.0, -90.0))
    rider.addr = STATIC
    nxt = Token("ps", _passer_by)
    nxt.addr = STATIC_NEXT
    rider_ends, next_ends = _run(rider, nxt)
    assert rider_ends == [("S1", "S2", "boarded", "rotated")]
    assert next_ends == [(None, "S3", "continued", "alighted")]


def test_a_phones_walk_off_keeps_the_base_window() -> None:
    # the same with the rider's address resolvable private (a phone's, which outlives its
    # rid): a new rid from a static address 10 s later is a passer-by's, not paired (the
    # rule as before; cell 1 seed 3's r-00082 and r-02794 were phones)
    rider = Token("lf", _rider(40.0, -90.0))
    rider.addr = RPA
    passer = Token("ps", _passer_by)
    passer.addr = STATIC_NEXT
    rider_ends, passer_ends = _run(rider, passer)
    assert rider_ends == [("S1", "S2", "boarded", "alighted")]
    assert passer_ends == []


@pytest.mark.parametrize(
    ("addr", "may"),
    [
        (STATIC, True),
        ("0A:11:22:33:44:55", True),  # non-resolvable private (top bits 00)
        (RPA, False),
        ("8A:11:22:33:44:55", False),  # (10: reserved)
        ("", False),
        ("addr-lf", False),  # (not hex: the scripted worlds' addresses)
        ("zz:11", False),
    ],
)
def test_which_addresses_may_change_with_the_rid(addr: str, may: bool) -> None:
    assert _may_change_with_rid(addr) is may
