"""Fare chain records v1: schema validation, signing and the per-bus hash chain.

Two record types share one chain: ``segment`` (a rid presence segment, what fares are
built from) and ``missed`` (the bus passed a stop where a boarding wait was live without
opening its doors; evidence for the operator, never a ride).

A record is a plain ``dict`` (it is JSON on the wire and in stores). ``sig`` is the
base64 Ed25519 signature over the canonical bytes of the record without ``sig``;
``prev`` is the hex SHA-256 of the previous record's canonical bytes, ``sig`` included,
or 64 zeros for ``seq`` 1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from busbell._bells import is_bell_id, validate_wait
from busbell._canonical import canonical_bytes, sha256_hex
from busbell._errors import ChainError, ContractError, SignatureError
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
START_CAUSES = frozenset({"boarded", "continued"})
END_CAUSES = frozenset({"alighted", "rotated", "lost"})
EVENT_TYPES = frozenset({"segment", "missed"})

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_HEX24_RE = re.compile(r"^[0-9a-f]{24}$")
_HEX48_RE = re.compile(r"^[0-9a-f]{48}$")
_B64SIG_RE = re.compile(r"^[A-Za-z0-9+/]{86}==$")
_TOP_KEYS = frozenset(
    {
        "v",
        "type",
        "bus_id",
        "seq",
        "event_id",
        "prev",
        "rid",
        "interval",
        "route_id",
        "trip_id",
        "start",
        "end",
        "distance_m",
        "proof",
        "evidence",
        "sig",
    }
)
_END_KEYS = frozenset({"t", "stop_id", "cause"})
_MISSED_KEYS = frozenset(
    {
        "v",
        "type",
        "bus_id",
        "seq",
        "event_id",
        "prev",
        "request_id",
        "route_id",
        "trip_id",
        "stop_id",
        "wait",
        "passed",
        "doors_opened",
        "sig",
    }
)
_PASSED_KEYS = frozenset({"t", "lat", "lon", "speed_mps", "distance_m"})
MAX_PASSED_SPEED_MPS = 100.0
MAX_PASSED_DISTANCE_M = 100_000.0


def _fail(field: str, message: str, reason: str = "invalid") -> ContractError:
    return ContractError(f"fare event: {field}: {message}", field=field, reason=reason)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


def _opt_str(obj: Mapping[str, Any], key: str, field: str) -> None:
    v = obj.get(key)
    if v is not None and not (isinstance(v, str) and 0 < len(v) <= 128):
        raise _fail(field, "must be null or a string of 1-128 characters")


def _check_end(obj: object, field: str, causes: frozenset[str]) -> None:
    if not isinstance(obj, dict):
        raise _fail(field, "must be an object")
    if set(obj) != _END_KEYS:
        raise _fail(field, f"must have exactly the keys {sorted(_END_KEYS)}")
    if not _is_number(obj["t"]) or obj["t"] < 0:
        raise _fail(f"{field}.t", "must be a finite non-negative number")
    _opt_str(obj, "stop_id", f"{field}.stop_id")
    if obj["cause"] not in causes:
        raise _fail(f"{field}.cause", f"must be one of {sorted(causes)}")


def _check_keys(obj: dict[str, Any], keys: frozenset[str], require_sig: bool) -> None:
    present = set(obj)
    missing = keys - present - ({"sig"} if not require_sig else set())
    if missing:
        raise _fail(min(missing), "is missing", "missing")
    extra = present - keys
    if extra:
        raise _fail(min(extra, key=str), "is not a v1 field", "unknown_field")
    if obj["v"] != 1 or not _is_int(obj["v"]):
        raise _fail("v", "must be 1", "wrong_version")


def _check_chain_fields(obj: dict[str, Any]) -> None:
    for key in ("bus_id", "event_id"):
        if not isinstance(obj[key], str) or not _ID_RE.match(obj[key]):
            raise _fail(key, "must be 1-64 characters of [A-Za-z0-9_.:-]")
    if not _is_int(obj["seq"]) or obj["seq"] < 1:
        raise _fail("seq", "must be an integer >= 1")
    if not isinstance(obj["prev"], str) or not _HEX64_RE.match(obj["prev"]):
        raise _fail("prev", "must be 64 lower-case hex characters")


def _check_sig(obj: dict[str, Any]) -> None:
    if "sig" in obj and (not isinstance(obj["sig"], str) or not _B64SIG_RE.match(obj["sig"])):
        raise _fail("sig", "must be a base64 Ed25519 signature (88 characters)")


def validate_event(obj: object, *, require_sig: bool = True) -> dict[str, Any]:
    """Check that ``obj`` is a well-formed v1 chain record and return it.

    Dispatches on ``type``: ``"missed"`` is checked as a missed-stop record (see
    :func:`_validate_missed`), anything else as a ``segment`` event (so a record with
    no or an unknown ``type`` fails as a segment would).

    Args:
        obj: the decoded JSON value.
        require_sig: whether ``sig`` must be present.

    Raises:
        ContractError: naming the first offending field.
    """
    if not isinstance(obj, dict):
        raise _fail("", "must be a JSON object")
    if obj.get("type") == "missed":
        return _validate_missed(obj, require_sig)
    _check_keys(obj, _TOP_KEYS, require_sig)
    if obj["type"] != "segment":
        raise _fail("type", "must be 'segment' or 'missed'")
    _check_chain_fields(obj)
    if not isinstance(obj["rid"], str) or not _HEX24_RE.match(obj["rid"]):
        raise _fail("rid", "must be 24 lower-case hex characters")
    if not _is_int(obj["interval"]) or obj["interval"] < 0:
        raise _fail("interval", "must be a non-negative integer")
    _opt_str(obj, "route_id", "route_id")
    _opt_str(obj, "trip_id", "trip_id")
    _check_end(obj["start"], "start", START_CAUSES)
    _check_end(obj["end"], "end", END_CAUSES)
    if obj["end"]["t"] < obj["start"]["t"]:
        raise _fail("end.t", "must not be before start.t")
    if not _is_number(obj["distance_m"]) or obj["distance_m"] < 0:
        raise _fail("distance_m", "must be a finite non-negative number")
    proof = obj["proof"]
    if not isinstance(proof, dict) or set(proof) != {"first", "last"}:
        raise _fail("proof", "must be an object with keys first and last")
    for k in ("first", "last"):
        if not isinstance(proof[k], str) or not _HEX48_RE.match(proof[k]):
            raise _fail(f"proof.{k}", "must be 48 lower-case hex characters (24 bytes)")
    if not isinstance(obj["evidence"], dict):
        raise _fail("evidence", "must be an object")
    _check_sig(obj)
    return obj


def _check_passed(obj: object) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _fail("passed", "must be an object")
    if set(obj) != _PASSED_KEYS:
        raise _fail("passed", f"must have exactly the keys {sorted(_PASSED_KEYS)}")
    for key in _PASSED_KEYS:
        if not _is_number(obj[key]):
            raise _fail(f"passed.{key}", "must be a finite number")
    if obj["t"] < 0:
        raise _fail("passed.t", "must be non-negative")
    if not -90.0 <= obj["lat"] <= 90.0:
        raise _fail("passed.lat", "must be within [-90, 90]")
    if not -180.0 <= obj["lon"] <= 180.0:
        raise _fail("passed.lon", "must be within [-180, 180]")
    if not 0.0 <= obj["speed_mps"] <= MAX_PASSED_SPEED_MPS:
        raise _fail("passed.speed_mps", f"must be within [0, {MAX_PASSED_SPEED_MPS:g}]")
    if not 0.0 <= obj["distance_m"] <= MAX_PASSED_DISTANCE_M:
        raise _fail("passed.distance_m", f"must be within [0, {MAX_PASSED_DISTANCE_M:g}]")
    return obj


def _validate_missed(obj: dict[str, Any], require_sig: bool) -> dict[str, Any]:
    """A ``missed`` record: the bus passed ``stop_id`` while ``wait`` was live.

    ``request_id``/``route_id``/``stop_id`` are request/route/stop ids (one MQTT topic
    level, 1-128 characters) and equal the wait's; ``trip_id`` is null or 1-128
    characters; ``passed`` is the bus's closest approach to the stop (finite, in range,
    not after the wait expired); ``doors_opened`` is ``false`` (a record that says the
    doors opened is not a missed stop).
    """
    _check_keys(obj, _MISSED_KEYS, require_sig)
    _check_chain_fields(obj)
    for key in ("request_id", "route_id", "stop_id"):
        if not is_bell_id(obj[key]):
            raise _fail(key, "must be 1-128 characters without / + # or NUL")
    _opt_str(obj, "trip_id", "trip_id")
    wait = validate_wait(obj["wait"], prefix="wait.")
    for key in ("request_id", "route_id", "stop_id"):
        if wait[key] != obj[key]:
            raise _fail(f"wait.{key}", f"must equal the record's {key}")
    passed = _check_passed(obj["passed"])
    if passed["t"] > wait["expires_t"]:
        raise _fail("passed.t", "must not be after wait.expires_t (the wait was not live)")
    if obj["doors_opened"] is not False:
        raise _fail("doors_opened", "must be false")
    _check_sig(obj)
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


def derive_event_id(bus_id: str, seq: int, rid: str, start_t: float) -> str:
    """A deterministic, globally unique event id (32 hex characters)."""
    return sha256_hex(canonical_bytes([bus_id, seq, rid, start_t]))[:32]


def derive_missed_event_id(bus_id: str, seq: int, request_id: str, passed_t: float) -> str:
    """The event id of a ``missed`` record (32 hex characters, deterministic).

    SHA-256 of the canonical bytes of ``["missed", bus_id, seq, request_id, passed_t]``:
    the type tag keeps it apart from every segment's id even for equal inputs.
    """
    return sha256_hex(canonical_bytes(["missed", bus_id, seq, request_id, passed_t]))[:32]


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
