"""What the presence classifier hands to the fare store: one closed rid segment.

The classifier (sans-I/O) produces :class:`SegmentDraft`; the event builder assigns
``seq``, ``prev``, ``event_id`` and ``sig`` to make a fare event v1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SegmentDraft", "SegmentEnd"]


@dataclass(frozen=True, slots=True)
class SegmentEnd:
    """The start or end of a segment: time (GNSS), stop (or ``None``) and cause."""

    t: float
    stop_id: str | None
    cause: str


@dataclass(frozen=True, slots=True)
class SegmentDraft:
    """A closed presence segment of one rid, before it is numbered and signed.

    Attributes:
        rid: the 12-byte rid in hex (24 characters).
        interval: the rid's 600-s interval.
        route_id: the trip's route, or ``None`` when the driver had not signed on.
        trip_id: the trip, if known.
        start: ``boarded`` or ``continued``.
        end: ``alighted``, ``rotated`` or ``lost``.
        distance_m: distance travelled by the bus during the segment.
        proof_first: hex of the first accepted advertisement payload.
        proof_last: hex of the last accepted advertisement payload.
        evidence: classifier evidence (advert counts, RSSI statistics, flags seen).
    """

    rid: str
    interval: int
    route_id: str | None
    trip_id: str | None
    start: SegmentEnd
    end: SegmentEnd
    distance_m: float
    proof_first: str
    proof_last: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_event_fields(self) -> dict[str, Any]:
        """The fare-event fields this draft fixes (everything but the chain and sig)."""
        return {
            "v": 1,
            "type": "segment",
            "rid": self.rid,
            "interval": self.interval,
            "route_id": self.route_id,
            "trip_id": self.trip_id,
            "start": {"t": self.start.t, "stop_id": self.start.stop_id, "cause": self.start.cause},
            "end": {"t": self.end.t, "stop_id": self.end.stop_id, "cause": self.end.cause},
            "distance_m": round(self.distance_m, 1),
            "proof": {"first": self.proof_first, "last": self.proof_last},
            "evidence": self.evidence,
        }
