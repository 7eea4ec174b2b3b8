"""Benchmark: busbell.loads_bounded against a bare json.loads on the same payloads.

    python -m benchmarks.busbell_safejson [--repeat N]

Prints, per payload, the median time of each over N runs (same process, interleaved)
and the ratio bounded / bare. The payloads are what the daemons parse: a 1,000-event
fares batch (canonical events as the edge sends them), a display model, a vehicle GNSS
message, and a 300-rider deny list.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from busbell._safejson import JsonLimits, loads_bounded


def _event(i: int) -> dict[str, Any]:
    h = f"{i:064x}"
    return {
        "v": 1, "type": "segment", "bus_id": "bus-0001", "seq": i + 1, "event_id": h[:32],
        "prev": h, "rid": h[:24], "interval": 2833333 + i // 10, "route_id": "G1300",
        "trip_id": f"T{i // 50}", "start": {"t": 1.7e9 + i, "stop_id": "S01", "cause": "boarded"},
        "end": {"t": 1.7e9 + i + 300.5, "stop_id": "S07", "cause": "alighted"},
        "distance_m": 1234.5, "proof": {"first": h[:48], "last": h[16:64]},
        "evidence": {"adverts": 120, "rssi_median": -61.5}, "sig": "A" * 86 + "==",
    }  # fmt: skip


PAYLOADS: dict[str, bytes] = {
    "fares batch, 1,000 events": json.dumps(
        {"bus_id": "bus-0001", "events": [_event(i) for i in range(1000)]},
        separators=(",", ":"),
    ).encode(),
    "display model, 8 stops": json.dumps(
        {
            "v": 1,
            "bus_id": "bus-0001",
            "t": 1.7e9,
            "route_id": "G1300",
            "trip_id": "T1",
            "online": True,
            "on_board": 31,
            "next_stop": None,
            "stops": [
                {
                    "stop_id": f"S{i}",
                    "name": f"Stop {i}",
                    "seq": i,
                    "waits": 1,
                    "assist": False,
                    "stop_requested": False,
                    "request_ids": ["w-1", "w-2"],
                }
                for i in range(8)
            ],
        }
    ).encode(),
    "vehicle GNSS message": b'{"t":1700000000.25,"lat":37.55,"lon":127.01,"speed_mps":8.5}',
    "deny list, 300 riders": json.dumps(
        {"v": 1, "version": 7, "rids": [f"{i:024x}" for i in range(300 * 288)], "devices": []}
    ).encode(),
}


def _median(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    """Run the benchmark and print one line per payload."""
    ap = argparse.ArgumentParser(description="loads_bounded vs json.loads")
    ap.add_argument("--repeat", type=int, default=50)
    a = ap.parse_args()
    limits = JsonLimits(max_bytes=64 * 1024 * 1024, max_depth=16)
    print(f"{'payload':28} {'bytes':>10} {'json.loads':>12} {'bounded':>12} {'ratio':>6}")
    for name, data in PAYLOADS.items():
        assert loads_bounded(data, limits) == json.loads(data)
        bare = bounded = 0.0
        for _ in range(3):  # interleaved rounds: the machine is shared
            bare += _median(functools.partial(json.loads, data), a.repeat)
            bounded += _median(functools.partial(loads_bounded, data, limits), a.repeat)
        print(
            f"{name:28} {len(data):>10,} {bare / 3 * 1e3:>10.3f}ms {bounded / 3 * 1e3:>10.3f}ms "
            f"{bounded / bare:>6.2f}"
        )


if __name__ == "__main__":
    main()
