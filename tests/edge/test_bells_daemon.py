"""The bell relay in the real daemon on a real Mosquitto: waits, display, statuses, missed.

The daemon runs its real pipeline (route 17 of the sample GTFS); vehicle signals, waits,
statuses and driver acks travel over the broker exactly as in a bus.
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

import pytest

from busbell import (
    DeviceKey,
    UplinkError,
    canonical_bytes,
    day_of,
    load_gtfs,
    validate_display,
    validate_event,
    verify_event,
)
from busbell._mqtt import MqttSettings
from edge._bells import BellParams
from edge._bells_table import ReqState
from edge._daemon import EdgeDaemon
from edge._source import AdvertisementSink
from edge.config import EdgeConfig, StatusSettings
from tests.factories.broker import BrokerClient

pytestmark = pytest.mark.mosquitto

GTFS = Path(__file__).resolve().parents[2] / "firmware_sim" / "data" / "gtfs"
FEED = load_gtfs(GTFS)
PAT = FEED.patterns["17", 0]
KEY = DeviceKey.from_seed(bytes(range(32)))
BUS = "bus-0042"


class IdleSource:
    name = "idle"

    async def run(self, sink: AdvertisementSink) -> None:
        await asyncio.Event().wait()


async def until(pred: Any, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


class World(BrokerClient):
    """The broker side: vehicle signals, waits, statuses, acks, and what the bus says."""

    def __init__(self, broker: Any, prefix: str) -> None:
        super().__init__(MqttSettings(host=broker.host, port=broker.port, prefix=prefix), "world")
        self.batches: list[dict[str, Any]] = []
        self.t = time.time()

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, UplinkError):
            await self._reader
        await self.s.__aexit__(None, None, None)

    async def reconnect(self) -> None:
        """After a broker restart: connect again (retained messages come back)."""
        await self.__aexit__()
        async with asyncio.timeout(20):
            while True:
                try:
                    await self.__aenter__()
                    return
                except UplinkError:
                    await asyncio.sleep(0.1)

    async def _read(self) -> None:
        async for m in self.s.messages():
            self.latest[m.topic] = m.payload
            if m.topic == self.topics.fares(BUS) and m.payload:
                body = json.loads(m.payload)
                self.batches.append(body)
                upto = body["events"][-1]["seq"]
                await self.s.publish(
                    self.topics.fares_ack(BUS), json.dumps({"upto_seq": upto}), qos=1
                )

    async def vehicle(self, signal: str, body: dict[str, Any]) -> None:
        await self.s.publish(self.topics.vehicle(BUS, signal), canonical_bytes(body), qos=1)

    async def trip(self, route: str = "17", direction: int = 0, trip_id: str | None = None) -> None:
        body = {"t": self.t, "route_id": route, "direction_id": direction, "trip_id": trip_id}
        await self.s.publish(
            self.topics.vehicle(BUS, "trip"), canonical_bytes(body), qos=1, retain=True
        )

    async def fix(self, i: int, f: float = 0.0, speed: float = 10.0, dt: float = 4.0) -> None:
        a = FEED.stops[PAT.stop_ids[i]]
        b = FEED.stops[PAT.stop_ids[min(i + 1, len(PAT.stop_ids) - 1)]]
        self.t += dt
        lat, lon = a.lat + f * (b.lat - a.lat), a.lon + f * (b.lon - a.lon)
        await self.vehicle("gnss", {"t": self.t, "lat": lat, "lon": lon, "speed_mps": speed})

    async def drive(self, to_i: int, to_f: float = 0.0, speed: float = 10.0) -> None:
        """GNSS fixes every ~40 m from the start of the pattern's stop ``to_i - 1``."""
        i, f = max(0, to_i - 1), 0.0
        while (i, f) < (to_i, to_f):
            f += 40.0 / (PAT.dist_m[i + 1] - PAT.dist_m[i])
            if f >= 1.0:
                i, f = i + 1, 0.0
            i, f = min((i, f), (to_i, to_f))
            await self.fix(i, f, speed)

    async def doors(self, is_open: bool) -> None:
        self.t += 1.0
        await self.vehicle("doors", {"t": self.t, "open": is_open})

    async def wait(
        self, rid: str, stop: str, *, route: str = "17", expires_in: float = 900.0
    ) -> None:
        body = {
            "request_id": rid,
            "route_id": route,
            "stop_id": stop,
            "t": self.t,
            "expires_t": self.t + expires_in,
            "source": "app",
            "assist": False,
        }
        await self.raw_wait(rid, stop, canonical_bytes(body), route=route)
        await self.s.publish(
            self.topics.request_status(rid),
            canonical_bytes({"request_id": rid, "state": "pending", "t": self.t}),
            qos=1,
            retain=True,
        )

    async def raw_wait(self, rid: str, stop: str, payload: bytes, *, route: str = "17") -> None:
        await self.s.publish(self.topics.wait(route, stop, rid), payload, qos=1, retain=True)

    async def ack(self, *rids: str) -> None:
        body = {"t": self.t, "request_ids": list(rids)}
        await self.s.publish(self.topics.driver_ack(BUS), canonical_bytes(body), qos=1)

    def display(self) -> dict[str, Any] | None:
        raw = self.latest.get(self.topics.display(BUS))
        return validate_display(json.loads(raw)) if raw else None

    def shown(self) -> set[str]:
        d = self.display()
        return set() if d is None else {r for s in d["stops"] for r in s["request_ids"]}

    def state(self, rid: str) -> tuple[str, str | None] | None:
        raw = self.latest.get(self.topics.request_status(rid))
        if not raw:
            return None
        body = json.loads(raw)
        return body["state"], body.get("bus_id")

    def records(self, kind: str) -> list[dict[str, Any]]:
        return [e for b in self.batches for e in b["events"] if e["type"] == kind]

    async def clear_retained(self) -> None:
        for topic, payload in list(self.latest.items()):
            if payload:
                await self.s.publish(topic, b"", qos=1, retain=True)


def make_daemon(
    tmp_path: Path, broker: Any, prefix: str, client_id: str, **bells: Any
) -> EdgeDaemon:
    cfg = EdgeConfig(bus_id=BUS, store=tmp_path / "fares.db", source="trace", gtfs=GTFS)
    mqtt = replace(
        cfg.mqtt,
        host=broker.host,
        port=broker.port,
        prefix=prefix,
        client_id=client_id,
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
    )
    params = replace(BellParams(status_grace_s=0.3, min_notice_s=0.0), **bells)
    cfg = replace(cfg, mqtt=mqtt, bells=params, status=StatusSettings(interval_s=0.5))
    today = day_of(time.time())
    fleet = {today + k: bytes(32) for k in (-1, 0, 1, 2)}
    return EdgeDaemon(cfg, IdleSource(), device_key=KEY, fleet_keys=fleet)


@contextlib.asynccontextmanager
async def running(daemon: EdgeDaemon) -> Any:
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: daemon.link.is_connected)
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)


async def start_trip(world: World) -> None:
    await world.trip()
    await world.fix(0, 0.0, speed=0.0)
    await until(lambda: (d := world.display()) is not None and d["route_id"] == "17")


async def test_served_acknowledged_and_bad_input(
    tmp_path: Path, shared_broker: Any, topic_prefix: str
) -> None:
    daemon = make_daemon(tmp_path, shared_broker, topic_prefix, f"e-{uuid.uuid4().hex[:8]}")
    async with World(shared_broker, topic_prefix) as world, running(daemon):
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert f"busbell[{BUS}].bells" in names
        await start_trip(world)
        d = world.display()
        assert d is not None
        assert d["next_stop"]["stop_id"] == "BD001"
        await world.wait("w-1", "BD003")
        await until(lambda: world.shown() == {"w-1"})
        await until(lambda: world.state("w-1") == ("seen", BUS))
        # bad input: counted, never shown, the daemon goes on
        await world.raw_wait("w-2", "BD003", b"{not json")
        await world.raw_wait("w-3", "BD003", b"x" * 5000)
        await world.raw_wait("w-4", "BD003", canonical_bytes({"request_id": "w-4"}))
        await world.s.publish(world.topics.driver_ack(BUS), b"[1]", qos=1)
        await world.ack("w-404")
        assert daemon.bells is not None
        core = daemon.bells.core
        await until(lambda: sum(core.rejected.values()) == 5)
        assert core.rejected == {
            "ack:invalid": 1,
            "ack:unknown_request": 1,
            "wait:invalid": 1,
            "wait:malformed_json": 1,
            "wait:oversized": 1,
        }
        await world.ack("w-1")
        await until(lambda: world.state("w-1") == ("acknowledged", BUS))
        await world.drive(2)
        await world.fix(2, 0.0, speed=0.0, dt=2.0)
        await world.doors(True)
        await until(lambda: world.state("w-1") == ("served", BUS))
        await until(lambda: world.shown() == set())
        d = world.display()
        assert d is not None
        assert d["next_stop"]["stop_id"] == "BD004"
        status_topic = world.topics.status(BUS)

        def bells_status() -> dict[str, Any]:
            return dict(json.loads(world.latest.get(status_topic) or b"{}").get("bells") or {})

        # a status published after all of the above (every 0.5 s)
        await until(lambda: bells_status().get("statuses_published") == 3)
        bells = bells_status()
        assert (bells["route_id"], bells["live_waits"], bells["shown"]) == ("17", 0, 0)
        assert bells["rejected"]["wait:oversized"] == 1
        await world.clear_retained()
    assert world.records("missed") == []


async def test_missed_is_signed_recorded_and_uploaded(
    tmp_path: Path, shared_broker: Any, topic_prefix: str
) -> None:
    daemon = make_daemon(tmp_path, shared_broker, topic_prefix, f"e-{uuid.uuid4().hex[:8]}")
    async with World(shared_broker, topic_prefix) as world, running(daemon):
        await start_trip(world)
        await world.wait("w-1", "BD002")
        await until(lambda: world.state("w-1") == ("seen", BUS))
        await world.drive(1, 0.4)
        await until(lambda: world.state("w-1") == ("missed", BUS))
        await until(lambda: len(world.records("missed")) == 1)
        assert daemon.store is not None
        await until(lambda: daemon.store is not None and daemon.store.acked_upto == 1)
        await world.clear_retained()
    (rec,) = world.records("missed")
    validate_event(rec)
    verify_event(rec, KEY.public)
    assert (rec["bus_id"], rec["seq"], rec["request_id"]) == (BUS, 1, "w-1")
    assert (rec["route_id"], rec["stop_id"], rec["doors_opened"]) == ("17", "BD002", False)
    assert rec["wait"]["request_id"] == "w-1"
    assert rec["passed"]["distance_m"] < 40.0
    # the backend's ingest verifies it (device key, chain) and stores it as a missed stop
    import sqlalchemy as sa

    from backend._db import create_engine, fare_events, migrate, missed_stops
    from backend._ingest import IngestCore, Ingestor
    from backend._keys import register_device

    eng = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    try:
        await migrate(eng)
        async with eng.begin() as conn:
            await register_device(conn, BUS, KEY.public, now=1.0)
        ing = Ingestor(eng, IngestCore(), worker_id="w")
        await ing.refresh_devices()
        res = await ing.ingest([(BUS, canonical_bytes({"bus_id": BUS, "events": [rec]}))])
        assert (res.acks, res.quarantined) == ({BUS: 1}, 0)
        async with eng.connect() as conn:
            row = (await conn.execute(sa.select(missed_stops))).one()
            rides = (await conn.execute(sa.select(sa.func.count()).select_from(fare_events))).one()
        assert (row.bus_id, row.seq, row.request_id, row.stop_id) == (BUS, 1, "w-1", "BD002")
        assert rides[0] == 0
    finally:
        await eng.dispose()


async def test_expired_and_cancelled_waits_disappear(
    tmp_path: Path, shared_broker: Any, topic_prefix: str
) -> None:
    daemon = make_daemon(tmp_path, shared_broker, topic_prefix, f"e-{uuid.uuid4().hex[:8]}")
    async with World(shared_broker, topic_prefix) as world, running(daemon):
        await start_trip(world)
        await world.wait("w-1", "BD002", expires_in=2.0)
        await world.wait("w-2", "BD003")
        await until(lambda: world.shown() == {"w-1", "w-2"})
        await until(lambda: world.state("w-2") == ("seen", BUS))
        await until(lambda: world.state("w-1") == ("expired", BUS))
        await until(lambda: world.shown() == {"w-2"})
        await world.raw_wait("w-2", "BD003", b"")  # the rider cancels: retained cleared
        await until(lambda: world.state("w-2") == ("cancelled", BUS))
        await until(lambda: world.shown() == set())
        await world.clear_retained()


async def test_trip_change_follows_the_new_route(
    tmp_path: Path, shared_broker: Any, topic_prefix: str
) -> None:
    daemon = make_daemon(tmp_path, shared_broker, topic_prefix, f"e-{uuid.uuid4().hex[:8]}")
    async with World(shared_broker, topic_prefix) as world, running(daemon):
        await start_trip(world)
        await world.wait("w-17", "BD002")
        await world.wait("w-55", "BD004", route="55")
        await until(lambda: world.shown() == {"w-17"})
        await world.trip("55", 0)
        s = FEED.stops["BD003"]
        world.t += 4
        await world.vehicle("gnss", {"t": world.t, "lat": s.lat, "lon": s.lon, "speed_mps": 0.0})
        await until(lambda: world.shown() == {"w-55"})
        d = world.display()
        assert d is not None
        assert (d["route_id"], d["next_stop"]["stop_id"]) == ("55", "BD003")
        assert daemon.bells is not None
        assert daemon.bells.core.tracked() == {"w-55"}
        # waits published later on the old route are not followed any more
        await world.wait("w-17b", "BD003")
        await world.wait("w-55b", "BD005", route="55")
        await until(lambda: world.shown() == {"w-55", "w-55b"})
        assert "w-17b" not in daemon.bells.core.tracked()
        await world.clear_retained()


async def test_broker_restart_and_daemon_restart_rebuild_the_state(
    tmp_path: Path, private_broker: Any
) -> None:
    prefix = "busbell/v1"
    cid = f"e-{uuid.uuid4().hex[:8]}"
    daemon = make_daemon(tmp_path, private_broker, prefix, cid)
    async with World(private_broker, prefix) as world:
        async with running(daemon):
            await start_trip(world)
            await world.wait("w-1", "BD003")
            await until(lambda: world.state("w-1") == ("seen", BUS))
            await world.ack("w-1")
            await until(lambda: world.state("w-1") == ("acknowledged", BUS))
            # the broker restarts (persistence on): the relay's subscriptions come back
            connects = daemon.link.connects
            private_broker.stop()
            private_broker.start()
            await until(lambda: daemon.link.connects > connects, 30)
            await world.reconnect()
            await world.wait("w-2", "BD004")
            await until(lambda: world.shown() == {"w-1", "w-2"}, 20)
            await until(lambda: world.state("w-2") == ("seen", BUS))
            assert world.state("w-1") == ("acknowledged", BUS)
        # the daemon restarts: retained waits and its own statuses rebuild the state
        daemon2 = make_daemon(tmp_path, private_broker, prefix, cid)
        async with running(daemon2):
            assert daemon2.bells is not None
            core = daemon2.bells.core
            await until(lambda: core.tracked() == {"w-1", "w-2"})
            await world.fix(0, 0.0, speed=0.0)
            await until(lambda: world.shown() == {"w-1", "w-2"})
            await until(lambda: core.state_of("w-1") is ReqState.ACKNOWLEDGED)
            await until(lambda: core.state_of("w-2") is ReqState.SEEN)
            assert daemon2.bells.stats.statuses_published == 0
            assert world.state("w-1") == ("acknowledged", BUS)
