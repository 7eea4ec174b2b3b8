"""Benchmark: the event-id derivation against a bare SHA-256 of the same key bytes.

    python -m benchmarks.busbell_event_id [--records N] [--rounds R]

What ingest and settle check for every record (``event_id_mismatch``,
``backend._record_check``) and what the edge numbers its records with:
``busbell.derive_event_id`` (segments) and ``busbell.derive_missed_event_id`` (missed
records), called with a typed record's fields as the check calls them. The ceiling,
timed in the same process and interleaved: ``hashlib.sha256(key).hexdigest()`` of the
key's canonical bytes, computed beforehand (the hash alone, no serialisation). Also
timed when the tree has them: ``busbell._fare_types.derived_event_id`` (the typed
records' own copy of the derivation, before it was folded into the one), and the
derivation written out on Python's ``json`` (``canonical_bytes``, the contract's text).

Prints, per function, the best of R rounds over N records, µs per call and the ratio
to the bare hash. Run the same file against another tree (``PYTHONPATH``) to compare.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import timeit
from collections.abc import Callable
from typing import Any

import busbell._fare_types as fare_types
from busbell import GENESIS_PREV, canonical_bytes, derive_event_id, derive_missed_event_id
from busbell._fare_types import MissedRecord, SegmentEvent, convert_event


def _records(n: int) -> tuple[list[SegmentEvent], list[MissedRecord]]:
    segs: list[SegmentEvent] = []
    missed: list[MissedRecord] = []
    for i in range(n):
        t = 1_700_000_000.0 + i * 7.25
        seg = {
            "v": 1, "type": "segment", "bus_id": f"bus-{i % 50:04d}", "seq": i + 1,
            "event_id": "0" * 32, "prev": GENESIS_PREV, "rid": f"{i:024x}",
            "interval": int(t // 600), "route_id": "G1300", "trip_id": "T1",
            "start": {"t": t, "stop_id": "S01", "cause": "boarded"},
            "end": {"t": t + 300.5, "stop_id": "S07", "cause": "alighted"},
            "distance_m": 1234.5, "proof": {"first": "ab" * 24, "last": "cd" * 24},
            "evidence": {"adverts": 120},
        }  # fmt: skip
        wait = {
            "request_id": f"w-{i}", "route_id": "G1300", "stop_id": "S01", "t": t - 60,
            "expires_t": t + 600, "source": "app", "assist": False,
        }  # fmt: skip
        rec = {
            "v": 1, "type": "missed", "bus_id": f"bus-{i % 50:04d}", "seq": i + 1,
            "event_id": "0" * 32, "prev": GENESIS_PREV, "request_id": f"w-{i}",
            "route_id": "G1300", "trip_id": None, "stop_id": "S01", "wait": wait,
            "passed": {"t": t, "lat": 37.5, "lon": 127.0, "speed_mps": 8.0, "distance_m": 3.5},
            "doors_opened": False,
        }  # fmt: skip
        s = convert_event(seg, require_sig=False)
        m = convert_event(rec, require_sig=False)
        assert isinstance(s, SegmentEvent)
        assert isinstance(m, MissedRecord)
        segs.append(s)
        missed.append(m)
    return segs, missed


def _cases(segs: list[SegmentEvent], missed: list[MissedRecord]) -> dict[str, Callable[[], object]]:
    seg_keys = [canonical_bytes([r.bus_id, r.seq, r.rid, r.start.t]) for r in segs]
    missed_keys = [
        canonical_bytes(["missed", r.bus_id, r.seq, r.request_id, r.passed.t]) for r in missed
    ]
    sha = hashlib.sha256

    def spec(key: list[Any]) -> str:
        return sha(canonical_bytes(key)).hexdigest()[:32]

    cases: dict[str, Callable[[], object]] = {
        "bare sha256(key), segment": lambda: [sha(k).hexdigest() for k in seg_keys],
        "derive_event_id": lambda: [
            derive_event_id(r.bus_id, r.seq, r.rid, r.start.t) for r in segs
        ],
        "json derivation, segment": lambda: [
            spec([r.bus_id, r.seq, r.rid, r.start.t]) for r in segs
        ],
        "bare sha256(key), missed": lambda: [sha(k).hexdigest() for k in missed_keys],
        "derive_missed_event_id": lambda: [
            derive_missed_event_id(r.bus_id, r.seq, r.request_id, r.passed.t) for r in missed
        ],
        "json derivation, missed": lambda: [
            spec(["missed", r.bus_id, r.seq, r.request_id, r.passed.t]) for r in missed
        ],
    }
    old = getattr(fare_types, "derived_event_id", None)
    if old is not None:  # the typed records' own copy, before the fold
        cases["_fare_types.derived_event_id, segment"] = lambda: [old(r) for r in segs]
        cases["_fare_types.derived_event_id, missed"] = lambda: [old(r) for r in missed]
    return cases


def main() -> None:
    """Time each derivation and the bare hash; print µs per call and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=20_000, help="records per timed call")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (best kept)")
    args = ap.parse_args()
    segs, missed = _records(args.records)
    for r in segs[:50]:  # the figure is of the right derivation
        assert (
            derive_event_id(r.bus_id, r.seq, r.rid, r.start.t)
            == hashlib.sha256(canonical_bytes([r.bus_id, r.seq, r.rid, r.start.t])).hexdigest()[:32]
        )
    cases = _cases(segs, missed)
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(args.rounds):
        for name, fn in cases.items():
            best[name] = min(best[name], timeit.timeit(fn, number=1))
    per = {name: best[name] / args.records * 1e6 for name in cases}
    print(f"load average {os.getloadavg()[0]:.2f}, {args.records:,} records, best of {args.rounds}")
    print(f"{'':42} {'µs/call':>8} {'x bare':>7}")
    for name, us in per.items():
        bare = per["bare sha256(key), missed" if "missed" in name else "bare sha256(key), segment"]
        print(f"{name:42} {us:8.3f} {us / bare:7.2f}")


if __name__ == "__main__":
    main()
