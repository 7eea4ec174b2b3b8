"""The per-record checks of fare ingest, online and offline: one function (no I/O).

Online ingest (:meth:`backend._ingest.IngestCore.decode`) and offline ``busbell backend
settle`` (:func:`backend._settle.check_line`) check each typed record
(:data:`busbell._fare_types.FareEvent`, whose decoding already made the ``schema``
checks) with :func:`check_record`, in this order, with these reasons:

1. ``schema``: its canonical bytes cannot be written (a lone surrogate in a string);
2. ``bus_mismatch``: it names another bus than the topic it came on (online only:
   ``topic_bus``; a file has no topic);
3. ``unknown_device``: its bus has no registered key;
4. ``revoked_device``: its bus's device was revoked (online's registry flags it);
5. ``event_id_mismatch``: its ``event_id`` is not the one derived from it
   (:func:`busbell._fare_types.derived_event_id`: ``busbell.derive_event_id`` of
   ``bus_id, seq, rid, start.t`` for a segment, ``busbell.derive_missed_event_id`` of
   ``bus_id, seq, request_id, passed.t`` for a missed record). So ``(bus_id, seq)``,
   the ledger's key, fixes the id: two stored records share one only if SHA-256 collides
   in 128 bits, and a missed record's never equals a segment's (the type tag), with no
   index or lookup of ids at all; checked before the signature, so it is never put off;
6. ``bad_signature``: ``sig`` is not its bus's Ed25519 signature over the canonical
   bytes without ``sig`` (:func:`signature_fault`), unless the signature check is put
   off (``verify=False``): online for a record below its bus's chain head (a re-sent
   copy, verified only when it is not byte-identical to the stored record), offline for
   a record whose authenticity a later record of its hash-linked run vouches for
   (:mod:`backend._settle`, ``verify="runs"``).

What passes is returned as its canonical bytes (``sig`` included), serialised once: what
online ingest stores, and whose SHA-256 is the chain hash the next record names as
``prev``.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from busbell._errors import SignatureError
from busbell._fare_types import FareEvent, canonical, derived_event_id, signed_part
from busbell._signing import PublicKey

__all__ = ["RecordFault", "check_record", "signature_fault"]


class RecordFault(NamedTuple):
    """Why a record is rejected on its own.

    Attributes:
        reason: ``schema``, ``bus_mismatch``, ``unknown_device``, ``revoked_device``,
            ``event_id_mismatch`` or ``bad_signature``.
        detail: a human-readable detail.
        full: its canonical bytes (``None`` when they cannot be written: ``schema``).
    """

    reason: str
    detail: str
    full: bytes | None = None


def check_record(
    rec: FareEvent,
    public: PublicKey | None,
    *,
    topic_bus: str | None = None,
    revoked: bool = False,
    verify: bool = True,
) -> bytes | RecordFault:
    """Check one typed record on its own; its canonical bytes, or why it is rejected.

    Args:
        rec: the record.
        public: its bus's registered public key (``None``: not registered).
        topic_bus: the bus whose topic it came on (``None``: no topic, no check).
        revoked: its bus's device is revoked.
        verify: check the signature (``False``: put off, see the module docs).
    """
    try:
        full = canonical(rec)  # serialised once: stored, hashed, and cut to the signed part
    except (ValueError, TypeError, msgspec.EncodeError) as exc:  # a lone surrogate
        return RecordFault("schema", f"not encodable: {exc}")
    bus_id = rec.bus_id
    if topic_bus is not None and bus_id != topic_bus:
        return RecordFault("bus_mismatch", f"event of {bus_id!r} on {topic_bus!r}", full)
    if public is None:
        return RecordFault("unknown_device", f"bus {bus_id!r} is not registered", full)
    if revoked:
        return RecordFault("revoked_device", f"bus {bus_id!r} is revoked", full)
    if rec.event_id != (want := derived_event_id(rec)):
        return RecordFault(
            "event_id_mismatch", f"event_id {rec.event_id!r} is not the derived {want!r}", full
        )
    if verify:
        return signature_fault(rec, full, public) or full
    return full


def signature_fault(rec: FareEvent, full: bytes, public: PublicKey) -> RecordFault | None:
    """``bad_signature`` unless ``rec.sig`` verifies over ``full`` without ``sig``.

    Args:
        rec: the record (its ``sig`` set: the typed record requires it).
        full: its canonical bytes (:func:`check_record`'s).
        public: its bus's public key.
    """
    assert isinstance(rec.sig, str)  # checked by the type (require_sig)
    try:
        public.verify_b64(rec.sig, signed_part(full, rec))
    except SignatureError as exc:
        return RecordFault("bad_signature", str(exc), full)
    return None
