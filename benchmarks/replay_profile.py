"""Where the edge pipeline's time goes on kept scenario runs: cProfile of an in-process replay.

Replays every bus trace of each run directory through :class:`edge._pipeline.EdgePipeline`
(as ``busbell edge replay`` does, without signing or storing the events) under
:mod:`cProfile`, then prints, summed over the runs, the cumulative time of the
pipeline's feed, of the classifier's ticks (:meth:`PresenceClassifier.tick`) and of each
function named with ``--functions`` (any function whose name matches: calls, cumulative
seconds, share of the time in ticks). Profiled times are inflated by the profiler and by
the machine's load: compare shares, not seconds.

Run: ``python -m benchmarks.replay_profile RUN [RUN ...] [--functions
_successor_held,_rider_held] [--top N] [--dump FILE]``, each ``RUN`` a scenario directory
kept by ``busbell sim score --keep`` (``cell-CC/seed-S/SCENARIO/``, with ``truth.json``)
or made by ``busbell sim scenario``. ``--top N`` prints the N functions of most
internal time too; ``--dump FILE`` writes the merged profile for :mod:`pstats`.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
from collections.abc import Sequence
from pathlib import Path

from busbell import TokenVerifier, TraceReader, configure_logging, load_gtfs
from busbell._keyfiles import read_fleet_keys
from edge._params import ClassifierParams
from edge._pipeline import EdgePipeline

_TICK = ("_classifier.py", "tick")
_FEED = ("_pipeline.py", "feed")


def replay_run(run: Path, profile: cProfile.Profile) -> int:
    """Replay each bus of one run directory under ``profile``; returns the records fed."""
    truth = json.loads((run / "truth.json").read_text(encoding="utf-8"))
    feed = load_gtfs(run / "gtfs")
    fleet = read_fleet_keys(run / "FLEET.csv")
    params = ClassifierParams()
    n = 0
    for bus in truth["buses"]:
        with (run / bus["trace"]).open(encoding="utf-8") as fp:
            reader = TraceReader(fp)
            records = list(reader)
        pipe = EdgePipeline(
            reader.meta.bus_id, feed, TokenVerifier(fleet, window_s=params.tq_window_s), params
        )
        profile.enable()
        for rec in records:
            pipe.feed(rec)
        if records:
            pipe.finish(records[-1].t)
        profile.disable()
        n += len(records)
    return n


def _cumulative(stats: pstats.Stats, match: tuple[str, str] | str) -> tuple[int, float]:
    """Calls and cumulative seconds of the functions matching ``match`` (summed)."""
    calls, cum = 0, 0.0
    table = stats.stats  # type: ignore[attr-defined]  # (pstats keeps it undocumented)
    for (file, _, name), (_, ncalls, _, ct, _) in table.items():
        hit = (
            file.endswith(match[0]) and name == match[1]
            if isinstance(match, tuple)
            else name == match
        )
        if hit:
            calls += ncalls
            cum += ct
    return calls, cum


def main(argv: Sequence[str] | None = None) -> int:
    """Profile the replays and print the figures."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.replay_profile", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("runs", nargs="+", type=Path, help="kept scenario run directories")
    ap.add_argument("--functions", default="", help="comma-separated function names to report")
    ap.add_argument("--top", type=int, default=0, help="also the N of most internal time")
    ap.add_argument("--dump", type=Path, help="write the merged profile here (pstats)")
    args = ap.parse_args(argv)
    configure_logging("warning")  # (as a replay runs: debug events are not built)
    profile = cProfile.Profile()
    records = sum(replay_run(run, profile) for run in args.runs)
    stats = pstats.Stats(profile)
    feed_calls, feed_s = _cumulative(stats, _FEED)
    tick_calls, tick_s = _cumulative(stats, _TICK)
    print(f"{len(args.runs)} run(s), {records} records")
    print(f"pipeline feed: {feed_calls} calls, {feed_s:.3f} s cumulative")
    print(f"classifier ticks: {tick_calls} calls, {tick_s:.3f} s cumulative")
    for name in [f for f in args.functions.split(",") if f]:
        calls, cum = _cumulative(stats, name)
        share = 100.0 * cum / tick_s if tick_s else 0.0
        print(f"{name}: {calls} calls, {cum:.3f} s cumulative, {share:.2f} % of ticks")
    if args.dump is not None:
        stats.dump_stats(args.dump)
    if args.top:
        stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
