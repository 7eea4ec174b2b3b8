"""The hindsight bound (firmware_sim._bound): features of legs and non-legs, the best rules."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pytest

from busbell import derive_rider_keys, interval_of, rid_for_interval
from firmware_sim._bound import (
    Heard,
    best_rule,
    bound_report,
    measure_scenario,
    monotone_bound,
    separating,
)
from firmware_sim._output import GenerateOptions, generate
from firmware_sim._score import load_journeys
from firmware_sim._world import TokenEnvelope


def _h(adverts: int = 0, positions: int = 0, level_db: float = 0.0, echo: int = 0) -> Heard:
    return Heard(
        adverts=adverts,
        duration_s=float(adverts),
        positions=positions,
        span_m=25.0 * positions,
        doors=0,
        at_doors=0,
        level_db=level_db,
        echo_bus=echo,
        echoed=echo,
    )


def test_the_monotone_bound_charges_the_legs_no_non_leg_dominates() -> None:
    strong, weak = _h(40, 20, 0.0, 40), _h(3, 2, -4.0, 3)
    loud_waiter = _h(30, 3, -2.0, 30)  # above the weak leg on every feature, below the strong
    quiet = _h(2, 1, -20.0, 0)
    charged, spent = monotone_bound([strong, weak], [loud_waiter, quiet], 0)
    assert (charged, spent) == ([True, False], 0)
    # one bystander charge allowed: the weak leg too, at the cost of the waiter
    assert monotone_bound([strong, weak], [loud_waiter, quiet], 1) == ([True, True], 1)
    assert separating(weak, [loud_waiter]) == []  # dominated: nothing separates it
    level_only = _h(3, 2, -5.0, 3)  # below the leg by its level alone
    assert separating(weak, [level_only]) == ["level_db"]
    assert separating(weak, [level_only, _h(3, 3, -4.0, 2)]) == ["level_db", "echo_bus"]


def test_the_monotone_bound_is_the_best_rule_when_charges_are_allowed() -> None:
    """Not the greedy choice: a leg that costs one non-leg (``cheap``, under ``n1``) taken
    first leaves too little for three legs that share two dominators (``n2``, ``n3``). The
    bound is an upper bound on every monotone rule, so it charges the three."""
    cheap, n1 = _h(5, 0, -50.0), _h(6, 0, -50.0)
    shared = [_h(0, p, -50.0) for p in (3, 4, 5)]
    n2, n3 = _h(0, 6, -50.0), _h(0, 7, -50.0)
    charged, spent = monotone_bound([cheap, *shared], [n1, n2, n3], 2)
    assert (charged, spent) == ([False, True, True, True], 2)
    assert monotone_bound([cheap, *shared], [n1, n2, n3], 3) == ([True] * 4, 3)
    assert monotone_bound([cheap, *shared], [n1, n2, n3], 1) == ([True, False, False, False], 1)


def test_past_its_search_budget_the_monotone_bound_charges_what_any_rule_could(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every leg under at most ``allowed`` non-legs: still an upper bound."""
    monkeypatch.setattr("firmware_sim._bound.SEARCH_NODES", 1)
    cheap, n1 = _h(5, 0, -50.0), _h(6, 0, -50.0)
    shared, n2, n3 = _h(0, 3, -50.0), _h(0, 6, -50.0), _h(0, 7, -50.0)
    assert monotone_bound([cheap, shared, _h(9, 9)], [n1, n2, n3], 2) == ([True] * 3, 2)
    assert monotone_bound([cheap, shared], [n1, n2, n3], 1) == ([True, False], 1)


def test_the_best_rule_puts_its_threshold_just_above_the_non_legs() -> None:
    legs = [_h(10, p) for p in range(1, 11)]
    nonlegs = [_h(10, p) for p in range(5)] + [_h(1, 9, -30.0)]
    rule, got = best_rule(legs, nonlegs, 0)
    assert got == 6  # positions 5-10; 9 positions heard at -30 dB is barred by level or adverts
    assert all(rule.charges(h) == (h.positions >= 5) for h in legs)
    assert not any(rule.charges(h) for h in nonlegs)
    _, got1 = best_rule(legs, nonlegs, 1)
    assert got1 == 7


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bound") / "quiet_route"
    generate("quiet_route", 3, d, "small", GenerateOptions(envelope=TokenEnvelope(echo_share=1.0)))
    return d


def _heard_in(d: Path, rider: str, bus: str, t0: float, t1: float) -> int:
    """The rider's adverts in the bus's trace from t0 to t1, counted here from the files."""
    riders = {r.split(",")[0]: r.split(",")[1] for r in (d / "RIDERS.csv").read_text().split()}
    key = derive_rider_keys(bytes.fromhex(riders[rider])).rid_key
    rids = {rid_for_interval(key, i).hex() for i in range(interval_of(t0) - 1, interval_of(t1) + 2)}
    n = 0
    for line in (d / "traces" / f"{bus}.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "adv" and t0 <= rec["t"] <= t1:
            n += any(p[6:30] in rids for p in rec["mfr"].values())
    return n


def test_a_generated_scenarios_legs_are_measured_from_its_files(scenario: Path) -> None:
    truth = json.loads((scenario / "truth.json").read_text())
    m = measure_scenario(scenario)
    assert len(m.legs) == truth["legs"]
    assert m.passes == truth["bystander_passes"]["total"]
    assert not m.scored
    for lg in m.legs:
        assert lg.heard.adverts == _heard_in(
            scenario, lg.rider_id, lg.bus_id, lg.board_t, lg.alight_t
        )
        assert lg.observable == (lg.heard.adverts > 0)
        assert lg.heard.positions <= lg.heard.span_m / 25.0 + 2.0  # 25-m bins, both ends
        assert lg.heard.at_doors >= 1  # heard at its stops, the bus standing there
        assert lg.ends  # ... and so at both ends of the ride
    # the riders are the reference of the level: the legs' medians sit around 0 dB
    assert abs(statistics.median(lg.heard.level_db for lg in m.legs)) <= 3.0
    # every phone echoes: some rider's adverts name this bus
    assert any(lg.heard.echo_bus > 0 for lg in m.legs)
    assert all(lg.heard.echo_bus <= lg.heard.echoed <= lg.heard.adverts for lg in m.legs)
    windows = {(lg.rider_id, lg.bus_id): (lg.board_t, lg.alight_t) for lg in m.legs}
    for x in m.nonlegs:
        a, z = windows.get((x.person, x.bus_id), (math.inf, -math.inf))
        assert x.t1 < a - 120.0 or x.t0 > z + 120.0
        assert not x.riding  # one bus: nobody rides another


def test_a_rider_taken_out_of_the_truth_is_a_non_leg_that_bars_weaker_legs(
    scenario: Path, tmp_path: Path
) -> None:
    before = measure_scenario(scenario)
    best = max(before.legs, key=lambda lg: lg.heard.vector())
    d = tmp_path / "quiet_route"
    shutil.copytree(scenario, d)
    journeys = [j for j in load_journeys(d / "JOURNEYS.jsonl") if j["rider_id"] != best.rider_id]
    (d / "JOURNEYS.jsonl").write_text("".join(json.dumps(j) + "\n" for j in journeys))
    truth = json.loads((d / "truth.json").read_text())
    truth["legs"] -= 1
    truth["bystander_passes"]["total"] = 10_000  # one charge allowed
    (d / "truth.json").write_text(json.dumps(truth))
    after = measure_scenario(d)
    mine = [x for x in after.nonlegs if x.person == best.rider_id]
    assert mine
    assert max(x.heard.adverts for x in mine) >= best.heard.adverts
    legs = [lg.heard for lg in after.legs]
    nonlegs = [x.heard for x in after.nonlegs]
    top = max(mine, key=lambda x: x.heard.adverts).heard.vector()
    dominated = sum(all(a >= b for a, b in zip(top, h.vector(), strict=True)) for h in legs)
    charged, _ = monotone_bound(legs, nonlegs, 0)
    assert dominated > 0
    assert sum(charged) <= len(legs) - dominated
    lines = bound_report([d])
    assert "10000 bystander passes (a rule may charge 1)" in lines[0]


def test_the_report_sorts_the_kept_runs_misses_by_the_bound(scenario: Path, tmp_path: Path) -> None:
    d = tmp_path / "cell-23" / "seed-1" / "quiet_route"
    shutil.copytree(scenario, d)
    lg = load_journeys(d / "JOURNEYS.jsonl")[0]
    leg = {"rider_id": lg["rider_id"], **lg["legs"][0]}
    score = {"details": [{"kind": "missed", "leg": leg, "observable": True}]}
    (d / "score.json").write_text(json.dumps(score))
    lines = bound_report([tmp_path], listing=True)
    assert lines[0].startswith("cell-23: 1 scenario runs")
    classifier = next(x for x in lines if x.startswith("  classifier"))
    assert "missed 1/" in classifier
    assert "the monotone bound charges 1 of them (separable)" in classifier
    assert any(x.startswith("    missed SEPARABLE quiet_route " + lg["rider_id"]) for x in lines)
    with pytest.raises(ValueError, match="no scenario directory"):
        bound_report([tmp_path / "cell-23" / "seed-1" / "quiet_route" / "traces"])
