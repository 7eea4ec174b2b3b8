"""Census of the successor hold's "first heard after its doors closed" clause on kept runs.

``PresenceClassifier._successor_held`` holds an unpaired candidate through a silence when it
began at a rotation while a rider's old rid waits unpaired in the rotation pool; one of its
conditions is that the candidate was first heard after the doors of its stop closed
(between stops, where nobody boards). This replays every bus of kept scenario directories
(``busbell sim score --keep``) in process and, each time the rule is asked, evaluates it as
written and with that clause left out. It lists the rids the clause alone turns away (held
without it, not with it) and the rids the rule holds, each looked up in the simulator's
ground truth: the person whose token sent it (``RIDERS.csv``) and whether they rode that bus
then (a true leg in ``JOURNEYS.jsonl`` from ``board_t - 60`` to ``alight_t + 60`` around
the rid's first advert).

The classifier's other code is unchanged: what it emits is main's. Prints one JSON line per
rid found, one per scenario done and the totals::

    python -m benchmarks.edge_held_census KEPT/cell-02/seed-1/rush_hour_crowd ...
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import structlog

from benchmarks._scenario_truth import legs as truth_legs
from busbell import (
    TokenVerifier,
    TraceReader,
    load_gtfs,
    read_fleet_keys,
)
from edge import _classifier as cls_mod
from edge._params import ClassifierParams
from edge._pipeline import EdgePipeline
from firmware_sim._heard import person_rids

_ORIG = cls_mod.PresenceClassifier._successor_held
_SLACK_S = 60.0


def census(d: Path, totals: dict[str, int]) -> list[dict[str, Any]]:
    """The rids the clause turns away and the rids the rule holds on every bus of ``d``."""
    truth = json.loads((d / "truth.json").read_text(encoding="utf-8"))
    owners = person_rids(d, float(truth["t_start"]), float(truth["t_end"]))
    legs = truth_legs(d)
    p = ClassifierParams()
    keys = read_fleet_keys(d / "FLEET.csv")
    found: list[dict[str, Any]] = []
    for bus in truth["buses"]:
        bus_id = str(bus["bus_id"])
        seen: dict[tuple[str, bytes], dict[str, Any]] = {}

        def asked(
            c: cls_mod.PresenceClassifier,
            r: Any,
            t: float,
            bus_id: str = bus_id,
            seen: dict[tuple[str, bytes], dict[str, Any]] = seen,
        ) -> bool:
            got = _ORIG(c, r, t)
            totals["asked"] = totals.get("asked", 0) + 1
            if not (got or _ORIG(c, r, t, after_doors=False)):
                return got
            key = ("held" if got else "turned_away", r.rid)
            if key not in seen:
                person = owners.get(r.rid)
                rode = person is not None and any(
                    a - _SLACK_S <= r.first_t <= z + _SLACK_S
                    for a, z in legs.get((person, bus_id), [])
                )
                v = r.visit
                seen[key] = {
                    "kind": key[0],
                    "scenario": str(d),
                    "bus": bus_id,
                    "rid": r.rid.hex()[:8],
                    "t": round(t, 1),
                    "first_t": round(r.first_t, 1),
                    "stop": None if v is None else v.stop_id,
                    "doors_closed_t": None if v is None else v.close_t,
                    "person": person,
                    "rode_this_bus": rode,
                    "ticks": 0,
                }
            seen[key]["ticks"] += 1
            return got

        setattr(cls_mod.PresenceClassifier, "_successor_held", asked)  # noqa: B010
        try:
            verifier = TokenVerifier(keys, window_s=p.tq_window_s)
            pipe = EdgePipeline(bus_id, load_gtfs(d / "gtfs"), verifier, p)
            t = 0.0
            with (d / str(bus["trace"])).open(encoding="utf-8") as fp:
                for record in TraceReader(fp):
                    t = record.t
                    pipe.feed(record)
            pipe.finish(t)
        finally:
            setattr(cls_mod.PresenceClassifier, "_successor_held", _ORIG)  # noqa: B010
        for rec in seen.values():
            k = f"{rec['kind']}/{'rider' if rec['rode_this_bus'] else 'not_a_rider'}"
            totals[k] = totals.get(k, 0) + 1
            found.append(rec)
    return found


def main(argv: list[str]) -> int:
    """Run the census on each scenario directory named in ``argv``."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    totals: dict[str, int] = {}
    for arg in argv:
        for rec in census(Path(arg), totals):
            print(json.dumps(rec), flush=True)
        print(json.dumps({"done": arg}), flush=True)
    print(json.dumps({"totals": totals}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
