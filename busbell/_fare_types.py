"""The fare chain records v1 as types: parse, validate, serialise canonically, map to rows.

:data:`FareEvent` is ``SegmentEvent | MissedRecord`` (msgspec structs, tagged by
``type``). The types are the schema: decoding JSON bytes (:func:`decode_event`,
:func:`decode_batch`) or converting a decoded object (:func:`convert_event`) checks every
field strictly (no coercion: an integer stays an integer, ``1.0`` is not an ``int``, a
bool is not a number, unknown fields are refused); right after, the string formats
(ids, hex, text without NUL, the signature's base64: each type's JSON-schema
``pattern``, all of a record's matched by one expression, a trailing newline included
in none) and the few rules that span fields (``end.t >= start.t``, a missed record's
``wait`` matches it and was live) are checked. Failures are
:class:`~busbell.ContractError` naming the field, with ``reason`` ``missing``,
``unknown_field``, ``wrong_version`` or ``invalid`` (what ``busbell.validate_event``
always raised); ingest and settle count every one of them as the rejection reason
``schema``.

Serialisation: :func:`canonical` gives the canonical bytes of an event (keys sorted, no
whitespace, UTF-8; byte-identical with ``busbell.canonical_bytes`` of the same JSON
value, which is what edges sign) ``sig`` included, once; :func:`signed_part` cuts the
signed bytes (without ``sig``) out of them, and the chain hash is the SHA-256 of the
full bytes. msgspec writes floats below 1e-4 or from 1e16 in another exponent notation
than Python's ``json``; such an event (rare: no time, distance or position is in that
range) is serialised with ``busbell.canonical_bytes`` instead.

The AsyncAPI schemas of the records (``docs/asyncapi.yaml``, ``FareEvent`` and
``MissedRecord``) are generated from these types by :func:`asyncapi_schemas`
(``busbell asyncapi-schemas``; a test fails when the document drifts from them).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, TypeAlias

import msgspec

from busbell._canonical import canonical_bytes
from busbell._errors import ContractError
from busbell._safejson import BIGINT_MAX, BIGINT_MIN

__all__ = [
    "MISSED_COLUMNS",
    "SEGMENT_COLUMNS",
    "FareBatch",
    "FareEvent",
    "MissedRecord",
    "Passed",
    "Proof",
    "SegmentEnd",
    "SegmentEvent",
    "SegmentStart",
    "WaitRecord",
    "asyncapi_block",
    "asyncapi_schemas",
    "canonical",
    "convert_event",
    "decode_batch",
    "decode_event",
    "event_to_dict",
    "flat_evidence",
    "replace_asyncapi_block",
    "signed_part",
]

_FMAX: Final = sys.float_info.max
_ID: Final = "[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"
_BELL_ID: Final = "[^/+#\x00]{1,128}"
_TEXT: Final = "[^\x00]{1,128}"
_HEX64: Final = "[0-9a-f]{64}"
_HEX48: Final = "[0-9a-f]{48}"
_HEX24: Final = "[0-9a-f]{24}"
_SIG: Final = "[A-Za-z0-9+/]{86}=="


def _format(regex: str, description: str | None = None) -> msgspec.Meta:
    """A string format: ``pattern`` in the JSON schema, checked by :func:`_check`.

    Not a msgspec ``pattern``: msgspec would run one regular-expression search per field
    while decoding (~5 us per event, the largest cost of a typed decode); :func:`_check`
    matches all of a record's formatted fields at once, with the same expressions.
    """
    extra = {"pattern": f"^{regex}$"}
    if description is None:
        return msgspec.Meta(extra_json_schema=extra)
    return msgspec.Meta(extra_json_schema=extra, description=description)


Id = Annotated[str, _format(_ID, "1-64 of [A-Za-z0-9_.:-]")]
SegmentEventId = Annotated[
    str,
    _format(
        _ID,
        "derived, never chosen: the first 32 hex characters of the SHA-256 of the "
        "canonical bytes of [bus_id, seq, rid, start.t] (busbell.derive_event_id); any "
        "other value is rejected (event_id_mismatch)",
    ),
]
MissedEventId = Annotated[
    str,
    _format(
        _ID,
        "derived, never chosen: the first 32 hex characters of the SHA-256 of the "
        'canonical bytes of ["missed", bus_id, seq, request_id, passed.t] '
        "(busbell.derive_missed_event_id); any other value is rejected (event_id_mismatch)",
    ),
]
BellId = Annotated[str, _format(_BELL_ID, "one MQTT topic level, 1-128")]
Text = Annotated[str, _format(_TEXT, "1-128, no NUL")]
Seq = Annotated[int, msgspec.Meta(ge=1, le=BIGINT_MAX)]
Hex64 = Annotated[str, _format(_HEX64)]
Hex48 = Annotated[str, _format(_HEX48)]
Hex24 = Annotated[str, _format(_HEX24)]
Sig = Annotated[str, _format(_SIG, "base64 Ed25519, 88")]
Number = (
    Annotated[int, msgspec.Meta(ge=BIGINT_MIN, le=BIGINT_MAX)]
    | Annotated[float, msgspec.Meta(ge=-_FMAX, le=_FMAX)]
)
NonNeg = (
    Annotated[int, msgspec.Meta(ge=0, le=BIGINT_MAX)]
    | Annotated[float, msgspec.Meta(ge=0.0, le=_FMAX)]
)
"""A finite non-negative JSON number; an integer stays an integer (signatures need it)."""


def _range(lo: float, hi: float) -> Any:
    return (
        Annotated[int, msgspec.Meta(ge=int(lo), le=int(hi))]
        | Annotated[float, msgspec.Meta(ge=lo, le=hi)]
    )


class SegmentStart(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """The start of a segment: time, stop (``None`` after a rid rotation) and cause.

    ``tentative``: the rid was never confirmed aboard on its own evidence, but was alive
    across a rid rotation with co-movement evidence (``evidence.co_n`` points between
    ``co_lo`` and ``co_hi`` dBm); charged alone only when heard door to door
    (docs/backend.md, "Tentative segments").
    """

    t: NonNeg
    stop_id: Text | None
    cause: Literal["boarded", "continued", "tentative"]


class SegmentEnd(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """The end of a segment: time, stop (or ``None``) and cause."""

    t: NonNeg
    stop_id: Text | None
    cause: Literal["alighted", "rotated", "lost"]


class Proof(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """Hex payloads of the segment's first and last accepted advertisements."""

    first: Hex48
    last: Hex48


class Passed(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """A bus's closest approach to a stop (missed records)."""

    t: NonNeg
    lat: _range(-90.0, 90.0)  # type: ignore[valid-type]
    lon: _range(-180.0, 180.0)  # type: ignore[valid-type]
    speed_mps: _range(0.0, 100.0)  # type: ignore[valid-type]
    distance_m: _range(0.0, 100_000.0)  # type: ignore[valid-type]


class WaitRecord(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """A boarding wait (Bells v1) as a missed record quotes it."""

    request_id: BellId
    route_id: BellId
    stop_id: BellId
    t: NonNeg
    expires_t: NonNeg
    source: Literal["app", "stop_unit", "token"]
    assist: bool


class SegmentEvent(
    msgspec.Struct,
    forbid_unknown_fields=True,
    frozen=True,
    gc=False,
    tag_field="type",
    tag="segment",
):
    """Fare event v1: one rid presence segment (what fares are built from)."""

    v: Literal[1]
    bus_id: Id
    seq: Seq
    event_id: SegmentEventId
    prev: Hex64
    rid: Hex24
    interval: Annotated[int, msgspec.Meta(ge=0, le=BIGINT_MAX)]
    route_id: Text | None
    trip_id: Text | None
    start: SegmentStart
    end: SegmentEnd
    distance_m: NonNeg
    proof: Proof
    evidence: Annotated[
        dict[str, Any],
        msgspec.Meta(
            description=(
                "The edge's evidence, free-form (docs/classifier.md, Segment fields)."
                " Settlement reads, where present: rssi_med and riders_lvl (dBm, numbers in"
                " -200..50), n_adv (an integer in 0..2**31-1); a value of another type or"
                " range reads as absent (the event settles without it). A tentative segment"
                " must carry co_n, co_lo and co_hi (docs/protocol.md)."
            )
        ),
    ]
    sig: Sig | msgspec.UnsetType = msgspec.UNSET

    @property
    def missed(self) -> bool:
        """``False``: a ride."""
        return False

    def ledger_row(self) -> tuple[Any, ...]:
        """The ``fare_events`` column values in :data:`SEGMENT_COLUMNS` order.

        Times and the distance as ``float`` (double precision columns; an integer is
        valid JSON for them), ``evidence`` as its JSON text, keys sorted (what the
        driver writes into the JSON column).
        """
        s, e = self.start, self.end
        return (
            self.bus_id,
            self.seq,
            self.event_id,
            self.prev,
            self.rid,
            self.interval,
            self.route_id,
            self.trip_id,
            float(s.t),
            s.stop_id,
            s.cause,
            float(e.t),
            e.stop_id,
            e.cause,
            float(self.distance_m),
            self.proof.first,
            self.proof.last,
            _ENCODER.encode(self.evidence).decode("utf-8"),
        )


class MissedRecord(
    msgspec.Struct,
    forbid_unknown_fields=True,
    frozen=True,
    gc=False,
    tag_field="type",
    tag="missed",
):
    """A missed stop: the bus passed ``stop_id`` while ``wait`` was live, doors shut."""

    v: Literal[1]
    bus_id: Id
    seq: Seq
    event_id: MissedEventId
    prev: Hex64
    request_id: BellId
    route_id: BellId
    trip_id: Text | None
    stop_id: BellId
    wait: WaitRecord
    passed: Passed
    doors_opened: bool
    sig: Sig | msgspec.UnsetType = msgspec.UNSET

    @property
    def missed(self) -> bool:
        """``True``: evidence for the operator, never a ride."""
        return True

    def ledger_row(self) -> tuple[Any, ...]:
        """The ``missed_stops`` column values in :data:`MISSED_COLUMNS` order."""
        return (
            self.bus_id,
            self.seq,
            self.event_id,
            self.prev,
            self.request_id,
            self.route_id,
            self.trip_id,
            self.stop_id,
            self.wait.t,
            self.passed.t,
        )


FareEvent: TypeAlias = SegmentEvent | MissedRecord

SEGMENT_COLUMNS: Final = (
    "bus_id",
    "seq",
    "event_id",
    "prev",
    "rid",
    "interval",
    "route_id",
    "trip_id",
    "start_t",
    "start_stop_id",
    "start_cause",
    "end_t",
    "end_stop_id",
    "end_cause",
    "distance_m",
    "proof_first",
    "proof_last",
    "evidence",
)
"""``fare_events`` columns filled from the event (plus event_hash, raw, received_at,
worker_id, which ingest adds)."""

MISSED_COLUMNS: Final = (
    "bus_id",
    "seq",
    "event_id",
    "prev",
    "request_id",
    "route_id",
    "trip_id",
    "stop_id",
    "wait_t",
    "passed_t",
)
"""``missed_stops`` columns filled from the record."""


class FareBatch(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """A ``buses/{bus}/fares`` payload: ``{"bus_id": B, "events": [...]}``."""

    events: list[FareEvent]
    bus_id: str | msgspec.UnsetType = msgspec.UNSET


# --- parsing --------------------------------------------------------------------------

_EVENT_DECODER: Final = msgspec.json.Decoder(FareEvent)
_BATCH_DECODER: Final = msgspec.json.Decoder(FareBatch)
_LIST_DECODER: Final = msgspec.json.Decoder(list[FareEvent])
_ENCODER: Final = msgspec.json.Encoder(order="sorted")

_PATH_RE: Final = re.compile(r" - at `\$(?:\[\d+\])?\.?([^`]*)`$")
_MISSING_RE: Final = re.compile(r"Object missing required field `([^`]+)`")
_UNKNOWN_RE: Final = re.compile(r"Object contains unknown field `([^`]+)`")


def _fail(field: str, message: str, reason: str = "invalid") -> ContractError:
    return ContractError(f"fare event: {field}: {message}", field=field, reason=reason)


def _from_validation(exc: msgspec.ValidationError) -> ContractError:
    """Map msgspec's message (``... - at `$.start.t```) to the field and reason."""
    text = str(exc)
    m = _PATH_RE.search(text)
    path = m.group(1) if m else ""
    path = path.replace("[...]", "")
    message = text[: m.start()] if m else text
    missing = _MISSING_RE.match(message)
    if missing:
        return _fail(_join(path, missing.group(1)), message, "missing")
    unknown = _UNKNOWN_RE.match(message)
    if unknown:
        return _fail(_join(path, unknown.group(1)), message, "unknown_field")
    if path == "v":
        return _fail("v", "must be 1", "wrong_version")
    if message.startswith("Expected `object`"):
        return _fail(path, message, "not_an_object")
    return _fail(path, message)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_REQUIRED: Final = {
    "segment": frozenset(SegmentEvent.__struct_fields__) - {"sig"} | {"type"},
    "missed": frozenset(MissedRecord.__struct_fields__) - {"sig"} | {"type"},
}
_ALLOWED: Final = {k: v | {"sig"} for k, v in _REQUIRED.items()}


def _check_keys(obj: dict[Any, Any]) -> None:
    """Top-level keys first, missing before unknown (as v1 validators always reported)."""
    kind = "missed" if obj.get("type") == "missed" else "segment"
    keys = set(obj)
    missing = _REQUIRED[kind] - keys
    if missing:
        raise _fail(min(missing), "is missing", "missing")
    extra = keys - _ALLOWED[kind]
    if extra:
        raise _fail(min(extra, key=str), "is not a v1 field", "unknown_field")


# Each record's formatted fields, joined by NUL (which no format admits, so a field
# cannot spill into its neighbour), matched by one expression: (field, regex) in the
# order a failure is reported. An optional text field (``Text | None``) is formatted
# with ``str()``: ``None`` becomes ``"None"``, itself valid text, so the expression
# holds exactly when the field is null or valid.
_SEGMENT_FORMATS: Final = (
    ("bus_id", _ID),
    ("event_id", _ID),
    ("prev", _HEX64),
    ("rid", _HEX24),
    ("proof.first", _HEX48),
    ("proof.last", _HEX48),
    ("route_id", _TEXT),
    ("trip_id", _TEXT),
    ("start.stop_id", _TEXT),
    ("end.stop_id", _TEXT),
)
_MISSED_FORMATS: Final = (
    ("bus_id", _ID),
    ("event_id", _ID),
    ("prev", _HEX64),
    ("request_id", _BELL_ID),
    ("route_id", _BELL_ID),
    ("stop_id", _BELL_ID),
    ("trip_id", _TEXT),
)
_SIG_FORMAT: Final = ("sig", _SIG)


def _joined(formats: tuple[tuple[str, str], ...]) -> re.Pattern[str]:
    return re.compile("\x00".join(regex for _, regex in formats))


_SEGMENT_RE: Final = _joined(_SEGMENT_FORMATS)
_SEGMENT_SIGNED_RE: Final = _joined((*_SEGMENT_FORMATS, _SIG_FORMAT))
_MISSED_RE: Final = _joined(_MISSED_FORMATS)
_MISSED_SIGNED_RE: Final = _joined((*_MISSED_FORMATS, _SIG_FORMAT))
_FIELD_RES: Final = {
    regex: re.compile(regex) for _, regex in (*_SEGMENT_FORMATS, *_MISSED_FORMATS, _SIG_FORMAT)
}


def _format_error(ev: FareEvent) -> ContractError:
    """The first formatted field of ``ev`` that does not match (after the joined match failed)."""
    formats = _SEGMENT_FORMATS if isinstance(ev, SegmentEvent) else _MISSED_FORMATS
    if ev.sig is not msgspec.UNSET:
        formats = (*formats, _SIG_FORMAT)
    for path, regex in formats:
        value: Any = ev
        for part in path.split("."):
            value = getattr(value, part)
        if value is None and regex == _TEXT:
            continue
        if _FIELD_RES[regex].fullmatch(value) is None:
            if regex == _TEXT:
                return _fail(path, f"must be null or match ^{regex}$")
            return _fail(path, f"must match ^{regex}$")
    raise AssertionError("no field fails its format")  # pragma: no cover


def _check_formats(
    ev: FareEvent,
    key: str,
    unsigned: re.Pattern[str],
    signed: re.Pattern[str],
    require_sig: bool,
) -> None:
    """Match ``key`` (the record's formatted fields joined) and ``sig`` when set."""
    sig = ev.sig
    if sig is msgspec.UNSET:
        if unsigned.fullmatch(key) is None:
            raise _format_error(ev)
        if require_sig:
            raise _fail("sig", "is missing", "missing")
    elif signed.fullmatch(f"{key}\x00{sig}") is None:
        raise _format_error(ev)


def _check(ev: FareEvent, require_sig: bool) -> FareEvent:
    """The string formats, and the rules that span fields (the types hold the rest)."""
    if isinstance(ev, SegmentEvent):
        p, start, end = ev.proof, ev.start, ev.end
        key = (
            f"{ev.bus_id}\x00{ev.event_id}\x00{ev.prev}\x00{ev.rid}\x00{p.first}\x00{p.last}"
            f"\x00{ev.route_id}\x00{ev.trip_id}\x00{start.stop_id}\x00{end.stop_id}"
        )
        _check_formats(ev, key, _SEGMENT_RE, _SEGMENT_SIGNED_RE, require_sig)
        if end.t < start.t:
            raise _fail("end.t", "must not be before start.t")
        if start.cause == "tentative":
            _check_tentative(ev.evidence)
        return ev
    key = (
        f"{ev.bus_id}\x00{ev.event_id}\x00{ev.prev}\x00{ev.request_id}\x00{ev.route_id}"
        f"\x00{ev.stop_id}\x00{ev.trip_id}"
    )
    _check_formats(ev, key, _MISSED_RE, _MISSED_SIGNED_RE, require_sig)
    w = ev.wait
    if ev.doors_opened is not False:
        raise _fail("doors_opened", "must be false")
    if w.expires_t < w.t:
        raise _fail("wait.expires_t", "must not be before t")
    for name in ("request_id", "route_id", "stop_id"):
        if getattr(w, name) != getattr(ev, name):
            raise _fail(f"wait.{name}", f"must equal the record's {name}")
    if ev.passed.t > w.expires_t:
        raise _fail("passed.t", "must not be after wait.expires_t (the wait was not live)")
    return ev


CO_N_MAX: Final = 2**31 - 1
"""Largest ``evidence.co_n``: the ledger keeps it in a 32-bit column
(``rider_segments.co_n``); a larger one would fail every settlement pass on PostgreSQL."""


def _check_tentative(evidence: dict[str, Any]) -> None:
    """A tentative segment carries its co-movement evidence: the backend sums it."""
    n = evidence.get("co_n")
    if type(n) is not int or not 1 <= n <= CO_N_MAX:
        raise _fail("evidence.co_n", f"a tentative segment needs an integer in 1..{CO_N_MAX}")
    levels = []
    for name in ("co_lo", "co_hi"):
        x = evidence.get(name)
        if isinstance(x, bool) or not isinstance(x, int | float) or not -200.0 <= x <= 50.0:
            raise _fail(f"evidence.{name}", "a tentative segment needs a level in dBm")
        levels.append(float(x))
    if levels[0] > levels[1]:
        raise _fail("evidence.co_hi", "must not be below co_lo")


def convert_event(obj: object, *, require_sig: bool = True) -> FareEvent:
    """A decoded JSON value (``dict``) as a checked :data:`FareEvent`.

    Raises:
        ContractError: naming the first offending field.
    """
    if not isinstance(obj, dict):
        raise _fail("", "must be a JSON object")
    _check_keys(obj)
    try:
        ev: FareEvent = msgspec.convert(obj, FareEvent, strict=True)
    except msgspec.ValidationError as exc:
        raise _from_validation(exc) from None
    return _check(ev, require_sig)


def decode_event(data: bytes, *, require_sig: bool = True) -> FareEvent:
    """JSON bytes of one record as a checked :data:`FareEvent`.

    Raises:
        ContractError: naming the first offending field (``msgspec.DecodeError`` for
            bytes that are not JSON at all is a ContractError too, ``field`` empty).
    """
    try:
        ev = _EVENT_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise _from_validation(exc) from None
    except msgspec.DecodeError as exc:
        raise _fail("", f"not JSON: {exc}") from None
    return _check(ev, require_sig)


def decode_batch(data: bytes) -> tuple[str | None, list[FareEvent]] | None:
    """The fast path for a fares payload: a batch object or an array, every record valid.

    Returns:
        ``(batch bus_id or None, checked events)``, or ``None`` when the payload is
        anything else (not JSON, a bare event, a batch with other keys, a record that
        does not check, evidence that is not flat): the caller then takes the general,
        per-record path, which decides exactly why. Only payloads that path would take
        whole, every record valid, are accepted here (the events' evidence holds only
        scalars: no nesting depth or number range left to check).
    """
    try:
        if data[:1] == b"[":
            bus_id: str | None = None
            events = _LIST_DECODER.decode(data)
        else:
            batch = _BATCH_DECODER.decode(data)
            bus_id = None if batch.bus_id is msgspec.UNSET else batch.bus_id
            events = batch.events
        for ev in events:
            _check(ev, True)
            if isinstance(ev, SegmentEvent) and not flat_evidence(ev.evidence):
                return None
    except (msgspec.DecodeError, ContractError):
        return None
    return bus_id, events


def flat_evidence(evidence: Mapping[str, Any]) -> bool:
    """Whether every evidence value is a JSON scalar the ledger takes as is."""
    for v in evidence.values():
        t = type(v)
        if t is int:
            if not BIGINT_MIN <= v <= BIGINT_MAX:
                return False
        elif t is not float and t is not str and v is not None and t is not bool:
            return False
    return True


# --- serialisation --------------------------------------------------------------------

_EXP_FLOAT: Final = re.compile(rb"[:,\[]-?(?:[0-9]+(?:\.[0-9]+)?e|0\.0000)")
"""A number msgspec may write otherwise than Python (exponent, or below 1e-4)."""


def _plain(x: object) -> bool:
    """Whether msgspec writes the number ``x`` as Python's ``json`` does."""
    if type(x) is not float or x == 0.0:
        return True
    a = abs(x)
    return 1e-4 <= a < 1e16


def _plain_numbers(ev: FareEvent) -> bool | None:
    """Whether every number of ``ev`` is written alike (``None``: evidence is nested)."""
    if isinstance(ev, SegmentEvent):
        # non-negative by their type; an int or 0.0 is always written alike (inline:
        # this runs for every event ingested)
        a, b, c = ev.start.t, ev.end.t, ev.distance_m
        if not (
            (type(a) is int or not a or 1e-4 <= a < 1e16)
            and (type(b) is int or not b or 1e-4 <= b < 1e16)
            and (type(c) is int or not c or 1e-4 <= c < 1e16)
        ):
            return False
        for v in ev.evidence.values():
            t = type(v)
            if t is float:
                if not _plain(v):
                    return False
            elif t is dict or t is list:
                return None
        return True
    w, p = ev.wait, ev.passed
    return all(_plain(x) for x in (w.t, w.expires_t, p.t, p.lat, p.lon, p.speed_mps, p.distance_m))


def canonical(ev: FareEvent) -> bytes:
    """The canonical bytes of ``ev`` (``sig`` included when set), serialised once.

    Byte-identical with ``busbell.canonical_bytes`` of the same JSON value.
    """
    out = _ENCODER.encode(ev)
    plain = _plain_numbers(ev)
    if plain or (plain is None and _EXP_FLOAT.search(out) is None):
        return out
    # msgspec writes 1e16 / 1e-05 as 1e16 / 0.00001; the contract is Python's json
    return canonical_bytes(msgspec.to_builtins(ev))


_SIG_KEY: Final = b',"sig":"'


def signed_part(full: bytes, ev: FareEvent) -> bytes:
    """The bytes ``sig`` signs: :func:`canonical` ``full`` without ``"sig":...``.

    Keys are sorted, so the top-level ``sig`` is the last ``"sig"`` key in the bytes
    (nothing after it can hold one: ``start``, ``end``, ``wait`` have fixed keys); a
    valid ``sig`` is plain base64 (nothing escaped).
    """
    if ev.sig is msgspec.UNSET:
        return full
    at = full.rfind(_SIG_KEY)
    end = at + len(_SIG_KEY) + len(ev.sig) + 1
    return full[:at] + full[end:]


def event_to_dict(ev: FareEvent) -> dict[str, Any]:
    """The record as plain JSON values (``sig`` left out when unset)."""
    out: dict[str, Any] = msgspec.to_builtins(ev)
    return out


# --- schema generation ----------------------------------------------------------------

_DESCRIPTIONS: Final = {
    "SegmentEvent": (
        "Fare event v1 (docs/protocol.md): one rid presence segment. Generated from "
        "busbell._fare_types.SegmentEvent (busbell asyncapi-schemas); verified by "
        "busbell.validate_event."
    ),
    "MissedRecord": (
        "A missed stop (docs/protocol.md): the bus passed the stop while the wait was "
        "live and did not open its doors. Same chain, signature and uplink as segment "
        "events; never a ride. Generated from busbell._fare_types.MissedRecord."
    ),
}
_NAMES: Final = {"SegmentEvent": "FareEvent"}
"""Component names in the AsyncAPI document (the segment event has always been FareEvent)."""


def _refs(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/"):
                name = v.removeprefix("#/$defs/")
                out[k] = f"#/components/schemas/{_NAMES.get(name, name)}"
            elif k == "title":
                continue
            else:
                out[k] = _refs(v)
        return out
    if isinstance(node, list):
        return [_refs(v) for v in node]
    return node


def asyncapi_schemas() -> dict[str, Any]:
    """The JSON schemas (draft 2020-12) of the chain records, for ``docs/asyncapi.yaml``.

    Keys are the component names: ``FareEvent`` (a segment), ``MissedRecord`` and the
    nested objects; ``$ref`` point at ``#/components/schemas/...``. Rules that span
    fields (``end.t >= start.t``, the missed record's wait) are in the descriptions of
    docs/protocol.md, not in the schema.
    """
    _, defs = msgspec.json.schema_components([SegmentEvent, MissedRecord])
    out: dict[str, Any] = {}
    for name, generated in sorted(defs.items()):
        schema = _refs(generated)
        if name in _DESCRIPTIONS:
            schema = {"description": _DESCRIPTIONS[name]} | {
                k: v for k, v in schema.items() if k != "description"
            }
        if name in ("SegmentEvent", "MissedRecord"):
            # on the wire every record is signed (sig is optional only while building one)
            schema["required"] = sorted({*schema["required"], "sig"})
        if name == "MissedRecord":
            schema["properties"]["doors_opened"] = {"const": False}
        out[_NAMES.get(name, name)] = schema
    return out


BLOCK_BEGIN: Final = (
    "    # BEGIN generated by `busbell schema fare-events` from busbell._fare_types"
)
BLOCK_END: Final = "    # END generated"


def asyncapi_block() -> str:
    """The generated schemas as lines of ``docs/asyncapi.yaml``.

    They go under ``components: schemas:``, between the ``BEGIN generated`` and ``END
    generated`` comments. Each schema is written as indented JSON, which is YAML.
    """
    import json

    lines = [BLOCK_BEGIN]
    for name, schema in asyncapi_schemas().items():
        body = json.dumps(schema, indent=2, ensure_ascii=True)
        lines.append(f"    {name}:")
        lines.extend("      " + line for line in body.splitlines())
    lines.append(BLOCK_END)
    return "\n".join(lines) + "\n"


def replace_asyncapi_block(document: str) -> str:
    """``document`` with its generated block replaced by :func:`asyncapi_block`.

    Raises:
        ContractError: when the document has no (or no closed) generated block.
    """
    begin = document.find(BLOCK_BEGIN + "\n")
    end = document.find(BLOCK_END + "\n", begin)
    if begin < 0 or end < 0:
        raise ContractError(
            "the AsyncAPI document has no generated fare-event block "
            f"({BLOCK_BEGIN.strip()!r} ... {BLOCK_END.strip()!r})"
        )
    return document[:begin] + asyncapi_block() + document[end + len(BLOCK_END) + 1 :]
