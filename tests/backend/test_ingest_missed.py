"""``missed`` chain records: verified and stored in ``missed_stops``, never rides.

Online (ingest on SQLite and PostgreSQL, then settlement) and offline (``settle``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from backend._db import create_engine, fare_events, migrate, missed_stops, quarantine
from backend._fare_engine import FareEngine
from backend._fare_rules import load_rules
from backend._ingest import IngestCore, Ingestor
from backend._journeys import JourneyBuilder, JourneyPolicy
from backend._keys import register_device
from backend._resolve import Resolver, RiderKeyring
from backend._settle import Settler
from backend._settlement import SettlementWorker, import_riders
from busbell import load_gtfs, read_devices, sign_event
from tests.factories.backend_world import T0, World, missed_fields
from tests.factories.fare_events import batch_payload, device_key_for, make_events


async def _ledger(url: str, buses: dict[str, Any]) -> AsyncEngine:
    eng = create_engine(url)
    await migrate(eng)
    async with eng.begin() as conn:
        for b, public in buses.items():
            await register_device(conn, b, public, now=1.0)
    return eng


async def _seqs(eng: AsyncEngine, table: sa.Table, bus: str) -> list[int]:
    async with eng.connect() as conn:
        q = sa.select(table.c.seq).where(table.c.bus_id == bus).order_by(table.c.seq)
        return [int(s) for (s,) in await conn.execute(q)]


async def test_missed_records_are_chain_links_stored_apart(db_url: str) -> None:
    eng = await _ledger(db_url, {"B1": device_key_for("B1").public})
    try:
        chain = make_events("B1", device_key_for("B1"), 24, missed_every=4)
        ing = Ingestor(eng, IngestCore(), worker_id="w")
        await ing.refresh_devices()
        shuffled = chain[:]
        random.Random(3).shuffle(shuffled)
        res = await ing.ingest(
            [("B1", batch_payload("B1", shuffled[k : k + 5])) for k in range(0, 24, 5)]
        )
        assert res.acks == {"B1": 24}
        assert await _seqs(eng, missed_stops, "B1") == [4, 8, 12, 16, 20, 24]
        assert await _seqs(eng, fare_events, "B1") == [s for s in range(1, 25) if s % 4]
        # re-sent: duplicates, recognised in either table
        res = await ing.ingest([("B1", batch_payload("B1", chain))])
        assert (res.duplicates, res.quarantined, res.acks) == (24, 0, {"B1": 24})
        # a different record under a missed seq is a chain_conflict
        other = sign_event(dict(chain[7], stop_id="S29"), device_key_for("B1"))
        other = sign_event(
            {**other, "wait": {**other["wait"], "stop_id": "S29"}}, device_key_for("B1")
        )
        res = await ing.ingest([("B1", batch_payload("B1", [other]))])
        assert res.quarantined == 1
        async with eng.connect() as conn:
            reasons = [r for (r,) in await conn.execute(sa.select(quarantine.c.reason))]
            row = (await conn.execute(sa.select(missed_stops).where(missed_stops.c.seq == 8))).one()
        assert reasons == ["chain_conflict"]
        assert (row.request_id, row.stop_id, row.wait_t) == (
            chain[7]["request_id"],
            chain[7]["stop_id"],
            chain[7]["wait"]["t"],
        )
        assert row.passed_t == chain[7]["passed"]["t"]
    finally:
        await eng.dispose()


def _world_with_missed(tmp_path: Path) -> tuple[World, list[dict[str, Any]]]:
    world = World(tmp_path, riders=2, buses=1)
    evs: list[dict[str, Any]] = []
    for k in range(3):
        evs += world.ride("r0001", "bus-01", board=1, alight=4, t=T0 + k * 3000, trip_id=f"T{k}")
        evs.append(world.buses["bus-01"].emit(missed_fields(f"q{k}", "S07", T0 + k * 3000 + 900)))
    return world, evs


def test_offline_settle_counts_missed_records_and_never_charges_them(tmp_path: Path) -> None:
    world, evs = _world_with_missed(tmp_path)
    feed = load_gtfs(world.gtfs)
    ring = RiderKeyring()
    for rider_id, token_key in sorted(world.token_keys.items()):
        ring.add(rider_id, token_key)
    builder = JourneyBuilder(FareEngine(load_rules(timezone=feed.timezone)), feed, JourneyPolicy())
    s = Settler(read_devices(world.devices_csv), Resolver(ring), builder)
    for e in evs:
        s.feed_event(e)
    res = s.finish()
    assert res.stats.missed == 3
    assert res.stats.accepted == len(evs) - 3
    assert not res.stats.rejected
    assert not res.stats.warnings
    assert sum(len(j.legs) for j in res.journeys) == 3  # the 3 rides, no missed stop


async def test_online_settlement_does_not_wait_at_missed_seqs(db_url: str, tmp_path: Path) -> None:
    world, evs = _world_with_missed(tmp_path)
    eng = await _ledger(db_url, {b: c.key.public for b, c in world.buses.items()})
    try:
        assert await import_riders(eng, world.riders_csv, now=1.0) == 2
        ing = Ingestor(eng, IngestCore(), worker_id="w")
        await ing.refresh_devices()
        res = await ing.ingest([("bus-01", batch_payload("bus-01", evs))])
        assert res.stored == len(evs)
        feed = load_gtfs(world.gtfs)
        worker = SettlementWorker(eng, feed, load_rules(timezone=feed.timezone), clock=lambda: T0)
        worker.gap_grace_s = 1e9
        report = await worker.settle_once(now=T0 + 10_000)
        assert (report.gaps_waiting, report.gaps_skipped) == (0, 0)
        assert report.segments == len(evs) - 3
    finally:
        await eng.dispose()
