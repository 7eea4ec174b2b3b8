"""The scorer's subprocess wiring: generate, ``edge replay``, ``backend settle``, compare.

The whole small suite runs in the default run (about 20 s); the full scale is ``slow``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firmware_sim import generate, scenario_names, score_suite
from firmware_sim._report import render_markdown
from firmware_sim._score import load_journeys, run_pipeline, score_scenario


def test_replay_and_settle_subprocesses_end_to_end(tmp_path: Path) -> None:
    d = tmp_path / "quiet_route"
    truth = generate("quiet_route", 3, d, "small")
    charged = run_pipeline(d, truth)
    for bus in truth["buses"]:
        assert (d / f"EVENTS-{bus['bus_id']}.jsonl").exists()
    sc = score_scenario("quiet_route", load_journeys(d / "JOURNEYS.jsonl"), charged, truth)
    assert sc.journeys == truth["journeys"]
    assert sc.charged_legs > 0  # the pipeline charged somebody


@pytest.mark.timeout(300)
def test_whole_small_suite_scores_and_renders() -> None:
    """The CI run of the suite (about a minute); a loose regression guard, not the targets."""
    suite = score_suite(scenario_names(), seed=2, scale="small")
    doc = render_markdown(suite, "busbell sim score --scale small --seed 2")
    assert "| **overall** |" in doc
    o = suite.overall
    assert o.journeys > 100
    assert o.exact_observable_pct >= 90.0
    assert o.bystander_charged <= 5


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_full_suite(tmp_path: Path) -> None:
    suite = score_suite(scenario_names(), seed=1, scale="full", keep_dir=tmp_path)
    o = suite.overall
    (tmp_path / "overall.json").write_text(json.dumps(o.as_dict()))
    assert o.journeys > 200
