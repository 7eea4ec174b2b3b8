"""The named scenario suite: each builds a :class:`ScenarioSpec` for a scale and a seed.

Stop indices refer to the sample feed's patterns (``firmware_sim/data/gtfs``), direction 0:

- ``55`` (gyeonggi_city): BD003 정자역, BD004, BD005 수내역, BD006 서현역, BD008,
  BD009 판교역, BD010
- ``17`` (gyeonggi_city): BD001 미금역, BD002, BD003 정자역, BD004, BD005 수내역,
  BD006 서현역, BD007
- ``G6000`` (gyeonggi_wide_area): BD003 정자역, BD005 수내역, BD006 서현역, BD009 판교역,
  SE001 양재역, SE002 강남역 (motorway with a tunnel between BD009 and SE001)

BD003, BD005 and BD006 are served by all three routes. Every scenario is documented in
``docs/simulator.md``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from firmware_sim._radio import Placement
from firmware_sim._tokens import DeviceKind
from firmware_sim._world import (
    BusSpec,
    CarSpec,
    LegSpec,
    PedestrianSpec,
    PersonSpec,
    RequestSpec,
    ScenarioSpec,
    WaiterSpec,
)

__all__ = ["SCENARIOS", "ScenarioInfo", "build_scenario", "scenario_names"]

DATE = "2026-03-10"
"""A Tuesday; 09:00 in Seoul is midnight UTC, so morning runs cross a fleet-key day."""

N_STOPS = {"55": 7, "17": 7, "G6000": 6}


@dataclass(frozen=True, slots=True)
class ScenarioInfo:
    """A named scenario: one-line summary and its builder."""

    name: str
    summary: str
    build: Callable[[random.Random, bool], ScenarioSpec]


class _Ids:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"r-{self.n:05d}"


_MIX = (
    (DeviceKind.FOB, 0.25),
    (DeviceKind.PHONE_FOREGROUND, 0.2),
    (DeviceKind.ANDROID_BACKGROUND, 0.4),
    (DeviceKind.IOS_BACKGROUND, 0.15),
)


def _kind(rng: random.Random, mix: tuple[tuple[DeviceKind, float], ...] = _MIX) -> DeviceKind:
    r = rng.random()
    acc = 0.0
    for kind, p in mix:
        acc += p
        if r < acc:
            return kind
    return mix[-1][0]


def _placement(rng: random.Random, kind: DeviceKind) -> Placement:
    if kind is DeviceKind.PHONE_FOREGROUND:
        return Placement.IN_HAND
    if kind is DeviceKind.FOB:
        return rng.choice((Placement.FOB_ON_LANYARD, Placement.POCKET, Placement.IN_HAND))
    return rng.choice((Placement.POCKET, Placement.POCKET, Placement.BAG_DEEP, Placement.IN_HAND))


def _rider(
    ids: _Ids,
    rng: random.Random,
    legs: list[LegSpec],
    *,
    kind: DeviceKind | None = None,
    placement: Placement | None = None,
    **kw: object,
) -> PersonSpec:
    k = kind if kind is not None else _kind(rng)
    pl = placement if placement is not None else _placement(rng, k)
    p = PersonSpec(ids(), k, pl, legs, wait_s=rng.uniform(20.0, 300.0))
    p.wait_flag = k is DeviceKind.PHONE_FOREGROUND and rng.random() < 0.5
    p.assist = rng.random() < 0.03
    for key, value in kw.items():
        setattr(p, key, value)
    return p


def _random_legs(
    rng: random.Random,
    bus: str,
    first: int,
    last: int,
    *,
    min_hops: int = 1,
    last_moment: bool = False,
) -> list[LegSpec]:
    b = rng.randint(first, last - min_hops)
    a = rng.randint(b + min_hops, last)
    return [LegSpec(bus, b, a, press_alight=rng.random() < 0.6, last_moment=last_moment)]


def _quiet_route(rng: random.Random, full: bool) -> ScenarioSpec:
    ids = _Ids()
    n = 30 if full else 10
    persons = [_rider(ids, rng, _random_legs(rng, "bus-55-01", 0, 6)) for _ in range(n)]
    return ScenarioSpec(
        "quiet_route",
        "",
        f"{DATE}T10:30:00",
        [BusSpec("bus-55-01", "55", extra_on_board=5)],
        persons,
        waiters=[WaiterSpec("BD005", 2, near_bus="bus-55-01")],
        pedestrians=[PedestrianSpec("55", 0, 12 if full else 5)],
        cars=[CarSpec("bus-55-01", 4 if full else 2)],
        requests=[RequestSpec("bus-55-01", 4, 150.0)],
    )


def _rush_hour_crowd(rng: random.Random, full: bool) -> ScenarioSpec:
    ids = _Ids()
    buses = [BusSpec("bus-55-01", "55", extra_on_board=70 if full else 60)]
    n = 60 if full else 25
    persons = []
    for _ in range(n):
        legs = _random_legs(rng, "bus-55-01", 0, 6)
        persons.append(_rider(ids, rng, legs))
    if full:
        buses.append(BusSpec("bus-55-02", "55", t_start=420.0, extra_on_board=50))
        for _ in range(40):
            persons.append(_rider(ids, rng, _random_legs(rng, "bus-55-02", 0, 6)))
    return ScenarioSpec(
        "rush_hour_crowd",
        "",
        f"{DATE}T08:40:00",
        buses,
        persons,
        waiters=[
            WaiterSpec("BD003", 6 if full else 3, near_bus="bus-55-01"),
            WaiterSpec("BD005", 8 if full else 4, near_bus="bus-55-01"),
            WaiterSpec("BD006", 8 if full else 4, near_bus="bus-55-01"),
            WaiterSpec("BD009", 6 if full else 3, near_bus="bus-55-01"),
        ],
        pedestrians=[PedestrianSpec("55", 0, 30 if full else 10)],
        cars=[CarSpec("bus-55-01", 8 if full else 3, occupants=2)],
        requests=[RequestSpec("bus-55-01", 3, 90.0)],
    )


def _shared_stop(rng: random.Random, full: bool) -> ScenarioSpec:
    ids = _Ids()
    buses = [
        BusSpec("bus-17-01", "17", first_idx=2, extra_on_board=15),
        BusSpec("bus-55-01", "55", start_after=("bus-17-01", "BD003", 25.0), extra_on_board=15),
        BusSpec(
            "bus-G6000-01",
            "G6000",
            start_after=("bus-55-01", "BD003", 20.0),
            last_idx=3,
            extra_on_board=20,
        ),
    ]
    persons: list[PersonSpec] = []
    per = 10 if full else 4
    for _ in range(per):
        # board at the shared stop BD005 (17: idx 4, 55: idx 2, G6000: idx 1)
        persons.append(_rider(ids, rng, [LegSpec("bus-17-01", 4, rng.randint(5, 6))]))
        persons.append(_rider(ids, rng, [LegSpec("bus-55-01", 2, rng.randint(3, 6))]))
        persons.append(_rider(ids, rng, [LegSpec("bus-G6000-01", 1, rng.randint(2, 3))]))
        # ride through the shared stop
        persons.append(_rider(ids, rng, [LegSpec("bus-17-01", 2, rng.randint(5, 6))]))
        persons.append(_rider(ids, rng, [LegSpec("bus-55-01", 0, rng.randint(3, 6))]))
        # alight at the shared stop
        persons.append(_rider(ids, rng, [LegSpec("bus-G6000-01", 0, 1)]))
    return ScenarioSpec(
        "shared_stop_three_routes",
        "",
        f"{DATE}T07:50:00",
        buses,
        persons,
        waiters=[WaiterSpec("BD005", 10 if full else 5, near_bus="bus-55-01")],
        pedestrians=[PedestrianSpec("55", 0, 12 if full else 5)],
    )


def _alongside(rng: random.Random, full: bool) -> ScenarioSpec:
    ids = _Ids()
    buses = [
        BusSpec("bus-17-01", "17", first_idx=2, lane_m=-3.5, p_extra_stop=0.0, extra_on_board=20),
        BusSpec(
            "bus-55-01",
            "55",
            start_after=("bus-17-01", "BD003", 8.0),
            p_extra_stop=0.0,
            extra_on_board=20,
        ),
    ]
    persons: list[PersonSpec] = []
    per = 15 if full else 6
    for _ in range(per):
        persons.append(_rider(ids, rng, [LegSpec("bus-17-01", 2, 5, press_alight=False)]))
        persons.append(_rider(ids, rng, [LegSpec("bus-55-01", 0, 3, press_alight=False)]))
    return ScenarioSpec(
        "bus_alongside_red_light",
        "",
        f"{DATE}T11:10:00",
        buses,
        persons,
        cars=[CarSpec("bus-55-01", 6 if full else 3)],
    )


def _by_door(rng: random.Random, full: bool) -> ScenarioSpec:
    ids = _Ids()
    persons: list[PersonSpec] = []
    n = 12 if full else 5
    for _ in range(n):
        persons.append(_rider(ids, rng, [LegSpec("bus-55-01", 0, rng.randint(4, 6), by_door=True)]))
    for _ in range(n):
        legs = _random_legs(rng, "bus-55-01", 0, 6)
        persons.append(_rider(ids, rng, legs, stay_after_s=rng.uniform(30.0, 120.0)))
    waiters = [
        WaiterSpec(stop, 3 if full else 2, near_bus="bus-55-01", by_door=True)
        for stop in ("BD004", "BD005", "BD006", "BD008")
    ]
    return ScenarioSpec(
        "rider_by_door_stays",
        "",
        f"{DATE}T13:20:00",
        [BusSpec("bus-55-01", "55", p_extra_stop=1.0, extra_on_board=10)],
        persons,
        waiters=waiters,
    )


def _last_moment(rng: random.Random, full: bool) -> ScenarioSpec:
    ids = _Ids()
    persons: list[PersonSpec] = []
    n = 14 if full else 6
    for i in range(n):
        bus = "bus-17-01" if i % 2 else "bus-55-01"
        legs = _random_legs(rng, bus, 0, 6, last_moment=True)
        persons.append(_rider(ids, rng, legs))
    for _ in range(n):
        bus = rng.choice(("bus-17-01", "bus-55-01"))
        persons.append(_rider(ids, rng, _random_legs(rng, bus, 0, 6)))
    return ScenarioSpec(
        "rider_jumps_off_last_moment",
        "",
        f"{DATE}T15:00:00",
        [
            BusSpec("bus-55-01", "55", extra_on_board=10),
            BusSpec("bus-17-01", "17", t_start=60.0, extra_on_board=10),
        ],
        persons,
        waiters=[WaiterSpec("BD005", 3, near_bus="bus-55-01")],
    )


def _deep_bag(rng: random.Random, full: bool) -> ScenarioSpec:
    ids = _Ids()
    persons: list[PersonSpec] = []
    n = 30 if full else 12
    mix = ((DeviceKind.ANDROID_BACKGROUND, 0.8), (DeviceKind.FOB, 0.2))
    for _ in range(n):
        persons.append(
            _rider(
                ids,
                rng,
                _random_legs(rng, "bus-55-01", 0, 6),
                kind=_kind(rng, mix),
                placement=Placement.BAG_DEEP,
            )
        )
    return ScenarioSpec(
        "phone_deep_in_bag",
        "",
        f"{DATE}T17:30:00",
        [BusSpec("bus-55-01", "55", extra_on_board=35)],
        persons,
        waiters=[WaiterSpec("BD006", 4, near_bus="bus-55-01")],
        pedestrians=[PedestrianSpec("55", 0, 8)],
    )


def _clock_drift(rng: random.Random, full: bool) -> ScenarioSpec:
    ids = _Ids()
    persons: list[PersonSpec] = []
    n = 24 if full else 10
    for i in range(n):
        legs = _random_legs(rng, "bus-17-01", 0, 6)
        if i % 5 == 4:
            offset = rng.choice((-1.0, 1.0)) * rng.uniform(90.0, 240.0)  # minutes off
        else:
            offset = rng.choice((-1.0, 1.0)) * rng.uniform(5.0, 50.0)
        drift = rng.choice((-1.0, 1.0)) * rng.uniform(20.0, 200.0)
        persons.append(
            _rider(
                ids,
                rng,
                legs,
                kind=DeviceKind.FOB,
                placement=Placement.FOB_ON_LANYARD,
                clock_offset_s=offset,
                drift_ppm=drift,
            )
        )
    return ScenarioSpec(
        "token_clock_drift",
        "",
        f"{DATE}T12:00:00",
        [BusSpec("bus-17-01", "17", extra_on_board=10)],
        persons,
    )


def _long_ride(rng: random.Random, full: bool) -> ScenarioSpec:
    ids = _Ids()
    persons: list[PersonSpec] = []
    n = 30 if full else 10
    for i in range(n):
        b = rng.randint(0, 1)
        legs = [LegSpec("bus-G6000-01", b, rng.randint(4, 5), press_alight=rng.random() < 0.6)]
        dead = rng.uniform(600.0, 1200.0) if i == 3 else None
        kind = DeviceKind.FOB if i == 3 else None
        persons.append(_rider(ids, rng, legs, kind=kind, dead_after_s=dead))
    return ScenarioSpec(
        "long_ride_many_intervals",
        "",
        f"{DATE}T06:50:00",
        [BusSpec("bus-G6000-01", "G6000", extra_on_board=25)],
        persons,
        waiters=[WaiterSpec("SE001", 4, near_bus="bus-G6000-01")],
    )


def _tunnel(rng: random.Random, full: bool) -> ScenarioSpec:
    ids = _Ids()
    persons: list[PersonSpec] = []
    n = 20 if full else 8
    for _ in range(n):
        b = rng.randint(2, 3)
        persons.append(_rider(ids, rng, [LegSpec("bus-G6000-01", b, rng.randint(4, 5))]))
    return ScenarioSpec(
        "gnss_tunnel",
        "",
        f"{DATE}T19:10:00",
        [BusSpec("bus-G6000-01", "G6000", first_idx=2, extra_on_board=15)],
        persons,
        waiters=[WaiterSpec("SE001", 3, near_bus="bus-G6000-01")],
    )


def _door_stuck(rng: random.Random, full: bool) -> ScenarioSpec:
    ids = _Ids()
    persons: list[PersonSpec] = []
    n = 12 if full else 5
    for _ in range(n):
        persons.append(_rider(ids, rng, _random_legs(rng, "bus-55-01", 0, 6)))
        persons.append(_rider(ids, rng, _random_legs(rng, "bus-17-01", 0, 6)))
    return ScenarioSpec(
        "door_sensor_stuck",
        "",
        f"{DATE}T14:00:00",
        [
            BusSpec("bus-55-01", "55", door_fault=("stuck_closed", 200.0), extra_on_board=10),
            BusSpec("bus-17-01", "17", door_fault=("stuck_open", 300.0), extra_on_board=10),
        ],
        persons,
        waiters=[
            WaiterSpec("BD005", 3, near_bus="bus-55-01"),
            WaiterSpec("BD006", 3, near_bus="bus-17-01"),
        ],
    )


def _sunae_changer(ids: _Ids, rng: random.Random) -> PersonSpec:
    """A rider on the 17 to Sunae (BD005), then on the G6000 from Sunae towards Seoul."""
    return _rider(
        ids,
        rng,
        [
            LegSpec("bus-17-01", rng.randint(0, 2), 4),
            LegSpec("bus-G6000-01", 1, rng.randint(3, 5)),
        ],
    )


def _transfer(rng: random.Random, full: bool) -> ScenarioSpec:
    ids = _Ids()
    buses = [
        BusSpec("bus-17-01", "17", extra_on_board=15),
        BusSpec("bus-G6000-01", "G6000", start_after=("bus-17-01", "BD005", -150.0), first_idx=0),
        BusSpec("bus-55-01", "55", start_after=("bus-17-01", "BD006", -200.0)),
    ]
    persons: list[PersonSpec] = []
    n = 12 if full else 5
    for _ in range(n):
        persons.append(_sunae_changer(ids, rng))
        # 17 to Seohyeon (BD006), then 55 to Pangyo
        persons.append(
            _rider(
                ids,
                rng,
                [
                    LegSpec("bus-17-01", rng.randint(0, 3), 5),
                    LegSpec("bus-55-01", 3, rng.randint(4, 6)),
                ],
            )
        )
    for _ in range(n // 2):
        persons.append(_rider(ids, rng, _random_legs(rng, "bus-55-01", 0, 6)))
    return ScenarioSpec(
        "transfer_two_buses",
        "",
        f"{DATE}T07:20:00",
        buses,
        persons,
        waiters=[WaiterSpec("BD005", 4, near_bus="bus-17-01")],
    )


def _bunched(rng: random.Random, full: bool) -> ScenarioSpec:
    """Routes 17 and G6000 halt at BD003 together and run bunched to BD005, where G6000 waits.

    Bus bunching ahead of a timed change: G6000 (express, no halt at BD004) reaches BD005
    first and holds its doors open for the riders changing from the 17 behind it. For a
    few minutes each bus hears the other's riders loudly: side by side at BD003, on the
    road, then at BD005 as riders cross from one to the other (unseen seeds 36 and 40 had
    this by chance in ``transfer_two_buses``).
    """
    ids = _Ids()
    buses = [
        BusSpec("bus-17-01", "17", extra_on_board=15),
        BusSpec(
            "bus-G6000-01",
            "G6000",
            start_after=("bus-17-01", "BD003", rng.uniform(-15.0, 25.0)),
            first_idx=0,
            lane_m=-3.5,
        ),
    ]
    persons: list[PersonSpec] = []
    n = 12 if full else 5
    for _ in range(n):
        persons.append(_sunae_changer(ids, rng))  # to the waiting G6000
    for _ in range(n // 2):
        # G6000 from BD003, beside the 17 to BD005 and on
        persons.append(_rider(ids, rng, [LegSpec("bus-G6000-01", 0, rng.randint(2, 5))]))
        # 17 through BD005
        persons.append(_rider(ids, rng, [LegSpec("bus-17-01", rng.randint(1, 3), 5)]))
    return ScenarioSpec(
        "transfer_bunched",
        "",
        f"{DATE}T08:10:00",
        buses,
        persons,
        waiters=[
            WaiterSpec("BD003", 3, near_bus="bus-17-01"),
            WaiterSpec("BD005", 3, near_bus="bus-17-01"),
        ],
    )


SCENARIOS: dict[str, ScenarioInfo] = {
    s.name: s
    for s in (
        ScenarioInfo("quiet_route", "one city bus mid-morning, few riders", _quiet_route),
        ScenarioInfo(
            "rush_hour_crowd",
            "packed city bus (up to 120 aboard), crowds at stops, crosses a UTC day",
            _rush_hour_crowd,
        ),
        ScenarioInfo(
            "shared_stop_three_routes",
            "three routes halt together at one stop; waiters for other routes",
            _shared_stop,
        ),
        ScenarioInfo(
            "bus_alongside_red_light",
            "two buses side by side at red lights, riders in both",
            _alongside,
        ),
        ScenarioInfo(
            "rider_by_door_stays",
            "riders standing at the door stay aboard; people linger by the doors outside",
            _by_door,
        ),
        ScenarioInfo(
            "rider_jumps_off_last_moment",
            "riders alight as the doors close",
            _last_moment,
        ),
        ScenarioInfo(
            "phone_deep_in_bag",
            "tokens deep in bags, mostly Android in the background (1 s adverts)",
            _deep_bag,
        ),
        ScenarioInfo(
            "token_clock_drift",
            "fobs with clocks off by seconds to minutes and drifting",
            _clock_drift,
        ),
        ScenarioInfo(
            "long_ride_many_intervals",
            "express ride over several 600-s rid intervals; one fob goes flat",
            _long_ride,
        ),
        ScenarioInfo(
            "gnss_tunnel",
            "express bus through a motorway tunnel (no GNSS fix inside)",
            _tunnel,
        ),
        ScenarioInfo(
            "door_sensor_stuck",
            "one bus's door sensor stuck closed, another's stuck open",
            _door_stuck,
        ),
        ScenarioInfo(
            "transfer_two_buses",
            "riders change buses at shared stops within minutes",
            _transfer,
        ),
        ScenarioInfo(
            "transfer_bunched",
            "17 and G6000 bunched from BD003; G6000 waits at BD005 for riders changing",
            _bunched,
        ),
    )
}


def scenario_names() -> list[str]:
    """Names of the suite, in suite order."""
    return list(SCENARIOS)


def build_scenario(name: str, seed: int, scale: str) -> ScenarioSpec:
    """Build a named scenario for a scale (``small`` or ``full``) and seed.

    Raises:
        KeyError: unknown scenario name.
        ValueError: unknown scale.
    """
    if scale not in ("small", "full"):
        raise ValueError(f"scale must be small or full, got {scale!r}")
    info = SCENARIOS[name]
    if scale == "small":
        spec = info.build(random.Random(f"{seed}|{name}|small|spec"), False)
    else:
        spec = _replicate(
            [
                info.build(random.Random(f"{seed}|{name}|full|spec|{r}"), True)
                for r in range(FULL_REPLICAS)
            ]
        )
    spec.description = info.summary
    spec.params = {"scale": scale, "replicas": 1 if scale == "small" else FULL_REPLICAS}
    if scale == "full":
        spec.stop_crowd = 3.0
        spec.street_pedestrians_km_h = 60.0
    return spec


FULL_REPLICAS = 4
"""At full scale a scenario runs this many times in a row on the same streets."""

FULL_HEADWAY_S = 900.0
"""Time between the replicas (a bus every 15 minutes)."""


def _replicate(specs: list[ScenarioSpec]) -> ScenarioSpec:
    """Merge independently drawn copies of a scenario, one headway apart.

    Buses of copy ``r`` get the suffix ``-r{r}`` (r >= 1); riders are renumbered.
    """
    out = specs[0]
    for r, spec in enumerate(specs[1:], start=1):
        ren = {b.bus_id: f"{b.bus_id}-r{r}" for b in spec.buses}
        offset = r * FULL_HEADWAY_S
        for b in spec.buses:
            b.bus_id = ren[b.bus_id]
            b.t_start += offset
            if b.start_after is not None:
                other, stop, delay = b.start_after
                b.start_after = (ren[other], stop, delay)
            out.buses.append(b)
        for p in spec.persons:
            for leg in p.legs:
                leg.bus_id = ren[leg.bus_id]
            out.persons.append(p)
        for w in spec.waiters:
            if w.near_bus is not None:
                w.near_bus = ren[w.near_bus]
            else:
                w.t0 += offset
                w.t1 += offset
            out.waiters.append(w)
        out.pedestrians.extend(spec.pedestrians)
        for c in spec.cars:
            c.bus_id = ren[c.bus_id]
            out.cars.append(c)
        for q in spec.requests:
            q.bus_id = ren[q.bus_id]
            out.requests.append(q)
    for i, p in enumerate(out.persons, start=1):
        p.person_id = f"r-{i:05d}"
    return out
