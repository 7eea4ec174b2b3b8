"""What the bell core hands to the fare store: a missed stop, before it is numbered.

The bell core (sans-I/O) produces :class:`MissedDraft`; the event builder assigns
``bus_id``, ``seq``, ``prev``, ``event_id`` and ``sig`` to make a ``missed`` chain record
(``docs/protocol.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["MissedDraft", "PassedStop"]


@dataclass(frozen=True, slots=True)
class PassedStop:
    """The bus's closest approach to a stop it did not stop at (GNSS time and fix)."""

    t: float
    lat: float
    lon: float
    speed_mps: float
    distance_m: float


@dataclass(frozen=True, slots=True)
class MissedDraft:
    """A wait the bus showed and then passed without opening its doors.

    Attributes:
        request_id: the wait's request id.
        route_id: the route the bus drove (the wait's route).
        trip_id: the trip, if known.
        stop_id: the stop it passed.
        wait: the wait payload as the bus received it.
        passed: the closest approach.
    """

    request_id: str
    route_id: str
    trip_id: str | None
    stop_id: str
    wait: dict[str, Any]
    passed: PassedStop

    def to_event_fields(self) -> dict[str, Any]:
        """The record fields this draft fixes (everything but the chain and ``sig``)."""
        p = self.passed
        return {
            "v": 1,
            "type": "missed",
            "request_id": self.request_id,
            "route_id": self.route_id,
            "trip_id": self.trip_id,
            "stop_id": self.stop_id,
            "wait": dict(self.wait),
            "passed": {
                "t": p.t,
                "lat": round(p.lat, 7),
                "lon": round(p.lon, 7),
                "speed_mps": round(p.speed_mps, 2),
                "distance_m": round(p.distance_m, 1),
            },
            "doors_opened": False,
        }
