"""The deny list message v1: signed by the backend, verified by every bus.

Published retained (QoS 1) on ``denylist``::

    {"v": 1, "version": 7, "t": 1760000000.0,
     "from_interval": 2933333, "to_interval": 2933621,
     "rids": ["9f1c...", ...], "devices": ["B17"], "sig": "<base64 Ed25519>"}

``sig`` is the backend's Ed25519 signature over the canonical bytes (keys sorted, no
whitespace, UTF-8) of the message without ``sig`` — the same convention as a fare
event. A bus accepts a list only when the signature verifies with the backend public key
it was configured with, and only when its ``version`` is newer than the one it holds, so
neither an unsigned list nor a replayed older one changes anything, and a forged list
with a huge version cannot block the backend's later ones. Plain synchronous code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from busbell._canonical import canonical_bytes
from busbell._errors import ContractError, SignatureError
from busbell._safejson import JsonLimits, loads_object
from busbell._signing import DeviceKey, PublicKey

__all__ = [
    "DENYLIST_LIMITS",
    "DenylistMessage",
    "parse_denylist",
    "sign_denylist",
]

DENYLIST_LIMITS: Final = JsonLimits(max_bytes=16 * 1024 * 1024, max_depth=2)
"""~7.5 KB of rids per revoked rider (48 h window): room for ~2,000 revoked riders."""


@dataclass(frozen=True, slots=True)
class DenylistMessage:
    """A verified deny list."""

    version: int
    rids: frozenset[bytes]
    devices: frozenset[str]
    t: float | None


def sign_denylist(payload: dict[str, Any], key: DeviceKey) -> dict[str, Any]:
    """``payload`` (without ``sig``) with the backend's signature added."""
    body = {k: v for k, v in payload.items() if k != "sig"}
    return {**body, "sig": key.sign_b64(canonical_bytes(body))}


def parse_denylist(payload: bytes, public_key: PublicKey | None) -> DenylistMessage:
    """Parse and verify a deny list message.

    Args:
        payload: the MQTT payload.
        public_key: the backend's deny-list key; ``None`` refuses every list.

    Raises:
        ContractError: ``reason`` is a :class:`~busbell.JsonRejected` reason, or
            ``no_backend_key``, ``unsigned``, ``bad_signature`` or ``malformed``.
    """
    msg = loads_object(payload, DENYLIST_LIMITS)
    sig = msg.get("sig")
    if public_key is None:
        raise ContractError(
            "no backend public key configured: deny lists cannot be verified",
            field="sig",
            reason="no_backend_key",
        )
    if not isinstance(sig, str):
        raise ContractError("deny list is not signed", field="sig", reason="unsigned")
    body = {k: v for k, v in msg.items() if k != "sig"}
    try:
        public_key.verify_b64(sig, canonical_bytes(body))
    except SignatureError as exc:
        raise ContractError(
            f"deny list signature: {exc}", field="sig", reason="bad_signature"
        ) from None
    version, rids, devices, t = (
        body.get("version"),
        body.get("rids", []),
        body.get("devices", []),
        body.get("t"),
    )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ContractError("version must be an integer >= 1", field="version", reason="malformed")
    if not isinstance(rids, list) or not isinstance(devices, list):
        raise ContractError("rids and devices must be lists", field="rids", reason="malformed")
    try:
        parsed = frozenset(bytes.fromhex(r) for r in rids)
    except (TypeError, ValueError):
        raise ContractError("rids must be hex", field="rids", reason="malformed") from None
    if any(len(r) != 12 for r in parsed):
        raise ContractError("a rid is 12 bytes", field="rids", reason="malformed")
    if not all(isinstance(d, str) for d in devices):
        raise ContractError("devices must be strings", field="devices", reason="malformed")
    return DenylistMessage(
        version,
        parsed,
        frozenset(devices),
        float(t) if isinstance(t, int | float) and not isinstance(t, bool) else None,
    )
