"""The scorer's comparison logic, on hand-made journeys."""

from __future__ import annotations

from typing import Any

import pytest

from firmware_sim._score import score_scenario


def leg(bus: str, b: str, bt: float, a: str, at: float, *, route: str = "55") -> dict[str, Any]:
    return {
        "bus_id": bus,
        "route_id": route,
        "board_stop_id": b,
        "board_t": bt,
        "alight_stop_id": a,
        "alight_t": at,
    }


def j(rider: str, *legs: dict[str, Any]) -> dict[str, Any]:
    return {"rider_id": rider, "legs": list(legs), "fare_krw": None}


TRUTH = [
    j("r1", leg("B1", "S1", 100.0, "S3", 400.0)),
    j("r2", leg("B1", "S2", 200.0, "S4", 600.0), leg("B2", "S4", 700.0, "S6", 900.0)),
    j("r3", leg("B1", "S1", 100.0, "S2", 200.0)),
]
META: dict[str, Any] = {"bystander_passes": {"total": 200}, "unobservable_legs": []}


def test_everything_right() -> None:
    sc = score_scenario("x", TRUTH, TRUTH, META)
    assert sc.journeys == sc.journeys_exact == 3
    assert sc.legs == 4
    assert sc.missed == sc.double_charged == sc.bystander_charged == 0
    assert sc.exact_pct == 100.0
    assert sc.bystanders_per_10k == 0.0


def test_charged_journeys_grouped_differently_still_match_per_leg() -> None:
    split = [
        j("r1", leg("B1", "S1", 101.0, "S3", 398.0)),
        j("r2", leg("B1", "S2", 203.0, "S4", 601.0)),
        j("r2", leg("B2", "S4", 705.0, "S6", 899.0)),
        j("r3", leg("B1", "S1", 99.0, "S2", 201.0)),
    ]
    sc = score_scenario("x", TRUTH, split, META)
    assert sc.journeys_exact == 3


def test_wrong_stops_missed_double_and_bystander() -> None:
    charged = [
        j("r1", leg("B1", "S2", 150.0, "S3", 400.0)),  # boarding stop wrong
        j("r2", leg("B1", "S2", 200.0, "S3", 450.0), leg("B1", "S3", 460.0, "S4", 600.0)),
        # r2's B2 leg missed; the B1 leg charged twice (split), alight of the last is right
        j("r3", leg("B1", "S1", 100.0, "S2", 200.0)),
        j("r3", leg("B2", "S4", 700.0, "S6", 900.0)),  # r3 never rode B2: a bystander
        j("r9", leg("B1", "S1", 100.0, "S2", 200.0)),  # unknown rider: a bystander too
    ]
    sc = score_scenario("x", TRUTH, charged, META)
    assert sc.board_stop_errors == 1
    assert sc.alight_stop_errors == 0
    assert sc.double_charged == 1
    assert sc.missed == 1
    assert sc.bystander_charged == 2
    assert sc.bystanders_per_10k == pytest.approx(100.0)
    assert sc.journeys_exact == 1  # only r3's journey
    assert sc.missed_pct == pytest.approx(25.0)
    kinds = sorted(d["kind"] for d in sc.details)
    assert kinds == ["bystander_charged", "bystander_charged", "missed", "wrong", "wrong"]


def test_same_bus_at_another_time_is_a_bystander_charge() -> None:
    charged = [*TRUTH, j("r1", leg("B1", "S5", 5000.0, "S6", 5200.0))]
    sc = score_scenario("x", TRUTH, charged, META)
    assert sc.bystander_charged == 1
    assert sc.journeys_exact == 3


def test_held_legs_charge_nobody() -> None:
    held = {"charged": False, "fare_krw": 0}
    charged = [
        *TRUTH[1:],
        {**j("r1", leg("B1", "S1", 100.0, "S3", 400.0)), **held},  # r1's true leg, held
        {**j("r3", leg("B2", "S4", 700.0, "S6", 900.0)), **held},  # dropped bystander leg
    ]
    sc = score_scenario("x", TRUTH, charged, META)
    assert sc.held_legs == 2
    assert sc.charged_legs == 3
    assert sc.bystander_charged == 0  # held, not charged
    assert sc.missed == 1  # r1 was only held: not charged
    assert sc.journeys_exact == 2


def test_unobservable_legs_are_reported_apart() -> None:
    meta = {
        "bystander_passes": {"total": 0},
        "unobservable_legs": [
            {"rider_id": "r1", "bus_id": "B1", "board_t": 100.0, "reason": "flat_battery"}
        ],
    }
    charged = [c for c in TRUTH if c["rider_id"] != "r1"]
    sc = score_scenario("x", TRUTH, charged, meta)
    assert sc.missed == 1
    assert sc.missed_observable == 0
    assert sc.journeys_observable == 2
    assert sc.exact_observable_pct == 100.0
    assert sc.exact_pct == pytest.approx(200 / 3)


def test_overall_accumulates() -> None:
    from firmware_sim._score import ScenarioScore

    a = score_scenario("a", TRUTH, TRUTH, META)
    b = score_scenario("b", TRUTH, [], META)
    total = ScenarioScore("overall")
    total.add(a)
    total.add(b)
    assert total.journeys == 6
    assert total.journeys_exact == 3
    assert total.missed == 4
    assert total.bystander_passes == 400
    d = total.as_dict()
    assert d["exact_pct"] == 50.0
    assert "details" not in d


def test_markdown_report_has_command_date_commit_and_targets() -> None:
    from firmware_sim._report import render_markdown, render_table
    from firmware_sim._score import SuiteScore

    suite = SuiteScore(
        "small",
        1,
        [score_scenario("a", TRUTH, TRUTH, META), score_scenario("b", TRUTH, [], META)],
        1.0,
        2.0,
    )
    table = render_table(suite)
    assert table.count("\n") == 4  # head, rule, two scenarios, overall
    assert "| **overall** | 6 | 3 (50.0 %)" in table
    doc = render_markdown(suite, "busbell sim score --scale small", commit="abc123")
    assert "`busbell sim score --scale small`" in doc
    assert "`abc123`" in doc
    assert "NOT met" in doc
    assert "UTC" in doc


def test_failures_table_lists_observable_errors() -> None:
    from firmware_sim._report import render_failures
    from firmware_sim._score import SuiteScore

    charged = [
        j("r1", leg("B1", "S2", 150.0, "S3", 400.0)),
        j("r3", leg("B1", "S1", 100.0, "S2", 200.0)),
        j("r3", leg("B2", "S4", 700.0, "S6", 900.0)),
    ]
    suite = SuiteScore("small", 1, [score_scenario("x", TRUTH, charged, META)], 0.0, 0.0)
    text = render_failures(suite)
    assert "| x | wrong | r1 | B1 | S1 -> S3 | S2 -> S3 |" in text
    assert "| x | missed | r2 | B1 | S2 -> S4 | nothing |" in text
    assert "| x | bystander charged | r3 | B2 | - | S4 -> S6 |" in text
    ok = SuiteScore("small", 1, [score_scenario("x", TRUTH, TRUTH, META)], 0.0, 0.0)
    assert render_failures(ok) == "None."
