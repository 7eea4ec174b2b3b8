"""``busbell sim score --sweep --rescore``: kept runs scored again, the kept files untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from busbell.cli import main as busbell_main
from firmware_sim._rescore import find_kept_runs, kept_changes


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_kept_changes_lists_fixed_and_new_errors() -> None:
    leg = {"rider_id": "r-1", "bus_id": "b", "board_stop_id": "S1", "alight_stop_id": "S3"}
    missed = {"scenario": "q", "kind": "missed", "leg": leg, "observable": True}
    wrong_a = {
        "scenario": "q",
        "kind": "wrong",
        "leg": {**leg, "rider_id": "r-2"},
        "charges": [{**leg, "rider_id": "r-2", "board_stop_id": "S2"}],
        "observable": True,
    }
    wrong_b = {**wrong_a, "charges": [{**leg, "rider_id": "r-2", "alight_stop_id": "S2"}]}
    fixed, new = kept_changes([missed, wrong_a], [wrong_b])
    assert fixed == [
        "q missed r-1 on b: truth S1 -> S3, charged nothing",
        "q wrong r-2 on b: truth S1 -> S3, charged S2 -> S3",
    ]
    assert new == ["q wrong r-2 on b: truth S1 -> S3, charged S1 -> S2"]
    assert kept_changes([missed], [dict(missed)]) == ([], [])


def test_find_kept_runs_refuses_a_directory_without_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no kept run"):
        find_kept_runs(tmp_path)
    with pytest.raises(ValueError, match="not a directory"):
        find_kept_runs(tmp_path / "absent")
    (tmp_path / "cell-03" / "seed-7").mkdir(parents=True)
    (tmp_path / "cell-01" / "seed-2").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    assert [(r.cell, r.seed) for r in find_kept_runs(tmp_path)] == [(1, 2), (3, 7)]


@pytest.mark.timeout(300)
def test_rescore_scores_the_kept_adverts_again_and_leaves_them_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept, new = tmp_path / "kept", tmp_path / "new"
    base = ["sim", "score", "--sweep", "--scenarios", "quiet_route", "--jobs", "1"]
    assert (
        busbell_main(
            [*base, "--scale", "small", "--seeds", "3", "--cells", "2", "--keep", str(kept)]
        )
        == 0
    )
    first = capsys.readouterr().out
    run = kept / "cell-02" / "seed-3" / "quiet_route"
    score = json.loads((run / "score.json").read_text())
    # pretend the kept run missed somebody the code of now charges
    leg = {"rider_id": "r-99999", "bus_id": "bus-x", "board_stop_id": "A", "alight_stop_id": "B"}
    score["details"].append({"kind": "missed", "leg": leg, "observable": True})
    (run / "score.json").write_text(json.dumps(score))
    before = _digest(kept)

    runs = new / "runs.jsonl"
    code = busbell_main(
        [*base, "--rescore", str(kept), "--keep", str(new / "out"), "--save-runs", str(runs)]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert _digest(kept) == before  # the kept run is only read
    assert (new / "out" / "cell-02" / "seed-3" / "quiet_route" / "JOURNEYS.settled.jsonl").is_file()
    # the same adverts and the same code: the same verdict as the kept run's
    line = next(x for x in first.splitlines() if x.startswith("[1/1]"))
    assert line in out
    assert "fixed: quiet_route missed r-99999 on bus-x: truth A -> B, charged nothing" in out
    assert "Errors fixed: 1; new errors: 0." in out
    saved = json.loads(runs.read_text())
    assert saved["cell"] == 2
    assert saved["seed"] == 3
    assert saved["command"].startswith(f"busbell sim score --sweep --rescore {kept}")

    assert busbell_main([*base, "--rescore", str(tmp_path / "absent")]) == 2
    assert busbell_main([*base, "--rescore", str(kept), "--cells", "5"]) == 2
    err = capsys.readouterr().err
    assert "--rescore:" in err
    assert "holds none of those cells and seeds" in err
