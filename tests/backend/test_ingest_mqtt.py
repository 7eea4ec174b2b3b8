"""IngestWorker over a real mosquitto: ack after commit, resend requests, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from backend._db import create_engine, fare_events, migrate, quarantine
from backend._ingest import IngestWorker, run_ingest
from backend._keys import register_device
from backend.config import BackendConfig, DatabaseSettings, FilesSettings, IngestSettings
from busbell import DEVICES_HEADER, Topics, canonical_bytes, write_rows
from busbell._mqtt import MqttSession, MqttSettings
from edge._events import EventBuilder
from edge._store import FareStore
from edge._uplink import FareUploader, MqttLink, UplinkSettings
from tests.factories.drafts import synthetic_draft
from tests.factories.fare_events import EdgeFleet, batch_payload, device_key_for, make_events

pytestmark = pytest.mark.mosquitto


def make_config(db_url: str, host: str, port: int, prefix: str, **ingest: Any) -> BackendConfig:
    return BackendConfig(
        database=DatabaseSettings(url=db_url),
        mqtt=MqttSettings(host=host, port=port, prefix=prefix),
        ingest=IngestSettings(worker_id="t1", **ingest),
    )


@contextlib.asynccontextmanager
async def running_worker(config: BackendConfig, buses: list[str]) -> AsyncIterator[IngestWorker]:
    engine = create_engine(config.database.url)
    await migrate(engine)
    async with engine.begin() as conn:
        for b in buses:
            await register_device(conn, b, device_key_for(b).public)
    worker = IngestWorker(config, engine)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(worker.connected.wait(), 10)
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await engine.dispose()


async def until(pred: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


async def count_events(url: str, bus_id: str) -> int:
    eng = create_engine(url)
    try:
        async with eng.connect() as conn:
            q = sa.select(sa.func.count()).where(fare_events.c.bus_id == bus_id)
            return int((await conn.execute(q)).scalar_one())
    finally:
        await eng.dispose()


async def test_ack_only_after_commit(db_url: str, shared_broker: Any, topic_prefix: str) -> None:
    cfg = make_config(db_url, shared_broker.host, shared_broker.port, topic_prefix)
    topics = Topics(topic_prefix)
    chain = make_events("B1", device_key_for("B1"), 30)
    settings = MqttSettings(host=shared_broker.host, port=shared_broker.port, prefix=topic_prefix)
    async with running_worker(cfg, ["B1"]):
        async with MqttSession(settings, "t-edge-B1", clean_start=True) as edge:
            await edge.subscribe([topics.fares_ack("B1")])
            await edge.publish(topics.fares("B1"), batch_payload("B1", chain[:10]), qos=1)
            await edge.publish(topics.fares("B1"), canonical_bytes(chain[10]), qos=1)  # bare
            await edge.publish(topics.fares("B1"), batch_payload("B1", chain[11:]), qos=1)
            seen: list[int] = []
            async with asyncio.timeout(15):
                async for msg in edge.messages():
                    upto = json.loads(msg.payload)["upto_seq"]
                    seen.append(upto)
                    # Whatever is acked is already committed.
                    assert await count_events(db_url, "B1") >= upto
                    if upto == 30:
                        break
    assert seen == sorted(seen)


async def test_gap_resend_and_bad_input_do_not_stop_the_worker(
    tmp_path: Path, shared_broker: Any, topic_prefix: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'l.db'}"
    cfg = make_config(url, shared_broker.host, shared_broker.port, topic_prefix, resend_after_s=0.2)
    topics = Topics(topic_prefix)
    chain = make_events("B1", device_key_for("B1"), 10)
    settings = MqttSettings(host=shared_broker.host, port=shared_broker.port, prefix=topic_prefix)
    with capture_logs() as logs:
        async with running_worker(cfg, ["B1"]):
            async with MqttSession(settings, "t-edge-B1b", clean_start=True) as edge:
                await edge.subscribe([topics.fares_resend("B1"), topics.fares_ack("B1")])
                await edge.publish(topics.fares("B1"), b"\x00garbage", qos=1)
                await edge.publish(topics.fares("B1"), b'{"bus_id":"B7","events":[]}', qos=1)
                await edge.publish(topics.fares("B1"), batch_payload("B1", chain[5:]), qos=1)
                resend = None
                async with asyncio.timeout(10):
                    async for msg in edge.messages():
                        if msg.topic == topics.fares_resend("B1"):
                            resend = json.loads(msg.payload)
                            break
                assert resend == {"from_seq": 1, "to_seq": 5}
                await edge.publish(topics.fares("B1"), batch_payload("B1", chain[:5]), qos=1)
                async with asyncio.timeout(10):
                    async for msg in edge.messages():
                        acked = json.loads(msg.payload).get("upto_seq")
                        if msg.topic == topics.fares_ack("B1") and acked == 10:
                            break
    assert await count_events(url, "B1") == 10
    names = [e["event"] for e in logs]
    for name in ("fare_resend_requested", "fare_message_malformed", "fare_event_quarantined"):
        assert name in names
    eng = create_engine(url)
    async with eng.connect() as conn:
        reasons = sorted(r for (r,) in await conn.execute(sa.select(quarantine.c.reason)))
    await eng.dispose()
    assert reasons == ["malformed_payload", "malformed_payload"]


async def test_run_ingest_imports_devices_and_serves_fleet(
    tmp_path: Path, shared_broker: Any, topic_prefix: str
) -> None:
    """run_ingest (what `busbell backend run` calls) with a DEVICES.csv and edges."""
    buses = [f"R{i}" for i in range(3)]
    devices = tmp_path / "DEVICES.csv"
    write_rows(devices, DEVICES_HEADER, [(b, device_key_for(b).public.hex) for b in buses])
    url = f"sqlite+aiosqlite:///{tmp_path / 'l.db'}"
    cfg = BackendConfig(
        database=DatabaseSettings(url=url),
        mqtt=MqttSettings(host=shared_broker.host, port=shared_broker.port, prefix=topic_prefix),
        files=FilesSettings(devices=devices),
    )
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(run_ingest(cfg, stop=stop))
        async with asyncio.timeout(20):  # its subscription is in place (SUBACK)
            while not any(e["event"] == "fare_ingest_subscribed" for e in logs):
                assert not task.done(), task
                await asyncio.sleep(0.02)
    chains = {b: make_events(b, device_key_for(b), 120) for b in buses}
    fleet = EdgeFleet(cfg.mqtt, chains, batch=20, window=60, client_id="t-edges-run")
    try:
        await fleet.run(timeout_s=30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert fleet.acked == dict.fromkeys(buses, 120)
    for b in buses:
        assert await count_events(url, b) == 120


async def test_shared_subscription_members_with_one_configured_client_id_coexist(
    tmp_path: Path, shared_broker: Any, topic_prefix: str
) -> None:
    """Two ingest processes of one backend config ([mqtt] client_id set) must not take
    over each other's MQTT session: each member's id carries its worker id."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'l.db'}"
    base = make_config(url, shared_broker.host, shared_broker.port, topic_prefix)
    mqtt = MqttSettings(
        host=shared_broker.host,
        port=shared_broker.port,
        prefix=topic_prefix,
        client_id=f"ops-backend-{topic_prefix.rsplit('/', 1)[-1]}",
    )
    cfgs = [
        BackendConfig(
            database=base.database,
            mqtt=mqtt,
            ingest=IngestSettings(worker_id=w, shared_subscription=True),
        )
        for w in ("w1", "w2")
    ]
    topics = Topics(topic_prefix)
    chain = make_events("B1", device_key_for("B1"), 20)
    with capture_logs() as logs:
        async with running_worker(cfgs[0], ["B1"]), running_worker(cfgs[1], []) as second:
            async with MqttSession(mqtt, f"t-edge-{mqtt.client_id}", clean_start=True) as edge:
                await edge.subscribe([topics.fares_ack("B1")])
                for k in range(0, 20, 5):
                    await edge.publish(topics.fares("B1"), batch_payload("B1", chain[k : k + 5]))
                async with asyncio.timeout(15):
                    async for msg in edge.messages():
                        if json.loads(msg.payload).get("upto_seq") == 20:
                            break
            assert second.connected.is_set()
    assert await count_events(url, "B1") == 20
    assert [e for e in logs if e["event"] == "fare_ingest_disconnected"] == []


async def test_the_last_batch_is_acked_when_committed_not_at_the_next_message_or_sweep(
    db_url: str, shared_broker: Any, topic_prefix: str
) -> None:
    # The worker commits a batch while it prepares the next; when no next message comes,
    # the commit's acks used to wait for one, or for the gap sweep (resend_after_s / 2:
    # here 300 s, far past the test's timeout).
    cfg = make_config(
        db_url, shared_broker.host, shared_broker.port, topic_prefix, resend_after_s=600.0
    )
    topics = Topics(topic_prefix)
    chain = make_events("B1", device_key_for("B1"), 20)
    settings = MqttSettings(host=shared_broker.host, port=shared_broker.port, prefix=topic_prefix)
    engine = create_engine(db_url)
    await migrate(engine)
    async with engine.begin() as conn:
        await register_device(conn, "B1", device_key_for("B1").public)
    worker = IngestWorker(cfg, engine)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.connected.wait(), 10)
        async with MqttSession(settings, "t-edge-B1-last", clean_start=True) as edge:
            await edge.subscribe([topics.fares_ack("B1")])
            await edge.publish(topics.fares("B1"), batch_payload("B1", chain), qos=1)
            async with asyncio.timeout(20):
                async for msg in edge.messages():
                    if json.loads(msg.payload)["upto_seq"] == 20:
                        break
        assert await count_events(db_url, "B1") == 20
    finally:
        # a stop would wait for the worker's idle wait (the sweep's period, 300 s)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await engine.dispose()


@pytest.mark.parametrize("shared", [False, True])
async def test_fares_sent_while_the_worker_is_away_over_a_broker_restart(
    tmp_path: Path, private_broker: Any, shared: bool
) -> None:
    """A broker restart (clean stop: Mosquitto writes its persistence file, as
    ``deploy/mosquitto/central.conf`` has it on) while the ingest worker is away, and the
    bus's fares published before the worker is back.

    The worker's own MQTT session (one worker: stable client id, ``clean_start=False``, a
    day's session expiry) survives the restart with its subscription, and the broker queues
    the fares for it: acked as soon as it is back, with no ack timeout of the bus. A
    shared-subscription member's session is clean and non-persistent (so a dead member's
    share is not queued for it): nobody is subscribed, the broker drops them, and the bus
    sends them again at its ack timeout (``[uplink] ack_timeout_s``, 30 s by default).
    """
    url = f"sqlite+aiosqlite:///{tmp_path / 'l.db'}"
    host, port, bus = private_broker.host, private_broker.port, "bus-0001"
    cfg = make_config(url, host, port, "busbell/v1", shared_subscription=shared)
    topics = Topics("busbell/v1")
    store = await FareStore.open(tmp_path / "fares.db", EventBuilder(bus, device_key_for(bus)))
    await store.append_many(synthetic_draft(i) for i in range(20))
    link = MqttLink(
        MqttSettings(host=host, port=port, backoff_initial_s=0.1, backoff_max_s=0.5), bus, topics
    )
    settings = UplinkSettings(batch_max_events=10, ack_timeout_s=1.0 if shared else 60.0)
    up = FareUploader(store, bus, topics, settings)
    up.attach(link)
    tasks: list[asyncio.Task[None]] = []
    try:
        async with running_worker(cfg, [bus]):
            # the bus connects once the worker has subscribed (a new worker's session
            # is new to the broker: fares before it would go to nobody)
            tasks = [asyncio.create_task(link.run()), asyncio.create_task(up.run(link))]
            await until(lambda: store.acked_upto == 20)
        private_broker.stop()
        await until(lambda: not link.is_connected)
        private_broker.start()
        await until(lambda: link.connects == 2)
        sent = up.stats.batches_sent
        await store.append_many(synthetic_draft(i) for i in range(100, 110))
        up.notify()
        await until(lambda: up.stats.batches_sent > sent)  # 21-30, the worker away
        async with running_worker(cfg, []):
            await until(lambda: store.acked_upto == 30)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()
    assert await count_events(url, bus) == 30
    if shared:
        assert up.stats.ack_timeouts >= 1
    else:
        assert up.stats.ack_timeouts == 0
