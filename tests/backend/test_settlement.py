"""Online settlement on SQLite and PostgreSQL: ingest -> settle_once -> rider API."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from backend import _settlement as settlement_module
from backend._api import ApiState, create_app
from backend._auth import new_operator_token, operator_entry
from backend._db import (
    adjustments,
    charges,
    create_engine,
    current_revision,
    fare_events,
    head_revision,
    journeys,
    legs,
    migrate,
    rider_segments,
    settlement_dirty,
    settlement_watermarks,
    unresolved_segments,
)
from backend._fare_engine import FareEngine, FareLeg
from backend._fare_rules import FareRules, load_rules
from backend._ingest import IngestCore, Ingestor
from backend._journeys import JourneyBuilder, JourneyPolicy
from backend._keys import register_device
from backend._resolve import Resolver, RiderKeyring
from backend._settle import Settler
from backend._settlement import (
    EVIDENCE_INVALID,
    OVERLAPS_DROPPED,
    SUSPECTED_REPLAYS,
    TENTATIVE_LINKS_DELETED,
    SettlementWorker,
    _segment_of_row,
    import_riders,
)
from backend._tentative import settle_tentative
from busbell import StoreError, derive_bk, derive_rider_keys, load_gtfs, read_devices, tq_of
from tests.factories.backend_world import T0, World
from tests.factories.fare_events import batch_payload
from tests.factories.tasks import LIVE_TIMEOUT_S

CARRIED = JourneyPolicy(tentative_carried_m=300.0)
"""The carried rule at its measured setting, the default (docs/backend.md, Carried)."""

NOW = T0 + 3 * 86400.0  # wall clock of ingest and settlement
DAY = "2025-11-07"  # service day of T0 (16:20 Asia/Seoul)


@dataclass
class Env:
    world: World
    engine: AsyncEngine
    ingestor: Ingestor
    worker: SettlementWorker
    client: httpx.AsyncClient
    rules: FareRules

    async def ingest(self, events: Sequence[dict[str, Any]]) -> None:
        by_bus: dict[str, list[dict[str, Any]]] = {}
        for e in events:
            by_bus.setdefault(e["bus_id"], []).append(e)
        res = await self.ingestor.ingest(
            [
                (b, batch_payload(b, sorted(evs, key=lambda e: e["seq"])))
                for b, evs in by_bus.items()
            ]
        )
        assert res.stored == len(events), res

    async def enrol(self, rider_id: str, **body: str) -> None:
        r = await self.client.post("/riders", json={"rider_id": rider_id, **body})
        assert r.status_code == 201, r.text
        token_key = bytes.fromhex(r.json()["token_key"])
        self.world.token_keys[rider_id] = token_key
        self.world.keys[rider_id] = derive_rider_keys(token_key)

    async def enrol_key(self, rider_id: str, token_key: bytes, category: str) -> None:
        """A rider with a given token key, straight into ``riders`` (no API)."""
        from backend._db import riders

        async with self.engine.begin() as conn:
            await conn.execute(
                sa.insert(riders).values(
                    rider_id=rider_id,
                    token_key=token_key.hex(),
                    status="active",
                    enrolled_at=NOW,
                    kind="fob",
                    category=category,
                )
            )

    async def rows(self, table: sa.Table, *order: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            q = sa.select(table).order_by(*(table.c[o] for o in order))
            return [dict(r._mapping) for r in (await conn.execute(q)).all()]

    async def derived(self) -> dict[str, list[dict[str, Any]]]:
        """Every derived row, without the computation timestamps."""
        out = {
            "journeys": await self.rows(journeys, "journey_id"),
            "legs": await self.rows(legs, "journey_id", "leg_no"),
            "charges": await self.rows(charges, "charge_id"),
            "adjustments": await self.rows(adjustments, "adjustment_id"),
            "segments": await self.rows(rider_segments, "event_id"),
            "unresolved": await self.rows(unresolved_segments, "event_id"),
        }
        for rows in out.values():
            for r in rows:
                for k in ("computed_at", "settled_at", "recorded_at"):
                    r.pop(k, None)
        return out


@pytest.fixture
async def env(db_url: str, tmp_path: Path, operator: Any) -> AsyncIterator[Env]:
    world = World(tmp_path, riders=3, buses=3)
    engine = create_engine(db_url)
    await migrate(engine)
    async with engine.begin() as conn:
        for bus_id, chain in world.buses.items():
            await register_device(conn, bus_id, chain.key.public, now=1.0)
    assert await import_riders(engine, world.riders_csv, now=1.0) == 3
    ingestor = Ingestor(engine, IngestCore(), worker_id="w1", wall=lambda: NOW)
    await ingestor.refresh_devices()
    feed = load_gtfs(world.gtfs)
    rules = load_rules(timezone=feed.timezone)
    worker = SettlementWorker(engine, feed, rules, clock=lambda: NOW, policy=CARRIED)
    app = create_app(ApiState(engine=engine, feed=feed, clock=lambda: 2.0, auth=operator.auth))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api", headers=operator.headers
    ) as client:
        yield Env(world, engine, ingestor, worker, client, rules)
    await engine.dispose()


def _price(rules: FareRules, legs_: list[tuple[str, str, float, float]], category: str) -> int:
    fare_legs = [FareLeg(r, n, t, t + 60, d) for r, n, t, d in legs_]
    return FareEngine(rules).price(fare_legs, category).fare_krw


def _offline(world: World, events: list[dict[str, Any]], categories: dict[str, str]) -> Any:
    feed = load_gtfs(world.gtfs)
    ring = RiderKeyring()
    for rider_id, token_key in sorted(world.token_keys.items()):
        ring.add(rider_id, token_key)
    builder = JourneyBuilder(FareEngine(load_rules(timezone=feed.timezone)), feed, CARRIED)
    s = Settler(read_devices(world.devices_csv), Resolver(ring), builder, categories=categories)
    for e in events:
        s.feed_event(e)
    return s.finish()


async def _recomputed_as_offline(env: Env, events: list[dict[str, Any]], rider: str) -> Any:
    """Recomputing ``rider``'s day changes nothing, and ``busbell backend settle`` of the
    same events prices the same journeys as the online worker did. Returns its result."""
    before = await env.derived()
    await env.worker.recompute(rider, DAY, now=NOW + 50)
    assert await env.derived() == before
    offline = _offline(env.world, events, {})
    rows = await env.rows(journeys, "journey_id")
    assert sorted((o.journey_id, o.fare_krw, o.charged) for o in offline.journeys) == [
        (r["journey_id"], r["fare_krw"], r["charged"]) for r in rows
    ]
    return offline


def _forged_payload(world: World, rid: bytes, t: float) -> str:
    """A payload a bus holding the fleet key can mint for a sniffed rid: rtag is wrong."""
    head = bytes([1 << 5]) + tq_of(t).to_bytes(2, "big") + rid
    body = head + hmac.digest(derive_bk(world.fleet_key, rid), head, "sha256")[:4]
    return (body + hashlib.sha256(body).digest()[:4] + b"\x00").hex()


async def test_transfer_priced_as_one_journey_and_served_by_the_api(env: Env) -> None:
    await env.enrol("alice", kind="app", category="youth")
    w = env.world
    # alice (youth): R1 S01->S05, then R2 S05->S20 12 min later: one journey
    w.ride("alice", "bus-01", board=1, alight=5, t=T0, route_id="R1", trip_id="T1")
    w.ride("alice", "bus-02", board=5, alight=20, t=T0 + 720, route_id="R2", trip_id="T2")
    # r0001 (adult): a long ride across rid rotations, later the same route again (2 fares)
    w.ride("r0001", "bus-03", board=2, alight=25, t=T0 + 100)
    w.ride("r0001", "bus-01", board=1, alight=3, t=T0 + 7200)
    events = [e for c in w.buses.values() for e in c.events]
    await env.ingest(events)

    with capture_logs() as logs:
        report = await env.worker.settle_once()
    assert report.events == len(events) == report.segments
    assert not report.unresolved
    assert report.charges == 3
    assert any(e["event"] == "settlement_pass_completed" for e in logs)

    r = await env.client.get("/riders/alice/journeys")
    assert r.status_code == 200
    (j,) = r.json()["journeys"]
    assert j["category"] == "youth"
    assert [(x["route_id"], x["board_stop_id"], x["alight_stop_id"]) for x in j["legs"]] == [
        ("R1", "S01", "S05"),
        ("R2", "S05", "S20"),
    ]
    youth = _price(
        env.rules,
        [("R1", "gyeonggi_city", T0, 4 * 800.0), ("R2", "gyeonggi_wide_area", T0 + 720, 12_000.0)],
        "youth",
    )
    assert j["fare_krw"] == youth
    assert j["charged"] is True
    assert j["explain"][-1].startswith("total:")
    c = (await env.client.get("/riders/alice/charges")).json()
    assert c["total_krw"] == youth
    assert len(c["charges"]) == 1

    c1 = (await env.client.get("/riders/r0001/charges")).json()
    assert len(c1["charges"]) == 2
    assert c1["total_krw"] == _price(
        env.rules, [("R1", "gyeonggi_city", T0, 23 * 800.0)], "adult"
    ) + _price(env.rules, [("R1", "gyeonggi_city", T0, 2 * 800.0)], "adult")

    # the same journeys, ids and fares as the offline settle of the same events
    offline = _offline(w, events, {"alice": "youth"})
    rows = await env.rows(journeys, "journey_id")
    assert sorted((o.journey_id, o.fare_krw, o.charged) for o in offline.journeys) == [
        (r["journey_id"], r["fare_krw"], r["charged"]) for r in rows
    ]
    assert {r["service_day"] for r in rows} == {DAY}


async def test_settlement_is_idempotent_and_recomputable(env: Env) -> None:
    w = env.world
    w.ride("r0001", "bus-01", board=1, alight=5, t=T0)
    w.ride("r0001", "bus-02", board=5, alight=9, t=T0 + 600, route_id="R2", trip_id="T2")
    w.ride("r0002", "bus-01", board=3, alight=8, t=T0 + 60)
    await env.ingest([e for c in w.buses.values() for e in c.events])
    first = await env.worker.settle_once()
    assert first.rider_days >= 2
    before = await env.derived()
    again = await env.worker.settle_once()
    assert (again.events, again.rider_days) == (0, 0)
    assert await env.derived() == before
    # recomputing a rider-day from scratch replaces its rows with the same rows
    await env.worker.recompute("r0001", DAY, now=NOW + 50)
    await env.worker.recompute("r0002", DAY, now=NOW + 50)
    assert await env.derived() == before
    # a fresh worker (restart) finds nothing new: watermarks are in the database
    fresh = SettlementWorker(env.engine, load_gtfs(w.gtfs), env.rules, clock=lambda: NOW)
    assert (await fresh.settle_once()).events == 0
    marks = await env.rows(settlement_watermarks, "bus_id")
    assert {m["bus_id"]: m["settled_seq"] for m in marks} == {"bus-01": 2, "bus-02": 1}
    assert await env.rows(settlement_dirty, "rider_id") == []


async def test_late_segment_completing_a_transfer_recomputes_the_rider_day(env: Env) -> None:
    w = env.world
    (leg1,) = w.ride("r0001", "bus-01", board=1, alight=5, t=T0)
    leg2 = w.ride("r0001", "bus-02", board=5, alight=20, t=T0 + 900, route_id="R2", trip_id="T2")
    # the second bus uploads first: its leg alone is a journey
    await env.ingest(leg2)
    await env.worker.settle_once()
    c = (await env.client.get("/riders/r0001/charges")).json()
    alone = _price(env.rules, [("R2", "gyeonggi_wide_area", T0, 12_000.0)], "adult")
    assert c["total_krw"] == alone
    # the first bus comes back online: one journey of two legs replaces it
    await env.ingest([leg1])
    report = await env.worker.settle_once()
    assert report.events == 1
    assert report.rider_days >= 1
    js = (await env.client.get("/riders/r0001/journeys")).json()["journeys"]
    assert len(js) == 1
    assert [x["bus_id"] for x in js[0]["legs"]] == ["bus-01", "bus-02"]
    c = (await env.client.get("/riders/r0001/charges")).json()
    assert len(c["charges"]) == 1
    both = _price(
        env.rules,
        [("R1", "gyeonggi_city", T0, 3200.0), ("R2", "gyeonggi_wide_area", T0 + 900, 12_000.0)],
        "adult",
    )
    assert c["total_krw"] == both
    assert len(await env.rows(legs, "journey_id")) == 2


async def test_forged_rtag_and_unknown_rid_are_never_charged(env: Env) -> None:
    w = env.world
    (honest,) = w.ride("r0001", "bus-01", board=1, alight=3, t=T0)
    rid = bytes.fromhex(honest["rid"])
    t = T0 + 200
    fields = w.segment_fields(
        "r0001",
        route_id="R1",
        trip_id="T1",
        start=(t, "S03", "boarded"),
        end=(t + 60, "S04", "alighted"),
        distance_m=800,
        proof=(_forged_payload(w, rid, t), _forged_payload(w, rid, t + 60)),
    )
    fields["rid"], fields["interval"] = honest["rid"], honest["interval"]
    forged = w.buses["bus-01"].emit(fields)
    # a rider the backend does not know (yet)
    w.keys["stranger"] = derive_rider_keys(b"\x42" * 16)
    (unknown,) = w.ride("stranger", "bus-02", board=1, alight=4, t=T0 + 30)
    await env.ingest([honest, forged, unknown])
    with capture_logs() as logs:
        report = await env.worker.settle_once()
    assert report.unresolved == {"bad_rtag": 1, "unresolved_rid": 1}
    assert {(e["reason"], e["event_id"]) for e in logs if e["event"] == "segment_unresolved"} == {
        ("bad_rtag", forged["event_id"]),
        ("unresolved_rid", unknown["event_id"]),
    }
    rows = await env.rows(unresolved_segments, "event_id")
    assert {(r["event_id"], r["reason"]) for r in rows} == {
        (forged["event_id"], "bad_rtag"),
        (unknown["event_id"], "unresolved_rid"),
    }
    cs = await env.rows(charges, "charge_id")
    assert len(cs) == 1
    (leg,) = await env.rows(legs, "journey_id")
    assert leg["event_ids"] == [honest["event_id"]]
    # the stranger enrols later (same key): the held event is settled and charged
    await env.enrol_key("stranger", b"\x42" * 16, "child")
    report = await env.worker.settle_once()
    assert report.segments == 1
    c = (await env.client.get("/riders/stranger/charges")).json()
    assert c["total_krw"] == _price(env.rules, [("R1", "gyeonggi_city", T0, 2400.0)], "child")
    assert {r["reason"] for r in await env.rows(unresolved_segments, "event_id")} == {"bad_rtag"}


async def test_revoked_rider_and_review_flags_are_kept(env: Env) -> None:
    w = env.world
    w.ride("r0001", "bus-01", board=2, alight=4, t=T0, end_cause="lost", alight_stop_known=False)
    # r0002 seen on two buses at once: both legs held, not charged
    w.ride("r0002", "bus-02", board=1, alight=10, t=T0 + 3000)
    w.ride("r0002", "bus-03", board=1, alight=10, t=T0 + 3000)
    await env.client.post("/riders/r0003/revoke")
    (late,) = w.ride("r0003", "bus-01", board=1, alight=2, t=T0 + 5000)
    await env.ingest([e for c in w.buses.values() for e in c.events])
    report = await env.worker.settle_once()
    assert report.unresolved == {"revoked_rider": 1}
    (u,) = await env.rows(unresolved_segments, "event_id")
    assert (u["event_id"], u["rider_id"]) == (late["event_id"], "r0003")
    lost = (await env.client.get("/riders/r0001/journeys")).json()["journeys"]
    assert set(lost[0]["flags"]) == {"lost", "review"}
    assert set(lost[0]["legs"][0]["flags"]) == {"lost", "review"}
    assert lost[0]["charged"] is True
    held = (await env.client.get("/riders/r0002/journeys")).json()["journeys"]
    assert len(held) == 2
    assert all(j["charged"] is False and j["fare_krw"] == 0 for j in held)
    assert all("suspected_replay" in j["flags"] for j in held)
    assert (await env.client.get("/riders/r0002/charges")).json()["charges"] == []


async def test_bus_alongside_is_dropped_and_the_rider_charged_once(env: Env) -> None:
    w = env.world
    # r0001 rides bus-02 from S01 to S10; bus-03 drives alongside from S03 to S05 and
    # hears them through its windows, 20 dB weaker
    w.ride("r0001", "bus-02", board=1, alight=10, t=T0, rssi_med=-58)
    w.ride("r0001", "bus-03", board=3, alight=5, t=T0 + 200, rssi_med=-78)
    await env.ingest([e for c in w.buses.values() for e in c.events])
    await env.worker.settle_once()
    rows = await env.rows(rider_segments, "event_id")
    assert {r["bus_id"]: r["rssi_med"] for r in rows} == {"bus-02": -58.0, "bus-03": -78.0}
    js = (await env.client.get("/riders/r0001/journeys")).json()["journeys"]
    by_bus = {j["legs"][0]["bus_id"]: j for j in js}
    assert by_bus["bus-02"]["charged"] is True
    assert by_bus["bus-02"]["flags"] == ["overlap_resolved"]
    assert by_bus["bus-03"]["charged"] is False
    assert by_bus["bus-03"]["fare_krw"] == 0
    assert by_bus["bus-03"]["flags"] == ["overlap_dropped"]
    (charge,) = (await env.client.get("/riders/r0001/charges")).json()["charges"]
    assert charge["fare_krw"] == by_bus["bus-02"]["fare_krw"] > 0


async def test_two_buses_together_settled_by_adverts_decoded_online(env: Env) -> None:
    w = env.world
    # r0001 rides bus-02 from S03 to S05; bus-03 beside it all the way hears them only
    # 8 dB weaker (under overlap_margin_db) but decodes half as many adverts per second
    w.ride("r0001", "bus-02", board=3, alight=5, t=T0, rssi_med=-74, adverts_per_s=1.0)
    w.ride("r0001", "bus-03", board=3, alight=5, t=T0 + 5, rssi_med=-82, adverts_per_s=0.5)
    await env.ingest([e for c in w.buses.values() for e in c.events])
    await env.worker.settle_once()
    rows = await env.rows(rider_segments, "event_id")
    assert all(r["n_adv"] > 0 for r in rows)
    js = (await env.client.get("/riders/r0001/journeys")).json()["journeys"]
    assert {j["legs"][0]["bus_id"]: j["flags"] for j in js} == {
        "bus-02": ["overlap_resolved"],
        "bus-03": ["overlap_dropped"],
    }
    (charge,) = (await env.client.get("/riders/r0001/charges")).json()["charges"]
    assert charge["fare_krw"] > 0


async def test_gap_waits_for_the_grace_period(env: Env) -> None:
    w = env.world
    evs = [
        w.ride("r0001", "bus-01", board=1, alight=3, t=T0 + k * 3000, trip_id=f"T1-{k}")[0]
        for k in range(3)
    ]  # one bus, a new trip each time (one trip is one ride)
    await env.ingest(evs)
    # a hole in the stored seqs (manual repair of the ledger): seq 2 is missing
    async with env.engine.begin() as conn:
        await conn.execute(
            sa.delete(fare_events).where(fare_events.c.bus_id == "bus-01", fare_events.c.seq == 2)
        )
    env.worker.gap_grace_s = 60.0
    report = await env.worker.settle_once(now=NOW + 10)
    assert (report.events, report.gaps_waiting) == (1, 1)
    report = await env.worker.settle_once(now=NOW + 61)
    assert (report.events, report.gaps_skipped) == (1, 1)
    assert len(await env.rows(charges, "charge_id")) == 2


async def test_adjustments_are_recomputed_with_the_charges(env: Env, tmp_path: Path) -> None:
    rules_text = (Path(__file__).resolve().parents[2] / "backend" / "fare_rules.toml").read_text()
    rules_text = rules_text.replace(
        "[daily_cap]\nenabled = false", "[daily_cap]\nenabled = true\namount_krw = { adult = 3000 }"
    )
    assert "amount_krw = { adult = 3000 }" in rules_text, "packaged rules lost [daily_cap]"
    path = tmp_path / "rules.toml"
    path.write_text(rules_text)
    rules = load_rules(path, timezone="Asia/Seoul")
    worker = SettlementWorker(env.engine, load_gtfs(env.world.gtfs), rules, clock=lambda: NOW)
    w = env.world
    for k in range(3):
        w.ride("r0001", "bus-01", board=1, alight=3, t=T0 + k * 4000, trip_id=f"T1-{k}")
    await env.ingest([e for c in w.buses.values() for e in c.events])
    await worker.settle_once()
    (adj,) = await env.rows(adjustments, "adjustment_id")
    assert (adj["kind"], adj["period"], adj["amount_krw"]) == ("daily_cap", DAY, 3000 - 3 * 1650)
    await worker.settle_once()
    assert len(await env.rows(adjustments, "adjustment_id")) == 1


async def test_migrations_downgrade_and_upgrade(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        await migrate(engine)
        assert await current_revision(engine) == head_revision()
        from backend._db import _upgrade

        def down(conn: sa.Connection) -> None:
            from alembic import command

            from backend._db import _alembic_config

            command.downgrade(_alembic_config(conn), "0001")

        async with engine.begin() as conn:
            await conn.run_sync(down)
        assert await current_revision(engine) == "0001"
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade, "head")
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()


async def test_cli_enroll_stores_kind_and_category(tmp_path: Path) -> None:
    from backend.cli import main as backend_main

    url = f"sqlite+aiosqlite:///{tmp_path / 'e.db'}"
    args = ["enroll", "--db", url, "--kind", "app", "--category", "child", "--rider-id", "kid"]
    assert await asyncio.to_thread(backend_main, args) == 0
    engine = create_engine(url)
    try:
        from backend._db import riders

        async with engine.connect() as conn:
            row = (await conn.execute(sa.select(riders))).one()
        assert (row.rider_id, row.kind, row.category) == ("kid", "app", "child")
        assert len(row.token_key) == 32
    finally:
        await engine.dispose()


def test_settlement_section_is_documented() -> None:
    from backend.config import BackendConfig
    from busbell import describe_config

    keys = {o.key for o in describe_config(BackendConfig)}
    assert {
        "settlement.enabled",
        "settlement.interval_s",
        "settlement.gap_grace_s",
        "settlement.lost_policy",
        "settlement.default_category",
    } <= keys
    assert json.dumps(sorted(keys))


@pytest.mark.mosquitto
async def test_end_to_end_over_mqtt(tmp_path: Path, shared_broker: Any, topic_prefix: str) -> None:
    """Edges publish fare batches; run_ingest stores them; run_settlement charges them."""
    from backend._ingest import run_ingest
    from backend._settlement import run_settlement
    from backend.config import (
        BackendConfig,
        DatabaseSettings,
        FilesSettings,
        IngestSettings,
        SettlementSettings,
    )
    from busbell import Topics
    from busbell._mqtt import MqttSession, MqttSettings

    world = World(tmp_path, riders=2, buses=2)
    world.ride("r0001", "bus-01", board=1, alight=5, t=T0)
    world.ride("r0001", "bus-02", board=5, alight=9, t=T0 + 600, route_id="R2", trip_id="T2")
    world.ride("r0002", "bus-01", board=2, alight=6, t=T0 + 60)
    url = f"sqlite+aiosqlite:///{tmp_path / 'e2e.db'}"
    mqtt = MqttSettings(host=shared_broker.host, port=shared_broker.port, prefix=topic_prefix)
    config = BackendConfig(
        database=DatabaseSettings(url=url),
        mqtt=mqtt,
        ingest=IngestSettings(worker_id="e2e"),
        settlement=SettlementSettings(interval_s=0.2),
        files=FilesSettings(devices=world.devices_csv, riders=world.riders_csv, gtfs=world.gtfs),
    )
    engine = create_engine(url)
    await migrate(engine)
    stop = asyncio.Event()
    topics = Topics(topic_prefix)
    tasks = [
        asyncio.create_task(run_ingest(config, stop=stop)),
        asyncio.create_task(run_settlement(config, stop=stop)),
    ]
    try:
        async with MqttSession(mqtt, "t-e2e-edge", clean_start=True) as edge:
            await edge.subscribe([topics.fares_ack(b) for b in world.buses])
            acked: dict[str, int] = {}
            async with asyncio.timeout(20):
                while any(acked.get(b, 0) < c.seq for b, c in world.buses.items()):
                    for b, c in world.buses.items():
                        if acked.get(b, 0) < c.seq:
                            await edge.publish(topics.fares(b), batch_payload(b, c.events), qos=1)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(2):
                            async for msg in edge.messages():
                                bus = msg.topic.split("/")[-3]
                                acked[bus] = max(
                                    acked.get(bus, 0), json.loads(msg.payload)["upto_seq"]
                                )
                                if all(acked.get(b, 0) >= c.seq for b, c in world.buses.items()):
                                    break
        rules = load_rules(timezone="Asia/Seoul")
        expected = [
            (
                "r0001",
                _price(
                    rules,
                    [
                        ("R1", "gyeonggi_city", T0, 3200.0),
                        ("R2", "gyeonggi_wide_area", T0 + 600, 3200.0),
                    ],
                    "adult",
                ),
            ),
            ("r0002", _price(rules, [("R1", "gyeonggi_city", T0, 3200.0)], "adult")),
        ]
        got: Sequence[Any] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(20):
                # until the settled charges are the expected ones: a pass may settle
                # bus-01's events before bus-02's are stored (r0001 charged for one leg
                # first, then for the transfer; a loaded machine drew that)
                while [tuple(r) for r in got] != expected:
                    await asyncio.sleep(0.2)
                    async with engine.connect() as conn:
                        got = (
                            await conn.execute(
                                sa.select(charges.c.rider_id, charges.c.fare_krw).order_by(
                                    charges.c.rider_id
                                )
                            )
                        ).all()
        assert [tuple(r) for r in got] == expected
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        await engine.dispose()


async def test_a_rider_day_that_cannot_be_priced_stays_marked(env: Env) -> None:
    # 2020: before the earliest packaged rule set (NoRulesInForceError)
    env.world.ride("r0001", "bus-01", board=1, alight=3, t=1_600_000_000.0)
    env.world.ride("r0002", "bus-02", board=1, alight=3, t=T0)
    await env.ingest([e for c in env.world.buses.values() for e in c.events])
    with capture_logs() as logs:
        report = await env.worker.settle_once()
    assert report.failed_rider_days >= 1
    assert any(e["event"] == "rider_day_failed" for e in logs)
    assert [c["rider_id"] for c in await env.rows(charges, "charge_id")] == ["r0002"]
    marks = await env.rows(settlement_dirty, "rider_id")
    assert {m["rider_id"] for m in marks} == {"r0001"}


@pytest.mark.mosquitto
async def test_backend_run_starts_the_settlement(
    tmp_path: Path, shared_broker: Any, topic_prefix: str
) -> None:
    """`busbell backend run` (run_backend) serves the API and runs the settlement worker."""
    from backend.cli import run_backend
    from tests.conftest import free_port

    world = World(tmp_path, riders=1, buses=1)
    world.ride("r0001", "bus-01", board=1, alight=4, t=T0)
    url = f"sqlite+aiosqlite:///{tmp_path / 'run.db'}"
    port = free_port()
    ops = new_operator_token()
    ops_entry = operator_entry("settle-test", ["riders:read"], ops)
    cfg = tmp_path / "backend.toml"
    cfg.write_text(
        f'[database]\nurl = "{url}"\n'
        f'[mqtt]\nhost = "{shared_broker.host}"\nport = {shared_broker.port}\n'
        f'prefix = "{topic_prefix}"\n'
        f'[api]\nport = {port}\noperators = ["{ops_entry}"]\n'
        f'[files]\ndevices = "{world.devices_csv}"\nriders = "{world.riders_csv}"\n'
        f'gtfs = "{world.gtfs}"\n'
        "[settlement]\ninterval_s = 0.2\n"
    )
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(run_backend(cfg, stop=stop))
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {ops}"},
                timeout=LIVE_TIMEOUT_S,
            ) as client:
                async with asyncio.timeout(20):
                    while True:
                        with contextlib.suppress(httpx.TransportError):
                            r = await client.get("/riders/r0001")
                            if r.status_code == 200:
                                break
                        await asyncio.sleep(0.2)
                assert r.json()["category"] == "adult"
                # events stored by ingest (here written straight through an Ingestor)
                engine = create_engine(url)
                try:
                    async with engine.begin() as conn:
                        chain = world.buses["bus-01"]
                        await register_device(conn, "bus-01", chain.key.public)
                    ing = Ingestor(engine, IngestCore(), worker_id="t")
                    await ing.refresh_devices()
                    res = await ing.ingest([("bus-01", batch_payload("bus-01", chain.events))])
                    assert res.stored == 1
                finally:
                    await engine.dispose()
                async with asyncio.timeout(20):
                    while not (await client.get("/riders/r0001/charges")).json()["charges"]:
                        await asyncio.sleep(0.2)
        finally:
            stop.set()
            assert await asyncio.wait_for(task, 20) == 0
    assert any(e["event"] == "settlement_started" for e in logs)


async def test_revocation_and_rekey_reach_a_running_worker_by_its_next_pass(env: Env) -> None:
    w = env.world
    first = w.ride("r0001", "bus-01", board=1, alight=3, t=T0)
    first += w.ride("r0002", "bus-02", board=1, alight=3, t=T0)
    await env.ingest(first)
    report = await env.worker.settle_once()
    assert report.segments == 2
    # the rider registry changes while the worker runs: r0001 revoked (by the API),
    # r0002 given a new token key and r0003 made a child (by an operator's SQL)
    assert (await env.client.post("/riders/r0001/revoke")).status_code == 200
    new_key = hashlib.sha256(b"new key").digest()[:16]
    async with env.engine.begin() as conn:
        from backend._db import riders

        await conn.execute(
            sa.update(riders).where(riders.c.rider_id == "r0002").values(token_key=new_key.hex())
        )
        await conn.execute(
            sa.update(riders).where(riders.c.rider_id == "r0003").values(category="child")
        )
    old_keys = w.keys["r0002"]
    second = w.ride("r0001", "bus-01", board=4, alight=6, t=T0 + 3600)
    second += w.ride("r0002", "bus-02", board=4, alight=6, t=T0 + 3600)  # the old key
    w.keys["r0002"] = derive_rider_keys(new_key)
    second += w.ride("r0002", "bus-03", board=1, alight=3, t=T0 + 3700)  # the new key
    second += w.ride("r0003", "bus-03", board=4, alight=6, t=T0 + 3900)
    await env.ingest(second)
    with capture_logs() as logs:
        report = await env.worker.settle_once()
    (feed,) = [e for e in logs if e["event"] == "rider_changes_read"]
    assert (feed["rows"], feed["added"], feed["rekeyed"]) == (3, 0, 1)  # only the changes
    assert report.unresolved == {"revoked_rider": 1, "unresolved_rid": 1}
    bad = {r["event_id"]: r["reason"] for r in await env.rows(unresolved_segments, "event_id")}
    assert bad == {second[0]["event_id"]: "revoked_rider", second[1]["event_id"]: "unresolved_rid"}
    segs = {r["event_id"]: r["rider_id"] for r in await env.rows(rider_segments, "event_id")}
    assert segs[second[2]["event_id"]] == "r0002"
    assert segs[first[0]["event_id"]] == "r0001"  # ridden before the revocation: kept
    (j,) = (await env.client.get("/riders/r0003/journeys")).json()["journeys"]
    assert j["category"] == "child"
    # nothing changed since: nothing read
    with capture_logs() as logs:
        await env.worker.settle_once()
    assert not [e for e in logs if e["event"] == "rider_changes_read"]
    assert old_keys != w.keys["r0002"]


async def test_tentative_halves_are_one_leg_online_and_a_lone_piece_charges_nobody(
    env: Env,
) -> None:
    """Identity-aware settlement online (docs/backend.md, "Tentative segments"): r0001's
    two unconfirmed rids adjoining across a rotation are one leg, recomputed the same from
    ``rider_segments`` (their evidence kept in ``co_n``/``co_lo``/``co_hi``); r0002's lone
    piece charges nobody; the same journeys as the offline settle."""
    w = env.world
    boundary = (int(T0 // 600) + 1) * 600.0

    def piece(
        rider: str, start: tuple[float, str | None, str], end: tuple[float, str | None, str]
    ) -> dict[str, Any]:
        fields = w.segment_fields(
            rider, route_id="R1", trip_id="T1", start=start, end=end, distance_m=800.0
        )
        fields["evidence"].update({"co_n": 2, "co_lo": -92.0, "co_hi": -88.5})
        return w.buses["bus-01"].emit(fields)

    events = [
        piece("r0001", (boundary - 200.0, "S02", "tentative"), (boundary - 3.0, None, "rotated")),
        piece(
            "r0001", (boundary + 60.0, "S03", "tentative"), (boundary + 400.0, "S06", "alighted")
        ),
        piece("r0002", (boundary - 150.0, "S03", "tentative"), (boundary - 2.0, None, "rotated")),
    ]
    await env.ingest(events)
    await env.worker.settle_once()
    segs = await env.rows(rider_segments, "event_id")
    assert sorted((s["co_n"], s["co_lo"], s["co_hi"]) for s in segs) == [(2, -92.0, -88.5)] * 3
    (j,) = (await env.client.get("/riders/r0001/journeys")).json()["journeys"]
    assert [(x["board_stop_id"], x["alight_stop_id"]) for x in j["legs"]] == [("S02", "S06")]
    assert j["charged"] is True
    assert (await env.client.get("/riders/r0002/journeys")).json()["journeys"] == []
    offline = await _recomputed_as_offline(env, events, "r0001")
    assert offline.stats.rejected == {"tentative_dropped": 1}


async def test_dropped_tentative_pieces_lose_their_rider_link_after_tentative_link_days(
    env: Env,
) -> None:
    """``[settlement] tentative_link_days`` (35): a dropped tentative piece charges nobody,
    but its ``rider_segments`` row links a rid to a rider; it is deleted once every piece
    of its group ended that long ago. Kept pieces stay; the fare events stay; journeys,
    legs and charges are unchanged, recomputed or settled offline alike; a watermark reset
    re-settles the events (re-resolving the rids) and the links go again in that pass.

    r0001: two halves of one ride (kept). r0002: a lone piece (dropped). r0003: three
    adjoining pieces, 6 points but 21 dB apart (dropped as a group); the first alone
    deleted would leave two pieces 1 dB apart summing 4 points, a leg: so none goes before
    the last ended 35 days ago."""
    w = env.world
    b = (int(T0 // 600) + 1) * 600.0

    def piece(
        rider: str,
        start: tuple[float, str | None],
        end: tuple[float, str | None, str],
        co: tuple[float, float],
    ) -> dict[str, Any]:
        fields = w.segment_fields(
            rider,
            route_id="R1",
            trip_id="T1",
            start=(start[0], start[1], "tentative"),
            end=end,
            distance_m=800.0,
        )
        fields["evidence"].update({"co_n": 2, "co_lo": co[0], "co_hi": co[1]})
        return w.buses["bus-01"].emit(fields)

    events = [
        piece("r0001", (b - 200.0, "S02"), (b - 3.0, None, "rotated"), (-92.0, -88.5)),
        piece("r0001", (b + 60.0, "S03"), (b + 400.0, "S06", "alighted"), (-92.0, -88.5)),
        piece("r0002", (b - 150.0, "S03"), (b - 2.0, None, "rotated"), (-92.0, -88.5)),
        piece("r0003", (b - 300.0, "S02"), (b - 3.0, None, "rotated"), (-70.0, -70.0)),
        piece("r0003", (b + 5.0, None), (b + 590.0, None, "rotated"), (-90.0, -89.0)),
        piece("r0003", (b + 605.0, None), (b + 900.0, "S09", "alighted"), (-91.0, -90.0)),
    ]
    await env.ingest(events)
    day = 86400.0
    await env.worker.settle_once(now=NOW)
    before = await env.derived()
    assert len(before["segments"]) == 6
    (j,) = (await env.client.get("/riders/r0001/journeys")).json()["journeys"]
    assert [(x["board_stop_id"], x["alight_stop_id"]) for x in j["legs"]] == [("S02", "S06")]
    for rider in ("r0002", "r0003"):
        assert (await env.client.get(f"/riders/{rider}/journeys")).json()["journeys"] == []

    def linked(derived: dict[str, list[dict[str, Any]]]) -> set[str]:
        return {r["event_id"] for r in derived["segments"]}

    every = {e["event_id"] for e in events}
    r0002 = {events[2]["event_id"]}
    r0003 = {e["event_id"] for e in events[3:]}
    # 35 days after r0002's piece and r0003's first ended, before r0003's last did
    deleted_before = TENTATIVE_LINKS_DELETED._value.get()
    with capture_logs() as logs:
        report = await env.worker.settle_once(now=b + 35 * day + 400.0)
    assert report.tentative_links_deleted == 1
    assert TENTATIVE_LINKS_DELETED._value.get() == deleted_before + 1
    assert [e["count"] for e in logs if e["event"] == "tentative_links_deleted"] == [1]
    after = await env.derived()
    assert linked(after) == every - r0002
    assert {k: v for k, v in after.items() if k != "segments"} == {
        k: v for k, v in before.items() if k != "segments"
    }
    await env.worker.recompute("r0003", DAY, now=b + 35 * day + 500.0)
    assert await env.derived() == after
    # (had its first piece gone alone, r0003's other two would be a leg)
    rest = [
        _segment_of_row(SimpleNamespace(**r))
        for r in before["segments"]
        if r["event_id"] in {events[4]["event_id"], events[5]["event_id"]}
    ]
    assert settle_tentative(rest, JourneyPolicy(), None)[1] == 0
    # every piece of r0003's group ended 35 days ago: the group goes
    report = await env.worker.settle_once(now=b + 36 * day)
    assert report.tentative_links_deleted == 3
    after = await env.derived()
    assert linked(after) == every - r0002 - r0003
    assert {k: v for k, v in after.items() if k != "segments"} == {
        k: v for k, v in before.items() if k != "segments"
    }
    assert len(await env.rows(fare_events, "bus_id", "seq")) == 6  # the chain untouched
    for rider in ("r0001", "r0003"):
        await env.worker.recompute(rider, DAY, now=b + 36 * day)
    assert await env.derived() == after
    offline = _offline(env.world, events, {})  # (offline settle writes no links at all)
    assert offline.stats.rejected == {"tentative_dropped": 4}
    assert sorted((o.journey_id, o.fare_krw) for o in offline.journeys) == [
        (r["journey_id"], r["fare_krw"]) for r in after["journeys"]
    ]
    # a watermark reset: the events are settled again, their rids resolved again; the
    # dropped pieces' links are written again and deleted again in that pass
    async with env.engine.begin() as conn:
        await conn.execute(sa.delete(settlement_watermarks))
    report = await env.worker.settle_once(now=b + 37 * day)
    assert (report.segments, report.tentative_links_deleted) == (6, 4)
    assert await env.derived() == after
    # nothing new: nothing read again, nothing deleted
    report = await env.worker.settle_once(now=b + 37 * day + 5.0)
    assert (report.events, report.tentative_links_deleted) == (0, 0)


async def test_a_lone_piece_heard_door_to_door_keeps_its_rider_link(env: Env) -> None:
    """A lone tentative piece heard from S03's doors to S04's is a ride (``_door_to_door``):
    charged online as offline, and its ``rider_segments`` link is no dropped piece's, so
    ``tentative_link_days`` never deletes it (the journey would go with it)."""
    w = env.world
    fields = w.segment_fields(
        "r0001",
        route_id="R1",
        trip_id="T1",
        start=(T0 + 100.0, "S03", "tentative"),
        end=(T0 + 220.0, "S04", "alighted"),
        distance_m=766.0,
    )
    fields["evidence"].update({"co_n": 2, "co_lo": -94.0, "co_hi": -92.0})
    events = [w.buses["bus-01"].emit(fields)]
    await env.ingest(events)
    await env.worker.settle_once(now=NOW)
    (j,) = (await env.client.get("/riders/r0001/journeys")).json()["journeys"]
    assert [(x["board_stop_id"], x["alight_stop_id"]) for x in j["legs"]] == [("S03", "S04")]
    before = await env.derived()
    report = await env.worker.settle_once(now=T0 + 40 * 86400.0)
    assert report.tentative_links_deleted == 0
    assert await env.derived() == before
    offline = _offline(env.world, events, {})
    assert offline.stats.rejected == {}
    assert [(o.journey_id, o.fare_krw) for o in offline.journeys] == [
        (r["journey_id"], r["fare_krw"]) for r in before["journeys"]
    ]


def _carried_piece(w: World, rider: str, co: tuple[int, float, float]) -> dict[str, Any]:
    """A lone tentative piece on bus-01 (T1) from S03, 347 m, rotated, riders at -77 dBm."""
    fields = w.segment_fields(
        rider,
        route_id="R1",
        trip_id="T1",
        start=(T0 + 100.0, "S03", "tentative"),
        end=(T0 + 168.0, None, "rotated"),
        distance_m=347.0,
        riders_lvl=-77.0,
    )
    fields["evidence"].update({"co_n": co[0], "co_lo": co[1], "co_hi": co[2]})
    return w.buses["bus-01"].emit(fields)


async def test_a_lone_piece_carried_past_its_stop_is_charged_online_as_offline(
    env: Env,
) -> None:
    """A lone tentative piece heard moving with the bus 347 m past S03, then rotated, the
    rider's only segment on the trip (``_carried_to``; cell 24 seed 1 rush_hour_crowd
    r-00036): charged S03 -> S04 online as offline (``riders_lvl`` kept in
    ``rider_segments``), recomputed the same, its link never deleted as a dropped piece's;
    r0002's piece 31 dB under the riders charges nobody, and its link goes."""
    w = env.world
    events = [
        _carried_piece(w, "r0001", (2, -93.7, -92.5)),
        _carried_piece(w, "r0002", (2, -108.5, -107.5)),
    ]
    await env.ingest(events)
    await env.worker.settle_once(now=NOW)
    (j,) = (await env.client.get("/riders/r0001/journeys")).json()["journeys"]
    assert [(x["board_stop_id"], x["alight_stop_id"]) for x in j["legs"]] == [("S03", "S04")]
    assert j["charged"] is True
    assert (await env.client.get("/riders/r0002/journeys")).json()["journeys"] == []
    offline = await _recomputed_as_offline(env, events, "r0001")
    assert offline.stats.rejected == {"tentative_dropped": 1}
    before = await env.derived()
    report = await env.worker.settle_once(now=T0 + 40 * 86400.0)
    assert report.tentative_links_deleted == 1  # r0002's
    after = await env.derived()
    assert [r["rider_id"] for r in after.pop("segments")] == ["r0001"]
    before.pop("segments")
    assert after == before


async def test_tentative_links_are_kept_with_tentative_link_days_0(env: Env) -> None:
    w = env.world
    b = (int(T0 // 600) + 1) * 600.0
    fields = w.segment_fields(
        "r0002",
        route_id="R1",
        trip_id="T1",
        start=(b - 150.0, "S03", "tentative"),
        end=(b - 2.0, None, "rotated"),
        distance_m=800.0,
    )
    fields["evidence"].update({"co_n": 2, "co_lo": -92.0, "co_hi": -88.5})
    await env.ingest([w.buses["bus-01"].emit(fields)])
    keep = SettlementWorker(
        env.engine, None, env.rules, tentative_link_days=0, clock=lambda: b + 400 * 86400.0
    )
    report = await keep.settle_once()
    assert (report.segments, report.tentative_links_deleted) == (1, 0)
    assert len(await env.rows(rider_segments, "event_id")) == 1
    report = await env.worker.settle_once(now=b + 36 * 86400.0)  # (35 days: it goes)
    assert report.tentative_links_deleted == 1
    assert await env.rows(rider_segments, "event_id") == []


async def test_the_link_retention_reads_a_batch_a_pass(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most ``LINK_BATCH`` pieces a pass (a restarted worker catches up over passes);
    a batch of one end time is taken whole."""
    monkeypatch.setattr(settlement_module, "LINK_BATCH", 1)
    w = env.world
    b = (int(T0 // 600) + 1) * 600.0
    events = []
    for rider, end in (("r0001", b - 2.0), ("r0002", b - 2.0), ("r0003", b + 200.0)):
        fields = w.segment_fields(
            rider,
            route_id="R1",
            trip_id="T1",
            start=(end - 150.0, "S03", "tentative"),
            end=(end, None, "rotated"),
            distance_m=800.0,
        )
        fields["evidence"].update({"co_n": 2, "co_lo": -92.0, "co_hi": -88.5})
        events.append(w.buses["bus-01"].emit(fields))
    await env.ingest(events)
    got = []
    for n in range(5):
        report = await env.worker.settle_once(now=b + 36 * 86400.0 + n)
        got.append(report.tentative_links_deleted)
    assert got == [1, 1, 1, 0, 0]
    assert await env.rows(rider_segments, "event_id") == []


async def _bus_02_wins_online_as_offline(env: Env) -> None:
    """The world's events settle online to r0001's bus-02 leg charged (``overlap_resolved``)
    and bus-03's dropped (``overlap_dropped``), and offline alike."""
    events = [e for c in env.world.buses.values() for e in c.events]
    await env.ingest(events)
    await env.worker.settle_once()
    js = (await env.client.get("/riders/r0001/journeys")).json()["journeys"]
    assert {j["legs"][0]["bus_id"]: j["flags"] for j in js} == {
        "bus-02": ["overlap_resolved"],
        "bus-03": ["overlap_dropped"],
    }
    await _recomputed_as_offline(env, events, "r0001")


async def test_a_neighbour_well_below_its_own_riders_is_dropped_online(env: Env) -> None:
    """``evidence.riders_lvl`` is kept (``rider_segments.riders_lvl``) and settles online as
    offline: r0001 rides bus-02 from S03 to S05 with +3 dBm tokens (-27 dBm, riders at
    -48); bus-03 beside it hears them at -64, louder than the absolute ceiling, but 17 dB
    below the riders it carried; both decode nearly every advert."""
    w = env.world
    w.ride(
        "r0001", "bus-02", board=3, alight=5, t=T0, rssi_med=-27, adverts_per_s=1.1, riders_lvl=-48
    )
    w.ride(
        "r0001",
        "bus-03",
        board=3,
        alight=5,
        t=T0 + 5,
        rssi_med=-64,
        adverts_per_s=1.0,
        riders_lvl=-47,
    )
    await _bus_02_wins_online_as_offline(env)
    rows = await env.rows(rider_segments, "event_id")
    assert {r["bus_id"]: r["riders_lvl"] for r in rows} == {"bus-02": -48.0, "bus-03": -47.0}


async def test_a_neighbour_going_on_far_below_its_own_riders_is_dropped_online(env: Env) -> None:
    """The never-carried clause online as offline: r0001 rides bus-02 from S03 to S05,
    heard at its riders' level (-50); bus-03 beside it hears them from S03 on to S06,
    beyond bus-02's ride, at -80 among riders at -60 (20 dB under): it never carried
    them. Before the clause both legs were held (bus-02 does not cover bus-03). (On to
    S07, two stops past S05, bus-03 carried them: no bus hears a rider it does not carry
    past a further stop; ``changes_beside`` boards them there at S05, both charged.)"""
    w = env.world
    w.ride(
        "r0001", "bus-02", board=3, alight=5, t=T0, rssi_med=-50, adverts_per_s=1.1, riders_lvl=-50
    )
    w.ride(
        "r0001",
        "bus-03",
        board=3,
        alight=6,
        t=T0 + 5,
        rssi_med=-80,
        adverts_per_s=0.5,
        riders_lvl=-60,
    )
    await _bus_02_wins_online_as_offline(env)


async def test_a_hop_beside_within_a_ride_is_dropped_online(env: Env) -> None:
    """A hop on a bus beside, within a ride that began and ended minutes around it, settles
    online as offline by the 5-dB rate margin: r0001 rides bus-02 from S01 to S08 (-76 dBm
    among riders at -75); bus-03 claims them S03 -> S05 at -85, 9 dB weaker, with alike
    advert rates. Before the rule both legs were held."""
    w = env.world
    w.ride("r0001", "bus-02", board=1, alight=8, t=T0, rssi_med=-76, adverts_per_s=1.0)
    w.ride(
        "r0001",
        "bus-03",
        board=3,
        alight=5,
        t=T0 + 200,
        rssi_med=-85,
        adverts_per_s=0.85,
        riders_lvl=-74,
    )
    await _bus_02_wins_online_as_offline(env)


async def test_riders_levels_no_radio_hears_do_not_stall_the_settlement(env: Env) -> None:
    """``evidence.riders_lvl`` is free evidence, read as a float: bus-03's two pieces of one
    ride beside bus-02, one saying its riders were at +1.5e308 dBm, the other at
    -1.5e308, made the overlap rule's time-weighted sum ``inf - inf`` (``math.fsum``
    raised ValueError out of the settlement pass: no bus settled). A level outside
    -200..50 dBm now reads as absent: the overlap is held as for an event without it."""
    w = env.world
    w.ride("r0001", "bus-02", board=3, alight=5, t=T0 + 400, rssi_med=-27, riders_lvl=-48)
    w.ride(
        "r0001",
        "bus-03",
        board=3,
        alight=5,
        t=T0 + 405,
        rssi_med=-64,
        riders_lvl=[1.5e308, -1.5e308],
    )
    events = [e for c in w.buses.values() for e in c.events]
    assert [e["evidence"]["riders_lvl"] for e in events if e["bus_id"] == "bus-03"] == [
        1.5e308,
        -1.5e308,
    ]
    await env.ingest(events)
    await env.worker.settle_once()
    rows = await env.rows(rider_segments, "event_id")
    assert {(r["bus_id"], r["riders_lvl"]) for r in rows} == {
        ("bus-02", -48.0),
        ("bus-03", None),
    }
    js = (await env.client.get("/riders/r0001/journeys")).json()["journeys"]
    assert {j["legs"][0]["bus_id"]: j["flags"] for j in js} == {
        "bus-02": ["review", "suspected_replay"],
        "bus-03": ["review", "suspected_replay"],
    }
    await _recomputed_as_offline(env, events, "r0001")  # (the offline reading alike)


async def test_an_advert_count_beyond_32_bits_settles_without_it(env: Env) -> None:
    """``evidence.n_adv`` is free evidence (any JSON integer the ledger takes) but
    ``rider_segments.n_adv`` is a 32-bit column: with 2**31, PostgreSQL refused the row
    and every settlement pass failed (StoreError), stalling every bus. Now the count reads
    as absent (as any invalid one) and the ride is charged."""
    w = env.world
    fields = w.segment_fields(
        "r0002",
        route_id="R1",
        trip_id="T1",
        start=(T0 + 60.0, "S01", "boarded"),
        end=(T0 + 400.0, "S04", "alighted"),
        distance_m=2400.0,
    )
    fields["evidence"]["n_adv"] = 2**31
    await env.ingest([w.buses["bus-01"].emit(fields)])
    await env.worker.settle_once()
    (seg,) = await env.rows(rider_segments, "event_id")
    assert seg["n_adv"] is None
    (j,) = (await env.client.get("/riders/r0002/journeys")).json()["journeys"]
    assert j["charged"] is True


async def test_invalid_evidence_values_are_counted_and_logged_online_and_offline(
    env: Env,
) -> None:
    """An evidence value settlement reads (``rssi_med``, ``riders_lvl``, ``n_adv``) but
    finds invalid reads as absent (the event is not rejected: that would stall its bus's
    chain); it is counted (``SettleReport.evidence_invalid``, the Prometheus counter
    ``busbell_settlement_evidence_invalid_total{key}``; offline ``warnings``
    ``evidence_invalid_<key>``) and logged (``segment_evidence_invalid``). Valid values,
    absent keys and ``null`` are not. The rides are charged as before."""
    w = env.world

    def ride(rider: str, t: float, **evidence: Any) -> dict[str, Any]:
        fields = w.segment_fields(
            rider,
            route_id="R1",
            trip_id="T1",
            start=(t, "S01", "boarded"),
            end=(t + 340.0, "S04", "alighted"),
            distance_m=2400.0,
        )
        fields["evidence"].update(evidence)
        return w.buses["bus-01"].emit(fields)

    events = [
        ride("r0001", T0 + 60.0, rssi_med="loud", riders_lvl=-50.5, n_adv=300),
        ride("r0002", T0 + 60.0, rssi_med=-70, riders_lvl=1e9, n_adv=2**40),
        ride("r0003", T0 + 60.0, rssi_med=-70, riders_lvl=None, n_adv=True),
        ride("r0001", T0 + 3600.0, rssi_med=-61.5, riders_lvl=-50, n_adv=0),
        ride("r0002", T0 + 3600.0),  # (none of the three)
    ]
    before = {
        k: EVIDENCE_INVALID.labels(k)._value.get() for k in ("n_adv", "riders_lvl", "rssi_med")
    }
    await env.ingest(events)
    with capture_logs() as logs:
        report = await env.worker.settle_once()
    counts = {"n_adv": 2, "riders_lvl": 1, "rssi_med": 1}
    assert report.evidence_invalid == counts
    assert report.to_json()["evidence_invalid"] == counts
    assert {k: EVIDENCE_INVALID.labels(k)._value.get() - v for k, v in before.items()} == counts
    flagged = [e for e in logs if e["event"] == "segment_evidence_invalid"]
    assert [(e["event_id"], e["keys"], e["log_level"]) for e in flagged] == [
        (events[0]["event_id"], ["rssi_med"], "warning"),
        (events[1]["event_id"], ["n_adv", "riders_lvl"], "warning"),
        (events[2]["event_id"], ["n_adv"], "warning"),
    ]
    segs = {r["event_id"]: r for r in await env.rows(rider_segments, "event_id")}
    assert [
        (
            segs[e["event_id"]]["rssi_med"],
            segs[e["event_id"]]["riders_lvl"],
            segs[e["event_id"]]["n_adv"],
        )
        for e in events
    ] == [
        (None, -50.5, 300),
        (-70.0, None, None),
        (-70.0, None, None),
        (-61.5, -50.0, 0),
        (None, None, None),
    ]
    assert all(j["charged"] for j in await env.rows(journeys, "journey_id"))
    assert sorted(
        x for leg in await env.rows(legs, "journey_id", "leg_no") for x in leg["event_ids"]
    ) == sorted(e["event_id"] for e in events)
    with capture_logs() as logs:
        offline = await _recomputed_as_offline(env, events, "r0001")
    assert offline.stats.warnings == {f"evidence_invalid_{k}": n for k, n in counts.items()}
    assert sorted(
        (e["event_id"], e["keys"]) for e in logs if e["event"] == "segment_evidence_invalid"
    ) == sorted((e["event_id"], e["keys"]) for e in flagged)
    # a pass with nothing new counts nothing again
    report = await env.worker.settle_once()
    assert not report.evidence_invalid


async def test_invalid_evidence_of_an_event_resolved_later_is_counted_when_it_resolves(
    env: Env,
) -> None:
    """An event of a rider not enrolled yet is held (``unresolved_rid``), not counted; its
    invalid evidence value is counted and logged once, in the pass whose retry resolves
    it (the rider enrolled meanwhile), as any segment's (docs/backend.md)."""
    w = env.world
    w.keys["stranger"] = derive_rider_keys(b"\x42" * 16)
    fields = w.segment_fields(
        "stranger",
        route_id="R1",
        trip_id="T1",
        start=(T0 + 60.0, "S01", "boarded"),
        end=(T0 + 400.0, "S04", "alighted"),
        distance_m=2400.0,
    )
    fields["evidence"].update(rssi_med="loud")
    event = w.buses["bus-01"].emit(fields)
    await env.ingest([event])
    report = await env.worker.settle_once()
    assert (report.unresolved, report.evidence_invalid) == ({"unresolved_rid": 1}, {})
    await env.enrol_key("stranger", b"\x42" * 16, "adult")
    before = EVIDENCE_INVALID.labels("rssi_med")._value.get()
    with capture_logs() as logs:
        report = await env.worker.settle_once()
    assert report.evidence_invalid == {"rssi_med": 1}
    assert EVIDENCE_INVALID.labels("rssi_med")._value.get() == before + 1
    assert [
        (e["event_id"], e["keys"]) for e in logs if e["event"] == "segment_evidence_invalid"
    ] == [(event["event_id"], ["rssi_med"])]
    (seg,) = await env.rows(rider_segments, "event_id")
    assert (seg["event_id"], seg["rssi_med"]) == (event["event_id"], None)
    report = await env.worker.settle_once()
    assert not report.evidence_invalid


async def test_invalid_evidence_floods_no_log_and_every_event_is_counted(env: Env) -> None:
    """``segment_evidence_invalid`` was logged once per event: a bus (or anyone holding
    its key) sending invalid evidence in every event wrote a line each. It goes through
    the per-event warning budget the ingest uses (:class:`backend._ingest_bounds.LogBudget`,
    per event, keys and bus): ``burst`` lines a window, the next one let through carrying
    ``suppressed=N``. The counters (report, Prometheus, offline ``warnings``) stay exact."""
    from backend._ingest_bounds import LogBudget

    w = env.world

    def ride(rider: str, t: float) -> dict[str, Any]:
        fields = w.segment_fields(
            rider,
            route_id="R1",
            trip_id="T1",
            start=(t, "S01", "boarded"),
            end=(t + 100.0, "S02", "alighted"),
            distance_m=800.0,
        )
        fields["evidence"].update(rssi_med="loud")
        return w.buses["bus-01"].emit(fields)

    events = [ride(f"r000{1 + k % 3}", T0 + 200.0 * k) for k in range(25)]
    await env.ingest(events)
    clock = [NOW]
    worker = SettlementWorker(
        env.engine,
        env.worker.builder.feed,
        env.rules,
        clock=lambda: clock[0],
        log_budget=LogBudget(burst=3, window_s=60.0),
    )
    before = EVIDENCE_INVALID.labels("rssi_med")._value.get()
    with capture_logs() as logs:
        report = await worker.settle_once()
    flagged = [e for e in logs if e["event"] == "segment_evidence_invalid"]
    assert [e["event_id"] for e in flagged] == [e["event_id"] for e in events[:3]]
    assert report.evidence_invalid == {"rssi_med": 25}
    assert EVIDENCE_INVALID.labels("rssi_med")._value.get() == before + 25
    # a window later, the next line says how many were not logged
    late = ride("r0001", T0 + 200.0 * 25)
    await env.ingest([late])
    clock[0] = NOW + 60.0
    with capture_logs() as logs:
        report = await worker.settle_once()
    assert [
        (e["event_id"], e["suppressed"]) for e in logs if e["event"] == "segment_evidence_invalid"
    ] == [(late["event_id"], 22)]
    assert report.evidence_invalid == {"rssi_med": 1}

    # offline (busbell backend settle) alike
    feed = load_gtfs(w.gtfs)
    ring = RiderKeyring()
    for rider_id, token_key in sorted(w.token_keys.items()):
        ring.add(rider_id, token_key)
    builder = JourneyBuilder(FareEngine(load_rules(timezone=feed.timezone)), feed, CARRIED)
    offline = Settler(
        read_devices(w.devices_csv),
        Resolver(ring),
        builder,
        log_budget=LogBudget(burst=3, window_s=60.0),
        clock=lambda: 0.0,
    )
    with capture_logs() as logs:
        for e in [*events, late]:
            offline.feed_event(e)
        result = offline.finish()
    assert result.stats.warnings == {"evidence_invalid_rssi_med": 26}
    assert [e["event_id"] for e in logs if e["event"] == "segment_evidence_invalid"] == [
        e["event_id"] for e in events[:3]
    ]


async def _settled_one_journey(env: Env) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every bus's events of the world ingested and settled once: the events and r0001's
    one journey (as the API returns it)."""
    events = [e for c in env.world.buses.values() for e in c.events]
    await env.ingest(events)
    await env.worker.settle_once()
    (j,) = (await env.client.get("/riders/r0001/journeys")).json()["journeys"]
    return events, j


async def test_a_transfer_stop_seen_on_the_next_bus_settles_online_as_offline(env: Env) -> None:
    """Transfer stops online as offline: r0001 leaves bus-01 (R1) at S05 and is seen
    boarding bus-02 (the express R4, which passes S05) at S06 100 s later, 800 m on along
    bus-01's trip: too soon to have walked, so bus-01 carried them to S06 (its alighting
    faded a stop early)."""
    w = env.world
    w.ride("r0001", "bus-01", board=1, alight=5, t=T0)  # 400 s at 8 m/s
    w.ride("r0001", "bus-02", board=6, alight=12, t=T0 + 500, route_id="R4", trip_id="T4")
    events, j = await _settled_one_journey(env)
    assert [(x["bus_id"], x["board_stop_id"], x["alight_stop_id"]) for x in j["legs"]] == [
        ("bus-01", "S01", "S06"),
        ("bus-02", "S06", "S12"),
    ]
    assert j["flags"] == ["transfer_stop"]
    assert j["fare_krw"] == _price(
        env.rules,
        [("R1", "gyeonggi_city", T0, 4000.0), ("R4", "gyeonggi_city", T0 + 500, 4800.0)],
        "adult",
    )
    await _recomputed_as_offline(env, events, "r0001")


async def test_a_change_of_buses_at_one_stop_settles_online_as_offline(env: Env) -> None:
    """A change at one stop online as offline: bus-02 (R2) stood at S05 and boarded
    r0001 there 90 s before bus-01 closed its doors on them: both legs charged, not held
    as a suspected replay (unseen seed 36, cell 11: five riders held on both buses)."""
    w = env.world
    w.ride("r0001", "bus-01", board=1, alight=5, t=T0)  # 400 s at 8 m/s
    w.ride("r0001", "bus-02", board=5, alight=12, t=T0 + 310, route_id="R2", trip_id="T2")
    events, j = await _settled_one_journey(env)
    assert j["charged"]
    assert [(x["bus_id"], x["board_stop_id"], x["alight_stop_id"]) for x in j["legs"]] == [
        ("bus-01", "S01", "S05"),
        ("bus-02", "S05", "S12"),
    ]
    assert j["fare_krw"] == _price(
        env.rules,
        [("R1", "gyeonggi_city", T0, 3200.0), ("R2", "gyeonggi_wide_area", T0 + 310, 5600.0)],
        "adult",
    )
    await _recomputed_as_offline(env, events, "r0001")


async def test_a_cloned_token_at_the_riders_stop_is_held_online_as_offline(env: Env) -> None:
    """A copy of r0001's token boards bus-02 (R2) at S05 300 s before bus-01 lets r0001
    off there, and rides on: longer than change_overlap_s (180 s), no change a bus
    waits for. Both legs held as a suspected replay online as offline, neither charged;
    each counted and logged ``suspected_replay_held`` once (r0001's own ride too, charged
    before the clone's events came), not again when the rider-day is recomputed."""
    w = env.world
    w.ride("r0001", "bus-01", board=1, alight=5, t=T0)  # 400 s at 8 m/s
    w.ride("r0001", "bus-02", board=5, alight=12, t=T0 + 100, route_id="R2", trip_id="T2")
    events = [e for c in env.world.buses.values() for e in c.events]
    before = SUSPECTED_REPLAYS._value.get()
    # bus-01's events first: r0001's own ride, charged (its journey id is the leg's)
    await env.ingest(env.world.buses["bus-01"].events)
    with capture_logs() as logs:
        report = await env.worker.settle_once()
    assert report.charges == 1
    assert report.suspected_replays == 0
    assert not [e for e in logs if e["event"] == "suspected_replay_held"]
    # then the clone's: the charged ride is held now, under the same journey id
    await env.ingest(env.world.buses["bus-02"].events)
    with capture_logs() as logs:
        report = await env.worker.settle_once()
    held = [e for e in logs if e["event"] == "suspected_replay_held"]
    assert sorted((e["bus_id"], e["board_stop_id"], e["alight_stop_id"]) for e in held) == [
        ("bus-01", "S01", "S05"),
        ("bus-02", "S05", "S12"),
    ]
    assert {e["rider_id"] for e in held} == {"r0001"}
    assert report.suspected_replays == 2
    assert report.to_json()["suspected_replays"] == 2
    assert SUSPECTED_REPLAYS._value.get() == before + 2
    js = (await env.client.get("/riders/r0001/journeys")).json()["journeys"]
    assert [(j["charged"], j["fare_krw"]) for j in js] == [(False, 0), (False, 0)]
    assert all("suspected_replay" in j["flags"] for j in js)
    with capture_logs() as logs:
        offline = await _recomputed_as_offline(env, events, "r0001")
    assert not [e for e in logs if e["event"] == "suspected_replay_held"]
    assert SUSPECTED_REPLAYS._value.get() == before + 2
    assert [j.charged for j in offline.journeys] == [False, False]


async def test_a_change_to_a_bus_bunched_beside_settles_online_as_offline(env: Env) -> None:
    """The bunched change online as offline: bus-01 let r0001 off at S05 (-57 dBm, riders
    -51) and heard them on to S06 37 dB under its riders (on bus-02 beside it, which drew
    up at S05 first and waited); bus-01's leg ends at S05, its tail held, both rides of
    the change charged (both held as a suspected replay before)."""
    w = env.world
    w.ride("r0001", "bus-01", board=1, alight=5, t=T0, rssi_med=-57, riders_lvl=-51.0)
    w.ride("r0001", "bus-01", board=5, alight=6, t=T0 + 400, rssi_med=-88, riders_lvl=-51.0)
    w.ride(
        "r0001",
        "bus-02",
        board=5,
        alight=12,
        t=T0 + 360,
        route_id="R2",
        trip_id="T2",
        rssi_med=-56,
        riders_lvl=-56.0,
    )
    events = [e for c in env.world.buses.values() for e in c.events]
    await env.ingest(events)
    await env.worker.settle_once()
    got = (await env.client.get("/riders/r0001/journeys")).json()["journeys"]
    legs = sorted(
        (j["charged"], x["bus_id"], x["board_stop_id"], x["alight_stop_id"])
        for j in got
        for x in j["legs"]
    )
    assert legs == [
        (False, "bus-01", "S05", "S06"),
        (True, "bus-01", "S01", "S05"),
        (True, "bus-02", "S05", "S12"),
    ]
    await _recomputed_as_offline(env, events, "r0001")


async def test_a_change_between_buses_bunched_from_one_stop_settles_online_as_offline(
    env: Env,
) -> None:
    """(review of 9c6112a) Two buses bunched from S03 online as offline: bus-01 saw r0001
    board at S03 and leave at S05 (16 dB under its riders), bus-02 confirmed them boarding
    at S03 20 s later (8 dB under its own) and carried them to S12: neither the stronger,
    the buses together at S03 by bus-01's trip, so the change is at S05, both charged."""
    w = env.world
    w.ride("r0001", "bus-01", board=3, alight=5, t=T0, rssi_med=-56, riders_lvl=-40.0)
    w.ride(
        "r0001",
        "bus-02",
        board=3,
        alight=12,
        t=T0 + 20,
        route_id="R2",
        trip_id="T2",
        rssi_med=-55,
        riders_lvl=-47.0,
    )
    events, j = await _settled_one_journey(env)
    assert j["charged"]
    assert [(x["bus_id"], x["board_stop_id"], x["alight_stop_id"]) for x in j["legs"]] == [
        ("bus-01", "S03", "S05"),
        ("bus-02", "S05", "S12"),
    ]
    await _recomputed_as_offline(env, events, "r0001")


async def test_a_change_from_a_bus_driven_beside_settles_online_as_offline(env: Env) -> None:
    """The bus beside online as offline: bus-02 (R2) left S03 beside bus-01 and heard
    r0001 19 dB weaker until bus-01 let them off at S05, then carried them to S12 without
    its edge seeing the change: bus-02 boards them at S05, both charged (held on both
    buses before)."""
    w = env.world
    w.ride("r0001", "bus-01", board=1, alight=5, t=T0, rssi_med=-48, riders_lvl=-46.0)
    w.ride(
        "r0001",
        "bus-02",
        board=3,
        alight=12,
        t=T0 + 200,
        route_id="R2",
        trip_id="T2",
        rssi_med=-67,
        riders_lvl=-56.0,
    )
    events, j = await _settled_one_journey(env)
    assert j["charged"]
    assert [(x["bus_id"], x["board_stop_id"], x["alight_stop_id"]) for x in j["legs"]] == [
        ("bus-01", "S01", "S05"),
        ("bus-02", "S05", "S12"),
    ]
    assert j["flags"] == ["transfer_stop"]
    assert j["fare_krw"] == _price(
        env.rules,
        [("R1", "gyeonggi_city", T0, 3200.0), ("R2", "gyeonggi_wide_area", T0 + 400, 5600.0)],
        "adult",
    )
    await _recomputed_as_offline(env, events, "r0001")


async def test_a_dropped_overlap_is_counted_logged_and_kept_for_operators(env: Env) -> None:
    """A leg ``overlap_winner`` drops (bus-03 heard r0001 20 dB weaker while bus-02 carried
    them: a bus alongside, or a weak copy of the token) is evidence: kept as an uncharged
    journey flagged ``overlap_dropped``, counted (``busbell_settlement_overlaps_dropped``,
    the pass's report) and logged ``overlap_dropped_held`` with the bus that won, once: a
    recomputation with the same events notes nothing again."""
    w = env.world
    w.ride("r0001", "bus-02", board=1, alight=10, t=T0, rssi_med=-58)
    w.ride("r0001", "bus-03", board=3, alight=5, t=T0 + 200, rssi_med=-78)
    before = OVERLAPS_DROPPED._value.get()
    replays = SUSPECTED_REPLAYS._value.get()
    await env.ingest([e for c in w.buses.values() for e in c.events])
    with capture_logs() as logs:
        report = await env.worker.settle_once()
    (noted,) = [e for e in logs if e["event"] == "overlap_dropped_held"]
    assert noted["log_level"] == "info"
    assert (noted["rider_id"], noted["bus_id"], noted["beside_bus_ids"]) == (
        "r0001",
        "bus-03",
        ["bus-02"],
    )
    assert (noted["board_stop_id"], noted["alight_stop_id"]) == ("S03", "S05")
    assert report.overlaps_dropped == 1
    assert report.to_json()["overlaps_dropped"] == 1
    assert report.suspected_replays == 0
    assert OVERLAPS_DROPPED._value.get() == before + 1
    assert SUSPECTED_REPLAYS._value.get() == replays
    assert any(e["event"] == "settlement_pass_completed" for e in logs)
    (dropped,) = [j for j in await env.rows(journeys, "journey_id") if not j["charged"]]
    assert dropped["journey_id"] == noted["journey_id"]
    assert dropped["flags"] == ["overlap_dropped"]
    with capture_logs() as logs:
        await env.worker.recompute("r0001", DAY, now=NOW + 50)
        report = await env.worker.settle_once()
    assert not [e for e in logs if e["event"] == "overlap_dropped_held"]
    assert report.overlaps_dropped == 0
    assert OVERLAPS_DROPPED._value.get() == before + 1


async def test_a_dropped_legs_beside_bus_ids_are_the_buses_that_carried_the_rider_meanwhile(
    env: Env,
) -> None:
    """``overlap_dropped_held``'s ``beside_bus_ids`` names the buses of the rider's other
    legs that overlap the dropped one and won: not a bus that carried the rider earlier or
    later that day (r0001 on bus-01 an hour before and after), not another leg dropped
    beside it (r0002 heard weakly by bus-01 and bus-03 while bus-02 carried them). Review
    of 1a76443: each of these three conditions dropped passed every test."""
    w = env.world
    w.ride("r0001", "bus-01", board=1, alight=3, t=T0 - 3600)
    w.ride("r0001", "bus-02", board=1, alight=10, t=T0, rssi_med=-58)
    w.ride("r0001", "bus-03", board=3, alight=5, t=T0 + 200, rssi_med=-78)
    w.ride("r0001", "bus-01", board=10, alight=8, t=T0 + 3600, trip_id="T1R")
    w.ride("r0002", "bus-02", board=1, alight=10, t=T0, rssi_med=-58)
    w.ride("r0002", "bus-03", board=3, alight=5, t=T0 + 200, rssi_med=-78)
    w.ride("r0002", "bus-01", board=4, alight=6, t=T0 + 300, rssi_med=-80)
    await env.ingest([e for c in w.buses.values() for e in c.events])
    with capture_logs() as logs:
        report = await env.worker.settle_once()
    noted = sorted(
        (e["rider_id"], e["bus_id"], e["beside_bus_ids"])
        for e in logs
        if e["event"] == "overlap_dropped_held"
    )
    assert noted == [
        ("r0001", "bus-03", ["bus-02"]),
        ("r0002", "bus-01", ["bus-02"]),
        ("r0002", "bus-03", ["bus-02"]),
    ]
    assert (report.overlaps_dropped, report.suspected_replays) == (3, 0)


async def test_a_leg_held_as_a_suspected_replay_and_then_dropped_is_noted_as_dropped(
    env: Env,
) -> None:
    """A leg stored held as a suspected replay and held ``overlap_dropped`` by a later
    recomputation (here the operator turned overlap settling on: the RSSI margin decides
    from then on) keeps its journey id (the same events) but is new as dropped: counted and
    logged ``overlap_dropped_held`` then, once. Only the same flag stored held before makes a
    held leg not new (review of 1a76443: keyed by journey id alone, it was never noted)."""
    w = env.world
    w.ride("r0001", "bus-02", board=1, alight=10, t=T0, rssi_med=-58)
    w.ride("r0001", "bus-03", board=3, alight=5, t=T0 + 200, rssi_med=-78)
    await env.ingest([e for c in w.buses.values() for e in c.events])
    feed = load_gtfs(w.gtfs)
    holding = SettlementWorker(
        env.engine, feed, env.rules, clock=lambda: NOW, policy=JourneyPolicy(overlap_margin_db=None)
    )
    with capture_logs() as logs:
        await holding.settle_once()
    held = sorted((e["event"], e["bus_id"]) for e in logs if e["event"].endswith("_held"))
    assert held == [("suspected_replay_held", "bus-02"), ("suspected_replay_held", "bus-03")]
    before = {r["journey_id"]: r["flags"] for r in await env.rows(journeys, "journey_id")}
    dropped = OVERLAPS_DROPPED._value.get()
    replays = SUSPECTED_REPLAYS._value.get()
    with capture_logs() as logs:
        await env.worker.recompute("r0001", DAY, now=NOW + 50)
    (noted,) = [e for e in logs if e["event"].endswith("_held")]
    assert (noted["event"], noted["bus_id"]) == ("overlap_dropped_held", "bus-03")
    assert "suspected_replay" in before[noted["journey_id"]]  # the same journey, held so before
    assert OVERLAPS_DROPPED._value.get() == dropped + 1
    assert SUSPECTED_REPLAYS._value.get() == replays
    with capture_logs() as logs:
        await env.worker.recompute("r0001", DAY, now=NOW + 60)
    assert not [e for e in logs if e["event"].endswith("_held")]
    assert OVERLAPS_DROPPED._value.get() == dropped + 1


async def _fail_the_next_commit(env: Env) -> Any:
    """Make the next transaction that writes a journey fail: at its COMMIT on PostgreSQL
    (a deferred constraint trigger), at the write on SQLite. Returns an undo."""
    pg = env.engine.dialect.name == "postgresql"
    async with env.engine.begin() as conn:
        if pg:
            await conn.exec_driver_sql(
                "CREATE FUNCTION busbell_test_fail() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'forced rollback at commit'; END $$"
            )
            await conn.exec_driver_sql(
                "CREATE CONSTRAINT TRIGGER busbell_test_fail AFTER INSERT ON journeys "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION busbell_test_fail()"
            )
        else:
            await conn.exec_driver_sql(
                "CREATE TRIGGER busbell_test_fail BEFORE INSERT ON journeys "
                "BEGIN SELECT RAISE(ABORT, 'forced rollback'); END"
            )

    async def undo() -> None:
        async with env.engine.begin() as conn:
            await conn.exec_driver_sql(
                "DROP TRIGGER busbell_test_fail ON journeys"
                if pg
                else "DROP TRIGGER busbell_test_fail"
            )

    return undo


async def test_held_legs_are_counted_and_logged_after_the_commit_once(env: Env) -> None:
    """84b78ee counted and logged suspected replays inside the recomputation's transaction:
    a recomputation rolled back (here the database refuses it at COMMIT on PostgreSQL) and
    done again counted and logged them twice. Now nothing is counted or logged until the
    rider-day commits: the failed pass notes nothing, the next one each held leg once."""
    w = env.world
    w.ride("r0001", "bus-01", board=1, alight=5, t=T0)
    w.ride("r0001", "bus-02", board=5, alight=12, t=T0 + 100, route_id="R2", trip_id="T2")
    w.ride("r0002", "bus-02", board=1, alight=10, t=T0, rssi_med=-58)
    w.ride("r0002", "bus-03", board=3, alight=5, t=T0 + 200, rssi_med=-78)
    replays, dropped = SUSPECTED_REPLAYS._value.get(), OVERLAPS_DROPPED._value.get()
    days = settlement_module.RIDER_DAYS._value.get()
    await env.ingest([e for c in w.buses.values() for e in c.events])
    undo = await _fail_the_next_commit(env)
    with capture_logs() as logs, pytest.raises(StoreError):
        await env.worker.settle_once()
    assert not [e for e in logs if e["event"].endswith("_held")]
    assert SUSPECTED_REPLAYS._value.get() == replays
    assert OVERLAPS_DROPPED._value.get() == dropped
    assert settlement_module.RIDER_DAYS._value.get() == days
    assert await env.rows(journeys, "journey_id") == []
    await undo()
    with capture_logs() as logs:
        report = await env.worker.settle_once()
    held = sorted(
        (e["event"], e["rider_id"], e["bus_id"]) for e in logs if e["event"].endswith("_held")
    )
    assert held == [
        ("overlap_dropped_held", "r0002", "bus-03"),
        ("suspected_replay_held", "r0001", "bus-01"),
        ("suspected_replay_held", "r0001", "bus-02"),
    ]
    assert (report.suspected_replays, report.overlaps_dropped, report.rider_days) == (2, 1, 2)
    assert SUSPECTED_REPLAYS._value.get() == replays + 2
    assert OVERLAPS_DROPPED._value.get() == dropped + 1
    assert settlement_module.RIDER_DAYS._value.get() == days + 2


async def test_a_piece_carried_is_uncharged_online_when_the_riders_other_bus_reports_late(
    env: Env,
) -> None:
    """A lone piece carried on bus-01 is charged; bus-02's confirmed segment of the same
    rider over that time, uploaded late, takes the charge away on the next pass (the rider
    was on bus-02), online as offline."""
    w = env.world
    piece = _carried_piece(w, "r0001", (2, -93.7, -92.5))
    await env.ingest([piece])
    await env.worker.settle_once(now=NOW)
    (j,) = (await env.client.get("/riders/r0001/journeys")).json()["journeys"]
    assert [x["bus_id"] for x in j["legs"]] == ["bus-01"]
    other = w.buses["bus-02"].emit(
        w.segment_fields(
            "r0001",
            route_id="R2",
            trip_id="T2",
            start=(T0 + 50.0, "S02", "boarded"),
            end=(T0 + 400.0, "S06", "alighted"),
            distance_m=3200.0,
        )
    )
    await env.ingest([other])
    await env.worker.settle_once(now=NOW + 10)
    (j,) = (await env.client.get("/riders/r0001/journeys")).json()["journeys"]
    assert [x["bus_id"] for x in j["legs"]] == ["bus-02"]
    await _recomputed_as_offline(env, [piece, other], "r0001")
