"""Presence classifier: a rider's token heard again under its next rid (issue 11, twelfth pass).

Scripted world (``tests.edge.test_classifier.World``) of a leg charged from the wrong stop
in the full-scale runs of tuning seed 2 (-25 dBm, ``quiet_route`` r-00038;
docs/classifier.md, "Twelfth pass"): the first test fails without the rule, the second is
its guard.
"""

from __future__ import annotations

import math

from tests.edge.test_classifier import T0, Token, World, add_riders, by_name

START = T0 + 400.0
"""160 s before the token's rid boundary (token time = GNSS time here)."""
BOUNDARY = (math.floor(START / 600) + 1) * 600.0


def _ride(after_silence: bool) -> list[tuple[str | None, str | None, str]]:
    """Three riders at -77 dBm; a weak token (-93 dBm, every second) boards at S1, rides
    the 800-m hop and 280 m past S2 (not heard at its doors), then nothing for 32 s,
    across its rid's boundary (22 s after its last advert: not at its interval's end, so
    not a rotation by the rid's own timing, and past the pairing's window). Its new rid
    (``after_silence``: from the same BLE address) is heard 320 m on, then at S3's
    doors, and every second to S4, where it alights. Its segments' (start, end, cause)."""
    w = World(t0=START)
    add_riders(w, -77.0)
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
    # ridden < lost_min_m); it alights at the next door, S3, where the new rid boards, and
    # settlement joins the two into S1 -> S4 (before: the S1 segment was discarded and the
    # rider charged S3 -> S4)
    segs = _ride(after_silence=True)
    assert segs[0] == ("S1", "S3", "alighted")
    assert segs[-1][1:] == ("S4", "alighted")


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
