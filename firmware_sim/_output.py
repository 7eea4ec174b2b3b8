"""Generate a named scenario into a directory: traces, keys, GTFS and the ground truth.

Layout of ``OUT``::

    gtfs/                 copy of the feed used
    traces/BUS.jsonl      trace v1 per bus (meta has scenario, seed, scale)
    keys/BUS.pem          each bus's Ed25519 device key (PEM PKCS#8)
    DEVICES.csv FLEET.csv RIDERS.csv
    JOURNEYS.jsonl        ground truth, DESIGN format, ``fare_krw`` null
    requests.jsonl        boarding-wait requests (rider app, stop call units)
    truth.json            buses, stop calls, bystander passes, unobservable legs, stats

Everything is a pure function of (scenario, seed, scale, options): the same inputs give
the same bytes, keys included.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from busbell import (
    DEVICES_HEADER,
    FLEET_HEADER,
    RIDERS_HEADER,
    TraceWriter,
    day_of,
    get_logger,
    load_gtfs,
    write_rows,
)
from firmware_sim._keys import device_key, fleet_key, rider_key
from firmware_sim._radio import RadioParams
from firmware_sim._scenarios import build_scenario
from firmware_sim._world import SimResult, TokenEnvelope, TruthLeg, World, simulate

__all__ = [
    "GenerateOptions",
    "ScenarioOutput",
    "generate",
    "group_journeys",
    "run_scenario",
    "sample_gtfs_dir",
]


def _log() -> Any:
    """The module's logger (looked up per use: it must follow configure_logging)."""
    return get_logger("firmware_sim.output")


JOURNEY_GAP_S = 1800.0


def sample_gtfs_dir() -> Path:
    """The sample GTFS feed shipped with the package."""
    return Path(__file__).resolve().parent / "data" / "gtfs"


@dataclass(frozen=True, slots=True)
class GenerateOptions:
    """Options of a generation run (see :mod:`firmware_sim.config`)."""

    gtfs_dir: Path | None = None
    radio: RadioParams = field(default_factory=RadioParams)
    cutoff_m: float = 100.0
    pass_radius_m: float = 30.0
    alight_hold_s: float = 5.0
    gnss_sigma_m: float = 3.5
    tq_window_s: float = 60.0
    start_at: float | None = None
    """UNIX time to start at instead of the scenario's local date and time (live mode)."""
    skip_stop_bus: str | None = None
    """This bus drives past a stop nobody uses without halting (``BusSpec.skip_stop``)."""
    envelope: TokenEnvelope = field(default_factory=TokenEnvelope)
    """How every token departs from the scenario (the sweep's token axes)."""


@dataclass(slots=True)
class ScenarioOutput:
    """An in-memory run plus what the writer needs."""

    name: str
    seed: int
    scale: str
    description: str
    start_local: str
    gtfs_dir: Path
    result: SimResult
    fleet_keys: dict[int, bytes]
    elapsed_s: float


_WORLDS: dict[str, World] = {}


def _world(gtfs_dir: Path) -> World:
    key = str(gtfs_dir.resolve())
    w = _WORLDS.get(key)
    if w is None:
        w = _WORLDS[key] = World(load_gtfs(gtfs_dir), gtfs_dir)
    return w


def run_scenario(
    name: str, seed: int, scale: str = "small", options: GenerateOptions | None = None
) -> ScenarioOutput:
    """Simulate a named scenario in memory.

    Raises:
        KeyError: unknown scenario.
        ValueError: bad scale.
    """
    opts = options or GenerateOptions()
    started = time.perf_counter()
    gtfs_dir = opts.gtfs_dir or sample_gtfs_dir()
    world = _world(gtfs_dir)
    spec = build_scenario(name, seed, scale)
    if opts.skip_stop_bus is not None:
        if opts.skip_stop_bus not in {b.bus_id for b in spec.buses}:
            raise ValueError(f"scenario {name} has no bus {opts.skip_stop_bus!r}")
        spec.buses = [
            replace(b, skip_stop=True) if b.bus_id == opts.skip_stop_bus else b for b in spec.buses
        ]
    if opts.start_at is not None:
        t0 = float(opts.start_at)
    else:
        local = datetime.fromisoformat(spec.start_local).replace(
            tzinfo=ZoneInfo(world.feed.timezone)
        )
        t0 = local.timestamp()
    day0 = day_of(t0)
    # yesterday to a week ahead: what a bus holds when the backend delivers keys in time
    # (the edge warns below fleet_keys_warn_days = 3 days ahead)
    fleet = {d: fleet_key(seed, d) for d in range(day0 - 1, day0 + 8)}
    riders = {p.person_id: rider_key(seed, p.person_id) for p in spec.persons}
    result = simulate(
        world,
        spec,
        seed=seed,
        t0=t0,
        fleet_keys=fleet,
        rider_keys=riders,
        radio=opts.radio,
        cutoff_m=opts.cutoff_m,
        pass_radius_m=opts.pass_radius_m,
        alight_hold_s=opts.alight_hold_s,
        gnss_sigma_m=opts.gnss_sigma_m,
        tq_window_s=opts.tq_window_s,
        envelope=opts.envelope,
    )
    elapsed = time.perf_counter() - started
    _log().info(
        "scenario_simulated",
        scenario=name,
        seed=seed,
        scale=scale,
        elapsed_s=round(elapsed, 3),
        **{k: v for k, v in result.stats.items() if k != "echo"},
    )
    return ScenarioOutput(
        name, seed, scale, spec.description, spec.start_local, gtfs_dir, result, fleet, elapsed
    )


def group_journeys(legs: list[TruthLeg], gap_s: float = JOURNEY_GAP_S) -> list[dict[str, Any]]:
    """Group legs into journeys: a boarding within ``gap_s`` of the last alighting continues.

    Returns:
        DESIGN-format journey objects sorted by rider and first boarding.
    """
    by_rider: dict[str, list[TruthLeg]] = {}
    for leg in legs:
        by_rider.setdefault(leg.rider_id, []).append(leg)
    out: list[dict[str, Any]] = []
    for rider in sorted(by_rider):
        cur: list[TruthLeg] = []
        for leg in sorted(by_rider[rider], key=lambda lg: lg.board_t):
            if cur and leg.board_t - cur[-1].alight_t > gap_s:
                out.append(_journey(rider, cur))
                cur = []
            cur.append(leg)
        if cur:
            out.append(_journey(rider, cur))
    return out


def _journey(rider: str, legs: list[TruthLeg]) -> dict[str, Any]:
    return {
        "rider_id": rider,
        "legs": [
            {
                "bus_id": lg.bus_id,
                "route_id": lg.route_id,
                "board_stop_id": lg.board_stop_id,
                "board_t": lg.board_t,
                "alight_stop_id": lg.alight_stop_id,
                "alight_t": lg.alight_t,
            }
            for lg in legs
        ],
        "fare_krw": None,
    }


def _dump(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def generate(
    name: str,
    seed: int,
    out_dir: str | os.PathLike[str],
    scale: str = "small",
    options: GenerateOptions | None = None,
) -> dict[str, Any]:
    """Generate a scenario into ``out_dir`` (created; existing files are overwritten).

    Returns:
        The ``truth.json`` object.
    """
    run = run_scenario(name, seed, scale, options)
    res = run.result
    out = Path(out_dir)
    for sub in ("traces", "keys"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    gtfs_out = out / "gtfs"
    gtfs_out.mkdir(exist_ok=True)
    for f in sorted(run.gtfs_dir.iterdir()):
        if f.is_file() and f.suffix == ".txt":
            shutil.copyfile(f, gtfs_out / f.name)
    buses = []
    devices = []
    for bus_id, plan in res.plans.items():
        trace = out / "traces" / f"{bus_id}.jsonl"
        with open(trace, "w", encoding="utf-8", newline="\n") as fp:
            w = TraceWriter(
                fp,
                bus_id,
                scenario=name,
                seed=seed,
                scale=scale,
                generator="busbell firmware_sim",
            )
            for rec in res.records[bus_id]:
                w.write(rec)
        key = device_key(seed, bus_id)
        pem = out / "keys" / f"{bus_id}.pem"
        pem.write_bytes(key.to_pem())
        pem.chmod(0o600)
        devices.append((bus_id, key.public.hex))
        spec = res.bus_specs[bus_id]
        buses.append(
            {
                "bus_id": bus_id,
                "route_id": plan.path.route_id,
                "direction_id": plan.path.direction_id,
                "trip_id": res.trip_ids[bus_id],
                "trace": f"traces/{bus_id}.jsonl",
                "device_key": f"keys/{bus_id}.pem",
                "t_start": round(plan.t_start, 3),
                "t_end": round(plan.t_end, 3),
                "door_fault": list(spec.door_fault) if spec.door_fault else None,
                "extra_on_board": spec.extra_on_board,
                "calls": [
                    {
                        "stop_id": c.stop_id,
                        "t_arrive": round(c.t_arrive, 3),
                        "t_open": round(c.t_open, 3),
                        "t_close": round(c.t_close, 3),
                        "t_depart": round(c.t_depart, 3),
                        "boarded": len(c.board_t),
                        "alighted": len(c.alight_t),
                    }
                    for c in plan.calls
                ],
            }
        )
    write_rows(out / "DEVICES.csv", DEVICES_HEADER, devices)
    write_rows(
        out / "FLEET.csv",
        FLEET_HEADER,
        [(str(d), k.hex()) for d, k in sorted(run.fleet_keys.items())],
    )
    write_rows(
        out / "RIDERS.csv",
        RIDERS_HEADER,
        [(r, k.hex()) for r, k in sorted(res.rider_keys.items())],
    )
    silent = set(res.silent_riders)
    journeys = group_journeys([lg for lg in res.legs if lg.rider_id not in silent])
    (out / "JOURNEYS.jsonl").write_text("".join(_dump(j) + "\n" for j in journeys), "utf-8")
    (out / "requests.jsonl").write_text("".join(_dump(r) + "\n" for r in res.requests), "utf-8")
    per_bus: dict[str, int] = dict.fromkeys(res.plans, 0)
    for p in res.passes:
        per_bus[p.bus_id] += 1
    truth: dict[str, Any] = {
        "format": "busbell-sim-truth/1",
        "scenario": name,
        "description": run.description,
        "seed": seed,
        "scale": scale,
        "start_local": run.start_local,
        "t_start": round(res.t0, 3),
        "t_end": round(res.t1, 3),
        "gtfs": "gtfs",
        "buses": buses,
        "journeys": len(journeys),
        "legs": sum(len(j["legs"]) for j in journeys),
        "silent_riders": res.silent_riders,
        "unobservable_legs": res.unobservable,
        "bystander_passes": {
            "radius_m": (options or GenerateOptions()).pass_radius_m,
            "total": len(res.passes),
            "per_bus": per_bus,
            "passes": [
                {
                    "rider_id": p.rider_id,
                    "bus_id": p.bus_id,
                    "t0": p.t0,
                    "t1": p.t1,
                    "min_distance_m": p.min_distance_m,
                }
                for p in res.passes
            ],
        },
        "requests": len(res.requests),
        "skipped_stops": res.skipped_stops,
        "stats": res.stats,
    }
    (out / "truth.json").write_text(_dump(truth) + "\n", encoding="utf-8")
    _log().info(
        "scenario_written",
        scenario=name,
        seed=seed,
        out=str(out),
        journeys=len(journeys),
        bystander_passes=len(res.passes),
    )
    return truth
