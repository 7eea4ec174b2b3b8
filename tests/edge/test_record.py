"""``busbell edge record`` writes trace v1 from the live sources (stream adverts + MQTT)."""

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
    time.sleep(0.5)  # let the MQTT subscription settle
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
            await m.publish(
                t.vehicle("bus-rec", "gnss"),
                json.dumps({"t": 1001.5, "lat": 37.4, "lon": 127.1, "speed_mps": 4.0}),
                qos=1,
            )
            await m.publish(t.vehicle("bus-rec", "doors"), b"{broken", qos=1)

    asyncio.run(vehicle())
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    with out.open() as f:
        reader = TraceReader(f)
        assert reader.meta.bus_id == "bus-rec"
        recs = list(reader)
    advs = [r for r in recs if isinstance(r, AdvRecord)]
    assert [a.rssi for a in advs] == [-50, -51, -52]
    assert advs[0].mfr == {65535: bytes(24)}
    assert [r for r in recs if isinstance(r, GnssRecord)] == [GnssRecord(1001.5, 37.4, 127.1, 4.0)]
