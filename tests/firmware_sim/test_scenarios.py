"""Every named scenario generates at small scale; outputs are consistent and deterministic."""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from busbell import (
    AdvRecord,
    DeviceKey,
    DoorRecord,
    GnssRecord,
    TokenRejected,
    TokenVerifier,
    TraceReader,
    TripRecord,
    derive_rider_keys,
    haversine_m,
    load_gtfs,
    read_devices,
    read_fleet_keys,
    read_riders,
    verify_rtag,
)
from firmware_sim import SCENARIOS, generate, scenario_names
from firmware_sim._score import load_journeys

SEED = 11


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("suite")
    out = {}
    for name in scenario_names():
        generate(name, SEED, root / name, "small")
        out[name] = root / name
    return out


def _trace(d: Path, bus: dict[str, Any]) -> list[Any]:
    with open(d / bus["trace"], encoding="utf-8") as f:
        reader = TraceReader(f)
        assert reader.meta.bus_id == bus["bus_id"]
        assert reader.meta.extra["scenario"] == d.name
        assert reader.meta.extra["seed"] == SEED
        return list(reader)


def test_suite_has_the_twelve_named_scenarios() -> None:
    required = {
        "quiet_route",
        "rush_hour_crowd",
        "shared_stop_three_routes",
        "bus_alongside_red_light",
        "rider_by_door_stays",
        "rider_jumps_off_last_moment",
        "phone_deep_in_bag",
        "token_clock_drift",
        "long_ride_many_intervals",
        "gnss_tunnel",
        "door_sensor_stuck",
        "transfer_two_buses",
    }
    assert required <= set(SCENARIOS)
    assert all(info.summary for info in SCENARIOS.values())


@pytest.mark.parametrize("name", scenario_names())
def test_scenario_outputs_are_complete_and_consistent(suite: dict[str, Path], name: str) -> None:
    d = suite[name]
    truth = json.loads((d / "truth.json").read_text())
    feed = load_gtfs(d / "gtfs")
    fleet = read_fleet_keys(d / "FLEET.csv")
    riders = read_riders(d / "RIDERS.csv")
    devices = read_devices(d / "DEVICES.csv")
    verifier = TokenVerifier(fleet)
    journeys = load_journeys(d / "JOURNEYS.jsonl")
    assert journeys
    calls = {(b["bus_id"], c["stop_id"]): c for b in truth["buses"] for c in b["calls"]}
    legs = 0
    for j in journeys:
        assert set(j) == {"rider_id", "legs", "fare_krw"}
        assert j["fare_krw"] is None
        assert j["rider_id"] in riders
        prev_alight = None
        for leg in j["legs"]:
            legs += 1
            assert leg["route_id"] in feed.routes
            c_board = calls[(leg["bus_id"], leg["board_stop_id"])]
            c_alight = calls[(leg["bus_id"], leg["alight_stop_id"])]
            assert c_board["t_open"] < leg["board_t"] < c_board["t_close"]
            assert c_alight["t_open"] < leg["alight_t"] < c_alight["t_close"]
            assert leg["board_t"] < leg["alight_t"]
            if prev_alight is not None:
                assert 0 < leg["board_t"] - prev_alight <= 1800
            prev_alight = leg["alight_t"]
    assert legs == truth["legs"]
    for bus in truth["buses"]:
        key = DeviceKey.load(d / bus["device_key"])
        assert key.public.hex == devices[bus["bus_id"]].hex
        recs = _trace(d, bus)
        assert isinstance(recs[0], TripRecord)
        assert recs[0].route_id == bus["route_id"]
        assert [r.t for r in recs] == sorted(r.t for r in recs)
        kinds = collections.Counter(type(r).__name__ for r in recs)
        assert kinds["GnssRecord"] > 100
        assert kinds["AdvRecord"] > 100
        rejected = collections.Counter()
        for r in recs:
            if isinstance(r, AdvRecord):
                assert set(r.mfr) == {0xFFFF}
                try:
                    verifier.verify(r.mfr[0xFFFF], r.t)
                except TokenRejected as exc:
                    rejected[exc.reason] += 1
        if name != "token_clock_drift":
            assert not rejected
    ids = {
        r["request_id"] for r in map(json.loads, (d / "requests.jsonl").read_text().splitlines())
    }
    assert len(ids) == truth["requests"]


def test_riders_on_board_are_heard_and_verified_by_the_backend(suite: dict[str, Path]) -> None:
    d = suite["quiet_route"]
    riders = read_riders(d / "RIDERS.csv")
    truth = json.loads((d / "truth.json").read_text())
    bus = truth["buses"][0]
    advs = [r for r in _trace(d, bus) if isinstance(r, AdvRecord)]
    silent = set(truth["silent_riders"])
    for j in load_journeys(d / "JOURNEYS.jsonl"):
        assert j["rider_id"] not in silent
        mac = derive_rider_keys(riders[j["rider_id"]]).mac_key
        for leg in j["legs"]:
            heard = [
                r
                for r in advs
                if leg["board_t"] + 5 < r.t < leg["alight_t"] - 5
                and verify_rtag(r.mfr[0xFFFF], mac)
            ]
            minutes = (leg["alight_t"] - leg["board_t"]) / 60
            assert len(heard) > 20 * minutes  # at 1 s adverts or faster, most heard
            assert sum(r.rssi for r in heard) / len(heard) > -80


def test_gnss_drops_out_in_the_tunnel(suite: dict[str, Path]) -> None:
    d = suite["gnss_tunnel"]
    truth = json.loads((d / "truth.json").read_text())
    fixes = [r for r in _trace(d, truth["buses"][0]) if isinstance(r, GnssRecord)]
    gaps = [b.t - a.t for a, b in itertools.pairwise(fixes)]
    assert max(gaps) > 40  # the tunnel (1.7 km) at motorway speed
    assert sorted(gaps)[len(gaps) // 2] == 1.0
    portal = (37.42400, 127.08900)
    last_before = fixes[gaps.index(max(gaps))]
    assert haversine_m(last_before.lat, last_before.lon, *portal) < 60


def test_gnss_noise_is_about_five_metres(suite: dict[str, Path]) -> None:
    d = suite["quiet_route"]
    truth = json.loads((d / "truth.json").read_text())
    feed = load_gtfs(d / "gtfs")
    bus = truth["buses"][0]
    fixes = [r for r in _trace(d, bus) if isinstance(r, GnssRecord)]
    errs = []
    for c in bus["calls"]:
        stop = feed.stops[c["stop_id"]]
        for f in fixes:
            if c["t_open"] <= f.t <= c["t_close"]:
                errs.append(haversine_m(f.lat, f.lon, stop.lat, stop.lon))
                assert f.speed_mps == 0.0
    rms = (sum(e * e for e in errs) / len(errs)) ** 0.5
    assert 1.0 < rms < 15.0


def test_door_sensor_faults(suite: dict[str, Path]) -> None:
    d = suite["door_sensor_stuck"]
    truth = json.loads((d / "truth.json").read_text())
    for bus in truth["buses"]:
        kind, after = bus["door_fault"]
        t_fault = bus["t_start"] + after
        doors = [r for r in _trace(d, bus) if isinstance(r, DoorRecord)]
        real_after = [c for c in bus["calls"] if c["t_open"] > t_fault]
        assert real_after  # the bus kept serving stops after the fault
        assert all(r.t <= t_fault + 1e-3 for r in doors)
        assert doors[-1].open is (kind == "stuck_open")


def test_bystander_passes_and_unobservable_legs(suite: dict[str, Path]) -> None:
    shared = json.loads((suite["shared_stop_three_routes"] / "truth.json").read_text())
    assert shared["bystander_passes"]["total"] > 5
    for p in shared["bystander_passes"]["passes"]:
        assert p["min_distance_m"] <= 30.0
    drift = json.loads((suite["token_clock_drift"] / "truth.json").read_text())
    assert {u["reason"] for u in drift["unobservable_legs"]} == {"clock_beyond_window"}
    long_ride = json.loads((suite["long_ride_many_intervals"] / "truth.json").read_text())
    assert "flat_battery" in {u["reason"] for u in long_ride["unobservable_legs"]}


def test_long_ride_spans_several_rid_intervals(suite: dict[str, Path]) -> None:
    d = suite["long_ride_many_intervals"]
    journeys = load_journeys(d / "JOURNEYS.jsonl")
    spans = [
        int(leg["alight_t"] // 600) - int(leg["board_t"] // 600)
        for j in journeys
        for leg in j["legs"]
    ]
    assert max(spans) >= 2


def test_transfers_make_two_leg_journeys(suite: dict[str, Path]) -> None:
    journeys = load_journeys(suite["transfer_two_buses"] / "JOURNEYS.jsonl")
    two = [j for j in journeys if len(j["legs"]) == 2]
    assert two
    for j in two:
        a, b = j["legs"]
        assert a["bus_id"] != b["bus_id"]
        assert a["alight_stop_id"] == b["board_stop_id"]


def _tree_hash(d: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in d.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(d)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_keys_included(tmp_path: Path) -> None:
    for name in ("shared_stop_three_routes", "transfer_two_buses"):
        generate(name, 5, tmp_path / "a" / name)
        generate(name, 5, tmp_path / "b" / name)
        generate(name, 6, tmp_path / "c" / name)
        assert _tree_hash(tmp_path / "a" / name) == _tree_hash(tmp_path / "b" / name)
        assert _tree_hash(tmp_path / "a" / name) != _tree_hash(tmp_path / "c" / name)
        assert (tmp_path / "a" / name / "keys").is_dir()


def test_same_bytes_across_processes_with_different_hash_seeds(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    hashes = []
    for hs in ("1", "2"):
        out = tmp_path / hs
        subprocess.run(
            [
                sys.executable,
                "-m",
                "busbell.cli",
                "sim",
                "scenario",
                "--name",
                "bus_alongside_red_light",
                "--seed",
                "9",
                "--out",
                str(out),
            ],
            check=True,
            capture_output=True,
            timeout=120,
            env={**os.environ, "PYTHONHASHSEED": hs},
        )
        hashes.append(_tree_hash(out))
    assert hashes[0] == hashes[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", scenario_names())
def test_full_scale_generates(tmp_path: Path, name: str) -> None:
    truth = generate(name, 1, tmp_path, "full")
    assert truth["journeys"] >= 60
    assert truth["bystander_passes"]["total"] > 0
    assert len(truth["buses"]) >= 4  # four replicas


def test_riders_in_the_bus_alongside_are_heard_much_weaker(suite: dict[str, Path]) -> None:
    d = suite["bus_alongside_red_light"]
    truth = json.loads((d / "truth.json").read_text())
    riders = read_riders(d / "RIDERS.csv")
    macs = {r: derive_rider_keys(k).mac_key for r, k in riders.items()}
    legs = [
        lg | {"rider_id": j["rider_id"]}
        for j in load_journeys(d / "JOURNEYS.jsonl")
        for lg in j["legs"]
    ]
    bus55 = next(b for b in truth["buses"] if b["bus_id"] == "bus-55-01")
    own: list[int] = []
    other: list[int] = []
    for r in _trace(d, bus55):
        if not isinstance(r, AdvRecord):
            continue
        for lg in legs:
            if lg["board_t"] + 10 < r.t < lg["alight_t"] - 10 and verify_rtag(
                r.mfr[0xFFFF], macs[lg["rider_id"]]
            ):
                (own if lg["bus_id"] == "bus-55-01" else other).append(r.rssi)
    assert own
    assert other  # the neighbours are heard at all...
    assert sum(own) / len(own) - sum(other) / len(other) > 15  # ...through two shells
