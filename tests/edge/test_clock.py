"""The bus's GNSS-disciplined clock, alone and in the daemon."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from busbell import Topics, day_of
from edge._clock import GnssClock
from edge._daemon import EdgeDaemon
from edge.config import EdgeConfig
from tests.factories.edge_daemon import KEY, NOW, Backend, FakePipeline, ListSource, config, until

WALL = NOW + 200 * 86400.0  # the unit's system clock is 200 days ahead (no RTC battery)


class Ticks:
    """A settable clock (seconds)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_system_clock_until_the_first_fix_then_gnss_plus_elapsed() -> None:
    mono = Ticks(50.0)
    clock = GnssClock(Ticks(WALL), mono)
    assert (clock(), clock.source, clock.offset_s()) == (WALL, "system", 0.0)
    clock.observe(NOW + 10.0)  # 200 days back: the first fix is a step, taken at once
    mono.t += 2.5
    assert clock() == NOW + 12.5
    assert clock.source == "gnss"
    assert clock.offset_s() == NOW + 12.5 - WALL
    assert clock.fixes == 1


def test_never_goes_backwards_when_a_fix_lags_the_extrapolation() -> None:
    mono = Ticks(0.0)
    clock = GnssClock(Ticks(WALL), mono)
    clock.observe(NOW)
    mono.t = 3.0
    assert clock() == NOW + 3.0
    clock.observe(NOW + 2.0)  # a late fix: GNSS says 2 s, the extrapolation already said 3
    assert clock() == NOW + 3.0
    mono.t = 5.0
    assert clock() == NOW + 4.0
    assert (clock.fixes, clock.fixes_ignored) == (2, 0)


def test_stale_fixes_are_ignored() -> None:
    mono = Ticks(0.0)
    clock = GnssClock(Ticks(WALL), mono)
    clock.observe(NOW)
    mono.t = 2.0
    clock.observe(NOW + 2.0)
    mono.t = 2.5
    clock.observe(NOW + 2.0)  # the same fix again (a QoS 1 redelivery)
    clock.observe(NOW + 1.0)  # an older one, out of order
    mono.t = 3.0
    assert clock() == NOW + 3.0
    assert (clock.fixes, clock.fixes_ignored) == (2, 2)


def test_fixes_queued_while_away_never_step_the_clock_back() -> None:
    mono = Ticks(0.0)
    clock = GnssClock(Ticks(WALL), mono)
    for i in range(101):  # live fixes, one a second
        mono.t = float(i)
        clock.observe(NOW + i)
    seen = [clock()]
    # the uplink was down from 40 s to 100 s; on reconnect the persistent session
    # delivers the fixes queued meanwhile, a millisecond apart
    for i, t in enumerate(range(40, 100)):
        mono.t = 100.0 + i * 0.001
        clock.observe(NOW + t)
        seen.append(clock())
    # a slower drain: a long backlog over a few seconds of monotonic time
    for i in range(3000):
        mono.t = 100.1 + i * 0.001
        clock.observe(NOW - 3000.0 + i)
        seen.append(clock())
    assert seen == sorted(seen)
    assert seen[-1] == pytest.approx(NOW + mono.t, abs=1e-6)
    assert clock.fixes_ignored == 60 + 3000
    mono.t = 104.0
    clock.observe(NOW + 104.0)  # live again
    assert (clock(), clock.fixes) == (NOW + 104.0, 102)


def test_a_backward_step_is_taken_once_consistent_fixes_confirm_it() -> None:
    mono = Ticks(0.0)
    clock = GnssClock(Ticks(WALL), mono)
    clock.observe(NOW)
    with capture_logs() as logs:
        for i in (1, 2):  # the receiver fixed its time: 60 s back, fix after fix
            mono.t = float(i)
            clock.observe(NOW + i - 60.0)
            assert clock() == NOW + i  # not yet: it could be a stale fix
        mono.t = 3.0
        clock.observe(NOW + 3.0 - 60.0)
        assert clock() == NOW + 3.0 - 60.0
    assert [(e["event"], e["source"], e["step_s"]) for e in logs] == [
        ("clock_stepped", "gnss", -60.0)
    ]
    assert (clock.fixes, clock.fixes_ignored) == (2, 2)
    mono.t = 4.0
    clock.observe(NOW + 4.0 - 60.0)
    assert clock() == NOW + 4.0 - 60.0


def test_a_backward_step_needs_agreeing_fixes() -> None:
    mono = Ticks(0.0)
    clock = GnssClock(Ticks(WALL), mono)
    clock.observe(NOW)
    for i, back in ((1, 60.0), (2, 30.0), (3, 60.0), (4, 30.0)):  # two stories, alternating
        mono.t = float(i)
        clock.observe(NOW + i - back)
    assert clock() == NOW + 4.0
    mono.t = 5.0
    clock.observe(NOW + 5.0)  # a fix that agrees with the clock cancels the candidate
    for i in (6, 7):
        mono.t = float(i)
        clock.observe(NOW + i - 60.0)
    assert clock() == NOW + 7.0
    mono.t = 8.0
    clock.observe(NOW + 8.0 - 60.0)
    assert clock() == NOW + 8.0 - 60.0


def test_forward_corrections_are_taken_at_once() -> None:
    mono = Ticks(0.0)
    clock = GnssClock(Ticks(WALL), mono)
    clock.observe(NOW)
    mono.t = 1.0
    clock.observe(NOW + 3601.0)
    assert clock() == NOW + 3601.0


def test_the_first_fix_is_taken_at_once_even_far_behind() -> None:
    mono = Ticks(0.0)
    clock = GnssClock(Ticks(WALL), mono)
    assert clock() == WALL
    clock.observe(NOW)  # 200 days behind the system clock the clock already returned
    assert clock() == NOW


def test_a_backward_system_clock_jump_before_gnss_is_a_step() -> None:
    system = Ticks(WALL)
    clock = GnssClock(system, Ticks(0.0))
    assert clock() == WALL
    system.t = WALL - 2.0  # a small slew back: hold
    assert clock() == WALL
    system.t = WALL + 1.0
    assert clock() == WALL + 1.0
    with capture_logs() as logs:
        system.t = WALL - 3600.0  # NTP stepped the clock back an hour: take it
        assert clock() == WALL - 3600.0
    assert [(e["event"], e["source"], e["step_s"]) for e in logs] == [
        ("clock_stepped", "system", -3601.0)
    ]
    system.t = WALL - 3599.0
    assert clock() == WALL - 3599.0


@pytest.mark.mosquitto
async def test_daemon_takes_its_time_and_day_from_gnss(
    tmp_path: Path, shared_broker: Any, topic_prefix: str
) -> None:
    cfg = config(tmp_path, shared_broker, topic_prefix)
    fleet = {day_of(NOW): bytes(32), day_of(NOW) + 1: bytes(32)}
    clock = GnssClock(system=lambda: WALL)
    daemon = EdgeDaemon(
        cfg, ListSource([]), clock, pipeline=FakePipeline(), device_key=KEY, fleet_keys=fleet
    )
    # by the system clock the keys ran out 200 days ago; no warning before GNSS has spoken
    with capture_logs() as logs:
        assert daemon.status()["fleet_keys"]["days_remaining"] == -1
    assert daemon.status()["clock"] == {"source": "system", "offset_s": 0.0, "fixes_ignored": 0}
    assert daemon.status()["fleet_keys"]["warning"] is False
    assert "fleet_keys_running_out" not in {e["event"] for e in logs}
    backend = Backend(shared_broker, topic_prefix, "bus-0042")
    async with backend.s:
        task = asyncio.create_task(daemon.run())
        try:
            await until(lambda: daemon.link.is_connected)
            fix = {"t": NOW, "lat": 37.5, "lon": 127.0, "speed_mps": 0.0}
            await backend.s.publish(
                Topics(topic_prefix).vehicle("bus-0042", "gnss"), json.dumps(fix)
            )
            await until(lambda: clock.fixes == 1)
        finally:
            daemon.request_stop()
            await asyncio.wait_for(task, 20)  # a crash of the daemon fails the test
    status = daemon.status()
    assert status["clock"]["source"] == "gnss"
    assert -200 * 86400.0 - 60 < status["clock"]["offset_s"] < -200 * 86400.0 + 60
    assert NOW <= status["t"] < NOW + 60
    assert status["fleet_keys"]["days_remaining"] == 1


def test_fleet_key_warning_waits_a_minute_for_gnss(tmp_path: Path) -> None:
    cfg = EdgeConfig(bus_id="bus-0042", store=tmp_path / "fares.db", source="trace")
    mono = Ticks(1000.0)
    daemon = EdgeDaemon(
        cfg,
        ListSource([]),
        GnssClock(system=lambda: WALL, monotonic=mono),
        pipeline=FakePipeline(),
        device_key=KEY,
        fleet_keys={day_of(NOW): bytes(32)},
        monotonic=mono,
    )
    with capture_logs() as logs:
        mono.t = 1059.0  # the system clock says the keys ran out; GNSS may yet disagree
        assert daemon.status()["fleet_keys"] == {"days_remaining": -1, "warning": False}
        mono.t = 1061.0  # a minute without a fix: the system clock it is
        assert daemon.status()["fleet_keys"] == {"days_remaining": -1, "warning": True}
    assert [e["event"] for e in logs] == ["fleet_keys_running_out"]


def test_steps_are_summed_for_holders_of_earlier_times() -> None:
    mono = Ticks(0.0)
    system = Ticks(WALL)
    clock = GnssClock(system, mono)
    clock.observe(NOW)  # the first fix: 200 days back
    assert clock.stepped_s == NOW - WALL
    mono.t = 10.0
    clock.observe(NOW + 11.0)  # 1 s of drift is not a step
    assert clock.stepped_s == NOW - WALL
    mono.t = 11.0
    clock.observe(NOW + 3612.0)  # an hour forward: a step
    assert clock.stepped_s == NOW - WALL + 3600.0
    for k in range(3):  # a confirmed step back of 100 s
        mono.t = 12.0 + k
        clock.observe(NOW + 3513.0 + k)
    assert clock() == NOW + 3515.0
    assert clock.stepped_s == NOW - WALL + 3500.0


def test_a_backward_system_clock_jump_counts_as_a_step() -> None:
    system = Ticks(WALL)
    clock = GnssClock(system, Ticks(0.0))
    assert clock() == WALL
    system.t = WALL - 2.0  # held, not a step
    clock()
    assert clock.stepped_s == 0.0
    system.t = WALL - 60.0
    assert clock() == WALL - 60.0
    assert clock.stepped_s == -60.0
