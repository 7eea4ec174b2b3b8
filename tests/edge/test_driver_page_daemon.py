"""The driver page as part of the edge daemon (``[driver_page]``) and as ``busbell edge display``.

Real Mosquitto (the machine's, under a unique prefix); the page is read over HTTP here
(the browser tests are in ``test_driver_page.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from busbell import DeviceKey, TraceRecord
from busbell._mqtt import MqttSession, MqttSettings
from edge._daemon import EdgeDaemon, cancel_and_wait
from edge._driver_page import DriverPageSettings
from edge._segment import SegmentDraft
from edge._source import AdvertisementSink
from edge.config import EdgeConfig
from tests.conftest import free_port
from tests.factories.tasks import LIVE_TIMEOUT_S

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(90)]

BUS = "bus-dp1"


def display_model(on_board: int = 5) -> dict[str, Any]:
    nxt = {
        "stop_id": "S1",
        "name": "미금역 Migeum Stn.",
        "seq": 1,
        "waits": 1,
        "assist": False,
        "stop_requested": False,
        "request_ids": ["req-1"],
    }
    return {
        "v": 1,
        "bus_id": BUS,
        "t": time.time(),
        "route_id": "17",
        "trip_id": None,
        "online": True,
        "on_board": on_board,
        "next_stop": nxt,
        "stops": [nxt],
    }


@dataclass
class _Stats:
    adverts_seen: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class _QuietPipeline:
    """No adverts come in these tests; the page is what is tested."""

    stats = _Stats()

    def feed(self, rec: TraceRecord) -> list[SegmentDraft]:
        return []

    def finish(self, t: float) -> list[SegmentDraft]:
        return []

    def on_board(self) -> int:
        return 0

    def active_flags(self) -> dict[str, int]:
        return {}

    def fleet_keys_changed(self, days: Iterable[int]) -> None:
        pass


class _IdleSource:
    name = "idle"

    async def run(self, sink: AdvertisementSink) -> None:
        await asyncio.Event().wait()


async def _publish(settings: MqttSettings, topic: str, payload: bytes) -> None:
    async with MqttSession(settings, f"t-{uuid.uuid4().hex[:8]}", clean_start=True) as s:
        await s.publish(topic, payload, qos=1, retain=True)


async def _state(c: httpx.AsyncClient, until: Any, timeout: float = 20) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(httpx.TransportError):
                st: dict[str, Any] = (await c.get("state")).json()
                if until(st):
                    return st
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _daemon(cfg: EdgeConfig) -> AsyncIterator[EdgeDaemon]:
    d = EdgeDaemon(
        cfg,
        _IdleSource(),
        time.time,
        pipeline=_QuietPipeline(),
        device_key=DeviceKey.from_seed(bytes(32)),
        fleet_keys={},
    )
    task = asyncio.create_task(d.run())
    try:
        yield d
    finally:
        d.request_stop()
        async with asyncio.timeout(30):
            await task


def _config(tmp_path: Path, broker: Any, prefix: str, page: DriverPageSettings) -> EdgeConfig:
    cfg = EdgeConfig(bus_id=BUS, store=tmp_path / "fares.db", source="trace", driver_page=page)
    mqtt = replace(
        cfg.mqtt,
        host=broker.host,
        port=broker.port,
        prefix=prefix,
        client_id=f"edge-{uuid.uuid4().hex[:8]}",
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
    )
    return replace(cfg, mqtt=mqtt)


async def test_daemon_serves_the_page_as_a_named_task(
    shared_broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    cfg = _config(
        tmp_path, shared_broker, topic_prefix, DriverPageSettings(enabled=True, port=port)
    )
    settings = MqttSettings(host=shared_broker.host, port=shared_broker.port, prefix=topic_prefix)
    display = f"{topic_prefix}/buses/{BUS}/display"
    ack_topic = f"{topic_prefix}/buses/{BUS}/driver/ack"
    async with (
        _daemon(cfg) as d,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/", timeout=LIVE_TIMEOUT_S) as c,
    ):
        st = await _state(c, lambda s: s["state"]["edge"] == "online" and s["state"]["broker"])
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert f"busbell[{BUS}].driver_page" in names
        assert st["display"] is None
        await _publish(settings, display, json.dumps(display_model(7)).encode())
        st = await _state(c, lambda s: s["display"] is not None)
        assert st["display"]["on_board"] == 7
        async with MqttSession(settings, f"t-{uuid.uuid4().hex[:8]}", clean_start=True) as sub:
            await sub.subscribe([ack_topic])
            r = await c.post(
                "ack", json={"request_ids": ["req-1"]}, headers={"Origin": str(c.base_url)[:-1]}
            )
            assert r.status_code == 200, r.text
            async with asyncio.timeout(10):
                async for m in sub.messages():
                    assert json.loads(m.payload)["request_ids"] == ["req-1"]
                    break
        health = d.status()["driver_page"]
        assert health["listening"] is True
        assert (health["displays"], health["acks_published"]) == (1, 1)
        assert health["readers_refused"] == 0
    await _publish(settings, display, b"")


async def test_daemon_keeps_running_while_the_page_port_is_taken(
    shared_broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    cfg = _config(
        tmp_path, shared_broker, topic_prefix, DriverPageSettings(enabled=True, port=port)
    )
    with capture_logs() as logs:
        async with _daemon(cfg) as d:
            async with asyncio.timeout(20):
                while not any(e["event"] == "driver_page_bind_failed" for e in logs):
                    await asyncio.sleep(0.05)
                await d.link.wait_connected()
            assert d.driver_page is not None
            assert d.driver_page.address is None
            blocker.close()  # the port comes free: the page starts on the next try
            async with asyncio.timeout(20):
                while d.driver_page.address is None:
                    await asyncio.sleep(0.05)
            assert d.driver_page.address == ("127.0.0.1", port)
    failed = next(e for e in logs if e["event"] == "driver_page_bind_failed")
    assert failed["log_level"] == "error"
    assert failed["port"] == port


async def test_daemon_without_driver_page_serves_nothing(
    shared_broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, shared_broker, topic_prefix, DriverPageSettings())
    assert cfg.driver_page.enabled is False
    async with _daemon(cfg) as d:
        await d.link.wait_connected()
        assert d.driver_page is None
        assert "driver_page" not in d.status()
        assert not any(t.get_name().endswith(".driver_page") for t in asyncio.all_tasks())


def test_driver_page_options_are_validated() -> None:
    for bad in (
        {"port": 70000},
        {"stale_after_s": 0},
        {"heartbeat_s": -1},
        {"max_clients": 0},
        {"max_payload_bytes": 10},
        {"stops_shown": 99},
        {"ack_token": ""},
    ):
        with pytest.raises(ValueError, match="driver_page"):
            DriverPageSettings(**bad)


def test_busbell_edge_display_command(shared_broker: Any, topic_prefix: str) -> None:
    port = free_port()
    env = {
        **os.environ,
        "BUSBELL_MQTT__PREFIX": topic_prefix,
        "BUSBELL_MQTT__HOST": shared_broker.host,
        "BUSBELL_DRIVER_PAGE__STOPS_SHOWN": "3",
    }
    cmd = [sys.executable, "-m", "busbell.cli", "edge", "display", "--bus", BUS]
    proc = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while line and "driver display of" not in line:
            line = proc.stderr.readline()
        url = f"http://127.0.0.1:{port}/"
        assert line.startswith(f"driver display of {BUS}: {url} "), line
        settings = MqttSettings(host=shared_broker.host, prefix=topic_prefix)
        asyncio.run(
            _publish(
                settings,
                f"{topic_prefix}/buses/{BUS}/display",
                json.dumps(display_model(3)).encode(),
            )
        )
        deadline = time.monotonic() + 20
        while True:
            st = httpx.get(url + "state", timeout=LIVE_TIMEOUT_S).json()
            if st["display"] is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert st["display"]["on_board"] == 3
        assert st["hello"]["stops_shown"] == 3
        page = httpx.get(url, timeout=LIVE_TIMEOUT_S)
        assert page.status_code == 200
        assert "app.js" in page.text
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "driver display stopped: 1 models shown, 0 rejected, 0 acks" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        asyncio.run(
            _publish(
                MqttSettings(host=shared_broker.host), f"{topic_prefix}/buses/{BUS}/display", b""
            )
        )


async def test_cancel_and_wait_cancels_again_a_task_that_swallowed_the_cancel() -> None:
    """Python 3.11's ``wait_for`` (aiomqtt's PUBACK wait) can swallow a cancel; the
    daemon's status task then went on and ``EdgeDaemon.run`` never returned."""
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed += 1  # as wait_for does when the awaited thing completes meanwhile
        await asyncio.Event().wait()

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await cancel_and_wait([task])
    assert task.cancelled()
    assert swallowed == 1
