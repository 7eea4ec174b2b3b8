"""Live mode: vehicle signals over MQTT, adverts over a TCP stream, the timed-advert hook."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from busbell import AdvRecord, TokenVerifier, Topics, read_fleet_keys
from busbell._mqtt import MqttSession, MqttSettings
from firmware_sim import run_live, timed_adverts
from firmware_sim._live import parse_tcp_target


def test_parse_tcp_target() -> None:
    assert parse_tcp_target("tcp://127.0.0.1:7300") == ("127.0.0.1", 7300)
    assert parse_tcp_target("localhost:1") == ("localhost", 1)
    for bad in ("tcp://host", "host:0", "host:x", ":80"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_tcp_target(bad)


def test_timed_adverts_hook_yields_sorted_adverts() -> None:
    advs = list(timed_adverts("gnss_tunnel", 1, "bus-G6000-01"))
    assert len(advs) > 100
    assert all(isinstance(a, AdvRecord) for a in advs)
    assert [a.t for a in advs] == sorted(a.t for a in advs)
    with pytest.raises(KeyError):
        next(timed_adverts("gnss_tunnel", 1, "no-such-bus"))


@pytest.mark.mosquitto
async def test_live_run_publishes_signals_and_streams_adverts(
    shared_broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    lines: list[str] = []

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            lines.append(line.decode())
        writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = MqttSettings(host=shared_broker.host, port=shared_broker.port, prefix=topic_prefix)
    topics = Topics(topic_prefix)
    got: list[tuple[str, bytes]] = []
    async with MqttSession(settings, f"t-{topic_prefix[5:17]}", clean_start=True) as sub:
        await sub.subscribe([topics.everything()])

        async def collect() -> None:
            async for m in sub.messages():
                got.append((m.topic, m.payload))

        task = asyncio.create_task(collect())
        started = time.time()
        stats = await run_live(
            "gnss_tunnel",
            2,
            "bus-G6000-01",
            mqtt=settings,
            speed=2000.0,
            adv_target=f"tcp://127.0.0.1:{port}",
            out_dir=tmp_path,
        )
        # every vehicle message and wait the run counted has reached the subscriber
        bus = "bus-G6000-01"

        def received() -> bool:
            gnss = sum(1 for t, _ in got if t == topics.vehicle(bus, "gnss"))
            waits = sum(1 for t, _ in got if "/waits/" in t)
            return gnss >= stats.gnss and waits >= stats.waits

        async with asyncio.timeout(20):
            while not received():
                await asyncio.sleep(0.02)
        task.cancel()
    server.close()
    await server.wait_closed()
    assert stats.gnss > 100
    assert stats.adverts == len(lines)
    assert len(lines) > 100
    bus = "bus-G6000-01"
    gnss = [json.loads(p) for t, p in got if t == topics.vehicle(bus, "gnss")]
    trips = [json.loads(p) for t, p in got if t == topics.vehicle(bus, "trip")]
    doors = [json.loads(p) for t, p in got if t == topics.vehicle(bus, "doors")]
    assert len(gnss) == stats.gnss
    assert set(gnss[0]) >= {"t", "lat", "lon", "speed_mps"}
    assert "kind" not in gnss[0]
    assert trips[0]["route_id"] == "G6000"
    assert doors
    assert set(doors[0]) == {"t", "open"}
    waits = [(t, p) for t, p in got if "/waits/" in t]
    assert len(waits) == stats.waits
    for _, payload in waits:  # exactly what the edges accept
        from busbell._bells import validate_wait

        validate_wait(json.loads(payload))
    # "now" mode: the scenario starts about now, so tokens verify against the wall clock
    first = json.loads(lines[0])
    assert first["kind"] == "adv"
    assert abs(first["t"] - started) < 120
    fleet = read_fleet_keys(tmp_path / "FLEET.csv")
    TokenVerifier(fleet).verify(bytes.fromhex(first["mfr"]["65535"]), first["t"])


@pytest.mark.mosquitto
def test_run_command(
    shared_broker: Any, topic_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from firmware_sim.cli import main

    broker = f"{shared_broker.host}:{shared_broker.port}"
    args = ["run", "--broker", broker, "--bus", "bus-G6000-01", "--scenario", "gnss_tunnel"]
    assert main([*args, "--speed", "5000", "--prefix", topic_prefix]) == 0
    out = capsys.readouterr().out
    assert "played gnss_tunnel/bus-G6000-01" in out
    assert "0 adverts" in out  # no --adv-target
    assert main(["run", "--broker", "nohost", "--bus", "b", "--scenario", "gnss_tunnel"]) == 2
