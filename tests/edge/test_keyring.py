"""Fleet keys delivered by the backend's sealed bundles, and the deny list, on the bus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from busbell import (
    ContractError,
    DeviceKey,
    TokenVerifier,
    bus_kex_private,
    canonical_bytes,
    day_of,
    derive_rider_keys,
    ed25519_to_x25519_public,
    encode_payload,
    read_fleet_keys,
    seal_key_bundle,
    sign_denylist,
)
from edge._keyring import Denylist, FleetKeyring

NOW = 1_790_000_000.0
TODAY = day_of(NOW)


def bundle(device: DeviceKey, bus_id: str, keys: dict[int, bytes]) -> bytes:
    msg = seal_key_bundle(bus_id, ed25519_to_x25519_public(device.public.raw), keys, issued_at=NOW)
    return json.dumps(msg).encode()


def test_bundle_keys_are_merged_persisted_and_verify_tokens(tmp_path: Path) -> None:
    dev = DeviceKey.from_seed(bytes(range(32)))
    path = tmp_path / "state" / "FLEET.csv"
    ring = FleetKeyring(path, "B1", bus_kex_private(dev))
    assert ring.days_ahead(NOW) == -1
    keys = {TODAY + i: bytes([i + 1]) * 32 for i in range(4)}
    assert ring.apply_bundle(bundle(dev, "B1", keys), NOW) == sorted(keys)
    assert ring.days_ahead(NOW) == 3
    assert read_fleet_keys(path) == keys
    assert path.stat().st_mode & 0o777 == 0o600
    # the same bundle again changes nothing; a restart reads the file
    assert ring.apply_bundle(bundle(dev, "B1", keys), NOW) == []
    again = FleetKeyring(path, "B1", bus_kex_private(dev))
    payload = encode_payload(derive_rider_keys(bytes(16)), NOW, fleet_key=keys[TODAY])
    assert TokenVerifier(again.get).verify(payload, NOW).day == TODAY


def test_old_days_are_dropped_on_save(tmp_path: Path) -> None:
    dev = DeviceKey.from_seed(bytes(32))
    ring = FleetKeyring(tmp_path / "F.csv", "B1", bus_kex_private(dev), keep_days=1)
    ring.apply_bundle(bundle(dev, "B1", {TODAY - 5: b"\1" * 32, TODAY: b"\2" * 32}), NOW)
    assert sorted(ring.keys) == [TODAY]


def test_bundles_for_another_bus_or_key_or_tampered_are_refused(tmp_path: Path) -> None:
    dev = DeviceKey.from_seed(bytes(32))
    other = DeviceKey.from_seed(b"\7" * 32)
    ring = FleetKeyring(tmp_path / "F.csv", "B1", bus_kex_private(dev))
    with pytest.raises(ContractError, match="not for this bus"):
        ring.apply_bundle(bundle(dev, "B2", {TODAY: b"\1" * 32}), NOW)
    with pytest.raises(ContractError):
        ring.apply_bundle(bundle(other, "B1", {TODAY: b"\1" * 32}), NOW)
    msg = json.loads(bundle(dev, "B1", {TODAY: b"\1" * 32}))
    msg["issued_at"] = NOW + 1
    with pytest.raises(ContractError):
        ring.apply_bundle(json.dumps(msg).encode(), NOW)
    with pytest.raises(ContractError):
        ring.apply_bundle(b"\xff not json", NOW)
    assert ring.bundles_rejected == 4
    assert ring.keys == {}
    assert not (tmp_path / "F.csv").exists()


BACKEND = DeviceKey.from_seed(b"\x42" * 32)


def signed(body: dict[str, object], key: DeviceKey = BACKEND) -> bytes:
    return canonical_bytes(sign_denylist(body, key))


def tampered(payload: bytes) -> bytes:
    obj = json.loads(payload)
    obj["sig"] = ("B" if obj["sig"][0] == "A" else "A") + obj["sig"][1:]
    return json.dumps(obj).encode()


def test_denylist_versions_and_rids() -> None:
    dl = Denylist("B1", BACKEND.public)
    rid = bytes(range(12))
    assert dl.apply(signed({"v": 1, "version": 2, "rids": [rid.hex()], "devices": []}))
    assert dl.denies(rid)
    assert not dl.denies(bytes(12))
    assert not dl.bus_revoked
    # an older version never replaces a newer one; an empty (cleared) payload is ignored
    assert not dl.apply(signed({"version": 1, "rids": [], "devices": ["B1"]}))
    assert dl.stale == 1
    assert not dl.apply(b"")
    assert dl.denies(rid)
    assert dl.apply(signed({"version": 3, "rids": [], "devices": ["B1"]}))
    assert dl.bus_revoked
    assert len(dl) == 0
    reasons = []
    for bad in (
        b"{",
        signed({"version": "x"}),
        signed({"version": 4, "rids": ["00"]}),
        b"[]",
        signed({"version": True}),
        b"[" * 5000 + b"]" * 5000,
    ):
        with pytest.raises(ContractError) as info:
            dl.apply(bad)
        reasons.append(info.value.reason)
    assert reasons == ["not_json", "malformed", "malformed", "not_object", "malformed", "too_deep"]
    assert dl.rejected == 6
    assert dl.version == 3


def test_unsigned_forged_and_huge_version_lists_cannot_block_later_ones() -> None:
    dl = Denylist("B1", BACKEND.public)
    rid = bytes(range(12))
    huge = {"v": 1, "version": 2**62, "rids": [rid.hex()], "devices": ["B1"]}
    cases = [
        (json.dumps(huge).encode(), "unsigned"),  # no sig at all
        (signed(huge, DeviceKey.from_seed(b"\x66" * 32)), "bad_signature"),  # another key
        (tampered(signed(huge)), "bad_signature"),  # a tampered signature
        (json.dumps({**huge, "sig": "not base64!"}).encode(), "bad_signature"),
        (json.dumps({**huge, "version": 2**64, "sig": "x"}).encode(), "int_range"),
    ]
    # the signed body altered after signing (version raised): the signature breaks
    forged = json.loads(signed({"v": 1, "version": 5, "rids": [], "devices": []}))
    forged["version"] = 2**62
    cases.append((json.dumps(forged).encode(), "bad_signature"))
    for payload, reason in cases:
        with pytest.raises(ContractError) as info:
            dl.apply(payload)
        assert info.value.reason == reason
    assert dl.version == 0
    assert dl.rejected == len(cases)
    # the backend's next genuine list still applies
    assert dl.apply(signed({"v": 1, "version": 1, "rids": [rid.hex()], "devices": []}))
    assert dl.denies(rid)
    # a bus without the backend key refuses every list
    blind = Denylist("B1")
    with pytest.raises(ContractError) as info:
        blind.apply(signed({"v": 1, "version": 1, "rids": [], "devices": []}))
    assert info.value.reason == "no_backend_key"


def test_backend_x25519_conversion_matches_the_bus_side() -> None:
    dev = DeviceKey.from_seed(bytes(range(32)))
    pub = (
        bus_kex_private(dev)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    assert pub == ed25519_to_x25519_public(dev.public.raw)
    assert pub.hex() == "4701d08488451f545a409fb58ae3e58581ca40ac3f7f114698cd71deac73ca01"
