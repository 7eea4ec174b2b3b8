"""Token resolution: rid tables, proof checks, forged rtag, revocation, enrolment."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from backend._resolve import ProofRejected, Resolver, RiderKeyring
from busbell import (
    derive_bk,
    derive_rider_keys,
    encode_payload,
    interval_of,
    rid_for_interval,
    tq_of,
)

FLEET = hashlib.sha256(b"fleet").digest()
T = 1_762_500_123.0
IV = interval_of(T)


def _ring(n: int = 50) -> tuple[RiderKeyring, dict[str, bytes]]:
    keys = {f"r{k:03d}": hashlib.sha256(f"k{k}".encode()).digest()[:16] for k in range(n)}
    return RiderKeyring.from_token_keys(sorted(keys.items())), keys


def test_resolves_every_rider_in_its_interval_only() -> None:
    ring, keys = _ring()
    res = Resolver(ring)
    res.prepare(T)
    for rider, tk in keys.items():
        rid = rid_for_interval(derive_rider_keys(tk).rid_key, IV)
        assert res.resolve(rid.hex(), IV) == rider
        assert res.resolve(rid, IV) == rider
        assert res.resolve(rid.hex(), IV + 1) is None
    assert res.resolve("00" * 12, IV) is None
    assert res.resolve("zz" * 12, IV) is None
    assert res.resolve("00", IV) is None
    assert res.resolve(b"\x00", IV) is None


def test_batched_tables_equal_single_tables() -> None:
    ring, keys = _ring(20)
    a, b, c = ring.build_tables([IV - 1, IV, IV + 1])
    (single,) = ring.build_tables([IV])
    for rider, tk in keys.items():
        rid = rid_for_interval(derive_rider_keys(tk).rid_key, IV)
        idx = ring.index_of(rider)
        assert b.candidates(rid) == single.candidates(rid) == [idx]
        assert len(a) == len(c) == 20


def test_old_intervals_on_demand_with_lru() -> None:
    ring, keys = _ring(5)
    res = Resolver(ring, cache_intervals=3)
    tk = keys["r002"]
    rk = derive_rider_keys(tk).rid_key
    for i in range(IV - 10, IV):
        assert res.resolve(rid_for_interval(rk, i), i) == "r002"
    assert res.tables_built == 10
    assert res.resolve(rid_for_interval(rk, IV - 1), IV - 1) == "r002"
    assert res.tables_built == 10  # still cached


def test_enrol_after_tables_built_and_revoke() -> None:
    ring, _ = _ring(5)
    res = Resolver(ring)
    res.prepare(T)
    tk = bytes(range(16))
    res.enrolled("late", tk)
    rid = rid_for_interval(derive_rider_keys(tk).rid_key, IV)
    assert res.resolve(rid, IV) == "late"
    assert res.revoke("late")
    assert res.resolve(rid, IV) is None
    assert not res.revoke("nobody")
    # a revoked rider is skipped when new tables are built too
    assert res.resolve(rid_for_interval(derive_rider_keys(tk).rid_key, IV + 5), IV + 5) is None


def test_keyring_rejects_bad_keys_and_duplicates() -> None:
    ring, keys = _ring(2)
    with pytest.raises(ValueError, match="already"):
        ring.add("r000", keys["r000"])
    with pytest.raises(ValueError, match="16 bytes"):
        ring.rekey("x", b"short")
    with pytest.raises(ValueError, match="16 bytes"):
        ring.add("y", b"short")
    assert "r000" in ring
    assert len(ring) == 2
    assert ring.keys(0).rid_key == derive_rider_keys(keys["r000"]).rid_key


def _proof(tk: bytes, t: float) -> str:
    return encode_payload(derive_rider_keys(tk), t, fleet_key=FLEET).hex()


def test_check_proof_accepts_genuine() -> None:
    ring, keys = _ring(3)
    res = Resolver(ring)
    tk = keys["r001"]
    rid = rid_for_interval(derive_rider_keys(tk).rid_key, IV).hex()
    out = res.check_proof(
        "r001", _proof(tk, T), _proof(tk, T + 200), IV, rid=rid, start_t=T, end_t=T + 200
    )
    assert out.first_t <= T < out.first_t + 4
    assert out.last_t <= T + 200 < out.last_t + 4
    # without segment times the interval alone anchors tq
    res.check_proof(1, _proof(tk, T), _proof(tk, T + 5), IV)


def test_forged_rtag_minted_with_fleet_key_is_rejected() -> None:
    """A compromised bus holds the fleet key: it can mint btag for a sniffed rid, not rtag."""
    ring, keys = _ring(3)
    res = Resolver(ring)
    tk = keys["r001"]
    rid = rid_for_interval(derive_rider_keys(tk).rid_key, IV)
    head = bytes([1 << 5]) + tq_of(T).to_bytes(2, "big") + rid
    body = head + hmac.digest(derive_bk(FLEET, rid), head, "sha256")[:4]
    forged = (body + b"\x00\x00\x00\x00" + b"\x00").hex()
    assert res.resolve(rid, IV) == "r001"  # the rid itself resolves (it was sniffed)
    with pytest.raises(ProofRejected) as e:
        res.check_proof(
            "r001", forged, _proof(tk, T + 10), IV, rid=rid.hex(), start_t=T, end_t=T + 10
        )
    assert e.value.reason == "bad_rtag"
    # and another rider's mac_key does not verify it either
    with pytest.raises(ProofRejected) as e:
        res.check_proof("r002", _proof(tk, T), _proof(tk, T), IV, start_t=T, end_t=T)
    assert e.value.reason == "bad_rtag"


@pytest.mark.parametrize(
    ("first_t", "last_t", "start_t", "end_t", "reason"),
    [
        (T, T + 10, T + 400, T + 410, "tq_mismatch"),  # proof far before the segment
        (T + 10, T, T, T + 10, "tq_mismatch"),  # last before first
        (T, T + 600, T, T + 600, "interval_mismatch"),  # last proof in the next interval
    ],
)
def test_tq_checks(
    first_t: float, last_t: float, start_t: float, end_t: float, reason: str
) -> None:
    ring, keys = _ring(2)
    res = Resolver(ring, proof_slack_s=120)
    tk = keys["r000"]
    with pytest.raises(ProofRejected) as e:
        res.check_proof(
            "r000", _proof(tk, first_t), _proof(tk, last_t), IV, start_t=start_t, end_t=end_t
        )
    assert e.value.reason == reason


def test_malformed_and_mismatched_proofs() -> None:
    ring, keys = _ring(2)
    res = Resolver(ring)
    tk = keys["r000"]
    good = _proof(tk, T)
    with pytest.raises(ProofRejected, match="malformed_proof"):
        res.check_proof("r000", "zz" * 24, good, IV)
    with pytest.raises(ProofRejected, match="malformed_proof"):
        res.check_proof("r000", "00" * 24, good, IV)  # version 0
    with pytest.raises(ProofRejected, match="rid_mismatch"):
        res.check_proof("r000", good, good, IV, rid="00" * 12)
    with pytest.raises(ProofRejected, match="unknown_rider"):
        res.check_proof("nobody", good, good, IV)
    with pytest.raises(ProofRejected, match="unknown_rider"):
        res.check_proof(99, good, good, IV)
