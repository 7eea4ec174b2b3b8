"""The per-record checks online ingest and offline settle share (backend._record_check)."""

from __future__ import annotations

from backend._record_check import RecordFault, check_record, signature_fault
from busbell import canonical_bytes, derive_event_id, derive_missed_event_id, sign_event
from busbell._fare_types import convert_event
from tests.factories.fare_events import device_key_for, make_events

BUS = "B1"
KEY = device_key_for(BUS)
CHAIN = make_events(BUS, KEY, 3)


def test_a_genuine_record_passes_as_its_canonical_bytes() -> None:
    rec = convert_event(CHAIN[1])
    assert check_record(rec, KEY.public) == canonical_bytes(CHAIN[1])
    assert check_record(rec, KEY.public, topic_bus=BUS) == canonical_bytes(CHAIN[1])
    assert signature_fault(rec, canonical_bytes(CHAIN[1]), KEY.public) is None


def test_each_check_in_order_with_its_reason() -> None:
    rec = convert_event(CHAIN[1])
    full = canonical_bytes(CHAIN[1])
    other = device_key_for("B2").public
    # the topic first, then the registry, revocation, the event id, the signature
    assert check_record(rec, None, topic_bus="B2", revoked=True) == RecordFault(
        "bus_mismatch", "event of 'B1' on 'B2'", full
    )
    assert check_record(rec, None, revoked=True) == RecordFault(
        "unknown_device", "bus 'B1' is not registered", full
    )
    assert check_record(rec, other, revoked=True) == RecordFault(
        "revoked_device", "bus 'B1' is revoked", full
    )
    wrong = convert_event(dict(CHAIN[1], event_id="chosen-by-the-edge"))
    wrong_full = canonical_bytes(dict(CHAIN[1], event_id="chosen-by-the-edge"))
    assert check_record(wrong, other, revoked=True) == RecordFault(
        "revoked_device", "bus 'B1' is revoked", wrong_full
    )
    bad = check_record(wrong, other, verify=False)  # never put off
    assert isinstance(bad, RecordFault)
    assert (bad.reason, bad.full) == ("event_id_mismatch", wrong_full)
    assert (
        bad.detail == f"event_id 'chosen-by-the-edge' is not the derived {CHAIN[1]['event_id']!r}"
    )
    bad = check_record(rec, other)
    assert isinstance(bad, RecordFault)
    assert (bad.reason, bad.full) == ("bad_signature", full)
    # put off: everything but the signature
    assert check_record(rec, other, verify=False) == full


def test_a_tampered_body_or_another_sig_is_a_bad_signature() -> None:
    tampered = convert_event(dict(CHAIN[1], distance_m=CHAIN[1]["distance_m"] + 1))
    fault = check_record(tampered, KEY.public)
    assert isinstance(fault, RecordFault)
    assert fault.reason == "bad_signature"
    swapped = convert_event(dict(CHAIN[1], sig=CHAIN[2]["sig"]))
    fault = check_record(swapped, KEY.public)
    assert isinstance(fault, RecordFault)
    assert fault.reason == "bad_signature"


def test_a_record_whose_bytes_cannot_be_written_is_schema() -> None:
    rec = convert_event(dict(CHAIN[1], route_id="\ud800"))  # a lone surrogate
    fault = check_record(rec, KEY.public, topic_bus="B2")
    assert isinstance(fault, RecordFault)
    assert (fault.reason, fault.full) == ("schema", None)
    assert fault.detail.startswith("not encodable")


def test_an_event_id_must_be_its_derivation_for_every_record_type() -> None:
    """Segments: ``derive_event_id(bus_id, seq, rid, start.t)``; missed records:
    ``derive_missed_event_id(bus_id, seq, request_id, passed.t)``, never the other."""
    chain = make_events(BUS, KEY, 4, missed_every=2)
    for ev in chain:
        assert check_record(convert_event(ev), KEY.public) == canonical_bytes(ev)
    seg, missed = chain[0], chain[1]
    swapped = [
        dict(seg, event_id=derive_missed_event_id(BUS, 1, seg["rid"], seg["start"]["t"])),
        dict(seg, event_id=derive_event_id(BUS, 2, seg["rid"], seg["start"]["t"])),
        dict(seg, event_id=derive_event_id("B2", 1, seg["rid"], seg["start"]["t"])),
        dict(seg, event_id=derive_event_id(BUS, 1, seg["rid"], seg["start"]["t"] + 1)),
        dict(missed, event_id=derive_event_id(BUS, 2, missed["request_id"], missed["passed"]["t"])),
        dict(missed, event_id=derive_missed_event_id(BUS, 2, "q-other", missed["passed"]["t"])),
        dict(missed, event_id=chain[3]["event_id"]),
    ]
    for ev in swapped:
        fault = check_record(convert_event(sign_event(ev, KEY)), KEY.public)
        assert isinstance(fault, RecordFault), ev
        assert fault.reason == "event_id_mismatch"
