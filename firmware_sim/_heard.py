"""Legs the bus never heard: no advert of the rider's token reached its scanner during the ride.

The scorer's observable legs exclude legs no bus could charge. truth.json lists those
the simulator knows by construction (a silent iPhone, a flat battery, a clock beyond the
tq window). One more kind is only known once the radio has been drawn: the rider's token
sent, but not one of its adverts during the ride (boarding to alighting, true time) is in
the bus's trace (every one lost to distance, body, bag, shell, collisions or the extra
loss of a cell). No classifier can charge such a leg; it is ``radio_unheard``.

It is computed from the scenario directory as written (``RIDERS.csv``, ``traces/``),
not from the generator's internals, so it holds for runs kept by older code too
(``busbell sim score --sweep --rescore``). The window is the leg's own: adverts heard
while the rider waited at the stop or after they left do not make it observable.

A leg heard even once stays observable: where to put a higher bar would be a choice,
and the report lists misses by adverts heard instead (``busbell edge trace-rider``).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from busbell import derive_rider_keys, interval_of, rid_for_interval

__all__ = [
    "RID_SLACK_S",
    "UNHEARD",
    "leg_windows",
    "person_rids",
    "trace_adverts",
    "unheard_legs",
]

UNHEARD = "radio_unheard"
"""The ``reason`` of a leg the bus never heard, as in truth.json's ``unobservable_legs``."""

RID_SLACK_S = 180.0
"""How far beyond a leg's ends a rider's rid intervals are looked up: a token's clock may
be off (the sweep draws offsets to +-55 s) and a payload is refreshed only now and then."""


def leg_windows(
    truth_journeys: Sequence[dict[str, Any]],
) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(rider, bus) -> the (board_t, alight_t) of each true leg."""
    out: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for j in truth_journeys:
        for leg in j.get("legs", []):
            if leg.get("board_t") is None or leg.get("alight_t") is None:
                continue
            key = (str(j["rider_id"]), str(leg["bus_id"]))
            out.setdefault(key, []).append((float(leg["board_t"]), float(leg["alight_t"])))
    return out


def _rid_owners(
    riders_csv: Path, windows: dict[tuple[str, str], list[tuple[float, float]]]
) -> dict[bytes, str]:
    """Every rid a rider with a leg may have sent during any of their legs -> the rider."""
    keys: dict[str, bytes] = {}
    with riders_csv.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            keys[row["rider_id"]] = bytes.fromhex(row["token_key"])
    out: dict[bytes, str] = {}
    for (rider, _bus), spans in windows.items():
        token_key = keys.get(rider)
        if token_key is None:
            continue
        rid_key = derive_rider_keys(token_key).rid_key
        for a, z in spans:
            first, last = interval_of(a - RID_SLACK_S), interval_of(z + RID_SLACK_S)
            for i in range(first, last + 1):
                out[rid_for_interval(rid_key, i)] = rider
    return out


def person_rids(d: Path, t0: float, t1: float) -> dict[bytes, str]:
    """Every rid any person of scenario ``d`` sent from ``t0`` to ``t1`` -> that person.

    ``RIDERS.csv`` lists everybody with a token (riders, waiters, pedestrians, car
    occupants); one 600-s interval either side is added for clocks that are off.
    """
    out: dict[bytes, str] = {}
    with (d / "RIDERS.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            k = derive_rider_keys(bytes.fromhex(row["token_key"])).rid_key
            for i in range(interval_of(t0) - 1, interval_of(t1) + 2):
                out[rid_for_interval(k, i)] = row["rider_id"]
    return out


def _level(v: object) -> int:
    """An advert line's RSSI, -128 when it has none that is a finite number."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return -128
    return int(v)


def trace_adverts(trace: Path) -> Iterator[tuple[float, int, list[str]]]:
    """(t, RSSI, payload hex strings) of each advert line of a trace; other lines are skipped.

    An advert line without a numeric ``rssi`` is yielded with -128 (its payloads still count).
    """
    with trace.open(encoding="utf-8") as f:
        for line in f:
            if '"adv"' not in line:
                continue
            try:
                rec = json.loads(line)
                yield (
                    float(rec["t"]),
                    _level(rec.get("rssi")),
                    [str(v) for v in rec["mfr"].values()],
                )
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a fault scenario's broken line: the edge rejects it too


def unheard_legs(
    scenario_dir: Path, truth_journeys: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The legs of which the bus's trace holds no advert of the rider during the ride.

    Args:
        scenario_dir: a generated scenario (``RIDERS.csv``, ``traces/BUS.jsonl``).
        truth_journeys: its JOURNEYS.jsonl objects.

    Returns:
        One ``{"rider_id", "bus_id", "board_t", "reason": "radio_unheard"}`` per leg,
        the shape of truth.json's ``unobservable_legs``.
    """
    windows = leg_windows(truth_journeys)
    owners = _rid_owners(scenario_dir / "RIDERS.csv", windows)
    heard: set[tuple[str, str, float]] = set()
    for trace in sorted((scenario_dir / "traces").glob("*.jsonl")):
        bus = trace.stem
        for t, _rssi, payloads in trace_adverts(trace):
            for hexed in payloads:
                try:
                    rid = bytes.fromhex(hexed[6:30])
                except ValueError:
                    continue
                rider = owners.get(rid)
                if rider is None:
                    continue
                for a, z in windows.get((rider, bus), ()):
                    if a <= t <= z:
                        heard.add((rider, bus, a))
    return [
        {"rider_id": rider, "bus_id": bus, "board_t": a, "reason": UNHEARD}
        for (rider, bus), spans in sorted(windows.items())
        for a, _z in spans
        if (rider, bus, a) not in heard
    ]
