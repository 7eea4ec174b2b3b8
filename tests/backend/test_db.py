"""The ledger schema: migrations on SQLite and PostgreSQL, metadata agreement, upserts."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

from backend._db import (
    SQLITE_PAGE_SIZE,
    chain_state,
    create_engine,
    current_revision,
    fare_events,
    fleet_keys,
    head_revision,
    insert_ignore,
    is_postgres,
    journeys,
    metadata,
    migrate,
    rider_segments,
    settlement_dirty,
)
from busbell import StoreError


async def test_migrate_is_idempotent_and_reaches_head(db_url: str) -> None:
    eng = create_engine(db_url)
    try:
        assert await current_revision(eng) is None
        await migrate(db_url)
        await migrate(db_url)
        assert await current_revision(eng) == head_revision()
    finally:
        await eng.dispose()


async def test_concurrent_migrations(db_url: str) -> None:
    await asyncio.gather(*(migrate(db_url) for _ in range(3)))
    eng = create_engine(db_url)
    try:
        assert await current_revision(eng) == head_revision()
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


def _old_fare_events() -> sa.TableClause:
    """``fare_events`` as before migration 0013 (``evidence`` a JSON column), for inserts."""
    return sa.table(
        "fare_events",
        *(
            sa.column(c.name, sa.JSON() if c.name == "evidence" else c.type)
            for c in fare_events.columns
        ),
    )


def _event_row(event_id: str = "e1", seq: int = 1, evidence: object = None) -> dict[str, object]:
    """A ``fare_events`` row."""
    row: dict[str, object] = {
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
    row.update(event_id=event_id, seq=seq)
    if evidence is not None:
        row["evidence"] = evidence
    return row


async def test_unique_constraints_and_insert_ignore(engine: AsyncEngine) -> None:
    row = _event_row()
    async with engine.begin() as conn:
        stmt = insert_ignore(fare_events, conn.dialect.name)
        await conn.execute(stmt, [row])
        await conn.execute(stmt, [row, dict(row, event_id="e3")])  # (bus_id, seq) conflict
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


async def test_a_new_sqlite_ledger_gets_large_pages_an_old_one_keeps_its_own(
    tmp_path: Path,
) -> None:
    import sqlite3

    new, old = tmp_path / "new.db", tmp_path / "old.db"
    with sqlite3.connect(old) as con:  # made before this setting: 4 KiB pages
        con.execute("PRAGMA page_size = 4096")
        con.execute("CREATE TABLE t (x)")
    for path in (new, old):
        await migrate(f"sqlite+aiosqlite:///{path}")
    sizes = []
    for path in (new, old):
        with sqlite3.connect(path) as con:
            sizes.append(con.execute("PRAGMA page_size").fetchone()[0])
    assert sizes == [SQLITE_PAGE_SIZE, 4096]


async def test_migrate_unreachable_database() -> None:
    before = set(threading.enumerate())
    with pytest.raises(StoreError, match="cannot migrate"):
        await migrate("sqlite+aiosqlite:////nonexistent-dir/x/ledger.db")
    # aiosqlite's connection thread reports its stop back to the loop a moment later:
    # wait until the threads the failed connects started have ended (the loop is still
    # running then, so the report lands on it and not on a closed loop).
    async with asyncio.timeout(10):
        while any(
            "_connection_worker_thread" in t.name and t.is_alive()
            for t in set(threading.enumerate()) - before
        ):
            await asyncio.sleep(0.01)


async def test_0004_backfills_rssi_and_resettles_held_overlaps(db_url: str) -> None:
    eng = create_engine(db_url)
    try:
        await migrate(eng, "0003")
        seg = {
            "rider_id": "r1",
            "bus_id": "B1",
            "interval": 1,
            "route_id": None,
            "trip_id": None,
            "start_t": 1.0,
            "start_stop_id": None,
            "start_cause": "boarded",
            "end_t": 2.0,
            "end_stop_id": None,
            "end_cause": "alighted",
            "distance_m": 0.0,
            "settled_at": 3.0,
        }
        journey = {
            "first_board_t": 1.0,
            "last_alight_t": 2.0,
            "fare_krw": 0,
            "category": "adult",
            "ruleset_id": "x",
            "explain": [],
            "computed_at": 3.0,
        }
        async with eng.begin() as conn:
            await conn.execute(
                _old_fare_events().insert(),
                [
                    _event_row("e1", 1, {"rssi_med": -61, "n": 9}),
                    _event_row("e2", 2, {"n": 3}),  # no strength: stays NULL
                    _event_row("e3", 3, {"rssi_med": -80.5}),
                ],
            )
            await conn.execute(
                rider_segments.insert(),
                [
                    dict(seg, event_id="e1", seq=1, rssi_med=None),
                    dict(seg, event_id="e2", seq=2, rssi_med=None),
                    dict(seg, event_id="e3", seq=3, rssi_med=-70.0),  # already set: kept
                ],
            )
            await conn.execute(
                journeys.insert(),
                [
                    dict(
                        journey,
                        journey_id="j1",
                        rider_id="r1",
                        service_day="2026-12-01",
                        charged=False,
                        flags=["review", "suspected_replay"],
                    ),
                    dict(
                        journey,
                        journey_id="j2",
                        rider_id="r2",
                        service_day="2026-12-01",
                        charged=False,
                        flags=["overlap_dropped"],
                    ),
                    dict(
                        journey,
                        journey_id="j3",
                        rider_id="r3",
                        service_day="2026-12-02",
                        charged=True,
                        flags=[],
                    ),
                    dict(
                        journey,
                        journey_id="j4",
                        rider_id="r4",
                        service_day="2026-12-02",
                        charged=False,
                        flags=["review", "suspected_replay"],
                    ),
                ],
            )
            await conn.execute(
                settlement_dirty.insert().values(
                    rider_id="r4", service_day="2026-12-02", marked_at=1.0
                )
            )
        await migrate(eng)
        async with eng.connect() as conn:
            rssi = dict(
                (
                    await conn.execute(
                        sa.select(rider_segments.c.event_id, rider_segments.c.rssi_med)
                    )
                ).all()
            )
            dirty = (
                await conn.execute(
                    sa.select(settlement_dirty).order_by(settlement_dirty.c.rider_id)
                )
            ).all()
    finally:
        await eng.dispose()
    assert rssi == {"e1": -61.0, "e2": None, "e3": -70.0}
    assert [(d.rider_id, d.service_day) for d in dirty] == [
        ("r1", "2026-12-01"),
        ("r4", "2026-12-02"),
    ]
    assert dirty[1].marked_at == 1.0  # an existing mark is left alone


async def test_0013_keys_fare_events_by_bus_and_seq_and_keeps_the_rows(db_url: str) -> None:
    from alembic import command

    from backend._db import _alembic_config

    eng = create_engine(db_url)
    fe = fare_events
    try:
        await migrate(eng, "0012")
        async with eng.begin() as conn:
            old = _old_fare_events()
            await conn.execute(old.insert(), [_event_row("e1", 1), _event_row("e2", 2)])
            await conn.execute(old.insert(), [dict(_event_row("e3", 1), bus_id="B2")])
        await migrate(eng, "0013")
        async with eng.connect() as conn:
            types = await conn.run_sync(
                lambda c: {
                    col["name"]: col["type"] for col in sa.inspect(c).get_columns("fare_events")
                }
            )
            cols = list(types)
            pk = await conn.run_sync(lambda c: sa.inspect(c).get_pk_constraint("fare_events"))
            rows = (await conn.execute(sa.select(fe).order_by(fe.c.bus_id, fe.c.seq))).all()
        assert "id" not in cols
        assert isinstance(types["evidence"], sa.Text)
        assert pk["constrained_columns"] == ["bus_id", "seq"]
        assert [(r.bus_id, r.seq, r.event_id, r.evidence) for r in rows] == [
            ("B1", 1, "e1", {"k": [1, 2]}),
            ("B1", 2, "e2", {"k": [1, 2]}),
            ("B2", 1, "e3", {"k": [1, 2]}),
        ]
        with pytest.raises(sa.exc.IntegrityError):  # (bus_id, seq) stays unique
            async with eng.begin() as conn:
                await conn.execute(fe.insert(), [_event_row("e4", 2)])
        async with eng.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(_alembic_config(c), "0012"))
        async with eng.begin() as conn:  # the id is back, numbered, and new rows get one
            await conn.execute(
                sa.text(
                    "INSERT INTO fare_events (bus_id, seq, event_id, event_hash, prev, rid, "
                    "interval, start_t, start_cause, end_t, end_cause, distance_m, "
                    "proof_first, proof_last, evidence, raw, received_at, worker_id) "
                    "SELECT bus_id, 3, 'e5', event_hash, prev, rid, interval, start_t, "
                    "start_cause, end_t, end_cause, distance_m, proof_first, proof_last, "
                    "evidence, raw, received_at, worker_id FROM fare_events WHERE event_id = 'e1'"
                )
            )
            ids = (
                await conn.execute(sa.text("SELECT event_id, id FROM fare_events ORDER BY id"))
            ).all()
            with pytest.raises(sa.exc.IntegrityError):  # (bus_id, seq) unique again
                async with conn.begin_nested():
                    await conn.execute(
                        sa.text(
                            "INSERT INTO fare_events (bus_id, seq, event_id, event_hash, prev, "
                            "rid, interval, start_t, start_cause, end_t, end_cause, distance_m, "
                            "proof_first, proof_last, evidence, raw, received_at, worker_id) "
                            "SELECT bus_id, seq, 'e6', event_hash, prev, rid, interval, "
                            "start_t, start_cause, end_t, end_cause, distance_m, proof_first, "
                            "proof_last, evidence, raw, received_at, worker_id "
                            "FROM fare_events WHERE event_id = 'e1'"
                        )
                    )
        assert [e for e, _ in ids] == ["e1", "e2", "e3", "e5"]
        assert [i for _, i in ids] == [1, 2, 3, 4]
        await migrate(eng)
        assert await current_revision(eng) == head_revision()
    finally:
        await eng.dispose()


async def _indexes(eng: AsyncEngine, table: str) -> list[tuple[list[str], bool]]:
    """``table``'s unique constraints and indexes: (columns, unique), primary key aside."""

    def read(c: sa.Connection) -> list[tuple[list[str], bool]]:
        insp = sa.inspect(c)
        out = [(list(u["column_names"]), True) for u in insp.get_unique_constraints(table)]
        for ix in insp.get_indexes(table):
            cols = [str(x) for x in ix["column_names"]]
            if (cols, True) not in out:
                out.append((cols, bool(ix["unique"])))
        return sorted(out)

    async with eng.connect() as conn:
        return await conn.run_sync(read)


async def test_0014_drops_the_event_id_index_and_keeps_the_rows(db_url: str) -> None:
    """Ids are derived from ``(bus_id, seq)`` (ingest checks it): the unique index on
    ``fare_events.event_id`` goes; ``missed_stops`` keeps its own (looked up by id)."""
    from alembic import command

    from backend._db import _alembic_config

    eng = create_engine(db_url)
    fe = fare_events
    try:
        await migrate(eng, "0013")
        async with eng.begin() as conn:
            await conn.execute(fe.insert(), [_event_row("e1", 1), _event_row("e2", 2)])
        assert (["event_id"], True) in await _indexes(eng, "fare_events")
        await migrate(eng, "0014")
        assert await _indexes(eng, "fare_events") == []
        assert (["event_id"], True) in await _indexes(eng, "missed_stops")
        async with eng.begin() as conn:  # one id on two rows: nothing refuses it now
            await conn.execute(fe.insert(), [_event_row("e1", 3)])
            rows = await conn.execute(sa.select(fe.c.seq, fe.c.event_id).order_by(fe.c.seq))
            assert rows.all() == [(1, "e1"), (2, "e2"), (3, "e1")]
            pk = await conn.run_sync(lambda c: sa.inspect(c).get_pk_constraint("fare_events"))
        assert pk["constrained_columns"] == ["bus_id", "seq"]
        with pytest.raises(sa.exc.IntegrityError):  # a downgrade refuses a shared id
            async with eng.begin() as conn:
                await conn.run_sync(lambda c: command.downgrade(_alembic_config(c), "0013"))
        async with eng.begin() as conn:
            await conn.execute(fe.delete().where(fe.c.seq == 3))
        async with eng.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(_alembic_config(c), "0013"))
        assert (["event_id"], True) in await _indexes(eng, "fare_events")
        with pytest.raises(sa.exc.IntegrityError):
            async with eng.begin() as conn:
                await conn.execute(fe.insert(), [_event_row("e1", 3)])
        await migrate(eng)
        assert await current_revision(eng) == head_revision()
        assert await _indexes(eng, "fare_events") == []
    finally:
        await eng.dispose()


async def test_0015_backfills_advert_counts_and_resettles_held_overlaps(db_url: str) -> None:
    eng = create_engine(db_url)
    seg = {
        "rider_id": "r1",
        "bus_id": "B1",
        "interval": 1,
        "route_id": None,
        "trip_id": None,
        "start_t": 1.0,
        "start_stop_id": None,
        "start_cause": "boarded",
        "end_t": 2.0,
        "end_stop_id": None,
        "end_cause": "alighted",
        "distance_m": 0.0,
        "rssi_med": -70.0,
        "settled_at": 3.0,
    }
    journey = {
        "first_board_t": 1.0,
        "last_alight_t": 2.0,
        "fare_krw": 0,
        "category": "adult",
        "ruleset_id": "x",
        "explain": [],
        "computed_at": 3.0,
    }
    try:
        await migrate(eng, "0014")
        async with eng.begin() as conn:
            await conn.execute(
                fare_events.insert(),
                [
                    _event_row("e1", 1, {"n_adv": 79, "rssi_med": -82}),
                    _event_row("e2", 2, {"rssi_med": -80}),  # no count: stays NULL
                    _event_row("e3", 3, {"n_adv": "many"}),  # not a count: stays NULL
                    _event_row("e4", 4, {"n_adv": 5}),  # no segment (unresolved)
                ],
            )
            await conn.execute(
                rider_segments.insert(),
                [dict(seg, event_id=f"e{n}", seq=n) for n in (1, 2, 3)],
            )
            await conn.execute(
                journeys.insert(),
                [
                    dict(
                        journey,
                        journey_id="j1",
                        rider_id="r1",
                        service_day="2026-12-01",
                        charged=False,
                        flags=["review", "suspected_replay"],
                    ),
                    dict(
                        journey,
                        journey_id="j2",
                        rider_id="r2",
                        service_day="2026-12-01",
                        charged=True,
                        flags=["overlap_resolved"],
                    ),
                ],
            )
        await migrate(eng)
        async with eng.connect() as conn:
            rows = await conn.execute(sa.select(rider_segments.c.event_id, rider_segments.c.n_adv))
            counts = {r.event_id: r.n_adv for r in rows}
            dirty = (await conn.execute(sa.select(settlement_dirty))).all()
    finally:
        await eng.dispose()
    assert counts == {"e1": 79, "e2": None, "e3": None}
    assert [(d.rider_id, d.service_day) for d in dirty] == [("r1", "2026-12-01")]
