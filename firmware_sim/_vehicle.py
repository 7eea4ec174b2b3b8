"""Vehicle kinematics: buses and cars driving a route path with lights and stops.

A vehicle's motion is a list of constant-acceleration pieces ``(t0, s0, v0, a)``;
between stops it accelerates at ``accel_mps2`` to its cruise speed, cruises and brakes
at ``decel_mps2`` to a halt (a triangle when the hop is too short to reach cruise).
A vehicle that would reach a traffic light while it shows red stops at the stop line
and waits for green. A bus halts at a stop when somebody boards or alights (or, with
a probability, for passengers the simulator does not track); its doors open about a
second after it halts and close when the last rider is through; it pulls out shortly
after. Rider boarding and alighting times at each stop are assigned here, one by one
through the front (boarding) and middle (alighting) doors, as on Korean city buses.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field

from firmware_sim._geometry import RoutePath

__all__ = [
    "BusPlan",
    "Motion",
    "StopCall",
    "StopDemand",
    "drive_car",
    "plan_bus",
]

ACCEL_MPS2 = 1.0
DECEL_MPS2 = 1.2
BUS_LENGTH_M = 11.0
MOTORWAY_HOP_M = 2500.0


class Motion:
    """Piecewise constant-acceleration motion along a path."""

    __slots__ = ("a", "s0", "t0", "v0")

    def __init__(self) -> None:
        self.t0: list[float] = []
        self.s0: list[float] = []
        self.v0: list[float] = []
        self.a: list[float] = []

    def add(self, t0: float, s0: float, v0: float, a: float) -> None:
        """Append a piece starting at ``t0`` (pieces must be added in time order)."""
        if self.t0 and t0 < self.t0[-1]:
            raise ValueError("motion pieces must be added in time order")
        self.t0.append(t0)
        self.s0.append(s0)
        self.v0.append(v0)
        self.a.append(a)

    def at(self, t: float) -> tuple[float, float]:
        """Distance along the path and speed at time ``t`` (held before/after the ends)."""
        i = bisect.bisect_right(self.t0, t) - 1
        if i < 0:
            return self.s0[0], 0.0
        dt = t - self.t0[i]
        a = self.a[i]
        v = self.v0[i] + a * dt
        if v < 0.0:  # braked to a halt before the next piece: hold
            dt = self.v0[i] / -a
            v = 0.0
        return self.s0[i] + self.v0[i] * dt + 0.5 * a * dt * dt, v

    def time_at_s(self, s: float, t_from: float) -> float:
        """The first time from ``t_from`` on that the distance reaches ``s`` (bisection).

        Raises:
            ValueError: it never does.
        """
        lo, hi = t_from, self.t0[-1] + 3600.0
        if self.at(hi)[0] < s:
            raise ValueError(f"the motion never reaches {s:.1f} m")
        for _ in range(60):
            mid = (lo + hi) / 2
            if self.at(mid)[0] >= s:
                hi = mid
            else:
                lo = mid
        return hi


@dataclass(frozen=True, slots=True)
class _Profile:
    """Rest-to-rest trapezoid over ``d`` metres."""

    d: float
    v: float
    t1: float
    d1: float
    t2: float
    d3: float
    t3: float

    @classmethod
    def make(cls, d: float, vmax: float, acc: float, dec: float) -> _Profile:
        v = vmax
        d1, d3 = v * v / (2 * acc), v * v / (2 * dec)
        if d1 + d3 > d:
            v = math.sqrt(2 * d * acc * dec / (acc + dec))
            d1, d3 = v * v / (2 * acc), v * v / (2 * dec)
        d2 = max(d - d1 - d3, 0.0)
        return cls(d, v, v / acc, d1, d2 / v if v > 0 else 0.0, d3, v / dec)

    @property
    def total(self) -> float:
        return self.t1 + self.t2 + self.t3

    def time_at(self, x: float) -> float:
        if x <= self.d1:
            return math.sqrt(2 * x * self.t1 / self.v) if self.v > 0 else 0.0
        if x <= self.d - self.d3:
            return self.t1 + (x - self.d1) / self.v
        r = max(self.d - x, 0.0)
        return self.total - math.sqrt(2 * r * self.t3 / self.v)

    def append(self, m: Motion, t: float, s: float, acc: float, dec: float) -> float:
        m.add(t, s, 0.0, acc)
        m.add(t + self.t1, s + self.d1, self.v, 0.0)
        m.add(t + self.t1 + self.t2, s + self.d - self.d3, self.v, -dec)
        end = t + self.total
        m.add(end, s + self.d, 0.0, 0.0)
        return end


def _drive(  # noqa: PLR0917 - private helper
    m: Motion,
    path: RoutePath,
    t: float,
    s_from: float,
    s_to: float,
    vmax: float,
    rng: random.Random,
) -> float:
    """Drive from rest at ``s_from`` to rest at ``s_to``, obeying the lights; returns arrival."""
    lights = [lt for lt in path.lights if s_from + 5.0 < lt.s < s_to - 5.0]
    k = 0
    while True:
        d = s_to - s_from
        if d <= 0.05:
            return t
        prof = _Profile.make(d, vmax, ACCEL_MPS2, DECEL_MPS2)
        hit = None
        for j in range(k, len(lights)):
            tp = t + prof.time_at(lights[j].s - s_from)
            if lights[j].green_at(tp) > tp:
                hit = j
                break
        if hit is None:
            return prof.append(m, t, s_from, ACCEL_MPS2, DECEL_MPS2)
        light = lights[hit]
        stop_s = max(light.s - rng.uniform(0.0, 8.0), s_from + 1.0)
        t = _Profile.make(stop_s - s_from, vmax, ACCEL_MPS2, DECEL_MPS2).append(
            m, t, s_from, ACCEL_MPS2, DECEL_MPS2
        )
        t = light.green_at(t) + rng.uniform(1.0, 3.0)
        m.add(t, stop_s, 0.0, 0.0)
        s_from = stop_s
        k = hit + 1


@dataclass(slots=True)
class StopDemand:
    """Who boards and alights a bus at one stop (rider keys, in queue order).

    Attributes:
        board: riders boarding, each with the time they reach the door (or ``None``:
            already waiting).
        alight: riders alighting.
        last_moment: riders who jump off as the doors close.
        hold_s: extra time the doors stay open (a wheelchair ramp, a driver chat).
    """

    board: list[tuple[str, float | None]] = field(default_factory=list)
    alight: list[str] = field(default_factory=list)
    last_moment: list[str] = field(default_factory=list)
    hold_s: float = 0.0


@dataclass(slots=True)
class StopCall:
    """One halt of a bus at a stop, as it really happened.

    Attributes:
        idx: index of the stop in the pattern.
        stop_id: the GTFS stop.
        s: where the bus centre halted along the path.
        t_arrive: halted.
        t_open: doors opened.
        t_close: doors closed.
        t_depart: pulled out.
        board_t: rider -> time through the front door.
        alight_t: rider -> time through the middle door.
    """

    idx: int
    stop_id: str
    s: float
    t_arrive: float
    t_open: float
    t_close: float
    t_depart: float
    board_t: dict[str, float] = field(default_factory=dict)
    alight_t: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class BusPlan:
    """What one bus really did."""

    bus_id: str
    path: RoutePath
    motion: Motion
    calls: list[StopCall]
    t_start: float
    t_end: float
    lane_m: float


def plan_bus(
    bus_id: str,
    path: RoutePath,
    *,
    t_start: float,
    first_idx: int,
    last_idx: int,
    demand: dict[int, StopDemand],
    rng: random.Random,
    occupied: dict[str, list[tuple[float, float]]],
    p_extra_stop: float = 0.7,
    cruise_mps: float = 11.5,
    motorway_mps: float = 22.0,
    lane_m: float = 0.0,
    skip: frozenset[int] = frozenset(),
) -> BusPlan:
    """Drive a bus over ``first_idx..last_idx`` of its pattern and plan every halt.

    Args:
        bus_id: the bus.
        path: its route path.
        t_start: when it halts at the first stop (the driver signs on just before).
        first_idx: first pattern stop index (the bus starts halted there).
        last_idx: last pattern stop index (everybody still aboard alights there).
        demand: per stop index, who boards and alights.
        rng: randomness for speeds, dwell and light queues.
        occupied: per stop id, the ``(t_arrive, t_depart)`` of buses already planned,
            so that a bus arriving at a busy stop halts behind them; updated.
        p_extra_stop: probability of halting where no tracked rider boards or alights.
        cruise_mps: city cruise speed.
        motorway_mps: cruise speed on hops longer than 2.5 km.
        lane_m: lateral lane offset while driving (negative: left of the kerb lane).
        skip: pattern stop indices where nobody boards or alights that the bus drives
            past without halting (the driver does not stop).
    """
    m = Motion()
    calls: list[StopCall] = []
    t = t_start
    busy0 = sum(1 for a, b in occupied.get(path.stop_ids[first_idx], []) if a <= t <= b)
    s = max(path.stop_s[first_idx] - busy0 * (BUS_LENGTH_M + 2.0), 0.0)
    m.add(t, s, 0.0, 0.0)
    for idx in range(first_idx, last_idx + 1):
        dem = demand.get(idx, StopDemand())
        stop_s = path.stop_s[idx]
        must = bool(dem.board or dem.alight or dem.last_moment) or idx in (first_idx, last_idx)
        if idx != first_idx:
            if not must and (rng.random() >= p_extra_stop or idx in skip):
                continue  # (the draw comes first: a skip changes no other bus's draws)
            busy = sum(1 for a, b in occupied.get(path.stop_ids[idx], []) if a <= t + 60 <= b)
            target = stop_s - busy * (BUS_LENGTH_M + 2.0)
            gap = target - s
            vmax = (motorway_mps if gap > MOTORWAY_HOP_M else cruise_mps) * rng.uniform(0.85, 1.08)
            t = _drive(m, path, t, s, target, vmax, rng)
            s = target
        call = _dwell(idx, path.stop_ids[idx], s, t, dem, rng)
        calls.append(call)
        occupied.setdefault(call.stop_id, []).append((call.t_arrive, call.t_depart))
        t = call.t_depart
        m.add(t, s, 0.0, 0.0)
    t_end = t + 30.0
    # pull away from the last stop (to the depot) so the trace ends with motion
    end_s = min(s + 300.0, path.line.length)
    if end_s > s + 1.0:
        t_end = _drive(m, path, t, s, end_s, cruise_mps, rng) + 20.0
    return BusPlan(bus_id, path, m, calls, t_start, t_end, lane_m)


def _dwell(  # noqa: PLR0917 - private helper
    idx: int, stop_id: str, s: float, t: float, dem: StopDemand, rng: random.Random
) -> StopCall:
    t_open = t + rng.uniform(0.8, 1.8)
    call = StopCall(idx, stop_id, s, t, t_open, t_open, t_open)
    slot = t_open + rng.uniform(0.8, 1.5)
    last = t_open + rng.uniform(3.0, 5.0)
    for rider, reach in dem.board:
        bt = slot if reach is None else max(slot, reach)
        call.board_t[rider] = bt
        slot = bt + rng.uniform(1.6, 2.6)
        last = max(last, bt)
    aslot = t_open + rng.uniform(0.5, 1.2)
    for rider in dem.alight:
        call.alight_t[rider] = aslot
        last = max(last, aslot)
        aslot += rng.uniform(1.1, 1.9)
    t_close = last + rng.uniform(2.0, 4.0) + dem.hold_s
    for rider in dem.last_moment:
        call.alight_t[rider] = t_close - rng.uniform(0.3, 0.8)
    call.t_close = t_close
    call.t_depart = t_close + rng.uniform(1.0, 2.5)
    return call


def drive_car(
    path: RoutePath,
    *,
    t_start: float,
    s_from: float,
    s_to: float,
    vmax: float,
    rng: random.Random,
) -> Motion:
    """A car driving ``s_from`` to ``s_to`` along a path, stopping only at red lights."""
    m = Motion()
    m.add(t_start, s_from, 0.0, 0.0)
    t = _drive(m, path, t_start, s_from, s_to, vmax, rng)
    m.add(t, s_to, 0.0, 0.0)
    return m
