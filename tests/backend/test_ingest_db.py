"""Ingestor against real SQLite and PostgreSQL: idempotent storage, quarantine, gaps."""

from __future__ import annotations

import asyncio
import collections
import json
import random
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from backend._db import (
    chain_state,
    create_engine,
    devices,
    fare_events,
    migrate,
    missed_stops,
    quarantine,
)
from backend._ingest import (
    EVENTS_QUARANTINED,
    SIGNATURES_PUT_OFF,
    STORE_ERRORS,
    IngestCore,
    Ingestor,
)
from backend._ingest_bounds import QuarantineBudget
from backend._keys import register_device
from backend._record_check import Verify
from busbell import StoreError, canonical_bytes, derive_event_id, event_hash, sign_event
from tests.factories.fare_events import batch_payload, device_key_for, make_events

BUSES = ("B1", "B2")


@pytest.fixture
def registered_buses() -> tuple[str, ...]:
    return BUSES


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


async def make_ingestor(engine: AsyncEngine, clock: Clock | None = None, **kw: float) -> Ingestor:
    ing = Ingestor(
        engine,
        IngestCore(resend_after_s=kw.get("resend_after_s", 1.0)),
        worker_id="w1",
        clock=clock or Clock(),
        wall=clock or (lambda: 1_760_000_000.0),
    )
    assert await ing.refresh_devices() >= 1
    return ing


async def stored(engine: AsyncEngine, bus_id: str) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(fare_events.c.seq).where(fare_events.c.bus_id == bus_id).order_by("seq")
        )
        return [r.seq for r in rows]


async def chain_row(engine: AsyncEngine, bus_id: str) -> sa.Row[tuple[int, str, int, int]]:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                sa.select(
                    chain_state.c.next_seq,
                    chain_state.c.prev,
                    chain_state.c.acked_upto,
                    chain_state.c.pending,
                ).where(chain_state.c.bus_id == bus_id)
            )
        ).one()


async def quarantined(engine: AsyncEngine) -> list[tuple[str | None, int | None, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(quarantine.c.bus_id, quarantine.c.seq, quarantine.c.reason).order_by(
                quarantine.c.id
            )
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_store_ack_and_idempotent_redelivery(engine: AsyncEngine) -> None:
    chain = make_events("B1", device_key_for("B1"), 20)
    ing = await make_ingestor(engine)
    with capture_logs() as logs:
        res = await ing.ingest([("B1", batch_payload("B1", chain[:10]))])
    assert res.stored == 10
    assert res.acks == {"B1": 10}
    assert any(e["event"] == "fare_event_stored" and e["to_seq"] == 10 for e in logs)
    await ing.record_acks(res.acks)
    # Re-delivery of the same batch plus the rest (MQTT QoS 1 is at-least-once).
    res = await ing.ingest([("B1", batch_payload("B1", chain[5:20]))])
    assert res.stored == 10
    assert res.duplicates == 5
    assert res.acks == {"B1": 20}
    res = await ing.ingest([("B1", batch_payload("B1", chain))])
    assert res.stored == 0
    assert res.duplicates == 20
    assert res.acks == {"B1": 20}
    assert await stored(engine, "B1") == list(range(1, 21))
    row = await chain_row(engine, "B1")
    assert row.next_seq == 21
    assert row.prev == event_hash(chain[-1])
    assert row.acked_upto == 10
    async with engine.connect() as conn:
        ev = (await conn.execute(sa.select(fare_events).where(fare_events.c.seq == 7))).one()
    assert ev.raw == canonical_bytes(chain[6]).decode()
    assert ev.event_hash == event_hash(chain[6])
    assert ev.evidence == chain[6]["evidence"]
    assert ev.start_t == chain[6]["start"]["t"]
    assert ev.worker_id == "w1"
    assert ev.received_at == 1_760_000_000.0
    assert await quarantined(engine) == []


async def test_published_acks_are_recorded_by_the_gap_sweep(engine: AsyncEngine) -> None:
    chain = make_events("B1", device_key_for("B1"), 12)
    ing = await make_ingestor(engine)
    res = await ing.ingest([("B1", batch_payload("B1", chain[:8]))])
    ing.note_acks(res.acks)
    res = await ing.ingest([("B1", batch_payload("B1", chain[8:]))])
    ing.note_acks({"B1": 6})  # an older ack noted late never lowers it
    assert (await chain_row(engine, "B1")).acked_upto == 0  # no transaction of its own
    ing.note_acks(res.acks)
    await ing.tick()
    assert (await chain_row(engine, "B1")).acked_upto == 12
    ing.note_acks({"B1": 8})
    await ing.record_acks()
    assert (await chain_row(engine, "B1")).acked_upto == 12


async def test_rejections_are_quarantined_once(engine: AsyncEngine) -> None:
    chain = make_events("B1", device_key_for("B1"), 3)
    forged = sign_event(chain[1], device_key_for("B2"))
    unknown = make_events("B9", device_key_for("B9"), 1)
    ing = await make_ingestor(engine)
    msgs = [
        ("B1", batch_payload("B1", [chain[0], forged])),
        ("B1", b"not json at all"),
        ("B9", batch_payload("B9", unknown)),
    ]
    with capture_logs() as logs:
        res = await ing.ingest(msgs)
        res2 = await ing.ingest(msgs)  # the same garbage again is not stored twice
    assert res.stored == 1
    assert res.malformed == 1
    assert res.quarantined == 3
    assert res2.stored == 0
    assert res2.duplicates == 1
    # (a signature put off for its run is decided after the batch is decoded: its
    # row comes after the decoder's)
    assert sorted(await quarantined(engine), key=lambda r: r[2]) == [
        ("B1", 2, "bad_signature"),
        ("B1", None, "malformed_payload"),
        ("B9", 1, "unknown_device"),
    ]
    reasons = {e.get("reason") for e in logs if e["event"] == "fare_event_quarantined"}
    assert reasons == {"bad_signature", "malformed_payload", "unknown_device"}
    assert any(e["event"] == "fare_message_malformed" for e in logs)


async def test_chain_conflict_and_revoked_device(engine: AsyncEngine) -> None:
    key = device_key_for("B1")
    chain = make_events("B1", key, 3)
    fork = make_events("B1", key, 3, t0=1_700_000_000.0)
    ing = await make_ingestor(engine)
    await ing.ingest([("B1", batch_payload("B1", chain))])
    # another record at seq 2 that links to the stored seq 1: a conflict; one of
    # another chain (it does not link to the stored seq 1): a prev mismatch
    variant = sign_event(dict(chain[1], distance_m=1.0), key)
    res = await ing.ingest([("B1", batch_payload("B1", [variant, fork[1]]))])
    assert res.acks == {"B1": 3}
    assert await quarantined(engine) == [("B1", 2, "chain_conflict"), ("B1", 2, "prev_mismatch")]
    async with engine.begin() as conn:
        await conn.execute(devices.update().values(revoked_at=5.0).where(devices.c.bus_id == "B1"))
    await ing.refresh_devices()
    more = make_events("B1", key, 1, start_seq=4, prev=event_hash(chain[-1]))
    res = await ing.ingest([("B1", batch_payload("B1", more))])
    assert res.stored == 0
    assert (await quarantined(engine))[-1] == ("B1", 4, "revoked_device")


async def test_copies_below_the_head_skip_ed25519_only_when_byte_identical(
    engine: AsyncEngine,
) -> None:
    key = device_key_for("B1")
    chain = make_events("B1", key, 6)
    ing = await make_ingestor(engine)
    await ing.ingest([("B1", batch_payload("B1", chain[:4]))])
    put_off = SIGNATURES_PUT_OFF._value.get()
    # a re-sent copy of stored records: duplicates, no signature verified
    res = await ing.ingest([("B1", batch_payload("B1", chain[1:6]))])
    assert (res.stored, res.duplicates, res.acks) == (2, 3, {"B1": 6})
    assert SIGNATURES_PUT_OFF._value.get() == put_off + 3
    # a copy whose signature was tampered with is not byte-identical: verified, rejected
    forged = dict(chain[2], sig=chain[3]["sig"])
    res = await ing.ingest([("B1", batch_payload("B1", [forged]))])
    assert (res.duplicates, res.rejected) == (0, {"bad_signature": 1})


async def test_a_stale_head_hint_never_stores_an_unverified_record(engine: AsyncEngine) -> None:
    """The ledger is restored from a backup behind what this worker committed: records it
    takes for copies are verified before they are stored."""
    key = device_key_for("B1")
    chain = make_events("B1", key, 5)
    ing = await make_ingestor(engine)
    await ing.ingest([("B1", batch_payload("B1", chain))])
    async with engine.begin() as conn:
        await conn.execute(fare_events.delete().where(fare_events.c.seq >= 3))
        await conn.execute(
            chain_state.update().values(next_seq=3, prev=event_hash(chain[1]), acked_upto=2)
        )
    forged = dict(chain[2], sig=chain[3]["sig"])
    res = await ing.ingest([("B1", batch_payload("B1", [forged, *chain[3:]]))])
    assert res.rejected == {"bad_signature": 1}
    assert res.stored == 0  # seq 3 is still missing: 4 and 5 are held
    res = await ing.ingest([("B1", batch_payload("B1", chain[2:3]))])
    assert res.stored == 3
    assert await stored(engine, "B1") == [1, 2, 3, 4, 5]


async def test_gap_is_held_resent_and_filled(engine: AsyncEngine) -> None:
    chain = make_events("B1", device_key_for("B1"), 10)
    clock = Clock()
    ing = await make_ingestor(engine, clock)
    res = await ing.ingest([("B1", batch_payload("B1", chain[:3]))])
    res = await ing.ingest([("B1", batch_payload("B1", chain[6:]))])
    assert res.stored == 0
    assert res.acks == {"B1": 3}
    assert res.resends == {}
    clock.t += 0.5
    assert (await ing.tick()).resends == {}
    clock.t += 0.6
    with capture_logs():
        res = await ing.tick()
    assert res.resends == {"B1": (4, 6)}
    res = await ing.ingest([("B1", batch_payload("B1", chain[3:6]))])
    assert res.stored == 7
    assert res.acks == {"B1": 10}
    assert await stored(engine, "B1") == list(range(1, 11))
    assert (await ing.tick()).acks == {}


async def test_a_gap_never_filled_is_reported_once(engine: AsyncEngine) -> None:
    chain = make_events("B1", device_key_for("B1"), 10)
    clock = Clock()
    ing = Ingestor(
        engine,
        IngestCore(resend_after_s=1.0, resend_max_s=2.0, resend_max_attempts=2),
        worker_id="w1",
        clock=clock,
        wall=clock,
    )
    await ing.refresh_devices()
    await ing.ingest([("B1", batch_payload("B1", chain[:3] + chain[6:]))])
    resends, unfilled = [], []
    with capture_logs() as logs:
        for _ in range(20):
            clock.t += 0.5
            res = await ing.tick()
            resends += list(res.resends.values())
            unfilled += list(res.gaps_unfilled.values())
    assert resends == [(4, 6), (4, 6)]
    assert unfilled == [(4, 6)]
    events = [e for e in logs if e["event"] == "fare_gap_unfilled"]
    assert [(e["bus_id"], e["from_seq"], e["to_seq"]) for e in events] == [("B1", 4, 6)]
    # still held in the ledger (a late re-send of 4..6 still fills it), and shown
    gaps = await ing.open_gaps()
    assert [(g["bus_id"], g["gap_from"], g["gap_to"], g["pending"]) for g in gaps] == [
        ("B1", 4, 6, 4)
    ]
    assert gaps[0]["gap_reported"]
    res = await ing.ingest([("B1", batch_payload("B1", chain[3:6]))])
    assert res.acks == {"B1": 10}
    assert await ing.open_gaps() == []


async def test_workers_decide_a_gap_once(engine: AsyncEngine) -> None:
    """Held records and the gap are rows: another worker links them, one asks."""
    chain = make_events("B1", device_key_for("B1"), 10)
    clock = Clock()
    w1 = await make_ingestor(engine, clock)
    w2 = await make_ingestor(engine, clock)
    await w1.ingest([("B1", batch_payload("B1", chain[:3]))])
    await w2.ingest([("B1", batch_payload("B1", chain[6:]))])
    asked = []
    for _ in range(8):  # 4 s, both workers sweeping: requests at +1 s and +3 s, once each
        clock.t += 0.5
        for w in (w1, w2):
            asked += list((await w.tick()).resends.values())
    assert asked == [(4, 6), (4, 6)]
    # w1 fills the gap; what w2 held comes from the ledger and is linked too
    res = await w1.ingest([("B1", batch_payload("B1", chain[3:6]))])
    assert res.stored == 7
    assert res.acks == {"B1": 10}
    assert await stored(engine, "B1") == list(range(1, 11))
    assert (await chain_row(engine, "B1")).pending == 0


async def test_two_workers_share_one_bus(engine: AsyncEngine) -> None:
    """Batches of one bus alternate between two workers: the chain comes from the DB."""
    chain = make_events("B1", device_key_for("B1"), 40)
    clock = Clock()
    w1 = await make_ingestor(engine, clock)
    w2 = await make_ingestor(engine, clock)
    batches = [chain[i : i + 5] for i in range(0, 40, 5)]
    order = [0, 2, 1, 3, 5, 4, 7, 6]  # out of order across workers
    for n, i in enumerate(order):
        w = (w1, w2)[n % 2]
        await w.ingest([("B1", batch_payload("B1", batches[i]))])
    # Held events of a worker are applied once the other worker filled the gap.
    await w1.tick()
    await w2.tick()
    assert await stored(engine, "B1") == list(range(1, 41))
    assert (await chain_row(engine, "B1")).next_seq == 41


@pytest.mark.postgres
async def test_concurrent_workers_on_postgres(pg_url: str) -> None:
    """Several Ingestors commit concurrently; row locks keep every chain exact."""
    eng = create_engine(pg_url, pool_size=8)
    await migrate(eng)
    buses = [f"C{i}" for i in range(6)]
    async with eng.begin() as conn:
        for b in buses:
            await register_device(conn, b, device_key_for(b).public)
    chains = {b: make_events(b, device_key_for(b), 60) for b in buses}
    msgs = [(b, batch_payload(b, chains[b][i : i + 6])) for b in buses for i in range(0, 60, 6)]
    # Every message delivered twice, shuffled, to 4 workers running at once.
    deliveries = msgs * 2
    random.Random(7).shuffle(deliveries)
    workers = [await make_ingestor(eng) for _ in range(4)]
    await asyncio.gather(
        *(
            _feed(w, deliveries[k::4])  # each worker gets a quarter
            for k, w in enumerate(workers)
        )
    )
    for _ in range(3):
        for w in workers:
            await w.tick()
    for b in buses:
        assert await stored(eng, b) == list(range(1, 61)), b
    async with eng.connect() as conn:
        n = (await conn.execute(sa.select(sa.func.count()).select_from(fare_events))).scalar()
    assert n == 360
    await eng.dispose()


async def _feed(w: Ingestor, msgs: list[tuple[str, bytes]]) -> None:
    for i in range(0, len(msgs), 3):
        await w.ingest(msgs[i : i + 3])


def _not_derived(kind: str, a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """B2's seq 2 with an event id that is not its derivation (signed by B2's key).

    ``a``: B1's chain, ``b``: B2's, each a segment at seq 1 and a missed record at seq 2.
    """
    k2 = device_key_for("B2")
    seg, missed = b[0], b[1]
    if kind == "another_bus":  # B1's seq 1's id (a buggy or hostile edge)
        return sign_event(dict(seg, seq=2, prev=event_hash(seg), event_id=a[0]["event_id"]), k2)
    if kind == "chosen":  # well-formed, chosen by the edge
        return sign_event(dict(seg, seq=2, prev=event_hash(seg), event_id="edge-chose-this"), k2)
    if kind == "segment_id_on_missed":  # a missed record's id without the type tag
        w = missed["passed"]["t"]
        return sign_event(
            dict(missed, event_id=derive_event_id("B2", 2, missed["request_id"], w)), k2
        )
    assert kind == "segment_id_of_missed_stop"  # a missed record carrying B1's missed id
    return sign_event(dict(missed, event_id=a[1]["event_id"]), k2)


@pytest.mark.parametrize(
    "kind", ["another_bus", "chosen", "segment_id_on_missed", "segment_id_of_missed_stop"]
)
async def test_a_non_derived_event_id_is_quarantined(engine: AsyncEngine, kind: str) -> None:
    """An event id must be its record's derivation (``derive_event_id`` /
    ``derive_missed_event_id``): anything else is ``event_id_mismatch``, counted, logged
    and quarantined, and the bus's chain waits for the genuine record."""
    a = make_events("B1", device_key_for("B1"), 2, missed_every=2)
    b = make_events("B2", device_key_for("B2"), 3, missed_every=2)
    bad = _not_derived(kind, a, b)
    ing = await make_ingestor(engine)
    await ing.ingest([("B1", batch_payload("B1", a))])
    before = EVENTS_QUARANTINED.labels("event_id_mismatch")._value.get()
    with capture_logs() as logs:
        res = await ing.ingest([("B2", batch_payload("B2", [b[0], bad]))])
    assert res.rejected == {"event_id_mismatch": 1}
    assert EVENTS_QUARANTINED.labels("event_id_mismatch")._value.get() == before + 1
    assert [(x["event"], x["reason"]) for x in logs if x["log_level"] == "warning"] == [
        ("fare_event_quarantined", "event_id_mismatch")
    ]
    assert res.acks == {"B2": 1}
    assert (await quarantined(engine))[-1] == ("B2", 2, "event_id_mismatch")
    res = await ing.ingest([("B2", batch_payload("B2", b[1:]))])  # the genuine ones link
    assert res.rejected == {}
    assert res.acks == {"B2": 3}
    assert await stored(engine, "B1") == [1]  # (seq 2 is a missed record)
    assert await stored(engine, "B2") == [1, 3]


async def test_a_re_sent_copy_with_a_non_derived_id_is_rejected_unverified(
    engine: AsyncEngine,
) -> None:
    """Below the chain head the signature check is put off, the event id check is not."""
    a = make_events("B1", device_key_for("B1"), 3)
    ing = await make_ingestor(engine)
    await ing.ingest([("B1", batch_payload("B1", a))])
    copy = dict(a[1], event_id="0" * 32)  # its sig no longer verifies either
    res = await ing.ingest([("B1", batch_payload("B1", [copy]))])
    assert res.rejected == {"event_id_mismatch": 1}


async def test_no_race_between_a_segment_and_a_missed_record_sharing_an_id(
    engine: AsyncEngine,
) -> None:
    """The race that was: two workers, one committing B1's segment, the other B2's
    missed record carrying the same event id, neither seeing the other's uncommitted row
    (no index spans ``fare_events`` and ``missed_stops``), could both store it. Ids are
    derived now and a missed record's is type-tagged: the record carrying another's id
    is refused before any transaction, however the two commits interleave."""
    a = make_events("B1", device_key_for("B1"), 1)
    b = make_events("B2", device_key_for("B2"), 2, missed_every=2)
    taker = sign_event(dict(b[1], event_id=a[0]["event_id"]), device_key_for("B2"))
    w1, w2 = await make_ingestor(engine), await make_ingestor(engine)
    w2.worker_id = "w2"
    one = w1.prepare([("B1", batch_payload("B1", a))])
    two = w2.prepare([("B2", batch_payload("B2", [b[0], taker]))])
    with capture_logs():
        r1, r2 = await asyncio.gather(w1.commit(one), w2.commit(two))
    assert (r1.stored, r2.stored) == (1, 1)
    assert r2.rejected == {"event_id_mismatch": 1}
    async with engine.connect() as conn:
        ids = [
            eid
            for table in (fare_events, missed_stops)
            for (eid,) in await conn.execute(sa.select(table.c.event_id))
        ]
    assert sorted(ids) == sorted([a[0]["event_id"], b[0]["event_id"]])
    assert len(set(ids)) == len(ids)


async def test_a_gap_waits_for_every_worker_to_catch_up(engine: AsyncEngine) -> None:
    """While a worker still has messages from before the gap queued, nobody asks."""
    chain = make_events("B1", device_key_for("B1"), 10)
    clock = Clock()
    busy = await make_ingestor(engine, clock)
    busy.worker_id = "busy"
    idle = await make_ingestor(engine, clock)
    idle.worker_id = "idle"
    opened = clock.t
    await idle.ingest([("B1", batch_payload("B1", chain[:3] + chain[6:]))])
    asked = []
    for _ in range(6):  # 3 s: the grace passed long ago, but "busy" is behind the gap
        clock.t += 0.5
        asked += list((await busy.tick(caught_up_to=opened - 5.0)).resends.values())
        asked += list((await idle.tick(caught_up_to=clock.t)).resends.values())
    assert asked == []
    # "busy" committed what it had: its queue now starts after the gap opened
    clock.t += 0.5
    asked += list((await busy.tick(caught_up_to=opened + 0.1)).resends.values())
    assert asked == [(4, 6)]
    # a worker that stops reporting is taken as gone after worker_stale_s
    clock.t += 1.0
    await busy.tick(caught_up_to=opened)  # behind the last request: the next one waits
    clock.t += idle.worker_stale_s + 1.0
    assert list((await idle.tick(caught_up_to=clock.t)).resends.values()) == [(4, 6)]


async def test_a_missed_record_whose_id_is_stored_for_another_is_quarantined_alone(
    engine: AsyncEngine,
) -> None:
    """``missed_stops`` keeps its unique ``event_id`` index: a genuine missed record whose
    (derived) id a row stored before ids were derived already carries (or a SHA-256
    collision) is quarantined ``event_id_taken``, counted and logged; the rest of the
    transaction commits (was: the whole transaction failed, ``StoreError``), and its
    bus's chain waits at that seq as after any rejection at the head."""
    a = make_events("B1", device_key_for("B1"), 8, missed_every=4)
    b = make_events("B2", device_key_for("B2"), 7, missed_every=2)
    ing = await make_ingestor(engine)
    await ing.ingest([("B2", batch_payload("B2", b[:4]))])
    async with engine.begin() as conn:  # B2 seq 2 stored under B1 seq 4's id, as if old
        await conn.execute(
            missed_stops.update()
            .where(missed_stops.c.bus_id == "B2", missed_stops.c.seq == 2)
            .values(event_id=a[3]["event_id"])
        )
    before = EVENTS_QUARANTINED.labels("event_id_taken")._value.get()
    with capture_logs() as logs:
        res = await ing.ingest([("B1", batch_payload("B1", a)), ("B2", batch_payload("B2", b[4:]))])
    assert res.rejected == {"event_id_taken": 1}
    assert EVENTS_QUARANTINED.labels("event_id_taken")._value.get() == before + 1
    taken = [e for e in logs if e["event"] == "fare_event_id_taken"]
    assert [(e["bus_id"], e["seq"], e["holder_bus_id"], e["holder_seq"]) for e in taken] == [
        ("B1", 4, "B2", 2)
    ]
    assert res.acks == {"B1": 3, "B2": 7}
    assert await stored(engine, "B1") == [1, 2, 3]
    assert await stored(engine, "B2") == [1, 3, 5, 7]
    assert (await chain_row(engine, "B1")).pending == 4  # 5-8 held above the gap
    assert (await quarantined(engine))[-1] == ("B1", 4, "event_id_taken")
    async with engine.connect() as conn:
        holder = (
            await conn.execute(
                sa.select(missed_stops.c.bus_id, missed_stops.c.seq).where(
                    missed_stops.c.event_id == a[3]["event_id"]
                )
            )
        ).all()
    assert [tuple(r) for r in holder] == [("B2", 2)]
    # re-sent, it is quarantined again (never stored); the holder's own copy is a duplicate
    res = await ing.ingest([("B1", batch_payload("B1", a[3:4])), ("B2", batch_payload("B2", b))])
    assert res.rejected == {"event_id_taken": 1}
    assert (res.duplicates, res.acks) == (7, {"B1": 3, "B2": 7})


async def per_message_ingestor(engine: AsyncEngine, verify: Verify, worker_id: str) -> Ingestor:
    """An ingestor holding 2 quarantined records per message (100 per bus), devices loaded."""
    ing = Ingestor(
        engine,
        IngestCore(verify=verify),
        worker_id=worker_id,
        quarantine_budget=QuarantineBudget(per_message=2, per_bus=100),
    )
    await ing.refresh_devices()
    return ing


@pytest.mark.parametrize("verify", ["runs", "every"])
async def test_every_rejection_counts_against_the_message_it_came_in(
    engine: AsyncEngine, verify: Verify
) -> None:
    """``quarantine_per_message`` holds per message whichever step rejects a record: the
    chain plan's (``chain_conflict``) and the id lookup's (``event_id_taken``) are
    charged to the message each record came in, after what its decode rejected (was:
    all of a bus's counted as one message per transaction, so a message's plan
    rejections were stored beyond its budget, or another message's crowded them out)."""
    key = device_key_for("B1")
    a = make_events("B1", key, 8, missed_every=4)
    b = make_events("B2", device_key_for("B2"), 2, missed_every=2)
    ing = await per_message_ingestor(engine, verify, "w1")
    await ing.ingest([("B1", batch_payload("B1", a)), ("B2", batch_payload("B2", b[:1]))])
    async with engine.begin() as conn:  # B1 seq 4 stored under B2 seq 2's id, as if old
        await conn.execute(
            missed_stops.update()
            .where(missed_stops.c.bus_id == "B1", missed_stops.c.seq == 4)
            .values(event_id=b[1]["event_id"])
        )

    def variants(d: float) -> list[dict[str, Any]]:  # each links: chain_conflict
        return [sign_event(dict(ev, distance_m=d), key) for ev in a[:3]]

    def junk(n: int) -> dict[str, Any]:
        return {"v": 1, "junk": n}  # schema

    messages = [
        ("B1", batch_payload("B1", [junk(1), junk(2), variants(2.0)[0]])),
        ("B1", batch_payload("B1", variants(1.0))),
        ("B1", batch_payload("B1", variants(3.0))),
        ("B2", batch_payload("B2", [junk(3), junk(4), b[1]])),
    ]
    res = await ing.ingest(messages)
    assert res.rejected == {"schema": 4, "chain_conflict": 7, "event_id_taken": 1}
    assert res.acks == {"B1": 8, "B2": 1}
    async with engine.connect() as conn:
        raws = (await conn.execute(sa.select(quarantine.c.raw))).scalars().all()

    def message(raw: str) -> int:
        obj = json.loads(raw)
        if "junk" in obj:
            return 1 if obj["junk"] <= 2 else 4
        if obj.get("type") == "missed":
            return 4
        return {2.0: 1, 1.0: 2, 3.0: 3}[obj["distance_m"]]

    # two rows per message: the first message's and the last's are its decode's
    assert collections.Counter(message(r) for r in raws) == {1: 2, 2: 2, 3: 2, 4: 2}
    assert sum("junk" in r for r in raws) == 4


async def test_a_held_record_rejected_later_is_charged_apart_from_the_batchs_messages(
    engine: AsyncEngine,
) -> None:
    """A record held from an earlier transaction (read back from ``fare_pending``) that
    the plan rejects came in no message of the batch: it is charged on its own, not to
    the message whose record unblocked it."""
    key = device_key_for("B1")
    chain = make_events("B1", key, 3)
    fork = make_events("B1", key, 3, t0=1_700_000_000.0)  # its seq 3 does not link
    ing = Ingestor(
        engine,
        IngestCore(),
        worker_id="w1",
        quarantine_budget=QuarantineBudget(per_message=1, per_bus=100),
    )
    await ing.refresh_devices()
    res = await ing.ingest([("B1", batch_payload("B1", [chain[0], fork[2]]))])
    assert (res.stored, (await chain_row(engine, "B1")).pending) == (1, 1)
    res = await ing.ingest([("B1", batch_payload("B1", [chain[1], {"v": 1, "junk": 1}]))])
    assert (res.stored, res.rejected) == (1, {"schema": 1, "prev_mismatch": 1})
    assert sorted(r[2] for r in await quarantined(engine)) == ["prev_mismatch", "schema"]


async def test_a_database_error_inside_the_driver_level_insert_is_a_store_error(
    engine: AsyncEngine,
) -> None:
    """Segment rows go in through the driver (PostgreSQL: binary ``COPY``; SQLite:
    ``executemany``), whose errors are the driver's, not SQLAlchemy's: a failing insert
    is a ``StoreError`` (counted), nothing of the transaction is committed, and the
    ingestor goes on once the database takes rows again."""
    a = make_events("B1", device_key_for("B1"), 3)
    b = make_events("B2", device_key_for("B2"), 3)
    ing = await make_ingestor(engine)
    async with engine.begin() as conn:  # the database refuses B2's rows
        if engine.dialect.name == "postgresql":
            await conn.execute(
                sa.text("ALTER TABLE fare_events ADD CONSTRAINT t_no_b2 CHECK (bus_id <> 'B2')")
            )
        else:
            await conn.execute(
                sa.text(
                    "CREATE TRIGGER t_no_b2 BEFORE INSERT ON fare_events WHEN NEW.bus_id = 'B2' "
                    "BEGIN SELECT RAISE(ABORT, 'no B2'); END"
                )
            )
    errors = STORE_ERRORS._value.get()
    msgs = [("B1", batch_payload("B1", a)), ("B2", batch_payload("B2", b))]
    with pytest.raises(StoreError, match="ingest transaction failed"):
        await ing.ingest(msgs)
    assert STORE_ERRORS._value.get() == errors + 1
    assert await stored(engine, "B1") == []
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(sa.text("ALTER TABLE fare_events DROP CONSTRAINT t_no_b2"))
        else:
            await conn.execute(sa.text("DROP TRIGGER t_no_b2"))
    res = await ing.ingest(msgs)
    assert res.acks == {"B1": 3, "B2": 3}
