"""Legs the bus never heard (``radio_unheard``): found in the trace, scored as unobservable."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from busbell import derive_rider_keys, interval_of, rid_for_interval
from firmware_sim._heard import UNHEARD, unheard_legs
from firmware_sim._output import generate
from firmware_sim._rescore import _scores_as_now, kept_details
from firmware_sim._score import ScenarioScore, load_journeys, score_scenario


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("heard") / "quiet_route"
    generate("quiet_route", 3, d, "small", None)
    return d


def _rids(d: Path, rider: str, t0: float, t1: float) -> set[str]:
    with (d / "RIDERS.csv").open(newline="") as f:
        rows = {r["rider_id"]: r["token_key"] for r in csv.DictReader(f)}
    key = bytes.fromhex(rows[rider])
    rid_key = derive_rider_keys(key).rid_key
    return {
        rid_for_interval(rid_key, i).hex()
        for i in range(interval_of(t0 - 300), interval_of(t1 + 300) + 1)
    }


def _silence(src: Path, dst: Path, rider: str, bus: str, t0: float, t1: float) -> int:  # noqa: PLR0917
    """Copy the scenario, dropping the rider's adverts in [t0, t1] from the bus's trace."""
    rids = _rids(src, rider, t0, t1)
    dropped = 0
    for p in src.rglob("*"):
        if p.is_dir():
            continue
        q = dst / p.relative_to(src)
        q.parent.mkdir(parents=True, exist_ok=True)
        lines = p.read_text("utf-8").splitlines(keepends=True)
        if p == src / "traces" / f"{bus}.jsonl":
            kept = []
            for line in lines:
                rec = json.loads(line)
                payloads = rec.get("mfr", {}).values() if rec["kind"] == "adv" else []
                if t0 <= rec.get("t", 0.0) <= t1 and any(x[6:30] in rids for x in payloads):
                    dropped += 1
                    continue
                kept.append(line)
            lines = kept
        q.write_text("".join(lines), "utf-8")
    return dropped


def _first_leg(d: Path) -> tuple[str, dict[str, Any]]:
    j = load_journeys(d / "JOURNEYS.jsonl")[0]
    return str(j["rider_id"]), j["legs"][0]


def test_every_leg_of_a_normal_run_was_heard(scenario: Path) -> None:
    assert unheard_legs(scenario, load_journeys(scenario / "JOURNEYS.jsonl")) == []


def test_a_leg_whose_adverts_were_all_lost_is_unheard(scenario: Path, tmp_path: Path) -> None:
    rider, leg = _first_leg(scenario)
    a, z = float(leg["board_t"]), float(leg["alight_t"])
    # heard while waiting at the stop and after leaving: still never heard during the ride
    assert _silence(scenario, tmp_path / "s", rider, leg["bus_id"], a, z) > 10
    journeys = load_journeys(tmp_path / "s" / "JOURNEYS.jsonl")
    assert unheard_legs(tmp_path / "s", journeys) == [
        {"rider_id": rider, "bus_id": leg["bus_id"], "board_t": a, "reason": UNHEARD}
    ]
    # one advert left in the middle of the ride: observable again
    assert _silence(scenario, tmp_path / "h", rider, leg["bus_id"], a, (a + z) / 2) > 5
    _silence(tmp_path / "h", tmp_path / "h2", rider, leg["bus_id"], (a + z) / 2 + 5, z)
    assert unheard_legs(tmp_path / "h2", journeys) == []


def test_an_unheard_leg_is_scored_unobservable(scenario: Path) -> None:
    rider, leg = _first_leg(scenario)
    journeys = load_journeys(scenario / "JOURNEYS.jsonl")
    truth = json.loads((scenario / "truth.json").read_text("utf-8"))
    unheard = [{"rider_id": rider, "bus_id": leg["bus_id"], "board_t": leg["board_t"]}]
    unheard[0]["reason"] = UNHEARD
    # nothing charged at all: every leg missed, the unheard one not observable
    plain = score_scenario("q", journeys, [], truth)
    sc = score_scenario("q", journeys, [], truth, unheard)
    assert sc.legs_unheard == 1
    assert sc.legs_observable == plain.legs_observable - 1
    assert sc.missed_observable == plain.missed_observable - 1
    assert sc.journeys_observable == plain.journeys_observable - 1
    mine = next(x for x in sc.details if x["leg"]["rider_id"] == rider)
    assert mine["observable"] is False
    assert mine["unobservable"] == UNHEARD
    # a score written before legs_unheard was counted reads back as 0
    old = sc.as_dict()
    del old["legs_unheard"]
    assert ScenarioScore.from_dict(old).legs_unheard == 0


def test_a_kept_score_from_before_is_counted_as_the_scorer_of_now_would(
    scenario: Path, tmp_path: Path
) -> None:
    journeys = load_journeys(scenario / "JOURNEYS.jsonl")
    truth = json.loads((scenario / "truth.json").read_text("utf-8"))
    rider, leg = _first_leg(scenario)
    kept = tmp_path / "kept"
    _silence(scenario, kept / "quiet_route", rider, leg["bus_id"], leg["board_t"], leg["alight_t"])
    heard_rider = str(journeys[1]["rider_id"])
    # the unheard rider and a heard one missed, everybody else charged exactly
    charged = [j for j in journeys if j["rider_id"] not in {rider, heard_rider}]
    old = score_scenario("quiet_route", journeys, charged, truth)
    old_dict = {**old.as_dict(), "details": old.details}
    del old_dict["legs_unheard"]
    now = score_scenario(
        "quiet_route", journeys, charged, truth, unheard_legs(kept / "quiet_route", journeys)
    )
    assert now.legs_unheard == 1
    [(name, as_now)], n = _scores_as_now(kept, [("quiet_route", old_dict)])
    assert (name, n) == ("quiet_route", 1)
    assert {k: v for k, v in as_now.items() if k not in ("details", "elapsed_s")} == {
        k: v for k, v in now.as_dict().items() if k != "elapsed_s"
    }
    # the kept miss of the unheard leg is gone from the errors compared; the heard one stays
    assert kept_details([(name, as_now)]) == [
        {"scenario": "quiet_route", **x} for x in now.details if x.get("observable")
    ]
    assert [x["leg"]["rider_id"] for x in kept_details([(name, as_now)])] == [heard_rider]
