"""The end of ``busbell demo``: ground truth beside what was settled, and why they differ.

Reads the generated scenario (``JOURNEYS.jsonl`` ground truth, ``truth.json``) and the
backend's SQLite ledger; no busbell deployable is imported (the demo runs them as
processes).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["demo_length_line", "expected_vs_settled"]


def demo_length_line(truth: dict[str, Any], speed: float, grace_s: float) -> str:
    """One line saying how long the demo runs (bus time, wall time at ``speed``, grace)."""
    span = max(0.0, float(truth["t_end"]) - float(truth["t_start"]))
    wall = span / speed if speed > 0 else span
    return (
        f"  the scenario covers {span / 60:.0f} min of bus time: at --speed {speed:g} the "
        f"buses run for about {wall / 60:.1f} min, then {grace_s:g} s for the last uploads "
        "(--duration stops it sooner)"
    )


def _zone(scenario_dir: Path) -> dt.tzinfo:
    """The agency's timezone (the scenario's GTFS), or UTC when it does not say.

    ``busbell backend missed-report`` shows its times in it too.
    """
    with contextlib.suppress(OSError, KeyError, ValueError, StopIteration):
        with (scenario_dir / "gtfs" / "agency.txt").open(encoding="utf-8-sig") as f:
            return ZoneInfo(next(csv.DictReader(f))["agency_timezone"])
    return dt.UTC


def _hhmm(t: float, tz: dt.tzinfo) -> str:
    return dt.datetime.fromtimestamp(t, tz).strftime("%H:%M %Z")


def _leg_text(leg: dict[str, Any], tz: dt.tzinfo) -> str:
    return (
        f"{leg['bus_id']} {leg['board_stop_id']} -> {leg['alight_stop_id']} "
        f"at {_hhmm(leg['board_t'], tz)}"
    )


_GROUP_OVER = 3
"""More legs than this missing for one reason are said in one line, not one each."""


def _missing_lines(missing: list[tuple[str, str, str]]) -> list[str]:
    """``(rider, leg text, why)`` as lines: one per leg, or one per reason shared widely."""
    by_why: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for rider, leg, why in missing:
        by_why[why].append((rider, leg))
    out: list[str] = []
    for rider, leg, why in missing:
        legs = by_why[why]
        if len(legs) <= _GROUP_OVER:
            out.append(f"  {rider}: {leg} not settled: {why}")
        elif legs[0] == (rider, leg):
            riders = sorted({r for r, _ in legs})
            out.append(
                f"  {len(legs)} legs of {len(riders)} riders ({', '.join(riders)}) not settled: "
                f"{why}"
            )
    return out


def _settled(db: Path) -> tuple[dict[str, int], dict[str, int], dict[str, list[str]]]:
    """Legs settled per rider, segments resolved per rider, review flags per rider."""
    legs: dict[str, int] = defaultdict(int)
    segments: dict[str, int] = defaultdict(int)
    flags: dict[str, list[str]] = defaultdict(list)
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        for rider, n in conn.execute(
            "SELECT j.rider_id, COUNT(*) FROM journeys j JOIN legs l "
            "ON l.journey_id = j.journey_id GROUP BY j.rider_id"
        ):
            legs[rider] = n
        for rider, n in conn.execute(
            "SELECT rider_id, COUNT(*) FROM rider_segments GROUP BY rider_id"
        ):
            segments[rider] = n
        for rider, raw in conn.execute("SELECT rider_id, flags FROM journeys"):
            with contextlib.suppress(ValueError, TypeError):
                flags[rider].extend(json.loads(raw))
    return legs, segments, flags


def expected_vs_settled(scenario_dir: Path, db: Path, *, stopped_early: bool) -> list[str]:
    """Lines comparing the scenario's ground truth with the backend's ledger.

    A rider whose legs are missing is explained: a leg the scenario marks unobservable
    (token silent, flat battery, clock out of the window) can never be charged; a rider
    whose segments reached the backend but are not in a journey yet waits for settlement
    (it settles a rider-day once it has been quiet); a rider with no segment at all was
    not detected by the edge, or the demo stopped before the bus uploaded it.
    """
    truth = json.loads((scenario_dir / "truth.json").read_text(encoding="utf-8"))
    expected: dict[str, list[dict[str, Any]]] = defaultdict(list)
    n_journeys = 0
    for line in (scenario_dir / "JOURNEYS.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            journey = json.loads(line)
            n_journeys += 1
            expected[journey["rider_id"]].extend(journey["legs"])
    unobservable: dict[tuple[str, str], str] = {
        (u["rider_id"], u["bus_id"]): u["reason"] for u in truth.get("unobservable_legs", [])
    }
    n_legs = sum(len(v) for v in expected.values())
    silent = truth.get("silent_riders", [])
    head = f"ground truth: {n_journeys} journeys, {n_legs} legs"
    if silent:
        head += f" ({len(silent)} riders whose token never advertises are not counted)"
    out = [head]
    try:
        legs, segments, flags = _settled(db)
    except sqlite3.Error as exc:
        return [*out, f"  (no ledger to compare with: {exc})"]
    out.append(f"settled:      {len(legs)} riders, {sum(legs.values())} legs")
    tz = _zone(scenario_dir)
    notes: list[str] = []
    missing_legs: list[tuple[str, str, str]] = []
    for rider in sorted(expected):
        want = expected[rider]
        got = legs.get(rider, 0)
        if got == len(want):
            continue
        if got > len(want):
            notes.append(f"  {rider}: {got} legs settled, {len(want)} in the ground truth")
            continue
        missing = want[got:] if got else want
        for leg in missing:
            reason = unobservable.get((rider, leg["bus_id"]))
            if reason is not None:
                why = f"unobservable in the scenario ({reason}): no system could charge it"
            elif segments.get(rider, 0) > got:
                why = "its segments reached the backend; settlement runs once the rider is quiet"
            elif stopped_early:
                why = "no segment reached the backend before the demo was stopped"
            else:
                why = "no segment reached the backend: the edge did not detect this ride"
            missing_legs.append((rider, _leg_text(leg, tz), why))
    notes.extend(_missing_lines(missing_legs))
    for rider in sorted(set(legs) - set(expected)):
        notes.append(f"  {rider}: {legs[rider]} legs settled, none in the ground truth")
    for rider in sorted(flags):
        if "review" in flags[rider]:
            notes.append(f"  {rider}: held for review ({', '.join(sorted(set(flags[rider])))})")
    if notes:
        out.append("differences:")
        out.extend(notes)
    else:
        out.append("every ground-truth leg was settled")
    return out
