"""``busbell edge trace-rider``: a rider's adverts and the classifier's decisions on one bus."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from busbell import BusbellError, derive_rider_keys, rid_for_interval
from edge._trace_rider import errors_of, leg_evidence, rids_of, trace_rider, true_legs
from edge.cli import main
from firmware_sim._output import generate


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("quiet") / "quiet_route"
    generate("quiet_route", 1, d, "small")  # a tuning seed
    return d


def _a_rider(d: Path) -> tuple[str, dict[str, object]]:
    with (d / "JOURNEYS.jsonl").open(encoding="utf-8") as fp:
        j = json.loads(fp.readline())
    return j["rider_id"], j["legs"][0]


def test_rids_of_are_the_tokens_rids_over_the_span() -> None:
    key = bytes(range(16))
    rids = rids_of(key, 6000.0, 7300.0)
    want = derive_rider_keys(key).rid_key
    assert sorted(rids.values()) == list(range(9, 14))  # one interval of slack each way
    assert all(rid_for_interval(want, i) == rid for rid, i in rids.items())


def test_a_charged_riders_trace_shows_adverts_states_and_segment(scenario: Path) -> None:
    rider, leg = _a_rider(scenario)
    rows = trace_rider(scenario, rider, str(leg["bus_id"]))
    kinds = {r.kind for r in rows}
    assert {"adv", "state", "visit", "segment"} <= kinds
    assert any(r.kind == "state" and r.text.endswith("ONBOARD") for r in rows)
    ev = leg_evidence(rows, float(leg["board_t"]), float(leg["alight_t"]))  # type: ignore[arg-type]
    assert ev.adverts > 0
    assert ev.moving > 0
    assert ev.travel_m > 0.0
    assert ev.median_rssi is not None
    assert ev.rids >= 1
    assert ev.riders_lvl != math.inf
    assert any(str(leg["board_stop_id"]) in s for s in ev.segments)
    # adverts outside the leg are not counted
    assert leg_evidence(rows, 0.0, 1.0).adverts == 0


def test_a_rotation_aboard_shows_the_pool_and_the_pairing(scenario: Path) -> None:
    # a rider whose token rotated its rid during the ride: the old rid enters the rotation
    # pool, the new rid is paired with it (the rider's own rid, by its interval label)
    traced = []
    with (scenario / "JOURNEYS.jsonl").open(encoding="utf-8") as fp:
        for line in fp:
            j = json.loads(line)
            for leg in j["legs"]:
                if int(leg["alight_t"] // 600) > int(leg["board_t"] // 600):
                    rows = trace_rider(scenario, j["rider_id"], str(leg["bus_id"]))
                    traced.append([r.text for r in rows if r.kind == "pair"])
            if len(traced) >= 3:
                break
    assert traced
    assert any(
        any(t.startswith("in the rotation pool (") for t in texts)
        and any(t.startswith("paired with i") for t in texts)
        for texts in traced
    )


def test_an_unknown_bus_or_rider_is_a_clear_error(scenario: Path) -> None:
    rider, _ = _a_rider(scenario)
    with pytest.raises(BusbellError, match="no bus"):
        trace_rider(scenario, rider, "bus-nope")
    with pytest.raises(BusbellError, match="not in"):
        trace_rider(scenario, "r-99999", _bus(scenario))
    with pytest.raises(BusbellError, match="not in"):
        main(["trace-rider", str(scenario), "--rider", "r-99999", "--bus", _bus(scenario)])
    with pytest.raises(BusbellError, match="not a kept scenario directory"):
        main(["trace-rider", str(scenario / "nope"), "--rider", rider])


def _bus(d: Path) -> str:
    return str(json.loads((d / "truth.json").read_text())["buses"][0]["bus_id"])


def test_cli_traces_the_legs_in_error_of_score_json(
    scenario: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rider, leg = _a_rider(scenario)
    (scenario / "score.json").write_text(
        json.dumps(
            {"details": [{"kind": "missed", "leg": {**leg, "rider_id": rider}, "observable": True}]}
        )
    )
    assert errors_of(scenario)[0]["rider_id"] == rider
    assert main(["trace-rider", str(scenario), "--errors", "--summary"]) == 0
    out = capsys.readouterr().out
    assert f"== {rider} on {leg['bus_id']}: missed (charged nothing)" in out
    assert "adverts (" in out
    assert " adv " not in out
    assert main(["trace-rider", str(scenario), "--rider", rider]) == 0
    out = capsys.readouterr().out
    assert " adv " in out
    assert "doors open at" in out
    assert len(true_legs(scenario, rider)) >= 1
