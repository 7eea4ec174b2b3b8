"""Property-based tests: random valid worlds through the classifier and settlement (issue 11).

A random bus day (start time anywhere in a 600-s rid interval, so rides cross rotations;
red lights, skipped stops, GNSS gaps, a faulty door sensor, packet loss up to 30 %) and
random tokens (riders with any stops, weak to strong, advertising every 0.1-2 s, clock
offsets up to +-55 s, quiet stretches of up to 4 min mid-ride; bystanders at
stops; vehicles alongside) are replayed through the
real :class:`edge.EdgePipeline`; its segments are resolved to their tokens and settled by
the real :class:`backend._journeys.JourneyBuilder`. Whatever the world: the pipeline never
raises and contains no failure (``stats.errors`` stays empty), every segment ends after
it starts, no charged leg boards at or after its alighting stop, and no rider is charged
twice for one bus trip.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from busbell import Feed, load_gtfs
from tests.factories.edge_world import (
    BusPlan,
    SynthToken,
    assert_fare_invariants,
    replay,
    synth_trace,
    write_gtfs,
)
from tests.factories.properties import examples

N_STOPS = 12
_FEED: list[Feed] = []


def _feed(factory: pytest.TempPathFactory) -> Feed:
    if not _FEED:
        _FEED.append(load_gtfs(write_gtfs(Path(factory.mktemp("gp")) / "g", N_STOPS, 400.0)))
    return _FEED[0]


@st.composite
def tokens(draw: st.DrawFn, k: int) -> SynthToken:
    key = draw(st.binary(min_size=16, max_size=16)) + b""
    key = bytes([k]) + key[1:]  # distinct tokens
    kind = draw(st.sampled_from(["rider", "rider", "rider", "bystander", "alongside"]))
    board = draw(st.integers(0, N_STOPS - 2))
    tok = SynthToken(
        key,
        kind=kind,
        board=board,
        alight=draw(st.integers(board + 1, N_STOPS - 1)),
        adv_interval_s=draw(st.sampled_from([0.1, 0.25, 0.5, 1.0, 2.0])),
        inside_dist_m=draw(st.floats(1.0, 10.0)),
        loss_db=draw(st.floats(0.0, 30.0)),
        clock_skew_s=draw(st.floats(-55.0, 55.0)),
        lateral_m=draw(st.floats(1.5, 20.0)),
        quiet=draw(
            st.sampled_from([(0.0, 0.0), (0.0, 0.0)])
            | st.tuples(st.floats(20, 300), st.floats(20, 240))
        ),
    )
    if kind == "alongside":
        tok.t_from = draw(st.floats(0.0, 600.0))
        tok.t_to = tok.t_from + draw(st.floats(10.0, 400.0))
    return tok


@st.composite
def worlds(draw: st.DrawFn) -> tuple[BusPlan, list[SynthToken], float, int]:
    t0 = 1_790_000_400.0 + draw(st.floats(0.0, 600.0))
    gap = draw(st.one_of(st.none(), st.tuples(st.floats(0, 300), st.floats(5, 90))))
    plan = BusPlan(
        t0=t0,
        n_stops=N_STOPS,
        dwell_s=draw(st.floats(8.0, 40.0)),
        speed_mps=draw(st.floats(4.0, 15.0)),
        red_lights=draw(st.dictionaries(st.integers(0, N_STOPS - 2), st.floats(5, 60), max_size=2)),
        gnss_gaps=[] if gap is None else [(t0 + gap[0], t0 + gap[0] + gap[1])],
        door_mode=draw(st.sampled_from(["ok", "ok", "ok", "none", "stuck_open"])),
        skip_stops=tuple(draw(st.sets(st.integers(1, N_STOPS - 2), max_size=2))),
    )
    toks = [draw(tokens(k)) for k in range(draw(st.integers(1, 6)))]
    for tok in toks:
        if tok.kind == "alongside":
            tok.t_from += t0
            tok.t_to += t0
    return plan, toks, draw(st.floats(0.0, 0.3)), draw(st.integers(0, 2**16))


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_random_worlds_never_crash_never_order_wrong_never_double_charge(
    tmp_path_factory: pytest.TempPathFactory,
    world: tuple[BusPlan, list[SynthToken], float, int],
) -> None:
    plan, toks, loss, seed = world
    feed = _feed(tmp_path_factory)
    recs, _ = synth_trace(plan, toks, seed=seed, packet_loss=loss)
    drafts, pipe = replay(feed, recs)
    assert pipe.stats.errors == {}
    assert_fare_invariants(drafts, toks, feed)
