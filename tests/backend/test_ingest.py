"""IngestCore (sans-I/O): decoding, verification and chain planning."""

from __future__ import annotations

import gc
import json
from typing import Any

import pytest

from backend._errors import MalformedMessage
from backend._ingest import (
    GC_YOUNG_THRESHOLD,
    ChainPosition,
    Gap,
    IngestCore,
    VerifiedEvent,
    _tune_gc,
)
from backend._keys import DeviceInfo
from busbell import GENESIS_PREV, DeviceKey, canonical_bytes, sign_event
from tests.factories.fare_events import batch_payload, device_key_for, make_events

BUS = "B1"
KEY = device_key_for(BUS)
CHAIN = make_events(BUS, KEY, 12)


def core(**kw: Any) -> IngestCore:
    return IngestCore({BUS: DeviceInfo(KEY.public)}, **kw)


def verified(c: IngestCore, events: list[dict[str, Any]]) -> list[VerifiedEvent]:
    ok, bad = c.decode(BUS, batch_payload(BUS, events))
    assert bad == []
    return ok


# -- decode ------------------------------------------------------------------------


def test_decode_batch_bare_event_and_array() -> None:
    c = core()
    ok, bad = c.decode(BUS, batch_payload(BUS, CHAIN[:3]))
    assert [e.seq for e in ok] == [1, 2, 3]
    assert bad == []
    ok, _ = c.decode(BUS, canonical_bytes(CHAIN[0]))
    assert [e.seq for e in ok] == [1]
    ok, _ = c.decode(BUS, canonical_bytes(CHAIN[:2]))
    assert [e.seq for e in ok] == [1, 2]
    # A batch without bus_id is accepted too (the topic names the bus).
    ok, _ = c.decode(BUS, canonical_bytes({"events": CHAIN[:1]}))
    assert ok[0].raw == canonical_bytes(CHAIN[0]).decode()
    assert ok[0].hash == CHAIN[1]["prev"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe not json", "not_utf8"),
        (b"{truncated", "not_json"),
        (b"42", "not_an_object"),
        (b'"text"', "not_an_object"),
        (b'{"bus_id": "B2", "events": []}', "bus_mismatch"),
        (b'{"bus_id": "B1", "events": {}}', "bad_batch"),
    ],
)
def test_decode_malformed_payloads(payload: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as exc:
        core().decode(BUS, payload)
    assert exc.value.reason == reason


def test_decode_too_large() -> None:
    with pytest.raises(MalformedMessage) as exc:
        core(max_payload_bytes=100).decode(BUS, batch_payload(BUS, CHAIN[:1]))
    assert exc.value.reason == "too_large"


def test_decode_rejections_per_event() -> None:
    other = DeviceKey.generate()
    forged = sign_event(CHAIN[1], other)
    tampered = dict(CHAIN[2], distance_m=1.0)
    wrong_bus = make_events("B2", device_key_for("B2"), 1)[0]
    schema_bad = {k: v for k, v in CHAIN[3].items() if k != "rid"}
    c = core()
    ok, bad = c.decode(
        BUS, canonical_bytes([CHAIN[0], forged, tampered, wrong_bus, schema_bad, "junk"])
    )
    assert [e.seq for e in ok] == [1]
    assert [(r.reason, r.seq) for r in bad] == [
        ("bad_signature", 2),
        ("bad_signature", 3),
        ("bus_mismatch", 1),
        ("schema", 4),
        ("schema", None),
    ]
    assert "rid" in bad[3].detail
    assert bad[0].event_id == CHAIN[1]["event_id"]


def test_unknown_and_revoked_device() -> None:
    c = IngestCore({})
    _, bad = c.decode(BUS, batch_payload(BUS, CHAIN[:1]))
    assert bad[0].reason == "unknown_device"
    c.set_devices({BUS: DeviceInfo(KEY.public, revoked=True)})
    _, bad = c.decode(BUS, batch_payload(BUS, CHAIN[:1]))
    assert bad[0].reason == "revoked_device"


# -- plan --------------------------------------------------------------------------


def test_plan_in_order_advances_and_acks() -> None:
    c = core()
    p = c.plan(BUS, ChainPosition(), verified(c, CHAIN[:5]), {}, now=0)
    assert [e.seq for e in p.store] == [1, 2, 3, 4, 5]
    assert p.position == ChainPosition(6, CHAIN[5]["prev"])
    assert p.ack_upto == 5
    assert p.held_count == 0
    assert p.gap is None


def test_plan_nothing_yet_has_no_ack() -> None:
    c = core()
    p = c.plan(BUS, ChainPosition(), [], {}, now=0)
    assert p.ack_upto is None
    assert p.store == []


def test_plan_duplicates_are_acked_no_ops() -> None:
    c = core()
    evs = verified(c, CHAIN[:3])
    pos = ChainPosition(4, CHAIN[3]["prev"])
    assert c.past_seqs(pos, evs) == [1, 2, 3]
    stored = {e.seq: e.hash for e in evs}
    p = c.plan(BUS, pos, evs + evs[:1], stored, now=0)
    assert p.store == []
    assert p.duplicates == 4  # every copy counts (as offline settle counts them)
    assert p.ack_upto == 3
    assert p.rejected == []


def test_plan_conflict_under_existing_seq_is_quarantined() -> None:
    c = core()
    other = make_events(BUS, KEY, 2, t0=1_700_000_000.0)  # a different chain, same key
    evs = verified(c, other)
    pos = ChainPosition(3, CHAIN[2]["prev"])
    stored = {1: CHAIN[1]["prev"], 2: CHAIN[2]["prev"]}
    p = c.plan(BUS, pos, evs, stored, now=0)
    # seq 1 links (to genesis) but differs: a conflict; seq 2 does not even link to the
    # stored seq 1: a prev mismatch (the rule settle applies too)
    assert [(r.reason, r.seq) for r in p.rejected] == [("chain_conflict", 1), ("prev_mismatch", 2)]
    assert p.ack_upto == 2


def test_plan_missing_stored_hash_is_a_caller_error() -> None:
    c = core()
    with pytest.raises(ValueError, match="stored hash"):
        c.plan(BUS, ChainPosition(3, "0" * 64), verified(c, CHAIN[:1]), {}, now=0)


def test_plan_prev_mismatch() -> None:
    c = core()
    broken = sign_event(dict(CHAIN[1], prev="ab" * 32), KEY)
    first = verified(c, CHAIN[:1])
    p = c.plan(BUS, ChainPosition(), first + verified(c, [broken]), {}, now=0)
    assert [e.seq for e in p.store] == [1]
    assert [(r.reason, r.seq) for r in p.rejected] == [("prev_mismatch", 2)]


def test_plan_same_seq_two_versions_one_links() -> None:
    c = core()
    alt = sign_event(dict(CHAIN[0], distance_m=9.0), KEY)
    p = c.plan(BUS, ChainPosition(), verified(c, [alt, CHAIN[0]]), {}, now=0)
    # Both have prev = genesis: the first that links is stored, the other conflicts.
    assert len(p.store) == 1
    assert p.store[0].seq == 1
    assert [r.reason for r in p.rejected] == ["chain_conflict"]


def test_plan_holds_future_events_and_opens_a_gap() -> None:
    c = core(resend_after_s=1.0)
    late = verified(c, CHAIN[5:8])  # seqs 6-8 while 1-5 are missing
    p = c.plan(BUS, ChainPosition(), late, {}, now=10.0)
    assert p.store == []
    assert p.held_count == 3
    assert p.ack_upto is None
    assert p.gap == Gap(1, 5, 10.0, due=11.0)  # the first request after the grace
    # the state lives in the caller's rows: the next plan gets it back
    p2 = c.plan(BUS, ChainPosition(), late[:1], {}, held=p.held, gap=p.gap, now=10.5)
    assert p2.duplicates == 1
    assert p2.gap == p.gap
    # The gap arrives: held events are stored with it, in order.
    p3 = c.plan(BUS, ChainPosition(), verified(c, CHAIN[:5]), {}, held=p.held, gap=p.gap, now=12)
    assert [e.seq for e in p3.store] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert p3.held_count == 0
    assert p3.gap is None
    assert p3.ack_upto == 8


def test_resends_back_off_then_an_unfilled_gap_is_reported_once() -> None:
    c = core(resend_after_s=1.0, resend_max_s=4.0, resend_max_attempts=3)
    p = c.plan(BUS, ChainPosition(), verified(c, CHAIN[5:8]), {}, now=0.0)
    gap = p.gap
    assert gap is not None
    asked, reported = [], []
    for k in range(1, 41):  # swept every 0.5 s for 20 s
        act = c.gap_step(gap, k / 2)
        gap = act.gap
        if act.resend:
            asked.append((k / 2, act.resend))
        if act.report:
            reported.append(k / 2)
    assert asked == [(1.0, (1, 5)), (3.0, (1, 5)), (7.0, (1, 5))]  # +1, +2, +4 s (cap): no storm
    assert reported == [11.0]  # once, after the last request had its time, never re-asked
    # part of the gap arrives: the rest is a new gap with its own grace
    p = c.plan(BUS, ChainPosition(), verified(c, CHAIN[:2]), {}, held=p.held, gap=gap, now=21.0)
    assert [e.seq for e in p.store] == [1, 2]
    assert p.gap == Gap(3, 5, 21.0, due=22.0)
    assert c.gap_step(p.gap, 22.0).resend == (3, 5)


def test_plan_held_events_stored_elsewhere_become_duplicates() -> None:
    c = core()
    p = c.plan(BUS, ChainPosition(), verified(c, CHAIN[3:5]), {}, now=0)
    # Another worker stored 1..6 meanwhile.
    pos = ChainPosition(7, CHAIN[6]["prev"])
    assert c.past_seqs(pos, [], p.held) == [3, 4, 5]  # and the seq before each (its prev)
    stored = {4: CHAIN[4]["prev"], 5: CHAIN[5]["prev"]}
    p = c.plan(BUS, pos, [], stored, held=p.held, gap=p.gap, now=1)
    assert p.duplicates == 2
    assert p.held_count == 0
    assert p.gap is None
    assert p.ack_upto == 6


def test_plan_held_bound_drops_highest() -> None:
    c = core(max_held_per_bus=2)
    p = c.plan(BUS, ChainPosition(), verified(c, CHAIN[2:6]), {}, now=0)
    assert p.held_count == 2
    assert sorted(p.held) == [3, 4]
    assert p.dropped == 2
    p = c.plan(BUS, ChainPosition(), verified(c, CHAIN[:2]), {}, held=p.held, now=0)
    assert [e.seq for e in p.store] == [1, 2, 3, 4]


def test_held_records_come_back_from_their_rows() -> None:
    c = core()
    p = c.plan(BUS, ChainPosition(), verified(c, CHAIN[2:4]), {}, now=0)
    rows = [(s, h, e.raw, 0) for s, hs in p.held.items() for h, e in hs.items()]
    assert IngestCore.held_from_rows(BUS, rows) == p.held


def test_genesis_prev_constant() -> None:
    assert json.loads(canonical_bytes(CHAIN[0]))["prev"] == GENESIS_PREV


def test_an_ingest_process_freezes_its_start_up_and_collects_young_objects_less_often() -> None:
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    try:
        gc.unfreeze()
        gc.set_threshold(700, *threshold[1:])
        _tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
    finally:
        gc.set_threshold(*threshold)
        if not frozen:
            gc.unfreeze()
