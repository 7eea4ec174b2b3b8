"""Presence classifier: a ride is revived only if its token could have been aboard at the doors.

A ride closed as its rid fell silent (dropped as a short ride lost while moving, or alighted)
and heard aboard again past that stop was revived from its first boarding: "nobody leaves
a bus and boards the same trip again". A car that kept pace with the bus for a hop, drove
on as the bus halted and was caught up with on the next hop meets that too, unless the
rule asks that the token could have been in the bus while the doors stood open (full
scale, tuning seed 4, cell 11, ``rush_hour_crowd`` r-03271, docs/classifier.md). The first
test fails without the rule.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.edge.test_classifier import Token, World, by_name


def _beside(period: float, level: float) -> Callable[[World], float | None]:
    """Heard every ``period`` s at ``level``: at S1's doors from 15 s after they opened and
    760 m on, silent through S2's 20-s dwell, heard again from 270 m to 2,500 m past S2."""

    def f(world: World) -> float | None:
        v = world.visit
        assert v is not None
        if round(world.t / 0.5) % round(period / 0.5):
            return None
        d = world.odo - world.stop_odo
        if world.seq == 1:
            if v.close_t is None:
                return level if world.t - v.open_t > 15.0 else None
            return level if d < 760.0 else None
        if world.seq == 2 and v.close_t is not None and 270.0 <= d < 2500.0:
            return level
        return None

    return f


Legs = list[tuple[str | None, str | None]]


def _run(tok_rssi: Callable[[World], float | None], s2_dwell_s: float = 20.0) -> tuple[Legs, Legs]:
    """The token's legs and the three riders' (S1 -> S3 at -60 dBm)."""
    w = World()
    riders = [w.add(Token(f"rd{i}", lambda _: -60.0)) for i in range(3)]
    tok = w.add(Token("tok", tok_rssi))
    w.dwell("S1", 20)
    w.move(1000)
    w.dwell("S2", s2_dwell_s)
    w.move(2600)
    w.dwell("S3", 20)
    w.move(300)
    out = w.finish()
    legs = [(x.start.stop_id, x.end.stop_id) for r in riders for x in by_name(out, r)]
    return [(x.start.stop_id, x.end.stop_id) for x in by_name(out, tok)], legs


def test_a_car_silent_through_a_whole_dwell_is_not_revived_from_its_boarding() -> None:
    # heard every 0.5 s beside the bus, 15 dB under the riders, for 760 m from S1 (confirmed
    # on the unbroken stretch), silent through S2's 20-s dwell (40 of its gaps), heard again
    # 270 m past S2 for 2.2 km. Its ride, dropped at S2 as a short ride lost while moving,
    # was revived from S1 and, with the travel past S2, charged S1 -> S3
    tok, riders = _run(_beside(0.5, -75.0))
    assert tok == []
    assert riders == [("S1", "S3")] * 3


def test_a_sparse_token_silent_through_a_dwell_shorter_than_its_fade_time_is_revived() -> None:
    # guard: the same path heard every 3 s (a token deep in a bag): eight of its gaps (24 s)
    # outlast the 20-s dwell, so its silence there says nothing; it rode S1 -> S3
    tok, riders = _run(_beside(3.0, -75.0))
    assert tok == [("S1", "S3")]
    assert riders == [("S1", "S3")] * 3


def test_a_token_silent_through_a_dwell_shorter_than_the_fade_timeout_is_revived() -> None:
    # guard: the same path heard every 0.5 s, S2's doors open 12 s: longer than eight of
    # its gaps (4 s) but shorter than fade_timeout_s (15 s), in which no rider is judged
    # gone (packets lost at the doors); it rode S1 -> S3
    tok, riders = _run(_beside(0.5, -75.0), s2_dwell_s=12.0)
    assert tok == [("S1", "S3")]
    assert riders == [("S1", "S3")] * 3
