"""What the edge sent for each missed observable leg of kept scenario runs.

A leg the score counts ``missed`` (observable: the bus heard the rider) was charged to
nobody. This sorts each by what the backend had of that rider on that bus while the leg
lasted (``MISS_SLACK_S`` either side), from the run's own files:

* ``held``: a journey of the rider held for review has a leg on that bus then
  (``JOURNEYS.settled.jsonl``, ``charged`` false);
* ``tentative``: segments of the rider on that bus then, every one ``tentative`` (pieces
  the settlement did not keep: :mod:`backend._tentative`);
* ``segments``: segments, some confirmed, none charged or held (the overlap rules dropped
  the leg, or it was charged as another leg);
* ``none``: no segment of any of the rider's rids on that bus then: the edge never
  emitted one.

Segments are the run's ``EVENTS-*.jsonl`` settled again in process (every check, each rid
resolved to its rider with ``RIDERS.csv``, as ``busbell backend settle`` does), so run it
with the code that made the kept runs' events to sort their misses.

Run: ``python -m benchmarks.miss_breakdown ROOT [--list]``, ``ROOT`` a ``--keep``
directory of ``busbell sim score`` (``cell-CC/seed-S/SCENARIO/`` with ``score.json``) or
any directory under it. Prints a count per kind per cell and in all; ``--list`` prints
each missed leg too. Reads only; no scenario is generated or scored.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from backend._fare_engine import FareEngine
from backend._fare_rules import load_rules
from backend._journeys import JourneyBuilder, Segment
from backend._resolve import DEFAULT_PROOF_SLACK_S, Resolver, RiderKeyring
from backend._settle import Settler
from backend._tentative import TENTATIVE
from busbell import configure_logging
from busbell._gtfs import load_gtfs
from busbell._keyfiles import read_devices, read_riders

MISS_SLACK_S = 60.0
"""A segment or held leg counts for a missed leg when it overlaps the leg's time widened by
this much on either side (a weak token is heard late and lost early)."""

KINDS = ("held", "tentative", "segments", "none")


def scenario_dirs(root: Path) -> Iterator[Path]:
    """The scenario run directories at or under ``root`` (those with a ``score.json``)."""
    if (root / "score.json").is_file():
        yield root
        return
    yield from sorted(p.parent for p in root.rglob("score.json"))


def resolved_segments(run: Path) -> list[Segment]:
    """The run's accepted segments whose rids resolve to riders (every settle check)."""
    feed = load_gtfs(run / "gtfs")
    builder = JourneyBuilder(FareEngine(load_rules(timezone=feed.timezone)), feed)
    ring = RiderKeyring()
    riders = sorted(read_riders(run / "RIDERS.csv").items())
    ring.extend([r for r, _ in riders], b"".join(k for _, k in riders))
    settler = Settler(
        read_devices(run / "DEVICES.csv"),
        Resolver(ring, proof_slack_s=DEFAULT_PROOF_SLACK_S),
        builder,
    )
    settler.feed_files(sorted(run.glob("EVENTS-*.jsonl")))
    return settler.segments()


def _overlaps(a0: float, a1: float, b0: float, b1: float) -> bool:
    return a0 <= b1 + MISS_SLACK_S and b0 <= a1 + MISS_SLACK_S


def classify(leg: dict[str, Any], segments: Sequence[Segment], held: Sequence[Any]) -> str:
    """The kind of one missed leg (module docs) given the rider's segments and held legs."""
    rider, bus = leg["rider_id"], leg["bus_id"]
    t0, t1 = float(leg["board_t"]), float(leg["alight_t"])
    for h in held:
        if h["bus_id"] == bus and _overlaps(t0, t1, float(h["board_t"]), float(h["alight_t"])):
            return "held"
    mine = [
        s
        for s in segments
        if s.rider_id == rider and s.bus_id == bus and _overlaps(t0, t1, s.start_t, s.end_t)
    ]
    if not mine:
        return "none"
    if all(s.start_cause == TENTATIVE for s in mine):
        return "tentative"
    return "segments"


def breakdown(run: Path) -> list[tuple[str, dict[str, Any]]]:
    """Each missed observable leg of one scenario run with its kind."""
    score = json.loads((run / "score.json").read_text(encoding="utf-8"))
    missed = [
        d["leg"] for d in score.get("details", []) if d["kind"] == "missed" and d["observable"]
    ]
    if not missed:
        return []
    held: dict[str, list[Any]] = {}
    with open(run / "JOURNEYS.settled.jsonl", encoding="utf-8") as f:
        for line in f:
            j = json.loads(line)
            if not j["charged"]:
                held.setdefault(j["rider_id"], []).extend(j["legs"])
    segments = resolved_segments(run)
    return [(classify(leg, segments, held.get(leg["rider_id"], [])), leg) for leg in missed]


def _cell(run: Path) -> str:
    for part in run.parts:
        if part.startswith("cell-"):
            return part
    return "-"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the breakdown of the kept runs under ROOT."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.miss_breakdown", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("root", type=Path, help="a --keep directory of busbell sim score")
    ap.add_argument("--list", action="store_true", help="print each missed leg too")
    args = ap.parse_args(argv)
    configure_logging("warning")
    by_cell: dict[str, Counter[str]] = {}
    for run in scenario_dirs(args.root):
        counts = by_cell.setdefault(_cell(run), Counter())
        for kind, leg in breakdown(run):
            counts[kind] += 1
            if args.list:
                where = run.relative_to(args.root) if run != args.root else run
                print(
                    f"{kind:9} {where} {leg['rider_id']} {leg['bus_id']} "
                    f"{leg['board_stop_id']} -> {leg['alight_stop_id']}"
                )
    total: Counter[str] = Counter()
    for cell, counts in sorted(by_cell.items()):
        total.update(counts)
        print(f"{cell}: {sum(counts.values())} missed, " + _kinds(counts))
    print(f"all: {sum(total.values())} missed, " + _kinds(total))
    return 0


def _kinds(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {counts[k]}" for k in KINDS)


if __name__ == "__main__":
    sys.exit(main())
