"""Settlement: fare events -> verified, chained, resolved segments -> priced journeys.

:class:`Settler` is the offline pair of ``busbell edge replay`` (``busbell backend
settle``) and runs the same checks as the online path, in this order, streaming (events
are dropped from memory once checked; only a compact :class:`~backend._journeys.Segment`
per accepted event is kept):

1. check each event on its own (:func:`check_event`; with ``feed_lines(...,
   processes=N)`` in a pool of forked worker processes, results taken in input order):
   bounded parse, validate (fare event v1 and the ledger ranges), device known, ``sig``
   verified over the canonical bytes (serialised once; the chain hash is derived from
   them), and for a segment its rid resolved to a rider
   (:class:`~backend._resolve.Resolver`) and the proof's ``rtag`` and ``tq`` checked
   (:meth:`~backend._resolve.Resolver.check_proof`),
2. in this process (:meth:`Settler.take`), the decisions online ingest's plan makes,
   with the same reasons: dedupe by ``(bus_id, seq)`` (an identical resend is a
   duplicate; another event there is ``chain_conflict``) and by ``event_id``
   (``event_id_conflict``), then the per-bus hash chain in ``seq`` order (out-of-order
   events wait for the gap; a gap that never fills is a warning, a ``prev`` mismatch is
   ``prev_mismatch``); a verified ``missed`` record is a link, never a ride,
3. a segment whose rid did not resolve or whose proof fails is rejected with that reason,
4. build and price journeys (:class:`~backend._journeys.JourneyBuilder`), one rider at
   a time: :meth:`Settler.iter_journeys` yields them in output order as they are built,
   so only the compact segments are ever all in memory (never the journeys and their
   explanation lines).

Steps 1 (resolution) and 4 are :func:`segment_of` +
:meth:`~backend._journeys.JourneyBuilder.build_rider`,
the very functions the online settlement (:mod:`backend._settlement`) runs on the events
that ingest already verified and stored.
"""

from __future__ import annotations

import dataclasses
import os
from array import array
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from backend._ingest_bounds import ledger_problem, signed_and_full
from backend._journeys import Journey, JourneyBuilder, Segment
from backend._resolve import ProofRejected, Resolver
from busbell._canonical import sha256_hex
from busbell._errors import ContractError, SignatureError
from busbell._fare_event import GENESIS_PREV, validate_event
from busbell._safejson import JsonLimits, JsonRejected, loads_bounded
from busbell._signing import PublicKey

__all__ = [
    "Checked",
    "SettleResult",
    "SettleStats",
    "Settler",
    "UnresolvedRid",
    "check_event",
    "check_line",
    "read_event_lines",
    "segment_of",
]


class UnresolvedRid(ProofRejected):
    """No enrolled rider has the segment's rid in its interval (or the next ones)."""

    def __init__(self, rid: str, interval: int) -> None:
        super().__init__("unresolved_rid", f"rid {rid} interval {interval}")


def segment_of(event: Mapping[str, Any], resolver: Resolver) -> Segment:
    """Resolve a verified event's rid and check its proof; return the rider's segment.

    The rid is looked up in the event's interval, then (token clock skew at an interval
    boundary) the neighbouring ones.

    Raises:
        ProofRejected: ``unresolved_rid`` or a proof failure (``bad_rtag``, ...).
    """
    rid = event["rid"]
    interval = event["interval"]
    found: tuple[int, int] | None = None
    for i in (interval, interval - 1, interval + 1):
        idx = resolver.resolve_index(rid, i)
        if idx is not None:
            found = (idx, i)
            break
    if found is None:
        raise UnresolvedRid(rid, interval)
    idx, rid_interval = found
    resolver.check_proof(
        idx,
        event["proof"]["first"],
        event["proof"]["last"],
        rid_interval,
        rid=rid,
        start_t=event["start"]["t"],
        end_t=event["end"]["t"],
    )
    return Segment.from_event(event, resolver.keyring.rider_id(idx))


@dataclass(slots=True)
class SettleStats:
    """Counts of one settlement run.

    Attributes:
        read: events read.
        accepted: events that became segments.
        missed: verified ``missed`` chain records (links of the chain, never rides).
        duplicates: identical resends dropped.
        rejected: rejected events by reason.
        warnings: non-fatal findings by kind (``chain_gap`` counts missing seqs).
    """

    read: int = 0
    accepted: int = 0
    missed: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "read": self.read,
            "accepted": self.accepted,
            "missed": self.missed,
            "duplicates": self.duplicates,
            "rejected": dict(sorted(self.rejected.items())),
            "warnings": dict(sorted(self.warnings.items())),
        }


@dataclass(slots=True)
class SettleResult:
    """What a settlement produced."""

    journeys: list[Journey]
    stats: SettleStats


@dataclass(frozen=True, slots=True)
class Checked:
    """One event checked on its own, before the chain: the verdict and what the chain needs.

    Attributes:
        reason: why it is rejected (``malformed_payload``, ``schema``,
            ``unknown_device``, ``bad_signature``), or ``None``: verified.
        bus_id: its bus.
        seq: its seq.
        event_id: its event id.
        prev: its ``prev``.
        digest: hex SHA-256 of its canonical bytes with ``sig`` (the next ``prev``).
        missed: a ``missed`` record (a chain link, never a ride).
        segment: the resolved segment (proof checked), for a segment that resolved.
        unresolved: why a segment did not resolve (``unresolved_rid``, ``bad_rtag``...).
    """

    reason: str | None
    bus_id: str = ""
    seq: int = 0
    event_id: str = ""
    prev: str = ""
    digest: str = ""
    missed: bool = False
    segment: Segment | None = None
    unresolved: str | None = None


_LINE_LIMITS = JsonLimits(max_bytes=64 << 20, max_depth=32)
_CHUNK_LINES = 256
_POOL_CTX: tuple[Mapping[str, PublicKey], Resolver] | None = None


def check_event(obj: object, devices: Mapping[str, PublicKey], resolver: Resolver) -> Checked:
    """Everything about one event that does not depend on other events.

    Schema (``schema``; the same ledger ranges as online ingest), device
    (``unknown_device``), signature over the canonical bytes (``bad_signature``); the
    canonical bytes are serialised once and the chain hash derived from them; then a
    segment's rid is resolved and its proof checked.
    """
    try:
        event = validate_event(obj)
    except ContractError:
        return Checked("schema")
    problem = ledger_problem(event)
    if problem is not None:
        return Checked("schema")
    bus_id = event["bus_id"]
    public = devices.get(bus_id)
    if public is None:
        return Checked("unknown_device")
    try:
        signed, full = signed_and_full(event)
        public.verify_b64(event["sig"], signed)
    except ValueError:  # not encodable (a lone surrogate)
        return Checked("schema")
    except SignatureError:
        return Checked("bad_signature")
    base = Checked(None, bus_id, event["seq"], event["event_id"], event["prev"], sha256_hex(full))
    if event["type"] == "missed":
        return dataclasses.replace(base, missed=True)
    try:
        return dataclasses.replace(base, segment=segment_of(event, resolver))
    except ProofRejected as exc:
        return dataclasses.replace(base, unresolved=exc.reason)


def check_line(
    line: bytes | str, devices: Mapping[str, PublicKey], resolver: Resolver
) -> list[Checked]:
    """:func:`check_event` for each event of one JSONL line (none for a blank line)."""
    line = line.strip()
    if not line:
        return []
    try:
        obj = loads_bounded(line, _LINE_LIMITS)
    except JsonRejected:
        return [Checked("malformed_payload")]
    if isinstance(obj, dict) and "events" in obj and "type" not in obj:
        obj = obj["events"]
    items = obj if isinstance(obj, list) else [obj]
    return [check_event(item, devices, resolver) for item in items]


def _check_chunk(lines: list[bytes]) -> list[Checked]:
    assert _POOL_CTX is not None  # set before the pool forked
    devices, resolver = _POOL_CTX
    out: list[Checked] = []
    for line in lines:
        out.extend(check_line(line, devices, resolver))
    return out


def _chunks(lines: Iterable[bytes], n: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _SeenHashes:
    """Seq -> 63-bit hash prefix of the accepted event, 8 bytes per seq.

    A bus's seqs are dense, so they go in a flat ``array('Q')`` from the first seq seen
    (0 means "not seen"); a seq far outside it (a forged huge seq) goes to a dict.
    """

    __slots__ = ("_base", "_flat", "_sparse")

    _MAX_GROW = 1 << 20

    def __init__(self) -> None:
        self._base: int | None = None
        self._flat = array("Q")
        self._sparse: dict[int, int] = {}

    def items(self) -> Iterator[tuple[int, int]]:
        """``(seq, prefix)`` of every seq taken, in seq order."""
        base = self._base
        flat = [] if base is None else [(base + i, v) for i, v in enumerate(self._flat) if v]
        yield from sorted([*flat, *self._sparse.items()])

    def get(self, seq: int) -> int | None:
        """The prefix stored for ``seq`` (low bit set), or ``None``."""
        base = self._base
        if base is not None and 0 <= seq - base < len(self._flat):
            value = self._flat[seq - base]
            return value or None
        return self._sparse.get(seq)

    def put(self, seq: int, prefix: int) -> None:
        """Remember the hash prefix of the event accepted at ``seq``."""
        value = prefix | 1  # never 0
        if self._base is None:
            self._base = seq
        off = seq - self._base
        flat = self._flat
        if 0 <= off < len(flat):
            flat[off] = value
        elif len(flat) <= off < len(flat) + self._MAX_GROW:
            flat.frombytes(bytes(8 * (off - len(flat))))
            flat.append(value)
        else:
            self._sparse[seq] = value


@dataclass(slots=True)
class _Bus:
    index: int
    next_seq: int | None = None  # None: nothing accepted yet
    prev: str = GENESIS_PREV
    seen: _SeenHashes = field(default_factory=_SeenHashes)
    pending: dict[int, list[Checked]] = field(default_factory=dict)


class Settler:
    """Streams fare events through every check, then builds the journeys rider by rider.

    Args:
        devices: bus id -> public key.
        resolver: the rid resolver over the enrolled riders.
        builder: the journey builder.
        categories: rider id -> category (default: the builder policy's).
    """

    def __init__(
        self,
        devices: Mapping[str, PublicKey],
        resolver: Resolver,
        builder: JourneyBuilder,
        *,
        categories: Mapping[str, str] | None = None,
    ) -> None:
        self.devices = devices
        self.resolver = resolver
        self.builder = builder
        self.categories = categories
        self.stats = SettleStats()
        self._buses: dict[str, _Bus] = {}
        # event_id (the string the segment keeps anyway) -> bus index << 40 | seq
        self._event_ids: dict[str, int] = {}
        self._by_rider: dict[str, list[Segment]] = {}
        self._intern: dict[str, str] = {}
        self._intervals: dict[int, int] = {}

    # ---------------------------------------------------------------- input

    def reject(self, reason: str) -> None:
        """Count a rejected event."""
        self.stats.rejected[reason] += 1

    def feed_line(self, line: bytes | str) -> None:
        """Feed one JSONL line: an event, a JSON array of events or ``{"events": [...]}``."""
        for checked in check_line(line, self.devices, self.resolver):
            self.take(checked)

    def feed_lines(self, lines: Iterable[bytes], *, processes: int = 1) -> None:
        """Feed JSONL lines; with ``processes`` > 1 the per-event checks run in a pool.

        Parsing, validation, signature verification, rid resolution and the proof checks
        of each event are independent of every other event, so worker processes (forked:
        they share the keyring and device registry copy-on-write) do them on chunks of
        lines; this process only chains, dedupes and keeps the results, in input order,
        so the outcome is the same as feeding the lines one by one.
        """
        if processes <= 1:
            for line in lines:
                self.feed_line(line)
            return
        import multiprocessing

        global _POOL_CTX  # noqa: PLW0603 - handed to forked workers, read-only there
        _POOL_CTX = (self.devices, self.resolver)
        ctx = multiprocessing.get_context("fork")
        window: deque[Any] = deque()
        with ctx.Pool(processes) as pool:
            for chunk in _chunks(lines, _CHUNK_LINES):
                window.append(pool.apply_async(_check_chunk, (chunk,)))
                if len(window) >= 4 * processes:  # bounded read-ahead, bounded memory
                    for checked in window.popleft().get():
                        self.take(checked)
            while window:
                for checked in window.popleft().get():
                    self.take(checked)
        _POOL_CTX = None

    def feed_event(self, obj: object) -> None:
        """Feed one decoded event."""
        self.take(check_event(obj, self.devices, self.resolver))

    def take(self, c: Checked) -> None:
        """Chain, dedupe and keep one event already checked on its own (:func:`check_event`).

        The same decisions as online ingest's plan: a verified event at a seq already
        taken is a duplicate (same hash) or ``chain_conflict``; an ``event_id`` already
        owned by another (bus, seq) is ``event_id_conflict``; out-of-order events wait
        for the gap; a link whose ``prev`` does not match is ``prev_mismatch``.
        """
        self.stats.read += 1
        if c.reason is not None:
            self.reject(c.reason)
            return
        bus = self._buses.get(c.bus_id)
        if bus is None:
            bus = self._buses[c.bus_id] = _Bus(len(self._buses))
        seq = c.seq
        prefix = int(c.digest[:16], 16) | 1
        seen = bus.seen.get(seq)
        if seen is not None:
            if seen == prefix:
                self.stats.duplicates += 1
            else:
                self.reject(self._conflict_reason(bus, c))
            return
        if any(p.digest == c.digest for p in bus.pending.get(seq, ())):
            self.stats.duplicates += 1
            return
        here = bus.index << 40 | seq
        owner = self._event_ids.get(c.event_id)
        if owner is not None and owner != here:
            self.reject("event_id_conflict")
            return
        self._event_ids[c.event_id] = here
        if bus.next_seq is None:
            # like online ingest, a chain starts at seq 1; a file holding only a slice of
            # a longer chain is settled from its first seq by flush_pending, at the end
            bus.next_seq = 1
        if seq < bus.next_seq:
            # below the chain head but never seen: the chain passed it as a gap
            self.stats.warnings["late_event"] += 1
            self._accept(bus, c, link=False)
            return
        if seq > bus.next_seq:
            bus.pending.setdefault(seq, []).append(c)
            return
        self._link(bus, c)
        self._drain(bus)

    def _link(self, bus: _Bus, c: Checked) -> None:
        if c.prev != bus.prev:
            # a link that does not chain: reject it and leave the head where it is, so
            # the genuine event may still come; later ones wait behind the gap
            self.reject("prev_mismatch")
            return
        self._accept(bus, c, link=True)

    def _conflict_reason(self, bus: _Bus, c: Checked) -> str:
        """Another record than the one taken at ``c.seq``: which of the two reasons.

        ``prev_mismatch`` when it does not even link to the record before, else
        ``chain_conflict``: the same rule as online ingest's plan.
        """
        if c.seq == 1:
            return "prev_mismatch" if c.prev != GENESIS_PREV else "chain_conflict"
        here = bus.seen.get(c.seq - 1)
        if here is not None and int(c.prev[:16], 16) | 1 != here:
            return "prev_mismatch"
        return "chain_conflict"

    def _drain(self, bus: _Bus) -> None:
        while bus.next_seq is not None and bus.next_seq in bus.pending:
            candidates = bus.pending.pop(bus.next_seq)
            chosen = next((c for c in candidates if c.prev == bus.prev), candidates[0])
            self._link(bus, chosen)
            for c in candidates:
                if c is not chosen:
                    self.reject(self._conflict_reason(bus, c))

    def _accept(self, bus: _Bus, c: Checked, *, link: bool) -> None:
        bus.seen.put(c.seq, int(c.digest[:16], 16))
        if link:
            bus.next_seq = c.seq + 1
            bus.prev = c.digest
        if c.missed:
            self.stats.missed += 1  # a verified link of the chain, never a ride
            return
        if c.segment is None:
            self.reject(c.unresolved or "unresolved_rid")
            return
        self.stats.accepted += 1
        compact = self._compact(c.segment)
        rider = self._by_rider.get(compact.rider_id)
        if rider is None:
            self._by_rider[compact.rider_id] = [compact]
        else:
            rider.append(compact)

    def _compact(self, seg: Segment) -> Segment:
        intern = self._intern

        def i(s: str | None) -> str | None:
            if s is None:
                return None
            return intern.setdefault(s, s)

        return Segment(
            rider_id=seg.rider_id,
            bus_id=i(seg.bus_id) or seg.bus_id,
            seq=seg.seq,
            event_id=seg.event_id,
            interval=self._intervals.setdefault(seg.interval, seg.interval),
            route_id=i(seg.route_id),
            trip_id=i(seg.trip_id),
            start_t=seg.start_t,
            start_stop_id=i(seg.start_stop_id),
            start_cause=i(seg.start_cause) or seg.start_cause,
            end_t=seg.end_t,
            end_stop_id=i(seg.end_stop_id),
            end_cause=i(seg.end_cause) or seg.end_cause,
            distance_m=seg.distance_m,
            rssi_med=seg.rssi_med,
        )

    def links(self) -> dict[str, list[tuple[int, int]]]:
        """Per bus, ``(seq, hash prefix)`` of every chain record taken so far.

        The hash prefix is the first 63 bits of the record's hash (``int(h[:16], 16) | 1``):
        what the ledger of online ingest holds, for comparing the two.
        """
        return {b: list(bus.seen.items()) for b, bus in sorted(self._buses.items())}

    # ---------------------------------------------------------------- output

    def flush_pending(self) -> None:
        """Accept what waits behind chain gaps that never filled (warning per gap)."""
        for bus_id in sorted(self._buses):
            bus = self._buses[bus_id]
            while bus.pending:
                first = min(bus.pending)
                if next(bus.seen.items(), None) is None:
                    # a slice of a longer chain: its first link cannot be checked here
                    self.stats.warnings["chain_start_unverified"] += 1
                elif bus.next_seq is not None:
                    self.stats.warnings["chain_gap"] += first - bus.next_seq
                candidates = bus.pending[first]
                bus.next_seq = first
                bus.prev = candidates[0].prev
                self._drain(bus)

    def segments(self) -> list[Segment]:
        """The accepted segments so far (by rider, then in acceptance order)."""
        return [seg for rider in sorted(self._by_rider) for seg in self._by_rider[rider]]

    def iter_journeys(self) -> Iterator[Journey]:
        """Flush chain gaps, then build and price the journeys one rider at a time.

        Yields the journeys in output order (rider, first boarding, bus, journey id);
        each rider's segments are released once their journeys are built, so memory
        holds the segments and one rider's journeys, never every journey. The settler is
        consumed: call it once.
        """
        self.flush_pending()
        categories = self.categories or {}
        by_rider = self._by_rider
        for rider_id in sorted(by_rider):
            segments = by_rider.pop(rider_id)
            yield from self.builder.build_rider(segments, categories.get(rider_id))

    def finish(self) -> SettleResult:
        """Flush chain gaps, build and price every journey (kept in a list)."""
        return SettleResult(list(self.iter_journeys()), self.stats)


def read_event_lines(paths: Iterable[str | os.PathLike[str]]) -> Iterator[bytes]:
    """Yield the lines of event files (``-`` is not special; pass real paths)."""
    for path in paths:
        with open(path, "rb") as f:
            yield from f
