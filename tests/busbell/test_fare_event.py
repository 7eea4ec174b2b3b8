"""Fare event v1: schema, canonical bytes, signatures and the hash chain."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from busbell import (
    GENESIS_PREV,
    ChainError,
    ContractError,
    DeviceKey,
    HashChain,
    KeyFileError,
    SignatureError,
    canonical_bytes,
    derive_event_id,
    event_hash,
    sign_event,
    signing_bytes,
    validate_event,
    verify_event,
)
from tests.factories.events import segment_event

KEY = DeviceKey.from_seed(bytes(32))


def unsigned(seq: int = 1, prev: str = GENESIS_PREV) -> dict[str, Any]:
    return segment_event(seq, prev)


def chain(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    prev = GENESIS_PREV
    for seq in range(1, n + 1):
        ev = sign_event(unsigned(seq, prev), KEY)
        prev = event_hash(ev)
        out.append(ev)
    return out


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    assert canonical_bytes({"b": 1, "a": [1.5, "정류장"]}) == '{"a":[1.5,"정류장"],"b":1}'.encode()
    with pytest.raises(ValueError, match="Out of range"):
        canonical_bytes({"x": float("nan")})


def test_sign_verify_and_tamper() -> None:
    ev = sign_event(unsigned(), KEY)
    validate_event(ev)
    verify_event(ev, KEY.public)
    tampered = copy.deepcopy(ev)
    tampered["end"]["stop_id"] = "S9"
    with pytest.raises(SignatureError):
        verify_event(tampered, KEY.public)
    with pytest.raises(SignatureError):
        verify_event(ev, DeviceKey.from_seed(b"\1" * 32).public)
    with pytest.raises(SignatureError):
        verify_event({k: v for k, v in ev.items() if k != "sig"}, KEY.public)
    bad_b64 = dict(ev, sig="!" * 88)
    with pytest.raises(SignatureError):
        verify_event(bad_b64, KEY.public)
    assert signing_bytes(ev) == canonical_bytes(unsigned())


def test_signature_is_over_canonical_bytes_independently() -> None:
    ev = sign_event(unsigned(), KEY)
    body = json.dumps(
        {k: v for k, v in ev.items() if k != "sig"}, sort_keys=True, separators=(",", ":")
    ).encode()
    import base64

    KEY.public.verify(base64.b64decode(ev["sig"]), body)


def test_pem_round_trip(tmp_path: Path) -> None:
    k = DeviceKey.generate()
    path = tmp_path / "bus.pem"
    k.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert DeviceKey.load(path).public.hex == k.public.hex
    with pytest.raises(KeyFileError):
        k.save(path)
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(KeyFileError):
        DeviceKey.load(tmp_path / "bad.pem")
    with pytest.raises(KeyFileError):
        DeviceKey.load(tmp_path / "missing.pem")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: e.pop("rid"), "rid"),
        (lambda e: e.update(extra=1), "extra"),
        (lambda e: e.update(v=2), "v"),
        (lambda e: e.update(seq=0), "seq"),
        (lambda e: e.update(seq=True), "seq"),
        (lambda e: e.update(prev="0" * 63), "prev"),
        (lambda e: e.update(rid="AB" * 12), "rid"),
        (lambda e: e.update(bus_id="a/b"), "bus_id"),
        (lambda e: e["start"].update(cause="lost"), "start.cause"),
        (lambda e: e["end"].update(cause="boarded"), "end.cause"),
        (lambda e: e["end"].update(t=1.0), "end.t"),
        (lambda e: e["start"].update(t="x"), "start.t"),
        (lambda e: e.update(distance_m=-1), "distance_m"),
        (lambda e: e.update(distance_m=float("inf")), "distance_m"),
        (lambda e: e["proof"].update(first="zz"), "proof.first"),
        (lambda e: e.update(evidence=[]), "evidence"),
        (lambda e: e.update(sig="short"), "sig"),
        (lambda e: e.update(route_id=""), "route_id"),
        (lambda e: e.update(interval=-1), "interval"),
        (lambda e: e.update(type="tap"), "type"),
        (lambda e: e.update(start=[]), "start"),
        (lambda e: e["end"].pop("cause"), "end.cause"),
        (lambda e: e.update(proof={}), "proof.first"),
    ],
)
def test_schema_rejections_name_the_field(mutate: Any, field: str) -> None:
    ev = sign_event(unsigned(), KEY)
    mutate(ev)
    with pytest.raises(ContractError) as e:
        validate_event(ev)
    assert e.value.field == field


def test_schema_rejects_non_objects_and_missing_sig() -> None:
    with pytest.raises(ContractError):
        validate_event([1, 2])
    with pytest.raises(ContractError) as e:
        validate_event(unsigned())
    assert e.value.field == "sig"
    assert validate_event(unsigned(), require_sig=False)["seq"] == 1


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(), st.lists, max_leaves=8))
def test_validate_never_raises_other_errors(junk: Any) -> None:
    try:
        validate_event(junk)
    except ContractError:
        pass


def test_hash_chain_detects_gap_reuse_and_tamper() -> None:
    events = chain(4)
    c = HashChain()
    for ev in events:
        c.check(ev)
        c.advance(ev)
    assert c.next_seq == 5
    c2 = HashChain()
    with pytest.raises(ChainError) as e:
        c2.check(events[1])
    assert (e.value.seq, e.value.expected, e.value.got) == (2, "1", "2")
    c2.check(events[0])
    c2.advance(events[0])
    with pytest.raises(ChainError, match="reused"):
        c2.check(events[0])
    forged = sign_event(unsigned(2, "1" * 64), KEY)
    with pytest.raises(ChainError, match="prev hash mismatch"):
        c2.check(forged)


def test_event_id_is_deterministic_and_distinct() -> None:
    a = derive_event_id("b", 1, "ab" * 12, 1.0)
    assert a == derive_event_id("b", 1, "ab" * 12, 1.0)
    assert a != derive_event_id("b", 2, "ab" * 12, 1.0)
    assert len(a) == 32
