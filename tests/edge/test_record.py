"""``busbell edge record`` writes trace v1 from the live sources (stream or BLE adverts + MQTT)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from busbell import AdvRecord, DeviceKey, GnssRecord, Topics, TraceReader
from busbell._mqtt import MqttSession, MqttSettings
from tests.conftest import free_port
from tests.factories.bluez import BlueZMock

pytestmark = pytest.mark.mosquitto


def test_record_writes_a_replayable_trace(
    tmp_path: Path, shared_broker: Any, topic_prefix: str
) -> None:
    port = free_port()
    key = tmp_path / "bus.pem"
    DeviceKey.generate().save(key)
    (tmp_path / "FLEET.csv").write_text("day,fleet_key\n")
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'bus_id = "bus-rec"\ndevice_key = "{key}"\nfleet_keys = "{tmp_path / "FLEET.csv"}"\n'
        f'gtfs = "{tmp_path}"\nstore = "{tmp_path / "f.db"}"\nsource = "stream"\n'
        f'[mqtt]\nhost = "{shared_broker.host}"\nport = {shared_broker.port}\n'
        f'prefix = "{topic_prefix}"\nclient_id = "rec-{uuid.uuid4().hex[:6]}"\n'
        f"[stream]\nport = {port}\n"
    )
    out = tmp_path / "day.trace.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "busbell.cli", "edge", "record", "--config", str(cfg)]
        + ["--out", str(out), "--duration", "6"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with socket.create_connection(("127.0.0.1", port)) as s:
        for i in range(3):
            line = {
                "kind": "adv",
                "t": 1000.0 + i,
                "addr": "aa:bb",
                "rssi": -50 - i,
                "mfr": {"65535": "00" * 24},
            }
            s.sendall((json.dumps(line) + "\n").encode())
        s.sendall(b"not json\n")

    async def vehicle() -> None:
        t = Topics(topic_prefix)
        settings = MqttSettings(host=shared_broker.host, port=shared_broker.port)
        async with MqttSession(settings, f"veh-{uuid.uuid4().hex[:6]}", clean_start=True) as m:
            # retained: the recorder gets them whenever its subscription lands
            await m.publish(
                t.vehicle("bus-rec", "gnss"),
                json.dumps({"t": 1001.5, "lat": 37.4, "lon": 127.1, "speed_mps": 4.0}),
                qos=1,
                retain=True,
            )
            await m.publish(t.vehicle("bus-rec", "doors"), b"{broken", qos=1, retain=True)

    async def clear() -> None:
        settings = MqttSettings(host=shared_broker.host, port=shared_broker.port)
        async with MqttSession(settings, f"veh-{uuid.uuid4().hex[:6]}", clean_start=True) as m:
            for signal in ("gnss", "doors"):
                await m.publish(
                    Topics(topic_prefix).vehicle("bus-rec", signal), b"", qos=1, retain=True
                )

    asyncio.run(vehicle())
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        asyncio.run(clear())
    assert proc.returncode == 0, err
    with out.open() as f:
        reader = TraceReader(f)
        assert reader.meta.bus_id == "bus-rec"
        recs = list(reader)
    advs = [r for r in recs if isinstance(r, AdvRecord)]
    assert [a.rssi for a in advs] == [-50, -51, -52]
    assert advs[0].mfr == {65535: bytes(24)}
    assert [r for r in recs if isinstance(r, GnssRecord)] == [GnssRecord(1001.5, 37.4, 127.1, 4.0)]


@pytest.mark.dbus
async def test_record_stamps_ble_adverts_with_gnss_time(
    tmp_path: Path, shared_broker: Any, topic_prefix: str, bluez: BlueZMock
) -> None:
    token = {0xFFFF: bytes(24)}
    gnss_t = 1_500_000_000.0  # years behind the system clock: the trace must carry bus time
    key = tmp_path / "bus.pem"
    DeviceKey.generate().save(key)
    (tmp_path / "FLEET.csv").write_text("day,fleet_key\n")
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'bus_id = "bus-ble"\ndevice_key = "{key}"\nfleet_keys = "{tmp_path / "FLEET.csv"}"\n'
        f'gtfs = "{tmp_path}"\nstore = "{tmp_path / "f.db"}"\nsource = "ble"\n'
        f'[mqtt]\nhost = "{shared_broker.host}"\nport = {shared_broker.port}\n'
        f'prefix = "{topic_prefix}"\nclient_id = "rec-{uuid.uuid4().hex[:6]}"\n'
        '[scanner]\nmode = "active"\nadapter = "hci0"\nsilence_restart_s = 0\n'
        "backoff_initial_s = 0.05\nbackoff_max_s = 0.2\n"
    )
    await bluez.add_adapter(monitors=False)
    t = Topics(topic_prefix)
    settings = MqttSettings(host=shared_broker.host, port=shared_broker.port)
    fix = {"t": gnss_t, "lat": 37.4, "lon": 127.1, "speed_mps": 0.0}
    async with MqttSession(settings, f"veh-{uuid.uuid4().hex[:6]}", clean_start=True) as m:
        # retained: the recorder gets it whenever its subscription lands
        await m.publish(t.vehicle("bus-ble", "gnss"), json.dumps(fix), qos=1, retain=True)
        out = tmp_path / "ble.trace.jsonl"
        proc = subprocess.Popen(  # inherits DBUS_SYSTEM_BUS_ADDRESS: the mocked bluetoothd
            [sys.executable, "-m", "busbell.cli", "edge", "record", "--config", str(cfg)]
            + ["--out", str(out), "--duration", "6"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            n = 0
            while proc.poll() is None:  # advertise until the recorder stops
                if (await bluez.state())["discovering"]:
                    await bluez.advertise(f"C0:00:00:00:{n // 256:02X}:{n % 256:02X}", -60, token)
                    n += 1
                await asyncio.sleep(0.1)
        finally:
            await m.publish(t.vehicle("bus-ble", "gnss"), b"", qos=1, retain=True)
            if proc.poll() is None:
                proc.kill()
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    with out.open() as f:
        recs = list(TraceReader(f))
    kinds = [type(r).__name__ for r in recs]
    assert kinds.count("GnssRecord") == 1, kinds
    after_fix = [r for r in recs[kinds.index("GnssRecord") + 1 :] if isinstance(r, AdvRecord)]
    assert after_fix, kinds
    assert all(gnss_t <= r.t < gnss_t + 60 for r in after_fix), [r.t for r in after_fix]
