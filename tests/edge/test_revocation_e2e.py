"""Revocation end to end: `busbell backend run` and a live edge daemon on one broker.

A rider enrolled through the rider API is accepted by the bus; the rider revokes its
token through the API; within seconds the backend publishes a new signed deny list, the
bus verifies it and stops accepting that rider (and only that rider). A forged unsigned
list with a huge version, published by anyone on the broker, changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend._auth import SCOPES, new_operator_token, operator_entry
from busbell import (
    DEVICES_HEADER,
    FLEET_HEADER,
    AdvRecord,
    Topics,
    day_of,
    derive_rider_keys,
    encode_payload,
    write_rows,
)
from busbell._mqtt import MqttSession, MqttSettings
from edge._daemon import EdgeDaemon
from edge.config import EdgeConfig, StatusSettings
from tests.conftest import free_port
from tests.factories.backend_world import write_gtfs
from tests.factories.edge_daemon import KEY, QueueSource, until
from tests.factories.tasks import LIVE_TIMEOUT_S

pytestmark = pytest.mark.mosquitto


async def test_a_revoked_rider_is_refused_by_a_live_bus_within_seconds(
    tmp_path: Path, shared_broker: Any, topic_prefix: str
) -> None:
    from backend._denylist import load_signing_key, signing_key_path
    from backend.cli import run_backend
    from backend.config import BackendConfig
    from busbell import load_config

    now = time.time()
    fleet = {day_of(now) + d: bytes([d + 1]) * 32 for d in (-1, 0, 1)}
    write_rows(tmp_path / "FLEET.csv", FLEET_HEADER, [(str(d), k.hex()) for d, k in fleet.items()])
    write_rows(tmp_path / "DEVICES.csv", DEVICES_HEADER, [("bus-e2e", KEY.public.hex)])
    write_gtfs(tmp_path / "gtfs")
    ops = new_operator_token()
    port = free_port()
    cfg_path = tmp_path / "backend.toml"
    cfg_path.write_text(
        f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "b.db"}"\n'
        f'[mqtt]\nhost = "{shared_broker.host}"\nport = {shared_broker.port}\n'
        f'prefix = "{topic_prefix}"\nclient_id = "be-{uuid.uuid4().hex[:8]}"\n'
        f'[files]\ndevices = "{tmp_path / "DEVICES.csv"}"\n'
        f'[keys]\nfleet_keys_file = "{tmp_path / "FLEET.csv"}"\ndays_ahead = 1\n'
        f'[api]\nport = {port}\noperators = ["{operator_entry("ops", SCOPES, ops)}"]\n'
    )
    backend_key = load_signing_key(signing_key_path(load_config(BackendConfig, cfg_path)))
    stop = asyncio.Event()
    backend = asyncio.create_task(run_backend(cfg_path, stop=stop))

    edge_cfg = EdgeConfig(
        bus_id="bus-e2e",
        store=tmp_path / "fares.db",
        fleet_keys=tmp_path / "edge-FLEET.csv",
        gtfs=tmp_path / "gtfs",
        source="trace",
        status=StatusSettings(interval_s=0.5),
        denylist_public_key=backend_key.public.hex,
    )
    edge_cfg = replace(
        edge_cfg,
        mqtt=replace(
            edge_cfg.mqtt,
            host=shared_broker.host,
            port=shared_broker.port,
            prefix=topic_prefix,
            client_id=f"edge-{uuid.uuid4().hex[:8]}",
            backoff_initial_s=0.1,
            backoff_max_s=0.5,
        ),
    )
    source = QueueSource()
    daemon = EdgeDaemon(edge_cfg, source, clock=time.time, device_key=KEY, fleet_keys=fleet)
    edge = asyncio.create_task(daemon.run())
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=LIVE_TIMEOUT_S
        ) as api:
            async with asyncio.timeout(30):
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await api.get("/healthz")).json().get("mqtt"):
                            break
                    await asyncio.sleep(0.1)
            riders = {}
            for name in ("ann", "bob"):
                r = await api.post("/riders", json={"kind": "fob"})
                assert r.status_code == 201
                body = r.json()
                riders[name] = (
                    derive_rider_keys(bytes.fromhex(body["token_key"])),
                    body["rider_id"],
                    {"Authorization": f"Bearer {body['access_token']}"},
                )

            def hear(name: str) -> None:
                keys = riders[name][0]
                t = time.time()
                payload = encode_payload(keys, t, fleet_key=fleet[day_of(t)])
                source.q.put_nowait(AdvRecord(t, f"AA:{name}", -50, {0xFFFF: payload}))

            # the backend's first deny list (version 1, empty) reaches the bus
            await until(lambda: daemon.denylist.version >= 1, timeout=20.0)
            first = daemon.denylist.version
            accepted = daemon.pipeline.stats.adverts_accepted
            hear("ann")
            hear("bob")
            await until(
                lambda: daemon.pipeline.stats.adverts_accepted == accepted + 2, timeout=20.0
            )

            # anyone on the broker publishes an unsigned list with a huge version
            settings = MqttSettings(host=shared_broker.host, port=shared_broker.port)
            forged = {"v": 1, "version": 2**62, "rids": [], "devices": ["bus-e2e"]}
            async with MqttSession(settings, f"x-{uuid.uuid4().hex[:8]}", clean_start=True) as x:
                await x.publish(Topics(topic_prefix).denylist(), json.dumps(forged), qos=1)
            await until(lambda: daemon.stats.denylist_rejected >= 1, timeout=20.0)
            assert daemon.denylist.version == first
            assert not daemon.denylist.bus_revoked

            # ann revokes her own token (lost fob) through the rider API
            _, ann_id, ann_auth = riders["ann"]
            t_revoke = time.monotonic()
            r = await api.post(f"/riders/{ann_id}/revoke", headers=ann_auth)
            assert r.status_code == 200
            await until(lambda: daemon.denylist.version > first, timeout=10)
            delay = time.monotonic() - t_revoke
            assert delay < 10
            denied = daemon.stats.adverts_denied
            accepted = daemon.pipeline.stats.adverts_accepted
            hear("ann")
            hear("bob")
            await until(lambda: daemon.stats.adverts_denied == denied + 1, timeout=20.0)
            await until(
                lambda: daemon.pipeline.stats.adverts_accepted == accepted + 1, timeout=20.0
            )
            status = daemon.status()["denylist"]
            assert status["rids"] >= 1
            assert status["rejected"].get("unsigned", 0) >= 1
    finally:
        daemon.request_stop()
        await asyncio.wait_for(edge, 20)
        stop.set()
        assert await asyncio.wait_for(backend, 30) == 0
        async with MqttSession(
            MqttSettings(host=shared_broker.host, port=shared_broker.port),
            f"c-{uuid.uuid4().hex[:6]}",
            clean_start=True,
        ) as c:
            t = Topics(topic_prefix)
            for topic in (t.status("bus-e2e"), t.occupancy("bus-e2e"), t.denylist()):
                await c.publish(topic, b"", qos=1, retain=True)
