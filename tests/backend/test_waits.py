"""The backend's wait core (backend/_waits.py): rules, bus positions, the lifecycle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backend._waits import (
    BUS_STATES,
    FINAL_STATES,
    STATES,
    TRANSITIONS,
    FleetPositions,
    LiveWait,
    WaitBook,
    WaitRejected,
    WaitRules,
    check_request,
)
from busbell import Feed, Topics, load_gtfs
from tests.factories.backend_world import write_gtfs

T0 = 1_764_000_000.0
TOPICS = Topics("t/busbell/v1")


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Feed:
    d: Path = tmp_path_factory.mktemp("gtfs")
    write_gtfs(d)
    return load_gtfs(d)


def display(bus: str, *, t: float = T0, route: str | None = "R1", **kw: Any) -> bytes:
    return json.dumps({"v": 1, "bus_id": bus, "t": t, "route_id": route, **kw}).encode()


def stop(stop_id: str, seq: int) -> dict[str, Any]:
    return {"stop_id": stop_id, "name": stop_id, "seq": seq, "waits": 0, "request_ids": []}


def status(rid: str, state: str, bus: str | None = "bus-1", t: float = T0 + 10) -> bytes:
    return json.dumps({"request_id": rid, "state": state, "bus_id": bus, "t": t}).encode()


def test_the_transition_table_is_closed_and_final_states_are_final() -> None:
    assert set(TRANSITIONS) == set(STATES)
    for state, nxt in TRANSITIONS.items():
        assert nxt <= set(STATES), state
        assert (not nxt) == (state in FINAL_STATES), state
    assert set(STATES) >= BUS_STATES
    assert "pending" in TRANSITIONS["missed"]  # a missed wait goes back for the next bus


# ---------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"route_id": "R9"}, "unknown_route"),
        ({"stop_id": "S99"}, "unknown_stop"),
        ({"route_id": "R3", "stop_id": "S20"}, "stop_not_on_route"),
        ({"route_id": "R1/x"}, "bad_id"),
        ({"stop_id": "S+"}, "bad_id"),
        ({"lifetime_s": 59}, "lifetime_too_short"),
        ({"lifetime_s": 3601}, "lifetime_too_long"),
        ({"recent_requests": 10}, "rate_limited"),
    ],
)
def test_requests_outside_the_rules_are_refused_with_a_reason(
    feed: Feed, kw: dict[str, Any], reason: str
) -> None:
    args: dict[str, Any] = {
        "route_id": "R1",
        "stop_id": "S05",
        "lifetime_s": None,
        "recent_requests": 0,
        "now": T0,
        "feed": feed,
        **kw,
    }
    with pytest.raises(WaitRejected) as info:
        check_request(WaitRules(), **args)
    assert info.value.reason == reason


def test_a_valid_request_gets_its_lifetime(feed: Feed) -> None:
    rules = WaitRules(default_lifetime_s=600)
    common: dict[str, Any] = {"route_id": "R1", "stop_id": "S05", "now": T0, "feed": feed}
    assert check_request(rules, lifetime_s=None, recent_requests=9, **common) == 600
    assert check_request(rules, lifetime_s=60, recent_requests=0, **common) == 60
    # without a feed nothing is known about routes and stops: any valid id passes
    assert (
        check_request(rules, route_id="X", stop_id="Y", lifetime_s=None, recent_requests=0, now=T0)
        == 600
    )


def test_rules_check_their_values() -> None:
    for bad in (
        {"min_lifetime_s": 0},
        {"default_lifetime_s": 30},
        {"max_lifetime_s": 600},
        {"cutoff_stops": -1},
        {"rate_max": 0},
        {"rate_window_s": 0},
        {"position_max_age_s": 0},
    ):
        with pytest.raises(ValueError, match="need"):
            WaitRules(**bad)


def test_a_wait_is_refused_once_the_next_bus_passed_the_stop_two_before(feed: Feed) -> None:
    pos = FleetPositions(feed)

    def check(stop_id: str, now: float = T0) -> int:
        return check_request(
            WaitRules(),
            route_id="R1",
            stop_id=stop_id,
            lifetime_s=None,
            recent_requests=0,
            now=now,
            feed=feed,
            positions=pos,
        )

    # bus-1 on trip T1 heads for S05 (its 5th stop): S07 is 2 stops on, S06 1, S05 0
    pos.on_display("bus-1", display("bus-1", trip_id="T1", next_stop=stop("S05", 5)))
    assert check("S07") == 900
    assert check("S20") == 900  # far ahead on its trip (beyond any display horizon)
    assert check("S03") == 900  # behind it: the next bus is another one
    for near in ("S06", "S05"):
        with pytest.raises(WaitRejected) as info:
            check(near)
        assert info.value.reason == "bus_too_close"
        assert info.value.http_status == 409
    assert pos.next_bus("R1", "S06", T0) == ("bus-1", 1)
    # a stale model is no position; nor is an offline bus's
    assert check("S06", now=T0 + 121) == 900
    pos.on_status("bus-1", b'{"state":"offline"}')
    assert check("S06") == 900
    pos.on_status("bus-1", b'{"state":"online"}')
    with pytest.raises(WaitRejected):
        check("S06")
    # a cleared display model removes the bus
    pos.on_display("bus-1", b"")
    assert check("S06") == 900
    assert len(pos) == 0
    # cutoff 0 switches the rule off
    pos.on_display("bus-1", display("bus-1", trip_id="T1", next_stop=stop("S05", 5)))
    assert (
        check_request(
            WaitRules(cutoff_stops=0),
            route_id="R1",
            stop_id="S05",
            lifetime_s=None,
            recent_requests=0,
            now=T0,
            positions=pos,
        )
        == 900
    )


def test_positions_without_a_gtfs_trip_use_the_display_horizon(feed: Feed) -> None:
    pos = FleetPositions(feed)
    stops = [stop("S10", 0), stop("S11", 1), stop("S12", 2)]
    pos.on_display("bus-2", display("bus-2", trip_id="unknown", next_stop=stops[0], stops=stops))
    got = pos.get("bus-2")
    assert got is not None
    assert got.ahead == ("S10", "S11", "S12")
    assert not got.complete
    assert pos.next_bus("R1", "S12", T0) == ("bus-2", 2)
    assert pos.next_bus("R1", "S13", T0) is None  # beyond its horizon: not known
    assert pos.next_bus("R2", "S12", T0) is None  # another route
    # the nearer of two buses is the next one
    pos.on_display("bus-3", display("bus-3", trip_id="T1", next_stop=stop("S12", 12)))
    assert pos.next_bus("R1", "S12", T0) == ("bus-3", 0)
    # a trip model names which visit of a looped stop by its seq; a bus with no trip
    # or no next stop has no position on a route
    pos.on_display("bus-4", display("bus-4", route=None))
    pos.on_display("bus-5", display("bus-5", next_stop=None, stops=[]))
    assert pos.get("bus-4") is not None
    assert pos.next_bus("R1", "S01", T0) is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{", "bad_json"),
        (b"[1]", "not_object"),
        (b"x" * 300_000, "oversized"),
        (display("bus-1", t="noon"), "bad_time"),  # type: ignore[arg-type]
        (display("other"), "bus_id_mismatch"),
        (display("bus-1", stops=[{"stop_id": 5}]), "bad_stops"),
    ],
)
def test_bad_display_models_are_counted_and_give_no_position(
    feed: Feed, payload: bytes, reason: str
) -> None:
    seen: list[str] = []
    pos = FleetPositions(feed, on_reject=seen.append)
    pos.on_display("bus-1", display("bus-1", trip_id="T1", next_stop=stop("S05", 5)))
    pos.on_display("bus-1", payload)
    assert seen == [reason]
    assert pos.rejected[reason] == 1
    if reason not in ("bad_json", "not_object", "oversized"):
        assert pos.get("bus-1") is None


# ---------------------------------------------------------------------------- lifecycle


def new_wait(book: WaitBook, rid: str = "w-1", *, t: float = T0, life: float = 900) -> LiveWait:
    w = LiveWait(rid, "R1", "S05", t, t + life, "app", True)
    pubs = book.add(w)
    assert [p.topic for p in pubs] == [
        TOPICS.wait("R1", "S05", rid),
        TOPICS.request_status(rid),
    ]
    assert pubs[0].expiry_s == life
    assert json.loads(pubs[0].payload) == {
        "request_id": rid,
        "route_id": "R1",
        "stop_id": "S05",
        "t": t,
        "expires_t": t + life,
        "source": "app",
        "assist": True,
    }
    assert json.loads(pubs[1].payload)["state"] == "pending"
    return w


def test_a_wait_is_seen_acknowledged_and_served() -> None:
    book = WaitBook(TOPICS)
    w = new_wait(book)
    # our own pending coming back changes nothing
    assert book.on_status("w-1", status("w-1", "pending", None, T0), T0 + 1) == ([], [])
    pubs, changes = book.on_status("w-1", status("w-1", "seen"), T0 + 10)
    assert pubs == []
    assert [(c.state, c.bus_id) for c in changes] == [("seen", "bus-1")]
    assert book.on_status("w-1", status("w-1", "seen"), T0 + 11) == ([], [])  # a repeat
    _, changes = book.on_status("w-1", status("w-1", "acknowledged"), T0 + 20)
    assert [c.state for c in changes] == ["acknowledged"]
    pubs, changes = book.on_status("w-1", status("w-1", "served", t=T0 + 30), T0 + 31)
    assert [(c.state, c.bus_id, c.t) for c in changes] == [("served", "bus-1", T0 + 30)]
    # the wait is over: its retained request is cleared; the bus's status stays
    assert [(p.topic, p.payload) for p in pubs] == [(TOPICS.wait("R1", "S05", "w-1"), b"")]
    assert "w-1" not in book.waits
    assert w.state == "acknowledged"
    # a late message about it is stale, counted, not applied
    assert book.on_status("w-1", status("w-1", "seen", "bus-2"), T0 + 40) == ([], [])
    assert book.rejected["stale"] == 1
    assert book.on_status("w-1", status("w-1", "served"), T0 + 40) == ([], [])
    assert book.rejected["stale"] == 1


def test_a_missed_wait_goes_back_to_pending_for_the_next_bus() -> None:
    book = WaitBook(TOPICS)
    w = new_wait(book)
    book.on_status("w-1", status("w-1", "acknowledged", "bus-1"), T0 + 5)
    pubs, changes = book.on_status("w-1", status("w-1", "missed", "bus-1"), T0 + 60)
    assert [(c.state, c.bus_id, c.missed) for c in changes] == [
        ("missed", "bus-1", True),
        ("pending", None, False),
    ]
    assert [p.topic for p in pubs] == [TOPICS.request_status("w-1")]
    assert json.loads(pubs[0].payload) == {
        "request_id": "w-1",
        "state": "pending",
        "bus_id": None,
        "t": T0 + 60,
    }
    assert w.missed == 1
    assert w.state == "pending"
    # the broker hands our pending back after the next bus saw it: the retained status
    # must be the bus's again, not pending
    book.on_status("w-1", status("w-1", "seen", "bus-2", T0 + 70), T0 + 70)
    pubs, changes = book.on_status("w-1", status("w-1", "pending", None, T0 + 60), T0 + 71)
    assert changes == []
    assert json.loads(pubs[0].payload) == {
        "request_id": "w-1",
        "state": "seen",
        "bus_id": "bus-2",
        "t": T0 + 70,
    }
    _, changes = book.on_status("w-1", status("w-1", "served", "bus-2"), T0 + 90)
    assert [c.state for c in changes] == ["served"]


def test_cancel_clears_the_retained_wait_and_expiry_finishes_the_rest() -> None:
    book = WaitBook(TOPICS, WaitRules(status_retain_s=600))
    new_wait(book, "w-1")
    new_wait(book, "w-2", life=60)
    pubs, changes = book.cancel("w-1", T0 + 5)
    assert (pubs[0].topic, pubs[0].payload) == (TOPICS.wait("R1", "S05", "w-1"), b"")
    assert json.loads(pubs[1].payload)["state"] == "cancelled"
    assert pubs[1].expiry_s == 600
    assert [c.state for c in changes] == ["cancelled"]
    with pytest.raises(WaitRejected) as info:
        book.cancel("w-1", T0 + 6)
    assert info.value.reason == "not_live"
    assert book.tick(T0 + 59) == ([], [])
    pubs, changes = book.tick(T0 + 61)
    assert [(c.request_id, c.state, c.t) for c in changes] == [("w-2", "expired", T0 + 60)]
    assert pubs[0].payload == b""
    assert json.loads(pubs[1].payload)["state"] == "expired"
    assert book.waits == {}
    # our own final statuses coming back are not stale
    book.on_status("w-1", status("w-1", "cancelled", None), T0 + 70)
    book.on_status("w-2", status("w-2", "expired", None), T0 + 70)
    assert sum(book.rejected.values()) == 0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{", "bad_json"),
        (b'"x"', "not_object"),
        (b"{" + b" " * 3000 + b"}", "oversized"),
        (status("w-9", "seen"), "request_id_mismatch"),
        (status("w-1", "arrived"), "bad_state"),
        (status("w-1", "cancelled"), "bad_state"),  # only the backend cancels
        (status("w-1", "seen", "x" * 65), "bad_bus_id"),
        (status("w-1", "seen", None), "bad_bus_id"),  # a bus names itself
        (
            json.dumps({"request_id": "w-1", "state": "seen", "bus_id": "b", "t": "x"}).encode(),
            "bad_time",
        ),
        (
            json.dumps({"request_id": "w-1", "state": "seen", "bus_id": "b", "t": True}).encode(),
            "bad_time",
        ),
        # A NaN/Infinity literal is not JSON (RFC 8259): the bounded parse refuses the
        # message before any field is read, so it counts as bad_json, not bad_time.
        (
            json.dumps(
                {"request_id": "w-1", "state": "seen", "bus_id": "b", "t": float("nan")}
            ).encode(),
            "bad_json",
        ),
        (b'{"request_id":"w-1","state":"seen","bus_id":"b","t":1e999}', "bad_json"),
        (b'{"request_id":"w-1","state":"seen","bus_id":"b","t":' + b"9" * 30 + b"}", "bad_json"),
        (b'{"request_id":"\\ud800"}', "bad_json"),
        (b"[" * 1500 + b"]" * 1500, "oversized"),
        (b'{"a":' + b"[" * 500 + b"]" * 500 + b"}", "bad_json"),  # too deep, under 2 KB
        (b'{"request_id":"w-1","state":"seen","t":1}\xff', "bad_json"),
    ],
)
def test_bad_statuses_are_counted_and_change_nothing(payload: bytes, reason: str) -> None:
    seen: list[tuple[str, str]] = []
    book = WaitBook(TOPICS, on_reject=lambda what, why: seen.append((what, why)))
    w = new_wait(book)
    assert book.on_status("w-1", payload, T0 + 10) == ([], [])
    assert seen == [("status", reason)]
    assert w.state == "pending"


def test_statuses_of_requests_the_backend_does_not_track_are_ignored() -> None:
    book = WaitBook(TOPICS)
    # a stop request on board: its status is the bus's business
    assert book.on_status("sr-1", status("sr-1", "seen"), T0) == ([], [])
    assert book.on_status("sr-1", b"", T0) == ([], [])
    assert sum(book.rejected.values()) == 0


def test_an_acknowledged_wait_does_not_go_back_to_seen() -> None:
    book = WaitBook(TOPICS)
    w = new_wait(book)
    book.on_status("w-1", status("w-1", "acknowledged"), T0 + 5)
    assert book.on_status("w-1", status("w-1", "seen", "bus-2"), T0 + 6) == ([], [])
    assert w.state == "acknowledged"
    assert book.rejected["stale"] == 1


def test_waits_retained_on_the_broker_are_tracked_and_checked() -> None:
    book = WaitBook(TOPICS, WaitRules(max_live_waits=2))

    def wait(rid: str, **kw: Any) -> bytes:
        body = {
            "request_id": rid,
            "route_id": "R1",
            "stop_id": "S05",
            "t": T0,
            "expires_t": T0 + 300,
        }
        return json.dumps({**body, "source": "stop_unit", "assist": False, **kw}).encode()

    w = book.on_wait("R1", "S05", "su-1", wait("su-1"), T0 + 1)
    assert w is not None
    assert (w.source, w.expires_t) == ("stop_unit", T0 + 300)
    assert book.on_wait("R1", "S05", "su-1", wait("su-1"), T0 + 2) is None  # known
    assert book.on_wait("R1", "S05", "su-2", wait("su-3"), T0) is None
    assert book.on_wait("R2", "S05", "su-2", wait("su-2"), T0) is None
    assert book.on_wait("R1", "S05", "su-2", wait("su-2", expires_t=T0 - 1), T0) is None
    assert book.on_wait("R1", "S05", "su-2", wait("su-2", t="now"), T0) is None
    assert book.on_wait("R1", "S05", "su-2", wait("su-2"), T0 + 400) is None
    assert book.on_wait("R1", "S05", "su-2", b"[", T0) is None
    assert book.on_wait("R1", "S05", "su-2", b"{" + b" " * 5000 + b"}", T0) is None
    assert book.on_wait("R1", "S05", "su-2", wait("su-2", source="zzz"), T0) is None
    no_assist = json.loads(wait("su-2"))
    del no_assist["assist"]
    assert book.on_wait("R1", "S05", "su-2", json.dumps(no_assist).encode(), T0) is None
    assert dict(book.wait_rejected) == {
        "id_mismatch": 2,
        "invalid": 4,
        "expired": 1,
        "bad_json": 1,
        "oversized": 1,
    }
    assert book.on_wait("R1", "S05", "su-2", wait("su-2"), T0) is not None
    assert book.waits["su-2"].source == "stop_unit"
    assert book.on_wait("R1", "S05", "su-3", wait("su-3"), T0) is None
    assert book.wait_rejected["too_many_waits"] == 1
    assert [x.request_id for x in book.live_at("R1", "S05")] == ["su-1", "su-2"]
    # a stop unit that takes its wait back removes it; a bus's missed goes back to
    # pending here too, but the stop unit's retained wait is not ours to clear
    book.on_wait("R1", "S05", "su-1", b"", T0 + 5)
    assert "su-1" not in book.waits
    pubs, _ = book.on_status("su-2", status("su-2", "missed"), T0 + 10)
    assert json.loads(pubs[0].payload)["state"] == "pending"
    pubs, _ = book.on_status("su-2", status("su-2", "served"), T0 + 20)
    assert pubs == []
    pubs, _ = book.tick(T0 + 1000)
    assert pubs == []


def test_the_payloads_the_backend_publishes_match_the_asyncapi_document() -> None:
    from backend._waits import status_payload, wait_payload
    from tests.factories.asyncapi import check as check_schema

    def check(name: str, payload: bytes) -> None:
        check_schema(name, json.loads(payload))

    check("Wait", wait_payload(LiveWait("w-1", "R1", "S05", T0, T0 + 900, "app", True)))
    for state in STATES:
        check("RequestStatus", status_payload("w-1", state, T0))
        check("RequestStatus", status_payload("w-1", state, T0, "bus-1"))


def test_a_looped_trip_takes_the_visit_the_display_model_names() -> None:
    from busbell._gtfs import Stop, Trip

    ids = ("L1", "L2", "L3", "L1", "L4")
    trip = Trip("TL", "RL", 0, "D", ids, (None,) * 5, (None,) * 5, (0.0, 1.0, 2.0, 3.0, 4.0))
    feed = Feed("Asia/Seoul", {s: Stop(s, s, 0.0, 0.0) for s in ids}, {"RL": "L"}, {"TL": trip})
    pos = FleetPositions(feed)
    # seq as an index (3: the second visit of L1), as a 1-based stop_sequence (4), or
    # naming another stop (the first visit is taken)
    for seq, ahead in ((3, ("L1", "L4")), (4, ("L1", "L4")), (0, ids), (2, ids), (99, ids)):
        got = pos.on_display("b", display("b", route="RL", trip_id="TL", next_stop=stop("L1", seq)))
        assert got is not None
        assert got.ahead == ahead, seq
        assert got.complete


def test_restored_waits_and_the_memory_of_finished_ones() -> None:
    book = WaitBook(TOPICS, WaitRules(max_live_waits=2))
    book.restore(LiveWait("w-r", "R1", "S05", T0, T0 + 900, state="seen", bus_id="bus-1"))
    _, changes = book.on_status("w-r", status("w-r", "acknowledged"), T0 + 5)
    assert [c.state for c in changes] == ["acknowledged"]
    for k in range(4):
        new_wait(book, f"w-{k}")
        book.cancel(f"w-{k}", T0 + 1)
    assert len(book._final) == 2  # bounded: the oldest are forgotten
    # our own wait cleared on the broker (we cleared it) stays until its status ends it
    new_wait(book, "w-9")
    book.on_wait("R1", "S05", "w-9", b"", T0 + 2)
    assert "w-9" in book.waits
