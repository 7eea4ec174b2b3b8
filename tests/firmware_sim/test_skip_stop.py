"""A bus told to skip a stop drives past one nobody uses; a rider app waits there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from busbell import GnssRecord, haversine_m, load_gtfs
from firmware_sim._output import GenerateOptions, run_scenario, sample_gtfs_dir


def test_the_skipping_bus_passes_a_stop_nobody_uses_without_halting() -> None:
    plain = run_scenario("transfer_two_buses", 1)
    skipping = run_scenario(
        "transfer_two_buses", 1, options=GenerateOptions(skip_stop_bus="bus-55-01")
    )
    (skipped,) = skipping.result.skipped_stops
    assert plain.result.skipped_stops == []
    before = {c.idx: c for c in plain.result.plans["bus-55-01"].calls}
    after = {c.idx: c for c in skipping.result.plans["bus-55-01"].calls}
    idx = skipped["idx"]
    assert idx in before  # it used to halt there (without riders) ...
    assert not before[idx].board_t
    assert not before[idx].alight_t
    assert idx not in after  # ... and now drives past
    assert set(before) - set(after) == {idx}
    # every rider still rides: the same legs, between the same stops
    legs = [
        (leg.rider_id, leg.bus_id, leg.board_stop_id, leg.alight_stop_id)
        for leg in plain.result.legs
    ]
    legs2 = [
        (leg.rider_id, leg.bus_id, leg.board_stop_id, leg.alight_stop_id)
        for leg in skipping.result.legs
    ]
    assert sorted(legs) == sorted(legs2)
    # the GNSS passes the stop moving, around the time the truth says
    feed = load_gtfs(sample_gtfs_dir())
    stop = feed.stops[skipped["stop_id"]]
    fixes = [r for r in skipping.result.records["bus-55-01"] if isinstance(r, GnssRecord)]
    near = min(fixes, key=lambda r: haversine_m(r.lat, r.lon, stop.lat, stop.lon))
    assert haversine_m(near.lat, near.lon, stop.lat, stop.lon) < 40
    assert near.speed_mps > 2.0
    assert abs(near.t - skipped["t"]) < 10


def test_a_bus_with_riders_at_every_stop_cannot_skip_one() -> None:
    with pytest.raises(ValueError, match="none to skip"):
        run_scenario("quiet_route", 1, options=GenerateOptions(skip_stop_bus="bus-55-01"))
    with pytest.raises(ValueError, match="no bus"):
        run_scenario("quiet_route", 1, options=GenerateOptions(skip_stop_bus="bus-nope"))


def test_the_cli_writes_the_skipped_stop_into_the_truth(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "busbell.cli", "sim", "scenario", "--seed", "1"]
    r = subprocess.run(
        [*base, "--name", "transfer_two_buses", "--out", str(tmp_path / "a")]
        + ["--skip-stop", "bus-G6000-01"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    truth = json.loads((tmp_path / "a" / "truth.json").read_text())
    assert [s["bus_id"] for s in truth["skipped_stops"]] == ["bus-G6000-01"], r.stdout
    bad = subprocess.run(
        [*base, "--name", "quiet_route", "--out", str(tmp_path / "b"), "--skip-stop", "bus-55-01"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2
    assert "none to skip" in bad.stderr
