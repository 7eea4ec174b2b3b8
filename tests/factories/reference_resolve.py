r"""The resolver as it was before the numpy rid tables (5f8a42b), kept as the oracle.

tests/backend/test_resolve_equivalence.py checks that backend._resolve answers every
lookup and proof check exactly as this one does. Its original documentation follows.

Token resolution: from a segment's rid to the enrolled rider, and the proof checks.

The bus never learns who a rider is. The backend holds every enrolled rider's derived
keys (``rid_key``, ``mac_key``; computed once at enrolment or load) in a compact
:class:`RiderKeyring`, and precomputes for an interval ``i`` a lookup table
``rid (12 bytes) -> rider index`` (one AES-128 block per rider). :class:`Resolver` keeps
the tables of the intervals around now (``i-1 .. i+1``) and builds older ones on demand
(kept in a small LRU).

:meth:`Resolver.check_proof` then checks the segment's proof payloads: structure, the
payload's rid equals the segment's rid, ``rtag`` verifies under the rider's ``mac_key``
(a compromised bus can mint ``btag``\\ s with the fleet key, never ``rtag``\\ s), and the
token times in ``tq`` agree with the segment's start/end times and interval.

No I/O here: the callers (``settle``, the online settlement worker) feed it.
"""

from __future__ import annotations

import math
import struct
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from busbell._errors import BusbellError, TokenRejected
from busbell._token import (
    INTERVAL_S,
    RiderKeys,
    derive_rider_keys,
    interval_of,
    parse_payload,
    unwrap_tq,
    verify_rtag,
)

__all__ = [
    "DEFAULT_PROOF_SLACK_S",
    "ProofRejected",
    "ProofResult",
    "Resolver",
    "RidTable",
    "RiderKeyring",
]

DEFAULT_PROOF_SLACK_S = 120.0
"""How far (s) a proof's token time may lie outside the segment's ``[start.t, end.t]``."""

_RID_PREFIX = b"BBRID" + bytes(7)
_TQ_STEP_S = 4.0


class ProofRejected(BusbellError):
    """A segment's proof does not hold.

    Attributes:
        reason: ``unknown_rider``, ``malformed_proof``, ``rid_mismatch``, ``bad_rtag``,
            ``tq_mismatch`` or ``interval_mismatch``.
    """

    REASONS = (
        "unknown_rider",
        "malformed_proof",
        "rid_mismatch",
        "bad_rtag",
        "tq_mismatch",
        "interval_mismatch",
    )

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"proof rejected: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ProofResult:
    """A proof that holds: the token times of the first and last advertisements."""

    first_t: float
    last_t: float


class RiderKeyring:
    """The derived keys of every enrolled rider, stored compactly.

    Keys live in two contiguous byte buffers (16 bytes of ``rid_key`` and 32 of
    ``mac_key`` per rider) indexed by a dense rider index, so a million riders cost
    about 48 MB of keys plus the ids.
    """

    __slots__ = ("_ids", "_index", "_mac_keys", "_revoked", "_rid_keys")

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._rid_keys = bytearray()
        self._mac_keys = bytearray()
        self._revoked: set[int] = set()

    @classmethod
    def from_token_keys(cls, riders: Iterable[tuple[str, bytes]]) -> RiderKeyring:
        """Build a keyring from ``(rider_id, token_key)`` pairs (derives the keys)."""
        ring = cls()
        for rider_id, token_key in riders:
            ring.add(rider_id, token_key)
        return ring

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, rider_id: object) -> bool:
        return rider_id in self._index

    def add(self, rider_id: str, token_key: bytes) -> int:
        """Enrol a rider from the 16-byte ``token_key``; returns the rider index.

        Raises:
            ValueError: when the key is not 16 bytes or the rider is already present.
        """
        keys = derive_rider_keys(token_key)
        return self.add_derived(rider_id, keys.rid_key, keys.mac_key)

    def add_derived(self, rider_id: str, rid_key: bytes, mac_key: bytes) -> int:
        """Enrol a rider from already derived keys; returns the rider index.

        Raises:
            ValueError: on wrong key lengths or a rider id already present.
        """
        if len(rid_key) != 16 or len(mac_key) != 32:
            raise ValueError("rid_key must be 16 bytes and mac_key 32 bytes")
        if rider_id in self._index:
            raise ValueError(f"rider {rider_id!r} is already in the keyring")
        idx = len(self._ids)
        self._ids.append(rider_id)
        self._index[rider_id] = idx
        self._rid_keys += rid_key
        self._mac_keys += mac_key
        return idx

    def revoke(self, rider_id: str) -> bool:
        """Stop resolving a rider's rids; returns whether the rider was known."""
        idx = self._index.get(rider_id)
        if idx is None:
            return False
        self._revoked.add(idx)
        return True

    def is_revoked(self, idx: int) -> bool:
        """Whether the rider at ``idx`` is revoked."""
        return idx in self._revoked

    def index_of(self, rider_id: str) -> int | None:
        """The dense index of a rider, or ``None``."""
        return self._index.get(rider_id)

    def rider_id(self, idx: int) -> str:
        """The rider id at ``idx``."""
        return self._ids[idx]

    def keys(self, idx: int) -> RiderKeys:
        """The derived keys of the rider at ``idx``."""
        return RiderKeys(
            rid_key=bytes(self._rid_keys[16 * idx : 16 * idx + 16]),
            mac_key=bytes(self._mac_keys[32 * idx : 32 * idx + 32]),
        )

    def rid_key(self, idx: int) -> bytes:
        """The ``rid_key`` of the rider at ``idx``."""
        return bytes(self._rid_keys[16 * idx : 16 * idx + 16])

    def mac_key(self, idx: int) -> bytes:
        """The ``mac_key`` of the rider at ``idx``."""
        return bytes(self._mac_keys[32 * idx : 32 * idx + 32])

    def build_tables(self, intervals: Sequence[int], start: int = 0) -> list[RidTable]:
        """Compute the rid lookup tables of several intervals at once.

        One AES-128-ECB context per rider encrypts all the intervals' blocks in one call,
        which amortises the context set-up (the dominant cost).

        Args:
            intervals: the interval numbers.
            start: only riders with an index ``>= start`` (to extend existing tables).

        Returns:
            One table per interval, in the order given.
        """
        blocks = b"".join(_RID_PREFIX + (i & 0xFFFFFFFF).to_bytes(4, "big") for i in intervals)
        n = len(intervals)
        keys = bytes(self._rid_keys)
        aes = algorithms.AES
        ecb = modes.ECB()
        revoked = self._revoked
        riders = array(
            "I", (i for i in range(start, len(self._ids)) if not (revoked and i in revoked))
        )
        # The only per-rider Python work: one AES context encrypting every interval's
        # block. Unpacking, sorting and packing below run in C (struct, sorted, array).
        buf = b"".join(
            [
                Cipher(aes(keys[16 * i : 16 * i + 16]), ecb).encryptor().update(blocks)
                for i in riders
            ]
        )
        tables = []
        first, second = itemgetter(0), itemgetter(1)
        for k, interval in enumerate(intervals):
            rec = struct.Struct(f">{16 * k}xQI{16 * (n - k) - 12}x")
            prefixes = array("Q", map(first, rec.iter_unpack(buf)))
            tails = array("I", map(second, rec.iter_unpack(buf)))
            order = sorted(range(len(riders)), key=prefixes.__getitem__)
            tables.append(
                RidTable(
                    interval,
                    array("Q", map(prefixes.__getitem__, order)),
                    array("I", map(tails.__getitem__, order)),
                    array("I", map(riders.__getitem__, order)),
                )
            )
        return tables


class RidTable:
    """One interval's lookup from a rid to the rider indexes that broadcast it.

    Three flat arrays sorted together (the rid's first 8 bytes, its last 4, the rider
    index: 16 bytes per rider) searched by bisection, so a hit is exact and needs no
    AES; a small dict holds riders added after the table was built.
    """

    __slots__ = ("_extra", "_idx", "_prefix", "_tail", "interval")

    def __init__(
        self, interval: int, prefix: array[int], tail: array[int], idx: array[int]
    ) -> None:
        self.interval = interval
        self._prefix = prefix
        self._tail = tail
        self._idx = idx
        self._extra: dict[bytes, list[int]] = {}

    def __len__(self) -> int:
        return len(self._prefix) + sum(len(v) for v in self._extra.values())

    def nbytes(self) -> int:
        """Bytes held by the sorted arrays."""
        return sum(a.itemsize * len(a) for a in (self._prefix, self._tail, self._idx))

    def add(self, other: RidTable) -> None:
        """Merge a (small) table of newly enrolled riders into this one."""
        for prefix, tail, idx in zip(other._prefix, other._tail, other._idx, strict=True):
            rid = prefix.to_bytes(8, "big") + tail.to_bytes(4, "big")
            self._extra.setdefault(rid, []).append(idx)
        for rid, idxs in other._extra.items():
            self._extra.setdefault(rid, []).extend(idxs)

    def candidates(self, rid: bytes) -> list[int]:
        """Rider indexes whose rid in this interval is ``rid`` (almost always 0 or 1)."""
        key = int.from_bytes(rid[:8])
        tail = int.from_bytes(rid[8:12])
        prefixes = self._prefix
        pos = bisect_left(prefixes, key)
        out: list[int] = []
        while pos < len(prefixes) and prefixes[pos] == key:
            if self._tail[pos] == tail:
                out.append(self._idx[pos])
            pos += 1
        extra = self._extra.get(bytes(rid[:12]))
        if extra:
            out.extend(extra)
        return out


class Resolver:
    """Resolves rids to riders and checks segment proofs.

    Args:
        keyring: the enrolled riders' keys.
        cache_intervals: how many interval tables to keep (least recently used go).
        proof_slack_s: how far a proof's token time may lie outside the segment's times.
        prefetch: on a miss, also build the tables of up to this many intervals on
            each side in the same pass (one AES context per rider for all of them).
    """

    def __init__(
        self,
        keyring: RiderKeyring,
        *,
        cache_intervals: int = 8,
        proof_slack_s: float = DEFAULT_PROOF_SLACK_S,
        prefetch: int = 0,
    ) -> None:
        self.keyring = keyring
        self.proof_slack_s = proof_slack_s
        self.prefetch = max(0, prefetch)
        self._cache_size = max(3, cache_intervals)
        self._tables: OrderedDict[int, RidTable] = OrderedDict()
        self._built_upto: dict[int, int] = {}
        self.tables_built = 0

    def prepare(self, now_t: float) -> None:
        """Precompute the tables of intervals ``i-1 .. i+1`` around UNIX time ``now_t``."""
        i = interval_of(now_t)
        missing = [k for k in (i - 1, i, i + 1) if k not in self._tables]
        if missing:
            for k, table in zip(missing, self.keyring.build_tables(missing), strict=True):
                self._store(k, table)
        for k in (i - 1, i, i + 1):
            self._tables.move_to_end(k)

    def _store(self, interval: int, table: RidTable) -> None:
        self._tables[interval] = table
        self._built_upto[interval] = len(self.keyring)
        self.tables_built += 1
        while len(self._tables) > self._cache_size:
            old, _ = self._tables.popitem(last=False)
            self._built_upto.pop(old, None)

    def table(self, interval: int) -> RidTable:
        """The rid lookup table of ``interval`` (built on demand, cached).

        Riders enrolled since the table was built are added to it first.
        """
        table = self._tables.get(interval)
        if table is None:
            w = min(self.prefetch, (self._cache_size - 1) // 2)
            wanted = [interval] + [
                k
                for k in range(interval - w, interval + w + 1)
                if k != interval and k >= 0 and k not in self._tables
            ]
            built = self.keyring.build_tables(wanted)
            for k, t in reversed(list(zip(wanted, built, strict=True))):
                self._store(k, t)  # the asked-for interval last: most recently used
            return built[0]
        self._tables.move_to_end(interval)
        upto = self._built_upto[interval]
        if upto < len(self.keyring):
            (extra,) = self.keyring.build_tables([interval], start=upto)
            table.add(extra)
            self._built_upto[interval] = len(self.keyring)
        return table

    def resolve_index(self, rid: str | bytes, interval: int) -> int | None:
        """The rider index whose rid in ``interval`` is ``rid``, or ``None``."""
        raw = _rid_bytes(rid)
        if raw is None:
            return None
        ring = self.keyring
        for idx in self.table(interval).candidates(raw):
            if not ring.is_revoked(idx):
                return idx
        return None

    def resolve(self, rid: str | bytes, interval: int) -> str | None:
        """The rider id whose rid in ``interval`` is ``rid`` (hex or bytes), or ``None``."""
        idx = self.resolve_index(rid, interval)
        return None if idx is None else self.keyring.rider_id(idx)

    def check_proof(
        self,
        rider: str | int,
        proof_first: str,
        proof_last: str,
        interval: int,
        *,
        rid: str | None = None,
        start_t: float | None = None,
        end_t: float | None = None,
    ) -> ProofResult:
        """Check a segment's proof payloads for a resolved rider.

        Args:
            rider: the rider id or index.
            proof_first: hex payload of the segment's first accepted advertisement.
            proof_last: hex payload of its last one.
            interval: the segment's interval.
            rid: the segment's rid (hex); each payload's rid must equal it.
            start_t: the segment's start time (bus time).
            end_t: the segment's end time (bus time).

        Returns:
            The token times of both payloads.

        Raises:
            ProofRejected: with the reason.
        """
        idx = rider if isinstance(rider, int) else self.keyring.index_of(rider)
        if idx is None or not 0 <= idx < len(self.keyring):
            raise ProofRejected("unknown_rider", str(rider))
        mac_key = self.keyring.mac_key(idx)
        ref_first = start_t if start_t is not None else (interval + 0.5) * INTERVAL_S
        ref_last = end_t if end_t is not None else ref_first
        times: list[float] = []
        for name, text, ref in (("first", proof_first, ref_first), ("last", proof_last, ref_last)):
            try:
                payload = parse_payload(bytes.fromhex(text))
            except (ValueError, TokenRejected) as exc:
                raise ProofRejected("malformed_proof", f"proof.{name}: {exc}") from None
            if rid is not None and payload.rid.hex() != rid:
                raise ProofRejected("rid_mismatch", f"proof.{name} carries another rid")
            if not verify_rtag(payload, mac_key):
                raise ProofRejected("bad_rtag", f"proof.{name}")
            token_t = unwrap_tq(payload.tq, ref)
            if math.floor(token_t / INTERVAL_S) != interval:
                raise ProofRejected(
                    "interval_mismatch", f"proof.{name} token time {token_t:.0f} not in {interval}"
                )
            times.append(token_t)
        first_t, last_t = times
        slack = self.proof_slack_s
        lo = (start_t if start_t is not None else first_t) - slack
        hi = (end_t if end_t is not None else last_t) + slack
        if not (lo <= first_t <= hi and lo <= last_t <= hi) or last_t + _TQ_STEP_S < first_t:
            raise ProofRejected(
                "tq_mismatch",
                f"token times {first_t:.0f}..{last_t:.0f} vs segment {start_t}..{end_t}",
            )
        return ProofResult(first_t, last_t)

    def enrolled(self, rider_id: str, token_key: bytes) -> int:
        """Add a newly enrolled rider; cached tables pick them up on next use."""
        return self.keyring.add(rider_id, token_key)

    def revoke(self, rider_id: str) -> bool:
        """Revoke a rider: their rids no longer resolve."""
        return self.keyring.revoke(rider_id)


def _rid_bytes(rid: str | bytes) -> bytes | None:
    if isinstance(rid, bytes):
        return rid if len(rid) == 12 else None
    if len(rid) != 24:
        return None
    try:
        return bytes.fromhex(rid)
    except ValueError:
        return None
