"""Repricing a recorded journey and explaining its fare line by line (``backend explain``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from backend._fare_engine import FareInputError, FareLeg

if TYPE_CHECKING:
    from backend._journeys import JourneyBuilder

__all__ = ["explain_journey"]


def explain_journey(
    builder: JourneyBuilder, journey: Mapping[str, Any], *, category: str | None = None
) -> tuple[list[str], bool]:
    """Reprice a JOURNEYS.jsonl object and explain the fare line by line.

    Distances come from GTFS when the leg's stops are on its trip or route, else from
    the leg's ``distance_m``.

    Args:
        builder: the journey builder (feed, networks, engine).
        journey: a journey object (``rider_id``, ``legs``, ``fare_krw``).
        category: category to price (default: the journey's, else the policy's).

    Returns:
        The lines, and whether the recomputed fare differs from the recorded one.

    Raises:
        FareInputError: a leg lacks times or has invalid values.
    """
    legs = journey.get("legs")
    if not isinstance(legs, list) or not legs:
        raise FareInputError("journey has no legs", field="legs")
    cat = category or journey.get("category") or builder.policy.category
    lines = [f"journey of rider {journey.get('rider_id')}: {len(legs)} leg(s), category {cat}"]
    fare_legs: list[FareLeg] = []
    for n, raw in enumerate(legs, 1):
        if not isinstance(raw, Mapping):
            raise FareInputError(f"leg {n} is not an object", field=f"legs[{n - 1}]")
        route_id = raw.get("route_id")
        board, alight = raw.get("board_stop_id"), raw.get("alight_stop_id")
        try:
            board_t, alight_t = float(raw["board_t"]), float(raw["alight_t"])
        except (KeyError, TypeError, ValueError):
            raise FareInputError(
                f"leg {n} needs numeric board_t and alight_t", field=f"legs[{n - 1}]"
            ) from None
        recorded = raw.get("distance_m")
        source = raw.get("distance_source")
        distance = None
        if source != "penalty":
            distance = builder.gtfs_distance(route_id, raw.get("trip_id"), board, alight)
        if distance is not None:
            how = f"GTFS shape_dist_traveled {board} -> {alight}"
        elif isinstance(recorded, int | float):
            distance = float(recorded)
            how = "recorded distance_m" + (" (lost-leg penalty)" if source == "penalty" else "")
        else:
            distance = 0.0
            how = "unknown (no GTFS match, no distance_m): 0 m"
        networks = builder.networks
        network = networks.network_for(route_id) if route_id else networks.default_network
        lines.append(
            f"leg {n} distance: route {route_id} bus {raw.get('bus_id')}, "
            f"{distance / 1000:.3f} km from {how}"
        )
        fare_legs.append(
            FareLeg(
                route_id=route_id or "",
                network_id=network,
                board_t=board_t,
                alight_t=alight_t,
                distance_m=max(0.0, distance),
                board_stop_id=board,
                alight_stop_id=alight,
                bus_id=raw.get("bus_id"),
            )
        )
    quote = builder.engine.price(fare_legs, cat)
    lines.extend(quote.explain)
    recorded_fare = journey.get("fare_krw")
    mismatch = False
    if journey.get("charged") is False:
        lines.append(
            f"recorded: not charged (flags {', '.join(journey.get('flags') or []) or 'none'})"
        )
    elif isinstance(recorded_fare, int):
        mismatch = recorded_fare != quote.fare_krw
        verdict = "differs" if mismatch else "matches"
        lines.append(f"recorded fare: {recorded_fare:,} KRW ({verdict})")
    return lines, mismatch
