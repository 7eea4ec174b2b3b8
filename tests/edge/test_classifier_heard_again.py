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
