"""The demo's closing report: ground truth beside the ledger, rider by rider, with reasons."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from backend._db import create_engine, migrate
from busbell._demo_report import demo_length_line, expected_vs_settled
from firmware_sim.cli import main as sim_main


def _ledger(path: Path) -> None:
    async def go() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        await migrate(engine)
        await engine.dispose()

    asyncio.run(go())


def _settle_leg(conn: sqlite3.Connection, n: int, rider: str, leg: dict[str, Any]) -> None:
    jid = f"j{n}"
    conn.execute(
        "INSERT INTO journeys (journey_id, rider_id, first_board_t, last_alight_t, fare_krw, "
        "category, ruleset_id, explain, computed_at, flags) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (jid, rider, leg["board_t"], leg["alight_t"], 1500, "adult", "r", "{}", 0, "[]"),
    )
    conn.execute(
        "INSERT INTO legs (journey_id, leg_no, bus_id, route_id, network_id, board_stop_id, "
        "board_t, alight_stop_id, alight_t, distance_m, event_ids) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            jid,
            0,
            leg["bus_id"],
            leg["route_id"],
            "n",
            leg["board_stop_id"],
            leg["board_t"],
            leg["alight_stop_id"],
            leg["alight_t"],
            1000.0,
            "[]",
        ),
    )


def test_report_explains_every_missing_leg(tmp_path: Path) -> None:
    scn = tmp_path / "scenario"
    assert sim_main(["scenario", "--name", "quiet_route", "--seed", "1", "--out", str(scn)]) == 0
    truth = json.loads((scn / "truth.json").read_text())
    journeys = [json.loads(x) for x in (scn / "JOURNEYS.jsonl").read_text().splitlines()]
    assert len(journeys) >= 3
    db = tmp_path / "backend.db"
    _ledger(db)
    settled, pending, lost = journeys[0], journeys[1], journeys[2]
    with sqlite3.connect(db) as conn:
        for n, leg in enumerate(settled["legs"]):
            _settle_leg(conn, n, settled["rider_id"], leg)
        leg = pending["legs"][0]
        conn.execute(
            "INSERT INTO rider_segments (event_id, rider_id, bus_id, seq, interval, start_t, "
            "start_cause, end_t, end_cause, distance_m, settled_at) "
            "VALUES ('e1', ?, ?, 1, 0, ?, 'boarded', ?, 'alighted', 10.0, 0)",
            (pending["rider_id"], leg["bus_id"], leg["board_t"], leg["alight_t"]),
        )
    lines = expected_vs_settled(scn, db, stopped_early=False)
    n_legs = sum(len(j["legs"]) for j in journeys)
    assert lines[0].startswith(f"ground truth: {len(journeys)} journeys, {n_legs} legs")
    assert lines[1] == f"settled:      1 riders, {len(settled['legs'])} legs"
    text = "\n".join(lines)
    assert f"  {settled['rider_id']}:" not in text
    assert f"  {pending['rider_id']}: " in text
    assert "settlement runs once the rider is quiet" in text
    # the riders the edge missed: more than a few for one reason, so one line for them all
    assert f"legs of 6 riders ({lost['rider_id']}, " in text
    assert "the edge did not detect this ride" in text
    assert "before the demo was stopped" not in text
    early = "\n".join(expected_vs_settled(scn, db, stopped_early=True))
    assert "no segment reached the backend before the demo was stopped" in early
    # times in the agency's timezone (as missed-report says them), not UTC
    leg = pending["legs"][0]
    local = dt.datetime.fromtimestamp(leg["board_t"], ZoneInfo("Asia/Seoul")).strftime("%H:%M")
    want = f"  {pending['rider_id']}: {leg['bus_id']} {leg['board_stop_id']} -> "
    assert f"{want}{leg['alight_stop_id']} at {local} KST not settled" in text
    assert " UTC" not in text
    # a leg the scenario marks unobservable is explained as such
    truth["unobservable_legs"] = [
        {"rider_id": lost["rider_id"], "bus_id": lost["legs"][0]["bus_id"], "reason": "x_y"}
    ]
    (scn / "truth.json").write_text(json.dumps(truth))
    assert "unobservable in the scenario (x_y)" in "\n".join(
        expected_vs_settled(scn, db, stopped_early=False)
    )


def test_many_legs_missing_for_one_reason_are_one_line(tmp_path: Path) -> None:
    """Stopped a minute in, every leg of the default demo read 'not settled: no segment
    reached the backend before the demo was stopped', one line each (22 lines)."""
    scn = tmp_path / "scenario"
    assert sim_main(["scenario", "--name", "quiet_route", "--seed", "1", "--out", str(scn)]) == 0
    journeys = [json.loads(x) for x in (scn / "JOURNEYS.jsonl").read_text().splitlines()]
    legs = [(j["rider_id"], leg) for j in journeys for leg in j["legs"]]
    assert len(legs) > 3
    db = tmp_path / "backend.db"
    _ledger(db)
    lines = expected_vs_settled(scn, db, stopped_early=True)
    riders = sorted({r for r, _ in legs})
    assert lines[2:] == [
        "differences:",
        f"  {len(legs)} legs of {len(riders)} riders ({', '.join(riders)}) not settled: "
        "no segment reached the backend before the demo was stopped",
    ]


def test_report_without_a_ledger_says_so(tmp_path: Path) -> None:
    scn = tmp_path / "scenario"
    assert sim_main(["scenario", "--name", "quiet_route", "--seed", "2", "--out", str(scn)]) == 0
    lines = expected_vs_settled(scn, tmp_path / "missing.db", stopped_early=False)
    assert lines[-1].startswith("  (no ledger to compare with: ")


def test_length_line() -> None:
    line = demo_length_line({"t_start": 0, "t_end": 3000}, 5.0, 20)
    assert "50 min of bus time" in line
    assert "about 10.0 min" in line
    assert "20 s" in line
