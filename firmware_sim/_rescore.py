"""Score kept scenarios again with the code of now: a paired A/B on identical radio.

``busbell sim score --sweep --rescore ROOT`` takes the scenario directories a sweep kept
(``ROOT/cell-NN/seed-S/SCENARIO``, written by ``--keep``), runs ``edge replay`` and
``backend settle`` on them again, as subprocesses, without generating anything, and
scores the result against the same truth. Two versions of the classifier are then
compared on the very same adverts, so a difference is the code's, not the radio's
random stream; and the run skips generation (a third of a full-scale run).

The kept directories are read only: events, settled journeys and the new ``score.json``
go to an output directory (``--keep`` of the rescoring run, or a temporary one), so
several people can rescore one kept baseline at once. :func:`kept_changes` lists the
legs whose verdict changed against the ``score.json`` the kept run wrote.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware_sim._heard import unheard_legs
from firmware_sim._score import (
    ScenarioScore,
    SuiteScore,
    leg_key,
    load_journeys,
    run_pipeline,
    score_scenario,
)

__all__ = [
    "KeptRun",
    "find_kept_runs",
    "kept_changes",
    "kept_details",
    "kept_overall",
    "render_changes",
    "rescore_suite",
]

_CELL = re.compile(r"cell-(\d+)$")
_SEED = re.compile(r"seed-(\d+)$")


@dataclass(frozen=True, slots=True)
class KeptRun:
    """One kept run of a sweep: its cell number, seed and directory."""

    cell: int
    seed: int
    path: Path


def find_kept_runs(root: Path) -> list[KeptRun]:
    """The runs kept under ``root`` (``cell-NN/seed-S`` directories), by cell then seed.

    Raises:
        ValueError: ``root`` is not a directory or holds no kept run.
    """
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    runs: list[KeptRun] = []
    for cell_dir in root.iterdir():
        cm = _CELL.match(cell_dir.name)
        if cm is None or not cell_dir.is_dir():
            continue
        for seed_dir in cell_dir.iterdir():
            sm = _SEED.match(seed_dir.name)
            if sm is not None and seed_dir.is_dir():
                runs.append(KeptRun(int(cm.group(1)), int(sm.group(1)), seed_dir))
    if not runs:
        raise ValueError(
            f"{root} holds no kept run (cell-NN/seed-S directories): keep one with"
            " busbell sim score --sweep --keep DIR"
        )
    return sorted(runs, key=lambda r: (r.cell, r.seed))


def _scenarios(kept: Path, names: Sequence[str]) -> list[str]:
    return [n for n in names if (kept / n / "truth.json").is_file()]


def rescore_suite(names: Sequence[str], kept: Path, out: Path) -> SuiteScore:
    """Replay, settle and score each named scenario kept in ``kept``.

    Args:
        names: the scenarios; those not kept in ``kept`` are skipped.
        kept: one kept run (``.../cell-NN/seed-S``): read only.
        out: where each scenario's events, settled journeys and ``score.json`` go.

    Raises:
        ValueError: none of ``names`` is kept there.
        RuntimeError: a subprocess failed.
    """
    present = _scenarios(kept, names)
    if not present:
        raise ValueError(f"{kept} holds none of the scenarios {list(names)}")
    scores: list[ScenarioScore] = []
    pipe_s = 0.0
    for name in present:
        d = kept / name
        truth = json.loads((d / "truth.json").read_text("utf-8"))
        started = time.perf_counter()
        charged = run_pipeline(d, truth, out_dir=out / name)
        journeys = load_journeys(d / "JOURNEYS.jsonl")
        sc = score_scenario(name, journeys, charged, truth, unheard_legs(d, journeys))
        sc.elapsed_s = time.perf_counter() - started
        pipe_s += sc.elapsed_s
        (out / name / "score.json").write_text(
            json.dumps({**sc.as_dict(), "details": sc.details}, indent=1) + "\n", "utf-8"
        )
        scores.append(sc)
    return SuiteScore("kept", 0, scores, 0.0, pipe_s)  # (no scale or seed: what was kept)


def _kept_scores(kept: Path, names: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """The ``score.json`` the kept run wrote for each of those scenarios, with its name."""
    out = []
    for name in _scenarios(kept, names):
        path = kept / name / "score.json"
        if path.is_file():
            out.append((name, json.loads(path.read_text("utf-8"))))
    return out


def kept_details(scores: Sequence[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The observable errors and bystander charges of kept scores, with their scenario."""
    return [
        {"scenario": name, **x}
        for name, d in scores
        for x in d.get("details", [])
        if x.get("kind") == "bystander_charged" or x.get("observable")
    ]


def _stops(leg: dict[str, Any] | None) -> str:
    if not leg:
        return "nothing"
    return f"{leg.get('board_stop_id')} -> {leg.get('alight_stop_id')}"


def _key(d: dict[str, Any]) -> tuple[str, str, str, str, str]:
    leg = d.get("leg") or d.get("charge") or {}
    return (
        str(d.get("scenario")),
        str(leg.get("rider_id")),
        str(leg.get("bus_id")),
        _stops(leg),
        str(d.get("kind")),
    )


def _charged(d: dict[str, Any]) -> str:
    charges = d.get("charges")
    if isinstance(charges, list) and charges:
        return ", ".join(_stops(c) for c in charges)
    return "nothing" if d.get("kind") != "bystander_charged" else _stops(d.get("charge"))


def kept_changes(
    before: Iterable[dict[str, Any]], after: Iterable[dict[str, Any]]
) -> tuple[list[str], list[str]]:
    """The errors the new code fixed and the ones it made, one line each.

    An error is the same when its scenario, rider, bus, true stops, kind and charged
    stops are; a wrong leg charged with other wrong stops counts as fixed and new.
    """

    def lines(ds: Iterable[dict[str, Any]]) -> dict[tuple[str, ...], str]:
        out: dict[tuple[str, ...], str] = {}
        for d in ds:
            k = (*_key(d), _charged(d))
            truth = "not aboard" if d.get("kind") == "bystander_charged" else k[3]
            out[k] = f"{k[0]} {k[4]} {k[1]} on {k[2]}: truth {truth}, charged {k[5]}"
        return out

    b, a = lines(before), lines(after)
    return [b[k] for k in sorted(b.keys() - a.keys())], [a[k] for k in sorted(a.keys() - b.keys())]


def _leg_key(leg: dict[str, Any]) -> tuple[str, str, float]:
    return leg_key(leg.get("rider_id"), leg.get("bus_id"), leg.get("board_t"))


def _kept_as_now(kept: Path, name: str, score: dict[str, Any]) -> tuple[ScenarioScore, int]:
    """A kept scenario score from before ``radio_unheard``, counted as the scorer of now would.

    The legs the bus never heard leave the observable counts, with their journeys and
    the kept errors on them (only errors: such a leg was never charged). Returns the
    score (its details less those errors) and how many errors that took out.
    """
    run = kept / name
    journeys = load_journeys(run / "JOURNEYS.jsonl")
    truth = json.loads((run / "truth.json").read_text("utf-8"))
    before = {_leg_key(u) for u in truth.get("unobservable_legs", [])}
    unheard = {_leg_key(u) for u in unheard_legs(run, journeys)} - before
    s = ScenarioScore.from_dict(score)
    erred = {_leg_key(x["leg"]): x for x in s.details if x.get("kind") != "bystander_charged"}
    s.details = [x for x in s.details if _leg_key(x.get("leg") or {}) not in unheard]
    s.legs_unheard = len(unheard)
    s.legs_observable -= len(unheard)
    s.missed_observable -= sum(
        erred[k].get("kind") == "missed" and bool(erred[k].get("observable"))
        for k in unheard
        if k in erred
    )
    for j in journeys:
        keys = [_leg_key({"rider_id": j["rider_id"], **leg}) for leg in j.get("legs", [])]
        if any(k in before for k in keys) or not any(k in unheard for k in keys):
            continue
        s.journeys_observable -= 1
        s.journeys_observable_exact -= not any(k in erred for k in keys)
    return s, len(erred.keys() & unheard)


def _scores_as_now(
    kept: Path, scores: Sequence[tuple[str, dict[str, Any]]]
) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """Kept scores counted as now (:func:`_kept_as_now`), and the kept errors that took out."""
    out, n = [], 0
    for name, d in scores:
        s, k = _kept_as_now(kept, name, d)
        out.append((name, {**s.as_dict(), "details": s.details}))
        n += k
    return out, n


def kept_overall(scores: Sequence[tuple[str, dict[str, Any]]]) -> ScenarioScore | None:
    """Kept scores summed (``None``: the kept run wrote none)."""
    if not scores:
        return None
    total = ScenarioScore("overall")
    for _, d in scores:
        total.add(ScenarioScore.from_dict(d))
    return total


def _counts(s: ScenarioScore) -> str:
    return (
        f"exact {s.journeys_observable_exact}/{s.journeys_observable}, "
        f"missed {s.missed_observable}/{s.legs_observable}, double {s.double_charged}, "
        f"bystanders {s.bystander_charged}/{s.bystander_passes}, held {s.held_legs}"
    )


def render_changes(
    runs: Iterable[tuple[str, int, ScenarioScore, Path]], names: Sequence[str]
) -> str:
    """Each rescored run against its kept score, in Markdown: counts, then fixed and new errors.

    Args:
        runs: (cell label, seed, the new overall score with its details, the kept run's dir).
        names: the scenarios rescored.
    """
    lines = ["## Against the kept scores (same adverts, the code of now)", ""]
    n_fixed = n_new = 0
    for label, seed, after, kept in runs:
        scores = _kept_scores(kept, names)
        before = kept_overall(scores)
        lines.append(f"- {label}, seed {seed} ({kept}):")
        if before is None:
            lines.append("  - the kept run wrote no score.json: nothing to compare")
            continue
        lines.append(f"  - kept: {_counts(before)}")
        if not all("legs_unheard" in d for _, d in scores):
            # scored before radio_unheard: count it as the scorer of now would
            scores, n_unheard = _scores_as_now(kept, scores)
            before = kept_overall(scores)
            assert before is not None
            lines.append(
                f"  - kept, as scored now ({before.legs_unheard} legs never heard, "
                f"{n_unheard} kept errors on them, not counted): {_counts(before)}"
            )
        lines.append(f"  - now:  {_counts(after)}")
        fixed, new = kept_changes(kept_details(scores), after.details)
        n_fixed += len(fixed)
        n_new += len(new)
        lines += [f"  - fixed: {x}" for x in fixed]
        lines += [f"  - NEW: {x}" for x in new]
    lines += ["", f"Errors fixed: {n_fixed}; new errors: {n_new}."]
    return "\n".join(lines) + "\n"
