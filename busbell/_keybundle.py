"""Fleet-key bundles: the backend seals a bus's coming fleet day keys to that bus.

ECIES: an ephemeral X25519 key agrees with the bus's X25519 key (by default the
Montgomery form of its Ed25519 device key, as libsodium converts it), HKDF-SHA256 derives
an AES-256-GCM key, and the header (version, bus, algorithm, ephemeral key, issue time) is
authenticated as associated data. The backend seals (``seal_key_bundle``), the edge opens
(``open_key_bundle``); ``docs/keys.md`` has the construction and a test vector.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from busbell._canonical import canonical_bytes
from busbell._errors import ContractError
from busbell._signing import DeviceKey

__all__ = [
    "BUNDLE_ALG",
    "bus_kex_private",
    "ed25519_to_x25519_public",
    "open_key_bundle",
    "seal_key_bundle",
]

BUNDLE_ALG = "X25519-HKDF-SHA256-AES256GCM"
_BUNDLE_INFO = b"busbell-fleet-keys-v1"
_P = 2**255 - 19


def ed25519_to_x25519_public(ed_public: bytes) -> bytes:
    """The X25519 (Montgomery ``u``) public key of an Ed25519 public key.

    ``u = (1 + y) / (1 - y) mod p`` (RFC 7748 section 4.1), as libsodium's
    ``crypto_sign_ed25519_pk_to_curve25519``.

    Raises:
        ContractError: when ``ed_public`` is not 32 bytes or encodes ``y = 1``.
    """
    if len(ed_public) != 32:
        raise ContractError("an Ed25519 public key is 32 bytes", field="public_key")
    y = int.from_bytes(ed_public, "little") & ((1 << 255) - 1)
    if y >= _P or (1 - y) % _P == 0:
        raise ContractError("not a valid Ed25519 public key", field="public_key")
    u = (1 + y) * pow((1 - y) % _P, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def bus_kex_private(device_key: DeviceKey) -> X25519PrivateKey:
    """The bus's X25519 private key derived from its Ed25519 device key.

    The X25519 scalar is the clamped first half of SHA-512(seed), i.e. the Ed25519
    secret scalar, so its public key is :func:`ed25519_to_x25519_public` of the device's
    public key (libsodium's ``crypto_sign_ed25519_sk_to_curve25519``).
    """
    seed = device_key.seed()
    return X25519PrivateKey.from_private_bytes(hashlib.sha512(seed).digest()[:32])


def _bundle_key(shared: bytes, epk: bytes, recipient: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=epk + recipient, info=_BUNDLE_INFO
    ).derive(shared)


def _header_aad(header: Mapping[str, Any]) -> bytes:
    return canonical_bytes({k: header[k] for k in ("v", "bus_id", "alg", "epk", "issued_at")})


def seal_key_bundle(
    bus_id: str,
    recipient_x25519: bytes,
    keys: Mapping[int, bytes],
    *,
    issued_at: float,
    ephemeral: X25519PrivateKey | None = None,
    nonce: bytes | None = None,
) -> dict[str, Any]:
    """Encrypt fleet day keys to one bus (ECIES: X25519 + HKDF-SHA256 + AES-256-GCM).

    Args:
        bus_id: the bus (bound into the associated data and the plaintext).
        recipient_x25519: the bus's X25519 public key (32 bytes).
        keys: ``{day: 32-byte fleet key}``.
        issued_at: UNIX time of issue (bound into the associated data).
        ephemeral: the ephemeral key (tests and vectors only; random by default).
        nonce: the 12-byte GCM nonce (tests and vectors only; random by default).

    Returns:
        The message published on ``buses/{bus}/keys`` (see ``docs/keys.md``).
    """
    eph = ephemeral or X25519PrivateKey.generate()
    epk = eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient_x25519))
    header: dict[str, Any] = {
        "v": 1,
        "bus_id": bus_id,
        "alg": BUNDLE_ALG,
        "epk": epk.hex(),
        "issued_at": issued_at,
    }
    plaintext = canonical_bytes(
        {
            "bus_id": bus_id,
            "keys": [{"day": d, "fleet_key": k.hex()} for d, k in sorted(keys.items())],
        }
    )
    n = nonce if nonce is not None else secrets.token_bytes(12)
    ct = AESGCM(_bundle_key(shared, epk, recipient_x25519)).encrypt(
        n, plaintext, _header_aad(header)
    )
    header["days"] = sorted(keys)
    header["nonce"] = n.hex()
    header["ct"] = base64.b64encode(ct).decode("ascii")
    return header


def open_key_bundle(message: Mapping[str, Any], kex_private: X25519PrivateKey) -> dict[int, bytes]:
    """Decrypt a key bundle (what the bus does; the reference for the edge).

    Raises:
        ContractError: when the message is malformed, not for this key, or tampered with.
    """
    if not isinstance(message, Mapping):  # found by tests/fuzz: None raised AttributeError
        raise ContractError("a key bundle is a JSON object", field="")
    try:
        if message.get("v") != 1 or message.get("alg") != BUNDLE_ALG:
            raise ContractError("unsupported key bundle", field="alg")
        epk = bytes.fromhex(str(message["epk"]))
        nonce = bytes.fromhex(str(message["nonce"]))
        ct = base64.b64decode(str(message["ct"]), validate=True)
        recipient = kex_private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        shared = kex_private.exchange(X25519PublicKey.from_public_bytes(epk))
        pt = AESGCM(_bundle_key(shared, epk, recipient)).decrypt(nonce, ct, _header_aad(message))
        body = json.loads(pt)
        if body.get("bus_id") != message["bus_id"]:
            raise ContractError("key bundle bus_id mismatch", field="bus_id")
        out: dict[int, bytes] = {}
        for item in body["keys"]:
            key = bytes.fromhex(item["fleet_key"])
            if len(key) != 32 or not isinstance(item["day"], int):
                raise ContractError("bad fleet key in bundle", field="keys")
            out[item["day"]] = key
        return out
    except ContractError:
        raise
    except InvalidTag:
        raise ContractError("key bundle does not decrypt (wrong bus or tampered)") from None
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ContractError(f"malformed key bundle: {exc}") from None
