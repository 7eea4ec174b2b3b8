"""The simulator's truth of a kept scenario directory, as the census tools read it."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from busbell import derive_rider_keys, interval_of, rid_for_interval

__all__ = ["legs", "owners"]


def owners(d: Path, t0: float, t1: float) -> dict[bytes, str]:
    """Every rid any person of the scenario sent from ``t0`` to ``t1`` -> that person."""
    out: dict[bytes, str] = {}
    with (d / "RIDERS.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            k = derive_rider_keys(bytes.fromhex(row["token_key"])).rid_key
            for i in range(interval_of(t0) - 1, interval_of(t1) + 2):
                out[rid_for_interval(k, i)] = row["rider_id"]
    return out


def legs(d: Path) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(person, bus) -> the (board_t, alight_t) of each true leg (``inf``: never alighted)."""
    out: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with (d / "JOURNEYS.jsonl").open(encoding="utf-8") as f:
        for line in f:
            j = json.loads(line)
            for leg in j["legs"]:
                if leg.get("board_t") is None:
                    continue
                end = leg["alight_t"] if leg.get("alight_t") is not None else math.inf
                out.setdefault((j["rider_id"], leg["bus_id"]), []).append((leg["board_t"], end))
    return out
