"""The simulator's truth of a kept scenario directory, as the census tools read it."""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["legs"]


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
