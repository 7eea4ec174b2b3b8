"""The ``missed`` chain record: schema, event id, signing and chaining with segments."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from busbell import (
    EVENT_TYPES,
    GENESIS_PREV,
    ContractError,
    DeviceKey,
    HashChain,
    SignatureError,
    derive_event_id,
    derive_missed_event_id,
    event_hash,
    sign_event,
    validate_event,
    verify_event,
)
from tests.factories.events import segment_event

KEY = DeviceKey.from_seed(bytes(32))
WAIT = {
    "request_id": "w-0123456789abcdef",
    "route_id": "G6000",
    "stop_id": "S3",
    "t": 1700000000.0,
    "expires_t": 1700000900.0,
    "source": "app",
    "assist": False,
}


def missed(seq: int = 1, prev: str = GENESIS_PREV) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "missed",
        "bus_id": "bus-0001",
        "seq": seq,
        "event_id": derive_missed_event_id("bus-0001", seq, WAIT["request_id"], 1700000300.0),
        "prev": prev,
        "request_id": WAIT["request_id"],
        "route_id": "G6000",
        "trip_id": "T1",
        "stop_id": "S3",
        "wait": dict(WAIT),
        "passed": {
            "t": 1700000300.0,
            "lat": 37.5,
            "lon": 127.0,
            "speed_mps": 8.5,
            "distance_m": 12.3,
        },
        "doors_opened": False,
    }


def segment(seq: int, prev: str) -> dict[str, Any]:
    return segment_event(seq, prev, end_cause="alighted", evidence={})


def test_types() -> None:
    assert frozenset({"segment", "missed"}) == EVENT_TYPES


def test_signed_missed_record_validates_and_verifies() -> None:
    rec = sign_event(missed(), KEY)
    assert validate_event(rec) is rec
    verify_event(rec, KEY.public)
    tampered = copy.deepcopy(rec)
    tampered["passed"]["distance_m"] = 500.0
    validate_event(tampered)
    with pytest.raises(SignatureError):
        verify_event(tampered, KEY.public)
    assert validate_event(missed(), require_sig=False)["type"] == "missed"
    with pytest.raises(ContractError) as e:
        validate_event(missed())
    assert (e.value.field, e.value.reason) == ("sig", "missing")


def test_missed_and_segments_share_one_chain() -> None:
    a = sign_event(segment(1, GENESIS_PREV), KEY)
    b = sign_event(missed(2, event_hash(a)), KEY)
    c = sign_event(segment(3, event_hash(b)), KEY)
    chain = HashChain()
    for rec in (a, b, c):
        validate_event(rec)
        chain.check(rec)
        chain.advance(rec)
    assert chain.next_seq == 4


def test_missed_event_id_is_deterministic_and_apart_from_segment_ids() -> None:
    a = derive_missed_event_id("b", 1, "w-1", 2.0)
    assert a == derive_missed_event_id("b", 1, "w-1", 2.0)
    assert len(a) == 32
    assert a != derive_missed_event_id("b", 2, "w-1", 2.0)
    assert a != derive_missed_event_id("b", 1, "w-2", 2.0)
    assert a != derive_event_id("b", 1, "w-1", 2.0)


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda e: e.pop("wait"), "wait", "missing"),
        (lambda e: e.pop("request_id"), "request_id", "missing"),
        (lambda e: e.update(rid="ab" * 12), "rid", "unknown_field"),
        (lambda e: e.update(v=2), "v", "wrong_version"),
        (lambda e: e.update(v=True), "v", "wrong_version"),
        (lambda e: e.update(seq=0), "seq", "invalid"),
        (lambda e: e.update(seq=1.0), "seq", "invalid"),
        (lambda e: e.update(prev="x" * 64), "prev", "invalid"),
        (lambda e: e.update(bus_id="a b"), "bus_id", "invalid"),
        (lambda e: e.update(event_id=""), "event_id", "invalid"),
        (lambda e: e.update(request_id="a/b"), "request_id", "invalid"),
        (lambda e: e.update(route_id=None), "route_id", "invalid"),
        (lambda e: e.update(stop_id="+"), "stop_id", "invalid"),
        (lambda e: e.update(stop_id="x" * 129), "stop_id", "invalid"),
        (lambda e: e.update(trip_id=""), "trip_id", "invalid"),
        (lambda e: e.update(trip_id=7), "trip_id", "invalid"),
        (lambda e: e.update(wait=[]), "wait", "not_an_object"),
        (lambda e: e["wait"].pop("assist"), "wait.assist", "missing"),
        (lambda e: e["wait"].update(x=1), "wait.x", "unknown_field"),
        (lambda e: e["wait"].update(source="sms"), "wait.source", "invalid"),
        (lambda e: e["wait"].update(assist=1), "wait.assist", "invalid"),
        (lambda e: e["wait"].update(t=float("nan")), "wait.t", "invalid"),
        (lambda e: e["wait"].update(t=-1), "wait.t", "invalid"),
        (lambda e: e["wait"].update(expires_t=1.0), "wait.expires_t", "invalid"),
        (lambda e: e["wait"].update(stop_id="S4"), "wait.stop_id", "invalid"),
        (lambda e: e["wait"].update(request_id="w-2"), "wait.request_id", "invalid"),
        (lambda e: e["wait"].update(route_id="11"), "wait.route_id", "invalid"),
        (lambda e: e.update(passed=None), "passed", "not_an_object"),
        (lambda e: e["passed"].pop("lat"), "passed.lat", "missing"),
        (lambda e: e["passed"].update(t=float("inf")), "passed.t", "invalid"),
        (lambda e: e["passed"].update(t=-5), "passed.t", "invalid"),
        (lambda e: e["passed"].update(lat=91), "passed.lat", "invalid"),
        (lambda e: e["passed"].update(lon=-180.5), "passed.lon", "invalid"),
        (lambda e: e["passed"].update(lon="127"), "passed.lon", "invalid"),
        (lambda e: e["passed"].update(speed_mps=-0.1), "passed.speed_mps", "invalid"),
        (lambda e: e["passed"].update(speed_mps=101), "passed.speed_mps", "invalid"),
        (lambda e: e["passed"].update(distance_m=-1), "passed.distance_m", "invalid"),
        (lambda e: e["passed"].update(distance_m=True), "passed.distance_m", "invalid"),
        (lambda e: e["passed"].update(t=1700000900.5), "passed.t", "invalid"),
        (lambda e: e.update(doors_opened=True), "doors_opened", "invalid"),
        (lambda e: e.update(doors_opened=0), "doors_opened", "invalid"),
        (lambda e: e.update(sig="short"), "sig", "invalid"),
    ],
)
def test_missed_rejections_name_the_field(mutate: Any, field: str, reason: str) -> None:
    rec = sign_event(missed(), KEY)
    mutate(rec)
    with pytest.raises(ContractError) as e:
        validate_event(rec)
    assert (e.value.field, e.value.reason) == (field, reason)


def test_segment_fields_do_not_make_a_missed_record_and_vice_versa() -> None:
    seg = segment(1, GENESIS_PREV)
    seg["type"] = "missed"
    with pytest.raises(ContractError) as e:
        validate_event(seg, require_sig=False)
    assert e.value.reason == "missing"
    rec = missed()
    rec["type"] = "segment"
    with pytest.raises(ContractError) as e:
        validate_event(rec, require_sig=False)
    assert e.value.reason == "missing"
    rec = missed()
    rec["type"] = "skipped"
    with pytest.raises(ContractError) as e:
        validate_event(rec, require_sig=False)
    assert e.value.field in {"rid", "type", "distance_m", "end", "evidence", "interval"}


_JUNK = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4)


@given(
    st.sampled_from(sorted(missed()) + ["sig", "x"]),
    st.sampled_from(["", "wait", "passed"]),
    st.one_of(_JUNK, st.lists(_JUNK, max_size=2), st.dictionaries(st.text(max_size=2), _JUNK)),
)
def test_validate_missed_never_raises_other_errors(key: str, where: str, junk: Any) -> None:
    rec = sign_event(missed(), KEY)
    target = rec[where] if where else rec
    target[key] = junk
    rec["type"] = "missed"
    try:
        validate_event(rec)
    except ContractError:
        pass
