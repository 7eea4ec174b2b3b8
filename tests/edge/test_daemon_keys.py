"""The daemon takes fleet keys sealed to it and the deny list from the backend over MQTT."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace
from pathlib import Path

from busbell import (
    AdvRecord,
    DeviceKey,
    Topics,
    canonical_bytes,
    day_of,
    ed25519_to_x25519_public,
    read_fleet_keys,
    seal_key_bundle,
    sign_denylist,
)
from busbell._mqtt import MqttSettings
from edge._daemon import EdgeDaemon
from edge.config import EdgeConfig, StatusSettings
from tests.factories.edge_daemon import FakePipeline, QueueSource, until
from tests.factories.mqtt import FakeBroker

KEY = DeviceKey.from_seed(bytes(range(32)))


async def test_key_bundle_and_denylist_reach_the_daemon(tmp_path: Path) -> None:
    # the daemon's checks are the point, not the broker: the in-memory one
    broker = FakeBroker()
    topic_prefix = "busbell/v1"
    now = 1_790_000_000.0
    today = day_of(now)
    fleet = tmp_path / "FLEET.csv"
    fleet.write_text(f"day,fleet_key\n{today},{'11' * 32}\n")
    backend = DeviceKey.from_seed(b"\x42" * 32)
    cfg = EdgeConfig(
        bus_id="bus-7",
        store=tmp_path / "f.db",
        fleet_keys=fleet,
        source="trace",
        status=StatusSettings(interval_s=0.2),
        denylist_public_key=backend.public.hex,
    )
    cfg = replace(
        cfg,
        mqtt=replace(
            cfg.mqtt,
            prefix=topic_prefix,
            client_id=f"edge-{uuid.uuid4().hex[:8]}",
            backoff_initial_s=0.1,
            backoff_max_s=0.5,
        ),
    )
    source = QueueSource()
    pipe = FakePipeline()
    d = EdgeDaemon(
        cfg,
        source,
        clock=lambda: now,
        pipeline=pipe,
        device_key=KEY,
        session_factory=broker.session,
    )
    assert d.fleet_keys_days_remaining() == 0
    t = Topics(topic_prefix)
    task = asyncio.create_task(d.run())
    try:
        await until(lambda: d.link.is_connected)
        new_keys = {today + i: bytes([i + 2]) * 32 for i in range(5)}
        bundle = seal_key_bundle(
            "bus-7", ed25519_to_x25519_public(KEY.public.raw), new_keys, issued_at=now
        )
        other = seal_key_bundle(
            "bus-8", ed25519_to_x25519_public(KEY.public.raw), new_keys, issued_at=now
        )
        rid = bytes(range(3, 15))
        settings = MqttSettings(prefix=topic_prefix)
        async with broker.session(settings, "backend", clean_start=True) as b:
            await b.publish(t.fleet_keys("bus-7"), json.dumps(other), qos=1)
            await b.publish(t.fleet_keys("bus-7"), b"garbage", qos=1)
            await b.publish(t.fleet_keys("bus-7"), json.dumps(bundle), qos=1)
            body = {"v": 1, "version": 3, "rids": [rid.hex()], "devices": []}
            # unsigned, with a huge version: refused, and it does not block the real one
            await b.publish(t.denylist(), json.dumps({**body, "version": 2**62}), qos=1)
            await b.publish(t.denylist(), canonical_bytes(sign_denylist(body, backend)), qos=1)
            old = {**body, "version": 2, "rids": []}
            await b.publish(t.denylist(), canonical_bytes(sign_denylist(old, backend)), qos=1)
            await until(lambda: d.fleet_keys_days_remaining() == 4 and d.denylist.version == 3)
            await until(lambda: d.stats.denylist_stale == 1)
        assert d.stats.key_bundles == 1
        assert d.stats.key_bundles_rejected == 2
        # today's key replaced and four days added: the pipeline forgets what it accepted
        # under the keys they replace
        assert pipe.keys_changed == [sorted(new_keys)]
        assert read_fleet_keys(fleet) == new_keys  # persisted for an offline restart
        denied = AdvRecord(now, "a", -40, {0xFFFF: bytes(3) + rid + bytes(9)})
        allowed = AdvRecord(now, "b", -40, {0xFFFF: bytes(24)})
        source.q.put_nowait(denied)
        source.q.put_nowait(allowed)
        # denied adverts are counted and dropped before the queue: once the allowed one
        # is in the pipeline, the denied one can no longer arrive
        await until(lambda: len(pipe.records) >= 1 and d.stats.adverts_denied == 1)
        assert [r.addr for r in pipe.records if isinstance(r, AdvRecord)] == ["b"]
        status = d.status()
        assert status["denylist"] == {
            "version": 3,
            "rids": 1,
            "bus_revoked": False,
            "adverts_denied": 1,
            "rejected": {"unsigned": 1},
            "stale": 1,
        }
        assert status["fleet_keys"]["days_remaining"] == 4
    finally:
        d.request_stop()
        await asyncio.wait_for(task, 20)


def test_real_status_occupancy_bundle_and_denylist_payloads_match_asyncapi(tmp_path: Path) -> None:
    from tests.factories.asyncapi import check

    now = 1_790_000_000.0
    fleet = tmp_path / "FLEET.csv"
    fleet.write_text(f"day,fleet_key\n{day_of(now)},{'11' * 32}\n")
    cfg = EdgeConfig(bus_id="bus-7", store=tmp_path / "f.db", fleet_keys=fleet, source="trace")
    d = EdgeDaemon(cfg, QueueSource(), clock=lambda: now, pipeline=FakePipeline(), device_key=KEY)
    check("Status", json.loads(json.dumps(d.status())))
    check("Occupancy", json.loads(json.dumps(d.occupancy())))
    bundle = seal_key_bundle(
        "bus-7", ed25519_to_x25519_public(KEY.public.raw), {1: bytes(32)}, issued_at=now
    )
    check("FleetKeys", json.loads(json.dumps(bundle)))
