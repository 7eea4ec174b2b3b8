"""Who the rotation path boards: candidates' heirs confirmed by ``_check_rotating``, by role.

A new rid paired with a *candidate's* old rid (the rotation pairing) is confirmed
``boarded`` at the candidate's stop by :meth:`PresenceClassifier._check_rotating` on its
own stretch of in-bus evidence, with no level asked (docs/classifier.md, "A candidate's
heir on the rotation path"). This replays every bus trace of each kept run in process
(as ``busbell edge replay`` does, without signing or storing the events) with that method
watched, and tells riders from non-riders by the world's ``JOURNEYS.jsonl`` (a true leg of
the token's person on that bus at the confirmation, from 60 s before boarding to 30 s
after alighting) and ``RIDERS.csv`` (each person's rids, derived from their token key as
the backend does). For each heir: its in-bus mean level (the stretch it was confirmed
on) against its candidate's level as the bus left the stop and against the riders' level,
and whether it was sent as a ride. It prints, per role, the heirs confirmed, how far below
those levels they were (riders: the most; non-riders: how many ``fade_drop_db`` or
``in_bus_margin_db`` or more), how many were sent as rides, and with ``--list`` every
non-rider's line.

Run: ``python -m benchmarks.rotation_heirs RUN [RUN ...] [--list]``, each ``RUN`` a
scenario directory kept by ``busbell sim score --keep`` (``cell-CC/seed-S/SCENARIO/``) or
made by ``busbell sim scenario``. Replays take as long as ``busbell edge replay`` with the
pure build: with the compiled build installed it runs the classifier's Python code all the
same (``benchmarks/pure_edge.py``; a compiled class cannot be subclassed), same output.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.pure_edge import check_pure  # (first: the classifier from its sources)
from busbell import TokenVerifier, TraceReader, configure_logging, load_gtfs
from busbell._keyfiles import read_fleet_keys
from edge._classifier import _PRED_CANDIDATE, PresenceClassifier, _Rid
from edge._params import ClassifierParams
from edge._pipeline import EdgePipeline
from edge._segment import SegmentDraft
from edge._trace_rider import rids_of


@dataclass(slots=True)
class Heir:
    """One candidate's heir confirmed on the rotation path."""

    run: str
    bus: str
    person: str
    old_person: str
    rider: bool
    below_candidate: float | None
    below_riders: float | None
    sent: list[str]


_Note = tuple[bytes, float, float | None, float | None]
"""A heir's candidate's rid, when it was confirmed, and how far below the candidate's level
as the bus left and below the riders' level its in-bus mean was then (dB; ``None``:
unknown)."""


class _Watched(PresenceClassifier):
    """The classifier, noting each candidate's heir that ``_check_rotating`` confirms."""

    def __init__(self, params: ClassifierParams, note: dict[bytes, _Note]) -> None:
        super().__init__(params)
        self.note = note

    def _check_rotating(self, r: _Rid, t: float, out: list[SegmentDraft]) -> None:
        o = self._match.get(r.rid) if r.pred == _PRED_CANDIDATE else None
        got = self._olds.get(o) if o is not None else None
        rl = self._riders_lvl
        super()._check_rotating(r, t, out)
        if got is not None and r.start is not None and r.n_far:
            old, mean = got[0], r.far_sum / r.n_far
            below_c = old.lvl - mean if old.lvl is not None else None
            below_r = rl - mean if math.isfinite(rl) else None
            self.note[r.rid] = (old.rid, t, below_c, below_r)


def scan_run(run: Path) -> list[Heir]:
    """Replay each bus of one run; the candidates' heirs the rotation path confirmed."""
    truth = json.loads((run / "truth.json").read_text(encoding="utf-8"))
    t0, t1 = float(truth["t_start"]), float(truth["t_end"])
    person: dict[bytes, str] = {}
    with (run / "RIDERS.csv").open(encoding="utf-8", newline="") as fp:
        for row in csv.DictReader(fp):
            for rid in rids_of(bytes.fromhex(row["token_key"]), t0, t1):
                person[rid] = row["rider_id"]
    legs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with (run / "JOURNEYS.jsonl").open(encoding="utf-8") as fp:
        for line in fp:
            j = json.loads(line)
            for leg in j["legs"]:
                legs.setdefault((j["rider_id"], leg["bus_id"]), []).append(leg)
    feed = load_gtfs(run / "gtfs")
    fleet = read_fleet_keys(run / "FLEET.csv")
    params = ClassifierParams()
    out: list[Heir] = []
    for bus in truth["buses"]:
        with (run / bus["trace"]).open(encoding="utf-8") as fp:
            reader = TraceReader(fp)
            records = list(reader)
        bus_id = reader.meta.bus_id
        pipe = EdgePipeline(bus_id, feed, TokenVerifier(fleet, window_s=params.tq_window_s), params)
        note: dict[bytes, _Note] = {}
        pipe.classifier = _Watched(params, note)
        drafts: list[SegmentDraft] = []
        for rec in records:
            drafts.extend(pipe.feed(rec))
        if records:
            drafts.extend(pipe.finish(records[-1].t))
        for rid, (old, t, below_c, below_r) in note.items():
            who = person.get(rid, "?")
            rider = any(
                g["board_t"] - 60.0 <= t <= g["alight_t"] + 30.0
                for g in legs.get((who, bus_id), [])
            )
            sent = [
                f"{d.start.cause} {d.start.stop_id} -> {d.end.cause} {d.end.stop_id}"
                for d in drafts
                if d.rid == rid.hex() and d.start.cause != "tentative"
            ]
            out.append(
                Heir(str(run), bus_id, who, person.get(old, "?"), rider, below_c, below_r, sent)
            )
    return out


def _most(values: Sequence[float | None]) -> str:
    v = [x for x in values if x is not None]
    return f"{max(v):.1f} dB" if v else "-"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.rotation_heirs")
    ap.add_argument("runs", nargs="+", type=Path, help="kept scenario directories")
    ap.add_argument("--list", action="store_true", help="print every non-rider's line")
    a = ap.parse_args(argv)
    check_pure()  # (_Watched subclasses the classifier: its Python code, compiled build or not)
    configure_logging("warning")
    p = ClassifierParams()
    heirs = [h for run in a.runs for h in scan_run(run)]
    riders = [h for h in heirs if h.rider]
    others = [h for h in heirs if not h.rider]
    print(f"candidates' heirs confirmed on the rotation path: {len(heirs)}")
    print(
        f"riders {len(riders)}: at most {_most([h.below_candidate for h in riders])} below "
        f"their candidate's level as the bus left, {_most([h.below_riders for h in riders])} "
        f"below the riders' level; sent as a ride {sum(1 for h in riders if h.sent)}"
    )
    far = sum(1 for h in others if (h.below_candidate or -math.inf) >= p.fade_drop_db)
    under = sum(1 for h in others if (h.below_riders or -math.inf) >= p.in_bus_margin_db)
    print(
        f"non-riders {len(others)}: {far} {p.fade_drop_db:g} dB or more below their "
        f"candidate's level, {under} {p.in_bus_margin_db:g} dB or more below the riders'; "
        f"sent as a ride {sum(1 for h in others if h.sent)}"
    )
    if a.list:
        for h in others:
            bc = "-" if h.below_candidate is None else f"{h.below_candidate:.1f}"
            br = "-" if h.below_riders is None else f"{h.below_riders:.1f}"
            print(
                f"  {h.run} {h.bus} {h.person} (candidate {h.old_person}): {bc} dB below "
                f"the candidate, {br} below the riders; sent {'; '.join(h.sent) or 'nothing'}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
