"""Synthetic segment drafts for edge store and uplink tests (moved out of
benchmarks/edge_backlog.py)."""

from __future__ import annotations

import hashlib

from edge._segment import SegmentDraft, SegmentEnd


def synthetic_draft(i: int, t0: float = 1_700_000_000.0) -> SegmentDraft:
    """A valid, deterministic segment draft number ``i`` (for tests and benchmarks)."""
    h = hashlib.sha256(i.to_bytes(8, "big")).hexdigest()
    start = t0 + 37.0 * i
    return SegmentDraft(
        rid=h[:24],
        interval=int(start // 600),
        route_id="R100",
        trip_id=f"T{i // 50}",
        start=SegmentEnd(start, f"S{i % 40}", "boarded"),
        end=SegmentEnd(start + 300.0, f"S{(i + 7) % 40}", "alighted"),
        distance_m=1234.5,
        proof_first=h[:48],
        proof_last=h[16:64],
        evidence={"adverts": 120, "rssi_median": -61},
    )


__all__ = ["synthetic_draft"]
