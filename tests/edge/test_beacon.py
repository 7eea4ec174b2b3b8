"""The bus beacon from the vehicle context (edge._beacon) and beacons heard by the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from busbell import (
    AdvRecord,
    ConfigError,
    DoorRecord,
    Feed,
    GnssRecord,
    TokenVerifier,
    TripRecord,
    load_config,
    load_gtfs,
)
from busbell._echo import BEACON_SERVICE_UUID, bus_tag, encode_beacon, parse_beacon
from edge._beacon import BeaconParams, BeaconState, EchoSeqs, beacon_stop_index
from edge._pipeline import EdgePipeline
from edge._vehicle import VehicleContext
from edge.config import EdgeConfig
from tests.factories.edge_world import latlon, write_gtfs

T0 = 1_790_000_000.0
SPACING = 400.0  # stops S0..S7 every 400 m due east


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Feed:
    return load_gtfs(write_gtfs(tmp_path_factory.mktemp("gtfs") / "g", 8, SPACING))


class Bus:
    """A vehicle context driven along the line, with the beacon state beside it."""

    def __init__(self, feed: Feed) -> None:
        self.v = VehicleContext(feed)
        self.beacon = BeaconState("bus-0042")
        self.t = 0.0
        self.x = 0.0

    def seq(self) -> int:
        self.beacon.update(self.v)
        beacon = parse_beacon(self.beacon.payload)
        assert beacon is not None
        assert beacon.tag == bus_tag("bus-0042")
        return beacon.seq

    def trip(self, trip_id: str = "T1") -> None:
        self.v.feed_record(TripRecord(T0 + self.t, "R1", 0, trip_id))

    def fix(self, v: float) -> None:
        lat, lon = latlon(self.x)
        self.v.feed_record(GnssRecord(T0 + self.t, lat, lon, v))

    def drive_to(self, x: float) -> None:
        """1-Hz fixes at 10 m/s up to ``x``, then standing still there."""
        while self.x < x:
            self.t += 1.0
            self.x = min(x, self.x + 10.0)
            self.fix(10.0)
        self.t += 1.0
        self.fix(0.0)

    def doors(self, is_open: bool) -> None:
        self.t += 2.0
        self.v.feed_record(DoorRecord(T0 + self.t, is_open))

    def serve(self) -> tuple[int, int]:
        """Doors open then closed where the bus stands: the seq at each."""
        self.doors(True)
        at = self.seq()
        self.doors(False)
        return at, self.seq()


def test_no_trip_advertises_seq_0_with_the_tag(feed: Feed) -> None:
    bus = Bus(feed)
    assert bus.beacon.payload == encode_beacon(bus_tag("bus-0042"), 0)
    bus.drive_to(1000.0)  # driving with no trip signed on: still 0
    assert beacon_stop_index(bus.v) == 0
    assert bus.seq() == 0
    assert bus.beacon.update(bus.v) is None  # unchanged


def test_seq_follows_the_stops_served_and_passed(feed: Feed) -> None:
    bus = Bus(feed)
    bus.fix(0.0)
    bus.trip()
    assert bus.seq() == 0  # before the first stop
    assert bus.serve() == (0, 1)  # serving S0, then k + 1 once it leaves it
    bus.drive_to(SPACING)
    assert bus.seq() == 1  # coming to S1
    assert bus.serve() == (1, 2)
    # S2 passed without stopping: 2 until the bus is beyond the stop radius, then 3
    bus.drive_to(2 * SPACING + 30.0)
    assert bus.seq() == 2  # (doors may still open there)
    bus.drive_to(2 * SPACING + 50.0)
    assert bus.seq() == 3
    bus.drive_to(3 * SPACING)
    assert bus.serve() == (3, 4)
    for k in range(4, 8):
        bus.drive_to(k * SPACING)
        assert bus.serve() == (k, (k + 1) % 8)
    # after the last stop (S7, index 7): 8 mod 8 until the next sign-on
    bus.drive_to(7 * SPACING + 100.0)
    assert beacon_stop_index(bus.v) == 8
    assert bus.seq() == 0


def test_a_new_trip_and_an_ended_trip_start_again_at_0(feed: Feed) -> None:
    bus = Bus(feed)
    bus.fix(0.0)
    bus.trip()
    bus.serve()
    bus.drive_to(SPACING)
    bus.serve()
    assert bus.seq() == 2
    bus.v.end_trip(T0 + bus.t)  # a restart long after a clean stop mid-trip
    assert bus.seq() == 0
    bus.trip("T1")
    bus.drive_to(SPACING + 100.0)  # signed on again mid-line: S0 and S1 are behind
    assert bus.seq() == 2


def test_a_visit_at_no_stop_of_the_trip_keeps_the_next_stop(feed: Feed) -> None:
    bus = Bus(feed)
    bus.fix(0.0)
    bus.trip()
    bus.serve()
    bus.drive_to(200.0)  # between S0 and S1
    bus.doors(True)
    assert bus.v.current_visit is not None
    assert bus.v.current_visit.stop_index is None
    assert bus.seq() == 1


def test_seq_wraps_mod_8_on_a_long_trip(tmp_path: Path) -> None:
    bus = Bus(load_gtfs(write_gtfs(tmp_path / "g", 12, SPACING)))
    bus.fix(0.0)
    bus.trip()
    seqs = []
    for k in range(10):
        bus.drive_to(k * SPACING)
        seqs.append(bus.serve())
    assert seqs[7:] == [(7, 0), (0, 1), (1, 2)]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"min_interval_ms": 19}, "min_interval_ms"),
        ({"min_interval_ms": 200, "max_interval_ms": 150}, "min_interval_ms"),
        ({"max_interval_ms": 10241}, "max_interval_ms"),
        ({"tx_power_dbm": 21}, "tx_power_dbm"),
        ({"tx_power_dbm": -128}, "tx_power_dbm"),
        ({"service_uuid": "bus"}, "service_uuid"),
        ({"service_uuid": "0x180d"}, "service_uuid"),  # bluetoothd would; the config is strict
        ({"service_uuid": "12345678"}, "service_uuid"),  # 32-bit: none are assigned
        ({"service_uuid": "5da9b88e9f2842a5b69db749ded59a08"}, "service_uuid"),
        ({"service_uuid": "5da9b88e-9f28-42a5-b69d-b749ded59a0g"}, "service_uuid"),
    ],
)
def test_beacon_params_are_checked(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BeaconParams(**kw)


def test_the_service_uuid_is_the_protocol_s_unless_configured(tmp_path: Path) -> None:
    assert BeaconParams().service_uuid == BEACON_SERVICE_UUID
    for ok in ("", "FEAA", "feaa", BEACON_SERVICE_UUID.upper()):
        assert BeaconParams(service_uuid=ok).service_uuid == ok
    toml = tmp_path / "edge.toml"
    toml.write_text('bus_id = "bus-9"\n[beacon]\nservice_uuid = "not-a-uuid"\n')
    with pytest.raises(ConfigError, match=r"beacon\.service_uuid must be a 128-bit UUID"):
        load_config(EdgeConfig, toml, env={})
    cfg = load_config(EdgeConfig, toml, env={"BUSBELL_BEACON__SERVICE_UUID": ""})
    assert cfg.beacon.service_uuid == ""


def test_pipeline_counts_bus_beacons_apart_and_never_rejects_them(feed: Feed) -> None:
    pipe = EdgePipeline("bus-0042", feed, TokenVerifier({}))
    own = encode_beacon(bus_tag("bus-0042"), 3)
    other = encode_beacon(bus_tag("bus-0099"), 5)
    bad = bytes((0xB1, 1, 2, 3, 4, 9))  # seq 9: not a beacon, and not a token either
    recs = [
        AdvRecord(T0, "C0:00:00:00:00:01", -60, {0xFFFF: own}),
        AdvRecord(T0 + 0.1, "C0:00:00:00:00:02", -70, {0xFFFF: other}),
        AdvRecord(T0 + 0.2, "C0:00:00:00:00:02", -71, {0xFFFF: other}),
        AdvRecord(T0 + 0.3, "C0:00:00:00:00:03", -71, {0xFFFF: bad}),
    ]
    for rec in recs:
        assert pipe.feed(rec) == []
    st = pipe.stats
    assert st.beacons_heard == {"own": 1, "other": 2}
    assert st.rejected == {"malformed": 1}  # only the non-beacon
    assert st.adverts_seen == 4
    assert st.adverts_accepted == 0
    assert st.tokens_in_range == 0
    # the counters survive a checkpoint like the rejects
    again = EdgePipeline("bus-0042", feed, TokenVerifier({}))
    again.restore(pipe.snapshot())
    assert again.stats.beacons_heard == {"own": 1, "other": 2}


def test_echo_seqs_name_the_seqs_other_patterns_send_at_a_stop() -> None:
    """``shared_stop_three_routes``'s feed: a G6000 run serves BD005 as its stop index 1
    and BD009 as 3; bus-17 (BD001 .. BD007) reads seq 1 as BD002, bus-55 (BD003 .. BD010)
    seq 3 as BD006 (the thirty-fifth pass's echo-code collisions r-02094, r-00313)."""
    from busbell._gtfs import Stop, Trip

    pats = {
        "17": ("BD001", "BD002", "BD003", "BD004", "BD005", "BD006", "BD007"),
        "G6000": ("BD003", "BD005", "BD006", "BD009", "SE001", "SE002"),
        "55": ("BD003", "BD004", "BD005", "BD006", "BD008", "BD009", "BD010"),
    }
    trips = {
        r: Trip(f"T{r}", r, 0, "WD", ids, (None,) * len(ids), (None,) * len(ids), (0.0,) * len(ids))
        for r, ids in pats.items()
    }
    stops = {s: Stop(s, s, 0.0, 0.0) for ids in pats.values() for s in ids}
    feed = Feed("Asia/Seoul", stops, {r: r for r in pats}, trips)
    vehicle = VehicleContext(feed)
    amb = EchoSeqs(feed, vehicle, reach_m=0.0)  # (the stops are not placed: no reach)
    assert not amb(4, 1)  # no trip: no stops
    vehicle.stop_ids = pats["17"]
    # at BD005 (its index 4): G6000 sends 1 there, 55 sends 2; its own index is no collision
    assert [s for s in range(8) if amb(4, s)] == [1, 2]
    assert [s for s in range(8) if amb(0, s)] == []  # BD001: 17's only
    assert not amb(7, 1)  # (past the trip's stops)
    vehicle.stop_ids = pats["55"]
    assert [s for s in range(8) if amb(5, s)] == [3]  # BD009: G6000's index 3
    assert [s for s in range(8) if amb(2, s)] == [1, 4]  # BD005: G6000 1, 17 4


def test_echo_seqs_name_an_echos_stop_within_reach_of_the_bus() -> None:
    """Forty-first pass: a route looping back, S4 300 m from S1 (S0 .. S5, 800-m hops). Coming
    to S4, an echo since S1 may be someone's standing there who heard the bus without a
    gap since it served S1 (its beacon ~100 m off, the bus ~400 m on in a 30-s gap, the
    token heard ~100 m off): within ``echo_reach_m``. Since S0 or S2, 850 m off, nobody
    standing still holds it. The bus's latest fix is where it hears the stretch; without a
    fix, the stop it is at or coming to."""
    from busbell._geo import offset_m
    from busbell._gtfs import Stop, Trip

    east_north = [(0, 0), (800, 0), (1600, 0), (1600, 300), (800, 300), (0, 300)]
    ids = tuple(f"S{i}" for i in range(len(east_north)))
    stops = {
        s: Stop(s, s, *offset_m(37.5, 127.0, n, e))
        for s, (e, n) in zip(ids, east_north, strict=True)
    }
    n = len(ids)
    trips = {"L": Trip("TL", "L", 0, "WD", ids, (None,) * n, (None,) * n, (0.0,) * n)}
    feed = Feed("Asia/Seoul", stops, {"L": "L"}, trips)
    vehicle = VehicleContext(feed)
    vehicle.stop_ids = ids
    amb = EchoSeqs(feed, vehicle, reach_m=600.0)
    # no fix: the stop it is coming to, S4
    assert [s for s in range(8) if amb(4, s)] == [1, 4]  # S1 300 m off; S4 itself
    vehicle.lat, vehicle.lon = offset_m(37.5, 127.0, 300, 900)  # 100 m before S4's doors
    assert [s for s in range(8) if amb(4, s)] == [1, 4]  # S1 316 m off, S4 100 m; S3 700 m
    vehicle.lat, vehicle.lon = offset_m(37.5, 127.0, 300, 1500)  # just past S3
    # S2 316 m off, S3 100 m; S4 700 m, S1 762 m: not
    assert [s for s in range(8) if amb(4, s)] == [2, 3]
    assert not EchoSeqs(feed, vehicle, reach_m=0.0)(4, 3)  # 0: none within reach
