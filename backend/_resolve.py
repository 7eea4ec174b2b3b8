r"""Token resolution: from a segment's rid to the enrolled rider, and the proof checks.

The bus never learns who a rider is. The backend holds every enrolled rider's
``token_key`` and derived ``rid_key`` (the ``mac_key`` is derived per proof check) in a
compact :class:`RiderKeyring` (flat byte buffers, no Python object per rider: about 57
bytes per rider with an id of the rider API's form, so 10 million riders take about 570
MB), and precomputes for an interval ``i`` a lookup table ``rid -> rider index``
(:class:`~backend._ridtable.RidTable`: the rids' first 8 bytes and the rider indexes in
sorted numpy arrays, 12 bytes per rider; the rest of a matching rid is checked against
the candidate's key) with a vectorised AES over every rider
(:func:`~backend._ridtable.rid_words`), split over worker processes when the keyring is
large. :class:`Resolver` keeps the tables of the intervals around now (``i-1 .. i+1``),
builds the next one in the background before it starts (:meth:`Resolver.prepare_ahead`),
builds older ones on demand (kept in a small LRU), and resolves rids one at a time or in
bulk (:meth:`Resolver.resolve_many`, :meth:`Resolver.resolve_near`).

:meth:`Resolver.check_proof` then checks the segment's proof payloads: structure, the
payload's rid equals the segment's rid, ``rtag`` verifies under the rider's ``mac_key``
(a compromised bus can mint ``btag``\\ s with the fleet key, never ``rtag``\\ s), and the
token times in ``tq`` agree with the segment's start/end times and interval.

No I/O here: the callers (``settle``, the online settlement worker) feed it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from backend._ridtable import (
    NEEDS_SCAN,
    NOT_FOUND,
    RidTable,
    rid_prefixes_of,
    rid_words,
    rids_to_arrays,
)
from busbell._errors import BusbellError
from busbell._token import (
    INTERVAL_S,
    PAYLOAD_LEN,
    TOKEN_VERSION,
    RiderKeys,
    interval_of,
    rid_for_interval,
    unwrap_tq,
)

__all__ = [
    "DEFAULT_PROOF_SLACK_S",
    "ONLINE_TABLE_BYTES",
    "ProofRejected",
    "ProofResult",
    "Resolver",
    "RidTable",
    "RiderKeyring",
    "TableBuilder",
    "check_proof_with",
    "derive_keys_fast",
    "derive_rid_keys",
    "mac_pads",
    "proof_holds",
]

DEFAULT_PROOF_SLACK_S = 120.0
"""How far (s) a proof's token time may lie outside the segment's ``[start.t, end.t]``."""

ONLINE_TABLE_BYTES = 360 << 20
"""The online settlement worker's budget for cached tables: the three of 10 million
riders it needs (i-1..i+1, 114 MiB each without tails); a fourth is built only to
replace one."""

_TQ_STEP_S = 4.0
_RESERVED_FLAG_BITS = 0b11000
_HASH_MASK = (1 << 32) - 1
_R = TypeVar("_R")


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


class _RiderIds:
    """Rider ids by dense index, compactly: one byte blob, end offsets, a hash index.

    An id of the rider API's form (``r-`` and 24 lowercase hex digits) is stored as a
    0xFF byte (never in UTF-8) and its 12 raw bytes; any other id as its UTF-8 bytes.
    End offsets are 32-bit while the blob is under 4 GiB. The index from an id to its
    rider index is two sorted numpy arrays (the ids' 32-bit hashes and the indexes; an
    equal hash is told apart by comparing the ids) over the ids up to ``_indexed``, plus
    a dict for the ids added since, merged in when it grows (amortised: a merge sorts,
    at most once per eighth of the keyring). Hashes are Python's ``hash`` (per process:
    never pickled). An id may appear more than once (a re-keyed rider): :meth:`find`
    returns its newest index.
    """

    __slots__ = ("_blob", "_ends", "_indexed", "_recent", "_sorted_h", "_sorted_i")

    def __init__(self) -> None:
        self._blob = bytearray()
        self._ends = array("I")
        self._sorted_h = np.empty(0, dtype=np.uint32)
        self._sorted_i = np.empty(0, dtype=np.uint32)
        self._indexed = 0
        self._recent: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ends)

    def get(self, idx: int) -> str:
        start = self._ends[idx - 1] if idx else 0
        return _decode_id(self._blob[start : self._ends[idx]])

    def find(self, rider_id: str) -> int | None:
        idx = self._recent.get(rider_id)
        if idx is not None:
            return idx  # newer than any indexed one
        sorted_h = self._sorted_h
        h = np.uint32(hash(rider_id) & _HASH_MASK)
        pos = int(np.searchsorted(sorted_h, h))
        found = None
        while pos < len(sorted_h) and sorted_h[pos] == h:
            cand = int(self._sorted_i[pos])
            if (found is None or cand > found) and self.get(cand) == rider_id:
                found = cand
            pos += 1
        return found

    def find_many(self, rider_ids: Sequence[str]) -> list[int | None]:
        """:meth:`find` of many ids at once.

        One vectorised search of the sorted index: ids with no hash match (new riders
        being loaded) cost no search in Python.
        """
        recent = self._recent
        out: list[int | None] = [recent.get(r) for r in rider_ids]
        sorted_h = self._sorted_h
        if not len(sorted_h) or not rider_ids:
            return out
        h = np.fromiter(
            (hash(r) & _HASH_MASK for r in rider_ids), dtype=np.uint32, count=len(rider_ids)
        )
        pos = np.minimum(np.searchsorted(sorted_h, h), len(sorted_h) - 1)
        for k in np.flatnonzero(sorted_h[pos] == h).tolist():
            if out[k] is None:
                out[k] = self.find(rider_ids[k])
        return out

    def _grow(self, extra: int) -> None:
        if self._ends.typecode == "I" and len(self._blob) + extra >= 1 << 32:
            self._ends = array("Q", self._ends)  # pragma: no cover - a 4 GiB id blob

    def append(self, rider_id: str) -> int:
        idx = len(self._ends)
        enc = _encode_id(rider_id)
        self._grow(len(enc))
        self._blob += enc
        self._ends.append(len(self._blob))
        self._recent[rider_id] = idx
        if len(self._recent) >= max(1 << 16, idx >> 3):
            self.reindex()
        return idx

    def reindex(self) -> None:
        """Merge the recently added ids into the sorted hash index."""
        if self._recent:
            self._merge(
                np.fromiter(
                    (hash(r) & _HASH_MASK for r in self._recent),
                    dtype=np.uint32,
                    count=len(self._recent),
                ),
                np.fromiter(self._recent.values(), dtype=np.uint32, count=len(self._recent)),
            )
            self._recent = {}
        self._indexed = len(self._ends)

    def _merge(self, new_h: npt.NDArray[np.uint32], new_i: npt.NDArray[np.uint32]) -> None:
        order = np.argsort(new_h, kind="stable")
        new_h, new_i = new_h[order], new_i[order]
        del order
        old_h, old_i = self._sorted_h, self._sorted_i
        # linear merge of two sorted runs: each new hash goes after the old ones <= it
        at = np.searchsorted(old_h, new_h, side="right") + np.arange(len(new_h))
        mask = np.zeros(len(old_h) + len(new_h), dtype=bool)
        mask[at] = True
        del at
        merged_h = np.empty(len(mask), dtype=np.uint32)
        merged_h[mask], merged_h[~mask] = new_h, old_h
        self._sorted_h = merged_h
        del old_h
        merged_i = np.empty(len(mask), dtype=np.uint32)
        merged_i[mask], merged_i[~mask] = new_i, old_i
        self._sorted_i = merged_i

    def extend(self, rider_ids: Sequence[str]) -> int:
        """Append many ids at once (bulk load); returns the index of the first.

        Raises:
            ValueError: when an id is already present or given twice (nothing added).
        """
        self.reindex()
        base = len(self._ends)
        n = len(rider_ids)
        new_h = np.fromiter((hash(r) & _HASH_MASK for r in rider_ids), dtype=np.uint32, count=n)
        # ids sharing a hash with another new id or an indexed one: compare the ids
        sorted_new = np.sort(new_h)
        clash = set(sorted_new[1:][sorted_new[1:] == sorted_new[:-1]].tolist())
        del sorted_new
        if len(self._sorted_h):
            pos = np.minimum(np.searchsorted(self._sorted_h, new_h), len(self._sorted_h) - 1)
            clash.update(new_h[self._sorted_h[pos] == new_h].tolist())
            del pos
        if clash:
            seen: set[str] = set()
            for r, h in zip(rider_ids, new_h.tolist(), strict=True):
                if h in clash:
                    if r in seen or self.find(r) is not None:
                        raise ValueError(f"rider {r!r} is already in the keyring")
                    seen.add(r)
        encoded = [_encode_id(r) for r in rider_ids]
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.uint64, count=n)
        ends = np.cumsum(lengths) + np.uint64(len(self._blob))
        self._grow(int(lengths.sum()))
        self._blob += b"".join(encoded)
        del encoded
        self._ends.frombytes(ends.astype(self._ends.typecode).tobytes())
        self._merge(new_h, np.arange(base, base + n, dtype=np.uint32))
        self._indexed = len(self._ends)
        return base

    def nbytes(self) -> int:
        return (
            len(self._blob)
            + self._ends.itemsize * len(self._ends)
            + int(self._sorted_h.nbytes + self._sorted_i.nbytes)
        )


_PACKED_ID = 0xFF  # first byte of a packed id; never in UTF-8


def _encode_id(rider_id: str) -> bytes:
    if len(rider_id) == 26 and rider_id.startswith("r-") and rider_id == rider_id.lower():
        try:
            raw = bytes.fromhex(rider_id[2:])
        except ValueError:
            raw = b""
        if len(raw) == 12:
            return b"\xff" + raw
    return rider_id.encode()


def _decode_id(raw: bytes | bytearray) -> str:
    if raw and raw[0] == _PACKED_ID:
        return "r-" + raw[1:].hex()
    return raw.decode()


_RID_INFO = b"busbell-rid-v1\x01"
_MAC_INFO = b"busbell-mac-v1\x01"
# HMAC-SHA256 (RFC 2104) written out on hashlib, which is two to three times faster than
# ``hmac.digest`` here (OpenSSL 3 sets up an HMAC context per call). A 32-byte key is
# padded to the 64-byte block with zeros, so its XOR with ipad/opad is the key's bytes
# mapped through a table, then 32 bytes of the pad itself.
_X36 = bytes(b ^ 0x36 for b in range(256))
_X5C = bytes(b ^ 0x5C for b in range(256))
_PAD36 = b"\x36" * 32
_PAD5C = b"\x5c" * 32
# HKDF-Extract with salt=None (RFC 5869: HashLen zero bytes): the inner and outer hash
# states after the padded salt, the same for every rider
_EXTRACT_IN = hashlib.sha256(bytes(32).translate(_X36) + _PAD36)
_EXTRACT_OUT = hashlib.sha256(bytes(32).translate(_X5C) + _PAD5C)


def _prk(token_key: bytes | bytearray) -> bytes:
    inner = _EXTRACT_IN.copy()
    inner.update(token_key)
    outer = _EXTRACT_OUT.copy()
    outer.update(inner.digest())
    return outer.digest()


def _expand(prk: bytes, info: bytes) -> bytes:
    """HKDF-Expand's first block: HMAC-SHA256(prk, info + 0x01) for a 32-byte prk."""
    sha = hashlib.sha256
    return sha(
        prk.translate(_X5C) + _PAD5C + sha(prk.translate(_X36) + _PAD36 + info).digest()
    ).digest()


def derive_keys_fast(token_key: bytes) -> tuple[bytes, bytes]:
    """:func:`busbell.derive_rider_keys` (HKDF-SHA256) written out on hashlib.

    RFC 5869: one extract shared by both keys, one expand block each (16 and 32 bytes
    fit in one SHA-256 block). A tenth of the cost of two ``cryptography`` HKDF
    objects, which matters when loading millions of riders; a test holds it equal.

    Raises:
        ValueError: if ``token_key`` is not 16 bytes.
    """
    if len(token_key) != 16:
        raise ValueError(f"token_key must be 16 bytes, got {len(token_key)}")
    prk = _prk(token_key)
    return _expand(prk, _RID_INFO)[:16], _expand(prk, _MAC_INFO)


def derive_rid_keys(token_keys: bytes | bytearray) -> bytes:
    """The ``rid_key`` of each of many 16-byte token keys (concatenated in, and out).

    The task a worker process runs when a large keyring is loaded (about 2 us a rider).

    Raises:
        ValueError: if the length is not a multiple of 16.
    """
    if len(token_keys) % 16:
        raise ValueError("token keys are 16 bytes each")
    prk, expand, info = _prk, _expand, _RID_INFO
    return b"".join(
        [expand(prk(token_keys[k : k + 16]), info)[:16] for k in range(0, len(token_keys), 16)]
    )


def _mac_key(token_key: bytes) -> bytes:
    return _expand(_prk(token_key), _MAC_INFO)


class RiderKeyring:
    """The keys of every enrolled rider, stored compactly.

    Per rider, by a dense rider index: the 16-byte ``token_key`` and the ``rid_key``
    derived from it (the tables need every rider's; two contiguous byte buffers), and
    the id (see :class:`_RiderIds`), with no Python object per rider. The ``mac_key``
    is derived when a proof is checked (two HMACs) rather than stored: 32 bytes per
    rider saved. 10 million riders with the rider API's ids take about 590 MB.

    A re-keyed rider (:meth:`rekey`) gets a new index; the old one never resolves again.
    """

    __slots__ = ("_dead", "_dead_array", "_ids", "_rid_keys", "_token_keys")

    def __init__(self) -> None:
        self._ids = _RiderIds()
        self._token_keys = bytearray()
        self._rid_keys = bytearray()
        self._dead: set[int] = set()
        self._dead_array: npt.NDArray[np.int64] | None = None

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
        return isinstance(rider_id, str) and self._ids.find(rider_id) is not None

    def add(self, rider_id: str, token_key: bytes) -> int:
        """Enrol a rider from the 16-byte ``token_key``; returns the rider index.

        Raises:
            ValueError: when the key is not 16 bytes or the rider is already present.
        """
        if len(token_key) != 16:
            raise ValueError(f"token_key must be 16 bytes, got {len(token_key)}")
        if self._ids.find(rider_id) is not None:
            raise ValueError(f"rider {rider_id!r} is already in the keyring")
        return self._append(rider_id, token_key)

    def _append(self, rider_id: str, token_key: bytes) -> int:
        rid_key = derive_rid_keys(token_key)
        idx = self._ids.append(rider_id)
        self._token_keys += token_key
        self._rid_keys += rid_key
        return idx

    def extend(
        self,
        rider_ids: Sequence[str],
        token_keys: bytes | bytearray,
        *,
        builder: TableBuilder | None = None,
    ) -> int:
        """Enrol many riders at once (bulk load); returns the first index.

        Args:
            rider_ids: the ids.
            token_keys: their 16-byte token keys, concatenated in the same order.
            builder: derives the ``rid_key`` values (in worker processes when it has them:
                two HMACs a rider, about 5 us).

        Raises:
            ValueError: on wrong key lengths or an id already present (nothing added).
        """
        if len(token_keys) != 16 * len(rider_ids):
            raise ValueError("token keys must be 16 bytes per rider")
        rid_keys = (builder or _INLINE).derive_rid_keys(token_keys)
        first = self._ids.extend(rider_ids)
        self._token_keys += token_keys
        self._rid_keys += rid_keys
        return first

    def rekey(self, rider_id: str, token_key: bytes) -> int:
        """Give an enrolled rider a new ``token_key`` (or enrol them); returns the index.

        The rider gets a new index (the tables pick it up like a new enrolment); the old
        index is retired: its rids never resolve again. The same key changes nothing.

        Raises:
            ValueError: when the key is not 16 bytes.
        """
        if len(token_key) != 16:
            raise ValueError(f"token_key must be 16 bytes, got {len(token_key)}")
        old = self._ids.find(rider_id)
        if old is not None and self.token_key(old) == token_key:
            return old
        idx = self._append(rider_id, token_key)
        if old is not None:
            self._retire(old)
        return idx

    def _retire(self, idx: int) -> None:
        self._dead.add(idx)
        self._dead_array = None

    def revoke(self, rider_id: str) -> bool:
        """Stop resolving a rider's rids; returns whether the rider was known."""
        idx = self._ids.find(rider_id)
        if idx is None:
            return False
        self._retire(idx)
        return True

    def is_revoked(self, idx: int) -> bool:
        """Whether the rider at ``idx`` is revoked (or re-keyed since: a retired index)."""
        return idx in self._dead

    @property
    def revoked(self) -> frozenset[int]:
        """The indexes that never resolve (revoked riders, keys replaced by :meth:`rekey`)."""
        return frozenset(self._dead)

    def revoked_array(self) -> npt.NDArray[np.int64]:
        """:attr:`revoked` as a sorted array (cached until the next change)."""
        if self._dead_array is None:
            self._dead_array = np.array(sorted(self._dead), dtype=np.int64)
        return self._dead_array

    def index_of(self, rider_id: str) -> int | None:
        """The dense index of a rider (the newest, if re-keyed), or ``None``."""
        return self._ids.find(rider_id)

    def index_of_many(self, rider_ids: Sequence[str]) -> list[int | None]:
        """:meth:`index_of` of many ids at once."""
        return self._ids.find_many(rider_ids)

    def rider_id(self, idx: int) -> str:
        """The rider id at ``idx``."""
        if not 0 <= idx < len(self._ids):
            raise IndexError(idx)
        return self._ids.get(idx)

    def keys(self, idx: int) -> RiderKeys:
        """The derived keys of the rider at ``idx``."""
        return RiderKeys(rid_key=self.rid_key(idx), mac_key=self.mac_key(idx))

    def token_key(self, idx: int) -> bytes:
        """The ``token_key`` of the rider at ``idx``."""
        return bytes(self._token_keys[16 * idx : 16 * idx + 16])

    def rid_key(self, idx: int) -> bytes:
        """The ``rid_key`` of the rider at ``idx``."""
        return bytes(self._rid_keys[16 * idx : 16 * idx + 16])

    def mac_key(self, idx: int) -> bytes:
        """The ``mac_key`` of the rider at ``idx`` (derived: two HMACs)."""
        if not 0 <= idx < len(self._ids):
            raise IndexError(idx)
        return _mac_key(self.token_key(idx))

    def nbytes(self) -> int:
        """Bytes held by the keys and ids (not counting Python object headers)."""
        return sum(self.memory().values())

    def memory(self) -> dict[str, int]:
        """Bytes held, by part.

        ``keys``: token and rid keys; ``ids``: the id bytes and their end offsets;
        ``id_index``: the sorted hash index.
        """
        ids = self._ids
        index = int(ids._sorted_h.nbytes + ids._sorted_i.nbytes)
        return {
            "keys": len(self._token_keys) + len(self._rid_keys),
            "ids": ids.nbytes() - index,
            "id_index": index,
        }

    def build_tables(
        self,
        intervals: Sequence[int],
        start: int = 0,
        *,
        builder: TableBuilder | None = None,
        tails: bool = True,
    ) -> list[RidTable]:
        """Compute the rid lookup tables of several intervals at once.

        The AES key schedule of each rider is computed once for all the intervals
        (:func:`~backend._ridtable.rid_words`). Revoked riders stay in the tables
        (lookups skip them), so a revocation never rebuilds one.

        Args:
            intervals: the interval numbers.
            start: only riders with an index ``>= start`` (to extend existing tables).
            builder: computes the rids (in worker processes when it has them).
            tails: keep the rids' last 4 bytes (16 bytes per rider; without, 12, and a
                lookup checks a candidate's rid with AES).

        Returns:
            One table per interval, in the order given.
        """
        n = len(self)
        start = min(max(0, start), n)
        chunks = (builder or _INLINE).rid_prefixes(self._rid_keys, start, n, intervals, tails)
        if len(intervals) == 1:  # each chunk freed once placed in the table
            rows = [(off, p[0], None if t is None else t[0]) for off, p, t in chunks]
            del chunks
            return [RidTable.from_chunks(intervals[0], rows, start)]
        return [
            RidTable.from_chunks(
                k, [(off, p[j], None if t is None else t[j]) for off, p, t in chunks], start
            )
            for j, k in enumerate(intervals)
        ]

    def rid_key_rows(self, idx: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
        """The ``rid_key`` of each rider index, as ``(len(idx), 16)`` bytes (a copy)."""
        view = np.frombuffer(self._rid_keys, dtype=np.uint8).reshape(-1, 16)
        try:
            return view[idx]
        finally:
            del view  # the buffer export ends here: the keyring may grow again


class TableBuilder:
    """Computes riders' rids for tables, in this process or split over worker processes.

    Args:
        processes: worker processes (``0``: the CPU count; ``1``: compute in the caller).
        parallel_min_riders: fewer riders than this are computed in the caller (a
            worker round trip is not worth it).
        chunk_riders: riders per task sent to a worker.
    """

    def __init__(
        self,
        processes: int = 1,
        *,
        parallel_min_riders: int = 200_000,
        chunk_riders: int = 500_000,
    ) -> None:
        self.processes = processes if processes > 0 else (os.cpu_count() or 1)
        self.parallel_min_riders = parallel_min_riders
        self.chunk_riders = max(1, chunk_riders)
        self._pool: Executor | None = None

    def _executor(self) -> Executor:
        if self._pool is None:
            import multiprocessing

            # spawn: the callers are asyncio services with threads; forking them is unsafe
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.processes, mp_context=ctx)
        return self._pool

    def rid_prefixes(
        self, keys: bytearray, start: int, end: int, intervals: Sequence[int], tails: bool
    ) -> list[tuple[int, npt.NDArray[np.uint64], npt.NDArray[np.uint32] | None]]:
        """The first 8 bytes of the rids of riders ``start..end``, chunk by chunk.

        See :func:`~backend._ridtable.rid_prefixes_of`.

        Args:
            keys: every rider's ``rid_key``, 16 bytes each (read, never kept).
            start: first rider index.
            end: one past the last.
            intervals: the intervals.
            tails: also the rids' last 4 bytes.

        Returns:
            ``(offset from start, prefixes, tails or None)`` per chunk of riders
            (``(len(intervals), chunk)`` arrays), in rider order.
        """
        n = end - start
        ivs = tuple(intervals)
        if self.processes <= 1 or n < self.parallel_min_riders:
            return [
                (
                    a - start,
                    *rid_prefixes_of(
                        keys[16 * a : 16 * min(end, a + self.chunk_riders)], ivs, tails
                    ),
                )
                for a in range(start, end, self.chunk_riders)
            ]
        step = min(self.chunk_riders, -(-n // self.processes))
        # a bytearray slice is a copy (the keyring may grow meanwhile); a bounded number
        # in flight bounds the memory
        return [
            (off, p, t)
            for off, (p, t) in self._map(rid_prefixes_of, keys, start, end, step, args=(ivs, tails))
        ]

    def derive_rid_keys(self, token_keys: bytes | bytearray) -> bytes:
        """:func:`derive_rid_keys` of many token keys, over the worker processes if any."""
        n = len(token_keys) // 16
        if self.processes <= 1 or n < self.parallel_min_riders // 4:
            return derive_rid_keys(token_keys)
        step = min(self.chunk_riders, -(-n // self.processes))
        return b"".join(
            out for _, out in self._map(derive_rid_keys, token_keys, 0, n, step, args=())
        )

    def _map(
        self,
        fn: Callable[..., _R],
        keys: bytes | bytearray,
        start: int,
        end: int,
        step: int,
        *,
        args: tuple[object, ...],
    ) -> list[tuple[int, _R]]:
        """``fn(keys of riders a..b, *args)`` per chunk, in the workers; in rider order.

        A worker process that died (killed) breaks the pool: this call raises
        ``BrokenProcessPool`` and the pool is dropped, so the next call starts a new one.
        """
        pool = self._executor()
        out: list[tuple[int, _R]] = []
        pending: deque[tuple[int, Future[_R]]] = deque()
        try:
            for a in range(start, end, step):
                b = min(end, a + step)
                pending.append((a - start, pool.submit(fn, bytes(keys[16 * a : 16 * b]), *args)))
                if len(pending) > 2 * self.processes:
                    off, fut = pending.popleft()
                    out.append((off, fut.result()))
            while pending:
                off, fut = pending.popleft()
                out.append((off, fut.result()))
        except BrokenProcessPool:
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise
        return out

    def close(self) -> None:
        """Stop the worker processes (if any were started)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


_INLINE = TableBuilder(1)


class Resolver:
    """Resolves rids to riders and checks segment proofs.

    Args:
        keyring: the enrolled riders' keys.
        cache_intervals: how many interval tables to keep (least recently used go).
        proof_slack_s: how far a proof's token time may lie outside the segment's times.
        prefetch: on a miss, also build the tables of up to this many intervals on
            each side in the same pass (one key schedule per rider for all of them).
        builder: computes rids for the tables (worker processes for large keyrings);
            default: in this process.
        max_table_bytes: besides ``cache_intervals``, the least recently used tables go
            while the cached ones hold more than this (never fewer than three kept);
            ``None``: no limit. 10 million riders take 153 MiB per table with tails,
            114 MiB without.
        table_tails: tables keep the rids' last 4 bytes (16 bytes per rider); without
            them (12 bytes), a bulk lookup checks each candidate's rid with the
            vectorised AES (about 1 µs more per rid).
    """

    def __init__(
        self,
        keyring: RiderKeyring,
        *,
        cache_intervals: int = 8,
        proof_slack_s: float = DEFAULT_PROOF_SLACK_S,
        prefetch: int = 0,
        builder: TableBuilder | None = None,
        max_table_bytes: int | None = None,
        table_tails: bool = True,
    ) -> None:
        self.keyring = keyring
        self.max_table_bytes = max_table_bytes
        self.table_tails = table_tails
        self.proof_slack_s = proof_slack_s
        self.prefetch = max(0, prefetch)
        self.builder = builder or _INLINE
        self._cache_size = max(3, cache_intervals)
        self._tables: OrderedDict[int, RidTable] = OrderedDict()
        self._built_upto: dict[int, int] = {}
        self._ahead: dict[int, Future[tuple[int, RidTable]]] = {}
        self._background: ThreadPoolExecutor | None = None
        self.tables_built = 0

    # ------------------------------------------------------------------ tables

    def prepare(self, now_t: float) -> None:
        """Precompute the tables of intervals ``i-1 .. i+1`` around UNIX time ``now_t``."""
        i = interval_of(now_t)
        self._collect()
        missing = [k for k in (i - 1, i, i + 1) if k not in self._tables and k not in self._ahead]
        if missing:
            n = len(self.keyring)
            built = self.keyring.build_tables(missing, builder=self.builder, tails=self.table_tails)
            for k, table in zip(missing, built, strict=True):
                self._store(k, table, n)
        for k in (i - 1, i, i + 1):
            if k in self._ahead:
                self.table(k)  # waits for the background build
            self._tables.move_to_end(k)

    def prepare_ahead(self, now_t: float) -> list[int]:
        """Start building, in the background, the tables of ``i-1 .. i+1`` not yet built.

        Call it regularly (each settlement pass): the table of the next interval is then
        ready before it starts, and a lookup never waits for a build. A lookup in an
        interval still being built waits for it. Within ``max_table_bytes``, tables
        outside ``i-1 .. i+1`` are dropped before the builds start when the new ones
        would not fit beside them.

        Returns:
            The intervals whose builds were started now.
        """
        i = interval_of(now_t)
        self._collect()
        window = (i + 1, i, i - 1)
        missing = [k for k in window if k not in self._tables and k not in self._ahead]
        if missing and self.max_table_bytes is not None and self._tables:
            # room first: with the new tables over the budget, cached ones outside the
            # window go before the builds start (least recently used first), so the
            # peak is the budget, not the budget and one more table
            size = max(t.nbytes() for t in self._tables.values())
            for old in [k for k in self._tables if k not in window]:
                held = len(self._tables) + len(self._ahead) + len(missing)
                if held * size <= self.max_table_bytes:
                    break
                del self._tables[old]
                self._built_upto.pop(old, None)
        started = []
        for k in missing:
            if self._background is None:
                self._background = ThreadPoolExecutor(1, thread_name_prefix="busbell-ridtable")
            self._ahead[k] = self._background.submit(self._build_one, k)
            started.append(k)
        return started

    def _build_one(self, interval: int) -> tuple[int, RidTable]:
        n = len(self.keyring)
        (table,) = self.keyring.build_tables(
            [interval], builder=self.builder, tails=self.table_tails
        )
        return n, table

    def _collect(self) -> None:
        for k in [k for k, f in self._ahead.items() if f.done()]:
            self._take_ahead(k)

    def _take_ahead(self, interval: int) -> RidTable:
        n, table = self._ahead.pop(interval).result()
        self._store(interval, table, n)
        return table

    def ready(self, interval: int) -> bool:
        """Whether the table of ``interval`` is built (a lookup there will not wait)."""
        self._collect()
        return interval in self._tables

    def _store(self, interval: int, table: RidTable, upto: int) -> None:
        self._tables[interval] = table
        self._built_upto[interval] = upto
        self.tables_built += 1
        while len(self._tables) > self._cache_size or (
            self.max_table_bytes is not None
            and len(self._tables) > 3
            and sum(t.nbytes() for t in self._tables.values()) > self.max_table_bytes
        ):
            old, _ = self._tables.popitem(last=False)
            self._built_upto.pop(old, None)

    def table(self, interval: int) -> RidTable:
        """The rid lookup table of ``interval`` (built on demand, cached).

        Riders enrolled since the table was built are added to it first.
        """
        table = self._tables.get(interval)
        if table is None and interval in self._ahead:
            table = self._take_ahead(interval)
        if table is None:
            w = min(self.prefetch, (self._cache_size - 1) // 2)
            wanted = [interval] + [
                k
                for k in range(interval - w, interval + w + 1)
                if k != interval and k >= 0 and k not in self._tables and k not in self._ahead
            ]
            n = len(self.keyring)
            built = self.keyring.build_tables(wanted, builder=self.builder, tails=self.table_tails)
            for k, t in reversed(list(zip(wanted, built, strict=True))):
                self._store(k, t, n)  # the asked-for interval last: most recently used
            return built[0]
        self._tables.move_to_end(interval)
        upto = self._built_upto[interval]
        if upto < len(self.keyring):
            n = len(self.keyring)
            (extra,) = self.keyring.build_tables([interval], start=upto, tails=False)
            table.add(extra)
            self._built_upto[interval] = n
        return table

    def tables_for(self, intervals: Iterable[int]) -> None:
        """Make sure the tables of these intervals are built, all in one pass.

        One key schedule per rider serves every interval (settle's bulk resolution);
        the cache is grown to hold them all.
        """
        self._collect()
        wanted = sorted({k for k in intervals if k not in self._tables and k not in self._ahead})
        self._cache_size = max(self._cache_size, len(self._tables) + len(self._ahead) + len(wanted))
        if wanted:
            n = len(self.keyring)
            for k, t in zip(
                wanted,
                self.keyring.build_tables(wanted, builder=self.builder, tails=self.table_tails),
                strict=True,
            ):
                self._store(k, t, n)

    # ------------------------------------------------------------------ lookups

    def resolve_index(self, rid: str | bytes, interval: int) -> int | None:
        """The rider index whose rid in ``interval`` is ``rid``, or ``None``."""
        raw = _rid_bytes(rid)
        if raw is None:
            return None
        ring = self.keyring
        table = self.table(interval)
        exact = table.exact  # the sorted arrays' hits are whole rids
        for idx in table.candidates(raw, extras=False):
            if not ring.is_revoked(idx) and (
                exact or rid_for_interval(ring.rid_key(idx), interval) == raw
            ):
                return idx
        for idx in table.extra_candidates(raw):  # the first 8 bytes match: check the rest
            if not ring.is_revoked(idx) and rid_for_interval(ring.rid_key(idx), interval) == raw:
                return idx
        return None

    def resolve(self, rid: str | bytes, interval: int) -> str | None:
        """The rider id whose rid in ``interval`` is ``rid`` (hex or bytes), or ``None``."""
        idx = self.resolve_index(rid, interval)
        return None if idx is None else self.keyring.rider_id(idx)

    def resolve_many(
        self, rids: Sequence[str | bytes], intervals: Sequence[int] | int
    ) -> list[int | None]:
        """:meth:`resolve_index` of many rids at once (the same answers, in bulk).

        Args:
            rids: rids (12 bytes or 24 hex characters).
            intervals: one interval for all, or one per rid.

        Returns:
            Per rid, the rider index or ``None``.
        """
        n = len(rids)
        if isinstance(intervals, int):
            ivs = np.full(n, intervals, dtype=np.int64)
        else:
            if len(intervals) != n:
                raise ValueError("one interval per rid")
            ivs = np.fromiter(intervals, dtype=np.int64, count=n)
        raws: list[bytes | None]
        if set(map(type, rids)) <= {bytes} and set(map(len, rids)) <= {12}:
            raws = list(rids)  # type: ignore[arg-type]  # all raw rids (C loops only)
        else:
            raws = [_rid_bytes(r) for r in rids]
        if None in raws:
            at = np.array([k for k, r in enumerate(raws) if r is not None], dtype=np.int64)
            good = [r for r in raws if r is not None]
        else:
            at, good = np.arange(n), raws  # type: ignore[assignment]  # no None in it
        if not good:
            return [None] * n
        prefix_all, tail_all = rids_to_arrays(good)
        found_all = np.full(n, NOT_FOUND, dtype=np.int64)
        found_all[at] = self._resolve_arrays(
            prefix_all,
            tail_all,
            ivs[at],
            lambda k: good[k],
            one_interval=intervals if isinstance(intervals, int) else None,
        )
        return [None if f < 0 else f for f in found_all.tolist()]

    def resolve_near_packed(
        self, rids: bytes | bytearray, intervals: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """:meth:`resolve_near` of 12-byte rids packed end to end, in arrays.

        Settle keeps a day's rids this way as it accepts segments: looked up without a
        Python object per rid (at a million segments, what made the lookup slow was
        reaching a million scattered ``bytes`` objects).

        Args:
            rids: the rids, 12 bytes each, concatenated.
            intervals: each rid's interval.

        Returns:
            Per rid, its rider index (``-1``: not found) and the interval it was found in
            (its own, the one before or the one after, in that order).
        """
        n = len(rids) // 12
        if len(rids) != 12 * n or len(intervals) != n:
            raise ValueError("12 bytes and one interval per rid")
        rec = np.frombuffer(rids, dtype=np.dtype([("p", ">u8"), ("t", ">u4")]))
        prefix_all, tail_all = rec["p"].astype(np.uint64), rec["t"].astype(np.uint32)
        del rec  # the buffer export ends here: the caller may grow it again
        ivs = np.asarray(intervals, dtype=np.int64)
        found = np.full(n, NOT_FOUND, dtype=np.int64)
        found_iv = ivs.copy()
        todo = np.arange(n)
        for delta in (0, -1, 1):
            if not todo.size:
                break
            at = todo.tolist()

            def raw_of(k: int, at: list[int] = at) -> bytes:
                return bytes(rids[12 * at[k] : 12 * at[k] + 12])

            got = self._resolve_arrays(prefix_all[todo], tail_all[todo], ivs[todo] + delta, raw_of)
            hit = got >= 0
            found[todo[hit]] = got[hit]
            found_iv[todo[hit]] = ivs[todo[hit]] + delta
            todo = todo[~hit]
        return found, found_iv

    def _resolve_arrays(
        self,
        prefix_all: npt.NDArray[np.uint64],
        tail_all: npt.NDArray[np.uint32],
        ivs: npt.NDArray[np.int64],
        raw_of: Callable[[int], bytes],
        *,
        one_interval: int | None = None,
    ) -> npt.NDArray[np.int64]:
        """The rider index of each rid given as its table keys (``NOT_FOUND``: none).

        ``raw_of(k)`` gives rid ``k``'s 12 bytes for the few looked up one by one.
        """
        n = len(prefix_all)
        # the rids grouped by interval (one sort), each group looked up in its table
        if one_interval is not None:
            by_iv = np.arange(n)
            group_ivs, starts = np.array([one_interval]), np.zeros(1, dtype=np.int64)
        else:
            by_iv = np.argsort(ivs, kind="stable")
            sorted_ivs = ivs[by_iv]
            starts = np.flatnonzero(np.r_[True, sorted_ivs[1:] != sorted_ivs[:-1]])
            group_ivs = sorted_ivs[starts]
        if self.max_table_bytes is None:
            self.tables_for(group_ivs.tolist())  # every interval's table in one pass
        # else: one interval at a time, within the byte budget (a bus hours late online
        # would otherwise build a dozen tables of every rider at once)
        found_all = np.full(n, NOT_FOUND, dtype=np.int64)
        slow_pos: list[tuple[int, int]] = []
        revoked = self.keyring.revoked_array()
        ends = [*starts.tolist()[1:], n]
        for interval, s0, s1 in zip(group_ivs.tolist(), starts.tolist(), ends, strict=True):
            sel = by_iv[s0:s1]
            table = self.table(interval)
            prefix, tail = prefix_all[sel], tail_all[sel]
            found = table.lookup(prefix, tail)
            cand = np.flatnonzero(found >= 0) if not table.exact else np.empty(0, np.int64)
            if cand.size:  # the first 8 bytes match: check the whole rid (vectorised AES)
                words = rid_words(self.keyring.rid_key_rows(found[cand]), [interval])[0]
                got = words[0].astype(np.uint64) << np.uint64(32)
                got |= words[1]
                same = (got == prefix[cand]) & (words[2] == tail[cand])
                found[cand[~same]] = NOT_FOUND
                del words, got, same
            slow = found == NEEDS_SCAN
            if revoked.size:
                slow |= np.isin(found, revoked)
            if table.has_extra:
                slow |= found == NOT_FOUND
            found[slow] = NOT_FOUND
            found_all[sel] = found
            slow_pos.extend((k, interval) for k in sel[slow].tolist())
        for pos, interval in slow_pos:
            idx = self.resolve_index(raw_of(pos), interval)
            found_all[pos] = NOT_FOUND if idx is None else idx
        return found_all

    def resolve_near(
        self, rids: Sequence[str | bytes], intervals: Sequence[int]
    ) -> list[tuple[int, int] | None]:
        """Per rid, its rider index and the interval it was found in, or ``None``.

        Looked up in the rid's interval, then the one before, then the one after (a
        token's clock a little off at an interval boundary): the order of
        :func:`backend._settle.segment_of`, in bulk (:meth:`resolve_many`).
        """
        found: list[tuple[int, int] | None] = [
            None if f is None else (f, iv)
            for f, iv in zip(self.resolve_many(rids, intervals), intervals, strict=True)
        ]
        for delta in (-1, 1):
            miss = [k for k, f in enumerate(found) if f is None]
            if not miss:
                break
            again = self.resolve_many([rids[k] for k in miss], [intervals[k] + delta for k in miss])
            for k, f in zip(miss, again, strict=True):
                if f is not None:
                    found[k] = (f, intervals[k] + delta)
        return found

    # ------------------------------------------------------------------ proofs

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
        return check_proof_with(
            self.keyring.mac_key(idx),
            proof_first,
            proof_last,
            interval,
            rid=rid,
            start_t=start_t,
            end_t=end_t,
            slack_s=self.proof_slack_s,
        )

    # ------------------------------------------------------------------ riders

    def enrolled(self, rider_id: str, token_key: bytes) -> int:
        """Add a newly enrolled rider; cached tables pick them up on next use."""
        return self.keyring.add(rider_id, token_key)

    def revoke(self, rider_id: str) -> bool:
        """Revoke a rider: their rids no longer resolve."""
        return self.keyring.revoke(rider_id)

    def close(self) -> None:
        """Stop the background build thread (waiting for a build under way)."""
        if self._background is not None:
            self._background.shutdown(wait=True, cancel_futures=True)
            self._background = None
        self._ahead.clear()


def check_proof_with(
    mac_key: bytes,
    proof_first: str | bytes,
    proof_last: str | bytes,
    interval: int,
    *,
    rid: str | bytes | None = None,
    start_t: float | None = None,
    end_t: float | None = None,
    slack_s: float = DEFAULT_PROOF_SLACK_S,
) -> ProofResult:
    """:meth:`Resolver.check_proof` given the rider's ``mac_key`` (see there).

    The payloads and the rid may be given as hex or as raw bytes.

    Raises:
        ProofRejected: with the reason.
    """
    ref_first = start_t if start_t is not None else (interval + 0.5) * INTERVAL_S
    ref_last = end_t if end_t is not None else ref_first
    first_t = _check_payload("first", proof_first, ref_first, mac_key, interval=interval, rid=rid)
    last_t = _check_payload("last", proof_last, ref_last, mac_key, interval=interval, rid=rid)
    lo = (start_t if start_t is not None else first_t) - slack_s
    hi = (end_t if end_t is not None else last_t) + slack_s
    if not (lo <= first_t <= hi and lo <= last_t <= hi) or last_t + _TQ_STEP_S < first_t:
        raise ProofRejected(
            "tq_mismatch",
            f"token times {first_t:.0f}..{last_t:.0f} vs segment {start_t}..{end_t}",
        )
    return ProofResult(first_t, last_t)


def mac_pads(mac_key: bytes) -> tuple[bytes, bytes]:
    """A rider's ``mac_key`` as HMAC-SHA256's padded inner and outer keys (:func:`proof_holds`).

    Made once per rider, so each proof's ``rtag`` costs two one-shot SHA-256 calls
    rather than an HMAC context (about half the time of ``hmac.digest``).
    """
    return mac_key.translate(_X36) + _PAD36, mac_key.translate(_X5C) + _PAD5C


_SHA256 = hashlib.sha256
_VERSION_BITS = TOKEN_VERSION << 5
_HEAD_MASK = 0b11111000  # the version and the reserved flag bits


def proof_holds(  # noqa: PLR0917 - called per segment: positional is cheaper
    pads: tuple[bytes, bytes],
    proof_first: bytes,
    proof_last: bytes,
    interval: int,
    rid: bytes,
    start_t: float,
    end_t: float,
    slack_s: float,
) -> bool:
    """Whether :func:`check_proof_with` accepts a segment's proof, without the reason.

    The same checks in the same terms (structure, rid, ``rtag``, interval, token times
    within the segment's plus ``slack_s``) on raw bytes, written out for settling a day
    in bulk; when it says no, :func:`check_proof_with` names the reason. A test holds
    the two equal.

    Args:
        pads: the rider's :func:`mac_pads`.
        proof_first: the first payload (24 bytes).
        proof_last: the last payload.
        interval: the interval the rid resolved in.
        rid: the segment's rid (12 bytes).
        start_t: the segment's start time.
        end_t: the segment's end time.
        slack_s: how far the token times may lie outside the segment's.
    """
    if (
        len(proof_first) != PAYLOAD_LEN
        or len(proof_last) != PAYLOAD_LEN
        or proof_first[0] & _HEAD_MASK != _VERSION_BITS
        or proof_last[0] & _HEAD_MASK != _VERSION_BITS
        or proof_first[3:15] != rid
        or proof_last[3:15] != rid
    ):
        return False
    inner, outer = pads
    sha = _SHA256
    if not hmac.compare_digest(
        sha(outer + sha(inner + proof_first[:19]).digest()).digest()[:4], proof_first[19:23]
    ) or not hmac.compare_digest(
        sha(outer + sha(inner + proof_last[:19]).digest()).digest()[:4], proof_last[19:23]
    ):
        return False
    first_t = unwrap_tq(int.from_bytes(proof_first[1:3], "big"), start_t)
    last_t = unwrap_tq(int.from_bytes(proof_last[1:3], "big"), end_t)
    lo = start_t - slack_s
    hi = end_t + slack_s
    return (
        math.floor(first_t / INTERVAL_S) == interval
        and math.floor(last_t / INTERVAL_S) == interval
        and lo <= first_t <= hi
        and lo <= last_t <= hi
        and last_t + _TQ_STEP_S >= first_t
    )


def _check_payload(
    name: str,
    text: str | bytes,
    ref: float,
    mac_key: bytes,
    *,
    interval: int,
    rid: str | bytes | None,
) -> float:
    """One proof payload: structure, rid, ``rtag``, interval; returns its token time."""
    if isinstance(text, bytes):
        raw = text
    else:
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise ProofRejected("malformed_proof", f"proof.{name}: {exc}") from None
    if len(raw) != PAYLOAD_LEN or raw[0] >> 5 != TOKEN_VERSION or raw[0] & _RESERVED_FLAG_BITS:
        from busbell._token import parse_payload  # for its exact message

        try:
            parse_payload(raw)
        except BusbellError as exc:
            raise ProofRejected("malformed_proof", f"proof.{name}: {exc}") from None
        raise AssertionError("unreachable")  # pragma: no cover
    if rid is not None and (raw[3:15] if isinstance(rid, bytes) else raw[3:15].hex()) != rid:
        raise ProofRejected("rid_mismatch", f"proof.{name} carries another rid")
    if not hmac.compare_digest(hmac.digest(mac_key, raw[:19], "sha256")[:4], raw[19:23]):
        raise ProofRejected("bad_rtag", f"proof.{name}")
    token_t = unwrap_tq(int.from_bytes(raw[1:3], "big"), ref)
    if math.floor(token_t / INTERVAL_S) != interval:
        raise ProofRejected(
            "interval_mismatch", f"proof.{name} token time {token_t:.0f} not in {interval}"
        )
    return token_t


def _rid_bytes(rid: str | bytes) -> bytes | None:
    if isinstance(rid, bytes):
        return rid if len(rid) == 12 else None
    if len(rid) != 24:
        return None
    try:
        return bytes.fromhex(rid)
    except ValueError:
        return None
