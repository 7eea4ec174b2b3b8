"""Census of the tentative pieces that reached settlement: whose, and what settlement did.

Each rider's tentative segments (``start.cause`` ``tentative``: rids the edge never
confirmed, sent for the backend to judge; docs/backend.md, "Tentative segments") are
grouped as :func:`backend._tentative.settle_tentative` groups them (one bus trip, joined
across rotations and with adjoining confirmed segments), from a kept run's own events
settled again in process with this tree's code (every check, as ``busbell backend
settle``). Each group is looked up in the simulator's truth: ``rider`` (the person rode
that bus then: a true leg in ``JOURNEYS.jsonl`` overlapping it, 60 s slack), ``missed``
(such a rider whose leg ``score.json`` lists as a missed observable leg), ``otherbus`` (not
on that bus, on another then) or ``nobody`` (on no bus then: a waiter, a passer-by, a car
occupant). And by what settlement did with it: ``joined`` (kept with a confirmed segment
or by the sum of its points), ``door_to_door``, ``carried`` (:func:`_carried_to`) or
``dropped``; whether a confirmed segment of the same person on another bus overlapped it
(``elsewhere``: what the carried rule asks), how far the bus went while it heard the
pieces, their points, and their level under the riders.

What it is for: a rule that charges more of the riders' pieces is judged by the pieces of
people who were not on that bus: the table shows both before any A/B.

Run: ``python -m benchmarks.tentative_census ROOT... [--list]``, each ``ROOT`` a ``--keep``
directory of ``busbell sim score`` or any directory under it (``--list``: one JSON line per
group not ``joined``). Reads only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backend import _tentative as tent
from backend._fare_engine import FareEngine
from backend._fare_rules import load_rules
from backend._journeys import JourneyBuilder
from backend._legs import Segment, union_distance
from benchmarks._scenario_truth import legs as truth_legs
from benchmarks.miss_breakdown import MISS_SLACK_S, resolved_segments, scenario_dirs
from busbell import configure_logging
from busbell._gtfs import load_gtfs

ROLES = ("missed", "rider", "otherbus", "nobody")
VERDICTS = ("joined", "door_to_door", "carried", "dropped")


def _verdict(
    builder: JourneyBuilder,
    cluster: list[Segment],
    pieces: list[Segment],
    firm: list[Segment],
) -> str:
    p = builder.policy
    if tent._kept(cluster, pieces, p, builder.tentative_hop) and not tent._beaten(
        cluster, pieces, firm, p
    ):
        return "door_to_door" if len(cluster) == 1 else "joined"
    carried = tent._carried_to(
        cluster, pieces, firm, p, hop=builder.tentative_hop, carried=builder.tentative_reach
    )
    if carried is not None:
        return "carried"
    return "dropped"


def census(run: Path) -> list[dict[str, Any]]:
    """One record per group of tentative pieces of scenario run ``run``."""
    feed = load_gtfs(run / "gtfs")
    builder = JourneyBuilder(FareEngine(load_rules(timezone=feed.timezone)), feed)
    truth = truth_legs(run)
    score = json.loads((run / "score.json").read_text(encoding="utf-8"))
    missed = {
        (d["leg"]["rider_id"], d["leg"]["bus_id"], round(float(d["leg"]["board_t"])))
        for d in score.get("details", [])
        if d["kind"] == "missed" and d.get("observable")
    }
    by_rider: dict[str, list[Segment]] = {}
    for s in resolved_segments(run):
        by_rider.setdefault(s.rider_id, []).append(s)
    out: list[dict[str, Any]] = []
    for rider, segs in sorted(by_rider.items()):
        firm = [s for s in segs if s.start_cause != tent.TENTATIVE]
        for cluster, pieces in tent._clusters(segs, firm, builder.policy):
            bus = cluster[0].bus_id
            a = min(s.start_t for s in cluster)
            b = max(s.end_t for s in cluster)

            def near(t0: float, t1: float, a: float = a, b: float = b) -> bool:
                return t0 <= b + MISS_SLACK_S and a <= t1 + MISS_SLACK_S

            on = [t0 for t0, t1 in truth.get((rider, bus), []) if near(t0, t1)]
            other = any(
                near(t0, t1)
                for (who, where), ls in truth.items()
                if who == rider and where != bus
                for t0, t1 in ls
            )
            if on:
                role = "missed" if any((rider, bus, round(t)) in missed for t in on) else "rider"
            else:
                role = "otherbus" if other else "nobody"
            cos = [s.co for s in pieces if s.co is not None]
            under = [
                round(s.riders_lvl - (s.co[1] + s.co[2]) / 2.0, 1)
                for s in pieces
                if s.co is not None and s.riders_lvl is not None
            ]
            out.append(
                {
                    "run": str(run),
                    "rider": rider,
                    "bus": bus,
                    "role": role,
                    "verdict": _verdict(builder, cluster, pieces, firm),
                    "pieces": len(pieces),
                    "confirmed": len(cluster) - len(pieces),
                    "elsewhere": any(
                        s.bus_id != bus and min(b, s.end_t) > max(a, s.start_t) for s in firm
                    ),
                    "travelled_m": round(union_distance(cluster)),
                    "points": sum(c[0] for c in cos),
                    "under_riders_db": max(under) if under else None,
                    "stop": cluster[0].start_stop_id,
                    "end": [pieces[-1].end_cause, pieces[-1].end_stop_id],
                }
            )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Print the census of the kept runs under each ROOT."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.tentative_census", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("roots", type=Path, nargs="+", help="--keep directories of sim score")
    ap.add_argument("--list", action="store_true", help="print each group not joined too")
    args = ap.parse_args(argv)
    configure_logging("warning")
    counts: Counter[tuple[str, str]] = Counter()
    for root in args.roots:
        for run in scenario_dirs(root):
            for rec in census(run):
                counts[(rec["role"], rec["verdict"])] += 1
                if args.list and rec["verdict"] != "joined":
                    print(json.dumps(rec))
    print("role      " + " ".join(f"{v:>12}" for v in VERDICTS))
    for role in ROLES:
        print(f"{role:9} " + " ".join(f"{counts[(role, v)]:>12}" for v in VERDICTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
