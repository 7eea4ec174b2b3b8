"""The edge daemon on the real BLE path advertises its beacon and counts the beacons it hears.

The daemon runs as ``busbell edge run`` builds it with ``source = "ble"``: BleakSource and
BeaconAdvertiser on the emulated bluetoothd (a private system bus), its real pipeline on
a synthetic line, vehicle signals over the (in-memory) broker.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog

from busbell import Topics
from busbell._echo import BEACON_SERVICE_UUID, bus_tag, encode_beacon
from busbell._mqtt import MqttSettings
from edge._ble import BleakSource, ScannerParams
from edge._daemon import EdgeDaemon
from edge.config import MetricsSettings, StatusSettings
from tests.factories.bluez import BlueZMock, eventually, eventually_async
from tests.factories.edge_daemon import KEY, config, until
from tests.factories.edge_world import latlon, write_gtfs
from tests.factories.mqtt import FakeBroker

pytestmark = pytest.mark.dbus

BUS = "bus-0042"
T0 = 1_790_000_000.0
CID = 0xFFFF


@pytest.fixture(autouse=True)
def _fresh_structlog() -> None:
    structlog.reset_defaults()


async def advertised(bluez: BlueZMock) -> list[bytes]:
    st = await bluez.ad_state()
    return [bytes.fromhex(a["mfr"][str(CID)]) for a in st["advertisements"]]


async def test_daemon_advertises_its_seq_and_counts_beacons_heard(
    bluez: BlueZMock, tmp_path: Path
) -> None:
    await bluez.add_adapter(monitors=False)
    broker = FakeBroker()
    scanner = ScannerParams(
        adapter="hci0", mode="active", backoff_initial_s=0.05, backoff_max_s=0.2
    )
    cfg = config(
        tmp_path,
        broker,
        "busbell/v1",
        source="ble",
        gtfs=write_gtfs(tmp_path / "gtfs", 8, 400.0),
        scanner=scanner,
        metrics=MetricsSettings(port=0),
        status=StatusSettings(interval_s=0.2),
    )
    daemon = EdgeDaemon(
        cfg,
        BleakSource(cfg.scanner, lambda: T0),
        lambda: T0,
        device_key=KEY,
        fleet_keys={},
        session_factory=broker.session,
    )
    assert daemon.beacon is not None
    tag = bus_tag(BUS)
    topics = Topics("busbell/v1")
    signals = broker.session(MqttSettings(prefix="busbell/v1"), f"v-{uuid.uuid4().hex[:8]}")
    t = 0.0

    async def send(signal: str, **body: Any) -> None:
        await signals.publish(topics.vehicle(BUS, signal), json.dumps({"t": T0 + t, **body}))

    async def at(x: float, v: float = 0.0) -> None:
        lat, lon = latlon(x)
        await send("gnss", lat=lat, lon=lon, speed_mps=v)

    async with signals:
        task = asyncio.create_task(daemon.run())
        await until(lambda: daemon.link.is_connected)
        beacon = daemon.beacon
        await eventually(lambda: beacon.stats.registered, what="beacon registered")
        assert await advertised(bluez) == [encode_beacon(tag, 0)]  # no trip yet: seq 0
        await at(0.0)
        await send("trip", route_id="R1", direction_id=0, trip_id="T1")
        t += 5
        await send("doors", open=True)
        t += 20
        await send("doors", open=False)
        await eventually_async(
            lambda: _is(bluez, encode_beacon(tag, 1)), what="seq 1 once S0 is left"
        )
        for x in range(10, 410, 10):  # to S1 at 10 m/s
            t += 1
            await at(float(x), 10.0)
        t += 1
        await at(400.0)
        t += 2
        await send("doors", open=True)
        t += 20
        await send("doors", open=False)
        await eventually_async(lambda: _is(bluez, encode_beacon(tag, 2)), what="seq 2")
        # beacons on the air, with their service UUID: another bus's and (a second
        # antenna's copy of) our own
        other = encode_beacon(bus_tag("bus-0099"), 4)
        own = encode_beacon(tag, 2)
        uuids = [BEACON_SERVICE_UUID]
        assert await bluez.advertise("C0:00:00:00:00:99", -70, {CID: other}, uuids=uuids) == (
            "added"
        )
        assert await bluez.advertise("C0:00:00:00:00:42", -40, {CID: own}, uuids=uuids) == "added"
        await eventually(
            lambda: daemon.pipeline.stats.beacons_heard == {"own": 1, "other": 1},
            what="beacons counted",
        )
        port = daemon.metrics_port
        metrics = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        )
        status = daemon.status()
        daemon.request_stop()
        await asyncio.wait_for(task, 20)
    assert daemon.pipeline.stats.rejected == {}
    assert 'busbell_edge_bus_beacons_heard_total{own="true"} 1.0' in metrics
    assert 'busbell_edge_bus_beacons_heard_total{own="false"} 1.0' in metrics
    assert "busbell_edge_adverts_rejected_total{" not in metrics
    assert "busbell_edge_beacon_registered 1.0" in metrics
    assert "busbell_edge_beacon_registrations_total 1.0" in metrics
    assert status["beacon"]["registered"] is True
    assert status["beacon"]["seq"] == 2
    assert status["beacon"]["updates"] == 2
    assert status["rejected"] == {}
    # a clean stop unregisters the beacon
    st = await bluez.ad_state()
    assert st["advertisements"] == []
    assert st["unregistered"] == 1
    assert beacon.stats.errors == {}


async def _is(bluez: BlueZMock, payload: bytes) -> bool:
    return await advertised(bluez) == [payload]


async def test_beacon_off_or_not_ble_advertises_nothing(tmp_path: Path) -> None:
    broker = FakeBroker()
    base = config(tmp_path, broker, "busbell/v1", gtfs=write_gtfs(tmp_path / "gtfs"))
    kw: dict[str, Any] = {"device_key": KEY, "fleet_keys": {}, "session_factory": broker.session}
    src = BleakSource(base.scanner, lambda: T0)
    assert EdgeDaemon(base, src, lambda: T0, **kw).beacon is None  # source = trace
    off = replace(base, source="ble", beacon=replace(base.beacon, enabled=False))
    assert EdgeDaemon(off, src, lambda: T0, **kw).beacon is None
    on = replace(base, source="ble")
    daemon = EdgeDaemon(on, src, lambda: T0, **kw)
    assert daemon.beacon is not None
    assert daemon.status()["beacon"]["payload"] == encode_beacon(bus_tag(BUS), 0).hex()
