"""The typed fare records: canonical bytes identical to the contract's, the fast batch
path no wider than the general one, and docs/asyncapi.yaml generated from the types."""

from __future__ import annotations

import copy
import hashlib
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from busbell import (
    ContractError,
    DeviceKey,
    JsonLimits,
    JsonRejected,
    canonical_bytes,
    derive_event_id,
    derive_missed_event_id,
    event_hash,
    loads_bounded,
    sign_event,
    signing_bytes,
    validate_event,
)
from busbell._fare_types import (
    MISSED_COLUMNS,
    SEGMENT_COLUMNS,
    MissedRecord,
    SegmentEvent,
    asyncapi_block,
    asyncapi_schemas,
    canonical,
    convert_event,
    decode_batch,
    decode_event,
    replace_asyncapi_block,
    signed_part,
)
from tests.factories.asyncapi import SPEC
from tests.factories.events import segment_event

ROOT = Path(__file__).resolve().parents[2]
KEY = DeviceKey.from_seed(b"\x07" * 32)

_text = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=1, max_size=8
)
_number = (
    st.integers(0, 2**53)
    | st.floats(0, 1e300, allow_nan=False, allow_infinity=False)
    | st.sampled_from([0.0, 1e-5, 9.5e-5, 1e-4, 1e15, 1e16, 1.5e17, 5e-324])
)
_scalar = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _number | _text


@st.composite
def segments(draw: st.DrawFn) -> dict[str, Any]:
    start = draw(_number)
    ev = segment_event(
        draw(st.integers(1, 2**63 - 1)),
        evidence=draw(st.dictionaries(_text, _scalar | st.lists(_scalar, max_size=2), max_size=4)),
    )
    ev["start"] = {"t": start, "stop_id": draw(st.none() | _text), "cause": "boarded"}
    ev["end"] = {"t": start + draw(_number), "stop_id": draw(st.none() | _text), "cause": "lost"}
    ev["route_id"] = draw(st.none() | _text)
    ev["distance_m"] = draw(_number)
    return ev


def missed_record(seq: int = 1) -> dict[str, Any]:
    wait = {
        "request_id": "w-1",
        "route_id": "11",
        "stop_id": "S3",
        "t": 1700000000,
        "expires_t": 1700000900.0,
        "source": "app",
        "assist": False,
    }
    return {
        "v": 1,
        "type": "missed",
        "bus_id": "bus-0001",
        "seq": seq,
        "event_id": "m1",
        "prev": "0" * 64,
        "request_id": "w-1",
        "route_id": "11",
        "trip_id": None,
        "stop_id": "S3",
        "wait": wait,
        "passed": {"t": 1700000500, "lat": 37.5, "lon": 127.0, "speed_mps": 8, "distance_m": 1.0},
        "doors_opened": False,
    }


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(segments())
def test_canonical_bytes_are_the_contracts(ev: dict[str, Any]) -> None:
    signed = sign_event(ev, KEY)
    typed = convert_event(signed)
    full = canonical(typed)
    assert full == canonical_bytes(signed)  # what the edge signs and chains
    assert signed_part(full, typed) == signing_bytes(signed)
    KEY.public.verify_b64(signed["sig"], signed_part(full, typed))
    assert canonical(decode_event(full)) == full
    assert canonical(convert_event(ev, require_sig=False)) == canonical_bytes(ev)


def test_integers_stay_integers() -> None:
    # a signature covers "t":5 and "t":5.0 differently: neither may turn into the other
    rec = sign_event(missed_record(), KEY)
    typed = decode_event(canonical_bytes(rec))
    assert isinstance(typed, MissedRecord)
    assert canonical(typed) == canonical_bytes(rec)
    assert type(typed.wait.t) is int
    assert type(typed.wait.expires_t) is float
    with pytest.raises(ContractError) as e:
        decode_event(canonical_bytes(dict(rec, seq=1.0)))
    assert e.value.field == "seq"


def test_rows_follow_the_columns() -> None:
    ev = convert_event(sign_event(segment_event(3), KEY))
    assert isinstance(ev, SegmentEvent)
    row = dict(zip(SEGMENT_COLUMNS, ev.ledger_row(), strict=True))
    assert (row["seq"], row["start_cause"], row["end_t"], row["proof_last"]) == (
        3,
        "boarded",
        1700000300.5,
        "21" * 24,
    )
    rec = convert_event(sign_event(missed_record(2), KEY))
    assert isinstance(rec, MissedRecord)
    mrow = dict(zip(MISSED_COLUMNS, rec.ledger_row(), strict=True))
    assert (mrow["seq"], mrow["wait_t"], mrow["passed_t"]) == (2, 1700000000, 1700000500)


_JUNK = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=3)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fast_batch_path_takes_only_what_the_general_path_takes(data: st.DataObject) -> None:
    events = [sign_event(segment_event(1), KEY), sign_event(missed_record(2), KEY)]
    events = copy.deepcopy(events)
    for _ in range(data.draw(st.integers(0, 2))):
        ev = data.draw(st.sampled_from(events))
        key = data.draw(st.sampled_from([*sorted(ev), "extra"]))
        if data.draw(st.booleans()):
            ev.pop(key, None)
        else:
            ev[key] = data.draw(_JUNK | st.dictionaries(st.text(max_size=2), _JUNK, max_size=2))
    try:
        payload = canonical_bytes({"bus_id": "bus-0001", "events": events})
    except ValueError:
        return
    fast = decode_batch(payload)
    try:
        obj = loads_bounded(payload, JsonLimits(max_bytes=1 << 20, max_depth=32))
        general: list[bytes] | None = []
        for item in obj["events"]:
            ev = convert_event(item)
            assert general is not None
            general.append(canonical(ev))
    except (JsonRejected, ContractError):
        general = None
    if fast is not None:
        assert general is not None, "the fast path took what the general path refuses"
        assert [canonical(e) for e in fast[1]] == general


def test_validate_event_is_the_typed_check() -> None:
    ev = sign_event(segment_event(), KEY)
    assert validate_event(ev) is ev
    assert event_hash(ev) == __import__("hashlib").sha256(canonical(convert_event(ev))).hexdigest()
    with pytest.raises(ContractError) as e:
        validate_event(dict(ev, route_id="a\x00b"))  # a ledger text column holds no NUL
    assert e.value.field == "route_id"


def test_asyncapi_document_is_generated_from_the_types() -> None:
    text = (ROOT / "docs" / "asyncapi.yaml").read_text(encoding="utf-8")
    assert asyncapi_block() in text
    assert replace_asyncapi_block(text) == text, "run: busbell schema fare-events --write ..."
    schemas = SPEC["components"]["schemas"]
    for name, schema in asyncapi_schemas().items():
        assert schemas[name] == schema


def test_schema_command_checks_and_rewrites(tmp_path: Path) -> None:
    doc = tmp_path / "asyncapi.yaml"
    text = (ROOT / "docs" / "asyncapi.yaml").read_text(encoding="utf-8")
    doc.write_text(text.replace('"minimum": 1,', '"minimum": 2,', 1), encoding="utf-8")
    cmd = [sys.executable, "-m", "busbell.cli", "schema", "fare-events"]
    drift = subprocess.run([*cmd, "--check", str(doc)], check=False, capture_output=True, text=True)
    assert drift.returncode == 1
    assert "differ from busbell._fare_types" in drift.stderr
    subprocess.run([*cmd, "--write", str(doc)], check=True, capture_output=True)
    assert doc.read_text(encoding="utf-8") == text


_FORMATTED = {
    # field path -> (the full-string expression it must match, nullable)
    "bus_id": (r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", False),
    "event_id": (r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", False),
    "prev": (r"[0-9a-f]{64}", False),
    "rid": (r"[0-9a-f]{24}", False),
    "proof.first": (r"[0-9a-f]{48}", False),
    "proof.last": (r"[0-9a-f]{48}", False),
    "route_id": (r"[^\x00]{1,128}", True),
    "trip_id": (r"[^\x00]{1,128}", True),
    "start.stop_id": (r"[^\x00]{1,128}", True),
    "end.stop_id": (r"[^\x00]{1,128}", True),
    "sig": (r"[A-Za-z0-9+/]{86}==", False),
}
_NEAR = st.sampled_from(
    [
        "",
        "\n",
        "\x00",
        "a\nb",
        "ab" * 12,
        "AB" * 12,
        "0" * 64,
        "0" * 63,
        "x" * 128,
        "x" * 129,
        "bus-0001",
        "-bus",
        "a/b",
        "A" * 86 + "==",
        "A" * 86 + "==\n",
        "None",
        "é",
    ]
)


def _set(ev: dict[str, Any], path: str, value: object) -> None:
    *parents, last = path.split(".")
    for part in parents:
        ev = ev[part]
    ev[last] = value


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(_FORMATTED)),
    st.none() | _NEAR | st.text(max_size=130) | st.builds(lambda s: s + "\n", _NEAR),
)
def test_each_formatted_field_takes_exactly_its_expression(path: str, value: str | None) -> None:
    """One joined match per record checks what a match per field would (with $ at the very
    end: a trailing newline is not part of any format)."""
    import re

    ev = sign_event(segment_event(1), KEY)
    _set(ev, path, value)
    regex, nullable = _FORMATTED[path]
    ok = re.fullmatch(regex, value) is not None if value is not None else nullable
    try:
        convert_event(ev)
    except ContractError as e:
        assert not ok, f"{path}={value!r} refused: {e}"
        assert (e.field, e.reason) == (path, "invalid")
    else:
        assert ok, f"{path}={value!r} taken"
    payload = canonical_bytes({"bus_id": "bus-0001", "events": [ev]})
    assert (decode_batch(payload) is not None) == ok


_TIMES = st.one_of(
    st.integers(0, 2**53),
    st.floats(0.0, 1e300, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, 1e-5, 1e-4, 0.00011, 1e15, 1e16, 1.5e16, 1700000000.123456]),
)


def _spec_id(key: list[Any]) -> str:
    """The contract's derivation, written out: SHA-256 of Python's canonical JSON."""
    return hashlib.sha256(canonical_bytes(key)).hexdigest()[:32]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    bus=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", fullmatch=True),
    seq=st.integers(1, 2**63 - 1),
    rid=st.from_regex(r"[0-9a-f]{24}", fullmatch=True),
    request=st.text(
        st.characters(blacklist_characters="/+#\x00", blacklist_categories=["Cs"]),
        min_size=1,
        max_size=128,
    ),
    t=_TIMES,
)
def test_the_one_event_id_derivation_is_the_contracts(
    bus: str, seq: int, rid: str, request: str, t: float
) -> None:
    """``derive_event_id`` / ``derive_missed_event_id`` (msgspec writes the key) give
    exactly SHA-256 of ``canonical_bytes`` (Python's json) of the key, whatever the
    number's type and range or the request id's characters, from the plain values (the
    edge) as from a typed record's fields (what ingest and settle check)."""
    seg = dict(segment_event(), bus_id=bus, seq=seq, rid=rid)
    seg["start"] = dict(seg["start"], t=t)
    seg["end"] = dict(seg["end"], t=t)
    rec = convert_event(seg, require_sig=False)
    assert isinstance(rec, SegmentEvent)
    want = _spec_id([bus, seq, rid, t])
    assert derive_event_id(bus, seq, rid, t) == want
    assert derive_event_id(rec.bus_id, rec.seq, rec.rid, rec.start.t) == want
    wait = {
        "request_id": request,
        "route_id": "R1",
        "stop_id": "S1",
        "t": 0,
        "expires_t": t,
        "source": "app",
        "assist": False,
    }
    missed = {
        "v": 1,
        "type": "missed",
        "bus_id": bus,
        "seq": seq,
        "event_id": "x",
        "prev": "0" * 64,
        "request_id": request,
        "route_id": "R1",
        "trip_id": None,
        "stop_id": "S1",
        "wait": wait,
        "passed": {"t": t, "lat": 0.0, "lon": 0.0, "speed_mps": 1.0, "distance_m": 2.0},
        "doors_opened": False,
    }
    m = convert_event(missed, require_sig=False)
    assert isinstance(m, MissedRecord)
    want = _spec_id(["missed", bus, seq, request, t])
    assert derive_missed_event_id(bus, seq, request, t) == want
    assert derive_missed_event_id(m.bus_id, m.seq, m.request_id, m.passed.t) == want


# Ids on the wire since the first session (computed by main 7eac78d's json derivation):
# the one derivation must keep every one of them byte for byte.
_KNOWN_IDS = [
    ("segment", "bus-0001", 1, "ab" * 12, 1700000000.0, "26fc8e5de16a3b34152102aa72c5047b"),
    (
        "segment",
        "bus-0001",
        2,
        "0123456789abcdef01234567",
        1700000123.456789,
        "84959a4f61e6a8f730f0bd38da36470d",
    ),
    ("segment", "B", 2**63 - 1, "ff" * 12, 1700000000, "45dc55b12398e9fcbe86e4ef543ad887"),
    ("segment", "b", 1, "ab" * 12, 0.0, "4a5d566c02383c5c2a9a74d50956d472"),
    ("segment", "b", 1, "ab" * 12, 1e-05, "277e14e65ffd73bc00d4c012c294f7ae"),
    ("segment", "b", 1, "ab" * 12, 1.5e16, "48a7862ccb24bb77e0fccf2c671eb716"),
    ("missed", "bus-0001", 42, "w-1", 1700000300.0, "0f8727edbc6ebda01f44d9f7bdc0b5e1"),
    (
        "missed",
        "bus-0001",
        43,
        '정류장 요청 "q"\\ \x01\u2028',
        1700000301.25,
        "584324095d1d4dcd9ca3066521295cd9",
    ),
    ("missed", "b", 1, "w-1", 1e16, "6343873fc0be199eead6873fea27188c"),
]


@pytest.mark.parametrize("case", _KNOWN_IDS)
def test_event_ids_are_the_ones_on_the_wire(case: tuple[str, str, int, str, float, str]) -> None:
    """Pinned ids (fast path, and floats msgspec writes otherwise than json): an edge
    and a backend of any version agree on every record's id."""
    kind, bus, seq, name, t, known = case
    derive = derive_event_id if kind == "segment" else derive_missed_event_id
    assert derive(bus, seq, name, t) == known


@pytest.mark.parametrize(
    ("bus", "seq", "name", "t", "error"),
    [
        ("b", 1, "w-1", float("nan"), ValueError),
        ("b", 1, "w-1", float("-inf"), ValueError),
        ("b", 1, "w-1", Decimal("1.5"), TypeError),
        (b"b", 1, "w-1", 1.0, TypeError),
        ("b", Decimal(1), "w-1", 1.0, TypeError),
        ("b", 1, b"w-1", 1.0, TypeError),
    ],
)
def test_event_id_of_values_json_cannot_carry_is_refused(
    bus: Any, seq: Any, name: Any, t: Any, error: type[Exception]
) -> None:
    """What ``canonical_bytes`` refuses the derivation refuses (msgspec alone would write
    NaN as null, a Decimal as a string and bytes as base64)."""
    with pytest.raises(error):
        derive_event_id(bus, seq, name, t)
    with pytest.raises(error):
        derive_missed_event_id(bus, seq, name, t)
