"""Scale-out: 3 ingest worker processes on a shared subscription with PostgreSQL.

Simulated edges upload pre-signed chains; one worker is killed (SIGKILL) mid-way. Every
event must end up stored exactly once and every bus fully acknowledged.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from backend._db import chain_state, create_engine, fare_events, migrate
from backend._keys import register_device
from busbell._mqtt import MqttSettings
from tests.factories.fare_events import EdgeFleet, device_key_for, make_events
from tests.factories.tasks import stop_processes
from tests.factories.workers import INGEST_WORKER

pytestmark = [pytest.mark.mosquitto, pytest.mark.postgres]


def start_worker(n: int, pg_url: str, broker: Any, prefix: str, log: Path) -> Any:
    env = dict(
        os.environ,
        BUSBELL_DATABASE__URL=pg_url,
        BUSBELL_MQTT__HOST=broker.host,
        BUSBELL_MQTT__PORT=str(broker.port),
        BUSBELL_MQTT__PREFIX=prefix,
        BUSBELL_INGEST__SHARED_SUBSCRIPTION="true",
        BUSBELL_INGEST__WORKER_ID=f"w{n}-{prefix.split('/', maxsplit=1)[0]}",
        BUSBELL_INGEST__RESEND_AFTER_S="1.0",
    )
    with log.open("wb") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-c", INGEST_WORKER], env=env, stderr=err, stdout=subprocess.DEVNULL
        )


async def wait_subscribed(logs: list[Path], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all("fare_ingest_subscribed" in p.read_text(errors="replace") for p in logs):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("workers did not subscribe: " + logs[0].read_text()[-2000:])


def settings_for(broker: Any, prefix: str) -> MqttSettings:
    """The fleet's connection to `broker` under the topic `prefix`."""
    return MqttSettings(host=broker.host, port=broker.port, prefix=prefix)


async def one_worker_fleet(
    pg_url: str,
    broker: Any,
    prefix: str,
    log: Path,
    *,
    buses: list[str],
    per_bus: int,
    batch: int,
    window: int,
    retry_s: float,
) -> tuple[Any, Any, EdgeFleet]:
    """A migrated database with `buses` registered, one ingest worker (its log in `log`)
    subscribed, and a fleet (`batch`, `window`, `retry_s`) holding a chain of
    `per_bus` signed events for each bus: the engine, the worker process and the fleet."""
    chains = {b: make_events(b, device_key_for(b), per_bus) for b in buses}
    engine = create_engine(pg_url)
    await migrate(engine)
    async with engine.begin() as conn:
        for b in buses:
            await register_device(conn, b, device_key_for(b).public)
    worker = start_worker(0, pg_url, broker, prefix, log)
    try:
        await wait_subscribed([log])
    except BaseException:
        stop_processes([worker])
        await engine.dispose()
        raise
    return (
        engine,
        worker,
        EdgeFleet(
            settings_for(broker, prefix), chains, batch=batch, window=window, retry_s=retry_s
        ),
    )


async def scale_out(
    pg_url: str, broker: Any, prefix: str, tmp_path: Path, *, n_buses: int, n_events: int
) -> None:
    per_bus = n_events // n_buses
    buses = [f"S{i:03d}" for i in range(n_buses)]
    t0 = time.monotonic()
    chains = {b: make_events(b, device_key_for(b), per_bus) for b in buses}
    sign_s = time.monotonic() - t0
    engine = create_engine(pg_url)
    await migrate(engine)
    async with engine.begin() as conn:
        for b in buses:
            await register_device(conn, b, device_key_for(b).public)
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    procs = [start_worker(i, pg_url, broker, prefix, logs[i]) for i in range(3)]
    try:
        await wait_subscribed(logs)
        settings = settings_for(broker, prefix)
        fleet = EdgeFleet(settings, chains, batch=50, window=200, retry_s=3.0)
        upload = asyncio.create_task(fleet.run(timeout_s=300))
        while fleet.acked_total() < n_events * 0.4 and not upload.done():
            await asyncio.sleep(0.05)
        procs[0].kill()  # mid-way, no goodbye: its in-flight batches are lost
        procs[0].wait(10)
        killed_at = fleet.acked_total()
        await upload
        elapsed = time.monotonic() - t0
        assert 0 < killed_at < n_events
        assert fleet.acked == dict.fromkeys(buses, per_bus)
        async with engine.connect() as conn:
            count = sa.select(sa.func.count()).select_from(fare_events)
            total = (await conn.execute(count)).scalar()
            per = dict(
                (
                    await conn.execute(
                        sa.select(
                            fare_events.c.bus_id,
                            sa.func.count(sa.distinct(fare_events.c.seq)),
                        ).group_by(fare_events.c.bus_id)
                    )
                ).all()
            )
            by_worker = dict(
                (
                    await conn.execute(
                        sa.select(fare_events.c.worker_id, sa.func.count()).group_by(
                            fare_events.c.worker_id
                        )
                    )
                ).all()
            )
            chains_db = {
                r.bus_id: (r.next_seq, r.acked_upto)
                for r in await conn.execute(sa.select(chain_state))
            }
        assert total == n_events  # exactly once: UNIQUE(bus_id, seq) and nothing missing
        assert per == dict.fromkeys(buses, per_bus)
        assert {b: n for b, (n, _) in chains_db.items()} == dict.fromkeys(buses, per_bus + 1)
        # acked_upto is written just after each ack is published.
        deadline = time.monotonic() + 10
        while any(a != per_bus for _, a in chains_db.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            async with engine.connect() as conn:
                chains_db = {
                    r.bus_id: (r.next_seq, r.acked_upto)
                    for r in await conn.execute(sa.select(chain_state))
                }
        assert {b: a for b, (_, a) in chains_db.items()} == dict.fromkeys(buses, per_bus)
        assert len(by_worker) >= 2  # the work really was shared
        sys.stderr.write(
            f"\nscale-out: {n_events} events, {n_buses} buses, 3 workers (1 killed at "
            f"{killed_at} acked): {elapsed:.1f} s incl. {sign_s:.1f} s signing; "
            f"per worker {by_worker}; edge retries {fleet.retries}, "
            f"resend requests {fleet.resend_requests}, reconnects {fleet.reconnects}\n"
        )
    finally:
        stop_processes(procs)
        await engine.dispose()
    for p in procs[1:]:
        assert p.returncode == 0, logs[procs.index(p)].read_text()[-3000:]


async def test_scaleout_small(
    pg_url: str, shared_broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    await scale_out(pg_url, shared_broker, topic_prefix, tmp_path, n_buses=10, n_events=5000)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_scaleout_full(
    pg_url: str, shared_broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    await scale_out(pg_url, shared_broker, topic_prefix, tmp_path, n_buses=100, n_events=50000)


@pytest.mark.timeout(120)
async def test_the_simulated_fleet_rides_out_a_broker_restart(
    pg_url: str, private_broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    # The fleet stands for real edges, which reconnect: a broker that drops them (a
    # restart here; under load, a missed keep-alive) costs a reconnect, not the run.
    buses = ["R000", "R001"]
    log = tmp_path / "worker.log"
    engine, worker, fleet = await one_worker_fleet(
        pg_url,
        private_broker,
        topic_prefix,
        log,
        buses=buses,
        per_bus=400,
        batch=10,
        window=40,
        retry_s=2.0,
    )
    try:
        upload = asyncio.create_task(fleet.run(timeout_s=90))
        while fleet.acked_total() < 200 and not upload.done():
            await asyncio.sleep(0.02)
        private_broker.kill()
        await asyncio.sleep(0.5)
        private_broker.start()
        await upload
        assert fleet.reconnects >= 1
        assert fleet.acked == dict.fromkeys(buses, 400)
        async with engine.connect() as conn:
            count = sa.select(sa.func.count()).select_from(fare_events)
            assert (await conn.execute(count)).scalar() == 800
    finally:
        stop_processes([worker])
        await engine.dispose()


@pytest.mark.timeout(120)
async def test_the_fleet_preloads_a_stopped_worker_which_then_drains_the_broker(
    pg_url: str, shared_broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    # The scale-out benchmark's drain (benchmarks/backend_scaleout.py, --load drain): the
    # worker subscribes and is stopped, the fleet publishes every chain (the broker
    # queues it), nothing is stored until the worker continues; run() then only reads
    # the acks: every bus acked, no retry, no re-send request.
    buses = ["D000", "D001", "D002"]
    count = sa.select(sa.func.count()).select_from(fare_events)
    log = tmp_path / "worker.log"
    engine, worker, fleet = await one_worker_fleet(
        pg_url,
        shared_broker,
        topic_prefix,
        log,
        buses=buses,
        per_bus=120,
        batch=20,
        window=40,
        retry_s=60.0,
    )
    try:
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            await fleet.preload()
            assert fleet.sent == dict.fromkeys(buses, 120)
            await asyncio.sleep(0.3)
            async with engine.connect() as conn:
                assert (await conn.execute(count)).scalar() == 0
            assert not fleet.done()
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        await fleet.run(timeout_s=60)
        assert fleet.done()
        assert fleet.acked == dict.fromkeys(buses, 120)
        assert (fleet.retries, fleet.resend_requests) == (0, 0)
        async with engine.connect() as conn:
            assert (await conn.execute(count)).scalar() == 360
    finally:
        stop_processes([worker])
        await engine.dispose()
    assert worker.returncode == 0, log.read_text()[-3000:]
