"""Online ingest's signature check per hash-linked run (``[ingest] verify = "runs"``).

The decision is offline settle's (:func:`backend._record_check.decide_runs`, pinned
rule by rule in ``test_settle_runs.py``); these pin what online ingest makes of it: the
runs of one transaction's records, the number of signatures verified, the re-sent copies
below the head still put off, and the setting. The property test against offline settle
in both modes is ``test_ingest_equivalence.py``.
"""

from __future__ import annotations

import collections
import random
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from backend._db import create_engine, fare_events, quarantine
from backend._ingest import IngestCore, Ingestor, IngestWorker, Prepared, VerifiedEvent
from backend._keys import DeviceInfo
from backend._record_check import Verify
from backend.config import BackendConfig
from busbell import ConfigError, event_hash, load_config, sign_event
from tests.backend.test_ingest_db import per_message_ingestor
from tests.factories.fare_events import batch_payload, device_key_for, make_events

KEYS = {b: device_key_for(b) for b in ("B1", "B2")}
CHAIN = make_events("B1", KEYS["B1"], 6)
OTHER = make_events("B2", KEYS["B2"], 6)
FORGER = device_key_for("ZZ8")  # registered for no bus


def _verified_total() -> float:
    return REGISTRY.get_sample_value("busbell_fare_signatures_verified_total") or 0.0


def _core() -> IngestCore:
    return IngestCore({b: DeviceInfo(k.public) for b, k in KEYS.items()})


def _decide(
    messages: list[tuple[str, list[dict[str, Any]]]], below: int = 0
) -> tuple[list[str | None], int, list[VerifiedEvent]]:
    """Decode each message with its signatures put off for their runs, then decide the
    runs together: each record's verdict (``None``: authentic) in input order, the
    signatures verified, and the records put off."""
    core = _core()
    runs: list[VerifiedEvent] = []
    decoded: list[VerifiedEvent] = []
    for bus, events in messages:
        ok, bad = core.decode(bus, batch_payload(bus, events), below=below, put_off=runs)
        assert not bad
        decoded += ok
    rejected, verified = core.verify_runs(runs)
    bad_raw = {r.raw for r in rejected}
    return [("bad_signature" if e.raw in bad_raw else None) for e in decoded], verified, runs


def _variant(ev: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return dict(ev, distance_m=ev["distance_m"] + 1.0, **kw)


def test_a_transactions_chain_costs_one_signature_per_bus_in_any_order() -> None:
    shuffled = random.Random(2).sample(CHAIN, len(CHAIN))
    messages = [("B1", shuffled[:2]), ("B2", OTHER[3:]), ("B1", shuffled[2:]), ("B2", OTHER[:3])]
    before = _verified_total()
    reasons, verified, runs = _decide(messages)
    assert (reasons, verified) == ([None] * 12, 2)
    assert all(e.signed for e in runs)
    assert _verified_total() == before + 2
    # a gap in B1's records of the transaction: two runs
    assert _decide([("B1", [*CHAIN[:2], *CHAIN[3:]])])[:2] == ([None] * 5, 2)


def test_forged_records_condemn_only_themselves() -> None:
    """A forged child of seq 4, a forged seq 2 that another bus's genuine key links to:
    each is verified and fails; the genuine records stay."""
    forged = sign_event(_variant(CHAIN[4]), FORGER)
    mine = dict(_variant(CHAIN[1]), sig=CHAIN[1]["sig"])
    linker = sign_event(dict(OTHER[2], seq=3, prev=event_hash(mine)), KEYS["B2"])
    messages = [("B1", [*CHAIN[:4], forged, mine]), ("B2", [*OTHER[:2], linker])]
    reasons, verified, runs = _decide(messages)
    assert reasons == [None] * 4 + ["bad_signature"] * 2 + [None] * 3
    assert [e.signed for e in runs] == [True] * 4 + [False] * 2 + [True] * 3
    # round 1, the tops: the forged seq 5, mine (no authentic record names it), B2's
    # linker and B2's seq 2 (the linker names mine, not it); two fail, so round 2
    # verifies B1's seqs 4 to 1 on their own (the failed seq 5 vouches for nothing)
    assert verified == 8


def test_a_bad_signature_the_bus_linked_to_in_the_same_transaction() -> None:
    """The one difference from ``every``, as offline: a record whose own ``sig`` does not
    verify, linked to by the bus's next genuine record in the same transaction, is taken."""
    bad = dict(CHAIN[2], sig=CHAIN[3]["sig"])
    after = sign_event(dict(CHAIN[3], prev=event_hash(bad)), KEYS["B1"])
    assert _decide([("B1", [*CHAIN[:2], bad, after])])[:2] == ([None] * 4, 1)
    # alone (its child in another transaction): verified, rejected
    assert _decide([("B1", [*CHAIN[:2], bad])])[:2] == ([None, None, "bad_signature"], 3)


def test_copies_below_the_head_are_not_in_a_run() -> None:
    """Records under ``below`` keep the re-sent copy's put-off check (the plan verifies
    them only when not byte-identical to the stored record); the others form the runs."""
    reasons, verified, runs = _decide([("B1", CHAIN)], below=4)
    assert (reasons, verified) == ([None] * 6, 1)
    assert [e.seq for e in runs] == [4, 5, 6]
    # without runs, decode verifies each record's own signature (every)
    core = _core()
    before = _verified_total()
    ok, _ = core.decode("B1", batch_payload("B1", CHAIN), below=4)
    assert [e.signed for e in ok] == [False] * 3 + [True] * 3
    assert _verified_total() == before + 3


BUSES = ("B1", "B2")


@pytest.fixture
def registered_buses() -> tuple[str, ...]:
    return BUSES


async def _stored(engine: AsyncEngine) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    async with engine.connect() as conn:
        q = sa.select(fare_events.c.bus_id, fare_events.c.seq).order_by("bus_id", "seq")
        for b, s in await conn.execute(q):
            out.setdefault(b, []).append(int(s))
    return out


@pytest.mark.parametrize("verify", ["runs", "every"])
async def test_the_ledger_is_the_same_in_both_modes(engine: AsyncEngine, verify: Verify) -> None:
    """Shuffled messages of two buses, a forged record and a bus-made bad signature
    whose child comes in a later transaction: the same ledger and rejections in both
    modes; ``runs`` verifies one signature per bus and transaction (plus the failures)."""
    ing = Ingestor(engine, IngestCore(verify=verify), worker_id="w")
    await ing.refresh_devices()
    forged = sign_event(_variant(CHAIN[3]), FORGER)
    before = _verified_total()
    first = [
        ("B1", batch_payload("B1", CHAIN[2:4])),
        ("B2", batch_payload("B2", OTHER)),
        ("B1", batch_payload("B1", [*CHAIN[:2], forged])),
    ]
    res = await ing.ingest(first)
    assert (res.stored, res.rejected) == (10, {"bad_signature": 1})
    # seq 4 stored as the bus's last genuine record would be; now a seq 5 whose own sig
    # is wrong, then (next transaction) a seq 6 the bus linked to it: rejected, held
    bad = dict(CHAIN[4], sig=CHAIN[5]["sig"])
    after = sign_event(dict(CHAIN[5], prev=event_hash(bad)), KEYS["B1"])
    res = await ing.ingest([("B1", batch_payload("B1", [bad]))])
    assert (res.stored, res.rejected) == (0, {"bad_signature": 1})
    res = await ing.ingest([("B1", batch_payload("B1", [after]))])
    assert (res.stored, res.rejected, res.acks) == (0, {}, {"B1": 4})
    assert await _stored(engine) == {"B1": [1, 2, 3, 4], "B2": [1, 2, 3, 4, 5, 6]}
    # runs: B1's genuine seq 4, the forged seq 4 beside it, B2's seq 6 (the genuine
    # seq 4 vouches for B1's seqs 3 to 1: no round 2), then the lone seq 5 and seq 6
    assert _verified_total() - before == (5 if verify == "runs" else 13)


async def test_a_message_the_transaction_drops_is_quarantined_once(engine: AsyncEngine) -> None:
    """The records a run decision rejects go through the quarantine budget like the
    decoder's, and leave the batch: the plan never sees them."""
    ing = Ingestor(engine, IngestCore(), worker_id="w")
    await ing.refresh_devices()
    tampered = [dict(e, sig=CHAIN[0]["sig"]) for e in CHAIN[1:]]
    prepared = ing.prepare([("B1", batch_payload("B1", [CHAIN[0], *tampered]))])
    assert [e.seq for e in prepared.order] == [1]
    assert [e.seq for e in prepared.groups["B1"]] == [1]
    assert [(r.seq, r.reason) for r in prepared.rejections] == [
        (s, "bad_signature") for s in range(2, 7)
    ]
    res = await ing.commit(prepared)
    assert (res.stored, res.rejected, res.acks) == (1, {"bad_signature": 5}, {"B1": 1})


@pytest.mark.parametrize("verify", ["runs", "every"])
async def test_the_run_decisions_rejections_count_against_their_own_messages(
    engine: AsyncEngine, verify: Verify
) -> None:
    """The quarantine budget is per message (``quarantine_per_message``): the records the
    run decision rejects are charged to the message each came in, after what its decode
    rejected, as when each record's own signature is verified (was: all of a bus's
    counted as one message, so fewer rows were stored in ``runs``)."""
    forged = [sign_event(_variant(ev), FORGER) for ev in CHAIN]  # six runs, each fails
    messages = [
        ("B1", batch_payload("B1", forged[:2])),
        ("B1", batch_payload("B1", [*forged[2:4], {"v": 1}])),  # + one schema rejection
        ("B1", batch_payload("B1", forged[4:])),
    ]
    ing = await per_message_ingestor(engine, verify, "w")
    res = await ing.ingest(messages)
    assert res.rejected == {"bad_signature": 6, "schema": 1}
    async with engine.connect() as conn:
        rows = (
            await conn.execute(sa.select(quarantine.c.seq, quarantine.c.reason).order_by("seq"))
        ).all()
    # two rows per message (the second message's three rejections: any two of them)
    per_message = collections.Counter(
        1 if r.seq in (1, 2) else 3 if r.seq in (5, 6) else 2 for r in rows
    )
    assert per_message == {1: 2, 2: 2, 3: 2}


async def test_every_verifies_each_record_once_the_batch_is_decoded(engine: AsyncEngine) -> None:
    """``every`` puts each signature off while the messages are decoded too, then
    verifies every record's own in one pass: a bad ``sig`` the bus's next record links
    to (taken by ``runs``) is rejected, one verification per record."""
    ing = Ingestor(engine, IngestCore(verify="every"), worker_id="w")
    await ing.refresh_devices()
    bad = dict(CHAIN[2], sig=CHAIN[3]["sig"])
    after = sign_event(dict(CHAIN[3], prev=event_hash(bad)), KEYS["B1"])
    prepared = Prepared()
    ing.prepare_one(prepared, "B1", batch_payload("B1", [*CHAIN[:2], bad, after]))
    assert [(e.seq, e.signed) for e in prepared.put_off] == [(s, False) for s in range(1, 5)]
    before = _verified_total()
    ing.verify_put_off(prepared)
    assert _verified_total() - before == 4
    assert [(r.seq, r.reason) for r in prepared.rejections] == [(3, "bad_signature")]
    assert [(e.seq, e.signed) for e in prepared.order] == [(1, True), (2, True), (4, True)]
    res = await ing.commit(prepared)
    assert (res.stored, res.acks) == (2, {"B1": 2})  # seq 4 held: its prev was rejected


def test_the_setting(tmp_path: Path) -> None:
    assert BackendConfig().ingest.verify == "runs"
    assert IngestCore().verify == "runs"
    toml = tmp_path / "backend.toml"
    toml.write_text('[ingest]\nverify = "every"\n', encoding="utf-8")
    cfg = load_config(BackendConfig, toml, env={})
    assert cfg.ingest.verify == "every"
    cfg = load_config(BackendConfig, toml, env={"BUSBELL_INGEST__VERIFY": "runs"})
    assert cfg.ingest.verify == "runs"
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    assert IngestWorker(cfg, engine).ingestor.core.verify == "runs"
    bad = load_config(BackendConfig, toml, env={"BUSBELL_INGEST__VERIFY": "some"})
    with pytest.raises(ConfigError, match="verify must be runs or every"):
        IngestWorker(bad, engine)
    with pytest.raises(ValueError, match="verify must be runs or every"):
        IngestCore(verify="all")  # type: ignore[arg-type]
