"""The bell core (sans-I/O): waits, the request lifecycle, stop requests, the display.

The bus drives route 17 of the sample GTFS through the real VehicleContext (map matching,
stop visits from door records); the core is fed its state after every record.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from busbell import (
    DeviceKey,
    DoorRecord,
    GnssRecord,
    TripRecord,
    canonical_bytes,
    load_gtfs,
    validate_display,
    validate_event,
    verify_event,
)
from edge._bells import FLAG_ALIGHT, FLAG_ASSIST, BellCore, BellOutput, BellParams, StatusOut
from edge._bells_record import MissedDraft
from edge._bells_table import TERMINAL, TRANSITIONS, ReqEvent, ReqState, next_state
from edge._events import EventBuilder
from edge._params import ClassifierParams
from edge._vehicle import VehicleContext

FEED = load_gtfs(Path(__file__).resolve().parents[2] / "firmware_sim" / "data" / "gtfs")
T0 = 1_790_000_000.0
PAT = FEED.patterns["17", 0]
RID = bytes(range(12))


class Bus:
    """Route 17 (BD001 .. BD007) driven through the real vehicle context."""

    def __init__(self, params: BellParams | None = None, bus_id: str = "B1") -> None:
        self.vc = VehicleContext(FEED, ClassifierParams())
        self.core = BellCore(bus_id, FEED, params or BellParams())
        self.t = T0
        self.out: list[BellOutput] = []
        self.pos = (0, 0.0)
        self.lon_offset = 0.0

    def take(self, out: list[BellOutput]) -> list[BellOutput]:
        self.out.extend(out)
        return out

    def feed(self, rec: Any) -> None:
        self.vc.feed_record(rec)
        self.take(self.core.on_vehicle(rec.t, self.vc))

    def trip(self, route: str = "17", direction: int = 0, trip_id: str | None = None) -> None:
        self.feed(TripRecord(self.t, route, direction, trip_id))

    def fix_at(self, stop_id: str, speed: float = 0.0) -> None:
        self.t += 4.0
        s = FEED.stops[stop_id]
        self.feed(GnssRecord(self.t, s.lat, s.lon, speed))

    def latlon(self, i: int, f: float, pattern: Any = PAT) -> tuple[float, float]:
        a = FEED.stops[pattern.stop_ids[i]]
        if f == 0.0 or i + 1 >= len(pattern.stop_ids):
            return a.lat, a.lon
        b = FEED.stops[pattern.stop_ids[i + 1]]
        return a.lat + f * (b.lat - a.lat), a.lon + f * (b.lon - a.lon)

    def fix(self, i: int, f: float = 0.0, speed: float = 10.0, dt: float = 4.0) -> None:
        self.t += dt
        lat, lon = self.latlon(i, f)
        self.pos = (i, f)
        self.feed(GnssRecord(self.t, lat, lon + self.lon_offset, speed))

    def drive_to(self, i: int, f: float = 0.0, speed: float = 10.0) -> None:
        """Drive in ~40 m steps from the current position to stop ``i`` (+ fraction)."""
        ci, cf = self.pos
        while (ci, cf) < (i, f):
            span = PAT.dist_m[ci + 1] - PAT.dist_m[ci]
            cf += 40.0 / span
            if cf >= 1.0:
                ci, cf = ci + 1, 0.0
            ci, cf = min((ci, cf), (i, f))
            self.fix(ci, cf, speed)

    def stop_at(self, i: int) -> None:
        self.drive_to(i)
        self.fix(i, 0.0, speed=0.0, dt=2.0)
        self.doors(True)

    def doors(self, is_open: bool) -> None:
        self.t += 1.0
        self.feed(DoorRecord(self.t, is_open))

    def tick(self, dt: float) -> list[BellOutput]:
        self.t += dt
        return self.take(self.core.tick(self.t))

    def wait(
        self,
        rid: str,
        stop: str,
        *,
        expires_in: float = 900.0,
        assist: bool = False,
        route: str = "17",
        **over: Any,
    ) -> list[BellOutput]:
        body = {
            "request_id": rid,
            "route_id": route,
            "stop_id": stop,
            "t": self.t,
            "expires_t": self.t + expires_in,
            "source": "app",
            "assist": assist,
        }
        body.update(over)
        return self.take(self.core.on_wait(self.t, route, stop, rid, canonical_bytes(body)))

    def status(self, rid: str, state: str, bus: str | None = None) -> list[BellOutput]:
        body = {"request_id": rid, "state": state, "bus_id": bus, "t": self.t}
        return self.take(self.core.on_status(self.t, rid, canonical_bytes(body)))

    def ack(self, *rids: str) -> list[BellOutput]:
        payload = canonical_bytes({"t": self.t, "request_ids": list(rids)})
        return self.take(self.core.on_ack(self.t, payload))

    def statuses(self, rid: str | None = None) -> list[tuple[str, str]]:
        return [
            (o.request_id, o.state)
            for o in self.out
            if isinstance(o, StatusOut) and (rid is None or o.request_id == rid)
        ]

    def missed(self) -> list[MissedDraft]:
        return [o for o in self.out if isinstance(o, MissedDraft)]

    def display(self) -> dict[str, Any]:
        return validate_display(self.core.display(self.t, online=True))

    def shown(self) -> dict[str, list[str]]:
        return {s["stop_id"]: s["request_ids"] for s in self.display()["stops"]}


def ready_bus(params: BellParams | None = None) -> Bus:
    bus = Bus(params)
    bus.trip()
    bus.fix(0, 0.0, speed=0.0)
    return bus


# -- the table --------------------------------------------------------------------------


def test_transition_table_is_total_and_terminal_states_absorb() -> None:
    for s in ReqState:
        for e in ReqEvent:
            assert (s, e) in TRANSITIONS
    for s in TERMINAL - {ReqState.MISSED}:
        assert all(next_state(s, e) is s for e in ReqEvent)
    assert next_state(ReqState.MISSED, ReqEvent.TRIP_CHANGED) is ReqState.PENDING
    assert next_state(ReqState.SEEN, ReqEvent.PASSED) is ReqState.MISSED
    assert next_state(ReqState.PENDING, ReqEvent.PASSED) is ReqState.PENDING
    assert next_state(ReqState.ACKNOWLEDGED, ReqEvent.DOORS_OPENED) is ReqState.SERVED


def test_params_are_checked() -> None:
    for bad in (
        {"horizon_stops": 0},
        {"pass_margin_m": -1.0},
        {"status_grace_s": -1.0},
        {"coalesce_ms": 101.0},
        {"heartbeat_s": 31.0},
        {"tick_s": 0.0},
    ):
        with pytest.raises(ValueError, match="bells"):
            BellParams(**bad)


# -- lifecycle ----------------------------------------------------------------------------


def test_served_seen_acknowledged_served_and_display() -> None:
    bus = ready_bus()
    d = bus.display()
    assert d["route_id"] == "17"
    assert d["next_stop"]["stop_id"] == "BD001"
    assert [s["stop_id"] for s in d["stops"]] == list(PAT.stop_ids[:5])
    assert [s["seq"] for s in d["stops"]] == [1, 2, 3, 4, 5]
    assert d["stops"][0]["name"] == FEED.stops["BD001"].name
    v = bus.core.version
    bus.wait("w-1", "BD003", assist=True)
    assert bus.core.version > v
    assert bus.shown()["BD003"] == ["w-1"]
    stop = next(s for s in bus.display()["stops"] if s["stop_id"] == "BD003")
    assert (stop["waits"], stop["assist"], stop["stop_requested"]) == (1, True, False)
    assert bus.statuses() == []  # the status grace: 'seen' waits for the API's 'pending'
    bus.status("w-1", "pending")
    assert bus.statuses() == [("w-1", "seen")]
    bus.ack("w-1")
    assert bus.statuses()[-1] == ("w-1", "acknowledged")
    bus.stop_at(2)
    assert bus.statuses()[-1] == ("w-1", "served")
    assert bus.core.state_of("w-1") is None  # forgotten once served
    assert all("w-1" not in ids for ids in bus.shown().values())
    assert bus.display()["next_stop"]["stop_id"] == "BD004"
    assert bus.missed() == []
    # the same wait delivered again (retained, after a reconnect) stays ended
    bus.wait("w-1", "BD003")
    assert bus.core.tracked() == set()
    assert bus.core.counts["wait_ended_again"] == 1


def test_grace_elapses_without_a_status() -> None:
    bus = ready_bus()
    bus.wait("w-1", "BD002")
    assert bus.tick(0.5) == []
    assert bus.tick(0.6) == [StatusOut("w-1", "seen", bus.t)]
    assert bus.core.state_of("w-1") is ReqState.SEEN


def test_missed_record_is_drafted_signed_and_valid() -> None:
    bus = ready_bus()
    bus.wait("w-1", "BD003")
    bus.tick(2.0)
    bus.drive_to(3, 0.2)
    assert bus.statuses() == [("w-1", "seen"), ("w-1", "missed")]
    (draft,) = bus.missed()
    stop = FEED.stops["BD003"]
    assert draft.stop_id == "BD003"
    assert draft.route_id == "17"
    assert draft.passed.distance_m < 25.0
    assert math.isclose(draft.passed.lat, stop.lat, abs_tol=3e-4)
    assert draft.passed.t <= draft.wait["expires_t"]
    assert draft.wait["request_id"] == "w-1"
    key = DeviceKey.from_seed(bytes(32))
    record = EventBuilder("B1", key).build(draft, 7, "ab" * 32)
    validate_event(record)
    verify_event(record, key.public)
    assert record["type"] == "missed"
    assert record["doors_opened"] is False
    # missed is terminal for this trip: not shown, no second record
    assert bus.core.state_of("w-1") is ReqState.MISSED
    bus.drive_to(4)
    assert len(bus.missed()) == 1


def test_passing_with_short_notice_or_far_away_is_not_missed() -> None:
    bus = ready_bus()
    bus.drive_to(1, 0.9)
    bus.wait("w-1", "BD003")
    bus.status("w-1", "pending")
    assert bus.statuses() == [("w-1", "seen")]
    bus.drive_to(2, 0.3)  # ~25 s of notice at 10 m/s over 40 m steps of 4 s... too short
    assert bus.missed() == []
    assert bus.statuses()[-1] == ("w-1", "pending")
    assert bus.core.counts["missed_suppressed_short_notice"] == 1

    far = ready_bus(BellParams(pass_max_distance_m=50.0))
    far.lon_offset = 0.0008  # ~70 m beside the stops: still on the pattern, never near
    far.wait("w-2", "BD002")
    far.tick(2.0)
    far.drive_to(2)
    assert far.missed() == []
    assert far.core.counts["missed_suppressed_far"] == 1
    assert far.core.state_of("w-2") is ReqState.PENDING


@pytest.mark.parametrize("offset_s", [0.0, 200 * 86400.0, -3600.0])
def test_a_clock_step_keeps_the_notice_the_driver_had(offset_s: float) -> None:
    """Waits shown while the bus's clock was off by ``offset_s`` (the system clock before
    the first GNSS fix) are judged on the GNSS time line once the clock steps: the notice
    the driver had is neither lost nor made longer by the step."""

    def shown_off_clock(bus: Bus, rid: str) -> None:
        body = {"request_id": rid, "route_id": "17", "stop_id": "BD003", "t": bus.t}
        # stamped by a backend on wall time (as the demo's): live on either time line
        body |= {"expires_t": bus.t + abs(offset_s) + 900.0, "source": "app", "assist": False}
        core = bus.core
        bus.take(core.on_wait(bus.t + offset_s, "17", "BD003", rid, canonical_bytes(body)))
        status = {"request_id": rid, "state": "pending", "bus_id": None, "t": bus.t}
        bus.take(core.on_status(bus.t + offset_s, rid, canonical_bytes(status)))
        assert bus.statuses(rid) == [(rid, "seen")]
        core.clock_stepped(-offset_s)  # the first fix puts the clock on GNSS time

    bus = ready_bus()
    shown_off_clock(bus, "w-1")
    bus.drive_to(3, 0.2)  # minutes of notice: missed
    assert [d.request_id for d in bus.missed()] == ["w-1"]

    short = ready_bus()
    short.drive_to(1, 0.9)
    shown_off_clock(short, "w-2")
    short.drive_to(2, 0.3)  # too little notice (as with a right clock): not missed
    assert short.missed() == []
    assert short.core.counts["missed_suppressed_short_notice"] == 1
    assert short.core.counts.get("clock_steps", 0) == (offset_s != 0.0)


def test_a_wait_that_looks_expired_on_the_boot_clock_is_kept_until_the_first_fix() -> None:
    """Before the first GNSS fix the bus's times are the system clock's; one running fast
    (an RTC hours ahead) must not drop a live wait as expired: it is kept, nothing expires
    until the clock is on GNSS time, then only waits really past their end do."""
    bus = ready_bus()
    core = bus.core
    core.clock_synced = False
    ahead = 3 * 3600.0
    for rid, expires_in in (("w-live", 600.0), ("w-old", -5.0)):
        body = {"request_id": rid, "route_id": "17", "stop_id": "BD002", "t": bus.t - 60.0}
        body |= {"expires_t": bus.t + expires_in, "source": "app", "assist": False}
        bus.take(core.on_wait(bus.t + ahead, "17", "BD002", rid, canonical_bytes(body)))
    assert core.counts["waits_held_unsynced"] == 2
    assert "wait:expired" not in core.rejected
    bus.take(core.tick(bus.t + ahead + 1.0))
    assert core.tracked() == {"w-live", "w-old"}
    core.clock_stepped(-ahead)  # the first fix
    core.clock_synced = True
    bus.tick(1.0)
    assert core.tracked() == {"w-live"}
    assert ("w-old", "expired") in bus.statuses()
    bus.tick(600.0)
    assert core.tracked() == set()


def test_expired_wait_disappears() -> None:
    bus = ready_bus()
    bus.wait("w-1", "BD002", expires_in=30.0)
    bus.tick(2.0)
    bus.tick(29.0)
    assert bus.statuses() == [("w-1", "seen"), ("w-1", "expired")]
    assert bus.shown()["BD002"] == []
    assert bus.core.tracked() == set()
    # a wait already expired on arrival is rejected
    bus.wait("w-2", "BD002", expires_in=-1.0, t=bus.t - 10)
    assert bus.core.rejected["wait:expired"] == 1


def test_wait_expiring_before_the_bus_passes_is_expired_not_missed() -> None:
    bus = ready_bus(BellParams(min_notice_s=0.0))
    bus.wait("w-1", "BD002", expires_in=60.0)
    bus.tick(1.5)
    bus.fix(0, 0.5, dt=55.0)
    bus.drive_to(1, 0.5)
    assert bus.missed() == []
    assert ("w-1", "expired") in bus.statuses()


def test_cancelled_by_empty_payload_or_elsewhere() -> None:
    bus = ready_bus()
    bus.wait("w-1", "BD002")
    bus.wait("w-2", "BD002")
    bus.tick(2.0)
    # a clear on another stop's topic (an old one) does not cancel
    bus.take(bus.core.on_wait(bus.t, "17", "BD004", "w-1", b""))
    assert bus.core.state_of("w-1") is ReqState.SEEN
    bus.take(bus.core.on_wait(bus.t, "17", "BD002", "w-1", b""))
    assert bus.statuses("w-1") == [("w-1", "seen"), ("w-1", "cancelled")]
    # the rider API says cancelled: gone, and nothing of ours goes over it
    bus.status("w-2", "cancelled")
    assert bus.statuses("w-2") == [("w-2", "seen")]
    assert bus.shown()["BD002"] == []
    # unknown clears are harmless
    assert bus.core.on_wait(bus.t, "17", "BD002", "w-9", b"") == []


def test_served_by_another_bus_disappears_silently() -> None:
    bus = ready_bus()
    bus.wait("w-1", "BD003")
    bus.tick(2.0)
    bus.status("w-1", "served", "B2")
    assert bus.core.tracked() == set()
    assert bus.statuses() == [("w-1", "seen")]


def test_another_bus_status_is_not_overwritten_by_seen() -> None:
    bus = ready_bus()
    bus.wait("w-1", "BD003")
    bus.status("w-1", "acknowledged", "B2")
    assert bus.core.state_of("w-1") is ReqState.SEEN
    assert bus.statuses() == []
    bus.ack("w-1")  # our own driver's ack is a fact of this bus
    assert bus.statuses() == [("w-1", "acknowledged")]
    # our echo changes nothing
    assert bus.status("w-1", "acknowledged", "B1") == []


def test_restart_takes_back_its_own_state_from_retained_statuses() -> None:
    bus = ready_bus()
    bus.wait("w-1", "BD003")
    bus.wait("w-2", "BD004")
    bus.wait("w-3", "BD005")
    bus.wait("w-4", "BD002")
    bus.status("w-1", "acknowledged", "B1")
    bus.status("w-2", "seen", "B1")
    bus.status("w-3", "missed", "B1")
    bus.status("w-4", "served", "B1")
    bus.tick(5.0)
    assert bus.statuses() == []
    assert bus.core.state_of("w-1") is ReqState.ACKNOWLEDGED
    assert bus.core.state_of("w-2") is ReqState.SEEN
    assert bus.core.state_of("w-3") is ReqState.MISSED
    assert bus.core.state_of("w-4") is None
    assert bus.shown()["BD003"] == ["w-1"]
    assert bus.shown()["BD005"] == []


def test_trip_change_follows_route_and_direction() -> None:
    bus = ready_bus()
    bus.wait("w-1", "BD003")
    bus.wait("w-2", "BD004R")  # the other direction: tracked, never shown on this one
    bus.tick(2.0)
    assert bus.core.tracked() == {"w-1", "w-2"}
    assert bus.statuses() == [("w-1", "seen")]
    bus.fix_at("BD007R")  # the terminus, where the driver signs on to the way back
    bus.trip("17", 1)
    assert bus.statuses()[1:] == [("w-1", "pending"), ("w-2", "seen")]
    d = bus.display()
    assert d["stops"][0]["stop_id"] == "BD007R"
    assert bus.shown()["BD004R"] == ["w-2"]
    tv = bus.core.tracked_version
    bus.trip("55", 0)
    assert bus.core.tracked() == set()
    assert bus.core.tracked_version > tv
    assert bus.display()["route_id"] == "55"
    # a late retained wait of the old route is not ours
    bus.wait("w-3", "BD003", route="17")
    assert bus.core.tracked() == set()
    assert bus.core.counts["wait_other_route"] == 1


def test_missed_goes_back_to_pending_on_the_next_trip() -> None:
    bus = ready_bus()
    bus.wait("w-1", "BD002")
    bus.tick(30.0)
    bus.drive_to(2, 0.1)
    assert bus.core.state_of("w-1") is ReqState.MISSED
    bus.trip("17", 0)  # the same trip signed on again: still this trip
    assert bus.core.state_of("w-1") is ReqState.MISSED
    bus.trip("17", 0, "T2")
    assert bus.core.state_of("w-1") is ReqState.PENDING


def test_horizon_in_stops_and_minutes() -> None:
    bus = ready_bus(BellParams(horizon_stops=3))
    assert [s["stop_id"] for s in bus.display()["stops"]] == ["BD001", "BD002", "BD003"]
    bus.wait("w-1", "BD004")
    bus.tick(2.0)
    assert bus.statuses() == []
    assert bus.core.state_of("w-1") is ReqState.PENDING
    bus.ack("w-1")
    assert bus.core.rejected["ack:not_shown"] == 1
    bus.drive_to(1, 0.5)
    assert "BD004" in bus.shown()
    assert bus.statuses() == [("w-1", "seen")]
    short = ready_bus(BellParams(horizon_minutes=1.0))  # 360 m at 6 m/s: the next stop only
    assert [s["stop_id"] for s in short.display()["stops"]] == ["BD001"]


def test_wait_at_the_stop_where_the_doors_are_open_is_served() -> None:
    bus = ready_bus()
    bus.stop_at(1)
    bus.wait("w-1", "BD002")
    assert bus.statuses() == [("w-1", "served")]


def test_wait_updated_moved_and_duplicated() -> None:
    bus = ready_bus()
    bus.wait("w-1", "BD003")
    v = bus.core.version
    bus.wait("w-1", "BD003")  # the same again: nothing
    assert bus.core.version == v
    bus.wait("w-1", "BD003", expires_in=1200.0)  # updated in place
    assert bus.core.version > v
    bus.wait("w-1", "BD004")  # moved: a rider holds one live wait
    assert bus.shown()["BD003"] == []
    assert bus.shown()["BD004"] == ["w-1"]


# -- stop requests on board -------------------------------------------------------------


def test_bystander_alight_rings_nothing_and_rider_alight_requests_next_stop() -> None:
    bus = ready_bus()
    bus.drive_to(0, 0.5)
    assert bus.core.on_flags(bus.t, RID, FLAG_ALIGHT | FLAG_ASSIST, on_board=False) == []
    assert not any(s["stop_requested"] or s["assist"] for s in bus.display()["stops"])
    assert bus.core.counts["flags_not_on_board"] == 1
    v = bus.core.version
    bus.core.on_flags(bus.t, RID, 0b100, on_board=True)  # WAIT only: not a stop request
    assert bus.core.version == v
    with capture_logs() as logs:
        bus.core.on_flags(bus.t, RID, FLAG_ALIGHT, on_board=True)
        bus.core.on_flags(bus.t, RID, FLAG_ALIGHT, on_board=True)
        bus.core.on_flags(bus.t, RID[1:] + b"x", FLAG_ALIGHT, on_board=True)
        bus.core.on_flags(bus.t, RID[::-1], FLAG_ASSIST, on_board=True)
    assert [e["event"] for e in logs] == ["stop_requested", "assist_requested"]
    nxt = bus.display()["next_stop"]
    assert (nxt["stop_id"], nxt["stop_requested"], nxt["assist"]) == ("BD002", True, True)
    assert bus.core.stop_requested() == {"BD002": 2}
    bus.stop_at(1)
    # doors open: cleared there; flags at a stop do not ring the next one
    bus.core.on_flags(bus.t, RID, FLAG_ALIGHT, on_board=True)
    assert bus.core.counts["flags_at_stop"] == 1
    assert not any(s["stop_requested"] or s["assist"] for s in bus.display()["stops"])
    assert bus.core.stop_requested() == {}


def test_stop_request_passed_is_counted_and_cleared() -> None:
    bus = ready_bus()
    bus.drive_to(0, 0.5)
    bus.core.on_flags(bus.t, RID, FLAG_ALIGHT, on_board=True)
    with capture_logs() as logs:
        bus.drive_to(1, 0.3)
    assert any(e["event"] == "stop_request_passed" for e in logs)
    assert bus.core.counts["stop_requests_passed"] == 1
    assert not any(s["stop_requested"] for s in bus.display()["stops"])


def test_flags_without_a_trip_or_past_the_last_stop() -> None:
    core = BellCore("B1", FEED)
    core.on_flags(T0, RID, FLAG_ALIGHT, on_board=True)
    assert core.counts["flags_no_next_stop"] == 1
    d = validate_display(core.display(T0, online=False))
    assert (d["route_id"], d["next_stop"], d["stops"], d["online"]) == (None, None, [], False)


def test_on_board_count_is_shown() -> None:
    bus = ready_bus()
    v = bus.core.version
    bus.core.set_on_board(3)
    bus.core.set_on_board(3)
    assert bus.core.version == v + 1
    assert bus.display()["on_board"] == 3


# -- bad input ----------------------------------------------------------------------------


def test_bad_waits_are_rejected_counted_and_never_shown() -> None:
    bus = ready_bus(BellParams(max_waits=2))
    core = bus.core
    good = {
        "request_id": "w-1",
        "route_id": "17",
        "stop_id": "BD002",
        "t": bus.t,
        "expires_t": bus.t + 600,
        "source": "app",
        "assist": False,
    }
    cases: list[tuple[str, str, str, bytes, str]] = [
        ("17", "BD002", "w-1", b"x" * 2000, "oversized"),
        ("17", "BD002", "w-1", b"{not json", "malformed_json"),
        ("17", "BD002", "w-1", b"\xff\xfe", "malformed_json"),
        ("17", "BD002", "w-1", b"[" * 600 + b"]" * 600, "oversized"),
        ("17", "BD002", "w-1", b"[" * 500 + b"]" * 500, "malformed_json"),
        ("17", "BD002", "w-1", b"[1]", "invalid"),
        ("17", "BD002", "w-1", canonical_bytes({**good, "assist": "yes"}), "invalid"),
        ("17", "BD002", "w-1", canonical_bytes({**good, "x": 1}), "invalid"),
        ("17", "BD002", "w-1", b'{"t": NaN}', "malformed_json"),
        ("17", "BD003", "w-1", canonical_bytes(good), "topic_mismatch"),
        ("17", "BD002", "w-2", canonical_bytes(good), "topic_mismatch"),
        (
            "17",
            "NOPE",
            "w-3",
            canonical_bytes({**good, "stop_id": "NOPE", "request_id": "w-3"}),
            "unknown_stop",
        ),
    ]
    with capture_logs() as logs:
        for route, stop, rid, payload, _ in cases:
            assert core.on_wait(bus.t, route, stop, rid, payload) == []
    reasons = [f"wait:{c[4]}" for c in cases]
    assert sum(core.rejected.values()) == len(cases)
    for r in set(reasons):
        assert core.rejected[r] == reasons.count(r)
    assert [e["event"] for e in logs] == ["bell_input_rejected"] * len(cases)
    assert core.tracked() == set()
    assert all(s["request_ids"] == [] for s in bus.display()["stops"])
    bus.wait("w-4", "BD002")
    bus.wait("w-5", "BD002")
    bus.wait("w-6", "BD002")
    assert core.rejected["wait:too_many"] == 1
    assert core.tracked() == {"w-4", "w-5"}


def test_bad_acks_and_statuses_are_rejected_and_counted() -> None:
    bus = ready_bus()
    bus.wait("w-1", "BD002")
    bus.tick(2.0)
    core = bus.core
    for payload in (b"x" * 40000, b"{", b'{"request_ids": []}', b'{"request_ids": ["a/b"]}'):
        assert core.on_ack(bus.t, payload) == []
    assert core.rejected["ack:oversized"] == 1
    assert core.rejected["ack:malformed_json"] == 1
    assert core.rejected["ack:invalid"] == 2
    bus.ack("w-9", "w-1", "w-1")
    assert core.rejected["ack:unknown_request"] == 1
    assert bus.statuses() == [("w-1", "seen"), ("w-1", "acknowledged")]
    for payload in (
        b"x" * 2000,
        b"{",
        b'{"request_id": "w-1", "state": "lost", "t": 1}',
        b'{"request_id": "w-2", "state": "seen", "t": 1}',
    ):
        assert core.on_status(bus.t, "w-1", payload) == []
    assert core.rejected["status:oversized"] == 1
    assert core.rejected["status:malformed_json"] == 1
    assert core.rejected["status:invalid"] == 1
    assert core.rejected["status:topic_mismatch"] == 1
    # statuses of requests not tracked, and empty ones, are ignored without counting
    assert core.on_status(bus.t, "w-7", b'{"x": 1}') == []
    assert core.on_status(bus.t, "w-1", b"") == []
    assert core.state_of("w-1") is ReqState.ACKNOWLEDGED
    bus.stop_at(1)
    bus.ack("w-1")
    assert core.rejected["ack:unknown_request"] == 2


def test_ack_of_a_missed_request_is_not_live() -> None:
    bus = ready_bus()
    bus.wait("w-1", "BD002")
    bus.tick(30.0)
    bus.drive_to(1, 0.3)
    assert bus.core.state_of("w-1") is ReqState.MISSED
    assert bus.ack("w-1") == []
    assert bus.core.rejected["ack:not_live"] == 1


def test_display_model_json_round_trips() -> None:
    bus = ready_bus()
    bus.wait("w-1", "BD002", assist=True)
    model = bus.display()
    assert json.loads(canonical_bytes(model)) == model
    assert replace(BellParams(), horizon_stops=2).horizon_stops == 2


def test_crawling_past_stops_then_opening_doors_passes_the_skipped_ones() -> None:
    bus = ready_bus(BellParams(min_notice_s=0.0))
    bus.wait("w-1", "BD002")
    bus.wait("w-2", "BD003", assist=True)
    bus.tick(2.0)
    bus.drive_to(3, speed=1.0)  # too slow to count as passing
    assert bus.missed() == []
    bus.fix(3, 0.0, speed=0.0, dt=2.0)
    bus.doors(True)
    assert [m.request_id for m in bus.missed()] == ["w-1", "w-2"]
    assert bus.display()["next_stop"]["stop_id"] == "BD005"
    bus.doors(False)
    bus.drive_to(4, 0.5)
    bus.fix(4, 0.5, speed=0.0)
    bus.doors(True)  # doors open between stops: no stop matched, nothing served
    assert bus.display()["next_stop"]["stop_id"] == "BD006"


def test_pending_wait_passed_unshown_stays_pending_and_ends_with_the_route() -> None:
    bus = ready_bus(BellParams(status_grace_s=1000.0))
    bus.wait("w-1", "BD002")
    bus.drive_to(2)
    assert bus.core.state_of("w-1") is ReqState.PENDING
    assert bus.missed() == []
    bus.stop_at(6)  # the last stop: nothing ahead
    d = bus.display()
    assert (d["next_stop"], d["stops"]) == (None, [])


def test_trip_sign_on_at_an_open_stop_starts_after_it() -> None:
    bus = ready_bus()
    bus.stop_at(1)
    bus.trip("17", 0, "T2")
    assert bus.display()["next_stop"]["stop_id"] == "BD003"
    bus.doors(False)
    bus.stop_at(2)
    bus.doors(False)
    bus.stop_at(3)  # a later visit after earlier ones: only the new one counts
    assert bus.display()["next_stop"]["stop_id"] == "BD005"


def test_updates_statuses_and_expiry_of_waits_beyond_the_horizon() -> None:
    bus = ready_bus(BellParams(horizon_stops=2))
    bus.wait("w-1", "BD006", expires_in=100.0)
    v = bus.core.version
    bus.wait("w-1", "BD006", expires_in=300.0)  # updated, not shown: display unchanged
    assert bus.core.version == v
    assert bus.core.wait_of("w-1") is not None
    assert bus.core.wait_of("w-9") is None
    bus.status("w-1", "pending")
    assert bus.statuses() == []
    bus.tick(150.0)  # the first expiry is stale now
    assert bus.core.state_of("w-1") is ReqState.PENDING
    bus.status("w-1", "cancelled", "B1")  # our own end, retained: forgotten
    assert bus.core.tracked() == set()
    assert bus.core.live_waits() == 0


def test_live_and_shown_counts() -> None:
    bus = ready_bus(BellParams(horizon_stops=2))
    bus.wait("w-1", "BD001")
    bus.wait("w-2", "BD005")
    assert bus.core.live_waits() == 2
    assert list(bus.core.shown_request_ids()) == ["w-1"]


def test_tombstones_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import edge._bells as bells

    monkeypatch.setattr(bells, "_TOMBSTONE_MAX", 4)
    bus = ready_bus()
    for i in range(6):
        bus.wait(f"w-{i}", "BD002", expires_in=10.0 + i)
        bus.take(bus.core.on_wait(bus.t, "17", "BD002", f"w-{i}", b""))
    assert len(bus.core._ended) == 4
    bus.tick(100.0)
    assert len(bus.core._ended) == 0


def test_a_loop_route_shows_a_stop_twice_and_counts_its_waits_once() -> None:
    from busbell import Feed, Stop, TripPattern

    stops = {
        "A": Stop("A", "A", 37.0, 127.0),
        "B": Stop("B", "B", 37.004, 127.0),
        "C": Stop("C", "C", 37.004, 127.005),
    }
    pattern = TripPattern("L", 0, ("A", "B", "C", "A"), (0.0, 445.0, 888.0, 1480.0))
    feed = Feed("Asia/Seoul", stops, {"L": "L"}, {}, patterns={("L", 0): pattern})
    vc = VehicleContext(feed, ClassifierParams())
    core = BellCore("B1", feed)
    vc.feed_record(TripRecord(T0, "L", 0, None))
    vc.feed_record(GnssRecord(T0 + 1, 37.0, 127.0, 0.0))
    core.on_vehicle(T0 + 1, vc)
    wait = {
        "request_id": "w-1",
        "route_id": "L",
        "stop_id": "A",
        "t": T0,
        "expires_t": T0 + 600,
        "source": "stop_unit",
        "assist": False,
    }
    core.on_wait(T0 + 1, "L", "A", "w-1", canonical_bytes(wait))
    core.tick(T0 + 3)
    d = validate_display(core.display(T0 + 3, online=True))
    assert [s["stop_id"] for s in d["stops"]] == ["A", "B", "C", "A"]
    assert [s["waits"] for s in d["stops"]] == [1, 0, 0, 0]
    assert list(core.shown_request_ids()) == ["w-1"]


def test_a_stop_passed_between_two_fixes_is_judged_from_the_fix_after_it() -> None:
    bus = ready_bus(BellParams(min_notice_s=0.0))
    bus.wait("w-1", "BD004")
    bus.status("w-1", "pending")
    bus.fix(3, 0.15, speed=12.0, dt=60.0)  # a GNSS gap over three stops
    (draft,) = bus.missed()
    assert draft.stop_id == "BD004"
    assert 50.0 < draft.passed.distance_m < 150.0


def test_own_pending_status_after_a_restart_is_shown_again() -> None:
    bus = ready_bus()
    bus.wait("w-1", "BD002")
    bus.status("w-1", "pending", "B1")
    assert bus.statuses() == [("w-1", "seen")]
