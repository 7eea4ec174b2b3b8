"""Vehicle context: trip, position along the pattern, odometer and stop visits.

Sans-I/O: fed :class:`busbell.GnssRecord`, :class:`busbell.DoorRecord` and
:class:`busbell.TripRecord` (and the passing of time through :meth:`VehicleContext.advance`)
with the GTFS :class:`busbell.Feed`; it returns :class:`VehicleEvent` values (a stop visit
opened or closed) and exposes its state for the presence classifier. The rules (map
matching, odometer, GNSS dropouts, stuck door sensors) are described in
``docs/classifier.md``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from busbell import DoorRecord, Feed, GnssRecord, TripRecord, get_logger
from busbell._geo import EARTH_RADIUS_M
from edge._params import ClassifierParams

__all__ = [
    "DOOR_OK",
    "DOOR_STUCK_CLOSED",
    "DOOR_STUCK_OPEN",
    "StopVisit",
    "VehicleContext",
    "VehicleEvent",
]

log = get_logger("edge.vehicle")

DOOR_OK = "ok"
DOOR_STUCK_OPEN = "stuck_open"
DOOR_STUCK_CLOSED = "stuck_closed"

_M_PER_DEG = math.pi / 180.0 * EARTH_RADIUS_M
_GRID_DEG = 0.002
_VISIT_HISTORY = 256
_JUMP_M = 60.0
"""Progress may jump ahead this much plus _MAX_SPEED_MPS per second between fixes."""
_MAX_SPEED_MPS = 40.0
_BACK_JUMP_M = 300.0
"""A fix this far behind the progress is inconsistent (GPS noise is tens of metres)."""
_RELOCALISE_AFTER = 5
"""Consecutive inconsistent fixes after which the position is searched afresh."""


@dataclass(slots=True)
class StopVisit:
    """The bus standing at a stop with its doors open (or dwelling, when doors are unknown).

    Attributes:
        seq: visit number, counting from 1 per vehicle context.
        stop_id: the served stop, or ``None`` when no stop of the trip matched.
        open_t: when the doors opened (or the dwell began).
        open_odo_m: odometer when the visit opened.
        source: ``door`` (door sensor) or ``dwell`` (speed-based, door sensor faulty).
        close_t: when the bus departed (doors closed / started moving), ``None`` while open.
        close_odo_m: odometer at departure.
        stop_index: the stop's index in the trip's stop list, if matched.
    """

    seq: int
    stop_id: str | None
    open_t: float
    open_odo_m: float
    source: str
    close_t: float | None = None
    close_odo_m: float | None = None
    stop_index: int | None = None

    @property
    def is_open(self) -> bool:
        """Whether the bus is still at this stop."""
        return self.close_t is None


class VehicleEvent(NamedTuple):
    """A stop visit opened (``open``, also on a re-opening) or closed (``close``)."""

    kind: str
    visit: StopVisit


class VehicleContext:
    """What the bus is doing: trip, position, odometer, doors, stop visits.

    Args:
        feed: the GTFS static feed.
        params: thresholds (stop radius, speeds, dropout and door-fault handling).
    """

    def __init__(self, feed: Feed, params: ClassifierParams | None = None) -> None:
        self.feed = feed
        self.params = params or ClassifierParams()
        self.t: float | None = None
        self.lat: float | None = None
        self.lon: float | None = None
        self.speed_mps = 0.0
        self.odometer_m = 0.0
        self.in_dropout = False
        self.route_id: str | None = None
        self.direction_id: int | None = None
        self.trip_id: str | None = None
        self.signed_on: tuple[str, int, str | None, float] | None = None
        """The last sign-on: route, direction, trip id and its message's time (kept when
        the trip ends, so that a copy of that message delivered again signs on to nothing)."""
        self.stop_ids: tuple[str, ...] = ()
        self.stop_dist_m: tuple[float, ...] = ()
        self.progress_m: float | None = None
        self.doors_open = False
        self.door_health = DOOR_OK
        self.current_visit: StopVisit | None = None
        self.visits: deque[StopVisit] = deque(maxlen=_VISIT_HISTORY)
        self.last_served_index = -1
        self.dropouts = 0
        self._visit_seq = 0
        self._xy: list[tuple[float, float]] = []
        self._origin: tuple[float, float, float] = (0.0, 0.0, 1.0)
        self._seg = 0
        self._odd = 0
        # last real fix
        self._fix_t: float | None = None
        self._fix_odo = 0.0
        self._fix_progress: float | None = None
        self._fix_lat = 0.0
        self._fix_lon = 0.0
        self._fix_speed = 0.0
        self._dr: tuple[float, float, float | None, float] = (0.0, 0.0, None, 0.0)
        """Dead-reckoning base in a dropout: time, odometer, progress, speed."""
        # stuck-open detection
        self._fast_open_since: float | None = None
        self._depart: tuple[float, float] | None = None
        # dwell detection
        self._still_since: float | None = None
        self._still_odo = 0.0
        self._still_door = False
        self._still_stop: tuple[str | None, int | None] | None = None
        self._nodoor_dwells = 0
        self._open_pending = False
        self._grid: dict[tuple[int, int], list[str]] | None = None

    # -- public state -----------------------------------------------------------------

    @property
    def moving(self) -> bool:
        """Whether the bus moves (GNSS speed, or the dead-reckoned speed in a dropout)."""
        return self.speed_mps >= self.params.moving_speed_mps

    @property
    def at_stop(self) -> bool:
        """Whether a stop visit is open."""
        return self.current_visit is not None

    def last_visit(self) -> StopVisit | None:
        """The most recent stop visit (open or closed)."""
        return self.visits[-1] if self.visits else None

    def visit_before(self, t: float) -> StopVisit | None:
        """The latest visit that opened at or before ``t``."""
        for v in reversed(self.visits):
            if v.open_t <= t:
                return v
        return None

    # -- inputs ---------------------------------------------------------------------------

    def feed_record(self, rec: GnssRecord | DoorRecord | TripRecord) -> list[VehicleEvent]:
        """Apply one vehicle record; returns the stop-visit events it caused."""
        events = self.advance(rec.t)
        if isinstance(rec, GnssRecord):
            events.extend(self._gnss(rec))
        elif isinstance(rec, DoorRecord):
            events.extend(self._door(rec))
        else:
            self._trip(rec)
        return events

    def advance(self, t: float) -> list[VehicleEvent]:
        """Let time pass to ``t``: dead reckoning in a GNSS dropout, stuck-door timing."""
        events: list[VehicleEvent] = []
        if self.t is not None and t < self.t:
            return events
        self.t = t
        if self._fix_t is None:
            return events
        p = self.params
        gap = t - self._fix_t
        if gap > p.gnss_dropout_s:
            if not self.in_dropout:
                self.in_dropout = True
                self.dropouts += 1
                log.info("gnss_dropout", t=t, last_fix_t=self._fix_t)
            dr_t, dr_odo, dr_prog, dr_speed = self._dr
            until = min(t, self._fix_t + p.dead_reckon_max_s)
            self.speed_mps = dr_speed if gap <= p.dead_reckon_max_s else 0.0
            travelled = dr_speed * max(0.0, until - dr_t)
            self.odometer_m = max(self.odometer_m, dr_odo + travelled)
            if dr_prog is not None:
                self.progress_m = max(self.progress_m or 0.0, dr_prog + travelled)
                self.lat, self.lon = self._position_at(self.progress_m)
            events.extend(self._motion(t))
        return events

    # -- trip -----------------------------------------------------------------------------

    def _trip(self, rec: TripRecord) -> None:
        """A trip message: the driver signs on to a trip, unless it is the trip under way.

        The same trip (route, direction, trip id) again is a repeat, not a new sign-on,
        when its message is no later than the one that signed on (a retained message
        delivered again at each reconnect, a QoS 1 duplicate; also after the trip ended,
        :meth:`end_trip`) or when the trip's last stop is not served yet (the driver's
        terminal restarted): the bus keeps its place and the stops it served (before, it
        went back to before the first stop: stop matching began again from the first
        stop, and a bus past its last stop was mid-trip again). Once the last stop is
        served, a later message for the same trip is its next run.
        """
        key = (rec.route_id, rec.direction_id, rec.trip_id)
        last = self.signed_on
        if last is not None and key == last[:3]:  # (the trip under way, or the one ended)
            mid_trip = self.last_served_index < len(self.stop_ids) - 1  # (no stops: False)
            if rec.t <= last[3] or mid_trip:
                log.info(
                    "trip_repeated",
                    t=rec.t,
                    route_id=rec.route_id,
                    trip_id=rec.trip_id,
                    signed_on_t=last[3],
                    served=self.last_served_index + 1,
                )
                return
        self.signed_on = (*key, rec.t)
        self.route_id = rec.route_id
        self.direction_id = rec.direction_id
        self.trip_id = rec.trip_id
        trip = self.feed.trips.get(rec.trip_id) if rec.trip_id else None
        if trip is not None:
            self.stop_ids, self.stop_dist_m = trip.stop_ids, trip.dist_m
        else:
            pat = self.feed.pattern(rec.route_id, rec.direction_id)
            self.stop_ids = pat.stop_ids if pat else ()
            self.stop_dist_m = pat.dist_m if pat else ()
        stops = self.feed.stops
        self._xy = []
        if self.stop_ids:
            first = stops[self.stop_ids[0]]
            self._origin = (first.lat, first.lon, math.cos(math.radians(first.lat)))
            self._xy = [self._to_xy(stops[s].lat, stops[s].lon) for s in self.stop_ids]
        self.progress_m = None
        self._fix_progress = None
        self._seg = 0
        self.last_served_index = -1
        log.info(
            "trip_signed_on",
            route_id=rec.route_id,
            direction_id=rec.direction_id,
            trip_id=rec.trip_id,
            stops=len(self.stop_ids),
        )
        if self.lat is not None and self.lon is not None:
            self._match(self.lat, self.lon, global_search=True)
            self._fix_progress = self.progress_m

    def end_trip(self, t: float) -> list[VehicleEvent]:
        """The trip is over with its last stop not served (no sign-off record exists).

        The restart long after a clean stop mid-trip (:meth:`EdgePipeline.feed`): the
        bus was switched off, its driver signed off. The stop visit open then closes at
        ``t`` (the stop) and the trip is forgotten until the next sign-on, so the bus is
        no longer "mid-trip" and no later rider is tagged with that trip.
        """
        events = self._close_visit(t, self.odometer_m)
        self.doors_open = False
        log.info("trip_ended", t=t, trip_id=self.trip_id, served=self.last_served_index + 1)
        self.route_id = self.direction_id = self.trip_id = None
        self.stop_ids, self.stop_dist_m = (), ()
        self._xy = []
        self.progress_m = self._fix_progress = None
        self._seg = 0
        self.last_served_index = -1
        return events

    # -- geometry -------------------------------------------------------------------------

    def _to_xy(self, lat: float, lon: float) -> tuple[float, float]:
        lat0, lon0, c = self._origin
        return ((lon - lon0) * c * _M_PER_DEG, (lat - lat0) * _M_PER_DEG)

    def _position_at(self, progress: float) -> tuple[float | None, float | None]:
        dist = self.stop_dist_m
        if not dist:
            return self.lat, self.lon
        stops = self.feed.stops
        if progress >= dist[-1]:
            s = stops[self.stop_ids[-1]]
            return s.lat, s.lon
        i = max(0, min(self._seg, len(dist) - 2))
        while i > 0 and dist[i] > progress:
            i -= 1
        while i < len(dist) - 2 and dist[i + 1] < progress:
            i += 1
        a, b = stops[self.stop_ids[i]], stops[self.stop_ids[i + 1]]
        span = dist[i + 1] - dist[i]
        f = 0.0 if span <= 0 else min(1.0, max(0.0, (progress - dist[i]) / span))
        return a.lat + f * (b.lat - a.lat), a.lon + f * (b.lon - a.lon)

    def _match(
        self, lat: float, lon: float, *, global_search: bool = False, max_jump_m: float = math.inf
    ) -> None:
        """Map-match a fix to the pattern; progress only moves forward."""
        n = len(self._xy)
        if n < 2:
            if n == 1 and self.progress_m is None:
                self.progress_m = 0.0
            return
        x, y = self._to_xy(lat, lon)
        if global_search or self.progress_m is None:
            lo, hi = 0, n - 1
        else:
            lo, hi = max(0, self._seg - 1), min(n - 1, self._seg + 4)
        best_d = math.inf
        best_i = self._seg
        best_prog = 0.0
        for i in range(lo, hi):
            (ax, ay), (bx, by) = self._xy[i], self._xy[i + 1]
            dx, dy = bx - ax, by - ay
            ll = dx * dx + dy * dy
            f = 0.0 if ll == 0 else max(0.0, min(1.0, ((x - ax) * dx + (y - ay) * dy) / ll))
            px, py = ax + f * dx - x, ay + f * dy - y
            d = px * px + py * py
            if d < best_d:
                best_d = d
                best_i = i
                best_prog = self.stop_dist_m[i] + f * (
                    self.stop_dist_m[i + 1] - self.stop_dist_m[i]
                )
        if math.sqrt(best_d) > self.params.offroute_m:
            if self.progress_m is None and not global_search:
                self._match(lat, lon, global_search=True)
            return
        if self.progress_m is not None and not global_search:
            ahead = best_prog - self.progress_m
            if ahead > max_jump_m or ahead < -_BACK_JUMP_M:
                # inconsistent with where we are: an outlier, or we are lost
                self._odd += 1
                if self._odd >= _RELOCALISE_AFTER:
                    self._odd = 0
                    self.progress_m = None
                    self._match(lat, lon, global_search=True)
                return
            self._odd = 0
        if self.progress_m is None or best_prog > self.progress_m:
            self.progress_m = best_prog
            self._seg = max(self._seg, best_i) if not global_search else best_i

    # -- GNSS -----------------------------------------------------------------------------

    def _gnss(self, rec: GnssRecord) -> list[VehicleEvent]:
        if self._fix_t is not None and rec.t < self._fix_t:
            return []
        p = self.params
        if self._fix_t is None:
            travelled = 0.0
        elif self.in_dropout or rec.t - self._fix_t > p.gnss_dropout_s:
            # recovery: the better of the straight line and the pattern progress
            # recovery: replace the dead-reckoned estimate by the better of the straight
            # line and the pattern progress since the last real fix
            travelled = haversine_fast(self._fix_lat, self._fix_lon, rec.lat, rec.lon)
            old_prog = self._fix_progress
            if old_prog is not None:
                self.progress_m = old_prog
                self._match(rec.lat, rec.lon, global_search=True)
                if self.progress_m is not None:
                    travelled = max(travelled, self.progress_m - old_prog)
            self.in_dropout = False
            self.odometer_m = self._fix_odo + travelled
            log.info("gnss_recovered", t=rec.t, gap_s=round(rec.t - self._fix_t, 1))
        else:
            dt = rec.t - self._fix_t
            travelled = 0.5 * (self._fix_speed + rec.speed_mps) * dt
        self.odometer_m = max(self.odometer_m, self._fix_odo + travelled)
        self.lat, self.lon = rec.lat, rec.lon
        self.speed_mps = rec.speed_mps
        dt = rec.t - self._fix_t if self._fix_t is not None else 0.0
        self._match(rec.lat, rec.lon, max_jump_m=_JUMP_M + _MAX_SPEED_MPS * dt)
        self._fix_t = rec.t
        self._fix_odo = self.odometer_m
        self._fix_progress = self.progress_m
        self._fix_lat, self._fix_lon, self._fix_speed = rec.lat, rec.lon, rec.speed_mps
        self._dr = (rec.t, self.odometer_m, self.progress_m, rec.speed_mps)
        return self._motion(rec.t)

    def _motion(self, t: float) -> list[VehicleEvent]:
        """Stuck-open detection and speed-based dwells, after the speed changed."""
        p = self.params
        events: list[VehicleEvent] = []
        moving = self.moving
        if self._open_pending and self.doors_open and not moving and self.door_health == DOOR_OK:
            # doors reported open while driving, and the bus has now stopped: a visit
            self._open_pending = False
            stop_id, idx = self._match_stop(require=False)
            events.extend(self._open_visit(t, self.odometer_m, "door", stop_id, idx))
        # stuck open: doors report open while the bus drives fast for a while
        if self.doors_open and self.door_health == DOOR_OK:
            if moving and self._depart is None:
                self._depart = (t, self.odometer_m)
            if self.speed_mps >= p.stuck_open_speed_mps:
                if self._fast_open_since is None:
                    self._fast_open_since = t
                elif t - self._fast_open_since >= p.stuck_open_s:
                    self.door_health = DOOR_STUCK_OPEN
                    log.warning("door_stuck_open", t=t)
                    ct, codo = self._depart or (t, self.odometer_m)
                    events.extend(self._close_visit(ct, codo))
            else:
                self._fast_open_since = None
            if not moving:
                self._depart = None
        # dwells: stopped near a stop
        if not moving:
            if self._still_since is None:
                self._still_since = t
                self._still_odo = self.odometer_m
                self._still_door = self.doors_open
                self._still_stop = None
            elif self._still_stop is None and t - self._still_since >= p.dwell_min_s:
                stop_id, idx = self._match_stop(require=True)
                self._still_stop = (stop_id, idx)
                if (
                    stop_id is not None
                    and self.door_health != DOOR_OK
                    and self.current_visit is None
                ):
                    events.extend(
                        self._open_visit(self._still_since, self._still_odo, "dwell", stop_id, idx)
                    )
        elif self._still_since is not None:
            st = self._still_stop
            if st is not None and st[0] is not None and self.door_health == DOOR_OK:
                if self._still_door:
                    self._nodoor_dwells = 0
                else:
                    self._nodoor_dwells += 1
                    if self._nodoor_dwells >= p.stuck_closed_dwells:
                        self.door_health = DOOR_STUCK_CLOSED
                        log.warning("door_stuck_closed", t=t, dwells=self._nodoor_dwells)
                        if self.current_visit is None:
                            # the dwell that revealed the fault was a stop visit too
                            events.extend(
                                self._open_visit(
                                    self._still_since, self._still_odo, "dwell", st[0], st[1]
                                )
                            )
            self._still_since = None
            self._still_stop = None
            v = self.current_visit
            if v is not None and v.source == "dwell":
                events.extend(self._close_visit(t, self.odometer_m))
        return events

    # -- doors ----------------------------------------------------------------------------

    def _door(self, rec: DoorRecord) -> list[VehicleEvent]:
        events: list[VehicleEvent] = []
        if rec.open == self.doors_open:
            return events
        self.doors_open = rec.open
        self._fast_open_since = None
        self._depart = None
        self._open_pending = False
        if self.in_dropout:
            # doors open: the bus stands; closed: it drives on at its last known speed
            speed = 0.0 if rec.open else self._fix_speed
            self._dr = (rec.t, self.odometer_m, self.progress_m, speed)
            self.speed_mps = speed
        if rec.open:
            self._still_door = True
            self._nodoor_dwells = 0
            if self.door_health == DOOR_STUCK_CLOSED:
                self.door_health = DOOR_OK
                log.info("door_sensor_recovered", t=rec.t)
            if self.door_health != DOOR_OK:
                return events
            if self.current_visit is not None:
                self.current_visit.source = "door"
                return events
            if self.speed_mps >= self.params.stuck_open_speed_mps and not self.in_dropout:
                # doors cannot open at speed: wait for the bus to stop (or a stuck sensor)
                self._open_pending = True
                return events
            last = self.visits[-1] if self.visits else None
            if (
                last is not None
                and last.close_odo_m is not None
                and self.odometer_m - last.close_odo_m < 5.0
                and last.source == "door"
            ):
                # doors re-opened before the bus moved: the same visit goes on
                last.close_t = None
                last.close_odo_m = None
                self.current_visit = last
                return [VehicleEvent("open", last)]
            stop_id, idx = self._match_stop(require=False)
            return self._open_visit(rec.t, self.odometer_m, "door", stop_id, idx)
        if self.door_health == DOOR_STUCK_OPEN:
            self.door_health = DOOR_OK
            log.info("door_sensor_recovered", t=rec.t)
            return events
        v = self.current_visit
        if v is not None and v.source == "door":
            events.extend(self._close_visit(rec.t, self.odometer_m))
        return events

    def _open_visit(
        self, t: float, odo: float, source: str, stop_id: str | None, idx: int | None
    ) -> list[VehicleEvent]:
        self._visit_seq += 1
        v = StopVisit(self._visit_seq, stop_id, t, odo, source, stop_index=idx)
        if idx is not None:
            self.last_served_index = max(self.last_served_index, idx)
        self.current_visit = v
        self.visits.append(v)
        log.debug("stop_visit_opened", seq=v.seq, stop_id=stop_id, t=t, source=source)
        return [VehicleEvent("open", v)]

    def _close_visit(self, t: float, odo: float) -> list[VehicleEvent]:
        v = self.current_visit
        if v is None:
            return []
        v.close_t = max(t, v.open_t)
        v.close_odo_m = max(odo, v.open_odo_m)
        self.current_visit = None
        log.debug("stop_visit_closed", seq=v.seq, stop_id=v.stop_id, t=v.close_t)
        return [VehicleEvent("close", v)]

    # -- stop matching --------------------------------------------------------------------

    def _match_stop(self, *, require: bool) -> tuple[str | None, int | None]:
        """The stop the bus is at: by position, or by progress in a GNSS dropout."""
        p = self.params
        if self.stop_ids and self.in_dropout and self.progress_m is not None:
            if require:
                return None, None
            # dead reckoning over- or under-shoots (the bus braked, queued): the stop of
            # the trip nearest the estimate, not behind the last one served
            near: tuple[float, int] | None = None
            for i in range(max(0, self.last_served_index), len(self.stop_ids)):
                d = abs(self.stop_dist_m[i] - self.progress_m)
                if d <= p.dropout_match_m and (near is None or d < near[0]):
                    near = (d, i)
            return (self.stop_ids[near[1]], near[1]) if near else (None, None)
        if self.lat is None or self.lon is None:
            return None, None
        if not self.stop_ids:
            return self._nearest_feed_stop(self.lat, self.lon), None
        x, y = self._to_xy(self.lat, self.lon)
        r2 = p.stop_radius_m * p.stop_radius_m
        start = max(0, self.last_served_index)
        for rng in (range(start, len(self._xy)), range(start)):
            best: tuple[float, int] | None = None
            for i in rng:
                sx, sy = self._xy[i]
                d = (sx - x) ** 2 + (sy - y) ** 2
                if d <= r2 and (best is None or d < best[0]):
                    best = (d, i)
            if best is not None:
                return self.stop_ids[best[1]], best[1]
        return None, None

    def _nearest_feed_stop(self, lat: float, lon: float) -> str | None:
        if self._grid is None:
            self._grid = {}
            for s in sorted(self.feed.stops.values(), key=lambda s: s.stop_id):
                key = (math.floor(s.lat / _GRID_DEG), math.floor(s.lon / _GRID_DEG))
                self._grid.setdefault(key, []).append(s.stop_id)
        gy, gx = math.floor(lat / _GRID_DEG), math.floor(lon / _GRID_DEG)
        best: tuple[float, str] | None = None
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                for sid in self._grid.get((gy + dy, gx + dx), ()):
                    s = self.feed.stops[sid]
                    d = haversine_fast(lat, lon, s.lat, s.lon)
                    if d <= self.params.stop_radius_m and (best is None or d < best[0]):
                        best = (d, sid)
        return best[1] if best else None


def haversine_fast(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Equirectangular distance in metres (good to centimetres over a few km)."""
    c = math.cos(math.radians(0.5 * (lat1 + lat2)))
    dx = (lon2 - lon1) * c * _M_PER_DEG
    dy = (lat2 - lat1) * _M_PER_DEG
    return math.hypot(dx, dy)
