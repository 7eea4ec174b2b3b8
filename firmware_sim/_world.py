"""The world around the buses: people, tokens, vehicles, radio, and the ground truth.

A scenario (:class:`ScenarioSpec`) names buses, riders (with their legs), bystanders
(people waiting at stops for other routes, pedestrians, car occupants) and faults.
:func:`simulate` plans every bus (:mod:`firmware_sim._vehicle`), turns every person
into a timeline of positions (phases), then steps time in 1-s ticks: for every token
near a bus it generates the token's advertising events, asks the radio model
(:mod:`firmware_sim._radio`) what the bus's scanner reports, and records it. It also
records each bus's GNSS fixes, door sensor and trip sign-on, and writes down what
really happened: every rider's legs and every bystander pass.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import random
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from busbell import (
    AdvRecord,
    DoorRecord,
    Feed,
    GnssRecord,
    TraceRecord,
    TripRecord,
    get_logger,
)
from busbell._echo import SEQ_MOD
from firmware_sim._beacon import EchoAudit, EchoModel, EchoParams
from firmware_sim._geometry import Projection, RoutePath, build_route_paths
from firmware_sim._keys import rider_key
from firmware_sim._radio import Loss, Placement, RadioChannel, RadioParams
from firmware_sim._tokens import KIND_PROFILES, DeviceKind, TokenDevice
from firmware_sim._vehicle import (
    MOTORWAY_HOP_M,
    BusPlan,
    Motion,
    StopDemand,
    drive_car,
    plan_bus,
)

__all__ = [
    "BusSpec",
    "BystanderPass",
    "CarSpec",
    "LegSpec",
    "PedestrianSpec",
    "PersonSpec",
    "RequestSpec",
    "ScenarioSpec",
    "SimResult",
    "TokenEnvelope",
    "TruthLeg",
    "WaiterSpec",
    "World",
    "simulate",
    "tunnel_spans",
]


def _log() -> Any:
    """The module's logger (looked up per use: it must follow configure_logging)."""
    return get_logger("firmware_sim.world")


FRONT_DOOR_A = 4.8
MIDDLE_DOOR_A = -0.8
DOOR_L = 1.25
WALK_MPS = 1.3
MAX_CLOSING_MPS = 45.0
"""Fastest a person (walking or in a car) and a bus can close in on each other."""
NON_TOKEN_INTERVAL_S = 0.5
"""Mean advertising interval assumed for BLE devices that are not busbell tokens."""
NON_TOKEN_DISTANCE_M = 3.0
"""Distance assumed between the scanner and the BLE devices aboard that are not tokens."""


@dataclass(slots=True)
class BusSpec:
    """A bus in the scenario.

    Attributes:
        bus_id: id (also its scanner id and trace name).
        route_id: GTFS route.
        direction_id: 0 or 1.
        t_start: when it halts at its first stop, seconds after the scenario start.
        first_idx: first pattern stop index.
        last_idx: last pattern stop index (``None``: the pattern's last).
        lane_m: lane offset while driving (-3.5: the lane left of the kerb lane).
        door_fault: ``("stuck_open" | "stuck_closed", seconds after t_start)``.
        extra_on_board: untracked passengers (card payers) for the collision model.
        p_extra_stop: probability of halting at a stop with no tracked rider.
        start_after: ``(bus_id, stop_id, delay_s)``: start relative to another bus's
            arrival at a stop (overrides ``t_start``).
        skip_stop: the driver drives past the first stop after the bus's first that no
            tracked rider uses (and no stop call unit calls), without halting: a rider
            app's wait there is missed (``SimResult.skipped_stops``).
    """

    bus_id: str
    route_id: str
    direction_id: int = 0
    t_start: float = 0.0
    first_idx: int = 0
    last_idx: int | None = None
    lane_m: float = 0.0
    door_fault: tuple[str, float] | None = None
    extra_on_board: int = 0
    p_extra_stop: float = 0.7
    start_after: tuple[str, str, float] | None = None
    skip_stop: bool = False


@dataclass(slots=True)
class LegSpec:
    """A ride of a rider on a bus, by pattern stop index.

    Attributes:
        bus_id: the bus.
        board_idx: boarding stop index.
        alight_idx: alighting stop index.
        press_alight: presses the stop bell on the token before the stop.
        last_moment: jumps off as the doors close.
        by_door: stands right by the middle door for the whole ride.
        seat: ``(a, l)`` position in the bus (metres ahead of the scanner, metres to
            the right), or ``None`` for a random seat or standing place.
    """

    bus_id: str
    board_idx: int
    alight_idx: int
    press_alight: bool = True
    last_moment: bool = False
    by_door: bool = False
    seat: tuple[float, float] | None = None


@dataclass(slots=True)
class PersonSpec:
    """A rider with a token and zero or more legs.

    Attributes:
        person_id: the rider id (RIDERS.csv).
        kind: token device kind.
        placement: where the token is carried.
        legs: rides in order.
        wait_s: how long before the bus the rider reaches the first stop.
        clock_offset_s: token clock error at the scenario start.
        drift_ppm: token clock rate error.
        assist: ASSIST flag while travelling.
        wait_flag: WAIT flag while waiting at a stop (and a rider-app request).
        dead_after_s: battery goes flat this long after the first boarding.
        stay_after_s: stays near the alighting stop this long before walking off.
    """

    person_id: str
    kind: DeviceKind
    placement: Placement
    legs: list[LegSpec] = field(default_factory=list)
    wait_s: float = 120.0
    clock_offset_s: float = 0.0
    drift_ppm: float = 0.0
    assist: bool = False
    wait_flag: bool = False
    dead_after_s: float | None = None
    stay_after_s: float = 0.0


@dataclass(slots=True)
class WaiterSpec:
    """People waiting at a stop for a route not simulated (bystanders).

    Attributes:
        stop_id: the stop.
        n: how many.
        near_bus: the bus whose halt they surround (``None``: use t0/t1).
        t0: from, seconds after the scenario start (when ``near_bus`` is None).
        t1: until.
        by_door: stand right where the bus's doors open.
    """

    stop_id: str
    n: int
    near_bus: str | None = None
    t0: float = 0.0
    t1: float = 0.0
    by_door: bool = False


@dataclass(slots=True)
class PedestrianSpec:
    """People walking along a route's pavements during the scenario."""

    route_id: str
    direction_id: int
    n: int


@dataclass(slots=True)
class CarSpec:
    """Cars (with riders' phones inside) driving alongside a bus.

    Attributes:
        bus_id: the bus they drive near.
        n: how many cars.
        occupants: tokens per car.
    """

    bus_id: str
    n: int
    occupants: int = 1


@dataclass(slots=True)
class RequestSpec:
    """A stop call unit press (rider without a phone) before a bus arrives.

    Attributes:
        bus_id: the bus that should stop.
        stop_idx: pattern stop index.
        lead_s: how long before the bus's arrival the button is pressed.
    """

    bus_id: str
    stop_idx: int
    lead_s: float = 120.0


@dataclass(slots=True)
class ScenarioSpec:
    """Everything a scenario puts in the world."""

    name: str
    description: str
    start_local: str
    """Local (agency timezone) date and time of the scenario start, ISO format."""
    buses: list[BusSpec]
    persons: list[PersonSpec]
    waiters: list[WaiterSpec] = field(default_factory=list)
    pedestrians: list[PedestrianSpec] = field(default_factory=list)
    cars: list[CarSpec] = field(default_factory=list)
    requests: list[RequestSpec] = field(default_factory=list)
    tunnels: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    stop_crowd: float = 1.0
    """Mean number of token carriers waiting for other routes at each bus halt."""
    street_pedestrians_km_h: float = 10.0
    """Token carriers walking the pavements, per km of the buses' runs and per hour."""


@dataclass(frozen=True, slots=True)
class TokenEnvelope:
    """How every token of a run departs from its scenario (``busbell sim score --sweep``).

    The defaults change nothing (and draw no random number), so a default run is the
    scenario as written. Draws come from a generator of their own, keyed by the seed and
    the person, so moving one axis does not redraw the rest of the world.

    Attributes:
        adv_interval_s: every token advertises at this interval (BLE allows 20 ms to
            10.24 s; apps use 0.1-1 s, fobs up to 2 s to save the battery).
        placements: where tokens are carried, as ``(placement, weight)``: every person's
            placement is drawn from this mix instead of the scenario's.
        clock_offset_s: every token's clock is off by a uniform draw in +-this (s),
            replacing the scenario's offsets (drift is kept).
        addr_rotation_s: every token's BLE address rotation: ``0`` with its rid,
            ``math.inf`` never (see :class:`~firmware_sim._tokens.TokenDevice`).
        crowd: multiplies the people waiting at halts and walking the pavements
            (tokens in range that are not riders).
        halt_crowd: this many more people (bystanders, the usual token mix) stand
            around the middle halt of the run's first bus (by bus id): a stadium or
            festival letting out, so that some 3,000 tokens are in range at once while
            the bus approaches, stands and leaves. They spread over a plaza 3-40 m from
            the kerb and 60 m along the road, arrive 30-180 s before the bus and stay
            10-180 s after it left (waiting for other buses). Drawn from a generator of
            their own, after everything else.
        echo_share: the share of phone tokens (foreground and Android background apps;
            never fobs, and a backgrounded iPhone sends nothing) that listen to the bus
            beacons and echo them in byte 23 (:mod:`firmware_sim._beacon`). Who listens
            is drawn per person from a generator of its own, and what they hear from
            another: the adverts are the same as with ``0`` except byte 23.
        echo: the bus beacon and the listening phone's parameters.
    """

    adv_interval_s: float | None = None
    placements: tuple[tuple[Placement, float], ...] | None = None
    clock_offset_s: float | None = None
    addr_rotation_s: float | None = None
    crowd: float = 1.0
    halt_crowd: int = 0
    echo_share: float = 0.0
    echo: EchoParams = field(default_factory=EchoParams)

    def __post_init__(self) -> None:
        """Validate.

        Raises:
            ValueError: ``echo_share`` outside 0-1.
        """
        if not 0.0 <= self.echo_share <= 1.0:
            raise ValueError(f"echo_share must be in [0, 1], got {self.echo_share}")

    @property
    def is_default(self) -> bool:
        """Whether it changes nothing."""
        return self == TokenEnvelope()


@dataclass(frozen=True, slots=True)
class TruthLeg:
    """One real leg."""

    rider_id: str
    bus_id: str
    route_id: str
    board_stop_id: str
    board_t: float
    alight_stop_id: str
    alight_t: float


@dataclass(frozen=True, slots=True)
class BystanderPass:
    """A token that was near a bus (within the pass radius) without riding it."""

    rider_id: str
    bus_id: str
    t0: float
    t1: float
    min_distance_m: float


@dataclass(slots=True)
class SimResult:
    """What :func:`simulate` produces."""

    records: dict[str, list[TraceRecord]]
    plans: dict[str, BusPlan]
    bus_specs: dict[str, BusSpec]
    trip_ids: dict[str, str]
    legs: list[TruthLeg]
    passes: list[BystanderPass]
    unobservable: list[dict[str, Any]]
    silent_riders: list[str]
    rider_keys: dict[str, bytes]
    requests: list[dict[str, Any]]
    stats: dict[str, Any]
    t0: float
    t1: float
    skipped_stops: list[dict[str, Any]] = field(default_factory=list)
    """Stops a bus drove past on purpose (``BusSpec.skip_stop``): bus_id, route_id,
    stop_id, idx and ``t`` (when it passed the stop)."""


def tunnel_spans(path: RoutePath, proj: Projection) -> list[tuple[float, float]]:
    """The tunnels (from ``data/tunnels.toml``) on a route path, as distance intervals."""
    data = tomllib.loads(
        (Path(__file__).resolve().parent / "data" / "tunnels.toml").read_text("utf-8")
    )
    out: list[tuple[float, float]] = []
    for tun in data.get("tunnel", []):
        ends = []
        for lat, lon in (tun["portal_a"], tun["portal_b"]):
            x, y = proj.to_xy(lat, lon)
            s = path.line.project(x, y)
            px, py, _, _ = path.line.at(s)
            if math.hypot(px - x, py - y) > 20.0:
                break
            ends.append(s)
        if len(ends) == 2:
            out.append((min(ends), max(ends)))
    return out


# where a token is relative to a bus
_OUTSIDE, _INSIDE, _IN_VEHICLE = 0, 1, 2

# person phase kinds
_STATIC, _WALK, _RIDE, _PATHWALK = 0, 1, 2, 3


@dataclass(slots=True)
class _Person:
    spec: PersonSpec
    role: str
    token: TokenDevice
    phases: list[tuple[float, float, int, tuple[Any, ...]]] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    edge_ticks: set[int] = field(default_factory=set)
    next_adv: float = 0.0
    legs: list[TruthLeg] = field(default_factory=list)
    t_end: float = -math.inf
    skip_until: int = 0
    interval: float = 1.0
    advertises: bool = True
    listens: bool = False
    echo_next: float = -math.inf

    def finish(self) -> None:
        self.phases.sort(key=lambda p: (p[0], p[1]))
        self.starts = [p[0] for p in self.phases]
        for t0, t1, _, _ in self.phases:
            self.edge_ticks.add(math.floor(t0))
            self.edge_ticks.add(math.floor(t1))
        self.t_end = self.t_last
        prof = self.token.profile
        self.interval = self.token.adv_interval_s
        self.advertises = prof.advertises

    def sends(self, t: float) -> bool:
        dead = self.token.dead_at
        return self.advertises and (dead is None or t < dead)

    @property
    def t_first(self) -> float:
        return self.phases[0][0] if self.phases else math.inf

    @property
    def t_last(self) -> float:
        return max(p[1] for p in self.phases) if self.phases else -math.inf


class World:
    """The static world of a feed: projection, route paths and tunnels."""

    def __init__(self, feed: Feed, gtfs_dir: Path) -> None:
        self.feed = feed
        lats = [s.lat for s in feed.stops.values()]
        lons = [s.lon for s in feed.stops.values()]
        self.proj = Projection(sum(lats) / len(lats), sum(lons) / len(lons))
        self.paths = build_route_paths(feed, gtfs_dir, self.proj)
        self.tunnels = {k: tunnel_spans(p, self.proj) for k, p in self.paths.items()}


class _Sim:
    """One run of a scenario (all state of :func:`simulate`)."""

    def __init__(  # noqa: PLR0917 - private, called once
        self,
        world: World,
        spec: ScenarioSpec,
        seed: int,
        t0: float,
        fleet_keys: dict[int, bytes],
        rider_keys: dict[str, bytes],
        radio: RadioParams,
        cutoff_m: float,
        pass_radius_m: float,
        alight_hold_s: float,
        gnss_sigma_m: float,
        envelope: TokenEnvelope,
    ) -> None:
        self.world = world
        self.envelope = envelope
        self.spec = spec
        self.seed = seed
        self.t0 = t0
        self.fleet_keys = fleet_keys
        self.rider_keys = rider_keys
        self.rng = random.Random(f"{seed}|{spec.name}|world")
        self.radio = RadioChannel(radio, random.Random(f"{seed}|{spec.name}|radio"))
        # A token inside another vehicle reaches the scanner through two shells: that
        # vehicle's (the cited car penetration loss) and the bus's. Same model, with the
        # sum of two independent normal shell losses.
        other = radio.shell_loss
        self.radio_in_vehicle = RadioChannel(
            dataclasses.replace(
                radio,
                shell_loss=Loss(
                    radio.shell_loss.mean_db + other.mean_db,
                    math.hypot(radio.shell_loss.std_db, other.std_db),
                ),
                shell_loss_door_open=Loss(
                    radio.shell_loss_door_open.mean_db + other.mean_db,
                    math.hypot(radio.shell_loss_door_open.std_db, other.std_db),
                ),
            ),
            random.Random(f"{seed}|{spec.name}|radio-in-vehicle"),
        )
        self.cutoff = cutoff_m
        self.pass_radius = pass_radius_m
        self.alight_hold_s = alight_hold_s
        self.gnss_sigma = gnss_sigma_m
        self.plans: dict[str, BusPlan] = {}
        self.bus_specs = {b.bus_id: b for b in spec.buses}
        self.persons: list[_Person] = []
        self.cars: list[tuple[RoutePath, Motion, float, float, float]] = []
        self.requests: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.legs_by_person: dict[str, list[tuple[LegSpec, float, float, Any, Any]]] = {}

    # ---- planning -------------------------------------------------------------------

    def path_of(self, bus: BusSpec) -> RoutePath:
        return self.world.paths[(bus.route_id, bus.direction_id)]

    def _skip(
        self, bus: BusSpec, path: RoutePath, demand: dict[int, StopDemand], last_idx: int
    ) -> int:
        called = {q.stop_idx for q in self.spec.requests if q.bus_id == bus.bus_id}
        for idx in range(bus.first_idx + 1, last_idx):
            if idx not in demand and idx not in called:
                return idx
        raise ValueError(
            f"{bus.bus_id}: every stop of its run has riders or a stop call: none to skip"
        )

    def plan(self) -> None:
        occupied: dict[str, list[tuple[float, float]]] = {}
        # leg-level bookkeeping: person -> list of (leg, board_t, alight_t, board_call, alight_call)
        done: dict[str, list[tuple[LegSpec, float, float, Any, Any]]] = {}
        for bus in self.spec.buses:
            path = self.path_of(bus)
            last_idx = bus.last_idx if bus.last_idx is not None else len(path.stop_ids) - 1
            t_start = self.t0 + bus.t_start
            if bus.start_after is not None:
                other, stop_id, delay = bus.start_after
                call = next(c for c in self.plans[other].calls if c.stop_id == stop_id)
                t_start = call.t_arrive + delay
            demand: dict[int, StopDemand] = {}
            for p in self.spec.persons:
                prev_alight: tuple[float, str] | None = None
                for leg in p.legs:
                    if leg.bus_id == bus.bus_id:
                        if not (bus.first_idx <= leg.board_idx < leg.alight_idx <= last_idx):
                            raise ValueError(f"{p.person_id}: leg outside the run of {bus.bus_id}")
                        reach = None
                        if prev_alight is not None:
                            reach = prev_alight[0] + self.rng.uniform(20.0, 60.0)
                        demand.setdefault(leg.board_idx, StopDemand()).board.append(
                            (p.person_id, reach)
                        )
                        dem = demand.setdefault(leg.alight_idx, StopDemand())
                        (dem.last_moment if leg.last_moment else dem.alight).append(p.person_id)
                        if p.assist:
                            demand[leg.board_idx].hold_s = max(demand[leg.board_idx].hold_s, 20.0)
                            dem.hold_s = max(dem.hold_s, 20.0)
                        break
                    got = [d for d in done.get(p.person_id, []) if d[0] is leg]
                    if got:
                        prev_alight = (got[0][2], got[0][4].stop_id)
            for dem in demand.values():
                self.rng.shuffle(dem.alight)
            skip = self._skip(bus, path, demand, last_idx) if bus.skip_stop else None
            plan = plan_bus(
                bus.bus_id,
                path,
                t_start=t_start,
                first_idx=bus.first_idx,
                last_idx=last_idx,
                demand=demand,
                rng=self.rng,
                occupied=occupied,
                p_extra_stop=bus.p_extra_stop,
                lane_m=bus.lane_m,
                skip=frozenset(() if skip is None else (skip,)),
            )
            self.plans[bus.bus_id] = plan
            if skip is not None:
                self.skipped.append(
                    {
                        "bus_id": bus.bus_id,
                        "route_id": path.route_id,
                        "stop_id": path.stop_ids[skip],
                        "idx": skip,
                        "t": round(plan.motion.time_at_s(path.stop_s[skip], plan.t_start), 3),
                    }
                )
            by_idx = {c.idx: c for c in plan.calls}
            for p in self.spec.persons:
                for leg in p.legs:
                    if leg.bus_id != bus.bus_id:
                        continue
                    bc, ac = by_idx[leg.board_idx], by_idx[leg.alight_idx]
                    done.setdefault(p.person_id, []).append(
                        (leg, bc.board_t[p.person_id], ac.alight_t[p.person_id], bc, ac)
                    )
        for pid, items in done.items():
            order = {id(leg): i for i, leg in enumerate(self._spec_person(pid).legs)}
            items.sort(key=lambda d: order[id(d[0])])
        self.legs_by_person = done

    def _spec_person(self, pid: str) -> PersonSpec:
        return next(p for p in self.spec.persons if p.person_id == pid)

    # ---- people ---------------------------------------------------------------------

    def _token(self, pid: str, kind: DeviceKind, spec: PersonSpec | None) -> TokenDevice:
        rng = self.rng
        if spec is not None and (spec.clock_offset_s or spec.drift_ppm):
            offset, drift = spec.clock_offset_s, spec.drift_ppm
        elif kind is DeviceKind.FOB:
            offset, drift = rng.gauss(0.0, 3.0), rng.gauss(0.0, 10.0)
        else:
            offset, drift = rng.gauss(0.0, 0.05), 0.0
        env = self.envelope
        if env.clock_offset_s is not None:
            offset = self._env_rng(pid).uniform(-env.clock_offset_s, env.clock_offset_s)
        return TokenDevice(
            device_id=f"tok-{pid}",
            token_key=self.rider_keys[pid],
            kind=kind,
            fleet_keys=self.fleet_keys,
            clock_offset_s=offset,
            drift_ppm=drift,
            sync_t=self.t0,
            phase_s=rng.uniform(0.0, 900.0),
            interval_s=env.adv_interval_s,
            addr_rotation_s=env.addr_rotation_s,
        )

    def _env_rng(self, pid: str) -> random.Random:
        return random.Random(f"{self.seed}|{self.spec.name}|envelope|{pid}")

    def _placement(self, spec: PersonSpec) -> None:
        """Draw the person's placement from the envelope's mix (if it sets one)."""
        mix = self.envelope.placements
        if mix is None:
            return
        r = self._env_rng(spec.person_id + "|placement").random() * sum(w for _, w in mix)
        for placement, w in mix:
            spec.placement = placement
            r -= w
            if r < 0.0:
                break

    def _bus_pose(self, plan: BusPlan, t: float) -> tuple[float, float, float, float]:
        s, v = plan.motion.at(t)
        x, y, tx, ty = plan.path.line.at(s)
        if plan.lane_m and v > 0.0:
            x += plan.lane_m * ty
            y -= plan.lane_m * tx
        return x, y, tx, ty

    def _stop_spot(self, path: RoutePath, idx: int, by_door: bool = False) -> tuple[float, float]:
        x, y, tx, ty = path.line.at(path.stop_s[idx])
        rng = self.rng
        if by_door:
            lat, along = rng.uniform(1.8, 3.0), rng.uniform(-2.0, 5.5)
        else:
            lat, along = rng.uniform(2.5, 6.5), rng.uniform(-12.0, 6.0)
        return x + along * tx + lat * ty, y + along * ty - lat * tx

    def _door_out(self, plan: BusPlan, t: float, a: float) -> tuple[float, float]:
        x, y, tx, ty = self._bus_pose(plan, t)
        lat = DOOR_L + 0.8
        return x + a * tx + lat * ty, y + a * ty - lat * tx

    def _away(self, x: float, y: float, plan: BusPlan, t: float) -> tuple[float, float]:
        _, _, tx, ty = self._bus_pose(plan, t)
        rng = self.rng
        lat, along = rng.uniform(8.0, 40.0), rng.uniform(-120.0, 120.0)
        return x + along * tx + lat * ty, y + along * ty - lat * tx

    def build_riders(self) -> None:
        rng = self.rng
        for spec in self.spec.persons:
            token = self._token(spec.person_id, spec.kind, spec)
            self._placement(spec)
            person = _Person(spec, "rider", token)
            legs = self.legs_by_person.get(spec.person_id, [])
            ph = person.phases
            first_board = legs[0][1] if legs else None
            pos: tuple[float, float] | None = None
            t_free: float | None = None  # time the rider is free (after previous leg)
            for k, (leg, board_t, alight_t, bc, ac) in enumerate(legs):
                plan = self.plans[leg.bus_id]
                path = plan.path
                spot = self._stop_spot(path, leg.board_idx)
                if k == 0:
                    t_spot = bc.t_arrive - spec.wait_s
                    start = (spot[0] + rng.uniform(-60, 60), spot[1] + rng.uniform(-60, 60))
                    walk = math.dist(start, spot) / WALK_MPS
                    ph.append((t_spot - walk, t_spot, _WALK, (*start, *spot)))
                    if spec.wait_flag:
                        token.add_flag(t_spot, board_t, 4)
                        self.requests.append(
                            {
                                "t": round(t_spot + rng.uniform(0.0, 20.0), 3),
                                "route_id": path.route_id,
                                "stop_id": path.stop_ids[leg.board_idx],
                                "source": "app",
                                "bus_id": leg.bus_id,
                                "rider_id": spec.person_id,
                            }
                        )
                else:
                    assert pos is not None
                    assert t_free is not None
                    walk = max(math.dist(pos, spot) / WALK_MPS, 5.0)
                    t_spot = min(t_free + walk, board_t - 3.0)
                    ph.append((t_free, t_spot, _WALK, (*pos, *spot)))
                door = self._door_out(plan, board_t, FRONT_DOOR_A)
                t_go = max(board_t - max(math.dist(spot, door) / WALK_MPS, 1.0), t_spot)
                ph.append((t_spot, t_go, _STATIC, spot))
                ph.append((t_go, board_t, _WALK, (*spot, *door)))
                bi = leg.bus_id
                ph.append((board_t, board_t + 4.0, _RIDE, (bi, FRONT_DOOR_A - 0.5, 0.6)))
                if leg.by_door:
                    seat = (MIDDLE_DOOR_A + rng.uniform(-0.8, 0.8), rng.uniform(0.4, 1.0))
                elif leg.seat is not None:
                    seat = leg.seat
                else:
                    seat = (rng.uniform(-5.0, 4.0), rng.uniform(-1.0, 1.0))
                t_up = max(ac.t_arrive - rng.uniform(3.0, 20.0), board_t + 4.0)
                t_up = min(t_up, alight_t)
                ph.append((board_t + 4.0, t_up, _RIDE, (bi, *seat)))
                ph.append((t_up, alight_t, _RIDE, (bi, MIDDLE_DOOR_A + 0.3, 0.8)))
                if leg.press_alight:
                    prior = [c for c in plan.calls if c.t_depart <= ac.t_arrive and c is not ac]
                    t_press = (prior[-1].t_depart if prior else board_t) + rng.uniform(5.0, 40.0)
                    t_press = max(min(t_press, ac.t_arrive - 6.0), board_t + 2.0)
                    token.add_flag(t_press, t_press + self.alight_hold_s, 1)
                if spec.assist:
                    token.add_flag(board_t - 60.0, alight_t + 10.0, 2)
                out = self._door_out(plan, alight_t, MIDDLE_DOOR_A)
                pos, t_free = out, alight_t
                person.legs.append(
                    TruthLeg(
                        spec.person_id,
                        bi,
                        path.route_id,
                        bc.stop_id,
                        round(board_t, 3),
                        ac.stop_id,
                        round(alight_t, 3),
                    )
                )
            if pos is not None and t_free is not None:
                last_plan = self.plans[legs[-1][0].bus_id]
                if spec.stay_after_s > 0:
                    near = (pos[0] + rng.uniform(-1.0, 1.0), pos[1] + rng.uniform(-1.0, 1.0))
                    ph.append((t_free, t_free + 2.0, _WALK, (*pos, *near)))
                    ph.append((t_free + 2.0, t_free + 2.0 + spec.stay_after_s, _STATIC, near))
                    pos, t_free = near, t_free + 2.0 + spec.stay_after_s
                dest = self._away(pos[0], pos[1], last_plan, t_free)
                walk = math.dist(pos, dest) / WALK_MPS
                ph.append((t_free, t_free + walk, _WALK, (*pos, *dest)))
            if spec.dead_after_s is not None and first_board is not None:
                token.dead_at = first_board + spec.dead_after_s
            person.finish()
            self.persons.append(person)

    def _bystander_kind(self) -> tuple[DeviceKind, Placement]:
        r = self.rng.random()
        kind = (
            DeviceKind.PHONE_FOREGROUND
            if r < 0.3
            else DeviceKind.ANDROID_BACKGROUND
            if r < 0.6
            else DeviceKind.FOB
            if r < 0.75
            else DeviceKind.IOS_BACKGROUND
        )
        placement = self.rng.choice(
            [Placement.IN_HAND, Placement.POCKET, Placement.BAG_DEEP, Placement.FOB_ON_LANYARD]
        )
        if kind is DeviceKind.PHONE_FOREGROUND:
            placement = Placement.IN_HAND
        return kind, placement

    def _new_bystander(self, role: str) -> _Person:
        pid = f"r-{len(self.rider_keys) + 1:05d}"
        self.rider_keys[pid] = rider_key(self.seed, pid)
        kind, placement = self._bystander_kind()
        spec = PersonSpec(pid, kind, placement)
        self._placement(spec)
        return _Person(spec, role, self._token(pid, kind, None))

    def _build_halt_crowd(self, n: int) -> None:
        """``n`` people around one middle halt of the first bus (see ``halt_crowd``)."""
        if n <= 0:
            return
        plan = self.plans[min(self.plans)]
        mid = plan.calls[1:-1] or plan.calls
        call = mid[len(mid) // 2]
        x, y, tx, ty = plan.path.line.at(plan.path.stop_s[call.idx])
        saved, self.rng = self.rng, random.Random(f"{self.seed}|{self.spec.name}|halt_crowd")
        try:
            rng = self.rng
            for _ in range(n):
                p = self._new_bystander("waiter")
                a = call.t_arrive - rng.uniform(30.0, 180.0)
                b = call.t_depart + rng.uniform(10.0, 180.0)
                lat, along = rng.uniform(3.0, 40.0), rng.uniform(-30.0, 30.0)
                spot = (x + along * tx + lat * ty, y + along * ty - lat * tx)
                p.phases.append((a, b, _STATIC, spot))
                p.finish()
                self.persons.append(p)
        finally:
            self.rng = saved

    def build_bystanders(self, t_begin: float, t_end: float) -> None:
        rng = self.rng
        for w in self.spec.waiters:
            for _ in range(w.n):
                p = self._new_bystander("waiter")
                call = None
                if w.near_bus is not None:
                    plan = self.plans[w.near_bus]
                    # the bus may pass the stop without calling (nobody to board or alight)
                    call = next((c for c in plan.calls if c.stop_id == w.stop_id), None)
                if call is not None:
                    path = plan.path
                    idx = call.idx
                    a = call.t_arrive - rng.uniform(30.0, 400.0)
                    b = call.t_depart + rng.uniform(15.0, 400.0)
                else:
                    key = next(k for k, pa in self.world.paths.items() if w.stop_id in pa.stop_ids)
                    path = self.world.paths[key]
                    idx = path.stop_ids.index(w.stop_id)
                    a, b = self.t0 + w.t0, self.t0 + w.t1
                spot = self._stop_spot(path, idx, by_door=w.by_door)
                start = (spot[0] + rng.uniform(-50, 50), spot[1] + rng.uniform(-50, 50))
                walk = math.dist(start, spot) / WALK_MPS
                p.phases.append((a - walk, a, _WALK, (*start, *spot)))
                p.phases.append((a, b, _STATIC, spot))
                if rng.random() < 0.3 and p.token.kind is DeviceKind.PHONE_FOREGROUND:
                    p.token.add_flag(a, b, 4)  # waiting for another route, app open
                p.finish()
                self.persons.append(p)
        walks: list[tuple[RoutePath, int, float, float]] = []
        for ped in self.spec.pedestrians:
            path = self.world.paths[(ped.route_id, ped.direction_id)]
            walks.append((path, ped.n, 0.0, path.line.length))
        hours = (t_end - t_begin) / 3600.0
        for plan in self.plans.values():
            ss = plan.path.stop_s
            for i in range(plan.calls[0].idx, plan.calls[-1].idx):
                if ss[i + 1] - ss[i] > MOTORWAY_HOP_M:
                    continue  # nobody walks along the motorway
                km = (ss[i + 1] - ss[i]) / 1000.0
                n = round(self.spec.street_pedestrians_km_h * self.envelope.crowd * km * hours)
                walks.append((plan.path, n, ss[i], ss[i + 1]))
        for path, n_walkers, s_lo, s_hi in walks:
            for _ in range(n_walkers):
                p = self._new_bystander("pedestrian")
                dur = rng.uniform(180.0, 900.0)
                a = rng.uniform(t_begin - dur / 2, t_end - dur / 2)
                speed = rng.uniform(1.1, 1.6) * rng.choice((-1.0, 1.0))
                s0 = rng.uniform(s_lo, s_hi)
                lat = rng.choice((rng.uniform(4.0, 7.0), rng.uniform(-18.0, -14.0)))
                p.phases.append((a, a + dur, _PATHWALK, (path, s0, speed, lat)))
                p.finish()
                self.persons.append(p)
        for plan in self.plans.values():
            for call in plan.calls[1:]:
                for _ in range(_poisson(rng, self.spec.stop_crowd * self.envelope.crowd)):
                    p = self._new_bystander("waiter")
                    a = call.t_arrive - rng.uniform(20.0, 600.0)
                    b = call.t_depart + rng.uniform(5.0, 600.0)
                    spot = self._stop_spot(plan.path, call.idx, by_door=rng.random() < 0.2)
                    p.phases.append((a, b, _STATIC, spot))
                    p.finish()
                    self.persons.append(p)
        self._build_halt_crowd(self.envelope.halt_crowd)
        for car in self.spec.cars:
            plan = self.plans[car.bus_id]
            for _ in range(car.n):
                call = rng.choice(plan.calls[:-1]) if len(plan.calls) > 1 else plan.calls[0]
                s_from = max(call.s - rng.uniform(50.0, 300.0), 0.0)
                s_to = min(s_from + rng.uniform(800.0, 3000.0), plan.path.line.length)
                t_start = call.t_depart + rng.uniform(-40.0, 20.0)
                motion = drive_car(
                    plan.path,
                    t_start=t_start,
                    s_from=s_from,
                    s_to=s_to,
                    vmax=rng.uniform(11.0, 16.0),
                    rng=rng,
                )
                t_arr = motion.t0[-1]
                lane = rng.choice((-3.5, -3.5, 0.0))
                vi = len(self.cars)
                self.cars.append((plan.path, motion, lane, t_start, t_arr))
                for _ in range(car.occupants):
                    p = self._new_bystander("car")
                    p.spec.placement = rng.choice((Placement.IN_HAND, Placement.POCKET))
                    if p.token.kind is DeviceKind.FOB:
                        p.token.kind = DeviceKind.ANDROID_BACKGROUND
                    seat = (rng.uniform(-1.0, 1.0), rng.uniform(-0.5, 0.5))
                    p.phases.append((t_start, t_arr, _RIDE, (f"car:{vi}", *seat)))
                    p.finish()
                    self.persons.append(p)
        for req in self.spec.requests:
            plan = self.plans[req.bus_id]
            call = next(c for c in plan.calls if c.idx == req.stop_idx)
            self.requests.append(
                {
                    "t": round(call.t_arrive - req.lead_s, 3),
                    "route_id": plan.path.route_id,
                    "stop_id": call.stop_id,
                    "source": "stop_unit",
                    "bus_id": req.bus_id,
                }
            )

    # ---- positions ------------------------------------------------------------------

    def _vehicle_pose(self, ref: str, t: float) -> tuple[float, float, float, float]:
        if ref.startswith("car:"):
            path, motion, lane, _, _ = self.cars[int(ref[4:])]
            s, _ = motion.at(t)
            x, y, tx, ty = path.line.at(s)
            return x + lane * ty, y - lane * tx, tx, ty
        return self._bus_pose(self.plans[ref], t)

    def person_state(
        self, p: _Person, t: float, poses: dict[str, tuple[float, float, float, float]] | None
    ) -> tuple[float, float, str | None, float, float] | None:
        """Where a person is at ``t``: ``(x, y, vehicle, a, l)`` or None if not present."""
        i = bisect.bisect_right(p.starts, t) - 1
        if i < 0:
            return None
        t0, t1, kind, d = p.phases[i]
        if t > t1:
            return None
        if kind == _STATIC:
            return d[0], d[1], None, 0.0, 0.0
        if kind == _WALK:
            f = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
            return d[0] + f * (d[2] - d[0]), d[1] + f * (d[3] - d[1]), None, 0.0, 0.0
        if kind == _RIDE:
            ref, a, lat = d
            pose = poses.get(ref) if poses is not None else None
            if pose is None:
                pose = self._vehicle_pose(ref, t)
            x, y, tx, ty = pose
            return x + a * tx + lat * ty, y + a * ty - lat * tx, ref, a, lat
        path, s0, speed, lat = d
        x, y, tx, ty = path.line.at(s0 + speed * (t - t0))
        return x + lat * ty, y - lat * tx, None, 0.0, 0.0


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth; small means only)."""
    limit, k, prod = math.exp(-mean), 0, rng.random()
    while prod > limit:
        k += 1
        prod *= rng.random()
    return k


def _door_intervals(plan: BusPlan) -> tuple[list[float], list[float]]:
    return [c.t_open for c in plan.calls], [c.t_close for c in plan.calls]


def _is_open(opens: list[float], closes: list[float], t: float) -> bool:
    i = bisect.bisect_right(opens, t) - 1
    return i >= 0 and t < closes[i]


def simulate(
    world: World,
    spec: ScenarioSpec,
    *,
    seed: int,
    t0: float,
    fleet_keys: dict[int, bytes],
    rider_keys: dict[str, bytes],
    radio: RadioParams,
    cutoff_m: float = 100.0,
    pass_radius_m: float = 30.0,
    alight_hold_s: float = 5.0,
    gnss_sigma_m: float = 3.5,
    tq_window_s: float = 60.0,
    envelope: TokenEnvelope | None = None,
) -> SimResult:
    """Run a scenario.

    Args:
        world: the feed's static world.
        spec: the scenario.
        seed: the run's seed (every random draw derives from it).
        t0: UNIX time of the scenario start.
        fleet_keys: day -> fleet key.
        rider_keys: rider id -> token key for the scenario's riders; bystanders are
            added to it.
        radio: radio model parameters.
        cutoff_m: tokens farther than this from a bus are not sampled at all.
        pass_radius_m: radius of a bystander pass.
        alight_hold_s: how long the ALIGHT flag is held after a press.
        gnss_sigma_m: GNSS error per axis (metres, 1 sigma).
        tq_window_s: the edge's tq window, to flag legs no bus could accept.
        envelope: how every token departs from the scenario (default: not at all).
    """
    sim = _Sim(
        world,
        spec,
        seed,
        t0,
        fleet_keys,
        rider_keys,
        radio,
        cutoff_m,
        pass_radius_m,
        alight_hold_s,
        gnss_sigma_m,
        envelope or TokenEnvelope(),
    )
    sim.plan()
    t_begin = min(p.t_start for p in sim.plans.values()) - 10.0
    t_end = max(p.t_end for p in sim.plans.values())
    sim.build_riders()
    sim.build_bystanders(t_begin, t_end)
    records, passes, stats = _run(sim, t_begin, t_end)
    legs = [leg for p in sim.persons for leg in p.legs]
    legs.sort(key=lambda lg: (lg.rider_id, lg.board_t))
    silent = sorted(
        p.spec.person_id
        for p in sim.persons
        if p.role == "rider" and not p.token.profile.advertises and p.legs
    )
    unobservable: list[dict[str, Any]] = []
    for p in sim.persons:
        tok = p.token
        for leg in p.legs:
            reason = None
            if not tok.profile.advertises:
                reason = "silent_ios_background"
            elif tok.dead_at is not None and tok.dead_at < leg.alight_t:
                reason = "flat_battery"
            elif (
                max(
                    abs(tok.clock(leg.board_t) - leg.board_t),
                    abs(tok.clock(leg.alight_t) - leg.alight_t),
                )
                > tq_window_s - 4.0
            ):
                reason = "clock_beyond_window"
            if reason is not None:
                unobservable.append(
                    {
                        "rider_id": leg.rider_id,
                        "bus_id": leg.bus_id,
                        "board_t": leg.board_t,
                        "reason": reason,
                    }
                )
    trip_ids = {b: _trip_id(world.feed, sim.plans[b], t0, spec) for b in sim.plans}
    for i, r in enumerate(sorted(sim.requests, key=lambda r: (r["t"], r["stop_id"]))):
        r["request_id"] = f"rq-{seed}-{spec.name[:12]}-{i + 1:04d}".replace("_", "-")
    reqs = sorted(sim.requests, key=lambda r: (r["t"], r["request_id"]))
    return SimResult(
        records=records,
        plans=sim.plans,
        bus_specs=sim.bus_specs,
        trip_ids=trip_ids,
        legs=legs,
        passes=passes,
        unobservable=unobservable,
        silent_riders=silent,
        rider_keys=sim.rider_keys,
        requests=reqs,
        skipped_stops=sim.skipped,
        stats=stats,
        t0=t_begin,
        t1=t_end,
    )


def _trip_id(feed: Feed, plan: BusPlan, t0: float, spec: ScenarioSpec) -> str:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(feed.timezone)
    local = datetime.fromtimestamp(plan.t_start, tz)
    sod = local.hour * 3600 + local.minute * 60 + local.second
    first_stop = plan.calls[0].stop_id
    best: tuple[float, str] | None = None
    for trip in feed.trips.values():
        if trip.route_id != plan.path.route_id or trip.direction_id != plan.path.direction_id:
            continue
        if first_stop not in trip.stop_ids:
            continue
        dep = trip.departures_s[trip.stop_ids.index(first_stop)]
        if dep is None:
            continue
        cand = (abs(dep - sod), trip.trip_id)
        if best is None or cand < best:
            best = cand
    return best[1] if best else f"{plan.path.route_id}-sim"


def _run(  # noqa: PLR0912, PLR0915 - the hot loop is kept in one function on purpose
    sim: _Sim, t_begin: float, t_end: float
) -> tuple[dict[str, list[TraceRecord]], list[BystanderPass], dict[str, Any]]:
    rng = sim.rng
    radio = sim.radio
    plans = sim.plans
    bus_ids = list(plans)
    records: dict[str, list[TraceRecord]] = {b: [] for b in bus_ids}
    _vehicle_records(sim, records)
    doors = {b: _door_intervals(plans[b]) for b in bus_ids}
    extra = {b: sim.bus_specs[b].extra_on_board for b in bus_ids}
    span = {b: (plans[b].t_start - 10.0, plans[b].t_end) for b in bus_ids}
    cutoff = sim.cutoff
    cutoff2 = cutoff * cutoff
    pass_r = sim.pass_radius
    persons = sorted(sim.persons, key=lambda p: p.t_first)
    for p in persons:
        p.next_adv = t_begin + rng.uniform(0.0, p.interval)
    links: dict[tuple[int, str, bool], Any] = {}
    radio2 = sim.radio_in_vehicle
    # a token in another vehicle reaches the scanner through that vehicle's shell too
    extra_shell_db = radio2.params.shell_loss.mean_db - radio.params.shell_loss.mean_db
    echo, audit, echo_legs = _echo_setup(sim, persons, extra_shell_db)
    seq_now: dict[str, int] = {}
    # BLE devices that are not tokens (card payers' phones, earbuds): aboard, in pockets
    non_token_dbm = radio.params.expected_rssi(NON_TOKEN_DISTANCE_M, True, Placement.POCKET)
    offsets_copied: set[str] = set()
    prev_d: dict[tuple[int, str], float] = {}
    windows: dict[tuple[int, str], list[float]] = {}
    passes_raw: list[tuple[int, str, float, float, float]] = []
    n_adv = 0
    n_events = 0
    active: list[int] = []
    next_person = 0
    k0, k1 = math.floor(t_begin), math.ceil(t_end)
    starts = sorted(math.floor(plans[b].t_start - 10.0) for b in bus_ids)
    for k in range(k0, k1):
        t_hi = k + 1.0
        while next_person < len(persons) and persons[next_person].t_first <= t_hi:
            active.append(next_person)
            next_person += 1
        poses: dict[str, tuple[float, float, float, float]] = {}
        live_bus: list[str] = []
        for b in bus_ids:
            pl = plans[b]
            if pl.t_start - 10.0 <= t_hi <= pl.t_end:
                poses[b] = sim._bus_pose(pl, t_hi)
                live_bus.append(b)
        near_all: list[tuple[int, list[tuple[str, float, int]]]] = []
        crowd: dict[str, float] = dict.fromkeys(live_bus, 0.0)
        count: dict[str, int] = dict.fromkeys(live_bus, 0)
        levels: dict[str, list[float]] = {b: [] for b in live_bus}
        open_now = {b: _is_open(*doors[b], t_hi) for b in live_bus}
        if echo is not None:  # for the audit: what each bus's beacon says this second
            seq_now = {b: echo.seq(b, t_hi) for b in live_bus}
        keep: list[int] = []
        next_start = starts[bisect.bisect_right(starts, k)] if starts[-1] > k else k1
        for pi in active:
            p = persons[pi]
            if p.t_end < k:
                continue
            keep.append(pi)
            if not live_bus or p.skip_until > k:
                continue
            st = sim.person_state(p, t_hi, poses)
            if st is None:
                continue
            x, y, veh, a, lat = st
            near: list[tuple[str, float, int]] = []
            dmin2 = math.inf
            for b in live_bus:
                if veh == b:
                    d = math.sqrt(a * a + lat * lat + 0.25)
                    near.append((b, d, _INSIDE))
                    continue
                bx, by, _, _ = poses[b]
                dx, dy = x - bx, y - by
                d2 = dx * dx + dy * dy
                if d2 > cutoff2:
                    dmin2 = min(dmin2, d2)
                    continue
                d = math.sqrt(d2)
                near.append((b, d, _OUTSIDE if veh is None else _IN_VEHICLE))
                if d <= pass_r and p.sends(t_hi):
                    key = (pi, b)
                    w = windows.get(key)
                    if w is not None and t_hi - w[1] <= 60.0:
                        w[1] = t_hi
                        w[2] = min(w[2], d)
                    else:
                        if w is not None:
                            passes_raw.append((pi, b, w[0], w[1], w[2]))
                        windows[key] = [t_hi, t_hi, d]
            if near:
                near_all.append((pi, near))
                dev, place = p.token.device_id, p.spec.placement
                for b, d, where in near:
                    count[b] += 1
                    crowd[b] += 1.0 / p.interval
                    # its mean level at the scanner, for capture (docs/radio.md)
                    if where == _INSIDE:
                        lvl = radio.mean_level_dbm(dev, d, True, place)
                    else:
                        lvl = radio.mean_level_dbm(dev, d, False, place, door_open=open_now[b])
                        if where == _IN_VEHICLE:
                            lvl -= extra_shell_db
                    levels[b].append(lvl)
            else:
                # far from every bus: nothing can come within the cutoff for a while
                skip = int((math.sqrt(dmin2) - cutoff) / MAX_CLOSING_MPS)
                if skip >= 2:
                    p.skip_until = min(k + skip, next_start)
        active = keep
        for b in live_bus:
            pl = plans[b]
            on_board = extra[b] if pl.calls[0].t_depart <= t_hi <= pl.calls[-1].t_arrive else 0
            n = count[b] + on_board + 3
            rate = crowd[b] + (on_board + 3) / NON_TOKEN_INTERVAL_S
            lv = levels[b]
            lv.extend([non_token_dbm] * (on_board + 3))
            radio.set_crowd(b, n, n / rate, lv)
            radio2.set_crowd(b, n, n / rate, lv)
        for pi, near in near_all:
            p = persons[pi]
            tok = p.token
            interval = p.interval
            if not p.sends(k):
                p.next_adv = max(p.next_adv, t_hi)
                continue
            exact = k in p.edge_ticks
            placement = p.spec.placement
            if p.listens and p.echo_next < t_hi and echo is not None:
                p.echo_next = echo.refresh(tok, placement, k, near, open_now, span)
            while p.next_adv < t_hi:
                te = p.next_adv
                p.next_adv = te + interval + rng.random() * 0.01
                if te < k or not p.sends(te):
                    continue
                n_events += 1
                payload: bytes | None = None
                addr = ""
                f = te - k
                st = sim.person_state(p, te, None) if exact else None
                if exact and st is None:
                    continue
                for b, d1, where_tick in near:
                    w0, w1 = span[b]
                    if te < w0 or te > w1:
                        continue
                    key = (pi, b)
                    where = where_tick
                    if exact:
                        assert st is not None
                        x, y, veh, a, lat = st
                        if veh == b:
                            where = _INSIDE
                            d = math.sqrt(a * a + lat * lat + 0.25)
                        else:
                            where = _OUTSIDE if veh is None else _IN_VEHICLE
                            bx, by, _, _ = sim._bus_pose(plans[b], te)
                            d = math.hypot(x - bx, y - by)
                    else:
                        d0 = prev_d.get(key, d1)
                        d = d0 + (d1 - d0) * f
                    inside = where == _INSIDE
                    ch = radio2 if where == _IN_VEHICLE else radio
                    lkey = (pi, b, where == _IN_VEHICLE)
                    link = links.get(lkey)
                    if link is None:
                        if ch is radio2 and tok.device_id not in offsets_copied:
                            radio2.set_tx_offset(tok.device_id, radio.tx_offset_db(tok.device_id))
                            offsets_copied.add(tok.device_id)
                        link = links[lkey] = ch.link(tok.device_id, b)
                    door_open = False if inside else _is_open(*doors[b], te)
                    rssi = ch.sample(link, d, inside, placement, te, door_open=door_open)
                    if rssi is None:
                        continue
                    if payload is None:
                        payload = tok.payload(te)
                        addr = tok.address(te)
                    records[b].append(
                        AdvRecord(round(te, 3), addr, rssi, {tok.company_id: payload})
                    )
                    n_adv += 1
                    if audit is not None and p.listens:
                        _audit(audit, p, echo_legs[pi], b, te, payload, seq_now[b])
            if p.next_adv < k:
                p.next_adv = t_hi
        prev_d = {(pi, b): d for pi, near in near_all for b, d, _ in near}
        # skip the advertising clocks of people near no bus forward cheaply
        near_set = {pi for pi, _ in near_all}
        for pi in active:
            if pi in near_set:
                continue
            p = persons[pi]
            if p.next_adv < t_hi:
                iv = p.interval + 0.005
                p.next_adv += math.ceil((t_hi - p.next_adv) / iv) * iv
    for (pi, b), w in windows.items():
        passes_raw.append((pi, b, w[0], w[1], w[2]))
    passes: list[BystanderPass] = []
    for pi, b, a, z, dmin in passes_raw:
        p = persons[pi]
        if not p.token.profile.advertises:
            continue
        own = any(
            leg.bus_id == b and a <= leg.alight_t + 300.0 and z >= leg.board_t - 900.0
            for leg in p.legs
        )
        if own:
            continue
        passes.append(BystanderPass(p.spec.person_id, b, round(a, 3), round(z, 3), round(dmin, 2)))
    passes.sort(key=lambda q: (q.bus_id, q.t0, q.rider_id))
    for b in bus_ids:
        records[b].sort(key=lambda r: (r.t, _kind_order(r)))
    rs, rs2 = radio.stats, radio2.stats
    stats: dict[str, Any] = {
        "adv_events_near_buses": n_events,
        "adv_records": n_adv,
        "radio_offered": rs.offered + rs2.offered,
        "radio_received": rs.received + rs2.received,
        "radio_collided": rs.collided + rs2.collided,
        "radio_captured": rs.captured + rs2.captured,
        "radio_below_sensitivity": rs.below_sensitivity + rs2.below_sensitivity,
        "persons": len(sim.persons),
    }
    if audit is not None:
        stats["echo"] = audit.as_dict()
    return records, passes, stats


def _echo_setup(
    sim: _Sim, persons: list[_Person], extra_shell_db: float
) -> tuple[EchoModel | None, EchoAudit | None, list[list[tuple[str, float, float, int]]]]:
    """Who listens to the bus beacons (``TokenEnvelope.echo_share``) and the echo model.

    Draws only from generators of its own (keyed by seed, scenario and person).
    """
    share = sim.envelope.echo_share
    legs: list[list[tuple[str, float, float, int]]] = [[] for _ in persons]
    if share <= 0.0:
        return None, None, legs
    audit = EchoAudit()
    for i, p in enumerate(persons):
        if p.token.kind not in _LISTENING_KINDS or not p.advertises:
            continue
        if sim._env_rng(p.spec.person_id + "|echo").random() >= share:
            continue
        p.listens = True
        audit.listening += 1
        legs[i] = [
            (leg.bus_id, board_t, alight_t, leg.board_idx % SEQ_MOD)
            for leg, board_t, alight_t, _, _ in sim.legs_by_person.get(p.spec.person_id, [])
        ]
    rng = random.Random(f"{sim.seed}|{sim.spec.name}|echo")
    model = EchoModel(sim.envelope.echo, sim.radio, sim.plans, extra_shell_db, rng)
    return model, audit, legs


def _audit(  # noqa: PLR0917 - called from the hot loop
    audit: EchoAudit,
    p: _Person,
    legs: list[tuple[str, float, float, int]],
    bus_id: str,
    te: float,
    payload: bytes,
    bus_seq: int,
) -> None:
    """Count one advert of a listening token received by ``bus_id`` (:class:`EchoAudit`)."""
    for leg_bus, board_t, alight_t, board_seq in legs:
        if leg_bus == bus_id and board_t <= te <= alight_t:
            ok = audit.count("rider_aboard", bus_id, payload, bus_seq, board_seq)
            row = audit.legs.setdefault((p.spec.person_id, bus_id, round(board_t, 3)), [0, 0])
            row[0] += 1
            row[1] += ok
            return
    role = "rider_elsewhere" if p.role == "rider" else p.role
    audit.count(role, bus_id, payload, bus_seq, None)


_LISTENING_KINDS = frozenset({DeviceKind.PHONE_FOREGROUND, DeviceKind.ANDROID_BACKGROUND})


def _kind_order(r: TraceRecord) -> int:
    if isinstance(r, TripRecord):
        return 0
    if isinstance(r, DoorRecord):
        return 1
    if isinstance(r, GnssRecord):
        return 2
    return 3


def _vehicle_records(sim: _Sim, records: dict[str, list[TraceRecord]]) -> None:
    """GNSS fixes (1 Hz, noisy, none in tunnels), door sensor and trip sign-on."""
    for b, plan in sim.plans.items():
        spec = sim.bus_specs[b]
        rng = random.Random(f"{sim.seed}|{sim.spec.name}|gnss|{b}")
        out = records[b]
        out.append(
            TripRecord(
                round(plan.t_start - 10.0, 3),
                plan.path.route_id,
                plan.path.direction_id,
                _trip_id(sim.world.feed, plan, sim.t0, sim.spec),
            )
        )
        tunnels = (
            sim.world.tunnels.get((plan.path.route_id, plan.path.direction_id), [])
            if sim.spec.tunnels
            else []
        )
        sigma = sim.gnss_sigma
        rho = math.exp(-1.0 / 20.0)  # 20-s correlation time of the GNSS error
        inn = sigma * math.sqrt(1.0 - rho * rho)
        ex, ey = rng.gauss(0.0, sigma), rng.gauss(0.0, sigma)
        proj = sim.world.proj
        for k in range(math.ceil(plan.t_start - 10.0), math.floor(plan.t_end) + 1):
            t = float(k)
            ex = rho * ex + rng.gauss(0.0, inn)
            ey = rho * ey + rng.gauss(0.0, inn)
            s, v = plan.motion.at(t)
            if any(a <= s <= z for a, z in tunnels):
                continue
            x, y, tx, ty = sim._bus_pose(plan, t)
            lat, lon = proj.to_latlon(x + ex, y + ey)
            speed = max(v + rng.gauss(0.0, 0.15), 0.0) if v > 0.05 else 0.0
            heading = math.degrees(math.atan2(tx, ty)) % 360.0
            out.append(
                GnssRecord(t, round(lat, 7), round(lon, 7), round(speed, 2), round(heading, 1))
            )
        events = [(c.t_open, True) for c in plan.calls] + [(c.t_close, False) for c in plan.calls]
        events.sort()
        fault = spec.door_fault
        t_fault = plan.t_start + fault[1] if fault is not None else math.inf
        is_open = False
        for t, state in events:
            if t >= t_fault:
                break
            out.append(DoorRecord(round(t, 3), state))
            is_open = state
        if fault is not None:
            kind = fault[0]
            if kind == "stuck_open" and not is_open:
                out.append(DoorRecord(round(t_fault, 3), True))
            elif kind == "stuck_closed" and is_open:
                out.append(DoorRecord(round(t_fault, 3), False))


def iter_records(records: list[TraceRecord]) -> Iterator[TraceRecord]:
    """The records of a bus in time order (they are sorted by :func:`simulate`)."""
    yield from records


def kind_interval(kind: DeviceKind) -> float:
    """Nominal advertising interval of a device kind."""
    return KIND_PROFILES[kind].interval_s
