"""The published token v1 vectors, recomputed independently with direct cryptography calls."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from busbell import TokenVerifier, derive_rider_keys, encode_payload, verify_rtag

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "token_v1.json").read_text())[
    "vectors"
]


def independent_payload(v: dict[str, Any]) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """Compute (rid_key, mac_key, rid, bk, payload) from DESIGN.md alone."""
    token_key = bytes.fromhex(v["token_key"])
    rid_key = HKDF(hashes.SHA256(), 16, None, b"busbell-rid-v1").derive(token_key)
    mac_key = HKDF(hashes.SHA256(), 32, None, b"busbell-mac-v1").derive(token_key)
    t = v["t"]
    i = math.floor(t / 600)
    enc = Cipher(algorithms.AES(rid_key), modes.ECB()).encryptor()
    rid = (enc.update(b"BBRID" + b"\x00" * 7 + i.to_bytes(4, "big")) + enc.finalize())[:12]
    fleet_key = bytes.fromhex(v["fleet_key"])
    assert math.floor(t / 86400) == v["day"]
    bk = hmac.new(fleet_key, b"BBBK" + rid, hashlib.sha256).digest()[:16]
    hdr = bytes([(1 << 5) | v["flags"]])
    tq = (math.floor(t / 4) % 65536).to_bytes(2, "big")
    p15 = hdr + tq + rid
    btag = hmac.new(bk, p15, hashlib.sha256).digest()[:4]
    rtag = hmac.new(mac_key, p15 + btag, hashlib.sha256).digest()[:4]
    return rid_key, mac_key, rid, bk, p15 + btag + rtag + b"\x00"


def test_vector_file_covers_the_required_cases() -> None:
    keys = {v["token_key"] for v in VECTORS}
    assert len(keys) >= 5
    for key in keys:
        assert len({v["interval"] for v in VECTORS if v["token_key"] == key}) >= 3
    assert len({v["flags"] for v in VECTORS}) >= 4
    assert any(v["t"] % 600 == 0 for v in VECTORS)
    assert any(v["t"] % 86400 == 0 for v in VECTORS)
    assert any(0 < 86400 - v["t"] % 86400 < 1 for v in VECTORS)


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: f"{v['token_key'][:6]}@{v['t']}")
def test_vector_matches_independent_computation(v: dict[str, Any]) -> None:
    rid_key, mac_key, rid, bk, payload = independent_payload(v)
    assert rid_key.hex() == v["rid_key"]
    assert mac_key.hex() == v["mac_key"]
    assert rid.hex() == v["rid"]
    assert bk.hex() == v["bk"]
    assert payload.hex() == v["payload"]


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: f"{v['token_key'][:6]}@{v['t']}")
def test_codec_reproduces_vector_and_accepts_it(v: dict[str, Any]) -> None:
    keys = derive_rider_keys(bytes.fromhex(v["token_key"]))
    fleet = bytes.fromhex(v["fleet_key"])
    payload = encode_payload(keys, v["t"], fleet_key=fleet, flags=v["flags"])
    assert payload.hex() == v["payload"]
    accepted = TokenVerifier({v["day"]: fleet}).verify(payload, v["t"] + 3)
    assert accepted.day == v["day"]
    assert accepted.interval == v["interval"]
    assert int(accepted.payload.flags) == v["flags"]
    assert verify_rtag(accepted.payload, keys.mac_key)


def test_cli_encode_prints_the_vector_and_decode_reads_it_back() -> None:
    v = VECTORS[0]
    assert v["token_key"] == "000102030405060708090a0b0c0d0e0f"
    assert v["t"] == 1700000000.0
    assert v["flags"] == 1
    cli = [sys.executable, "-m", "busbell.cli"]
    out = subprocess.run(
        [*cli, "token", "encode", "--key", v["token_key"], "--fleet-key", v["fleet_key"]]
        + ["--t", "1700000000", "--flags", "1"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert out == v["payload"]
    dec = subprocess.run(
        [*cli, "token", "decode", out, "--fleet-key", v["fleet_key"], "--t", "1700000010"]
        + ["--key", v["token_key"], "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    info = json.loads(dec.stdout)
    assert info["rid"] == v["rid"]
    assert info["flag_names"] == ["ALIGHT_REQUEST"]
    assert info["btag_ok"] is True
    assert info["rtag_ok"] is True
    wrong = "00" * 32
    bad = subprocess.run(
        [*cli, "token", "decode", out, "--fleet-key", wrong, "--t", "1700000010", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["btag_ok"] is False
