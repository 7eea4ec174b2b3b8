from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from busbell import AdvRecord, Topics, TraceRecord, day_of
from edge._daemon import EdgeDaemon
from edge.config import MetricsSettings, StatusSettings
from tests.edge.compiled import EXPECTED_BUILD
from tests.factories.edge_daemon import (
    KEY,
    NOW,
    Backend,
    FakePipeline,
    ListSource,
    adv,
    config,
    until,
)
from tests.factories.mqtt import FakeBroker
from tests.factories.tasks import cancel_and_wait


@pytest.fixture(autouse=True)
def _fresh_structlog() -> None:
    """Other tests may configure structlog (level filters); capture_logs needs defaults."""
    structlog.reset_defaults()


async def test_daemon_end_to_end(tmp_path: Path) -> None:
    # the daemon's handling is the point, not the broker: the in-memory one
    broker = FakeBroker()
    topic_prefix = "busbell/v1"
    cfg = config(
        tmp_path,
        broker,
        topic_prefix,
        advert_queue_max=5,
        status=StatusSettings(interval_s=0.2, fleet_keys_warn_days=3),
        metrics=MetricsSettings(port=0),
    )
    # 8 adverts into a queue of 5 before the pipeline runs: the 3 oldest are dropped
    recs = [adv(NOW, -70)] * 3 + [adv(NOW, -30), adv(NOW, -99), adv(NOW, -30)] + [adv(NOW, -60)] * 2
    pipe = FakePipeline()
    fleet = {day_of(NOW): bytes(32), day_of(NOW) + 1: bytes(32)}
    daemon = EdgeDaemon(
        cfg,
        ListSource(recs),
        lambda: NOW,
        pipeline=pipe,
        device_key=KEY,
        fleet_keys=fleet,
        session_factory=broker.session,
    )
    backend = Backend(broker, topic_prefix, "bus-0042")
    topics = Topics(topic_prefix)
    async with backend.s:
        reader = asyncio.create_task(backend.run())
        await asyncio.wait_for(backend.ready.wait(), 10)
        with capture_logs() as logs:
            task = asyncio.create_task(daemon.run())
            await until(lambda: daemon.link.is_connected)
            # vehicle topics: one good message per signal, malformed ones counted
            for signal, body in (
                ("gnss", {"t": NOW, "lat": 37.5, "lon": 127.0, "speed_mps": 3.0}),
                ("doors", {"t": NOW, "open": True}),
                ("trip", {"t": NOW, "route_id": "R1", "direction_id": 0}),
            ):
                await backend.s.publish(topics.vehicle("bus-0042", signal), json.dumps(body))
            deep = b"[" * 1500 + b"]" * 1500  # json.loads alone raises RecursionError
            for bad in (
                b"nope",
                b"[1]",
                b'{"t":1,"lat":500,"lon":0,"speed_mps":0}',
                deep,
                b'{"t":NaN,"lat":1,"lon":0,"speed_mps":0}',
                b"[" * 100_000 + b"]" * 100_000,
            ):
                await backend.s.publish(topics.vehicle("bus-0042", "gnss"), bad)
            await backend.s.publish(topics.fares_ack("bus-0042"), deep)
            await backend.s.publish(topics.denylist(), deep)
            await until(lambda: daemon.stats.vehicle_malformed == 6)
            assert daemon.vehicle_rejects.counts == {
                "not_json": 1,
                "not_object": 1,
                "invalid": 1,
                "too_deep": 1,
                "non_finite": 1,
                "too_large": 1,
            }
            await until(lambda: daemon.stats.denylist_rejected == 1)
            await until(lambda: len(backend.seqs) == 2)
            await until(lambda: daemon.store is not None and daemon.store.acked_upto == 2)
            # a status published after all of the above (status goes out every 0.2 s)
            await until(
                lambda: any(
                    s.get("backlog") == 0 and s["vehicle"]["malformed"] == 6
                    for s in backend.status
                    if s["state"] == "online"
                )
            )
            port = daemon.metrics_port
            assert port is not None
            metrics = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            )
            daemon.request_stop()
            await asyncio.wait_for(task, 20)
        await until(lambda: backend.status and backend.status[-1]["state"] == "offline")
        await cancel_and_wait(reader)
    assert daemon.stats.adverts_dropped == 3
    kinds = [type(r).__name__ for r in pipe.records]
    assert kinds.count("AdvRecord") == 5
    assert {"GnssRecord", "DoorRecord", "TripRecord"} <= set(kinds)
    assert pipe.finished
    online = [s for s in backend.status if s["state"] == "online"]
    s = online[-1]  # published after the wait above: it reflects every input
    assert s["bus_id"] == "bus-0042"
    assert s["rejected"] == {"stale": 1}
    assert s["scanner"]["adverts_dropped"] == 3
    assert s["uplink"]["connected"] is True
    assert s["fleet_keys"] == {"days_remaining": 1, "warning": True}
    assert s["vehicle"]["malformed"] == 6
    assert s["vehicle"]["rejected"]["too_deep"] == 1
    assert s["uplink"]["malformed_acks"] == 1
    assert backend.occupancy
    assert backend.occupancy[-1]["on_board"] >= 2
    assert 'busbell_edge_adverts_rejected_total{reason="stale"} 1.0' in metrics
    assert "busbell_edge_fare_backlog" in metrics
    assert "busbell_edge_upload_lag_seconds" in metrics
    # the build it runs (pure here; compiled in python -m tests.edge.compiled): logged at
    # start-up, exported, in the status
    assert s["build"] == EXPECTED_BUILD
    (started,) = [log for log in logs if log["event"] == "edge_started"]
    assert started["build"] == EXPECTED_BUILD
    assert started["version"] == s["version"]
    info = [line for line in metrics.splitlines() if line.startswith("busbell_edge_build_info{")]
    assert info == [
        f'busbell_edge_build_info{{build="{EXPECTED_BUILD}",version="{s["version"]}"}} 1.0'
    ]
    names = {log["event"] for log in logs}
    assert {
        "edge_started",
        "uplink_connected",
        "fare_event_recorded",
        "fare_batch_sent",
        "fare_batch_acked",
        "vehicle_message_malformed",
        "fleet_keys_running_out",
        "edge_stopped",
    } <= names
    # the final segment (closed by finish at shutdown) was recorded too
    assert daemon.store is not None
    assert daemon.store.last_seq == 3


async def test_daemon_records_offline_and_task_names(tmp_path: Path) -> None:
    broker = FakeBroker()
    cfg = config(tmp_path, broker, "busbell/v1")
    broker.stop()
    pipe = FakePipeline()
    daemon = EdgeDaemon(
        cfg,
        ListSource([adv(NOW, -30)] * 4),
        lambda: NOW,
        pipeline=pipe,
        device_key=KEY,
        fleet_keys={},
        session_factory=broker.session,
    )
    task = asyncio.create_task(daemon.run())
    await until(lambda: daemon.store is not None and daemon.store.last_seq == 4)
    names = {t.get_name() for t in asyncio.all_tasks()}
    for suffix in ("scanner", "pipeline", "uplink", "vehicle", "status", "fares"):
        assert f"busbell[bus-0042].{suffix}" in names
    assert daemon.status()["backlog"] == 4
    assert daemon.status()["fleet_keys"]["days_remaining"] == -1
    # the broker comes back: the backlog drains
    broker.start()
    await until(lambda: daemon.link.is_connected, 20)
    daemon.request_stop()
    await asyncio.wait_for(task, 20)
    assert daemon.store is not None
    assert daemon.store.last_seq == 5


def _write_run_inputs(tmp_path: Path, broker: Any) -> Path:
    from busbell import FLEET_HEADER, TraceWriter, write_rows
    from tests.factories.edge_world import (
        BusPlan,
        SynthToken,
        fleet_key_of,
        synth_trace,
        write_gtfs,
    )

    gtfs = write_gtfs(tmp_path / "gtfs")
    recs, _ = synth_trace(BusPlan(), [SynthToken(bytes([1]) * 16, board=0, alight=2)], seed=1)
    trace = tmp_path / "t.jsonl"
    with trace.open("w") as fp:
        w = TraceWriter(fp, "bus-0099")
        for r in recs:
            w.write(r)
    today = day_of(time.time())
    write_rows(
        tmp_path / "FLEET.csv",
        FLEET_HEADER,
        [(str(d), fleet_key_of(d).hex()) for d in range(today - 1, today + 9)],
    )
    KEY.save(tmp_path / "bus.pem")
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'bus_id = "bus-0099"\nsource = "trace"\ndevice_key = "{tmp_path}/bus.pem"\n'
        f'fleet_keys = "{tmp_path}/FLEET.csv"\ngtfs = "{gtfs}"\nstore = "{tmp_path}/f.db"\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nkeepalive_s = 5\n'
        f'[trace]\npath = "{trace}"\nspeed = 50.0\n[status]\ninterval_s = 0.5\n'
    )
    return cfg


@pytest.mark.mosquitto
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_edge_run_process_status_and_lwt(
    tmp_path: Path, private_broker: Any, how: str
) -> None:
    import signal
    import sys

    cfg = _write_run_inputs(tmp_path, private_broker)
    backend = Backend(private_broker, "busbell/v1", "bus-0099")
    async with backend.s:
        reader = asyncio.create_task(backend.run())
        await asyncio.wait_for(backend.ready.wait(), 10)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "busbell.cli",
            "edge",
            "run",
            "--config",
            str(cfg),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await until(lambda: any(s.get("state") == "online" for s in backend.status), 30)
            proc.send_signal(getattr(signal, how))
            rc = await asyncio.wait_for(proc.wait(), 30)
            await until(lambda: backend.status[-1].get("state") == "offline", 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await cancel_and_wait(reader)
    if how == "SIGTERM":
        assert rc == 0
        assert backend.status[-1]["bus_id"] == "bus-0099"  # the daemon's own offline status
    else:
        assert rc == -signal.SIGKILL
        assert backend.status[-1] == {"state": "offline"}  # the broker's LWT


def test_vehicle_records_and_adverts_are_merged_by_time() -> None:
    from collections import deque

    from busbell import DoorRecord, GnssRecord
    from edge._daemon import pop_earliest

    def adv(t: float) -> AdvRecord:
        return AdvRecord(t, "AA:BB:CC:DD:EE:FF", -60, {})

    vehicle: deque[TraceRecord] = deque([DoorRecord(5.0, True), GnssRecord(7.0, 37.5, 127.0, 0.0)])
    adverts: deque[AdvRecord] = deque([adv(4.0), adv(5.0), adv(8.0), adv(9.0)])
    order = []
    while vehicle or adverts:
        rec = pop_earliest(vehicle, adverts)
        order.append((type(rec).__name__, rec.t))
    assert order == [
        ("AdvRecord", 4.0),
        ("DoorRecord", 5.0),  # a tie: the door first, as a trace replays it
        ("AdvRecord", 5.0),
        ("GnssRecord", 7.0),
        ("AdvRecord", 8.0),
        ("AdvRecord", 9.0),
    ]
    with pytest.raises(IndexError):
        pop_earliest(vehicle, adverts)
