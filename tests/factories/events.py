"""Chain records for tests: an unsigned v1 ``segment`` fare event."""

from __future__ import annotations

from typing import Any

from busbell import GENESIS_PREV, derive_event_id

__all__ = ["segment_event"]


def segment_event(
    seq: int = 1,
    prev: str = GENESIS_PREV,
    *,
    end_cause: str = "rotated",
    evidence: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An unsigned ``segment`` record of ``bus-0001`` (``evidence`` default: two fields)."""
    return {
        "v": 1,
        "type": "segment",
        "bus_id": "bus-0001",
        "seq": seq,
        "event_id": derive_event_id("bus-0001", seq, "ab" * 12, 1700000000.0),
        "prev": prev,
        "rid": "ab" * 12,
        "interval": 2833333,
        "route_id": "G6000",
        "trip_id": None,
        "start": {"t": 1700000000.0, "stop_id": "S1", "cause": "boarded"},
        "end": {"t": 1700000300.5, "stop_id": None, "cause": end_cause},
        "distance_m": 1234.5,
        "proof": {"first": "21" * 24, "last": "21" * 24},
        "evidence": {"n_adv": 120, "rssi_max": -48} if evidence is None else evidence,
    }
