"""Every scenario generates for several seeds (regression: a bus passing a waiter's stop
without calling there crashed the bystander builder for quiet_route seed 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_sim import generate, scenario_names


@pytest.mark.parametrize("seed", [2, 3, 4, 5])
@pytest.mark.parametrize("name", scenario_names())
def test_scenario_generates(name: str, seed: int, tmp_path: Path) -> None:
    summary = generate(name, seed, tmp_path, "small")
    assert (tmp_path / "JOURNEYS.jsonl").exists()
    assert summary
