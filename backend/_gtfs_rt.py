"""GTFS-Realtime VehiclePositions from the buses' retained MQTT state.

:class:`FleetView` is fed the edges' retained messages (``buses/{bus}/vehicle/gnss``,
``/vehicle/trip``, ``/occupancy``, ``/status``) and keeps the latest state per bus;
:func:`build_feed` turns it into a GTFS-Realtime ``FeedMessage`` with positions and an
``occupancy_status`` derived from the riders on board (the edge's occupancy count).
Malformed messages are counted and ignored (never raise).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.transit import gtfs_realtime_pb2

from busbell._logging import get_logger
from busbell._rejects import RejectLog
from busbell._safejson import JsonLimits, JsonRejected, loads_object
from busbell._topics import Topics

__all__ = [
    "FleetView",
    "OccupancyThresholds",
    "VehicleState",
    "build_feed",
    "feed_to_json",
    "occupancy_status",
]

log = get_logger("backend.gtfs_rt")

_OCC = gtfs_realtime_pb2.VehiclePosition.OccupancyStatus


@dataclass(frozen=True, slots=True)
class OccupancyThresholds:
    """How riders on board map to a GTFS-Realtime occupancy status.

    Attributes:
        seats: seats on a bus.
        capacity: seats plus standing places.
    """

    seats: int = 25
    capacity: int = 60


def occupancy_status(on_board: int, th: OccupancyThresholds = OccupancyThresholds()) -> int:
    """The ``VehiclePosition.OccupancyStatus`` value for ``on_board`` riders.

    ``EMPTY`` at 0; ``MANY_SEATS_AVAILABLE`` below half the seats; ``FEW_SEATS_AVAILABLE``
    below the seats; ``STANDING_ROOM_ONLY`` below 90 % of capacity;
    ``CRUSHED_STANDING_ROOM_ONLY`` below capacity; ``FULL`` from capacity on.
    """
    if on_board <= 0:
        return int(_OCC.EMPTY)
    if on_board < th.seats / 2:
        return int(_OCC.MANY_SEATS_AVAILABLE)
    if on_board < th.seats:
        return int(_OCC.FEW_SEATS_AVAILABLE)
    if on_board < 0.9 * th.capacity:
        return int(_OCC.STANDING_ROOM_ONLY)
    if on_board < th.capacity:
        return int(_OCC.CRUSHED_STANDING_ROOM_ONLY)
    return int(_OCC.FULL)


@dataclass(slots=True)
class VehicleState:
    """The latest known state of one bus."""

    bus_id: str
    lat: float | None = None
    lon: float | None = None
    speed_mps: float | None = None
    heading: float | None = None
    position_t: float | None = None
    on_board: int | None = None
    occupancy_t: float | None = None
    route_id: str | None = None
    direction_id: int | None = None
    trip_id: str | None = None
    online: bool = True


def _num(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


FLEET_LIMITS = JsonLimits(max_bytes=64 * 1024, max_depth=6)
"""Vehicle, occupancy and status messages (a bus's status is a few KB, depth 4)."""


@dataclass
class FleetView:
    """Latest vehicle state per bus, from retained MQTT messages.

    Args:
        topics: topic names (prefix).
    """

    topics: Topics
    vehicles: dict[str, VehicleState] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)
    _rejects: RejectLog = field(
        default_factory=lambda: RejectLog(log, "vehicle_message_rejected"), repr=False
    )

    def _vehicle(self, bus_id: str) -> VehicleState:
        v = self.vehicles.get(bus_id)
        if v is None:
            v = self.vehicles[bus_id] = VehicleState(bus_id)
        return v

    def on_message(self, topic: str, payload: bytes, *, now: float | None = None) -> bool:
        """Apply one message; returns whether it changed the view."""
        parsed = self.topics.parse(topic)
        if parsed is None or parsed.kind not in (
            "vehicle_gnss",
            "vehicle_trip",
            "occupancy",
            "status",
        ):
            return False
        bus_id = parsed.ids["bus"]
        if not payload:  # a cleared retained message
            if parsed.kind == "status":
                self.vehicles.pop(bus_id, None)
            return False
        try:
            obj: Any = loads_object(payload, FLEET_LIMITS)
        except JsonRejected as exc:
            return self._reject(parsed.kind, bus_id, exc.reason)
        t_now = time.time() if now is None else now
        if parsed.kind == "vehicle_gnss":
            lat, lon = _num(obj.get("lat")), _num(obj.get("lon"))
            if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
                return self._reject(parsed.kind, bus_id, "bad_position")
            v = self._vehicle(bus_id)
            v.lat, v.lon = lat, lon
            v.speed_mps = _num(obj.get("speed_mps"))
            v.heading = _num(obj.get("heading"))
            v.position_t = _num(obj.get("t")) or t_now
        elif parsed.kind == "occupancy":
            on_board = obj.get("on_board")
            if isinstance(on_board, bool) or not isinstance(on_board, int) or on_board < 0:
                return self._reject(parsed.kind, bus_id, "bad_on_board")
            v = self._vehicle(bus_id)
            v.on_board = on_board
            v.occupancy_t = _num(obj.get("t")) or t_now
        elif parsed.kind == "vehicle_trip":
            route_id = obj.get("route_id")
            if not isinstance(route_id, str) or not route_id:
                return self._reject(parsed.kind, bus_id, "bad_route")
            v = self._vehicle(bus_id)
            v.route_id = route_id
            direction = obj.get("direction_id")
            v.direction_id = direction if direction in (0, 1) else None
            trip = obj.get("trip_id")
            v.trip_id = trip if isinstance(trip, str) and trip else None
        else:
            state = obj.get("state")
            if state not in ("online", "offline"):
                return self._reject(parsed.kind, bus_id, "bad_state")
            self._vehicle(bus_id).online = state == "online"
        return True

    def _reject(self, kind: str, bus_id: str, reason: str) -> bool:
        self.rejected[reason] += 1
        self._rejects.reject(reason, kind=kind, bus_id=bus_id)
        return False


def build_feed(
    view: FleetView,
    *,
    now: float | None = None,
    max_age_s: float = 300.0,
    thresholds: OccupancyThresholds = OccupancyThresholds(),
) -> gtfs_realtime_pb2.FeedMessage:
    """A full-dataset GTFS-Realtime feed of the online buses with a recent position.

    Args:
        view: the fleet state.
        now: UNIX time of the feed.
        max_age_s: positions older than this are left out.
        thresholds: the occupancy mapping.
    """
    t_now = time.time() if now is None else now
    msg = gtfs_realtime_pb2.FeedMessage()
    msg.header.gtfs_realtime_version = "2.0"
    msg.header.incrementality = gtfs_realtime_pb2.FeedHeader.FULL_DATASET
    msg.header.timestamp = int(t_now)
    for bus_id in sorted(view.vehicles):
        v = view.vehicles[bus_id]
        if not v.online or v.lat is None or v.lon is None or v.position_t is None:
            continue
        if t_now - v.position_t > max_age_s:
            continue
        entity = msg.entity.add()
        entity.id = bus_id
        vp = entity.vehicle
        vp.vehicle.id = bus_id
        vp.vehicle.label = bus_id
        vp.position.latitude = v.lat
        vp.position.longitude = v.lon
        if v.speed_mps is not None:
            vp.position.speed = v.speed_mps
        if v.heading is not None:
            vp.position.bearing = v.heading
        vp.timestamp = int(v.position_t)
        if v.route_id is not None:
            vp.trip.route_id = v.route_id
            if v.direction_id is not None:
                vp.trip.direction_id = v.direction_id
            if v.trip_id is not None:
                vp.trip.trip_id = v.trip_id
        if v.on_board is not None and (v.occupancy_t is None or t_now - v.occupancy_t <= max_age_s):
            vp.occupancy_status = occupancy_status(v.on_board, thresholds)  # type: ignore[assignment]
            vp.occupancy_percentage = min(
                100 * v.on_board // max(1, thresholds.capacity), 2**31 - 1
            )
    return msg


def feed_to_json(msg: gtfs_realtime_pb2.FeedMessage) -> dict[str, Any]:
    """The feed as JSON (protobuf's canonical JSON mapping, field names as in the proto)."""
    out: dict[str, Any] = MessageToDict(msg, preserving_proto_field_name=True)
    return out
