"""Census of the candidacies the classifier drops, riders and non-riders, and what came after.

A candidate (or rotating rid) is dropped by a named rule of
``PresenceClassifier._drop`` (``silent``, ``left_behind``, ``rid_ended``,
``rotating_silent``, ``rotating_unpaired_thin``, ``rotating_unpaired_not_rider``;
``docs/classifier.md``), or is still a candidate when the trace ends (``open_at_end``).
This replays every bus of kept scenario directories (``busbell sim score --keep``) in
process with main's classifier and, for every such candidacy, records what it had gathered
(co-movement points, their level against the riders', its adverts and its own mean gap
between in-bus adverts, the distance the bus had gone since its last point) and what the
bus heard of the same rid afterwards: adverts, and co-movement points at the candidacy's
level (``sparse_step_m`` apart, heard while no stop visit was open, within ``fade_drop_db``
of its level at its stop, else of its points' mean, else of its adverts' median) until the
person alighted (a rider of that bus) or for ``_AFTER_S`` (anyone else), and those before
the next doors opened.

Each candidacy is looked up in the simulator's ground truth: the person whose token sent
the rid (``RIDERS.csv``), whether they rode that bus then (a true leg in ``JOURNEYS.jsonl``
from ``board_t - 60`` to ``alight_t + 5`` around the candidacy's first advert), and whether
that leg is one ``score.json`` lists as a missed observable leg.

What it is for: a rule that keeps a dropped candidacy longer, or brings it back when heard
again (a silence judged against the token's own rate rather than ``reject_distance_m``),
can at most board the candidacies whose points before the drop and after it add up to
``sparse_adverts``: the table counts those (``reach``) for missed riders (what such a rule
could fix) against people who did not ride that bus (what it could charge), before any
A/B. Prints a table per rule and role; ``--list`` prints one JSON line per candidacy of a
missed rider, and of a non-rider that could reach::

    python -m benchmarks.drop_census KEPT/cell-02 KEPT/cell-10/seed-1/quiet_route [--list]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median_high
from typing import Any

import structlog

from benchmarks._scenario_truth import legs as truth_legs
from busbell import (
    AdvRecord,
    TokenVerifier,
    TraceReader,
    load_gtfs,
    read_fleet_keys,
)
from edge import _classifier as cls_mod
from edge._params import ClassifierParams
from edge._pipeline import EdgePipeline
from edge._trace_rider import _rid_of
from edge._why_missed import _points, scenario_dirs
from firmware_sim._heard import person_rids

__all__ = ["Drop", "census", "main", "table"]

_ORIG = cls_mod.PresenceClassifier._drop
_BEFORE_S = 60.0
"""A candidacy first heard this long before a true boarding belongs to that leg."""
_ALIGHT_SLACK_S = 5.0
_AFTER_S = 900.0
"""A non-rider's rid is followed this long after its drop."""
OPEN_AT_END = "open_at_end"


@dataclass(slots=True)
class Drop:
    """One candidacy dropped (or open when the trace ended) and what came after it."""

    scenario: str
    bus: str
    rid: str
    why: str
    t: float
    person: str | None
    role: str
    """``missed`` (a rider of that bus then, whose leg score.json lists missed), ``rider``
    (a rider of that bus then, leg not missed) or ``other`` (not on that bus then)."""
    stop: str | None
    co_n: int
    co_mean: float | None
    riders_lvl: float | None
    n_adv: int
    gap_s: float
    """Its mean gap between in-bus adverts as the classifier held it (``_Rid.gap``)."""
    mean_gap_s: float
    """Its mean gap between any two of its adverts so far (0 with one advert)."""
    silent_s: float
    """How long it had not been heard at all when dropped."""
    fade_s: float
    since_point_m: float
    barred: bool
    absent: bool
    """A late joiner silent at its stop's open doors (``_Rid.absent``)."""
    drift: bool
    """It rose ``sparse_fall_db`` above its level as a late joiner (``_Rid.drift``)."""
    after_adverts: int = 0
    after_points: int = 0
    after_points_next: int = 0

    @property
    def reach(self) -> bool:
        """Whether its points before and after the drop add up to ``sparse_adverts``."""
        return self.co_n + self.after_points >= ClassifierParams().sparse_adverts


def _missed(d: Path) -> set[tuple[str, str, float]]:
    """(person, bus, board_t) of each observable leg ``score.json`` lists as missed."""
    score = json.loads((d / "score.json").read_text(encoding="utf-8"))
    return {
        (e["leg"]["rider_id"], e["leg"]["bus_id"], float(e["leg"]["board_t"]))
        for e in score.get("details", [])
        if e.get("kind") == "missed" and e.get("observable")
    }


def census(d: Path, params: ClassifierParams | None = None) -> list[Drop]:
    """Every candidacy dropped (or open at the end) on every bus of scenario ``d``."""
    p = params or ClassifierParams()
    truth = json.loads((d / "truth.json").read_text(encoding="utf-8"))
    owners = person_rids(d, float(truth["t_start"]), float(truth["t_end"]))
    legs = truth_legs(d)
    missed = _missed(d)
    keys = read_fleet_keys(d / "FLEET.csv")
    out: list[Drop] = []
    for bus in truth["buses"]:
        bus_id = str(bus["bus_id"])
        verifier = TokenVerifier(keys, window_s=p.tq_window_s)
        pipe = EdgePipeline(bus_id, load_gtfs(d / "gtfs"), verifier, p)
        cls = pipe.classifier
        got: list[tuple[Any, str, float, float, dict[str, Any]]] = []

        def note(
            r: Any, why: str, cls: Any = cls, pipe: EdgePipeline = pipe, got: Any = got
        ) -> None:
            v = r.pred_visit or r.visit
            close = v.close_odo_m if v is not None and v.close_odo_m is not None else r.first_odo
            odo = pipe.vehicle.odometer_m
            got.append(
                (
                    r,
                    why,
                    cls._t,
                    odo,
                    {
                        "stop": None if v is None else v.stop_id,
                        "co_n": r.co_n,
                        "co_mean": r.co_sum / r.co_n if r.co_n else None,
                        "lvl": r.lvl,
                        "riders": cls._riders_lvl if math.isfinite(cls._riders_lvl) else None,
                        "n_adv": r.n_adv,
                        "gap": r.gap,
                        "mean_gap": (r.last_t - r.first_t) / (r.n_adv - 1) if r.n_adv > 1 else 0.0,
                        "silent": cls._t - r.last_t,
                        "fade": cls._fade_s(r),
                        "since": odo - max(r.co_odo, close),
                        "barred": r.state == cls_mod._CANDIDATE and cls._barred(r),
                        "absent": r.absent,
                        "drift": r.drift,
                        "first_t": r.first_t,
                        "rid": r.rid,
                    },
                )
            )

        def dropped(c: Any, r: Any, ev: Any, drafts: Any, why: str, *, note: Any = note) -> None:
            note(r, why)
            _ORIG(c, r, ev, drafts, why)

        heard: dict[bytes, list[tuple[float, int, float, bool]]] = {}
        opens: list[float] = []
        setattr(cls_mod.PresenceClassifier, "_drop", dropped)  # noqa: B010
        try:
            t = 0.0
            with (d / str(bus["trace"])).open(encoding="utf-8") as fp:
                for rec in TraceReader(fp):
                    t = rec.t
                    pipe.feed(rec)
                    v = pipe.vehicle.current_visit
                    if v is not None and (not opens or opens[-1] != v.open_t):
                        opens.append(v.open_t)
                    if type(rec) is AdvRecord:
                        rid = _rid_of(rec.mfr.get(p.company_id))
                        if rid is not None:
                            heard.setdefault(rid, []).append(
                                (t, rec.rssi, pipe.vehicle.odometer_m, v is None)
                            )
            for r in list(cls._rids.values()):
                if r.state == cls_mod._CANDIDATE:
                    note(r, OPEN_AT_END)
            pipe.finish(t)
        finally:
            setattr(cls_mod.PresenceClassifier, "_drop", _ORIG)  # noqa: B010
        for r, why, t_drop, _odo, e in got:
            person = owners.get(e["rid"])
            leg = next(
                (
                    (a, z)
                    for a, z in legs.get((person or "", bus_id), [])
                    if a - _BEFORE_S <= e["first_t"] <= z + _ALIGHT_SLACK_S
                ),
                None,
            )
            if leg is None:
                role, end = "other", t_drop + _AFTER_S
            else:
                role = "missed" if (person, bus_id, leg[0]) in missed else "rider"
                end = leg[1] + _ALIGHT_SLACK_S
            before = [a[1] for a in heard.get(e["rid"], []) if a[0] <= t_drop]
            ref = e["lvl"] if e["lvl"] is not None else e["co_mean"]
            if ref is None and before:
                ref = float(median_high(before))  # (no level yet: its adverts so far)
            nxt = min([math.inf, *(o for o in opens if o > t_drop)])
            after = [a for a in heard.get(e["rid"], []) if t_drop < a[0] <= end]
            at_lvl = [a for a in after if a[3] and ref is not None and a[1] >= ref - p.fade_drop_db]
            out.append(
                Drop(
                    scenario=str(d),
                    bus=bus_id,
                    rid=r.rid.hex()[:8],
                    why=why,
                    t=round(t_drop, 1),
                    person=person,
                    role=role,
                    stop=e["stop"],
                    co_n=e["co_n"],
                    co_mean=None if e["co_mean"] is None else round(e["co_mean"], 1),
                    riders_lvl=None if e["riders"] is None else round(e["riders"], 1),
                    n_adv=e["n_adv"],
                    gap_s=round(e["gap"], 2),
                    mean_gap_s=round(e["mean_gap"], 2),
                    silent_s=round(e["silent"], 1),
                    fade_s=round(e["fade"], 1),
                    since_point_m=round(e["since"]),
                    barred=bool(e["barred"]),
                    absent=bool(e["absent"]),
                    drift=bool(e["drift"]),
                    after_adverts=len(after),
                    after_points=_points((a[2] for a in at_lvl), p.sparse_step_m),
                    after_points_next=_points(
                        (a[2] for a in at_lvl if a[0] < nxt), p.sparse_step_m
                    ),
                )
            )
    return out


def table(drops: Sequence[Drop]) -> str:
    """Counts per rule and role: candidacies, later points heard (0 / 1 / 2 / 3 / 4+), reach."""
    rows: Counter[tuple[str, str]] = Counter()
    pts: Counter[tuple[str, str, int]] = Counter()
    reach: Counter[tuple[str, str]] = Counter()
    for x in drops:
        rows[(x.why, x.role)] += 1
        pts[(x.why, x.role, min(x.after_points, 4))] += 1
        reach[(x.why, x.role)] += x.reach
    head = f"{'rule':28}{'role':8}{'n':>8}" + "".join(
        f"{f'after {k}':>9}" for k in ("0", "1", "2", "3", "4+")
    )
    lines = [head + f"{'reach':>8}"]
    for why, role in sorted(rows, key=lambda k: (k[0], ("missed", "rider", "other").index(k[1]))):
        lines.append(
            f"{why:28}{role:8}{rows[(why, role)]:>8}"
            + "".join(f"{pts[(why, role, k)]:>9}" for k in range(5))
            + f"{reach[(why, role)]:>8}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the census on the scenario directories (or their parents) named in ``argv``."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.drop_census")
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--list", action="store_true", help="a JSON line per missed rider's drop")
    args = ap.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    drops: list[Drop] = []
    for d in scenario_dirs(args.dirs):
        got = census(d)
        drops.extend(got)
        if args.list:
            for x in got:
                if x.role == "missed" or (x.role == "other" and x.reach):
                    print(json.dumps({k: getattr(x, k) for k in Drop.__slots__}), flush=True)
        print(f"done {d}", file=sys.stderr, flush=True)
    print(table(drops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
