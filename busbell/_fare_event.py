"""Fare chain records v1: schema validation, signing and the per-bus hash chain.

Two record types share one chain: ``segment`` (a rid presence segment, what fares are
built from) and ``missed`` (the bus passed a stop where a boarding wait was live without
opening its doors; evidence for the operator, never a ride).

A record is a plain ``dict`` here (it is JSON on the wire and in stores); its type, which
checks it, is :data:`busbell._fare_types.FareEvent` (msgspec). ``sig`` is the
base64 Ed25519 signature over the canonical bytes of the record without ``sig``;
``prev`` is the hex SHA-256 of the previous record's canonical bytes, ``sig`` included,
or 64 zeros for ``seq`` 1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from busbell._canonical import canonical_bytes, sha256_hex
from busbell._errors import ChainError, SignatureError
from busbell._signing import DeviceKey, PublicKey

__all__ = [
    "END_CAUSES",
    "EVENT_TYPES",
    "GENESIS_PREV",
    "START_CAUSES",
    "HashChain",
    "derive_event_id",
    "derive_missed_event_id",
    "event_hash",
    "sign_event",
    "signing_bytes",
    "validate_event",
    "verify_event",
]

GENESIS_PREV = "0" * 64
START_CAUSES = frozenset({"boarded", "continued", "tentative"})
END_CAUSES = frozenset({"alighted", "rotated", "lost"})
EVENT_TYPES = frozenset({"segment", "missed"})


def validate_event(obj: object, *, require_sig: bool = True) -> dict[str, Any]:
    """Check that ``obj`` is a well-formed v1 chain record and return it.

    The check is the typed record's (:func:`busbell._fare_types.convert_event`):
    ``type`` ``"missed"`` is a missed-stop record, anything else is checked as a
    ``segment`` event.

    Args:
        obj: the decoded JSON value.
        require_sig: whether ``sig`` must be present.

    Raises:
        ContractError: naming the first offending field.
    """
    from busbell._fare_types import convert_event

    convert_event(obj, require_sig=require_sig)
    assert isinstance(obj, dict)
    return obj


def signing_bytes(event: Mapping[str, Any]) -> bytes:
    """Canonical bytes of ``event`` without ``sig`` (what ``sig`` signs)."""
    return canonical_bytes({k: v for k, v in event.items() if k != "sig"})


def sign_event(event: Mapping[str, Any], key: DeviceKey) -> dict[str, Any]:
    """Return a copy of ``event`` with ``sig`` set by ``key``."""
    out = {k: v for k, v in event.items() if k != "sig"}
    out["sig"] = key.sign_b64(canonical_bytes(out))
    return out


def verify_event(event: Mapping[str, Any], public: PublicKey) -> None:
    """Verify ``event['sig']``.

    Raises:
        SignatureError: when it is missing, malformed or does not verify.
    """
    sig = event.get("sig")
    if not isinstance(sig, str):
        raise SignatureError("event has no sig")
    public.verify_b64(sig, signing_bytes(event))


def event_hash(event: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the event's canonical bytes, ``sig`` included (the next ``prev``)."""
    return sha256_hex(canonical_bytes(event))


_encode_key: Final = msgspec.json.Encoder().encode
_sha256: Final = hashlib.sha256


def _derive(key: list[Any], bus_id: object, seq: object, name: object, t: object) -> str:
    """The first 32 hex characters of SHA-256 of the canonical bytes of ``key``.

    ``key`` ends with ``bus_id, seq, name, t``. msgspec writes it, byte-identical with
    ``busbell.canonical_bytes`` for what it takes here: strings, an ``int`` seq, and a
    time that is an ``int``, zero, or a float of magnitude in ``[1e-4, 1e16)`` (every
    UNIX time; msgspec writes other floats in another exponent notation than Python's
    ``json``, and would write types JSON has not); anything else is written by
    ``canonical_bytes`` itself (which refuses NaN, infinities and non-JSON types).
    """
    if (
        type(bus_id) is str
        and type(name) is str
        and type(seq) is int
        and (
            type(t) is int
            or (type(t) is float and (1e-4 <= t < 1e16 or not t or -1e16 < t <= -1e-4))
        )
    ):
        return _sha256(_encode_key(key)).hexdigest()[:32]
    return _sha256(canonical_bytes(key)).hexdigest()[:32]


def derive_event_id(bus_id: str, seq: int, rid: str, start_t: float) -> str:
    """A segment's event id (32 hex characters, deterministic): derived, never chosen.

    The first 32 hex characters of SHA-256 of the canonical bytes of
    ``[bus_id, seq, rid, start_t]``. The one derivation: the edge numbers its segments
    with it, and ingest and settle check every record's id against it
    (``backend._record_check``, ``event_id_mismatch``).

    Raises:
        ValueError: for a time JSON cannot carry exactly (NaN, infinities).
        TypeError: for values that are not JSON types.
    """
    return _derive([bus_id, seq, rid, start_t], bus_id, seq, rid, start_t)


def derive_missed_event_id(bus_id: str, seq: int, request_id: str, passed_t: float) -> str:
    """The event id of a ``missed`` record (32 hex characters, deterministic).

    SHA-256 of the canonical bytes of ``["missed", bus_id, seq, request_id, passed_t]``:
    the type tag keeps it apart from every segment's id even for equal inputs. Derived
    as :func:`derive_event_id`.

    Raises:
        ValueError: for a time JSON cannot carry exactly (NaN, infinities).
        TypeError: for values that are not JSON types.
    """
    key = ["missed", bus_id, seq, request_id, passed_t]
    return _derive(key, bus_id, seq, request_id, passed_t)


class HashChain:
    """One bus's chain position: the next expected ``seq`` and ``prev``.

    Used both by the edge (to build the chain) and the backend (to check it).
    """

    __slots__ = ("next_seq", "prev")

    def __init__(self, next_seq: int = 1, prev: str = GENESIS_PREV) -> None:
        self.next_seq = next_seq
        self.prev = prev

    def check(self, event: Mapping[str, Any]) -> None:
        """Check that ``event`` is the next link.

        Raises:
            ChainError: on a seq gap/reuse or a ``prev`` mismatch.
        """
        seq = event["seq"]
        if seq != self.next_seq:
            raise ChainError(
                "sequence gap" if seq > self.next_seq else "sequence reused",
                seq=seq,
                expected=str(self.next_seq),
                got=str(seq),
            )
        if event["prev"] != self.prev:
            raise ChainError("prev hash mismatch", seq=seq, expected=self.prev, got=event["prev"])

    def advance(self, event: Mapping[str, Any]) -> None:
        """Move past ``event`` (call after :meth:`check` and a successful commit)."""
        self.next_seq = event["seq"] + 1
        self.prev = event_hash(event)
