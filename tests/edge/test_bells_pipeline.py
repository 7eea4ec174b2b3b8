"""Stop requests through the real pipeline: the classifier decides who is on board.

Synthetic traces (``tests.factories.edge_world``) feed an ``EdgePipeline`` whose flag
listener drives a ``BellCore``; the bell core also reads the pipeline's vehicle context
after every vehicle record, as the daemon does.
"""

from __future__ import annotations

import random

import pytest

from busbell import AdvRecord, Feed, load_gtfs
from edge._bells import FLAG_ALIGHT, BellCore
from edge._pipeline import EdgePipeline
from tests.factories.edge_world import BusPlan, SynthToken, synth_trace, verifier_for, write_gtfs


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Feed:
    return load_gtfs(write_gtfs(tmp_path_factory.mktemp("gtfs") / "g", 8, 400.0))


def run(feed: Feed, tokens: list[SynthToken]) -> tuple[set[str], list[bool], BellCore]:
    """The stops that ever showed stop_requested, and the on_board flag of each ALIGHT."""
    recs, _ = synth_trace(BusPlan(), tokens, seed=11)
    pipe = EdgePipeline("B1", feed, verifier_for(recs))
    core = BellCore("B1", feed)
    seen: list[bool] = []

    def listener(t: float, rid: bytes, flags: int, on_board: bool) -> None:
        seen.append(on_board)
        core.on_flags(t, rid, flags, on_board)

    pipe.flag_listener = listener
    requested: set[str] = set()
    for rec in recs:
        pipe.feed(rec)
        if not isinstance(rec, AdvRecord):
            core.on_vehicle(rec.t, pipe.vehicle)
        requested |= {
            s["stop_id"] for s in core.display(rec.t, online=True)["stops"] if s["stop_requested"]
        }
    return requested, seen, core


def test_a_bystanders_alight_rings_nothing(feed: Feed) -> None:
    rng = random.Random(1)
    bystanders = [
        SynthToken(rng.randbytes(16), kind="bystander", board=i, lateral_m=2.0, flags=FLAG_ALIGHT)
        for i in (1, 3, 5)
    ]
    requested, seen, core = run(feed, bystanders)
    assert seen  # their adverts were accepted, flags and all
    assert not any(seen)  # never on board
    assert requested == set()
    assert core.counts["flags_not_on_board"] == len(seen)


def test_a_riders_alight_requests_the_next_stop_once_on_board(feed: Feed) -> None:
    rng = random.Random(2)
    rider = SynthToken(rng.randbytes(16), board=1, alight=5, flags=FLAG_ALIGHT)
    requested, seen, _ = run(feed, [rider])
    assert False in seen  # waiting at the stop first: not on board yet
    assert True in seen  # then on board
    # the stops ahead of the rider while riding (the flag stays set the whole ride)
    assert requested
    assert requested <= {f"S{i}" for i in range(2, 8)}
    assert "S2" in requested
