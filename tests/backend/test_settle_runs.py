"""Settle's signature check per hash-linked run (``verify="runs"``), case by case.

The property test over hostile deliveries is ``test_ingest_equivalence.py``; these pin
each rule of :func:`backend._settle._verify_runs` with the number of signatures it
verifies.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from backend._settle import Verify, check_lines
from busbell import canonical_bytes, event_hash, sign_event
from tests.factories.fare_events import device_key_for, make_events

KEYS = {b: device_key_for(b) for b in ("B1", "B2")}
DEVICES = {b: k.public for b, k in KEYS.items()}
CHAIN = make_events("B1", KEYS["B1"], 6)
OTHER = make_events("B2", KEYS["B2"], 6)
FORGER = device_key_for("ZZ8")  # registered for no bus


def _check(events: list[dict[str, Any]], verify: Verify = "runs") -> tuple[list[str | None], int]:
    checked, verified = check_lines([canonical_bytes(e) for e in events], DEVICES, verify=verify)
    return [c.reason for c in checked], verified


def _variant(ev: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return dict(ev, distance_m=ev["distance_m"] + 1.0, **kw)


def test_a_linked_chain_costs_one_signature_in_any_order() -> None:
    for order in (CHAIN, CHAIN[::-1], random.Random(1).sample(CHAIN, len(CHAIN))):
        assert _check(order) == ([None] * 6, 1)
        assert _check(order, "every") == ([None] * 6, 6)
    assert _check([*CHAIN, *OTHER]) == ([None] * 12, 2)  # one per bus
    assert _check([*CHAIN[:2], *CHAIN[3:]]) == ([None] * 5, 2)  # a gap: two runs


def test_a_copy_is_one_record() -> None:
    assert _check([CHAIN[2], CHAIN[2], CHAIN[3], CHAIN[2]]) == ([None] * 4, 1)


def test_a_forged_record_linking_to_the_chain_is_verified_and_its_parents_too() -> None:
    """A forged child of seq 3 (and no genuine seq 4 checked with it): the child fails,
    and seqs 3, 2, 1 (which no verified record vouches for) are then verified one by
    one, not rejected with it."""
    forged = sign_event(_variant(CHAIN[3]), FORGER)
    assert _check([*CHAIN[:3], forged]) == ([None, None, None, "bad_signature"], 4)
    # with the genuine seq 4 beside it, seq 4 vouches for seq 3
    assert _check([*CHAIN[:4], forged]) == ([None] * 4 + ["bad_signature"], 2)


def test_a_forged_run_vouches_for_nothing() -> None:
    """Three forged records that link to each other and to the genuine seq 2: a failed
    signature vouches for nothing, so each is verified on its own."""
    run = [sign_event(_variant(CHAIN[2]), FORGER)]
    for k in (3, 4):
        run.append(sign_event(_variant(CHAIN[k], prev=event_hash(run[-1])), FORGER))
    reasons, verified = _check([*CHAIN[:2], *run])
    assert reasons == [None, None, "bad_signature", "bad_signature", "bad_signature"]
    assert verified == 5  # the last; then the others, seq 2 and seq 1 (none vouched)
    # the genuine seq 3 beside them: it vouches for seq 2 and 1
    reasons, verified = _check([*CHAIN[:3], *run])
    assert reasons == [None, None, None, "bad_signature", "bad_signature", "bad_signature"]
    assert verified == 4  # the last forged and the genuine seq 3; then the other two


def test_a_signature_vouches_only_for_records_of_its_own_bus() -> None:
    """B2's genuine key links to a forged B1 record: the forged record is verified."""
    forged = dict(_variant(CHAIN[2]), sig=CHAIN[2]["sig"])
    linker = sign_event(dict(OTHER[3], prev=event_hash(forged)), KEYS["B2"])
    reasons, _ = _check([forged, linker])
    assert reasons == ["bad_signature", None]


def test_a_record_at_a_linked_seq_must_link_by_hash() -> None:
    """A tampered seq 3 beside the genuine seqs 3 and 4: seq 4 names the genuine one's
    hash, so the tampered one is verified (and fails) whatever the order."""
    tampered = _variant(CHAIN[2])
    for events in ([*CHAIN[:4], tampered], [tampered, *CHAIN[:4]]):
        reasons, verified = _check(events)
        assert sorted(map(str, reasons)) == ["None"] * 4 + ["bad_signature"]
        assert verified == 2
    # alone with the next seq (the genuine seq 3 not checked with them): the same
    reasons, verified = _check([tampered, CHAIN[3]])
    assert (reasons, verified) == (["bad_signature", None], 2)


@pytest.mark.parametrize("where", ["first", "middle"])
def test_a_bad_signature_the_bus_itself_linked_to(where: str) -> None:
    """Only the bus's key can link a later record to a record whose own ``sig`` does not
    verify. ``runs`` takes that record as the bus vouched for it (its bytes, ``sig``
    included, are what the bus signed over); ``every`` rejects it, as online ingest does.
    See docs/backend-ingest.md, "Offline: one signature per hash-linked run"."""
    k = 0 if where == "first" else 2
    bad = dict(CHAIN[k], sig=CHAIN[k + 1]["sig"])  # the bus's record, a wrong sig
    after = [sign_event(dict(CHAIN[k + 1], prev=event_hash(bad)), KEYS["B1"])]
    events = [*CHAIN[:k], bad, *after]
    assert _check(events) == ([None] * (k + 2), 1)
    reasons, _ = _check(events, "every")
    assert reasons == [None] * k + ["bad_signature", None]


def test_records_rejected_on_their_own_are_never_in_a_run() -> None:
    """Unknown device, schema and malformed lines keep their reasons; the chain around
    them is decided as usual."""
    unknown = sign_event(dict(CHAIN[1], bus_id="ZZ9"), device_key_for("ZZ9"))
    lines = [canonical_bytes(e) for e in (CHAIN[0], unknown, CHAIN[1], dict(CHAIN[2], seq=0))]
    checked, verified = check_lines([*lines, b"{not json", b""], DEVICES)
    assert [c.reason for c in checked] == [
        None,
        "unknown_device",
        None,
        "schema",
        "malformed_payload",
    ]
    assert verified == 1
    assert check_lines([b"", b"  "], DEVICES) == ([], 0)
