"""Settlement: fare events -> verified, chained, resolved segments -> priced journeys.

:class:`Settler` is the offline pair of ``busbell edge replay`` (``busbell backend
settle``) and runs the same checks as the online path, with the same reasons, in three
stages whose cost does not depend on the order of the events:

1. each event on its own, a chunk of lines at a time (:func:`check_lines`; with
   ``feed_lines(..., processes=N)`` in a pool of forked worker processes, results taken
   in input order): bounded parse, the typed record's validation
   (:mod:`busbell._fare_types`: a line holding one event is decoded straight into the
   typed record, anything else goes through :func:`busbell.loads_bounded` first), the
   checks online ingest runs too (:func:`backend._record_check.check_record`: device
   known, ``sig`` over the canonical bytes, serialised once; the signed part is cut
   from them and the chain hash is their SHA-256). Signatures are verified one per
   hash-linked run (``verify="runs"``, :func:`decide_runs`: a verified record vouches
   for the record whose hash it names as ``prev``; over whole files read by the pool,
   the runs of the whole input, decided once every record is checked
   (:meth:`Settler._feed_pooled_runs`); over lines, per chunk), or each record's own
   (``verify="every"``). What the next stages need travels back as a plain tuple
   (:class:`Checked`),
2. in this process (:meth:`Settler.take_many`), the chain decisions of online ingest,
   made by the same core (:class:`backend._chain.ChainPlanner`, one per chunk of
   results) over an in-memory store (each bus's position, stored hashes and held
   records): duplicates, ``chain_conflict``, ``prev_mismatch``, out-of-order events
   held for the gap (event ids need no bookkeeping: each was checked to be derived
   from its record, ``event_id_mismatch``); at the end of the input a gap
   that never filled is given up on (a warning). A verified ``missed`` record is a
   link, never a ride. An accepted segment is kept as a compact tuple,
3. once every event is in (:meth:`Settler.iter_journeys`,
   :meth:`Settler.iter_journey_lines`): the rids of all accepted segments are resolved
   in bulk (:meth:`~backend._resolve.Resolver.resolve_many`, every interval's table
   built in one pass, one AES context per rider for all of them), falling back to the
   neighbouring intervals as :func:`segment_of` does; then rider by rider (in a forked
   pool with ``processes`` > 1): each segment's proof is checked
   (:func:`~backend._resolve.check_proof_with`: ``rtag``, ``tq``; the rider's
   ``mac_key`` read once), and the rider's journeys are built and priced
   (:class:`~backend._journeys.JourneyBuilder`). A segment whose rid does not resolve
   or whose proof fails is rejected with that reason (counted in this stage).

:func:`segment_of` + :meth:`~backend._journeys.JourneyBuilder.build_rider` are what the
online settlement (:mod:`backend._settlement`) runs on the events ingest already
verified and stored; stage 3 is the same resolution and proof check in bulk (a test
holds them equal).
"""

from __future__ import annotations

import json
import marshal
import math
import mmap
import os
import threading
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

import numpy as np

from backend._chain import BusPlan, ChainPlanner, ChainPosition, Rejection
from backend._ingest_bounds import LogBudget
from backend._journeys import Journey, JourneyBuilder, Segment
from backend._legs import (
    evidence_co,
    evidence_count,
    evidence_invalid,
    evidence_level,
    evidence_rssi,
)
from backend._record_check import (
    RecordFault,
    Verify,
    check_record,
    decide_runs,
    signature_fault,
)
from backend._resolve import ProofRejected, Resolver, check_proof_with, mac_pads, proof_holds
from busbell import get_logger
from busbell._canonical import sha256_hex
from busbell._errors import ContractError
from busbell._fare_types import (
    FareEvent,
    SegmentEvent,
    convert_event,
    decode_event,
    flat_evidence,
)
from busbell._safejson import JsonLimits, JsonRejected, loads_bounded
from busbell._signing import PublicKey

__all__ = [
    "Checked",
    "SettleResult",
    "SettleStats",
    "Settler",
    "UnresolvedRid",
    "Verify",
    "check_event",
    "check_line",
    "check_lines",
    "decide_runs",
    "read_event_lines",
    "segment_of",
]


class UnresolvedRid(ProofRejected):
    """No enrolled rider has the segment's rid in its interval (or the next ones)."""

    def __init__(self, rid: str, interval: int) -> None:
        super().__init__("unresolved_rid", f"rid {rid} interval {interval}")


def segment_of(
    event: Mapping[str, Any],
    resolver: Resolver,
    *,
    found: tuple[int, int] | Literal[False] | None = False,
) -> Segment:
    """Resolve a verified event's rid and check its proof; return the rider's segment.

    The rid is looked up in the event's interval, then (token clock skew at an interval
    boundary) the neighbouring ones.

    Args:
        event: the event.
        resolver: the resolver.
        found: the rid's ``(rider index, interval)`` if already looked up in bulk
            (:meth:`~backend._resolve.Resolver.resolve_near`; ``None``: not found).

    Raises:
        ProofRejected: ``unresolved_rid`` or a proof failure (``bad_rtag``, ...).
    """
    rid = event["rid"]
    interval = event["interval"]
    if found is False:
        found = None
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
        accepted: events that became segments (rid resolved, proof holds; known once
            the journeys are built).
        missed: verified ``missed`` chain records (links of the chain, never rides).
        duplicates: identical resends dropped.
        rejected: rejected events by reason.
        warnings: non-fatal findings by kind (``chain_gap`` counts missing seqs).
        signatures: Ed25519 signatures verified (``runs``: about one per hash-linked
            run; ``every``: one per record that got that far).
    """

    read: int = 0
    accepted: int = 0
    missed: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    signatures: int = 0

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "read": self.read,
            "accepted": self.accepted,
            "missed": self.missed,
            "duplicates": self.duplicates,
            "rejected": dict(sorted(self.rejected.items())),
            "warnings": dict(sorted(self.warnings.items())),
            "signatures": self.signatures,
        }


@dataclass(slots=True)
class SettleResult:
    """What a settlement produced."""

    journeys: list[Journey]
    stats: SettleStats


class SegmentFields(NamedTuple):
    """A verified segment event's fields for stages 2-3.

    What :class:`Segment` needs besides its rider, and the proof that names the rider. A
    plain tuple of these values crosses the pool's ``marshal`` boundary (which takes no
    tuple subclass): :func:`_flat` on the way out, :func:`_checked_of` on the way in.
    """

    rid: bytes
    """12 bytes."""
    interval: int
    proof_first: bytes
    """24 bytes."""
    proof_last: bytes
    """24 bytes."""
    route_id: str | None
    trip_id: str | None
    start_t: float
    start_stop_id: str | None
    start_cause: str
    end_t: float
    end_stop_id: str | None
    end_cause: str
    distance_m: float
    rssi_med: float | None
    n_adv: int | None
    co: tuple[int, float, float] | None
    """A tentative segment's co-movement evidence."""
    riders_lvl: float | None
    invalid: tuple[str, ...]
    """The evidence keys read as absent because invalid
    (:func:`~backend._legs.evidence_invalid`; ``()`` as a rule)."""


class _CheckedFields(NamedTuple):
    reason: str | None
    bus_id: str = ""
    seq: int = 0
    event_id: str = ""
    prev: str = ""
    hash: str = ""
    segment: SegmentFields | None = None


class Checked(_CheckedFields):
    """One event checked on its own, before the chain: the verdict and what the chain needs.

    Attributes:
        reason: why it is rejected (``malformed_payload``, ``schema``,
            ``unknown_device``, ``bad_signature``), or ``None``: verified.
        bus_id: its bus.
        seq: its seq.
        event_id: its event id.
        prev: its ``prev``.
        hash: hex SHA-256 of its canonical bytes with ``sig`` (the next ``prev``).
        segment: a segment's fields (:class:`SegmentFields`); ``None`` for a ``missed``
            record (a chain link, never a ride).

    A verified one is a :class:`backend._chain.ChainRecord` (its signature verified,
    no text kept).
    """

    __slots__ = ()
    signed: ClassVar[bool] = True
    """Always: its signature was verified (what the chain planner reads)."""
    raw: ClassVar[str] = ""
    """No text is kept."""


_BAD = Checked("bad_signature")


_LINE_LIMITS = JsonLimits(max_bytes=64 << 20, max_depth=32)
_CHUNK_LINES = 256
_CHUNK_BYTES = 512 << 10
# verify="runs" over lines (a run is cut where a chunk ends; files read by the pool are
# decided whole, see Settler._feed_pooled_runs)
_RUN_CHUNK_LINES = 4096
_VERIFY_PER_TASK = 256
_RIDERS_PER_TASK = 512
_POOL_DEVICES: Mapping[str, PublicKey] | None = None
_POOL_VERIFY: list[Verify] = ["runs"]
_POOL_SETTLER: Settler | None = None


def _fields(ev: SegmentEvent) -> SegmentFields:
    s, e = ev.start, ev.end
    rssi_med = evidence_rssi(ev.evidence)
    n_adv = evidence_count(ev.evidence)
    riders_lvl = evidence_level(ev.evidence, "riders_lvl")
    return SegmentFields(
        bytes.fromhex(ev.rid),
        ev.interval,
        bytes.fromhex(ev.proof.first),
        bytes.fromhex(ev.proof.last),
        ev.route_id,
        ev.trip_id,
        float(s.t),
        s.stop_id,
        s.cause,
        float(e.t),
        e.stop_id,
        e.cause,
        float(ev.distance_m),
        rssi_med,
        n_adv,
        evidence_co(ev.evidence) if s.cause == "tentative" else None,
        riders_lvl,
        evidence_invalid(ev.evidence, rssi_med, n_adv, riders_lvl),
    )


def _flat(c: Checked) -> tuple[Any, ...]:
    """A :class:`Checked` as nested plain tuples (what ``marshal`` writes)."""
    seg = c.segment
    return tuple(c) if seg is None else (*c[:6], tuple(seg))


def _checked_of(flat: Sequence[Any]) -> Checked:
    """A :class:`Checked` from :func:`_flat`'s tuples (``marshal`` read them back)."""
    seg = flat[6]
    if seg is None:
        return Checked._make(flat)
    return Checked._make((*flat[:6], SegmentFields._make(seg)))


_Deferred = list[tuple["Checked", FareEvent, bytes]]
"""Records whose signature check is put off: the verdict so far, the record, its bytes."""


def _verified(
    rec: FareEvent, devices: Mapping[str, PublicKey], deferred: _Deferred | None = None
) -> Checked:
    """One record's checks (:func:`~backend._record_check.check_record`) and chain hash.

    With ``deferred``, the signature check is put off: a record that passes the rest goes
    there too (:func:`_verify_runs` decides it).
    """
    full = check_record(rec, devices.get(rec.bus_id), verify=deferred is None)
    if isinstance(full, RecordFault):
        return Checked(full.reason)
    seg = _fields(rec) if isinstance(rec, SegmentEvent) else None
    c = Checked(None, rec.bus_id, rec.seq, rec.event_id, rec.prev, sha256_hex(full), seg)
    if deferred is not None:
        deferred.append((c, rec, full))
    return c


def _verified_already(c: Checked) -> Rejection | None:  # pragma: no cover - never put off
    """Settle decides every signature before the chain (nothing is put off)."""
    raise AssertionError(f"bus {c.bus_id} seq {c.seq}: signature put off")


def _verify_runs(deferred: _Deferred, devices: Mapping[str, PublicKey]) -> tuple[set[str], int]:
    """Decide the put-off signatures of records checked together (:func:`decide_runs`).

    Returns:
        The hashes of the records whose signature does not verify (``bad_signature``),
        and how many signatures were verified.
    """
    records = {c.hash: (c, rec, full) for c, rec, full in deferred}

    def verify(hashes: list[str]) -> set[str]:
        bad = set()
        for h in hashes:
            c, rec, full = records[h]
            if signature_fault(rec, full, devices[c.bus_id]) is not None:
                bad.add(h)
        return bad

    return decide_runs({h: (r[0].bus_id, r[0].seq, r[0].prev) for h, r in records.items()}, verify)


def check_event(obj: object, devices: Mapping[str, PublicKey]) -> Checked:
    """Everything about one decoded event that does not depend on other events.

    Schema (``schema``: the typed record's checks, as online ingest), device
    (``unknown_device``), signature over the canonical bytes (``bad_signature``).
    """
    return _check_event(obj, devices, None)


def _check_event(
    obj: object, devices: Mapping[str, PublicKey], deferred: _Deferred | None
) -> Checked:
    try:
        rec = convert_event(obj)
    except ContractError:
        return Checked("schema")
    return _verified(rec, devices, deferred)


def check_line(line: bytes | str, devices: Mapping[str, PublicKey]) -> list[Checked]:
    """:func:`check_event` for each event of one JSONL line (none for a blank line).

    A line holding one event whose evidence is flat is decoded straight into the typed
    record; anything else (a batch, an array, a line that does not decode) is parsed by
    :func:`busbell.loads_bounded` first, which decides every rejection and its reason.
    The fast path takes only lines the general path would take whole.
    """
    return _check_line(line, devices, None)


def _check_line(
    line: bytes | str, devices: Mapping[str, PublicKey], deferred: _Deferred | None
) -> list[Checked]:
    data = line.encode("utf-8") if isinstance(line, str) else line
    data = data.strip()
    if not data:
        return []
    if data[:1] == b"{" and len(data) <= _LINE_LIMITS.max_bytes:
        try:
            rec = decode_event(data)
        except ContractError:
            pass
        else:
            if not isinstance(rec, SegmentEvent) or flat_evidence(rec.evidence):
                return [_verified(rec, devices, deferred)]
    try:
        obj = loads_bounded(data, _LINE_LIMITS)
    except JsonRejected:
        return [Checked("malformed_payload")]
    if isinstance(obj, dict) and "events" in obj and "type" not in obj:
        obj = obj["events"]
    items = obj if isinstance(obj, list) else [obj]
    return [_check_event(item, devices, deferred) for item in items]


def check_lines(
    lines: Iterable[bytes | str], devices: Mapping[str, PublicKey], *, verify: Verify = "runs"
) -> tuple[list[Checked], int]:
    """:func:`check_line` over lines, the signatures verified as ``verify`` says.

    ``every``: each record's own signature. ``runs``: one per hash-linked run of the
    lines' records (:func:`_verify_runs`): a record whose signature is not verified is
    accepted only when a verified record of its bus links to it through an unbroken run
    of hashes. The verdicts are those of ``every`` (the same reasons), except for a
    record whose own ``sig`` does not verify while a later record its bus signed links
    to it: only the bus's key can make that, and ``runs`` takes the record as the bus
    vouched for it (``docs/backend-ingest.md``, "Offline: one signature per hash-linked
    run").

    Returns:
        The verdicts in input order and how many signatures were verified.
    """
    if verify == "every":
        out = [c for line in lines for c in _check_line(line, devices, None)]
        return out, sum(1 for c in out if c.reason is None or c.reason == "bad_signature")
    deferred: _Deferred = []
    out = [c for line in lines for c in _check_line(line, devices, deferred)]
    if not deferred:
        return out, 0
    bad, verified = _verify_runs(deferred, devices)
    if bad:
        out = [_BAD if c.reason is None and c.hash in bad else c for c in out]
    return out, verified


def _check_chunk(lines: list[bytes]) -> bytes:
    """Worker: :func:`check_lines` over lines, as plain tuples and the count, marshalled.

    (``marshal`` writes a list of flat tuples about 10x faster than ``pickle``, and the
    pool then pickles one bytes object.)
    """
    assert _POOL_DEVICES is not None  # set before the pool forked
    out, verified = check_lines(lines, _POOL_DEVICES, verify=_POOL_VERIFY[0])
    return marshal.dumps((list(map(_flat, out)), verified))


_Range = tuple[str, int, int]
"""A byte range of an event file holding whole lines: path, start, end."""


def _check_range(task: _Range) -> bytes:
    """Worker: :func:`_check_chunk` over the lines of a byte range it reads itself.

    The lines split as iterating the file splits them (at newlines only).
    """
    path, start, end = task
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    return _check_chunk(data.split(b"\n"))


def _check_range_put_off(task: _Range) -> bytes:
    """Worker: the checks of a byte range's records, every signature put off.

    For ``verify="runs"`` over whole files (:meth:`Settler.feed_files`): the verdicts
    so far as plain tuples, and where each record is (its line's offset in the file,
    its index in the line), marshalled; :func:`_verify_at` verifies the records
    :func:`decide_runs` picks.
    """
    assert _POOL_DEVICES is not None  # set before the pool forked
    devices = _POOL_DEVICES
    path, start, end = task
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    out: list[tuple[Any, ...]] = []
    offsets = array("q")
    index = array("q")
    sink: _Deferred = []
    off = start
    for line in data.split(b"\n"):
        checked = _check_line(line, devices, sink)
        sink.clear()
        out.extend(map(_flat, checked))
        offsets.extend([off] * len(checked))
        index.extend(range(len(checked)))
        off += len(line) + 1
    return marshal.dumps((out, offsets.tobytes(), index.tobytes()))


_Where = tuple[str, int, int, str]
"""A record in an event file: path, its line's offset, its index in the line, its hash."""


def _verify_at(records: list[_Where]) -> bytes:
    """Worker: verify the signatures of records read again from their files.

    Returns the hashes of those that fail, marshalled.

    Raises:
        RuntimeError: a record read again is not the record checked before (its file
            changed while it was settled).
    """
    assert _POOL_DEVICES is not None  # set before the pool forked
    devices = _POOL_DEVICES
    bad: list[str] = []
    files: dict[str, Any] = {}
    try:
        for path, offset, i, digest in records:
            f = files.get(path)
            if f is None:
                f = files[path] = open(path, "rb")  # noqa: SIM115 - closed below
            f.seek(offset)
            deferred: _Deferred = []
            checked = _check_line(f.readline(), devices, deferred)
            c = checked[i] if i < len(checked) else None
            found = [d for d in deferred if d[0] is c]
            if c is None or not found or c.hash != digest:
                raise RuntimeError(f"{path} changed while it was settled (offset {offset})")
            _, rec, full = found[0]
            if signature_fault(rec, full, devices[c.bus_id]) is not None:
                bad.append(digest)
    finally:
        for f in files.values():
            f.close()
    return marshal.dumps(bad)


def _ranges(paths: Iterable[str | os.PathLike[str]], size: int) -> Iterator[_Range]:
    """Byte ranges of about ``size`` bytes covering the files, cut after a newline."""
    for path in paths:
        name = os.fspath(path)
        with open(name, "rb") as f:
            total = os.fstat(f.fileno()).st_size
            if not total:
                continue
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                start = 0
                while start < total:
                    end = start + size
                    if end < total:
                        nl = m.find(b"\n", end - 1)
                        end = total if nl < 0 else nl + 1
                    else:
                        end = total
                    yield name, start, end
                    start = end


_T = TypeVar("_T")


def _chunks(items: Iterable[_T], n: int) -> Iterator[list[_T]]:
    chunk: list[_T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _pooled(
    work: Callable[[_T], Any],
    tasks: Iterable[_T],
    processes: int,
    meanwhile: Callable[[], object] | None = None,
) -> Iterator[Any]:
    """``work(task)`` for each task in forked worker processes, results in task order.

    A bounded read-ahead (4 tasks per process) bounds memory. ``meanwhile`` is called
    once the first tasks are handed out, before the first result is taken: work this
    process does while the workers start (they were forked before it). What this process holds
    is frozen out of the cyclic garbage collector before the fork and every 64 results
    (its data has no cycles and is freed by reference counting as before): otherwise
    each full collection walks every kept segment again, in this process and, copying
    the pages as it writes, in every worker.
    """
    import gc
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    window: deque[Any] = deque()
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        with ctx.Pool(processes) as pool:
            for n, task in enumerate(tasks):
                window.append(pool.apply_async(work, (task,)))
                if len(window) >= 4 * processes:
                    if meanwhile is not None:
                        meanwhile()
                        meanwhile = None
                    yield window.popleft().get()
                if n % 64 == 63:
                    gc.freeze()
            if meanwhile is not None:
                meanwhile()
            while window:
                yield window.popleft().get()
    finally:
        if not frozen_before:  # never thaw what a caller froze
            gc.unfreeze()


class _TablesAhead:
    """Builds the rid tables of the intervals seen so far, in a thread, during stage 1.

    While the events are checked in the pool, so stage 3 finds the tables built and no
    core waits for them.
    Nothing is built before :meth:`start` (each pass costs one AES key schedule per
    rider: the feeder starts it once 5 % of the input is in, when in bus order the first
    buses' chains have named nearly every interval of the day); then intervals go to the
    resolver in batches at least half as large as what is already built, so a day read
    in closing order, its intervals coming one by one, takes a handful of passes. Only
    the thread touches the resolver until :meth:`finish`.
    """

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self._seen: set[int] = set()
        self._asked: set[int] = set()
        self._wake = threading.Condition()
        self._started = False
        self._closing = False
        self._cancelled = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="busbell-settle.tables", daemon=True)
        self._thread.start()

    def see(self, intervals: set[int]) -> None:
        """Intervals of segments taken (called by the one thread feeding events)."""
        new = intervals - self._seen
        if new:
            with self._wake:
                self._seen |= new
                self._wake.notify()

    def start(self) -> None:
        """Build from now on (called by the feeding thread)."""
        if not self._started:
            with self._wake:
                self._started = True
                self._wake.notify()

    def _run(self) -> None:
        try:
            while True:
                with self._wake:
                    while True:
                        todo = self._seen - self._asked
                        if self._cancelled or (self._closing and not todo):
                            return
                        if self._closing or (
                            self._started and len(todo) >= max(4, len(self._asked) // 2)
                        ):
                            break
                        self._wake.wait()
                    self._asked |= todo
                self._resolver.tables_for(sorted(todo))
        except BaseException as exc:  # raised again by finish()
            self._error = exc

    def finish(self, *, build: bool = True) -> None:
        """Build what is left (unless ``build`` is false) and wait for the thread."""
        with self._wake:
            self._closing = True
            self._cancelled = not build
            self._wake.notify()
        self._thread.join()
        if self._error is not None and build:
            raise self._error


class _SeenHashes:
    """Seq -> hex SHA-256 of the record stored there, 32 bytes per seq.

    A bus's seqs are dense, so the digests go in a flat ``bytearray`` from the first seq
    stored (32 zero bytes mean "not stored"); a seq far outside it (a forged huge seq)
    goes to a dict. What a :class:`~backend._chain.ChainPlanner` reads as the stored
    hashes (``get``).
    """

    __slots__ = ("_base", "_flat", "_sparse")

    _MAX_GROW = 1 << 20
    _NONE = bytes(32)

    def __init__(self) -> None:
        self._base: int | None = None
        self._flat = bytearray()
        self._sparse: dict[int, str] = {}

    def items(self) -> Iterator[tuple[int, str]]:
        """``(seq, hash)`` of every seq stored, in seq order."""
        base, flat, none = self._base, self._flat, self._NONE
        dense = (
            []
            if base is None
            else [
                (base + i // 32, flat[i : i + 32].hex())
                for i in range(0, len(flat), 32)
                if flat[i : i + 32] != none
            ]
        )
        yield from sorted([*dense, *self._sparse.items()])

    def get(self, seq: int) -> str | None:
        """The hash stored at ``seq``, or ``None``."""
        base = self._base
        if base is not None and 0 <= (off := 32 * (seq - base)) < len(self._flat):
            value = self._flat[off : off + 32]
            return None if value == self._NONE else value.hex()
        return self._sparse.get(seq)

    def put(self, seq: int, digest: str) -> None:
        """Remember the hash of the record stored at ``seq``."""
        if self._base is None:
            self._base = seq
        off = 32 * (seq - self._base)
        flat = self._flat
        if 0 <= off < len(flat):
            flat[off : off + 32] = bytes.fromhex(digest)
        elif len(flat) <= off < len(flat) + 32 * self._MAX_GROW:
            flat.extend(bytes(off - len(flat)))
            flat.extend(bytes.fromhex(digest))
        else:
            self._sparse[seq] = digest


@dataclass(slots=True)
class _Bus:
    """One bus in settle's in-memory store: what a ledger's chain rows hold."""

    position: ChainPosition = field(default_factory=ChainPosition)
    hashes: _SeenHashes = field(default_factory=_SeenHashes)
    held: dict[int, dict[str, Checked]] = field(default_factory=dict)


_Pending = tuple[str, int, str, SegmentFields]
"""An accepted segment waiting for stage 3: bus id, seq, event id, its fields."""
_Group = tuple[str, int, list[int]]
"""One rider's work in stage 3: rider id, rider index, indexes into the pending list."""
_Line = tuple[str, bool, bool]
"""A journey as written: its JSON line, whether it is charged, whether held for review."""


class Settler:
    """Streams fare events through every check, then builds the journeys rider by rider.

    Args:
        devices: bus id -> public key.
        resolver: the rid resolver over the enrolled riders.
        builder: the journey builder.
        categories: rider id -> category (default: the builder policy's).
        verify: ``runs`` (default): one signature per hash-linked run (of the whole
            input for files the pool reads, else of each chunk of lines); ``every``:
            each record's own (:func:`check_lines`).
        log_budget: rate limit of the per-event warning log (``segment_evidence_invalid``)
            per (keys, bus), on ``clock``; default 10 lines a minute each (every one is
            counted in ``stats.warnings``).
        clock: monotonic seconds of ``log_budget``.
    """

    def __init__(
        self,
        devices: Mapping[str, PublicKey],
        resolver: Resolver,
        builder: JourneyBuilder,
        *,
        categories: Mapping[str, str] | None = None,
        verify: Verify = "runs",
        log_budget: LogBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if verify not in ("runs", "every"):
            raise ValueError(f"verify must be 'runs' or 'every', not {verify!r}")
        self.devices = devices
        self.verify: Verify = verify
        self.resolver = resolver
        self.builder = builder
        self.categories = categories
        self.log_budget = log_budget or LogBudget()
        self._clock = clock
        self.stats = SettleStats()
        # the in-memory store the chain planner reads and its plans are written to
        self._buses: dict[str, _Bus] = {}
        self._flushed = False
        self._clear_pending()

    def _clear_pending(self) -> None:
        """No segment pending (at the start, and once the journeys were built)."""
        self._pending: list[_Pending] = []
        # each pending segment's rid (12 bytes, end to end) and interval, for stage 3's
        # bulk lookup without reaching every segment's tuple again
        self._pending_rids = bytearray()
        self._pending_ivs = array("q")

    # ---------------------------------------------------------------- input

    def reject(self, reason: str, n: int = 1) -> None:
        """Count a rejected event."""
        self.stats.rejected[reason] += n

    def feed_line(self, line: bytes | str) -> None:
        """Feed one JSONL line: an event, a JSON array of events or ``{"events": [...]}``."""
        self._take_lines([line])

    def feed_lines(self, lines: Iterable[bytes], *, processes: int = 1) -> None:
        """Feed JSONL lines; with ``processes`` > 1 the per-event checks run in a pool.

        Parsing and validation of each event are independent of every other event, and
        signature verification depends only on the events checked with it (its chunk:
        :func:`check_lines`), so worker processes (forked: they share the device
        registry copy-on-write) do them on chunks of lines; this process only chains,
        dedupes and keeps the results, in input order, so the outcome is the same as
        feeding the lines one by one (with ``verify="runs"``, but for a record whose
        own ``sig`` fails while its bus linked a later record of its chunk to it).
        """
        n = self._chunk_lines()
        if processes <= 1:
            for chunk in _chunks(lines, n):
                self._take_lines(chunk)
            return
        self._feed_pooled(_check_chunk, _chunks(lines, n), processes)

    def _chunk_lines(self) -> int:
        """Lines checked together (one task of the pool)."""
        return _CHUNK_LINES if self.verify == "every" else _RUN_CHUNK_LINES

    def feed_files(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        processes: int = 1,
        progress: Callable[[int], object] | None = None,
        meanwhile: Callable[[], object] | None = None,
    ) -> None:
        """Feed the lines of event files, as :meth:`feed_lines` of their lines.

        With ``processes`` > 1 and regular files, each worker reads the byte ranges it
        checks (cut after a newline) from the file itself: this process sends three
        numbers per range, not the lines. ``progress`` is called with the events taken.
        ``meanwhile`` is called once before any event is taken; with ``processes`` > 1,
        while the workers check the first ones (``backend settle`` loads the riders
        then: nothing before stage 3 needs them).
        """
        if processes > 1 and all(Path(p).is_file() for p in paths):
            sizes: deque[int] = deque()
            names: deque[str] = deque()
            total = sum(os.path.getsize(p) for p in paths)

            def ranges() -> Iterator[_Range]:
                for r in _ranges(paths, _CHUNK_BYTES):
                    sizes.append(r[2] - r[1])
                    names.append(r[0])
                    yield r

            if self.verify == "runs":
                self._feed_pooled_runs(
                    ranges(), names, processes, progress, (sizes, total), meanwhile=meanwhile
                )
                return
            self._feed_pooled(
                _check_range, ranges(), processes, progress, (sizes, total), meanwhile=meanwhile
            )
        elif processes > 1:  # a pipe or a device: the lines go to the workers
            tasks = _chunks(read_event_lines(paths), self._chunk_lines())
            self._feed_pooled(_check_chunk, tasks, processes, progress, meanwhile=meanwhile)
        else:
            if meanwhile is not None:
                meanwhile()
            for chunk in _chunks(read_event_lines(paths), self._chunk_lines()):
                taken = self._take_lines(chunk)
                if progress is not None:
                    progress(taken)

    def _take_lines(self, lines: Iterable[bytes | str]) -> int:
        """Check lines here (no pool) and take their events; how many events."""
        checked, verified = check_lines(lines, self.devices, verify=self.verify)
        self.stats.signatures += verified
        self.take_many(checked)
        return len(checked)

    def _feed_pooled(
        self,
        work: Callable[[_T], bytes],
        tasks: Iterable[_T],
        processes: int,
        progress: Callable[[int], object] | None = None,
        sizes: tuple[deque[int], int] | None = None,
        *,
        meanwhile: Callable[[], object] | None = None,
    ) -> None:
        """Checks in the pool, results taken here in task order (see :func:`_pooled`).

        The rid tables are built meanwhile (:class:`_TablesAhead`), once ``sizes`` (each
        task's bytes, queued as the tasks are made, and the total) says 5 % of the input
        is in; without ``sizes``, at the end.
        """
        global _POOL_DEVICES  # noqa: PLW0603 - handed to forked workers, read-only there
        _POOL_DEVICES = self.devices
        _POOL_VERIFY[0] = self.verify
        ahead = _TablesAhead(self.resolver)
        done = False
        read = 0
        try:
            # marshal: bytes our own forked workers wrote
            make, take, loads = _checked_of, self.take_many, marshal.loads
            stats = self.stats
            for blob in _pooled(work, tasks, processes, meanwhile):
                result, verified = loads(blob)
                stats.signatures += verified
                take(list(map(make, result)))
                ahead.see({c[6][1] for c in result if c[6] is not None})
                if sizes is not None:
                    read += sizes[0].popleft()
                    if read >= 0.05 * sizes[1]:
                        ahead.start()
                if progress is not None:
                    progress(len(result))
            done = True
        finally:
            _POOL_DEVICES = None
            ahead.finish(build=done)

    def _feed_pooled_runs(
        self,
        tasks: Iterable[_Range],
        names: deque[str],
        processes: int,
        progress: Callable[[int], object] | None,
        sizes: tuple[deque[int], int],
        *,
        meanwhile: Callable[[], object] | None = None,
    ) -> None:
        """``verify="runs"`` over whole files: runs are found over the whole input.

        The pool checks every record with its signature put off
        (:func:`_check_range_put_off`); this process keeps the verdicts and where each
        record is, decides with :func:`decide_runs` over all of them which signatures to
        verify (in the pool again, :func:`_verify_at`, the records read again from the
        files), and then takes the results in input order, as :meth:`_feed_pooled`
        does. A bus's run is not cut where a pool task ends, so the cost does not
        depend on the order of the lines.
        """
        global _POOL_DEVICES  # noqa: PLW0603 - handed to forked workers, read-only there
        _POOL_DEVICES = self.devices
        ahead = _TablesAhead(self.resolver)
        done = False
        read = 0
        batches: list[list[Checked]] = []
        nodes: dict[str, tuple[str, int, str]] = {}
        where: dict[str, _Where] = {}
        try:
            make, loads = _checked_of, marshal.loads
            for blob in _pooled(_check_range_put_off, tasks, processes, meanwhile):
                result, offsets, index = loads(blob)
                name = names.popleft()
                batch = list(map(make, result))
                batches.append(batch)
                for c, off, i in zip(batch, array("q", offsets), array("q", index), strict=True):
                    if c.reason is None and c.hash not in nodes:
                        nodes[c.hash] = (c.bus_id, c.seq, c.prev)
                        where[c.hash] = (name, off, i, c.hash)
                ahead.see({c[6][1] for c in result if c[6] is not None})
                read += sizes[0].popleft()
                if read >= 0.05 * sizes[1]:
                    ahead.start()
                if progress is not None:
                    progress(len(result))

            def verify(hashes: list[str]) -> set[str]:
                at = sorted(where[h] for h in hashes)
                tasks = (at[k : k + _VERIFY_PER_TASK] for k in range(0, len(at), _VERIFY_PER_TASK))
                return {h for blob in _pooled(_verify_at, tasks, processes) for h in loads(blob)}

            bad, verified = decide_runs(nodes, verify)
            self.stats.signatures += verified
            nodes.clear()
            where.clear()
            batches.reverse()
            while batches:  # each batch freed once taken
                taken = batches.pop()
                if bad:
                    taken = [_BAD if c.reason is None and c.hash in bad else c for c in taken]
                self.take_many(taken)
            done = True
        finally:
            _POOL_DEVICES = None
            ahead.finish(build=done)

    def feed_event(self, obj: object) -> None:
        """Feed one decoded event (its own signature verified: a run of one)."""
        c = check_event(obj, self.devices)
        self.stats.signatures += c.reason is None or c.reason == "bad_signature"
        self.take_many([c])

    def take(self, c: Checked) -> None:
        """:meth:`take_many` of one event."""
        self.take_many([c])

    def take_many(self, batch: Sequence[Checked]) -> None:
        """Chain, dedupe and keep events already checked on their own, in arrival order.

        The decisions are online ingest's (:class:`~backend._chain.ChainPlanner`, one per
        call, as one transaction), over this settler's in-memory store: every bus's
        chain position, stored hashes and held records. Held records are never dropped
        (no edge can re-send them), and no gap is timed; what waits behind a gap at the
        end is :meth:`flush_pending`'s. The outcome does not depend on how the events are
        split into calls.

        Raises:
            RuntimeError: after :meth:`flush_pending` (the settler is consumed).
        """
        if self._flushed:
            raise RuntimeError("the settler is consumed: events fed after its gaps were flushed")
        stats = self.stats
        stats.read += len(batch)
        good = []
        for c in batch:
            if c.reason is None:
                good.append(c)
            else:
                stats.rejected[c.reason] += 1
        if not good:
            return
        planner = self._planner()
        buses = self._buses
        for bus_id in dict.fromkeys([c.bus_id for c in good]):
            bus = buses.get(bus_id)
            if bus is None:
                bus = buses[bus_id] = _Bus()
            planner.open(bus_id, bus.position, bus.hashes, held=bus.held, held_above_head=True)
        planner.take_all(good)
        self._write(planner.finish())

    def _planner(self) -> ChainPlanner[Checked]:
        return ChainPlanner(verify=_verified_already, max_held=None, resend_after_s=None)

    def _write(self, plans: Iterable[BusPlan[Checked]]) -> None:
        """Write plans to the in-memory store (what a ledger's transaction does)."""
        stats = self.stats
        pending, rids, ivs = self._pending, self._pending_rids, self._pending_ivs
        for plan in plans:
            bus = self._buses[plan.bus_id]
            bus.position = plan.position
            put = bus.hashes.put
            for c in plan.store:
                put(c.seq, c.hash)
                if c.segment is None:
                    stats.missed += 1  # a verified link of the chain, never a ride
                else:
                    seg = c.segment
                    pending.append((plan.bus_id, c.seq, c.event_id, seg))
                    rids += seg.rid
                    ivs.append(seg.interval)
                    if invalid := seg.invalid:
                        self._evidence_invalid(plan.bus_id, c, invalid)
            stats.duplicates += plan.duplicates
            for r in plan.rejected:
                stats.rejected[r.reason] += 1

    def _evidence_invalid(self, bus_id: str, c: Checked, keys: tuple[str, ...]) -> None:
        """Count (``warnings``: ``evidence_invalid_<key>``) and log invalid evidence values.

        The log is rate-limited (``log_budget``), the count is not.

        A stored event's values read as absent because invalid: it settles without them.
        """
        warnings = self.stats.warnings
        for key in keys:
            warnings["evidence_invalid_" + key] += 1
        event = "segment_evidence_invalid"
        suppressed = self.log_budget.allow((event, ",".join(keys), bus_id), self._clock())
        if suppressed is None:
            return
        more = {"suppressed": suppressed} if suppressed else {}
        get_logger("backend.settle").warning(
            event, bus_id=bus_id, seq=c.seq, event_id=c.event_id, keys=list(keys), **more
        )

    def links(self) -> dict[str, list[tuple[int, int]]]:
        """Per bus, ``(seq, hash prefix)`` of every chain record stored so far.

        The hash prefix is the first 63 bits of the record's hash (``int(h[:16], 16) | 1``),
        for comparing with the ledger of online ingest.
        """
        return {
            b: [(seq, int(h[:16], 16) | 1) for seq, h in bus.hashes.items()]
            for b, bus in sorted(self._buses.items())
        }

    # ---------------------------------------------------------------- output

    def flush_pending(self) -> None:
        """Take what waits behind chain gaps that never filled (a warning per gap).

        The end of the input: no edge can re-send, so each bus's chain goes on from its
        lowest held seq (:meth:`~backend._chain.ChainPlanner.skip_gap`): ``chain_gap``
        counts the seqs skipped, ``chain_start_unverified`` a chain whose first records
        are not in the input (a slice of a longer chain: its first link cannot be
        checked here). Nothing can be fed afterwards.
        """
        if self._flushed:
            return
        self._flushed = True
        planner = self._planner()
        warnings = self.stats.warnings
        for bus_id in sorted(self._buses):
            bus = self._buses[bus_id]
            if not bus.held:
                continue
            plan = planner.open(
                bus_id, bus.position, bus.hashes, held=bus.held, held_above_head=True
            )
            while bus.held:
                started = bus.position.next_seq > 1 or plan.store
                skipped = planner.skip_gap(bus_id)
                if started:
                    warnings["chain_gap"] += skipped
                else:
                    warnings["chain_start_unverified"] += 1
        self._write(planner.finish())

    # ---------------------------------------------------------------- stage 3

    def _prepare(self) -> tuple[list[_Group], list[int], int]:
        """Flush chain gaps and resolve every pending segment.

        Every pending segment's rider: its interval, then the one before, then after
        (:meth:`~backend._resolve.Resolver.resolve_near_packed`: the order of
        :func:`segment_of`, in bulk; the tables of all the intervals are built in one
        pass, or were built while the events were checked).

        Returns:
            The riders' groups in output order (each rider's segments in the order they
            were accepted), the interval each pending segment's rid resolved in and how
            many did not resolve.
        """
        self.flush_pending()
        idx, found_iv = self.resolver.resolve_near_packed(
            self._pending_rids, np.frombuffer(self._pending_ivs, dtype=np.int64)
        )
        ok = np.flatnonzero(idx >= 0)
        unresolved = len(idx) - len(ok)
        groups: list[_Group] = []
        if ok.size:
            order = ok[np.argsort(idx[ok], kind="stable")]  # by rider, then accepted
            by_rider = idx[order]
            starts = np.flatnonzero(np.r_[True, by_rider[1:] != by_rider[:-1]]).tolist()
            ks = order.tolist()
            ring = self.resolver.keyring
            bounds = [*starts[1:], len(ks)]
            groups = sorted(
                (ring.rider_id(rider), rider, ks[a:b])
                for rider, a, b in zip(by_rider[starts].tolist(), starts, bounds, strict=True)
            )
        return groups, found_iv.tolist(), unresolved

    def _segments_of(self, group: _Group, found: Sequence[int]) -> tuple[list[Segment], list[str]]:
        """One rider's segments whose proofs hold, and the others' rejection reasons.

        :func:`~backend._resolve.proof_holds` decides (the rider's ``mac_key`` derived
        once); :func:`~backend._resolve.check_proof_with` names the reason of a refusal.
        """
        rider_id, idx, ks = group
        mac_key = self.resolver.keyring.mac_key(idx)
        pads = mac_pads(mac_key)
        slack = self.resolver.proof_slack_s
        pend = self._pending
        segments: list[Segment] = []
        rejected: list[str] = []
        for k in ks:
            bus_id, seq, event_id, f = pend[k]
            rid_interval = found[k]
            if not proof_holds(
                pads, f.proof_first, f.proof_last, rid_interval, f.rid, f.start_t, f.end_t, slack
            ):
                try:
                    check_proof_with(
                        mac_key,
                        f.proof_first,
                        f.proof_last,
                        rid_interval,
                        rid=f.rid,
                        start_t=f.start_t,
                        end_t=f.end_t,
                        slack_s=slack,
                    )
                except ProofRejected as exc:
                    rejected.append(exc.reason)
                    continue
            segments.append(
                Segment(
                    rider_id,
                    bus_id,
                    seq,
                    event_id,
                    f.interval,
                    f.route_id,
                    f.trip_id,
                    f.start_t,
                    f.start_stop_id,
                    f.start_cause,
                    f.end_t,
                    f.end_stop_id,
                    f.end_cause,
                    f.distance_m,
                    f.rssi_med,
                    f.n_adv,
                    f.co,
                    f.riders_lvl,
                )
            )
        return segments, rejected

    def _journeys_of(
        self, groups: Sequence[_Group], found: Sequence[int]
    ) -> Iterator[tuple[list[Journey], list[str], int]]:
        categories = self.categories or {}
        for group in groups:
            segments, rejected = self._segments_of(group, found)
            journeys: list[Journey] = []
            dropped = 0
            if segments:
                journeys, dropped = self.builder.build_rider_counted(
                    segments, categories.get(group[0])
                )
            # tentative segments not summed into a ride: counted, charge nobody
            rejected.extend(["tentative_dropped"] * dropped)
            yield journeys, rejected, len(segments) - dropped

    def _count(self, rejected: Iterable[str] | Mapping[str, int], accepted: int) -> None:
        self.stats.rejected.update(rejected)
        self.stats.accepted += accepted

    def segments(self) -> list[Segment]:
        """The segments accepted so far whose rids resolve and proofs hold, by rider.

        Does not count anything (the counts come with the journeys).
        """
        groups, found, _ = self._prepare()
        return [seg for g in groups for seg in self._segments_of(g, found)[0]]

    def iter_journeys(self) -> Iterator[Journey]:
        """Flush chain gaps, resolve, check proofs, build and price the journeys.

        Yields the journeys in output order (rider, first boarding, bus, journey id),
        one rider at a time. The settler is consumed: call it once.
        """
        groups, found, unresolved = self._prepare()
        if unresolved:
            self.reject("unresolved_rid", unresolved)
        for journeys, rejected, accepted in self._journeys_of(groups, found):
            self._count(rejected, accepted)
            yield from journeys
        self._clear_pending()

    def iter_journey_lines(self, *, processes: int = 1) -> Iterator[_Line]:
        """:meth:`iter_journeys` as written lines (:func:`journey_line`), in rider order.

        Each line is the journey's JSON (keys sorted, UTF-8), with its fare charged and
        whether it is held for review. With ``processes`` > 1 see
        :meth:`iter_journey_blocks`.
        """
        for text, flags in self.iter_journey_blocks(processes=processes):
            for line, flag in zip(text.split("\n"), flags, strict=False):
                yield line, bool(flag & 1), bool(flag & 2)

    def iter_journey_blocks(self, *, processes: int = 1) -> Iterator[tuple[str, bytes]]:
        """The journeys' lines in blocks: text (each line ends with a newline) and flags.

        One flag byte per line: bit 0 set when the journey is charged, bit 1 when it is
        held for review. With ``processes`` > 1 the riders' proof checks, journeys,
        prices and lines are made in worker processes (forked after the bulk
        resolution: they share it copy-on-write), blocks in rider order.
        """
        if processes <= 1:
            lines: list[str] = []
            flags = bytearray()
            for j in self.iter_journeys():
                line, charged, held = _as_line(j)
                lines.append(line + "\n")
                flags.append(charged | held << 1)
                if len(lines) >= 1024:
                    yield "".join(lines), bytes(flags)
                    lines, flags = [], bytearray()
            if lines:
                yield "".join(lines), bytes(flags)
            return
        groups, found, unresolved = self._prepare()
        if unresolved:
            self.reject("unresolved_rid", unresolved)
        global _POOL_SETTLER  # noqa: PLW0603 - handed to forked workers, read-only there
        _POOL_SETTLER = self
        _POOL_STAGE3[:] = [groups, found]
        try:
            tasks = (
                (a, min(len(groups), a + _RIDERS_PER_TASK))
                for a in range(0, len(groups), _RIDERS_PER_TASK)
            )
            for blob in _pooled(_lines_task, tasks, processes):
                text, flags_, rejected, accepted = marshal.loads(blob)  # noqa: S302 - our workers' bytes
                self._count(rejected, accepted)
                if text:
                    yield text, flags_
        finally:
            _POOL_SETTLER = None
            _POOL_STAGE3.clear()
        self._clear_pending()

    def finish(self) -> SettleResult:
        """Flush chain gaps, build and price every journey (kept in a list)."""
        return SettleResult(list(self.iter_journeys()), self.stats)


_POOL_STAGE3: list[Any] = []


def _lines_task(span: tuple[int, int]) -> bytes:
    """Worker: the journeys of riders ``span`` as one marshalled block.

    The block of :meth:`Settler.iter_journey_blocks`, with the rejection counts.
    """
    settler = _POOL_SETTLER
    assert settler is not None  # set before the pool forked
    groups, found = _POOL_STAGE3
    lines: list[str] = []
    flags = bytearray()
    rejected: Counter[str] = Counter()
    accepted = 0
    for journeys, rej, acc in settler._journeys_of(groups[span[0] : span[1]], found):
        for j in journeys:
            lines.append(journey_line(j) + "\n")
            flags.append(j.charged | ("review" in j.flags) << 1)
        if rej:
            rejected.update(rej)
        accepted += acc
    return marshal.dumps(("".join(lines), bytes(flags), dict(rejected), accepted))


def _as_line(j: Journey) -> _Line:
    return (journey_line(j), j.charged, "review" in j.flags)


_str = json.encoder.encode_basestring  # the C speedup when built
_JSON_CONST = {True: "true", False: "false", None: "null"}


def _json_str(x: str | None) -> str:
    return "null" if x is None else _str(x)


def _json_float(x: float) -> str:
    if not math.isfinite(x):
        return json.dumps(x)
    return float.__repr__(x)


def _json_strs(xs: Iterable[str]) -> str:
    return "[" + ", ".join([_str(x) for x in xs]) + "]"


def journey_line(j: Journey) -> str:
    """``json.dumps(j.to_json(), sort_keys=True, ensure_ascii=False)``, written directly.

    The keys in sorted order, Python's separators and number and string forms (a test
    holds the two equal); about four times faster, which counts when a day's journeys
    are written.
    """
    legs = []
    for leg in j.legs:
        legs.append(
            "{"
            f'"alight_stop_id": {_json_str(leg.alight_stop_id)}, '
            f'"alight_t": {_json_float(leg.alight_t)}, '
            f'"board_stop_id": {_json_str(leg.board_stop_id)}, '
            f'"board_t": {_json_float(leg.board_t)}, '
            f'"bus_id": {_str(leg.bus_id)}, '
            f'"distance_m": {_json_float(round(leg.distance_m, 1))}, '
            f'"distance_source": {_str(leg.distance_source)}, '
            f'"event_ids": {_json_strs(leg.event_ids)}, '
            f'"flags": {_json_strs(leg.flags)}, '
            f'"network_id": {_str(leg.network_id)}, '
            f'"route_id": {_json_str(leg.route_id)}, '
            f'"trip_id": {_json_str(leg.trip_id)}'
            "}"
        )
    quote = j.quote
    return (
        f'{{"category": {_str(j.category)}, '
        f'"charged": {_JSON_CONST[j.charged]}, '
        f'"fare_krw": {int.__repr__(j.fare_krw)}, '
        f'"flags": {_json_strs(j.flags)}, '
        f'"journey_id": {_str(j.journey_id)}, '
        f'"legs": [{", ".join(legs)}], '
        f'"rider_id": {_str(j.rider_id)}, '
        f'"ruleset_id": {_json_str(quote.ruleset_id if quote is not None else None)}}}'
    )


def read_event_lines(paths: Iterable[str | os.PathLike[str]]) -> Iterator[bytes]:
    """Yield the lines of event files (``-`` is not special; pass real paths)."""
    for path in paths:
        with open(path, "rb") as f:
            yield from f
