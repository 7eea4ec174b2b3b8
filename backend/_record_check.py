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
   (``busbell.derive_event_id`` of ``bus_id, seq, rid, start.t`` for a segment,
   ``busbell.derive_missed_event_id`` of ``bus_id, seq, request_id, passed.t`` for a
   missed record: the one derivation, which the edge numbers its records with). So
   ``(bus_id, seq)``, the ledger's key, fixes the id: two stored records share one only
   if SHA-256 collides in 128 bits, and a missed record's never equals a segment's (the
   type tag), with no index or lookup of ids at all; checked before the signature, so
   it is never put off;
6. ``bad_signature``: ``sig`` is not its bus's Ed25519 signature over the canonical
   bytes without ``sig`` (:func:`signature_fault`), unless the signature check is put
   off (``verify=False``): online for a record below its bus's chain head (a re-sent
   copy, verified only when it is not byte-identical to the stored record), and, online
   and offline with ``verify="runs"`` (the default), for a record whose authenticity a
   later record of its hash-linked run may vouch for: :func:`decide_runs` decides those,
   for offline settle over its input (:mod:`backend._settle`), for online ingest over
   each transaction's batch (:meth:`backend._ingest.IngestCore.verify_runs`).

What passes is returned as its canonical bytes (``sig`` included), serialised once: what
online ingest stores, and whose SHA-256 is the chain hash the next record names as
``prev``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

import msgspec

from busbell._errors import SignatureError
from busbell._fare_event import derive_event_id, derive_missed_event_id
from busbell._fare_types import FareEvent, SegmentEvent, canonical, signed_part
from busbell._signing import PublicKey

__all__ = ["RecordFault", "Verify", "check_record", "decide_runs", "signature_fault"]

Verify = Literal["runs", "every"]
"""How signatures are verified, offline (``busbell backend settle --verify``) and online
(``[ingest] verify``): ``runs`` (one per hash-linked run, :func:`decide_runs`; the
default) or ``every`` (each record's own)."""


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
    if isinstance(rec, SegmentEvent):
        want = derive_event_id(bus_id, rec.seq, rec.rid, rec.start.t)
    else:
        want = derive_missed_event_id(bus_id, rec.seq, rec.request_id, rec.passed.t)
    if rec.event_id != want:
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


def decide_runs(
    nodes: Mapping[str, tuple[str, int, str]], verify: Callable[[list[str]], set[str]]
) -> tuple[set[str], int]:
    """Which records are authentic, verifying one signature per hash-linked run.

    A record is *authentic* when its own signature verifies, or when an authentic record
    of the same bus at the next seq names its hash as ``prev`` (that record's signature
    covers the hash, which covers every byte of this one, ``sig`` included). Byte-
    identical copies are one record (one hash).

    Round 1 takes the records by seq, highest first, and verifies those no record
    vouches for (the tops of the runs), counting on them to vouch for the records
    below. When every one verifies, that is the answer: a chain that links costs one
    verification. When some do not (forged, tampered, mislinked records, or the
    genuine top of a chain missing), round 2 verifies every record that no verified
    record vouches for through an unbroken run; nothing is taken on trust then, so
    there is no round 3.

    Args:
        nodes: hash -> ``(bus_id, seq, prev)`` of each record whose signature is put
            off (each passed every other check on its own).
        verify: verifies the records of the hashes given; returns those that fail.

    Returns:
        The hashes of the records that are not authentic (``bad_signature``) and how
        many signatures were verified.
    """
    order = sorted(nodes.items(), key=_seq_of, reverse=True)
    good: set[str] = set()
    bad: set[str] = set()
    verified = 0
    for optimistic in (True, False):
        vouched: set[tuple[str, int, str]] = set()  # (bus, seq, hash) authentic ones name
        need: list[str] = []
        for h, (bus, seq, prev) in order:
            if h in bad:
                continue
            if h not in good and (bus, seq, h) not in vouched:
                need.append(h)
                if not optimistic:
                    continue
            vouched.add((bus, seq - 1, prev))
        if not need:
            break
        verified += len(need)
        failed = verify(need)
        bad |= failed
        good.update(h for h in need if h not in failed)
        if not failed:
            break
    return bad, verified


def _seq_of(item: tuple[str, tuple[str, int, str]]) -> int:
    return item[1][1]
