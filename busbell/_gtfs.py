"""GTFS static loader: stops, routes, trips, stop times, shapes and Fares v2 networks.

Only what busbell uses is read. Each (route, direction) gets its stop pattern with the
distance of every stop along the route in metres: from ``shape_dist_traveled`` when the
feed gives it (busbell reads it as metres), otherwise the sum of straight-line hops
between consecutive stops.
"""

from __future__ import annotations

import csv
import itertools
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from busbell._errors import ContractError
from busbell._geo import haversine_m

__all__ = ["Feed", "Stop", "Trip", "TripPattern", "load_gtfs"]


@dataclass(frozen=True, slots=True)
class Stop:
    """A GTFS stop."""

    stop_id: str
    name: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Trip:
    """A GTFS trip with its stop times (seconds after midnight of the service day)."""

    trip_id: str
    route_id: str
    direction_id: int
    service_id: str
    stop_ids: tuple[str, ...]
    arrivals_s: tuple[int | None, ...]
    departures_s: tuple[int | None, ...]
    dist_m: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class TripPattern:
    """The stop sequence of a route in one direction, with distances along it."""

    route_id: str
    direction_id: int
    stop_ids: tuple[str, ...]
    dist_m: tuple[float, ...]

    def distance_between(self, from_stop: str, to_stop: str) -> float | None:
        """Metres along the pattern from one stop to a later one, or ``None``."""
        try:
            i = self.stop_ids.index(from_stop)
            j = self.stop_ids.index(to_stop, i)
        except ValueError:
            return None
        return self.dist_m[j] - self.dist_m[i]


@dataclass(slots=True)
class Feed:
    """A loaded GTFS static feed."""

    timezone: str
    stops: dict[str, Stop]
    routes: dict[str, str]
    """route_id -> route_short_name (or long name)."""
    trips: dict[str, Trip]
    networks: dict[str, str] = field(default_factory=dict)
    """route_id -> Fares v2 network_id (``route_networks.txt``)."""
    patterns: dict[tuple[str, int], TripPattern] = field(default_factory=dict)

    def pattern(self, route_id: str, direction_id: int) -> TripPattern | None:
        """The usual stop pattern of a route and direction."""
        return self.patterns.get((route_id, direction_id))

    def network_of(self, route_id: str, default: str | None = None) -> str | None:
        """The Fares v2 network id of a route, or ``default``."""
        return self.networks.get(route_id, default)


def _read(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        f = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115
    except OSError as exc:
        raise ContractError(
            f"GTFS: cannot read {path.name}: {exc.strerror}", field=path.name
        ) from None
    with f:
        reader = csv.DictReader(f)
        cols = {c.strip() for c in (reader.fieldnames or [])}
        missing = [c for c in required if c not in cols]
        if missing:
            raise ContractError(f"GTFS {path.name}: missing column(s) {missing}", field=path.name)
        for lineno, row in enumerate(reader, start=2):
            yield lineno, {k.strip(): (v or "").strip() for k, v in row.items() if k}


def _float(v: str, where: str) -> float:
    try:
        return float(v)
    except ValueError:
        raise ContractError(f"GTFS {where}: not a number: {v!r}", field=where) from None


def _time_s(v: str, where: str) -> int | None:
    if not v:
        return None
    try:
        h, m, s = (int(x) for x in v.split(":"))
    except ValueError:
        raise ContractError(f"GTFS {where}: not HH:MM:SS: {v!r}", field=where) from None
    return h * 3600 + m * 60 + s


def load_gtfs(directory: str | os.PathLike[str]) -> Feed:
    """Load a GTFS static directory.

    Raises:
        ContractError: naming the file, line and column of the first problem.
    """
    d = Path(directory)
    if not d.is_dir():
        raise ContractError(f"GTFS: {d} is not a directory", field="gtfs")
    tz = "Asia/Seoul"
    if (d / "agency.txt").exists():
        for _, row in _read(d / "agency.txt", ("agency_timezone",)):
            tz = row["agency_timezone"] or tz
            break
    stops: dict[str, Stop] = {}
    for n, row in _read(d / "stops.txt", ("stop_id", "stop_lat", "stop_lon")):
        where = f"stops.txt:{n}"
        stops[row["stop_id"]] = Stop(
            row["stop_id"],
            row.get("stop_name", ""),
            _float(row["stop_lat"], where + ":stop_lat"),
            _float(row["stop_lon"], where + ":stop_lon"),
        )
    routes: dict[str, str] = {}
    for _, row in _read(d / "routes.txt", ("route_id",)):
        routes[row["route_id"]] = row.get("route_short_name") or row.get("route_long_name", "")
    trip_meta: dict[str, tuple[str, int, str]] = {}
    for n, row in _read(d / "trips.txt", ("route_id", "trip_id")):
        if row["route_id"] not in routes:
            raise ContractError(f"GTFS trips.txt:{n}: unknown route_id {row['route_id']!r}")
        direction = int(row.get("direction_id") or 0)
        trip_meta[row["trip_id"]] = (row["route_id"], direction, row.get("service_id", ""))
    times: dict[str, list[tuple[int, str, int | None, int | None, float | None]]] = {}
    for n, row in _read(d / "stop_times.txt", ("trip_id", "stop_id", "stop_sequence")):
        where = f"stop_times.txt:{n}"
        if row["trip_id"] not in trip_meta:
            raise ContractError(f"GTFS {where}: unknown trip_id {row['trip_id']!r}")
        if row["stop_id"] not in stops:
            raise ContractError(f"GTFS {where}: unknown stop_id {row['stop_id']!r}")
        sdt = row.get("shape_dist_traveled", "")
        times.setdefault(row["trip_id"], []).append(
            (
                int(row["stop_sequence"]),
                row["stop_id"],
                _time_s(row.get("arrival_time", ""), where + ":arrival_time"),
                _time_s(row.get("departure_time", ""), where + ":departure_time"),
                _float(sdt, where + ":shape_dist_traveled") if sdt else None,
            )
        )
    trips: dict[str, Trip] = {}
    for trip_id, rows in times.items():
        rows.sort()
        route_id, direction, service = trip_meta[trip_id]
        stop_ids = tuple(r[1] for r in rows)
        trips[trip_id] = Trip(
            trip_id,
            route_id,
            direction,
            service,
            stop_ids,
            tuple(r[2] for r in rows),
            tuple(r[3] for r in rows),
            _distances(stop_ids, [r[4] for r in rows], stops),
        )
    networks: dict[str, str] = {}
    if (d / "route_networks.txt").exists():
        for n, row in _read(d / "route_networks.txt", ("network_id", "route_id")):
            if row["route_id"] not in routes:
                raise ContractError(f"GTFS route_networks.txt:{n}: unknown route_id")
            networks[row["route_id"]] = row["network_id"]
    feed = Feed(tz, stops, routes, trips, networks)
    feed.patterns = _patterns(trips)
    return feed


def _distances(
    stop_ids: tuple[str, ...], sdt: list[float | None], stops: dict[str, Stop]
) -> tuple[float, ...]:
    if stop_ids and all(v is not None for v in sdt):
        base = sdt[0] or 0.0
        return tuple(float(v) - base for v in sdt if v is not None)
    out = [0.0]
    for a, b in itertools.pairwise(stop_ids):
        sa, sb = stops[a], stops[b]
        out.append(out[-1] + haversine_m(sa.lat, sa.lon, sb.lat, sb.lon))
    return tuple(out[: len(stop_ids)])


def _patterns(trips: dict[str, Trip]) -> dict[tuple[str, int], TripPattern]:
    counts: dict[tuple[str, int], Counter[tuple[tuple[str, ...], tuple[float, ...]]]] = {}
    for trip in trips.values():
        counts.setdefault((trip.route_id, trip.direction_id), Counter())[
            (trip.stop_ids, trip.dist_m)
        ] += 1
    out: dict[tuple[str, int], TripPattern] = {}
    for (route_id, direction), c in sorted(counts.items()):
        (stop_ids, dist), _ = max(c.items(), key=lambda kv: (kv[1], kv[0]))
        out[(route_id, direction)] = TripPattern(route_id, direction, stop_ids, dist)
    return out
