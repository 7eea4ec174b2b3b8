"""Flat local geometry of the simulated city: projection, route polylines, traffic lights.

The simulator works in metres on a local tangent plane (x east, y north) around a
reference point; at the scale of a city (tens of km) the equirectangular projection is
good to well under a metre, far below the simulated GNSS noise. Route paths come from
the GTFS feed's ``shapes.txt`` (the trip's ``shape_id``), or from the straight hops
between its stops when the feed has no shapes.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

from busbell import Feed, TripPattern

__all__ = [
    "Light",
    "Polyline",
    "Projection",
    "RoutePath",
    "build_route_paths",
]

_M_PER_DEG = 6_371_008.8 * math.pi / 180.0


class Projection:
    """Equirectangular projection around a reference point.

    Args:
        lat0: reference latitude in degrees.
        lon0: reference longitude in degrees.
    """

    def __init__(self, lat0: float, lon0: float) -> None:
        self.lat0 = lat0
        self.lon0 = lon0
        self.ky = _M_PER_DEG
        self.kx = _M_PER_DEG * math.cos(math.radians(lat0))

    def to_xy(self, lat: float, lon: float) -> tuple[float, float]:
        """Metres east and north of the reference point."""
        return (lon - self.lon0) * self.kx, (lat - self.lat0) * self.ky

    def to_latlon(self, x: float, y: float) -> tuple[float, float]:
        """Latitude and longitude of a local point."""
        return self.lat0 + y / self.ky, self.lon0 + x / self.kx


class Polyline:
    """A path in the local plane, addressed by distance along it.

    Args:
        points: the vertices, at least two distinct ones.
    """

    def __init__(self, points: list[tuple[float, float]]) -> None:
        pts = [points[0]]
        for p in points[1:]:
            if math.hypot(p[0] - pts[-1][0], p[1] - pts[-1][1]) > 1e-6:
                pts.append(p)
        if len(pts) < 2:
            raise ValueError("a polyline needs two distinct points")
        self.points = pts
        self.cum = [0.0]
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            self.cum.append(self.cum[-1] + math.hypot(x1 - x0, y1 - y0))
        self.length = self.cum[-1]

    def at(self, s: float) -> tuple[float, float, float, float]:
        """Point and unit tangent at distance ``s`` (clamped to the ends).

        Returns:
            ``(x, y, tx, ty)``.
        """
        cum = self.cum
        s = min(max(s, 0.0), self.length)
        i = min(bisect.bisect_right(cum, s) - 1, len(cum) - 2)
        (x0, y0), (x1, y1) = self.points[i], self.points[i + 1]
        seg = cum[i + 1] - cum[i]
        f = (s - cum[i]) / seg
        tx, ty = (x1 - x0) / seg, (y1 - y0) / seg
        return x0 + f * (x1 - x0), y0 + f * (y1 - y0), tx, ty

    def project(self, x: float, y: float) -> float:
        """Distance along the line of the point nearest to ``(x, y)``."""
        best_d, best_s = math.inf, 0.0
        for i, ((x0, y0), (x1, y1)) in enumerate(zip(self.points, self.points[1:], strict=False)):
            dx, dy = x1 - x0, y1 - y0
            seg2 = dx * dx + dy * dy
            f = min(max(((x - x0) * dx + (y - y0) * dy) / seg2, 0.0), 1.0)
            px, py = x0 + f * dx, y0 + f * dy
            d = math.hypot(x - px, y - py)
            if d < best_d:
                best_d, best_s = d, self.cum[i] + f * math.sqrt(seg2)
        return best_s


@dataclass(frozen=True, slots=True)
class Light:
    """A signalised junction on a route path.

    Attributes:
        s: distance along the path of the stop line.
        cycle_s: signal cycle length.
        red_s: red time per cycle for this approach.
        offset_s: cycle offset (UNIX-time phase).
    """

    s: float
    cycle_s: float
    red_s: float
    offset_s: float

    def green_at(self, t: float) -> float:
        """The first time at or after ``t`` when the light shows green."""
        phase = (t - self.offset_s) % self.cycle_s
        return t if phase >= self.red_s else t + (self.red_s - phase)


@dataclass(slots=True)
class RoutePath:
    """The path one (route, direction) drives, with its stops and lights.

    Attributes:
        route_id: the GTFS route.
        direction_id: 0 or 1.
        line: the path.
        stop_ids: the pattern's stops in order.
        stop_s: each stop's distance along ``line``.
        lights: traffic lights sorted by ``s``.
    """

    route_id: str
    direction_id: int
    line: Polyline
    stop_ids: tuple[str, ...]
    stop_s: tuple[float, ...]
    lights: tuple[Light, ...]


def _shapes(gtfs_dir: Path) -> tuple[dict[str, list[tuple[float, float]]], dict[str, str]]:
    shapes: dict[str, list[tuple[int, float, float]]] = {}
    trip_shape: dict[str, str] = {}
    if (gtfs_dir / "shapes.txt").exists():
        with open(gtfs_dir / "shapes.txt", newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f):
                shapes.setdefault(row["shape_id"], []).append(
                    (
                        int(row["shape_pt_sequence"]),
                        float(row["shape_pt_lat"]),
                        float(row["shape_pt_lon"]),
                    )
                )
        with open(gtfs_dir / "trips.txt", newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f):
                if row.get("shape_id"):
                    trip_shape[row["trip_id"]] = row["shape_id"]
    out = {k: [(la, lo) for _, la, lo in sorted(v)] for k, v in shapes.items()}
    return out, trip_shape


def _light_cycle(key: str) -> tuple[float, float, float]:
    h = hashlib.blake2b(key.encode(), digest_size=8).digest()
    cycle = 90.0 + (h[0] % 7) * 10.0
    red = cycle * (0.35 + (h[1] % 20) / 100.0)
    offset = int.from_bytes(h[2:6], "big") % int(cycle)
    return cycle, red, float(offset)


def build_route_paths(
    feed: Feed,
    gtfs_dir: Path,
    proj: Projection,
    *,
    light_max_gap_m: float = 2500.0,
) -> dict[tuple[str, int], RoutePath]:
    """Build the drivable path of every (route, direction) pattern of the feed.

    A traffic light sits half way between consecutive stops less than
    ``light_max_gap_m`` apart (longer hops are motorway). Lights are keyed by the
    physical stop pair, so routes that share a road share its lights and their
    timing.
    """
    shapes, trip_shape = _shapes(gtfs_dir)
    out: dict[tuple[str, int], RoutePath] = {}
    for key, pat in sorted(feed.patterns.items()):
        out[key] = _route_path(feed, pat, shapes, trip_shape, proj, light_max_gap_m)
    return out


def _route_path(  # noqa: PLR0917 - private helper
    feed: Feed,
    pat: TripPattern,
    shapes: dict[str, list[tuple[float, float]]],
    trip_shape: dict[str, str],
    proj: Projection,
    light_max_gap_m: float,
) -> RoutePath:
    stop_xy = [proj.to_xy(feed.stops[s].lat, feed.stops[s].lon) for s in pat.stop_ids]
    shape_id = next(
        (
            trip_shape[t.trip_id]
            for t in sorted(feed.trips.values(), key=lambda t: t.trip_id)
            if t.route_id == pat.route_id
            and t.direction_id == pat.direction_id
            and t.stop_ids == pat.stop_ids
            and t.trip_id in trip_shape
        ),
        None,
    )
    if shape_id is not None and shape_id in shapes:
        line = Polyline([proj.to_xy(la, lo) for la, lo in shapes[shape_id]])
    else:
        line = Polyline(stop_xy)
    stop_s: list[float] = []
    for x, y in stop_xy:
        s = line.project(x, y)
        stop_s.append(max(s, stop_s[-1] + 1.0) if stop_s else s)
    lights: list[Light] = []
    for i in range(len(stop_s) - 1):
        gap = stop_s[i + 1] - stop_s[i]
        if gap < light_max_gap_m:
            a, b = sorted((pat.stop_ids[i].rstrip("R"), pat.stop_ids[i + 1].rstrip("R")))
            cycle, red, offset = _light_cycle(f"{a}|{b}|{pat.direction_id}")
            lights.append(Light(stop_s[i] + gap / 2.0, cycle, red, offset))
    return RoutePath(
        pat.route_id, pat.direction_id, line, pat.stop_ids, tuple(stop_s), tuple(lights)
    )
