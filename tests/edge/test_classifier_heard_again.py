"""Presence classifier: a rider's token heard again under its next rid (issue 11, twelfth pass).

Scripted world (``tests.edge.test_classifier.World``) of a leg charged from the wrong stop
in the full-scale runs of tuning seed 2 (-25 dBm, ``quiet_route`` r-00038;
docs/classifier.md, "Twelfth pass"): the first test fails without the rule, the second is
its guard. Then the rid's successor known by its address (thirteenth pass): paired first
(the first test), never given to another token's old rid (tuning seed 1, -25 dBm,
``rush_hour_crowd`` r-00330), and not when the address is two devices'. Last, a fob's
new rid nothing paired keeps a track (fourteenth pass): carried to the next stop and
standing in the bus there, it boards from the stop before (fails without the rule), with
two guards.
"""

from __future__ import annotations

import math
import sys

import pytest

from edge._segment import SegmentDraft
from tests.edge.test_classifier import T0, Token, World, add_riders, by_name, ride

START = T0 + 400.0
"""160 s before the token's rid boundary (token time = GNSS time here)."""
BOUNDARY = (math.floor(START / 600) + 1) * 600.0


def _ride(
    after_silence: bool, *, twin: bool = False, twin_skew: float = -30.0
) -> list[tuple[str | None, str | None, str]]:
    """Three riders at -77 dBm; a weak token (-93 dBm, every second) boards at S1, rides
    the 800-m hop and 280 m past S2 (not heard at its doors), then nothing for 32 s,
    across its rid's boundary (22 s after its last advert: not at its interval's end, so
    not a rotation by the rid's own timing, and past the pairing's window). Its new rid
    (``after_silence``: from the same BLE address) is heard 320 m on, then at S3's
    doors, and every second to S4, where it alights. Its segments' (start, end, cause).

    ``twin``: another device, whose clock runs 30 s behind (``twin_skew``), sends from the
    token's BLE address (a collision), heard in the bus like the token's next rid from its
    own next interval on, 32 s after the boundary (the token is never heard again; with
    its clock ahead, from 28 s before the boundary)."""
    w = World(t0=START)
    add_riders(w, -77.0)
    if twin:
        twin_t = BOUNDARY - twin_skew + 2.0  # (2 s into its own next interval)
        twc = w.add(Token("twc", lambda wd: -93.0 if wd.t >= twin_t and wd.seq < 4 else None))
        twc.addr, twc.skew = "addr-bag", twin_skew  # (its next interval begins 30 s later)
    quiet = (START + 138.0, START + 170.0)  # the 32-s silence; the boundary at 160 s

    def bag(world: World) -> float | None:
        if round(world.t * 2) % 2:
            return None  # every second
        if quiet[0] <= world.t < quiet[1] or START + 95.0 <= world.t < START + 111.0:
            return None  # (nor heard at S2's open doors: nothing says it stood in the bus)
        if world.t >= quiet[1] and not after_silence:
            return None  # never heard again
        return -93.0

    tok = w.add(Token("bag", bag))
    w.dwell("S1", 15)
    w.move(800)
    w.dwell("S2", 15)
    w.move(1000)
    w.dwell("S3", 15)
    w.move(800)
    w.dwell("S4", 15)
    if after_silence:
        tok.rssi = lambda _: None  # alighted at S4
    w.move(600)
    return [(s.start.stop_id, s.end.stop_id, s.end.cause) for s in by_name(w.finish(), tok)]


def test_a_rider_heard_again_under_its_next_rid_keeps_its_boarding() -> None:
    # the old rid's silence is explained by its token: it is heard under the next rid from
    # the same address, so the ride is not dropped as a short one lost while moving (1.1 km
    # ridden < lost_min_m) (before 5a06baf: the S1 segment was discarded and the rider
    # charged S3 -> S4); and that next rid is its successor, however long after the
    # pairing's window it was first heard: paired first, it continues the ride to S4
    # (before, unpaired: the ride alighted at S3, where the new rid boarded again, and
    # only settlement joined the two)
    assert _ride(after_silence=True) == [("S1", None, "rotated"), (None, "S4", "alighted")]


def test_another_devices_next_rid_from_the_address_is_no_successor() -> None:
    # the guard: a device whose clock runs 30 s behind the token's sends from its address
    # (a collision). Its next rid ends the token's rid by the address rule, but does not
    # continue its ride: the token alights at the next door, S3, as a silent rider held
    # on board (paired by the address alone, its ride "rotated" into the other device's)
    assert _ride(after_silence=False, twin=True) == [("S1", "S3", "alighted")]


def test_another_devices_next_rid_from_the_address_with_its_clock_ahead_is_none() -> None:
    # (review of 7f94b80) the clock guard's other side: the device's clock 30 s ahead,
    # heard from 2 s into its next interval (28 s before the token's boundary, 6 s before
    # the token's silence); without that side it continued the token's ride
    got = _ride(after_silence=False, twin=True, twin_skew=30.0)
    assert got == [("S1", "S3", "alighted")]


def test_a_token_never_heard_again_is_judged_as_before() -> None:
    # the guard: no later rid from its address, nothing explains the silence: a short ride
    # lost while moving (a vehicle alongside), dropped as before
    assert _ride(after_silence=False) == []


def test_the_addresses_of_forgotten_rids_are_forgotten_too() -> None:
    # (review) a token that changes its BLE address while its rid stays (a phone's own
    # address rotation, out of step with its rid's) left its first address's entry behind
    # when its rid was forgotten: one more per such token for as long as the daemon ran,
    # in every checkpoint. 40 waiters at S1, each heard from one address, then from
    # another, are forgotten once the bus has left them; their addresses are too (before:
    # 40 entries stayed)
    w = World(t0=START)
    for i in range(40):
        tok = w.add(Token(f"w{i}", lambda _: None))

        def heard(world: World, tok: Token = tok, i: int = i) -> float | None:
            tok.addr = f"w{i}-" + ("b" if world.t >= START + 10.0 else "a")
            v = world.visit
            return -75.0 if world.seq == 1 and v is not None and v.close_t is None else None

        tok.rssi = heard
    w.dwell("S1", 20)
    assert len(w.c._addr_iv) == 80
    for _ in range(4):  # 40 minutes on: everyone heard at S1 long forgotten
        w.move(5000)
        w.dwell("S2", 20)
    assert not w.c._rids
    assert not w.c._addr_iv


@pytest.mark.parametrize(
    ("first", "last"),
    [(150.0, 155.0), (172.0, 175.0)],
    ids=["in-the-old-interval", "in-the-new-interval"],
)
def test_an_address_two_devices_send_from_pairs_nothing_while_both_are_known(
    monkeypatch: pytest.MonkeyPatch, first: float, last: float
) -> None:
    # the guards: another device (same clock) sends from the token's address, passing on
    # the street (-80 dBm, outside, 3 s) 5 s before the token's silence (two rids of the
    # old interval from one address) or 12 s after its boundary (two of the new one). The
    # address links the rids only once that device is forgotten (60 s after it was last
    # heard): the new rid continues the ride from S3's doors, not from where it was first
    # heard (paired at once, the other device's rid could have been taken for the token's)
    plain = World

    def with_twin(t0: float = T0) -> World:
        w = plain(t0=t0)
        twin = w.add(Token("twn", lambda wd: -80.0 if first <= wd.t - START < last else None))
        twin.addr = "addr-bag"
        return w

    monkeypatch.setattr(sys.modules[__name__], "World", with_twin)
    assert _ride(after_silence=True) == [("S1", None, "rotated"), ("S3", "S4", "alighted")]


def test_a_new_rid_from_the_address_of_a_dropped_candidate_continues_no_other_ride() -> None:
    # r-00330 (full scale, tuning seed 1, -25 dBm, rush_hour_crowd; docs/classifier.md,
    # "Thirteenth pass"): a weak token (-93 dBm) first heard 400 m past S1, a candidate of
    # S1 on co-movement alone, heard 300 m past S2, then silent 20 s before its rid's
    # boundary; its next rid, from its address, heard four times in the 11 s after the
    # boundary, then from S3's doors to S4's, where it alights. At the boundary another
    # rider's rid ends too (boarded S2 at -80 dBm, its token never heard again). The
    # candidate's rid, ended by the address rule 10 s after the boundary, sent its
    # co-movement as a tentative piece and was dropped, and with it went its claim on the
    # address (nor was it kept for the pairing: first heard far past its stop, it has no
    # boarding to hand over): the pairing gave its token's next rid to the other rider's
    # old rid, whose ride it continued (that ride ended "rotated" mid-hop, the token's next
    # rid charged for it from S3 on, "continued"). A rid from an address an earlier rid was
    # heard from is that rid's token's, whatever became of it: it boards at S3 on its own
    # (settlement joins the S1 piece), and the other rider is held silent aboard to S3
    b = BOUNDARY - START
    heard = {55.0, 70.0, 140.0, b + 2.0, b + 6.0, b + 10.0, b + 13.0}

    def weak(world: World) -> float | None:
        at = world.t - START
        later = 212.0 <= at < 318.0 and at % 3.0 == 0.0  # (S3's doors to S4's)
        return -93.0 if at in heard or later else None

    w = World(t0=START)
    add_riders(w, -79.0)
    tok = w.add(Token("bag", weak))
    other = w.add(Token("oth", lambda wd: -80.0 if wd.seq >= 2 and wd.t < BOUNDARY else None))
    ride(w, ("S1", 15.0, 800.0), ("S2", 15.0, 1000.0), ("S3", 15.0, 800.0), ("S4", 15.0, 600.0))
    out = w.finish()

    def ends(segs: list[SegmentDraft]) -> list[tuple[str | None, str | None, str, str]]:
        return [(s.start.stop_id, s.end.stop_id, s.start.cause, s.end.cause) for s in segs]

    assert ends(by_name(out, other)) == [("S2", "S3", "boarded", "alighted")]
    # (boarded from S2: its next rid, heard moving with the bus in the hop from S2 and at
    # its level from S3's doors on, keeps a track, fourteenth pass; it boarded at S3 before
    # that rule; settlement joins the S1 piece either way)
    assert ends(by_name(out, tok)) == [("S2", "S4", "boarded", "alighted")]
    assert ends(by_name(out, tok, tentative=True)) == [("S1", None, "tentative", "rotated")]


def _fob_ride(
    *, level: float = -93.0, stays: bool = True
) -> list[tuple[str | None, str | None, str]]:
    """Three riders at -77 dBm; a fob (its BLE address changes with its rid) boards at S1
    (heard at its doors every 2 s), is heard moving with the bus 200, 700 and 1,200 m on
    (three co-movement points, one short of ``sparse_adverts``), then nothing for 25 s
    before its rid's boundary (not at its interval's end: its old rid never enters the
    rotation pool). Its new rid is heard every 6 s from 1,500 m on to S2 (2,000 m), then
    (``stays``) in the bus standing at S2 for 8 s, where it alights; else it drives on as
    the bus halts (a car beside it). Its segments' (start, end, cause)."""
    w = World(t0=START)
    add_riders(w, -77.0)
    tok = w.add(Token("fob", lambda _: None))
    points = {200.0, 700.0, 1200.0}

    def fob(world: World) -> float | None:
        tok.addr = "fob-a" if world.t < BOUNDARY else "fob-b"
        v = world.visit
        at_doors = v is not None and v.close_t is None
        if world.seq == 1 and at_doors:
            return level if round(world.t * 2) % 4 == 0 else None
        if world.seq == 1:
            past = world.odo - world.stop_odo
            hit = next((m for m in points if m <= past < m + 5.0), None)
            if hit is not None:
                points.discard(hit)
                return level
            if world.t >= BOUNDARY + 2.0 and past >= 1500.0 and round(world.t * 2) % 12 == 0:
                return level
            return None
        if world.seq == 2 and at_doors and stays and v is not None:
            return level if world.t - v.open_t < 8.0 and round(world.t * 2) % 4 == 0 else None
        return None

    tok.rssi = fob
    assert BOUNDARY - START > 15.0 + 120.0  # (the boundary falls in the hop S1 -> S2)
    w.dwell("S1", 15)
    w.move(2000)
    w.dwell("S2", 15)
    w.move(1000)
    w.dwell("S3", 15)
    w.move(800)
    return [(s.start.stop_id, s.end.stop_id, s.end.cause) for s in by_name(w.finish(), tok)]


def test_a_fobs_new_rid_carried_to_the_next_stop_keeps_its_boarding() -> None:
    # the old rid's three points are one short of a boarding, and its piece alone is
    # never charged; the new rid, unpaired (no address link, no rotation by the old rid's
    # own timing), was heard moving with the bus at the rider's level from the boundary
    # to S2 and stood in the bus there: its track began in the hop from S1, so it rode
    # from S1 (before: its adverts before S2 counted for nothing, it became S2's
    # candidate and the rider was missed)
    assert _fob_ride() == [("S1", "S2", "alighted")]


def test_a_fobs_new_rid_that_drives_on_at_the_next_stop_is_no_ride() -> None:
    # the guard: a car beside the bus whose fob rotated on the way, at the riders' level
    # where every token is weak, drives on as the bus halts at S2
    assert _fob_ride(stays=False) == []


def test_a_fobs_new_rid_far_below_the_riders_is_no_ride() -> None:
    # the guard: heard 28 dB below the riders (past in_bus_margin_db, 25: a car alongside,
    # heard through two shells)
    assert _fob_ride(level=-105.0) == []


def test_fobs_that_change_their_address_with_their_rid_keep_their_rides() -> None:
    # (review of 7f94b80) a fob takes a new random BLE address with each rid (cell 20's
    # radio): its new rid's address was never heard before, so it is no earlier rid's
    # (addr_after -1) and the rotation pairing continues its ride as for a fob with no
    # address. Three such riders on one clock at -58/-70/-82 dBm ride S1 -> S2 across
    # their boundary (with every new rid marked as an earlier rid's, none was paired)
    w = World(t0=START)
    gone = {"v": False}
    toks: list[Token] = []
    for name, lv in (("ja", -58.0), ("jb", -70.0), ("jc", -82.0)):
        tok = w.add(Token(name, lambda _: None))

        def fob(world: World, tok: Token = tok, lv: float = lv) -> float | None:
            tok.addr = f"addr-{tok.name}-{math.floor(world.t / 600)}"
            return None if gone["v"] else lv

        tok.rssi = fob
        toks.append(tok)
    w.dwell("S1")
    w.move(3000)
    w.dwell("S2", 4)
    gone["v"] = True
    w.move(400)
    out = w.finish()
    for tok in toks:
        a, b = by_name(out, tok)
        assert (a.start.stop_id, a.end.cause) == ("S1", "rotated")
        assert (b.start.cause, b.end.stop_id) == ("continued", "S2")
