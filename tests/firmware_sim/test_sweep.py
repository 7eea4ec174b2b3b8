"""``busbell sim score --sweep``: the suite over the radio envelope, matrix and worst cell."""

from __future__ import annotations

from pathlib import Path

import pytest

from busbell.cli import main as busbell_main
from firmware_sim._output import GenerateOptions
from firmware_sim._radio import DEFAULT_PARAMS
from firmware_sim._sweep import CELLS, SweepCell, render_sweep, sweep


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
    args = ["sim", "score", "--sweep", "--scale", "small", "--seeds", "3"]
    code = busbell_main([*args, "--scenarios", "quiet_route", "--write-docs", str(out)])
    assert code == 0
    doc = out.read_text()
    assert doc.count(" | 3 | ") == len(CELLS)
    assert "busbell sim score --sweep --scale small --seeds 3 --scenarios quiet_route" in doc
    assert "Worst cell" in capsys.readouterr().out
    assert busbell_main(["sim", "score", "--sweep", "--seeds", "x"]) == 2
