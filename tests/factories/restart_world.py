"""The checkpoint tests' world: one trip, riders on board when the edge stops and restarts.

Shared by ``tests/edge/test_checkpoint.py`` and ``benchmarks.edge_clean_stop``.
"""

from __future__ import annotations

import random
from pathlib import Path

from backend._fare_engine import FareEngine
from backend._fare_rules import load_rules
from backend._journeys import JourneyBuilder, Segment
from busbell import DoorRecord, Feed, TraceRecord, load_gtfs
from edge._segment import SegmentDraft
from tests.factories.edge_world import BusPlan, SynthToken, synth_trace, token_of, write_gtfs

T0 = 1_790_000_100.0  # the rid boundary at 1_790_000_400 falls mid-trip


def world(tmp: Path) -> tuple[Feed, list[TraceRecord], list[SynthToken]]:
    feed = load_gtfs(write_gtfs(tmp / "g", 8, 800.0))
    rng = random.Random(11)
    toks = []
    for _ in range(12):
        b = rng.randrange(0, 4)
        toks.append(
            SynthToken(
                rng.randbytes(16),
                board=b,
                alight=rng.randrange(b + 2, 8),
                adv_interval_s=rng.choice([0.25, 0.5, 1.0]),
                loss_db=rng.uniform(0, 10),
            )
        )
    toks.append(SynthToken(rng.randbytes(16), kind="bystander", board=2))
    recs, _ = synth_trace(BusPlan(t0=T0, n_stops=8, spacing_m=800.0), toks, seed=4)
    return feed, recs, toks


def quiet_moments(recs: list[TraceRecord], before: float, after: float) -> list[float]:
    """Times at which the bus drives on: no door change from ``before`` s earlier to
    ``after`` s later (a door change while the edge is down is never seen: the ride
    it begins or ends is not under way, it is unobservable)."""
    doors = [r.t for r in recs if isinstance(r, DoorRecord)]
    out = []
    t = doors[0] + 20.0
    while t < doors[-1] - after:
        if not any(t - before <= d <= t + after for d in doors):
            out.append(t)
        t += 1.0
    return out


def rides(feed: Feed, drafts: list[SegmentDraft], toks: list[SynthToken]) -> list[tuple[str, ...]]:
    """The charged rides (token, board stop, alight stop) settled from the drafts."""
    segs = []
    for n, d in enumerate(drafts, 1):
        k = token_of(d, toks)
        assert k is not None
        ev = {**d.to_event_fields(), "bus_id": "B", "seq": n, "event_id": f"e{n}"}
        segs.append(Segment.from_event(ev, rider_id=f"tok{k:02d}"))
    builder = JourneyBuilder(FareEngine(load_rules()), feed)
    out = [
        (leg.rider_id, str(leg.board_stop_id), str(leg.alight_stop_id))
        for j in builder.build(segs)
        if j.charged
        for leg in j.legs
    ]
    return sorted(out)
