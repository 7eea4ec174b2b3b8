"""Settlement: fare events -> verified, chained, resolved segments -> priced journeys.

:class:`Settler` is the offline pair of ``busbell edge replay`` (``busbell backend
settle``) and runs the same checks as the online path, in this order, streaming (events
are dropped from memory once checked; only a compact :class:`~backend._journeys.Segment`
per accepted event is kept):

1. parse and validate (fare event v1),
2. dedupe by ``(bus_id, seq)`` (an identical resend is a duplicate, not an error) and
   by ``event_id``,
3. verify ``sig`` with the bus's public key (DEVICES.csv / the device registry),
4. check the per-bus hash chain in ``seq`` order (out-of-order events wait for the gap
   to fill; a gap that never fills is a warning, a ``prev`` mismatch rejects),
5. resolve the rid to a rider (:class:`~backend._resolve.Resolver`) and check the
   proof's ``rtag`` and ``tq`` (:meth:`~backend._resolve.Resolver.check_proof`),
6. build and price journeys (:class:`~backend._journeys.JourneyBuilder`), one rider at
   a time: :meth:`Settler.iter_journeys` yields them in output order as they are built,
   so only the compact segments are ever all in memory (never the journeys and their
   explanation lines).

Steps 5-6 are :func:`segment_of` + :meth:`~backend._journeys.JourneyBuilder.build_rider`,
the very functions the online settlement (:mod:`backend._settlement`) runs on the events
that ingest already verified and stored.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from backend._journeys import Journey, JourneyBuilder, Segment
from backend._resolve import ProofRejected, Resolver
from busbell._canonical import canonical_bytes
from busbell._errors import ContractError, SignatureError
from busbell._fare_event import GENESIS_PREV, validate_event
from busbell._signing import PublicKey

__all__ = [
    "SettleResult",
    "SettleStats",
    "Settler",
    "UnresolvedRid",
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
    pending: dict[int, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)


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
        line = line.strip()
        if not line:
            return
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            self.stats.read += 1
            self.reject("malformed_payload")
            return
        if isinstance(obj, dict) and "events" in obj and "type" not in obj:
            obj = obj["events"]
        if isinstance(obj, list):
            for item in obj:
                self.feed_event(item)
        else:
            self.feed_event(obj)

    def feed_event(self, obj: object) -> None:
        """Feed one decoded event."""
        self.stats.read += 1
        try:
            event = validate_event(obj)
        except ContractError:
            self.reject("schema")
            return
        bus_id = event["bus_id"]
        public = self.devices.get(bus_id)
        if public is None:
            self.reject("unknown_device")
            return
        sig_bytes = canonical_bytes({k: v for k, v in event.items() if k != "sig"})
        full = canonical_bytes(event)
        digest = hashlib.sha256(full).hexdigest()
        bus = self._buses.get(bus_id)
        if bus is None:
            bus = self._buses[bus_id] = _Bus(len(self._buses))
        seq = event["seq"]
        prefix = int(digest[:16], 16) | 1
        seen = bus.seen.get(seq)
        if seen is not None:
            if seen == prefix:
                self.stats.duplicates += 1
            else:
                self.reject("chain_conflict")
            return
        if any(h == digest for h, _ in bus.pending.get(seq, ())):
            self.stats.duplicates += 1
            return
        try:
            public.verify_b64(event["sig"], sig_bytes)
        except SignatureError:
            self.reject("bad_signature")
            return
        eid = event["event_id"]
        here = bus.index << 40 | seq
        owner = self._event_ids.get(eid)
        if owner is not None and owner != here:
            self.reject("event_id_conflict")
            return
        self._event_ids[eid] = here
        if bus.next_seq is None:
            bus.next_seq = seq
            if seq != 1:
                # a slice of a longer chain: its first link cannot be checked here
                self.stats.warnings["chain_start_unverified"] += 1
                bus.prev = event["prev"]
        if seq < bus.next_seq:
            # below the chain head but never seen: the chain passed it as a gap
            self.stats.warnings["late_event"] += 1
            self._accept(bus, bus_id, seq, digest, event, link=False)
            return
        if seq > bus.next_seq:
            bus.pending.setdefault(seq, []).append((digest, event))
            return
        self._link(bus, bus_id, digest, event)
        self._drain(bus, bus_id)

    def _link(self, bus: _Bus, bus_id: str, digest: str, event: dict[str, Any]) -> None:
        seq = event["seq"]
        if event["prev"] != bus.prev:
            # a link that does not chain: reject it and leave the head where it is, so
            # the genuine event may still come; later ones wait behind the gap
            self.reject("prev_mismatch")
            return
        self._accept(bus, bus_id, seq, digest, event, link=True)

    def _drain(self, bus: _Bus, bus_id: str) -> None:
        while bus.next_seq is not None and bus.next_seq in bus.pending:
            candidates = bus.pending.pop(bus.next_seq)
            chosen = next((c for c in candidates if c[1]["prev"] == bus.prev), candidates[0])
            for c in candidates:
                if c is not chosen:
                    self.reject("chain_conflict")
            self._link(bus, bus_id, chosen[0], chosen[1])

    def _accept(
        self, bus: _Bus, bus_id: str, seq: int, digest: str, event: dict[str, Any], *, link: bool
    ) -> None:
        bus.seen.put(seq, int(digest[:16], 16))
        if link:
            bus.next_seq = seq + 1
            bus.prev = digest
        if event["type"] == "missed":
            self.stats.missed += 1  # a verified link of the chain, never a ride
            return
        try:
            seg = segment_of(event, self.resolver)
        except ProofRejected as exc:
            self.reject(exc.reason)
            return
        self.stats.accepted += 1
        compact = self._compact(seg)
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

    # ---------------------------------------------------------------- output

    def flush_pending(self) -> None:
        """Accept what waits behind chain gaps that never filled (warning per gap)."""
        for bus_id in sorted(self._buses):
            bus = self._buses[bus_id]
            while bus.pending:
                first = min(bus.pending)
                if bus.next_seq is not None:
                    self.stats.warnings["chain_gap"] += first - bus.next_seq
                candidates = bus.pending[first]
                bus.next_seq = first
                bus.prev = candidates[0][1]["prev"]
                self._drain(bus, bus_id)

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
