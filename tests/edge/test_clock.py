"""The bus's GNSS-disciplined clock, alone and in the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from busbell import Topics, day_of
from edge._clock import GnssClock
from edge._daemon import EdgeDaemon
from tests.edge.test_daemon import KEY, NOW, Backend, FakePipeline, ListSource, config, until

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
    clock.observe(NOW - 60.0)  # a correction larger than step_s is a step
    assert clock() == NOW - 60.0


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
    assert daemon.status()["clock"] == {"source": "system", "offset_s": 0.0}
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
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 20)
    status = daemon.status()
    assert status["clock"]["source"] == "gnss"
    assert -200 * 86400.0 - 60 < status["clock"]["offset_s"] < -200 * 86400.0 + 60
    assert NOW <= status["t"] < NOW + 60
    assert status["fleet_keys"]["days_remaining"] == 1
