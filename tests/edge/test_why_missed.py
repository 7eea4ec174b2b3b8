"""``busbell edge why-missed``: where the rids of a missed leg went, and the classifier's drop
events it reads (``rid_dropped``, with the rule that dropped the candidate)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from busbell import BusbellError
from busbell._echo import bus_tag, echo_code, encode_echo
from edge._classifier import State
from edge._segment import SegmentDraft, SegmentEnd
from edge._why_missed import (
    MissedLeg,
    _evidence,
    _Heard,
    _judge,
    _points,
    cause_table,
    missed_legs,
    scenario_dirs,
)
from edge.cli import main
from firmware_sim._output import generate
from tests.edge.test_classifier import Token, World, add_riders


@pytest.fixture(autouse=True)
def _fresh_structlog() -> None:
    """Other tests may configure structlog (level filters); capture_logs needs defaults."""
    structlog.reset_defaults()


def _dropped(logs: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    pref = name.encode().hex()
    return [e for e in logs if e["event"] == "rid_dropped" and str(e["rid"]).startswith(pref)]


def test_a_waiter_left_at_the_stop_is_dropped_as_left_behind() -> None:
    # heard loud at the stop, then falling away by path loss, heard only the first metres
    w = World()
    add_riders(w, -70.0)

    def waiter(world: World) -> float | None:
        d = 4.0 + abs(world.odo - world.stop_odo)
        r = -75.0 - 20.0 * math.log10(d / 4.0)
        return r if r >= -95.0 and world.stop_odo == 0.0 else None

    left = w.add(Token("left", waiter))
    with capture_logs() as logs:
        w.dwell("S1")
        w.move(800, speed=60.0)  # 600 m on within its fade time: still recent there
        w.dwell("S2")
        w.move(300)
    (drop,) = _dropped(logs, left.name)
    assert drop["why"] == "left_behind"
    assert drop["stop_id"] == "S1"
    assert drop["state"] == "CANDIDATE"


def test_a_candidate_silent_on_the_way_is_dropped_as_silent() -> None:
    # heard at the doors and twice 200-300 m on at the riders' level, then never again
    w = World()
    add_riders(w, -80.0)
    heard = {"on": True}

    def tok(world: World) -> float | None:
        if not heard["on"]:
            return None
        return -82.0 if world.visit is not None and world.visit.close_t is None else None

    quiet = w.add(Token("quiet", tok))
    with capture_logs() as logs:
        w.dwell("S1")
        heard["on"] = False
        w.move(1500)
        w.dwell("S2")
        w.move(800)
    (drop,) = _dropped(logs, quiet.name)
    assert drop["why"] == "silent"
    assert drop["co_n"] == 0
    assert drop["barred"] is False


def test_no_drop_event_without_debug_logging() -> None:
    # the event is built only when debug is on (the tick checks once): a production
    # daemon at info level pays nothing for it
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(20))
    w = World()
    w.add(Token("x", lambda world: -70.0 if world.odo < 50 else None))
    with capture_logs() as logs:
        w.dwell("S1")
        w.move(1500)
    assert not [e for e in logs if e["event"] == "rid_dropped"]
    assert w.c.rejected >= 1


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("why") / "cell-02" / "seed-1" / "quiet_route"
    generate("quiet_route", 1, d, "small")  # a tuning seed
    return d


def _legs(d: Path) -> list[tuple[str, dict[str, object]]]:
    out = []
    with (d / "JOURNEYS.jsonl").open(encoding="utf-8") as fp:
        for line in fp:
            j = json.loads(line)
            out.extend((j["rider_id"], leg) for leg in j["legs"])
    return out


def _score(d: Path, legs: list[dict[str, object]]) -> None:
    (d / "score.json").write_text(
        json.dumps({"details": [{"kind": "missed", "leg": lg, "observable": True} for lg in legs]})
    )


def test_a_leg_the_edge_sent_is_not_the_edges_miss(scenario: Path) -> None:
    # a rider the edge charged, listed as missed: it sent a segment over the leg
    rider, leg = _legs(scenario)[0]
    _score(scenario, [{**leg, "rider_id": rider}])
    (got,) = missed_legs(scenario)
    assert got.cause == "sent_segment"
    assert not got.never_emitted
    assert got.adverts > 0
    assert got.moving > 0
    assert 0 < got.points <= got.moving
    assert got.heard == "spread"
    assert got.riders_lvl is not None


def test_a_leg_on_a_bus_that_never_heard_the_rider_is_never_heard(scenario: Path) -> None:
    # the rider's bus, at a time it heard nothing of them (after the run)
    truth = json.loads((scenario / "truth.json").read_text())
    rider, leg = _legs(scenario)[0]
    late = {**leg, "rider_id": rider}
    late["board_t"] = float(truth["t_end"]) + 100.0
    late["alight_t"] = float(truth["t_end"]) + 200.0
    _score(scenario, [late])
    (got,) = missed_legs(scenario)
    assert got.cause == "never_heard"
    assert got.never_emitted
    assert got.heard == "none"
    assert got.adverts == 0


def test_cli_tabulates_causes_per_cell(scenario: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rider, leg = _legs(scenario)[0]
    _score(scenario, [{**leg, "rider_id": rider}])
    root = scenario.parent.parent.parent
    assert scenario_dirs([root]) == [scenario]
    assert main(["why-missed", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"seed-1/quiet_route {rider}" in out
    assert "sent_segment (spread)" in out
    assert "1 missed legs in 1 scenarios, 0 never emitted by the edge" in out
    assert main(["why-missed", str(scenario), "--summary"]) == 0
    out = capsys.readouterr().out
    assert rider not in out
    with pytest.raises(BusbellError, match="no kept scenario"):
        main(["why-missed", str(scenario / "gtfs")])


def test_cause_table_counts_per_cell_and_where_heard() -> None:
    def leg(cell: str, cause: str, heard_at: float | None) -> MissedLeg:
        lg = MissedLeg(Path(f"k/{cell}/seed-1/x"), "r", "b", "S1", "S2", 0.0, 300.0, cause)
        if heard_at is not None:
            lg.adverts, lg.heard_from, lg.heard_to = 1, heard_at, heard_at
        return lg

    legs = [
        leg("cell-02", "dropped:silent", 280.0),
        leg("cell-10", "dropped:silent", 10.0),
        leg("cell-10", "never_heard", None),
    ]
    assert [lg.heard for lg in legs] == ["end", "start", "none"]
    table = cause_table(legs).splitlines()
    assert table[0].split() == ["cause", "cell-02", "cell-10", "all"]
    assert table[1].split() == ["dropped:silent", "1", "1", "2"]
    assert table[2].split() == ["never_heard", "0", "1", "1"]
    assert table[3].split() == ["all", "1", "2", "3"]
    by_heard = cause_table(legs, heard=True)
    assert "dropped:silent (end)" in by_heard
    assert "dropped:silent (start)" in by_heard
    assert [lg.evidence for lg in legs] == ["end_only", "points<=2", "none"]
    spread = leg("cell-10", "dropped:silent", 0.0)
    spread.heard_to, spread.points = 280.0, 3
    assert spread.evidence == "points=3"
    spread.points, spread.again_pts = 5, 3
    assert spread.evidence == "heard_again"
    spread.again_pts = 2
    assert spread.evidence == "points>=4"
    sent = leg("cell-02", "sent_tentative", 280.0)
    assert sent.evidence == "-"
    by_evidence = cause_table([*legs, spread, sent], evidence=True).splitlines()
    assert by_evidence[0].split() == ["cause", "cell-02", "cell-10", "all"]
    rows = [r.split() for r in by_evidence]
    assert ["never", "emitted,", "points>=4", "0", "1", "1"] in rows
    assert ["never", "emitted,", "end_only", "1", "0", "1"] in rows
    assert by_evidence[-1].split() == ["all", "1", "3", "4"]


def _leg(heard_from: float, heard_to: float) -> MissedLeg:
    lg = MissedLeg(Path("k/cell-02/seed-1/x"), "r", "b", "S1", "S2", 0.0, 300.0, "never_heard")
    lg.adverts, lg.heard_from, lg.heard_to = 2, heard_from, heard_to
    return lg


def test_where_the_bus_heard_a_ride_is_judged_by_thirds_of_it() -> None:
    # over a third of the ride or more: spread (a third exactly included); only in the
    # last third: end; only in the first: start; else middle
    assert _leg(0.0, 100.0).heard == "spread"
    assert _leg(150.0, 260.0).heard == "spread"
    assert _leg(0.0, 90.0).heard == "start"
    assert _leg(210.0, 290.0).heard == "end"
    assert _leg(120.0, 180.0).heard == "middle"


def test_points_are_counted_a_step_apart_along_the_way() -> None:
    # as the co-movement rules space them: 0, 100 and 260 of these, 100 m apart or more
    assert _points([150.0, 0.0, 50.0, 260.0, 100.0], 100.0) == 3
    assert _points([], 100.0) == 0


def _draft(rid: bytes, start_cause: str) -> SegmentDraft:
    return SegmentDraft(
        rid.hex(),
        1,
        "R",
        "T",
        SegmentEnd(10.0, "S1", start_cause),
        SegmentEnd(250.0, "S2", "alighted"),
        800.0,
        "00",
        "00",
    )


def test_a_leg_is_judged_by_what_the_edge_sent_discarded_or_left_a_candidate() -> None:
    # (what the replay recorded, made by hand: one rid heard during the leg)
    rid = b"rid-judged-1"
    mine = {rid: 7}

    def judge(h: _Heard, events: list[dict[str, object]] | None = None) -> str:
        h.adverts.append((50.0, -90, True, None, -80.0, 500.0))
        lg = _leg(0.0, 0.0)
        lg.adverts = 0
        _judge(lg, mine, {rid: h}, list(events or []), 100.0)
        return lg.cause

    # sent: only tentative pieces, or a confirmed segment too
    assert judge(_Heard(segments=[_draft(rid, "tentative")])) == "sent_tentative"
    both = [_draft(rid, "tentative"), _draft(rid, "boarded")]
    assert judge(_Heard(segments=both)) == "sent_segment"
    # confirmed, then discarded as never ridden
    gone = [(5.0, State.CANDIDATE), (60.0, State.ONBOARD), (200.0, State.GONE)]
    discarded = {"event": "segment_discarded", "rid": rid.hex(), "t": 200.0}
    assert judge(_Heard(states=list(gone)), [discarded]) == "discarded"
    onboard = [(60.0, State.ONBOARD)]  # (a rotating rid's successor confirmed, say)
    assert judge(_Heard(states=onboard)) == "confirmed_unsent"
    # a candidate and no drop event: gone when the trace ended, or still a candidate
    ended = [(5.0, State.CANDIDATE), (400.0, State.GONE)]
    assert judge(_Heard(states=ended)) == "dropped:finish"
    assert judge(_Heard(states=[(5.0, State.CANDIDATE)])) == "dropped:none"
    assert judge(_Heard(states=[(5.0, State.OUTSIDE)])) == "never_candidate"


def test_an_advert_the_bus_rejected_is_not_the_riders_evidence(
    scenario: Path, tmp_path: Path
) -> None:
    # a copy of one of the rider's adverts during the leg, its btag broken (a forged or
    # corrupted advert: the verifier rejects it, the classifier never sees it): it names
    # the rider's rid, but the bus did not accept it, so it is not counted among the
    # leg's adverts (the classifier's record of the rid was not updated at its time)
    import shutil

    from edge._trace_rider import _rid_of, _token_key, rids_of

    rider, leg = _legs(scenario)[0]
    d = tmp_path / "cell-02" / "seed-1" / "quiet_route"
    shutil.copytree(scenario, d)
    _score(d, [{**leg, "rider_id": rider}])
    (before,) = missed_legs(d)
    truth = json.loads((d / "truth.json").read_text())
    trace = d / next(b["trace"] for b in truth["buses"] if b["bus_id"] == leg["bus_id"])
    mine = rids_of(_token_key(d, rider), float(truth["t_start"]), float(truth["t_end"]))
    lines = trace.read_text().splitlines()
    out, forged = [], 0
    for line in lines:
        out.append(line)
        rec = json.loads(line)
        if forged or rec["kind"] != "adv" or not before.board_t < rec["t"] < before.alight_t:
            continue
        payload = bytes.fromhex(rec["mfr"]["65535"])
        if _rid_of(payload) not in mine:
            continue
        bad = payload[:15] + bytes(b ^ 0xFF for b in payload[15:19]) + payload[19:]
        out.append(json.dumps({**rec, "t": rec["t"] + 0.001, "mfr": {"65535": bad.hex()}}))
        forged += 1
    assert forged == 1
    trace.write_text("\n".join(out) + "\n")
    (after,) = missed_legs(d)
    assert before.adverts > 0
    assert after.adverts == before.adverts
    assert (after.heard_from, after.heard_to) == (before.heard_from, before.heard_to)


def test_a_missed_legs_echoes_are_counted_and_said() -> None:
    """The echoes a missed rider's adverts carried (payload byte 23): this bus's code for the
    rid, or another bus's (0: no echo, counted in neither)."""
    rid = bytes(range(12))
    code = echo_code(bus_tag("b"), rid)
    other = code % 31 + 1
    h = _Heard(
        adverts=[(t, -90, True, None, -80.0, 10.0 * t) for t in (10.0, 20.0, 30.0, 400.0)],
        echoes=[
            (10.0, encode_echo(code, 3)),
            (20.0, encode_echo(other, 1)),
            (30.0, encode_echo(code, 3)),
            (400.0, encode_echo(code, 3)),
        ],
    )
    lg = MissedLeg(Path("k/cell-22/seed-1/x"), "r", "b", "S1", "S2", 0.0, 300.0)
    _evidence(lg, {rid: 1}, {rid: h}, 100.0)
    assert (lg.echo_own, lg.echo_other) == (2, 1)  # (the advert at 400 s is after the leg)
    assert "echo this bus 2, another 1" in lg.line()
    quiet = MissedLeg(Path("k/cell-22/seed-1/x"), "r", "b", "S1", "S2", 0.0, 300.0)
    _evidence(quiet, {rid: 1}, {rid: _Heard(adverts=h.adverts)}, 100.0)
    assert "echo" not in quiet.line()
