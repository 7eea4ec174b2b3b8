"""``busbell sim score --sweep``: the suite over the radio envelope, matrix and worst cell."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from busbell import AdvRecord, unwrap_tq
from busbell.cli import main as busbell_main
from firmware_sim._output import GenerateOptions, ScenarioOutput, run_scenario
from firmware_sim._radio import DEFAULT_PARAMS, Placement
from firmware_sim._sweep import CELLS, SweepCell, render_sweep, sweep
from firmware_sim._world import TokenEnvelope


def test_cells_move_the_radio_as_named() -> None:
    r = SweepCell("x", -25.0, 20.0, 6.0, 0.3).radio(DEFAULT_PARAMS)
    assert r.tx_eirp_dbm == -25.0
    assert r.shell_loss.mean_db == 20.0
    assert r.shell_loss.std_db == DEFAULT_PARAMS.shell_loss.std_db
    assert r.device_offset_std_db == 6.0
    assert r.scan_window_s == pytest.approx(0.7 * r.scan_interval_s)
    assert CELLS[0].radio(DEFAULT_PARAMS) == DEFAULT_PARAMS
    eirps = [c.tx_eirp_dbm for c in CELLS if c.tx_eirp_dbm is not None]
    assert (min(eirps), max(eirps)) == (-25.0, 3.0)


def test_a_weak_cell_scores_worse_and_is_the_worst_cell() -> None:
    cells = (CELLS[0], SweepCell("EIRP -25 dBm", tx_eirp_dbm=-25.0))
    res = sweep(["phone_deep_in_bag"], [5], "small", GenerateOptions(), cells)
    assert [r.cell.name for r in res] == [c.name for c in cells]
    assert res[1].overall.missed_observable > res[0].overall.missed_observable
    doc = render_sweep(res, "cmd")
    assert "| EIRP -25 dBm | 5 |" in doc
    assert "(EIRP -25 dBm, seed 5)" in doc.split("Worst cell:")[1]


def test_cli_sweep_prints_and_writes_the_matrix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep.md"
    args = ["sim", "score", "--sweep", "--scale", "small", "--seeds", "3", "--cells", "1,12-13"]
    code = busbell_main([*args, "--scenarios", "quiet_route", "--write-docs", str(out)])
    assert code == 0
    doc = out.read_text()
    assert doc.count(" | 3 | ") == 3
    for cell in (CELLS[0], CELLS[11], CELLS[12]):
        assert f"| {cell.name} | 3 |" in doc
    cmd = (
        "busbell sim score --sweep --scale small --seeds 3 --cells 1,12-13 --scenarios quiet_route"
    )
    assert cmd in doc
    assert "Worst cell" in capsys.readouterr().out
    assert busbell_main(["sim", "score", "--sweep", "--seeds", "x"]) == 2
    assert busbell_main(["sim", "score", "--sweep", "--cells", f"1-{len(CELLS) + 1}"]) == 2
    assert busbell_main(["sim", "score", "--list-cells"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split(None, 1)[1] for line in listed] == [c.name for c in CELLS]


def _adverts(out: ScenarioOutput) -> list[AdvRecord]:
    return [r for recs in out.result.records.values() for r in recs if isinstance(r, AdvRecord)]


def test_token_axes_move_every_token_and_nothing_else() -> None:
    """Each token axis changes what it names; the people, buses and rides stay the same."""
    name = "long_ride_many_intervals"  # rides over several rid intervals
    base = run_scenario(name, 5)
    env = TokenEnvelope(
        adv_interval_s=2.0,
        placements=((Placement.BAG_DEEP, 1.0),),
        clock_offset_s=55.0,
        addr_rotation_s=math.inf,
    )
    moved = run_scenario(name, 5, options=GenerateOptions(envelope=env))
    assert moved.result.legs == base.result.legs
    assert len(_adverts(moved)) < len(_adverts(base)) / 2  # 2 s instead of 0.25-1 s
    offsets = [abs(tok_t - r.t) for r, tok_t in _token_times(moved)]
    assert max(offsets) > 30.0  # clocks up to 55 s off (base: fobs ~3 s, phones ~0)
    assert max(abs(tok_t - r.t) for r, tok_t in _token_times(base)) < 30.0
    rids_per_addr: dict[str, set[bytes]] = {}
    for r in _adverts(moved):
        rids_per_addr.setdefault(r.addr, set()).add(next(iter(r.mfr.values()))[3:15])
    assert max(len(v) for v in rids_per_addr.values()) >= 2  # kept across a rotation
    rot = run_scenario(
        name, 5, options=GenerateOptions(envelope=TokenEnvelope(addr_rotation_s=0.0))
    )
    per_addr: dict[str, set[bytes]] = {}
    for r in _adverts(rot):
        per_addr.setdefault(r.addr, set()).add(next(iter(r.mfr.values()))[3:15])
    assert max(len(v) for v in per_addr.values()) == 1  # a new address with every rid


def _token_times(out: ScenarioOutput) -> list[tuple[AdvRecord, float]]:
    res = []
    for r in _adverts(out):
        raw = next(iter(r.mfr.values()))
        res.append((r, unwrap_tq(int.from_bytes(raw[1:3], "big"), r.t)))
    return res
