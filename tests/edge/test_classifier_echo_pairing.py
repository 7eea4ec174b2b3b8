"""Presence classifier: the rotation pairing and the echo's stretch (issue 11, cell 24).

Two tokens whose BLE addresses rotate with their rids and whose clocks agree rotate
together on a hop: a rider aboard since S0 (its phone echoing the bus since S0) and a
token heard at S1's doors and after them (echoing the bus since S1), a candidate when
both rids end. The pairing takes riders' old rids first; the rider's next rid is not
heard for a while, the S1 token's at once, and without the echo the pairing gives the S1
token's next rid to the rider's old one (full scale, tuning seed 2, cell 24,
``long_ride_many_intervals`` r-00042 and r-00053: r-00053's ride held with no boarding
stop). The rider's old rid was heard echoing S0's stretch after the bus left S1, where the
other's stretch began: a phone does not go back to a stretch it left, so the two are two
phones' (:meth:`PresenceClassifier._echo_apart`).
"""

from __future__ import annotations

from edge._classifier import PresenceClassifier, _Rid
from tests.edge.test_classifier import T0, World, add_riders, by_name
from tests.edge.test_classifier_echo import Echo, EchoWorld, RidAddressToken, _trip, own

SKEW = 420.0
"""Both tokens' clocks: their rids end 130 s after the world's start (T0, 40 s into an
interval), 200 m past S1 (its doors close 120 s after T0, the bus at 10 m/s)."""

ROT_T = 140.0
"""Seconds after T0 the two rids end."""


def _rider(w: World) -> float | None:
    """Aboard from S0: heard every half second, silent for 60 s after its rid rotates."""
    dt = w.t - T0
    if w.visit is None or (ROT_T <= dt < ROT_T + 60.0):
        return None
    return -84.0 + _wobble(w)


def _joiner(w: World) -> float | None:
    """Heard from S1's doors on, every half second, through its rid's rotation."""
    v = w.visit
    if v is None or v.stop_index is None or v.stop_index < 1:
        return None
    return -86.0 + _wobble(w)


def _wobble(w: World) -> float:
    """A body's and a bag's few dB (a steady level is a vehicle beside the bus)."""
    return (-4.0, 1.0, -2.0, 3.0, 0.0, -5.0, 2.0)[int(w.t * 2) % 7]


def _rides(rider_echo: Echo | None, joiner_echo: Echo | None) -> tuple[list[str], list[str]]:
    """The two tokens' rides (``start stop -> end stop``; ``-`` for none) as the echoes say."""
    w = EchoWorld()
    add_riders(w, -80.0)
    rider = w.add(RidAddressToken("ra", _rider, skew=SKEW))
    joiner = w.add(RidAddressToken("jb", _joiner, skew=SKEW))
    if rider_echo is not None:
        w.echoes["ra"] = rider_echo
    if joiner_echo is not None:
        w.echoes["jb"] = joiner_echo
    _trip(w)
    out = w.finish()
    return (
        [f"{d.start.stop_id or '-'}->{d.end.stop_id or '-'}" for d in by_name(out, rider)],
        [f"{d.start.stop_id or '-'}->{d.end.stop_id or '-'}" for d in by_name(out, joiner)],
    )


def test_a_riders_old_rid_does_not_take_the_next_rid_of_a_phone_echoing_a_later_stop() -> None:
    """The joiner's next rid echoes S1's stretch; the rider's old rid was heard echoing S0's
    200 m past S1: not one phone. The joiner is boarded at S1 and rides to the end."""
    _, joiner = _rides(own(0), own(1))
    assert joiner, "the joiner was charged nothing"
    assert joiner[0].startswith("S1->"), joiner
    assert all(not j.startswith("-") for j in joiner), joiner


def test_without_the_echo_the_pairing_gives_the_joiners_next_rid_to_the_rider() -> None:
    """The same world without echoes (or with one stretch for both, which bars nothing): the
    joiner's next rid goes on with the rider's ride (a segment continued, no boarding)."""
    for echoes in ((None, None), (own(0), own(0))):
        _, joiner = _rides(*echoes)
        assert not (joiner and joiner[0].startswith("S1->")), joiner


def test_echo_apart_needs_the_old_rids_stretch_heard_after_the_new_ones_stop() -> None:
    """The bar reads where the bus was at the old rid's latest echo (``eo_t1``): heard
    with S0's stretch only before the bus left S1 (S1 still on the beacon), a phone may have
    begun S1's stretch afresh since; a fresh rid (``eo_t1`` 0.0, as a checkpoint written
    before the field restores it) bars nothing."""
    w = EchoWorld()
    _trip(w)
    c: PresenceClassifier = w.c
    visits = c._visits
    s1 = next(v for v in visits if v.stop_index == 1)
    assert s1.close_t is not None
    old = _Rid(b"old-rid-xxxx", 0, 0.0)
    new = _Rid(b"new-rid-xxxx", 0, 0.0)
    old.eo_seq, old.eo_k = 0, 0
    new.eo_seq, new.eo_k, new.eo_t0 = 1, 1, s1.close_t + 20.0
    old.eo_t1 = s1.close_t + 10.0
    assert c._echo_apart(old, new)
    old.eo_t1 = s1.close_t - 1.0  # (S1's doors still open: the beacon sends S1)
    assert not c._echo_apart(old, new)
    old.eo_t1 = 0.0
    assert not c._echo_apart(old, new)
    old.eo_t1, new.eo_seq = s1.close_t + 10.0, 0  # one stretch
    assert not c._echo_apart(old, new)
