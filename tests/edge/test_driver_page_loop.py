"""The whole bell loop through the driver's screen, black box.

One ``busbell edge run`` process, configured only by ``BUSBELL_*`` environment variables
(its driver page enabled), on the machine's Mosquitto under a unique prefix. The test
signs the bus on to route 17 with a GNSS fix at its first stop, publishes a rider's wait
for a stop ahead as the rider API would, and watches headless Chromium: the wait appears
on the page the edge serves, the driver presses the button, the ack reaches the broker,
and the request's retained status turns ``acknowledged`` by this bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from busbell import DeviceKey, canonical_bytes, day_of, load_gtfs
from busbell._mqtt import MqttMessage, MqttSettings
from tests.conftest import free_port
from tests.factories.broker import BrokerClient
from tests.factories.driver_page import chromium

pytestmark = [pytest.mark.mosquitto, pytest.mark.browser, pytest.mark.timeout(120)]

GTFS = Path(__file__).resolve().parents[2] / "firmware_sim" / "data" / "gtfs"
BUS = "bus-loop-1"
WAIT_MS = 20000


class Broker(BrokerClient):
    """The world around the bus: vehicle signals and waits in, what the bus says out."""

    def __init__(self, settings: MqttSettings) -> None:
        super().__init__(settings, "t-world")
        self.seen: list[MqttMessage] = []
        self.changed = asyncio.Event()

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        for topic, payload in list(self.latest.items()):
            if payload:  # leave nothing retained under the prefix
                await self.s.publish(topic, b"", qos=1, retain=True)
        await self.s.__aexit__(None, None, None)

    async def _read(self) -> None:
        async for m in self.s.messages():
            self.latest[m.topic] = m.payload
            self.seen.append(m)
            self.changed.set()

    async def until(self, pred: Any, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not pred():
                self.changed.clear()
                await self.changed.wait()

    def json(self, topic: str) -> Any:
        raw = self.latest.get(topic)
        return json.loads(raw) if raw else None

    async def publish(self, topic: str, body: dict[str, Any], *, retain: bool = False) -> None:
        await self.s.publish(topic, canonical_bytes(body), qos=1, retain=retain)


@contextlib.contextmanager
def edge_run(tmp_path: Path, broker: Any, prefix: str, page_port: int) -> Any:
    key = tmp_path / "bus.pem"
    DeviceKey.from_seed(bytes(range(32))).save(key)
    today = day_of(time.time())
    fleet = tmp_path / "FLEET.csv"
    fleet.write_text(
        "day,fleet_key\n" + "".join(f"{today + d},{'11' * 32}\n" for d in (-1, 0, 1, 2))
    )
    trace = tmp_path / "empty.trace.jsonl"  # no adverts: the bells are what is tested
    trace.write_text(json.dumps({"kind": "meta", "format": "busbell-trace/1", "bus_id": BUS}))
    env = {
        **os.environ,
        "BUSBELL_BUS_ID": BUS,
        "BUSBELL_DEVICE_KEY": str(key),
        "BUSBELL_FLEET_KEYS": str(fleet),
        "BUSBELL_GTFS": str(GTFS),
        "BUSBELL_STORE": str(tmp_path / "fares.db"),
        "BUSBELL_SOURCE": "trace",
        "BUSBELL_TRACE__PATH": str(trace),
        "BUSBELL_MQTT__HOST": broker.host,
        "BUSBELL_MQTT__PORT": str(broker.port),
        "BUSBELL_MQTT__PREFIX": prefix,
        "BUSBELL_MQTT__CLIENT_ID": f"edge-{uuid.uuid4().hex[:8]}",
        "BUSBELL_DRIVER_PAGE__ENABLED": "true",
        "BUSBELL_DRIVER_PAGE__PORT": str(page_port),
    }
    log = (tmp_path / "edge.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "busbell.cli", "edge", "run"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


async def test_wait_on_the_page_ack_to_acknowledged(
    shared_broker: Any, topic_prefix: str, tmp_path: Path, browser: Any
) -> None:
    from playwright.async_api import expect

    feed = load_gtfs(GTFS)
    pattern = feed.patterns["17", 0]
    first = feed.stops[pattern.stop_ids[0]]
    target = feed.stops[pattern.stop_ids[2]]
    settings = MqttSettings(host=shared_broker.host, port=shared_broker.port, prefix=topic_prefix)
    port = free_port()
    async with Broker(settings) as world:
        t = world.topics
        with edge_run(tmp_path, shared_broker, topic_prefix, port) as proc:
            await world.until(lambda: (world.json(t.status(BUS)) or {}).get("state") == "online")
            now = time.time()
            trip = {"t": now, "route_id": "17", "direction_id": 0, "trip_id": None}
            await world.publish(t.vehicle(BUS, "trip"), trip, retain=True)
            fix = {"t": now + 1, "lat": first.lat, "lon": first.lon, "speed_mps": 0.0}
            await world.publish(t.vehicle(BUS, "gnss"), fix)

            page = await (
                await browser.new_context(viewport={"width": 1024, "height": 600})
            ).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(f"http://127.0.0.1:{port}/")
            await expect(page.locator("#route")).to_have_text("17", timeout=WAIT_MS)
            await expect(page.locator("#ack-label")).to_have_text("요청 없음")

            rid = f"w-{uuid.uuid4().hex[:8]}"
            wait = {
                "request_id": rid,
                "route_id": "17",
                "stop_id": target.stop_id,
                "t": now + 2,
                "expires_t": now + 900,
                "source": "app",
                "assist": True,
            }
            await world.publish(t.wait("17", target.stop_id, rid), wait, retain=True)
            pending = {"request_id": rid, "state": "pending", "t": now + 2}
            await world.publish(t.request_status(rid), pending, retain=True)

            row = page.locator(f'#stops [data-stop-id="{target.stop_id}"]')
            await expect(row.locator(".tag.waits")).to_have_text("1", timeout=WAIT_MS)
            await expect(row.locator(".name")).to_have_text(target.name)
            await expect(row.locator(".icon.assist")).to_have_count(1)
            await expect(page.locator("#ack-label")).to_have_text("확인 (1)")
            await world.until(
                lambda: (world.json(t.request_status(rid)) or {}).get("state") == "seen"
            )

            await page.click("#ack")
            await world.until(
                lambda: any(
                    m.topic == t.driver_ack(BUS) and rid in json.loads(m.payload)["request_ids"]
                    for m in world.seen
                )
            )
            await world.until(
                lambda: (world.json(t.request_status(rid)) or {}).get("state") == "acknowledged"
            )
            status = world.json(t.request_status(rid))
            assert status["bus_id"] == BUS
            await expect(page.locator("#ack-label")).to_have_text("확인됨 ✓")
            assert errors == []
            assert proc.poll() is None, (tmp_path / "edge.log").read_text()[-3000:]
