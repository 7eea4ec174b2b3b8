"""Vehicle context: trip, map matching, odometer, stop visits, GNSS dropouts, door faults."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from busbell import DoorRecord, Feed, GnssRecord, TripRecord, load_gtfs
from edge._params import ClassifierParams
from edge._vehicle import (
    DOOR_OK,
    DOOR_STUCK_CLOSED,
    DOOR_STUCK_OPEN,
    VehicleContext,
    VehicleEvent,
    haversine_fast,
)
from tests.factories.edge_world import latlon, write_gtfs

T0 = 1_790_000_000.0


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Feed:
    return load_gtfs(write_gtfs(tmp_path_factory.mktemp("gtfs") / "g", 8, 400.0))


def fix(t: float, x: float, v: float, y: float = 0.0) -> GnssRecord:
    lat, lon = latlon(x, y)
    return GnssRecord(T0 + t, lat, lon, v)


class Drive:
    """Feeds a vehicle context and collects its events."""

    def __init__(self, feed: Feed, params: ClassifierParams | None = None) -> None:
        self.v = VehicleContext(feed, params)
        self.events: list[VehicleEvent] = []
        self.v.feed_record(TripRecord(T0, "R1", 0, "T1"))

    def rec(self, r: GnssRecord | DoorRecord | TripRecord) -> None:
        self.events.extend(self.v.feed_record(r))

    def door(self, t: float, is_open: bool) -> None:
        self.rec(DoorRecord(T0 + t, is_open))

    def drive(
        self, t0: float, t1: float, x0: float, x1: float, *, gaps: tuple[float, float] = (0, 0)
    ) -> None:
        """1-Hz fixes from (t0, x0) to (t1, x1); a stop if x0 == x1."""
        v = (x1 - x0) / (t1 - t0)
        t = t0
        while t < t1:
            if not gaps[0] <= t < gaps[1]:
                self.rec(fix(t, x0 + v * (t - t0), abs(v)))
            t += 1.0

    def kinds(self) -> list[tuple[str, str | None]]:
        return [(e.kind, e.visit.stop_id) for e in self.events]


def test_trip_sign_on_uses_the_trip_or_the_pattern(feed: Feed) -> None:
    v = VehicleContext(feed)
    v.feed_record(TripRecord(T0, "R1", 0, "T1"))
    assert v.stop_ids[0] == "S0"
    assert len(v.stop_ids) == 8
    v.feed_record(TripRecord(T0 + 1, "R1", 0, None))
    assert v.trip_id is None
    assert v.stop_ids == feed.patterns[("R1", 0)].stop_ids
    v.feed_record(TripRecord(T0 + 2, "NOPE", 1, "nope"))
    assert v.stop_ids == ()


def test_doors_at_a_stop_serve_it_and_reopening_continues_the_visit(feed: Feed) -> None:
    d = Drive(feed)
    d.drive(0, 10, 380, 380 + 1e-9)
    d.door(5, True)
    assert d.v.at_stop
    assert d.v.current_visit is not None
    assert d.v.current_visit.stop_id == "S1"
    d.door(8, False)
    d.door(9, True)  # re-opened before moving: same visit
    d.door(12, False)
    assert d.kinds() == [("open", "S1"), ("close", "S1"), ("open", "S1"), ("close", "S1")]
    assert len(d.v.visits) == 1
    assert d.v.last_visit() is d.v.visits[0]
    assert d.v.visit_before(T0 + 6) is d.v.visits[0]
    assert d.v.visit_before(T0 + 1) is None
    assert d.v.last_served_index == 1


def test_doors_away_from_stops_open_a_visit_with_no_stop(feed: Feed) -> None:
    d = Drive(feed)
    d.drive(0, 5, 200, 200 + 1e-9)
    d.door(2, True)
    assert d.kinds() == [("open", None)]


def test_no_trip_matches_any_stop_of_the_feed(feed: Feed) -> None:
    v = VehicleContext(feed)
    v.feed_record(fix(0, 803, 0.0))
    ev = v.feed_record(DoorRecord(T0 + 1, True))
    assert [e.visit.stop_id for e in ev] == ["S2"]
    v2 = VehicleContext(feed)
    assert v2.feed_record(DoorRecord(T0, True))[0].visit.stop_id is None  # no fix yet


def test_progress_is_monotone_under_gps_noise_and_odometer_follows_speed(feed: Feed) -> None:
    rng = random.Random(3)
    d = Drive(feed)
    last = -1.0
    for k in range(200):
        x = 5.0 * k
        d.rec(fix(k, x + rng.gauss(0, 12), 5.0, rng.gauss(0, 12)))
        assert d.v.progress_m is not None
        assert d.v.progress_m >= last
        last = d.v.progress_m
    assert last == pytest.approx(995, abs=40)
    assert d.v.odometer_m == pytest.approx(995, abs=10)
    # standing still with noise: no distance
    d.rec(fix(200, 1000, 0.0))
    odo = d.v.odometer_m
    for k in range(201, 260):
        d.rec(fix(k, 1000 + rng.gauss(0, 12), 0.0, rng.gauss(0, 12)))
    assert d.v.odometer_m == odo
    assert not d.v.moving


def test_off_route_fixes_do_not_move_progress(feed: Feed) -> None:
    d = Drive(feed)
    d.rec(fix(0, 100, 5.0))
    p = d.v.progress_m
    d.rec(fix(1, 600, 5.0, 500.0))  # 500 m off the route
    assert d.v.progress_m == p
    v = VehicleContext(feed)
    v.feed_record(fix(0, 1000, 0.0, 400.0))
    v.feed_record(TripRecord(T0 + 1, "R1", 0, "T1"))  # sign-on far off route
    assert v.progress_m is None
    v.feed_record(fix(2, 1010, 0.0))
    assert v.progress_m == pytest.approx(1010, abs=5)


def test_gnss_dropout_dead_reckons_and_serves_the_next_stop(feed: Feed) -> None:
    d = Drive(feed)
    d.drive(0, 40, 0, 400)  # 10 m/s
    d.drive(40, 100, 400, 1000, gaps=(45, 100))  # tunnel: last fix at t=44 (x=440)
    d.v.advance(T0 + 70)
    assert d.v.in_dropout
    assert d.v.dropouts == 1
    assert d.v.odometer_m == pytest.approx(700, abs=15)
    assert d.v.progress_m == pytest.approx(700, abs=20)
    # the bus actually stopped at S2 (x=800) inside the tunnel and opened its doors
    d.door(90, True)
    assert d.kinds()[-1] == ("open", "S2")
    d.door(95, False)
    d.rec(fix(110, 900, 10.0))  # out of the tunnel
    assert not d.v.in_dropout
    assert d.v.odometer_m == pytest.approx(900, abs=30)


def test_dropout_beyond_the_limit_stops_dead_reckoning(feed: Feed) -> None:
    p = ClassifierParams(dead_reckon_max_s=10.0, dropout_match_m=100.0)
    d = Drive(feed, p)
    d.drive(0, 10, 0, 100)
    d.v.advance(T0 + 15)
    odo = d.v.odometer_m
    d.v.advance(T0 + 60)
    assert d.v.odometer_m == pytest.approx(odo + 50, abs=15)
    assert d.v.speed_mps == 0.0
    d.door(61, True)  # no stop within reach of the dead-reckoned position
    assert d.kinds()[-1] == ("open", None)
    assert d.v.advance(T0 + 1) == []  # time going backwards is ignored
    assert d.v.feed_record(fix(2, 0, 0)) == []  # an old fix too


def test_door_stuck_open_falls_back_to_dwells(feed: Feed) -> None:
    d = Drive(feed)
    d.drive(0, 10, 400, 400 + 1e-9)
    d.door(3, True)
    d.drive(10, 50, 400, 800)  # drives off with the doors "open"
    assert d.v.door_health == DOOR_STUCK_OPEN
    first = d.v.visits[0]
    assert first.close_t == pytest.approx(T0 + 10)  # closed at departure, not detection
    d.drive(50, 70, 800, 800 + 1e-9)  # dwell at S2
    d.drive(70, 80, 800, 900)
    assert [(k, s) for k, s in d.kinds()] == [
        ("open", "S1"),
        ("close", "S1"),
        ("open", "S2"),
        ("close", "S2"),
    ]
    assert d.v.visits[1].source == "dwell"
    d.door(81, False)
    assert d.v.door_health == DOOR_OK


def test_door_stuck_closed_is_detected_on_the_first_silent_dwell(feed: Feed) -> None:
    d = Drive(feed)
    d.drive(0, 10, 400, 400 + 1e-9)
    d.door(2, True)
    d.door(8, False)
    d.drive(10, 50, 400, 800)
    d.drive(50, 70, 800, 800 + 1e-9)  # dwell at S2: no door
    d.drive(70, 110, 800, 1200)
    assert d.v.door_health == DOOR_STUCK_CLOSED
    assert d.kinds()[2:] == [("open", "S2"), ("close", "S2")]
    d.drive(110, 125, 1200, 1200 + 1e-9)  # next dwell: a visit right away
    assert d.v.current_visit is not None
    assert d.v.current_visit.source == "dwell"
    d.door(120, True)  # the sensor works again
    assert d.v.door_health == DOOR_OK
    assert d.v.current_visit.source == "door"
    d.door(124, False)
    assert d.v.current_visit is None


def test_red_light_away_from_stops_is_not_a_dwell_visit(feed: Feed) -> None:
    d = Drive(feed)
    d.drive(0, 20, 0, 200)
    d.drive(20, 60, 200, 200 + 1e-9)  # red light between stops
    d.drive(60, 80, 200, 400)
    assert d.v.door_health == DOOR_OK
    assert d.events == []


def test_doors_reported_open_at_speed_wait_for_the_stop(feed: Feed) -> None:
    d = Drive(feed)
    d.drive(0, 35, 0, 350)
    d.door(35, True)  # 10 m/s: not a real opening yet
    assert d.events == []
    d.drive(35, 40, 350, 395)
    d.drive(40, 45, 395, 395 + 1e-9)
    assert d.kinds() == [("open", "S1")]


def test_haversine_fast_agrees_with_haversine() -> None:
    from busbell import haversine_m

    a, b = latlon(0), latlon(1234, 567)
    assert haversine_fast(*a, *b) == pytest.approx(haversine_m(*a, *b), rel=1e-3)


def test_single_stop_trip_and_positions_past_the_end(tmp_path: Path) -> None:
    d = tmp_path / "g1"
    write_gtfs(d, 2, 300.0)
    feed = load_gtfs(d)
    v = VehicleContext(feed)
    v.feed_record(TripRecord(T0, "R1", 0, "T1"))
    v.feed_record(fix(0, 280, 10.0))
    v.advance(T0 + 30)  # dead-reckons past the last stop
    assert v.lat == pytest.approx(feed.stops["S1"].lat)


def _serve(d: Drive, t: float, x: float) -> None:
    """Stand at ``x`` from ``t`` for 10 s, doors open from t + 2 to t + 8."""
    d.drive(t, t + 10, x, x + 1e-9)
    d.door(t + 2, True)
    d.door(t + 8, False)


def test_the_trip_under_way_signed_on_again_keeps_its_place(feed: Feed) -> None:
    # a retained trip message delivered again at each reconnect, a QoS 1 duplicate, the
    # driver's terminal restarting: the same trip again is not a new sign-on. Before, it
    # went back to before the first stop: last_served_index -1, stop matching from S0
    d = Drive(feed)  # signed on to T1 at T0
    d.drive(0, 40, 0, 390)
    _serve(d, 40, 400)
    d.drive(50, 90, 400, 790)
    _serve(d, 90, 800)
    d.drive(100, 120, 800, 1000)
    assert d.v.last_served_index == 2
    progress = d.v.progress_m
    for t in (T0, T0 + 110):  # the same message again; a later one, the trip not over
        d.rec(TripRecord(t, "R1", 0, "T1"))
        assert (d.v.trip_id, d.v.last_served_index, d.v.progress_m) == ("T1", 2, progress)
    assert d.v.signed_on == ("R1", 0, "T1", T0)
    d.drive(120, 140, 1000, 1190)
    _serve(d, 140, 1200)
    assert d.kinds()[-2:] == [("open", "S3"), ("close", "S3")]
    assert d.v.last_served_index == 3
    d.rec(TripRecord(T0 + 160, "R1", 0, None))  # another trip (the pattern): a sign-on
    assert (d.v.trip_id, d.v.last_served_index) == (None, -1)


def test_the_same_trip_after_its_last_stop_is_its_next_run_unless_the_same_message(
    feed: Feed,
) -> None:
    d = Drive(feed)
    d.drive(0, 240, 0, 2390)
    _serve(d, 240, 2400)
    d.rec(TripRecord(T0 + 250, "R1", 0, "T1"))  # S6 served, S7 not: still the trip under way
    assert d.v.last_served_index == 6
    d.drive(250, 290, 2400, 2790)
    _serve(d, 290, 2800)
    assert d.v.last_served_index == 7  # S7, the last
    d.rec(TripRecord(T0, "R1", 0, "T1"))  # the message that signed on, delivered again
    assert d.v.last_served_index == 7
    d.rec(TripRecord(T0 + 300, "R1", 0, "T1"))  # signed on to it again: the next run
    assert (d.v.last_served_index, d.v.signed_on) == (-1, ("R1", 0, "T1", T0 + 300))


def test_a_trip_ended_is_not_signed_on_again_by_its_old_message(feed: Feed) -> None:
    # the restart long after a clean stop ends the trip; the retained sign-on delivered
    # again at the next reconnect must not put the bus back on it
    d = Drive(feed)
    d.drive(0, 40, 0, 390)
    _serve(d, 40, 400)
    d.v.end_trip(T0 + 60)
    d.rec(TripRecord(T0, "R1", 0, "T1"))
    assert (d.v.trip_id, d.v.stop_ids) == (None, ())
    d.rec(TripRecord(T0 + 100, "R1", 0, "T1"))  # a new sign-on to it
    assert (d.v.trip_id, d.v.last_served_index) == ("T1", -1)
