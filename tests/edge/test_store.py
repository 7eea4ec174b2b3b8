from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from busbell import (
    GENESIS_PREV,
    ContractError,
    DeviceKey,
    HashChain,
    StoreError,
    canonical_bytes,
    derive_event_id,
    event_hash,
    validate_event,
    verify_event,
)
from edge._events import EventBuilder
from edge._segment import SegmentDraft, SegmentEnd
from edge._store import FareStore
from tests.factories.drafts import synthetic_draft

KEY = DeviceKey.from_seed(bytes(range(32)))


@pytest.fixture(autouse=True)
def _fresh_structlog() -> None:
    """Other tests may configure structlog (level filters); capture_logs needs defaults."""
    structlog.reset_defaults()


def builder() -> EventBuilder:
    return EventBuilder("bus-0001", KEY)


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_builder_is_deterministic_and_valid() -> None:
    d = synthetic_draft(3)
    a = builder().build(d, 1, GENESIS_PREV)
    b = builder().build(d, 1, GENESIS_PREV)
    assert canonical_bytes(a) == canonical_bytes(b)
    validate_event(a)
    verify_event(a, KEY.public)
    assert a["event_id"] == derive_event_id("bus-0001", 1, d.rid, d.start.t)
    assert a["prev"] == GENESIS_PREV
    assert a["seq"] == 1


def test_builder_rejects_bad_draft() -> None:
    d = synthetic_draft(1)
    bad = SegmentDraft(
        rid="xyz",
        interval=1,
        route_id=None,
        trip_id=None,
        start=d.start,
        end=SegmentEnd(d.start.t, None, "lost"),
        distance_m=0.0,
        proof_first=d.proof_first,
        proof_last=d.proof_last,
    )
    with pytest.raises(ContractError):
        builder().build(bad, 1, GENESIS_PREV)


async def test_append_chains_and_persists(tmp_path: Path) -> None:
    db = tmp_path / "fares.db"
    store = await FareStore.open(db, builder())
    with capture_logs() as logs:
        events = [await store.append(synthetic_draft(i)) for i in range(5)]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert sum(1 for log in logs if log["event"] == "fare_event_recorded") == 5
    chain = HashChain()
    for e in events:
        verify_event(e, KEY.public)
        chain.check(e)
        chain.advance(e)
    assert store.prev == chain.prev
    assert await store.backlog() == 5
    await store.close()
    # reopen: the chain continues, nothing reused
    store = await FareStore.open(db, builder())
    assert store.last_seq == 5
    e6 = await store.append(synthetic_draft(6))
    assert e6["seq"] == 6
    assert e6["prev"] == event_hash(events[-1])
    stored = await store.range(1, 6)
    assert [s.seq for s in stored] == [1, 2, 3, 4, 5, 6]
    assert stored[0].data == canonical_bytes(events[0])
    assert stored[0].event() == events[0]
    await store.close()


async def test_sqlite_settings(tmp_path: Path) -> None:
    db = tmp_path / "fares.db"
    store = await FareStore.open(db, builder())
    await store.append(synthetic_draft(1))
    await store.close()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    con.close()


async def test_append_many_all_or_nothing(tmp_path: Path) -> None:
    store = await FareStore.open(tmp_path / "f.db", builder())
    good = synthetic_draft(1)
    bad = dataclasses.replace(good, rid="bad")
    with pytest.raises(ContractError):
        await store.append_many([good, bad])
    assert store.last_seq == 0
    assert await store.range(1, 10) == []
    evs = await store.append_many([synthetic_draft(i) for i in range(3)])
    assert [e["seq"] for e in evs] == [1, 2, 3]
    assert await store.append_many([]) == []
    await store.close()


async def test_ack_monotone_stale_and_beyond(tmp_path: Path) -> None:
    store = await FareStore.open(tmp_path / "f.db", builder())
    await store.append_many([synthetic_draft(i) for i in range(10)])
    assert await store.ack(4)
    assert store.acked_upto == 4
    assert await store.backlog() == 6
    assert [e.seq for e in await store.unacked(3)] == [5, 6, 7]
    assert [e.seq for e in await store.unacked(3, after_seq=8)] == [9, 10]
    assert not await store.ack(2)  # stale
    assert not await store.ack(4)  # repeat
    assert store.stats.acks_stale == 2
    with capture_logs() as logs:
        assert not await store.ack(11)
    assert store.stats.acks_beyond_last == 1
    assert logs[0]["event"] == "fare_ack_beyond_last"
    assert logs[0]["log_level"] == "warning"
    assert store.acked_upto == 4
    kept = await store.range(1, 10)
    assert [e.acked for e in kept] == [True] * 4 + [False] * 6
    await store.close()
    store = await FareStore.open(tmp_path / "f.db", builder())
    assert store.acked_upto == 4
    await store.close()


async def test_prune_only_old_acked_and_seq_never_reused(tmp_path: Path) -> None:
    clock = Clock()
    store = await FareStore.open(tmp_path / "f.db", builder(), clock=clock)
    await store.append_many([synthetic_draft(i) for i in range(5)])
    clock.t += 3 * 86400
    await store.append_many([synthetic_draft(i) for i in range(5, 8)])
    await store.ack(6)
    # keep 7 days: nothing is old enough
    assert await store.prune(7, clock.t) == 0
    # keep 1 day: seqs 1-5 are acked and 3 days old; 6 is acked but new; 7-8 unacked
    assert await store.prune(1, clock.t) == 5
    assert await store.first_kept_seq() == 6
    # even keep 0 days never prunes unacked events
    assert await store.prune(0, clock.t + 1) == 1
    assert [e.seq for e in await store.range(1, 100)] == [7, 8]
    assert store.stats.events_pruned == 6
    await store.ack(8)
    assert await store.prune(0, clock.t + 1) == 2
    assert await store.first_kept_seq() is None
    await store.close()
    store = await FareStore.open(tmp_path / "f.db", builder(), clock=clock)
    assert store.last_seq == 8
    e = await store.append(synthetic_draft(99))
    assert e["seq"] == 9
    await store.close()


async def test_oldest_unacked_created(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    store = await FareStore.open(tmp_path / "f.db", builder(), clock=clock)
    assert await store.oldest_unacked_created() is None
    await store.append(synthetic_draft(1))
    clock.t = 2000.0
    await store.append(synthetic_draft(2))
    assert await store.oldest_unacked_created() == 1000.0
    await store.ack(1)
    assert await store.oldest_unacked_created() == 2000.0
    await store.close()


async def test_memory_store() -> None:
    store = await FareStore.open(":memory:", builder())
    e = await store.append(synthetic_draft(1))
    assert e["seq"] == 1
    await store.close()


async def test_errors_are_store_errors(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        await FareStore.open(bad, builder())
    with pytest.raises(StoreError):
        await FareStore.open(tmp_path / "missing-dir" / "x.db", builder())
    store = await FareStore.open(tmp_path / "f.db", builder())
    await store.close()
    with pytest.raises(StoreError):
        await store.append(synthetic_draft(1))
    with pytest.raises(StoreError):
        await store.range(1, 2)


async def test_schema_version_mismatch(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    store = await FareStore.open(db, builder())
    await store.close()
    con = sqlite3.connect(db)
    con.execute("UPDATE schema_version SET version = 99")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="schema version 99"):
        await FareStore.open(db, builder())


async def test_inconsistent_chain_state_detected(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    store = await FareStore.open(db, builder())
    await store.append_many([synthetic_draft(i) for i in range(3)])
    await store.close()
    con = sqlite3.connect(db)
    con.execute("UPDATE chain SET last_seq = 1")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="chain state"):
        await FareStore.open(db, builder())


async def test_a_write_cancelled_at_any_point_leaves_the_store_writable(tmp_path: Path) -> None:
    """A cancel landing anywhere in a write (the daemon's shutdown cancels its pipeline
    task mid-append) never leaves a transaction open behind the lock: the next write
    works, and memory and disk agree on the chain. In a live run a cancel during
    ``BEGIN IMMEDIATE`` made the shutdown flush fail with "cannot start a transaction
    within a transaction"."""
    import asyncio

    path = tmp_path / "f.db"
    store = await FareStore.open(path, EventBuilder("B1", KEY))
    n = 0
    for steps in range(40):
        for op in ("append", "ack"):
            if op == "append":
                task = asyncio.create_task(store.append_many([synthetic_draft(n)]))
            else:
                task = asyncio.create_task(store.ack(store.last_seq))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            n += 1
            await store.append_many([synthetic_draft(n)])  # never "within a transaction"
            n += 1
    last, acked = store.last_seq, store.acked_upto
    await store.close()
    store = await FareStore.open(path, EventBuilder("B1", KEY))
    assert (store.last_seq, store.acked_upto) == (last, acked)
    events = [e.event() for e in await store.range(1, last)]
    assert [e["seq"] for e in events] == list(range(1, last + 1))
    await store.close()
