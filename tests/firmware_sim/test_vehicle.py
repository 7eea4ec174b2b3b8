"""Bus kinematics, lights, dwell and doors."""

from __future__ import annotations

import random

import pytest

from busbell import load_gtfs
from firmware_sim._geometry import Light, Polyline, Projection, RoutePath, build_route_paths
from firmware_sim._output import sample_gtfs_dir
from firmware_sim._vehicle import ACCEL_MPS2, DECEL_MPS2, StopDemand, drive_car, plan_bus


def straight(length: float, stops: list[float], lights: tuple[Light, ...] = ()) -> RoutePath:
    return RoutePath(
        "R",
        0,
        Polyline([(0.0, 0.0), (length, 0.0)]),
        tuple(f"S{i}" for i in range(len(stops))),
        tuple(stops),
        lights,
    )


def sample_motion(plan_motion, t0: float, t1: float, dt: float = 0.1):  # type: ignore[no-untyped-def]
    out = []
    t = t0
    while t <= t1:
        out.append((t, *plan_motion.at(t)))
        t += dt
    return out


def test_kinematics_respect_speed_and_acceleration_limits() -> None:
    path = straight(3000.0, [0.0, 1500.0, 3000.0])
    plan = plan_bus(
        "b",
        path,
        t_start=1000.0,
        first_idx=0,
        last_idx=2,
        demand={1: StopDemand(alight=["r1"])},
        rng=random.Random(1),
        occupied={},
        cruise_mps=12.0,
    )
    samples = sample_motion(plan.motion, 1000.0, plan.t_end)
    prev = samples[0]
    for t, s, v in samples[1:]:
        assert v <= 12.0 * 1.08 + 1e-6
        assert s >= prev[1] - 1e-6  # never reverses
        acc = (v - prev[2]) / (t - prev[0])
        assert -DECEL_MPS2 - 1e-3 <= acc <= ACCEL_MPS2 + 1e-3
        prev = (t, s, v)
    assert [c.stop_id for c in plan.calls] == ["S0", "S1", "S2"]
    for c in plan.calls:
        s, v = plan.motion.at((c.t_open + c.t_close) / 2)
        assert v == 0.0
        assert s == pytest.approx(path.stop_s[c.idx], abs=0.01)


def test_dwell_doors_and_rider_order() -> None:
    path = straight(2000.0, [0.0, 1000.0, 2000.0])
    demand = {
        0: StopDemand(board=[("a", None), ("b", None), ("c", None)]),
        1: StopDemand(alight=["a"], last_moment=["b"], board=[("d", None)]),
        2: StopDemand(alight=["c", "d"]),
    }
    plan = plan_bus(
        "b",
        path,
        t_start=0.0,
        first_idx=0,
        last_idx=2,
        demand=demand,
        rng=random.Random(2),
        occupied={},
    )
    for c in plan.calls:
        assert c.t_arrive < c.t_open < c.t_close < c.t_depart
        for t in [*c.board_t.values(), *c.alight_t.values()]:
            assert c.t_open < t < c.t_close
    first, mid, _ = plan.calls
    assert first.board_t["a"] < first.board_t["b"] < first.board_t["c"]
    assert mid.alight_t["b"] > mid.alight_t["a"]
    assert mid.t_close - mid.alight_t["b"] < 1.0  # jumped off as the doors closed


def test_bus_skips_stops_nobody_uses_when_told_to() -> None:
    path = straight(3000.0, [0.0, 1000.0, 2000.0, 3000.0])
    plan = plan_bus(
        "b",
        path,
        t_start=0.0,
        first_idx=0,
        last_idx=3,
        demand={},
        rng=random.Random(3),
        occupied={},
        p_extra_stop=0.0,
    )
    assert [c.stop_id for c in plan.calls] == ["S0", "S3"]


def test_red_light_stops_the_bus_and_green_releases_it() -> None:
    light = Light(s=500.0, cycle_s=100.0, red_s=100.0 - 1e-3, offset_s=0.0)  # red nearly always
    path = straight(1000.0, [0.0, 1000.0], (light,))
    plan = plan_bus(
        "b",
        path,
        t_start=10.0,
        first_idx=0,
        last_idx=1,
        demand={},
        rng=random.Random(4),
        occupied={},
    )
    stopped = [
        t
        for t, s, v in sample_motion(plan.motion, 11.0, plan.calls[-1].t_arrive)
        if v == 0.0 and 480.0 < s < 501.0
    ]
    assert stopped  # waited at the stop line
    assert max(stopped) >= 99.0  # until the next green at t = 100


def test_second_bus_at_a_busy_stop_halts_behind() -> None:
    path = straight(1200.0, [100.0, 1000.0])
    occupied: dict[str, list[tuple[float, float]]] = {}
    a = plan_bus(
        "a",
        path,
        t_start=0.0,
        first_idx=0,
        last_idx=1,
        demand={},
        rng=random.Random(5),
        occupied=occupied,
    )
    b = plan_bus(
        "b",
        path,
        t_start=5.0,
        first_idx=0,
        last_idx=1,
        demand={},
        rng=random.Random(5),
        occupied=occupied,
    )
    assert a.calls[0].s == pytest.approx(100.0)
    assert b.calls[0].s == pytest.approx(87.0)  # one bus length plus a gap behind


def test_car_drives_and_stops() -> None:
    path = straight(2000.0, [0.0, 2000.0])
    m = drive_car(path, t_start=0.0, s_from=100.0, s_to=1500.0, vmax=14.0, rng=random.Random(6))
    assert m.at(0.0) == (100.0, 0.0)
    assert m.at(1e6)[0] == pytest.approx(1500.0)


def test_sample_feed_paths_and_lights() -> None:
    d = sample_gtfs_dir()
    feed = load_gtfs(d)
    paths = build_route_paths(feed, d, Projection(37.4, 127.1))
    g = paths[("G6000", 0)]
    assert g.stop_ids[0] == "BD003"
    assert all(b > a for a, b in zip(g.stop_s, g.stop_s[1:], strict=False))
    # stop positions on the shape agree with the feed's shape_dist_traveled (metres)
    pat = feed.patterns[("G6000", 0)]
    for s, dist in zip(g.stop_s, pat.dist_m, strict=True):
        assert s - g.stop_s[0] == pytest.approx(dist, rel=0.01, abs=5.0)
    # routes 55 and 17 share the Jeongja - Sunae road and its lights
    l55 = {round(lt.s - paths[("55", 0)].stop_s[0]) for lt in paths[("55", 0)].lights[:2]}
    l17 = {round(lt.s - paths[("17", 0)].stop_s[2]) for lt in paths[("17", 0)].lights[2:4]}
    assert l55 == l17
    assert feed.networks == {
        "G6000": "gyeonggi_wide_area",
        "55": "gyeonggi_city",
        "17": "gyeonggi_city",
    }
    assert feed.timezone == "Asia/Seoul"
