"""Score busbell's offline pipeline against the simulator's ground truth.

Per scenario: generate into a temporary directory, run ``busbell edge replay`` for every
bus and ``busbell backend settle`` over all their events **as subprocesses** (the
simulator never imports edge or backend), then compare the charged journeys with
``JOURNEYS.jsonl`` of the truth.

Matching is per leg. A charged leg matches a true leg of the same rider on the same bus
whose ride overlaps it in time (with :data:`MATCH_SLACK_S` of slack). Then:

- a true leg with no matching charge is **missed**; with more than one it is
  **double charged**;
- its boarding (alighting) stop is right when the earliest (latest) matching charge
  names the true stop;
- only journeys the backend charged count; legs it held for review or dropped
  (``"charged": false``) are counted as **held** and charge nobody, so a true leg that
  was only held is missed;
- a charged leg that matches no true leg is a **bystander charge** (the rider was not
  on that bus then); its rate is given per 10,000 bystander passes of the truth;
- a true journey is **exactly right** when every leg is charged exactly once with the
  right bus, boarding stop and alighting stop.

Legs no bus could observe (a silent iPhone, a flat battery, a clock outside the edge's
tq window) are listed in ``truth.json``; figures are given over all journeys and over
the observable ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from busbell import get_logger
from firmware_sim._heard import UNHEARD, unheard_legs
from firmware_sim._output import GenerateOptions, generate

__all__ = [
    "MATCH_SLACK_S",
    "TARGETS",
    "ChargedLeg",
    "ScenarioScore",
    "SuiteScore",
    "leg_key",
    "load_journeys",
    "run_pipeline",
    "score_scenario",
    "score_suite",
]


def _log() -> Any:
    """The module's logger (looked up per use: it must follow configure_logging)."""
    return get_logger("firmware_sim.score")


MATCH_SLACK_S = 120.0
"""A charge and a true leg on the same bus match when their times overlap within this."""

TARGETS = {"exact_pct_min": 99.5, "bystanders_per_10k_max": 1.0, "missed_pct_max": 0.5}


@dataclass(frozen=True, slots=True)
class ChargedLeg:
    """One leg of a journey (true or charged)."""

    rider_id: str
    bus_id: str
    route_id: str
    board_stop_id: str | None
    board_t: float | None
    alight_stop_id: str | None
    alight_t: float | None
    journey: int


def load_journeys(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JOURNEYS.jsonl file (blank lines skipped).

    Raises:
        ValueError: a line is not a JSON object with ``rider_id`` and ``legs``.
    """
    out: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if not isinstance(obj, dict) or "rider_id" not in obj or "legs" not in obj:
                raise ValueError(f"{path}:{n}: not a journey object")
            out.append(obj)
    return out


def _legs(journeys: Iterable[dict[str, Any]]) -> list[ChargedLeg]:
    out: list[ChargedLeg] = []
    for j, jn in enumerate(journeys):
        for leg in jn["legs"]:
            out.append(
                ChargedLeg(
                    str(jn["rider_id"]),
                    str(leg.get("bus_id")),
                    str(leg.get("route_id")),
                    leg.get("board_stop_id"),
                    _num(leg.get("board_t")),
                    leg.get("alight_stop_id"),
                    _num(leg.get("alight_t")),
                    j,
                )
            )
    return out


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _overlap(c: ChargedLeg, t: ChargedLeg) -> float:
    """Seconds of overlap of a charge with a true leg widened by the slack (-1: none)."""
    assert t.board_t is not None
    assert t.alight_t is not None
    a0, a1 = t.board_t - MATCH_SLACK_S, t.alight_t + MATCH_SLACK_S
    c0 = c.board_t if c.board_t is not None else c.alight_t
    c1 = c.alight_t if c.alight_t is not None else c.board_t
    if c0 is None or c1 is None:
        return 0.0  # a charge without times matches on rider and bus alone
    lo, hi = max(a0, min(c0, c1)), min(a1, max(c0, c1))
    return hi - lo if hi >= lo else -1.0


@dataclass(slots=True)
class ScenarioScore:
    """The comparison of one scenario's charges with its truth."""

    scenario: str
    journeys: int = 0
    journeys_exact: int = 0
    journeys_observable: int = 0
    journeys_observable_exact: int = 0
    legs: int = 0
    legs_observable: int = 0
    board_stop_errors: int = 0
    alight_stop_errors: int = 0
    missed: int = 0
    missed_observable: int = 0
    double_charged: int = 0
    charged_legs: int = 0
    held_legs: int = 0
    bystander_charged: int = 0
    bystander_passes: int = 0
    unobservable_charged: int = 0
    legs_unheard: int = 0
    elapsed_s: float = 0.0
    details: list[dict[str, Any]] = field(default_factory=list)

    def add(self, other: ScenarioScore) -> None:
        """Accumulate another scenario's counts (for the overall line)."""
        for name in (
            "journeys",
            "journeys_exact",
            "journeys_observable",
            "journeys_observable_exact",
            "legs",
            "legs_observable",
            "board_stop_errors",
            "alight_stop_errors",
            "missed",
            "missed_observable",
            "double_charged",
            "charged_legs",
            "held_legs",
            "bystander_charged",
            "bystander_passes",
            "unobservable_charged",
            "legs_unheard",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.elapsed_s += other.elapsed_s

    @property
    def exact_pct(self) -> float:
        """Exactly right journeys, % of all true journeys."""
        return 100.0 * self.journeys_exact / self.journeys if self.journeys else 100.0

    @property
    def exact_observable_pct(self) -> float:
        """Exactly right journeys, % of the observable ones."""
        n = self.journeys_observable
        return 100.0 * self.journeys_observable_exact / n if n else 100.0

    @property
    def missed_pct(self) -> float:
        """Missed legs, % of all true legs."""
        return 100.0 * self.missed / self.legs if self.legs else 0.0

    @property
    def missed_observable_pct(self) -> float:
        """Missed observable legs, % of the observable legs."""
        n = self.legs_observable
        return 100.0 * self.missed_observable / n if n else 0.0

    @property
    def bystanders_per_10k(self) -> float:
        """Bystander charges per 10,000 bystander passes."""
        if not self.bystander_passes:
            return 0.0 if not self.bystander_charged else float("inf")
        return 1e4 * self.bystander_charged / self.bystander_passes

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScenarioScore:
        """The counts back from :meth:`as_dict` (rates are recomputed).

        ``details`` are kept if present. ``legs_unheard`` reads as 0 when absent: scores
        written before it was counted (their unobservable legs are truth.json's only).

        Raises:
            ValueError: a count is missing or not a number.
        """
        out = cls(str(d["scenario"]))
        for k in cls.__slots__:
            if k in ("scenario", "details"):
                continue
            v = d.get(k, 0 if k == "legs_unheard" else None)
            if not isinstance(v, int | float) or isinstance(v, bool):
                raise ValueError(f"score field {k!r} is {v!r}, not a number")
            setattr(out, k, v)
        out.details = list(d.get("details", []))
        return out

    def as_dict(self) -> dict[str, Any]:
        """All counts and rates (details excluded)."""
        out = {k: getattr(self, k) for k in self.__slots__ if k != "details"}
        out.update(
            exact_pct=round(self.exact_pct, 3),
            exact_observable_pct=round(self.exact_observable_pct, 3),
            missed_pct=round(self.missed_pct, 3),
            missed_observable_pct=round(self.missed_observable_pct, 3),
            bystanders_per_10k=round(self.bystanders_per_10k, 3),
        )
        return out


def score_scenario(
    scenario: str,
    truth_journeys: Sequence[dict[str, Any]],
    charged_journeys: Sequence[dict[str, Any]],
    truth: dict[str, Any],
    unheard: Iterable[dict[str, Any]] = (),
) -> ScenarioScore:
    """Compare charged journeys with the truth of one scenario.

    Args:
        scenario: the scenario name (for the report).
        truth_journeys: the truth's JOURNEYS.jsonl objects.
        charged_journeys: what ``backend settle`` produced.
        truth: the truth.json object (``unobservable_legs``, ``bystander_passes``).
        unheard: more unobservable legs, in the same shape: those the bus never heard
            (:func:`firmware_sim._heard.unheard_legs`); counted in ``legs_unheard``.
    """
    sc = ScenarioScore(scenario)
    true_legs = _legs(truth_journeys)
    charged = _legs([j for j in charged_journeys if j.get("charged", True)])
    sc.charged_legs = len(charged)
    sc.held_legs = len(_legs([j for j in charged_journeys if not j.get("charged", True)]))
    sc.bystander_passes = int(truth.get("bystander_passes", {}).get("total", 0))
    unobs = {
        leg_key(u["rider_id"], u["bus_id"], u["board_t"]): str(u.get("reason"))
        for u in [*unheard, *truth.get("unobservable_legs", [])]
    }
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, t in enumerate(true_legs):
        by_key.setdefault((t.rider_id, t.bus_id), []).append(i)
    matches: dict[int, list[ChargedLeg]] = {i: [] for i in range(len(true_legs))}
    for c in charged:
        best, best_ov = None, -1.0
        for i in by_key.get((c.rider_id, c.bus_id), []):
            ov = _overlap(c, true_legs[i])
            if ov > best_ov:
                best, best_ov = i, ov
        if best is None or best_ov < 0.0:
            sc.bystander_charged += 1
            sc.details.append({"kind": "bystander_charged", "charge": _leg_json(c)})
        else:
            matches[best].append(c)
    leg_ok: list[bool] = []
    leg_observable: list[bool] = []
    for i, t in enumerate(true_legs):
        reason = unobs.get(leg_key(t.rider_id, t.bus_id, t.board_t))
        observable = reason is None
        leg_observable.append(observable)
        ms = sorted(matches[i], key=lambda c: (c.board_t or 0.0, c.alight_t or 0.0))
        sc.legs += 1
        sc.legs_observable += observable
        sc.legs_unheard += reason == UNHEARD
        if not observable and ms:
            sc.unobservable_charged += 1
        ok = False
        if not ms:
            sc.missed += 1
            sc.missed_observable += observable
            sc.details.append(
                {"kind": "missed", "leg": _leg_json(t), "observable": observable}
                | ({"unobservable": reason} if reason else {})
            )
        else:
            board_ok = ms[0].board_stop_id == t.board_stop_id
            alight_ok = ms[-1].alight_stop_id == t.alight_stop_id
            sc.board_stop_errors += not board_ok
            sc.alight_stop_errors += not alight_ok
            if len(ms) > 1:
                sc.double_charged += 1
            ok = board_ok and alight_ok and len(ms) == 1
            if not ok:
                sc.details.append(
                    {
                        "kind": "wrong",
                        "leg": _leg_json(t),
                        "charges": [_leg_json(c) for c in ms],
                        "observable": observable,
                    }
                    | ({"unobservable": reason} if reason else {})
                )
        leg_ok.append(ok)
    journey_legs: dict[int, list[int]] = {}
    for i, t in enumerate(true_legs):
        journey_legs.setdefault(t.journey, []).append(i)
    for idxs in journey_legs.values():
        exact = all(leg_ok[i] for i in idxs)
        observable = all(leg_observable[i] for i in idxs)
        sc.journeys += 1
        sc.journeys_exact += exact
        sc.journeys_observable += observable
        sc.journeys_observable_exact += exact and observable
    return sc


def leg_key(rider_id: object, bus_id: object, board_t: object) -> tuple[str, str, float]:
    """How a true leg is named across the truth's lists: rider, bus, boarding time to the ms."""
    return str(rider_id), str(bus_id), round(float(board_t or 0.0), 3)  # type: ignore[arg-type]


def _leg_json(c: ChargedLeg) -> dict[str, Any]:
    return {
        "rider_id": c.rider_id,
        "bus_id": c.bus_id,
        "board_stop_id": c.board_stop_id,
        "board_t": c.board_t,
        "alight_stop_id": c.alight_stop_id,
        "alight_t": c.alight_t,
    }


def _busbell(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "busbell.cli", *[str(a) for a in args]]


def run_pipeline(
    scenario_dir: Path,
    truth: dict[str, Any],
    *,
    timeout_s: float = 600.0,
    out_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Run ``edge replay`` per bus and ``backend settle`` as subprocesses.

    Args:
        scenario_dir: the scenario's inputs (traces, keys, GTFS, riders).
        truth: its ``truth.json``.
        timeout_s: the limit of each subprocess.
        out_dir: where the events and settled journeys go (default: ``scenario_dir``;
            another directory leaves a kept scenario as it is).

    Returns:
        The settled journeys.

    Raises:
        RuntimeError: a subprocess failed (its stderr is included).
    """
    d = scenario_dir
    out_d = d if out_dir is None else out_dir
    out_d.mkdir(parents=True, exist_ok=True)
    events: list[Path] = []
    for bus in truth["buses"]:
        ev = out_d / f"EVENTS-{bus['bus_id']}.jsonl"
        _check(
            _busbell(
                "edge",
                "replay",
                d / bus["trace"],
                "--gtfs",
                d / "gtfs",
                "--device-key",
                d / bus["device_key"],
                "--fleet-keys",
                d / "FLEET.csv",
                "--out",
                ev,
                "--force",  # the scorer owns these files and may run again
            ),
            timeout_s,
        )
        events.append(ev)
    out = out_d / "JOURNEYS.settled.jsonl"
    _check(
        _busbell(
            "backend",
            "settle",
            *events,
            "--gtfs",
            d / "gtfs",
            "--riders",
            d / "RIDERS.csv",
            "--devices",
            d / "DEVICES.csv",
            "--out",
            out,
            "--force",
        ),
        timeout_s,
    )
    return load_journeys(out)


def _check(cmd: list[str], timeout_s: float) -> None:
    proc = subprocess.run(  # noqa: S603 - our own interpreter and arguments
        cmd, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[2:5])} ... exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        )


@dataclass(slots=True)
class SuiteScore:
    """Scores of a suite run."""

    scale: str
    seed: int
    scenarios: list[ScenarioScore]
    generation_s: float
    pipeline_s: float

    @property
    def overall(self) -> ScenarioScore:
        """The sum over scenarios."""
        total = ScenarioScore("overall")
        for s in self.scenarios:
            total.add(s)
        return total


def score_suite(
    names: Sequence[str],
    *,
    seed: int,
    scale: str,
    options: GenerateOptions | None = None,
    keep_dir: Path | None = None,
    progress: Callable[[ScenarioScore], None] | None = None,
) -> SuiteScore:
    """Generate, replay, settle and score each named scenario."""
    scores: list[ScenarioScore] = []
    gen_s = pipe_s = 0.0
    with tempfile.TemporaryDirectory(prefix="busbell-score-") as tmp:
        root = keep_dir if keep_dir is not None else Path(tmp)
        for name in names:
            d = root / name
            started = time.perf_counter()
            truth = generate(name, seed, d, scale, options)
            t_gen = time.perf_counter()
            charged = run_pipeline(d, truth)
            t_pipe = time.perf_counter()
            journeys = load_journeys(d / "JOURNEYS.jsonl")
            sc = score_scenario(name, journeys, charged, truth, unheard_legs(d, journeys))
            sc.elapsed_s = t_pipe - started
            gen_s += t_gen - started
            pipe_s += t_pipe - t_gen
            (d / "score.json").write_text(
                json.dumps({**sc.as_dict(), "details": sc.details}, indent=1) + "\n", "utf-8"
            )
            _log().info("scenario_scored", **sc.as_dict())
            scores.append(sc)
            if progress is not None:
                progress(sc)
    return SuiteScore(scale, seed, scores, gen_s, pipe_s)
