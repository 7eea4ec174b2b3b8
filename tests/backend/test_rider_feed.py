"""The rider change feed (``riders.changed_seq``) on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from backend._db import rider_change_seq, riders
from backend._denylist import revoke_rider
from backend._resolve import Resolver, RiderKeyring
from backend._rider_feed import RiderFeed
from busbell import derive_rider_keys, rid_for_interval

IV = 2_937_000


def _key(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()[:16]


def _row(rider_id: str, **kw: object) -> dict[str, object]:
    row: dict[str, object] = {
        "rider_id": rider_id,
        "token_key": _key(rider_id).hex(),
        "status": "active",
        "enrolled_at": 1.0,
        "revoked_at": None,
        "kind": "fob",
        "category": "adult",
    }
    row.update(kw)
    return row


async def _insert(engine: AsyncEngine, rows: list[dict[str, object]]) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.insert(riders), rows)  # one statement


async def _seqs(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        q = sa.select(riders.c.rider_id, riders.c.changed_seq)
        return {r.rider_id: r.changed_seq for r in await conn.execute(q)}


def _feed(ring: RiderKeyring, page_rows: int = 3) -> RiderFeed:
    return RiderFeed(ring, ["adult", "youth", "child"], "adult", page_rows=page_rows)


async def test_first_refresh_reads_all_then_only_changes(engine: AsyncEngine) -> None:
    await _insert(engine, [_row(f"r{k:02d}") for k in range(10)])
    ring = RiderKeyring()
    feed = _feed(ring)
    done = await feed.refresh(engine)  # four pages of 3, one statement's rows
    assert (done.rows, done.added) == (10, 10)
    assert len(ring) == 10
    assert ring.keys(ring.index_of("r07")) == derive_rider_keys(_key("r07"))  # type: ignore[arg-type]
    assert (await feed.refresh(engine)).rows == 0
    seqs = await _seqs(engine)
    # every write is stamped, later writes higher
    await _insert(engine, [_row("r10", category="youth")])
    await revoke_rider(engine, "r03", now=50.0)
    after = await _seqs(engine)
    assert after["r03"] > max(seqs.values())
    assert after["r10"] > max(seqs.values())
    assert {k: v for k, v in after.items() if k not in ("r03", "r10")} == {
        k: v for k, v in seqs.items() if k != "r03"
    }
    with capture_logs() as logs:
        done = await feed.refresh(engine)
    assert (done.rows, done.added) == (2, 1)
    assert [e["rows"] for e in logs if e["event"] == "rider_changes_read"] == [2]
    assert feed.revoked_at(ring.index_of("r03")) == 50.0  # type: ignore[arg-type]
    assert feed.revoked_at(ring.index_of("r04")) is None  # type: ignore[arg-type]
    assert feed.category("r10") == "youth"
    assert feed.category("r04") == "adult"
    assert feed.category("nobody") == "adult"
    # revoked without a time (an operator's SQL): every segment is refused
    async with engine.begin() as conn:
        await conn.execute(
            sa.update(riders)
            .where(riders.c.rider_id.in_(["r05", "r03"]))
            .values(status="revoked", revoked_at=None)
        )
        await conn.execute(
            sa.update(riders).where(riders.c.rider_id == "r03").values(status="active")
        )
    await feed.refresh(engine)
    assert feed.revoked_at(ring.index_of("r05")) == float("-inf")  # type: ignore[arg-type]
    assert feed.revoked_at(ring.index_of("r03")) is None  # type: ignore[arg-type]


async def test_rekeyed_rider_and_invalid_keys(engine: AsyncEngine) -> None:
    await _insert(engine, [_row("a"), _row("b", token_key="zz"), _row("c", category="unknown")])
    ring = RiderKeyring()
    feed = _feed(ring)
    res = Resolver(ring)
    with capture_logs() as logs:
        done = await feed.refresh(engine)
    assert (done.added, done.invalid) == (2, 1)
    assert [e["rider_id"] for e in logs if e["event"] == "rider_key_invalid"] == ["b"]
    assert feed.category("c") == "adult"  # a category the rules lack: the default
    old_rid = rid_for_interval(derive_rider_keys(_key("a")).rid_key, IV)
    assert res.resolve(old_rid, IV) == "a"
    async with engine.begin() as conn:
        await conn.execute(
            sa.update(riders)
            .where(riders.c.rider_id.in_(["a", "b"]))
            .values(token_key=_key("a2").hex())
        )
    done = await feed.refresh(engine)
    assert (done.rows, done.added, done.rekeyed) == (2, 1, 1)
    new_rid = rid_for_interval(derive_rider_keys(_key("a2")).rid_key, IV)
    assert res.resolve_many([old_rid, new_rid], IV) == [None, ring.index_of("a")]
    assert res.resolve(new_rid, IV) == "a"
    assert ring.index_of("b") is not None  # its key is valid now: enrolled


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_postgres_writers_commit_in_feed_order(engine: AsyncEngine) -> None:
    """A rider write holds the counter until commit: a later number never commits first."""
    await _insert(engine, [_row("a"), _row("b")])
    ring = RiderKeyring()
    feed = _feed(ring)
    await feed.refresh(engine)
    async with engine.connect() as first, engine.connect() as second:
        await first.begin()
        await first.execute(
            sa.update(riders).where(riders.c.rider_id == "b").values(category="child")
        )
        await second.begin()
        await second.execute(sa.text("SET LOCAL lock_timeout = '300ms'"))
        with pytest.raises(sa.exc.DBAPIError, match="lock timeout"):
            await second.execute(sa.insert(riders).values(_row("c")))  # waits for `first`
        await second.rollback()
        # a reader meanwhile sees nothing (the change is not committed)
        assert (await feed.refresh(engine)).rows == 0
        await first.commit()
    await _insert(engine, [_row("c")])
    done = await feed.refresh(engine)
    assert (done.rows, done.added) == (2, 1)
    assert feed.category("b") == "child"
    async with engine.connect() as conn:
        counter = (await conn.execute(sa.select(rider_change_seq.c.seq))).scalar_one()
    assert feed.seen[0] == counter


async def test_concurrent_writers_are_all_seen(engine: AsyncEngine) -> None:
    ring = RiderKeyring()
    feed = _feed(ring, page_rows=7)
    seen = 0

    async def writer(w: int) -> None:
        for k in range(15):
            await _insert(engine, [_row(f"w{w}-{k}")])

    async def reader() -> None:
        nonlocal seen
        for _ in range(20):
            seen += (await feed.refresh(engine)).added
            await asyncio.sleep(0)

    await asyncio.gather(writer(0), writer(1), writer(2), reader())
    seen += (await feed.refresh(engine)).added
    assert seen == len(ring) == 45


async def test_rows_written_in_many_statements_of_one_transaction(engine: AsyncEngine) -> None:
    await _insert(engine, [_row("x")])
    async with engine.begin() as conn:
        for k in range(5):  # as an executemany import does: a statement per row
            await conn.execute(sa.insert(riders).values(_row(f"m{k}")))
        await conn.execute(sa.update(riders).where(riders.c.rider_id == "x").values(kind="app"))
    seqs = await _seqs(engine)
    batch = {seqs[f"m{k}"] for k in range(5)} | {seqs["x"]}
    if engine.dialect.name == "postgresql":
        assert len(batch) == 1  # one number per transaction: the counter row updated once
    else:
        assert len(batch) == 6  # SQLite: one per row
    assert min(batch) > 1  # after the first transaction's
    ring = RiderKeyring()
    feed = _feed(ring, page_rows=2)  # pages split the rows sharing a number
    assert (await feed.refresh(engine)).added == 6
    assert len(ring) == 6
