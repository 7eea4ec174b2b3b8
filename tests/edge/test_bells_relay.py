"""The bell relay's own scheduling: the display throttle and the wait subscription.

An in-memory link stands for :class:`edge._uplink.MqttLink` here (the relay runs against
real Mosquitto in ``test_bells_daemon.py``): a broker cannot be told to hold a PUBACK, and
the throttle reads a monotonic clock this test moves by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from busbell import Topics, TripRecord, load_gtfs
from edge._bells import BellCore, BellParams
from edge._bells_mqtt import BellRelay
from edge._clock import GnssClock
from edge._params import ClassifierParams
from edge._vehicle import VehicleContext

FEED = load_gtfs(Path(__file__).resolve().parents[2] / "firmware_sim" / "data" / "gtfs")
T0 = 1_790_000_000.0


class MemoryLink:
    """What the relay uses of ``MqttLink``; a display publish returns when released."""

    def __init__(self) -> None:
        self.is_connected = True
        self.published: list[tuple[str, bytes]] = []
        self.filters: list[str] = []
        self.hold_display = False
        self.release = asyncio.Event()
        self.display_started = asyncio.Event()

    def route(self, topic: str, handler: Callable[[bytes], Awaitable[None]]) -> None:
        pass

    def on_connect(self, listener: Callable[[], Awaitable[None]]) -> None:
        pass

    async def wait_connected(self) -> None:
        pass

    async def add_filter(self, topic_filter: str, handler: Any) -> None:
        self.filters.append(topic_filter)

    async def add_routes(self, routes: Mapping[str, Any]) -> None:
        pass

    async def remove_routes(self, topics: Sequence[str]) -> None:
        self.filters = [f for f in self.filters if f not in topics]

    async def publish(self, topic: str, payload: bytes, **kw: Any) -> None:
        if topic.endswith("/display"):
            self.display_started.set()
            if self.hold_display:
                await self.release.wait()
                self.release.clear()
        self.published.append((topic, payload))

    def displays(self) -> int:
        return sum(1 for t, _ in self.published if t.endswith("/display"))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def relay_running(params: BellParams) -> AsyncIterator[tuple[BellRelay, MemoryLink, Clock]]:
    link = MemoryLink()
    mono = Clock()
    relay = BellRelay(
        BellCore("B1", FEED, params),
        link,  # type: ignore[arg-type]
        Topics("p/busbell/v1"),
        clock=lambda: T0,
        monotonic=mono,
    )
    task = asyncio.create_task(relay.run())
    try:
        await until(lambda: link.displays() == 1)  # the first model goes out at once
        yield relay, link, mono
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.005)


async def test_the_coalescing_window_runs_from_the_publish_not_from_its_puback() -> None:
    async with relay_running(BellParams(coalesce_ms=100.0)) as (relay, link, mono):
        link.display_started.clear()
        link.hold_display = True
        mono.now = 1.0
        relay.set_on_board(1)  # a change after a quiet window: published at once ...
        await until(link.display_started.is_set)
        relay.set_on_board(2)  # ... and another while its PUBACK is still out
        mono.now = 1.3  # the PUBACK took 300 ms, longer than the window
        link.hold_display = False
        link.release.set()
        # the window ended 200 ms ago: the second change goes out now, not 100 ms later
        # (the clock stands still, so a window counted from the PUBACK never ends)
        await until(lambda: link.displays() == 3)


async def test_a_trip_change_subscribes_its_route_waits_without_waiting_for_the_tick() -> None:
    async with relay_running(BellParams(tick_s=3600.0)) as (relay, link, _):
        await asyncio.sleep(0.05)  # the housekeeping task sleeps its (hour-long) tick
        assert link.filters == []
        vc = VehicleContext(FEED, ClassifierParams())
        vc.feed_record(TripRecord(T0, "17", 0, None))
        relay.vehicle = vc
        relay.vehicle_updated(T0)
        await until(lambda: link.filters == ["p/busbell/v1/routes/17/stops/+/waits/+"])


def test_a_step_of_the_gnss_clock_reaches_the_core_before_its_next_input() -> None:
    """And whether the clock is on GNSS time yet: nothing expires on the system clock."""
    wall, mono = Clock(), Clock()
    wall.now = T0 + 200 * 86400.0  # the system clock before the first fix
    gnss = GnssClock(wall, mono)
    relay = BellRelay(
        BellCore("B1", FEED, BellParams()),
        MemoryLink(),  # type: ignore[arg-type]
        Topics("p/busbell/v1"),
        clock=gnss,
        monotonic=mono,
        clock_steps=lambda: gnss.stepped_s,
        clock_synced=lambda: gnss.source == "gnss",
    )
    assert relay.clock() == wall.now
    assert "clock_steps" not in relay.core.counts
    assert relay.core.clock_synced is False
    gnss.observe(T0)  # the first fix: 200 days back
    assert relay.clock() == T0
    assert relay.core.counts["clock_steps"] == 1
    assert relay.core.clock_synced is True
    relay.clock()  # told once
    assert relay.core.counts["clock_steps"] == 1
