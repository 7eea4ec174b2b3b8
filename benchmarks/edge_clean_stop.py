"""A clean stop (SIGTERM) mid-trip, then a restart: the rides it changes, against a kill.

``python -m benchmarks.edge_clean_stop [--every 20] [--down-s 30]`` replays the
checkpoint tests' world (``tests/factories/restart_world.py``: 8 stops 800 m apart, 12
riders and a bystander, a rid boundary mid-trip) once without interruption, then stops
the pipeline at every ``--every``-th moment when the bus drives on (no door change 2 s
before to 42 s after) and starts it again ``--down-s`` later, three ways:

* **kill** (SIGKILL, a power cut): the last snapshot is restored as it was;
* **clean stop** (SIGTERM, ``EdgeDaemon._shutdown_flush``): what
  ``Checkpointer.stop`` closes is recorded with a snapshot taken after it, which the
  restart restores (mid-trip it closes nothing: the open presences stay in the snapshot);
* **clean stop, closing** (the daemon before ``Checkpointer.stop``, and today with
  ``checkpoint_s = 0`` or no trip under way): ``pipeline.finish`` closes every open ride.

Each run's segments are settled (``JourneyBuilder``, the fare rules) and its charged
rides (rider, board stop, alight stop) compared with the uninterrupted replay's. It
prints, per stop moment, how many rides differ each way, and the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from busbell import DeviceKey, Feed, TraceRecord, configure_logging
from edge._checkpoint import Checkpointer
from edge._events import EventBuilder
from edge._pipeline import EdgePipeline
from edge._segment import SegmentDraft
from edge._store import FareStore
from tests.factories.edge_world import replay, verifier_for
from tests.factories.restart_world import T0, quiet_moments, rides, world

WAYS = ("kill", "clean stop", "clean stop, closing")


async def _stopped(
    feed: Feed, recs: list[TraceRecord], stop_t: float, down_s: float, way: str
) -> list[SegmentDraft]:
    first = EdgePipeline("B", feed, verifier_for(recs))
    got = [d for r in recs if r.t <= stop_t for d in first.feed(r)]
    if way == "clean stop":
        store = await FareStore.open(":memory:", EventBuilder("B", DeviceKey.generate()))
        try:
            got.extend(Checkpointer(first, store, 10.0).stop(stop_t))
        finally:
            await store.close()
    elif way == "clean stop, closing":
        got.extend(first.finish(stop_t))
    second = EdgePipeline("B", feed, verifier_for(recs))
    second.restore(first.snapshot())
    got.extend(d for r in recs if r.t > stop_t + down_s for d in second.feed(r))
    got.extend(second.finish(recs[-1].t + 1.0))
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--every", type=int, default=20, help="every n-th stop moment")
    ap.add_argument("--down-s", type=float, default=30.0, help="seconds the edge is down")
    a = ap.parse_args(argv)
    configure_logging("warning")
    feed, recs, toks = world(Path(tempfile.mkdtemp(prefix="clean-stop-")))
    whole, _ = replay(feed, recs)
    expected = set(rides(feed, whole, toks))
    moments = [t for t in quiet_moments(recs, 2.0, 42.0) if t > T0 + 60][:: max(1, a.every)]
    out = sys.stdout
    out.write(f"{len(expected)} rides uninterrupted; {len(moments)} stop moments, ")
    out.write(f"down {a.down_s:.0f} s\n")
    totals = dict.fromkeys(WAYS, 0)
    for t in moments:
        line = [f"stop at T0+{t - T0:4.0f} s:"]
        for way in WAYS:
            got = set(rides(feed, asyncio.run(_stopped(feed, recs, t, a.down_s, way)), toks))
            totals[way] += len(expected - got)
            line.append(f"{way} {len(expected - got)},")
        out.write(" ".join(line) + " rides differ\n")
    out.write(f"total over {len(moments)} moments ({len(expected)} rides each): ")
    out.write(", ".join(f"{way} {n}" for way, n in totals.items()) + " rides differ\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
