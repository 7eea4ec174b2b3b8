"""GTFS-Realtime vehicle positions with occupancy from the edges' retained messages."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from google.transit import gtfs_realtime_pb2

from backend._api import ApiState, create_app
from backend._db import create_engine, migrate
from backend._gtfs_rt import FleetView, OccupancyThresholds, build_feed, occupancy_status
from busbell import Topics

P = "x/busbell/v1"
NOW = 1_762_500_000.0
OCC = gtfs_realtime_pb2.VehiclePosition.OccupancyStatus


def _feed_view() -> FleetView:
    view = FleetView(Topics(P))
    gnss = {"t": NOW - 5, "lat": 37.5, "lon": 127.1, "speed_mps": 8.5, "heading": 90.0}
    assert view.on_message(f"{P}/buses/b1/vehicle/gnss", json.dumps(gnss).encode(), now=NOW)
    assert view.on_message(f"{P}/buses/b1/occupancy", b'{"on_board": 30, "t": %d}' % NOW, now=NOW)
    trip = {"t": NOW, "route_id": "R1", "direction_id": 1, "trip_id": "T1R"}
    assert view.on_message(f"{P}/buses/b1/vehicle/trip", json.dumps(trip).encode(), now=NOW)
    view.on_message(f"{P}/buses/b2/vehicle/gnss", b'{"t": 1, "lat": 37.0, "lon": 127.0}', now=NOW)
    view.on_message(f"{P}/buses/b3/vehicle/gnss", b'{"lat": 37.0, "lon": 127.0}', now=NOW)
    view.on_message(f"{P}/buses/b3/status", b'{"state": "offline"}', now=NOW)
    view.on_message(f"{P}/buses/b4/vehicle/gnss", b'{"lat": 37.2, "lon": 127.2}', now=NOW)
    return view


def test_occupancy_mapping() -> None:
    th = OccupancyThresholds(seats=20, capacity=50)
    assert occupancy_status(0, th) == OCC.EMPTY
    assert occupancy_status(9, th) == OCC.MANY_SEATS_AVAILABLE
    assert occupancy_status(19, th) == OCC.FEW_SEATS_AVAILABLE
    assert occupancy_status(30, th) == OCC.STANDING_ROOM_ONLY
    assert occupancy_status(46, th) == OCC.CRUSHED_STANDING_ROOM_ONLY
    assert occupancy_status(50, th) == OCC.FULL


def test_feed_positions_occupancy_and_staleness() -> None:
    msg = build_feed(_feed_view(), now=NOW)
    assert msg.header.gtfs_realtime_version == "2.0"
    ids = [e.id for e in msg.entity]
    assert ids == ["b1", "b4"]  # b2 stale, b3 offline
    vp = msg.entity[0].vehicle
    assert vp.position.latitude == 37.5
    assert abs(vp.position.longitude - 127.1) < 1e-5
    assert vp.position.speed == 8.5
    assert vp.trip.route_id == "R1"
    assert vp.trip.trip_id == "T1R"
    assert vp.trip.direction_id == 1
    assert vp.occupancy_status == OCC.STANDING_ROOM_ONLY
    assert vp.occupancy_percentage == 50
    assert not msg.entity[1].vehicle.HasField("occupancy_status")


def test_bad_messages_are_counted_not_raised() -> None:
    view = FleetView(Topics(P))
    assert not view.on_message(f"{P}/buses/b1/vehicle/gnss", b"nope")
    assert not view.on_message(f"{P}/buses/b1/vehicle/gnss", b'{"lat": 99, "lon": 0}')
    assert not view.on_message(f"{P}/buses/b1/occupancy", b'{"on_board": -1}')
    assert not view.on_message(f"{P}/buses/b1/occupancy", b'{"on_board": true}')
    assert not view.on_message(f"{P}/buses/b1/vehicle/trip", b'{"route_id": ""}')
    assert not view.on_message(f"{P}/buses/b1/status", b'{"state": "weird"}')
    assert not view.on_message(f"{P}/buses/b1/display", b"{}")
    assert not view.on_message("other/topic", b"{}")
    assert not view.on_message(f"{P}/buses/b1/status", b"[" * 100_000 + b"]" * 100_000)
    assert not view.on_message(f"{P}/buses/b1/status", b"[" * 5000 + b"]" * 5000)
    assert not view.on_message(f"{P}/buses/b1/vehicle/gnss", b'{"lat": NaN, "lon": 0}')
    assert not view.on_message(f"{P}/buses/b1/occupancy", b"[]")
    assert view.rejected == {
        "not_json": 1,
        "too_large": 1,
        "too_deep": 1,
        "non_finite": 1,
        "not_object": 1,
        "bad_position": 1,
        "bad_on_board": 2,
        "bad_route": 1,
        "bad_state": 1,
    }
    view.on_message(f"{P}/buses/b1/status", b'{"state": "online"}')
    assert "b1" in view.vehicles
    assert not view.on_message(f"{P}/buses/b1/status", b"")  # retained status cleared
    assert "b1" not in view.vehicles
    assert not view.on_message(f"{P}/buses/b1/occupancy", b"")


async def test_endpoint_protobuf_and_json(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/g.db")
    await migrate(engine)
    state = ApiState(engine=engine, topics=Topics(P), fleet=_feed_view(), clock=lambda: NOW)
    app = create_app(state)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        r = await c.get("/gtfs-rt/vehicle-positions")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/x-protobuf"
        msg = gtfs_realtime_pb2.FeedMessage()
        msg.ParseFromString(r.content)
        assert [e.id for e in msg.entity] == ["b1", "b4"]
        r = await c.get("/gtfs-rt/vehicle-positions", params={"format": "json"})
        body = r.json()
        assert body["entity"][0]["vehicle"]["occupancy_status"] == "STANDING_ROOM_ONLY"
        assert body["header"]["timestamp"] == str(int(NOW))
        r = await c.get("/gtfs-rt/vehicle-positions", params={"format": "xml"})
        assert r.status_code == 422
    await engine.dispose()
