"""The ledger schema: migrations on SQLite and PostgreSQL, metadata agreement, upserts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

from backend._db import (
    chain_state,
    create_engine,
    current_revision,
    fare_events,
    fleet_keys,
    insert_ignore,
    is_postgres,
    metadata,
    migrate,
)
from busbell import StoreError


async def test_migrate_is_idempotent_and_reaches_head(db_url: str) -> None:
    eng = create_engine(db_url)
    try:
        assert await current_revision(eng) is None
        await migrate(db_url)
        await migrate(db_url)
        assert await current_revision(eng) == "0003"
    finally:
        await eng.dispose()


async def test_concurrent_migrations(db_url: str) -> None:
    await asyncio.gather(*(migrate(db_url) for _ in range(3)))
    eng = create_engine(db_url)
    try:
        assert await current_revision(eng) == "0003"
    finally:
        await eng.dispose()


async def test_migrated_schema_matches_metadata(engine: AsyncEngine) -> None:
    def diff(conn: sa.Connection) -> list[object]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        names = await conn.run_sync(lambda c: sorted(sa.inspect(c).get_table_names()))
    assert set(metadata.tables) <= set(names)


async def test_unique_constraints_and_insert_ignore(engine: AsyncEngine) -> None:
    row = {
        "bus_id": "B1",
        "seq": 1,
        "event_id": "e1",
        "event_hash": "0" * 64,
        "prev": "0" * 64,
        "rid": "ab" * 12,
        "interval": 1,
        "route_id": None,
        "trip_id": None,
        "start_t": 1.0,
        "start_stop_id": None,
        "start_cause": "boarded",
        "end_t": 2.0,
        "end_stop_id": None,
        "end_cause": "lost",
        "distance_m": 0.0,
        "proof_first": "00" * 24,
        "proof_last": "00" * 24,
        "evidence": {"k": [1, 2]},
        "raw": "{}",
        "received_at": 3.0,
        "worker_id": "w",
    }
    async with engine.begin() as conn:
        stmt = insert_ignore(fare_events, conn.dialect.name)
        await conn.execute(stmt, [row])
        await conn.execute(stmt, [row, dict(row, seq=2)])  # event_id conflict: ignored
        await conn.execute(stmt, [dict(row, event_id="e3")])  # (bus_id, seq) conflict
        rows = (await conn.execute(sa.select(fare_events))).all()
    assert len(rows) == 1
    assert rows[0].evidence == {"k": [1, 2]}
    with pytest.raises(sa.exc.IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(fare_events.insert(), [dict(row, event_id="e4")])


async def test_big_integers_and_doubles_round_trip(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            chain_state.insert().values(
                bus_id="B", next_seq=2**40, prev="f" * 64, acked_upto=2**40 - 1, updated_at=0.5
            )
        )
        await conn.execute(
            fleet_keys.insert().values(day=20000, fleet_key="a" * 64, created_at=1.25)
        )
        r = (await conn.execute(sa.select(chain_state))).one()
    assert r.next_seq == 2**40
    assert r.updated_at == 0.5


def test_dialect_detection_and_bad_urls(tmp_path: Path) -> None:
    assert not is_postgres(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"))
    with pytest.raises(StoreError, match="unsupported"):
        create_engine("mysql://localhost/x")
    with pytest.raises(StoreError, match="invalid"):
        create_engine("::not a url::")


async def test_migrate_unreachable_database() -> None:
    with pytest.raises(StoreError, match="cannot migrate"):
        await migrate("sqlite+aiosqlite:////nonexistent-dir/x/ledger.db")
    # aiosqlite's connection thread reports the failure back to the loop a moment later.
    await asyncio.sleep(0.2)
