r"""Bulk rid computation and the per-interval rid lookup table (numpy, no Python per rider).

The token v1 rid of a rider in interval ``i`` is the first 12 bytes of
``AES-128-ECB(rid_key, b"BBRID" + 7 zero bytes + i as 4-byte big-endian)`` (the wire
contract, :func:`busbell.rid_for_interval`). For millions of riders the cost of that
block cipher is not the cipher but setting up one cipher context per key (about 4 us in
``cryptography``): no library here encrypts one block under each of many keys in one
call. :func:`rid_words` therefore runs AES-128 itself, vectorised over the riders with
numpy (the 32-bit T-table formulation of FIPS-197, every round a handful of array
gathers and XORs over all riders at once): about 0.6 us per rider and interval on one
core, the key schedule shared by every interval computed in the same call. It is
checked against ``cryptography`` and the FIPS-197 vector by the tests.

It is a table implementation: its memory accesses depend on the keys (a cache-timing
side channel on the backend host, where the keys are stored anyway). The edge never runs
it.

:class:`RidTable` holds one interval's rids of every rider as flat sorted arrays: the
rid's first 8 bytes (``uint64``), the rider index (``uint32``) and, with tails, the
rid's last 4 bytes (``uint32``): 16 or 12 bytes per rider. A lookup is a binary search;
without tails it gives a candidate whose last 4 bytes the resolver checks.
:meth:`RidTable.lookup` searches many rids at once (sorted first, so the searches walk
the table in order).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "CHUNK_RIDERS",
    "NEEDS_SCAN",
    "NOT_FOUND",
    "RidTable",
    "aes_words",
    "rid_blocks",
    "rid_keys_of",
    "rid_prefixes_of",
    "rid_words",
    "rids_to_arrays",
]

U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

CHUNK_RIDERS = 32_768
"""Riders per vectorised AES pass: its working set (about 60 arrays of 128 KB) stays in
the CPU caches."""

PER_KEY_MIN_INTERVALS = 12
"""From this many intervals in one build, rids are computed with one ``cryptography`` AES
context per rider encrypting all the intervals' blocks (the context dominates; each
block after it is nearly free) instead of the vectorised AES (whose cost grows with
every interval)."""

NOT_FOUND = -1
""":meth:`RidTable.lookup`: no rider has this rid."""
NEEDS_SCAN = -2
""":meth:`RidTable.lookup`: a rider's rid shares the first 8 bytes but not the rest; the
caller scans with :meth:`RidTable.candidates` (never happens by chance at 64 bits)."""

_RID_PREFIX = b"BBRID" + bytes(7)


def _top(prefix: U64, shift: np.uint64, bits: int) -> npt.NDArray[np.intp]:
    """The bucket of each rid: the top ``bits`` bits of its first bytes."""
    if not bits:
        return np.zeros(len(prefix), dtype=np.intp)
    return (prefix >> shift).astype(np.intp)


def _xtime(a: int) -> int:
    return ((a << 1) ^ (0x1B if a & 0x80 else 0)) & 0xFF


def _gmul(a: int, b: int) -> int:
    out = 0
    while b:
        if b & 1:
            out ^= a
        a = _xtime(a)
        b >>= 1
    return out


def _sbox() -> list[int]:
    """The AES S-box from its definition: inverse in GF(2^8), then the affine map."""
    box = []
    for a in range(256):
        inv = 0
        if a:
            inv = next(b for b in range(1, 256) if _gmul(a, b) == 1)
        s = inv
        for shift in (1, 2, 3, 4):
            s ^= ((inv << shift) | (inv >> (8 - shift))) & 0xFF
        box.append(s ^ 0x63)
    return box


_S = _sbox()
# T0[x] = the MixColumns column of S[x] in row 0 (02·s, s, s, 03·s), big-endian word;
# T1..T3 are its byte rotations (rows 1..3).
_T0 = np.array(
    [(_xtime(s) << 24) | (s << 16) | (s << 8) | (_xtime(s) ^ s) for s in _S], dtype=np.uint32
)
_T1 = ((_T0 >> 8) | (_T0 << 24)).astype(np.uint32)
_T2 = ((_T0 >> 16) | (_T0 << 16)).astype(np.uint32)
_T3 = ((_T0 >> 24) | (_T0 << 8)).astype(np.uint32)
# the S-box placed in each byte of a word (last round, key schedule)
_S0 = np.array(_S, dtype=np.uint32)
_S1 = (_S0 << 8).astype(np.uint32)
_S2 = (_S0 << 16).astype(np.uint32)
_S3 = (_S0 << 24).astype(np.uint32)
_RCON = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1B, 0x36)
_M = np.uint32(0xFF)


def rid_blocks(intervals: Iterable[int]) -> list[bytes]:
    """The plaintext block of each interval (token v1)."""
    return [_RID_PREFIX + (i & 0xFFFFFFFF).to_bytes(4, "big") for i in intervals]


def _key_schedule(keys: npt.NDArray[np.uint8]) -> list[tuple[U32, U32, U32, U32]]:
    """AES-128 round keys 0..10 of every key (rows of 16 bytes), as word arrays."""
    k = keys.view(">u4").astype(np.uint32)
    w0, w1, w2, w3 = (np.ascontiguousarray(k[:, j]) for j in range(4))
    out = [(w0, w1, w2, w3)]
    for rcon in _RCON:
        t = w3
        w0 = w0 ^ _S3[(t >> 16) & _M] ^ _S2[(t >> 8) & _M] ^ _S1[t & _M] ^ _S0[t >> 24]
        w0 ^= np.uint32(rcon << 24)
        w1 = w1 ^ w0
        w2 = w2 ^ w1
        w3 = w3 ^ w2
        out.append((w0, w1, w2, w3))
    return out


def aes_words(keys: npt.NDArray[np.uint8], blocks: Sequence[bytes], words: int = 4) -> U32:
    """AES-128 encryption of each block under every key, vectorised over the keys.

    Args:
        keys: ``(n, 16)`` uint8, one AES-128 key per row.
        blocks: 16-byte plaintext blocks (each is encrypted under every key).
        words: how many leading 32-bit words of each ciphertext to return (1-4).

    Returns:
        ``(len(blocks), words, n)`` uint32: the ciphertexts' big-endian words.
    """
    n = keys.shape[0]
    out = np.empty((len(blocks), words, n), dtype=np.uint32)
    plain = [[int.from_bytes(b[4 * c : 4 * c + 4], "big") for c in range(4)] for b in blocks]
    for a in range(0, n, CHUNK_RIDERS):
        b = min(n, a + CHUNK_RIDERS)
        rk = _key_schedule(keys[a:b])
        for j, p in enumerate(plain):
            k0 = rk[0]
            s0, s1, s2, s3 = (k0[c] ^ np.uint32(p[c]) for c in range(4))
            for r in range(1, 10):
                k = rk[r]
                t0 = _T0[s0 >> 24] ^ _T1[(s1 >> 16) & _M] ^ _T2[(s2 >> 8) & _M] ^ _T3[s3 & _M]
                t1 = _T0[s1 >> 24] ^ _T1[(s2 >> 16) & _M] ^ _T2[(s3 >> 8) & _M] ^ _T3[s0 & _M]
                t2 = _T0[s2 >> 24] ^ _T1[(s3 >> 16) & _M] ^ _T2[(s0 >> 8) & _M] ^ _T3[s1 & _M]
                t3 = _T0[s3 >> 24] ^ _T1[(s0 >> 16) & _M] ^ _T2[(s1 >> 8) & _M] ^ _T3[s2 & _M]
                s0, s1, s2, s3 = t0 ^ k[0], t1 ^ k[1], t2 ^ k[2], t3 ^ k[3]
            # last round: SubBytes and ShiftRows, no MixColumns
            k = rk[10]
            state = (s0, s1, s2, s3)
            for c in range(words):
                out[j, c, a:b] = (
                    _S3[state[c] >> 24]
                    ^ _S2[(state[(c + 1) % 4] >> 16) & _M]
                    ^ _S1[(state[(c + 2) % 4] >> 8) & _M]
                    ^ _S0[state[(c + 3) % 4] & _M]
                    ^ k[c]
                )
    return out


def rid_words(keys: npt.NDArray[np.uint8], intervals: Sequence[int]) -> U32:
    """The rids of many riders in several intervals, as 32-bit words.

    Args:
        keys: ``(n, 16)`` uint8, one ``rid_key`` per row.
        intervals: the interval numbers.

    Returns:
        ``(len(intervals), 3, n)`` uint32: words 0, 1, 2 (big-endian) of each rider's rid
        (the first 12 bytes of the AES block) in each interval.
    """
    return aes_words(keys, rid_blocks(intervals), words=3)


def rid_keys_of(key_bytes: bytes | bytearray, intervals: Sequence[int]) -> tuple[U64, U32]:
    """The table keys of riders' rids: per interval, the rids' first 8 bytes and last 4.

    The task a worker process runs (bytes in, two arrays out: all pickle compactly).

    Args:
        key_bytes: the riders' 16-byte ``rid_key`` values, concatenated.
        intervals: the intervals.

    Returns:
        ``(len(intervals), n)`` uint64 and ``(len(intervals), n)`` uint32.
    """
    if len(intervals) >= PER_KEY_MIN_INTERVALS:
        return _rid_keys_per_key(key_bytes, intervals)
    keys = np.frombuffer(key_bytes, dtype=np.uint8).reshape(-1, 16)
    words = rid_words(keys, intervals)
    prefix = words[:, 0, :].astype(np.uint64)
    prefix <<= np.uint64(32)
    prefix |= words[:, 1, :]
    return prefix, np.ascontiguousarray(words[:, 2, :])


def rid_prefixes_of(
    key_bytes: bytes | bytearray, intervals: Sequence[int], tails: bool = False
) -> tuple[U64, U32 | None]:
    """What a table keeps of the rids, per interval: ``(len(intervals), n)`` arrays.

    The task a worker process runs (bytes in, arrays out): the rids' first 8 bytes and,
    with ``tails``, their last 4 (else ``None``).
    """
    if tails:
        return rid_keys_of(key_bytes, intervals)
    if len(intervals) >= PER_KEY_MIN_INTERVALS:
        return _rid_keys_per_key(key_bytes, intervals)[0], None
    keys = np.frombuffer(key_bytes, dtype=np.uint8).reshape(-1, 16)
    words = aes_words(keys, rid_blocks(intervals), words=2)
    prefix = words[:, 0, :].astype(np.uint64)
    prefix <<= np.uint64(32)
    prefix |= words[:, 1, :]
    return prefix, None


def _rid_keys_per_key(key_bytes: bytes | bytearray, intervals: Sequence[int]) -> tuple[U64, U32]:
    """:func:`rid_keys_of` with one ``cryptography`` AES context per rider.

    The context costs about 4 us, each block after it about 15 ns (AES-NI): for many
    intervals at once (settling a day) this beats the vectorised AES.
    """
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    blocks = b"".join(rid_blocks(intervals))
    aes, ecb = algorithms.AES, modes.ECB()  # noqa: S305 - one block per rid, token v1
    n, m = len(key_bytes) // 16, len(intervals)
    prefix = np.empty((m, n), dtype=np.uint64)
    tail = np.empty((m, n), dtype=np.uint32)
    rec_type = np.dtype([("p", ">u8"), ("t", ">u4"), ("x", "V4")])
    for a in range(0, n, CHUNK_RIDERS):  # bounded buffers: 16 bytes x intervals x chunk
        b = min(n, a + CHUNK_RIDERS)
        out = b"".join(
            [
                Cipher(aes(key_bytes[16 * k : 16 * k + 16]), ecb).encryptor().update(blocks)
                for k in range(a, b)
            ]
        )
        rec = np.frombuffer(out, dtype=rec_type).reshape(b - a, m)
        prefix[:, a:b] = rec["p"].T
        tail[:, a:b] = rec["t"].T
    return prefix, tail


def rids_to_arrays(rids: Sequence[bytes]) -> tuple[U64, U32]:
    """12-byte rids as the table's two key arrays (first 8 bytes, last 4; big-endian)."""
    dt = np.dtype([("p", ">u8"), ("t", ">u4")])
    rec = np.frombuffer(b"".join(rids), dtype=dt)
    return rec["p"].astype(np.uint64), rec["t"].astype(np.uint32)


class RidTable:
    """One interval's lookup from a rid to the rider indexes that may broadcast it.

    Flat arrays sorted together by the rid's first 8 bytes: those bytes (``uint64``),
    the rider index (``uint32``) and, in a table built with tails, the rid's last 4
    bytes (``uint32``): 16 bytes per rider with tails, 12 without (riders with equal
    first bytes in index order). Without tails a match on the first 8 bytes is a
    candidate, not yet a hit: the caller checks the rest of the rid against the
    candidate's key (:meth:`backend._resolve.Resolver.resolve_many` does it for many at
    once with the vectorised AES), 38 MiB less per table of 10 million riders for about
    1 µs more per looked-up rid. A small dict holds the riders enrolled after the table
    was built, by their first 8 bytes (always checked by the caller).
    """

    __slots__ = ("_extra", "_idx", "_prefix", "_tail", "interval")

    def __init__(self, interval: int, prefix: U64, idx: U32, tail: U32 | None = None) -> None:
        self.interval = interval
        self._prefix = prefix
        self._idx = idx
        self._tail = tail
        self._extra: dict[int, list[int]] = {}

    @property
    def exact(self) -> bool:
        """Whether the table holds the rids' tails (a lookup hit is then a whole rid)."""
        return self._tail is not None

    @classmethod
    def from_keys(
        cls, interval: int, prefix: U64, tail: U32 | None = None, first_index: int = 0
    ) -> RidTable:
        """Sort one interval's rids into a table (see :meth:`from_chunks`).

        Args:
            interval: the interval.
            prefix: the rids' first 8 bytes, rider by rider.
            tail: their last 4 bytes (``None``: a table without tails).
            first_index: the rider index of the first entry (the others follow).
        """
        return cls.from_chunks(interval, [(0, prefix, tail)], first_index)

    @classmethod
    def from_chunks(
        cls, interval: int, chunks: list[tuple[int, U64, U32 | None]], first_index: int = 0
    ) -> RidTable:
        """Sort one interval's rids, given in chunks of riders, into a table.

        A bucket sort: the entries are placed by the top bits of their rids' first
        bytes (each chunk in turn, stably; the list is emptied as it goes, so a chunk is
        freed once placed), then each bucket is sorted on its own. The peak memory is
        the table plus about one chunk, not the three copies of a global argsort; riders
        with equal rids stay in index order.

        Args:
            interval: the interval.
            chunks: ``(offset, prefix, tail or None)`` per chunk of consecutive riders
                (offset from ``first_index``), in any order; consumed. With tails in
                every chunk, the table keeps them.
            first_index: the rider index of offset 0.
        """
        n = sum(len(c[1]) for c in chunks)
        tails = bool(chunks) and all(c[2] is not None for c in chunks)
        bits = min(8, max(0, n.bit_length() - 16))
        shift = np.uint64(64 - bits)
        buckets = 1 << bits
        counts = [np.bincount(_top(c[1], shift, bits), minlength=buckets) for c in chunks]
        total = np.sum(counts, axis=0, dtype=np.int64) if counts else np.zeros(1, np.int64)
        bounds = np.zeros(buckets + 1, dtype=np.int64)
        np.cumsum(total, out=bounds[1:])
        prefix = np.empty(n, dtype=np.uint64)
        ridx = np.empty(n, dtype=np.uint32)
        tail = np.empty(n, dtype=np.uint32) if tails else None
        cursor = bounds[:-1].copy()
        order_of_chunks = sorted(range(len(chunks)), key=lambda k: chunks[k][0])
        todo = dict(enumerate(chunks))
        chunks.clear()  # the caller's list no longer holds them
        for k in order_of_chunks:
            off, p, t = todo.pop(k)
            top = _top(p, shift, bits)
            order = np.argsort(top, kind="stable")
            placed = top[order]
            del top
            within = np.arange(len(p), dtype=np.int64)
            within -= (np.cumsum(counts[k]) - counts[k])[placed]
            within += cursor[placed]
            del placed
            prefix[within] = p[order]
            if tail is not None and t is not None:
                tail[within] = t[order]
            del p, t
            order += first_index + off
            ridx[within] = order
            del order, within
            cursor += counts[k]
        for b in range(buckets):
            s, e = int(bounds[b]), int(bounds[b + 1])
            if e - s > 1:
                o = np.argsort(prefix[s:e], kind="stable")
                prefix[s:e] = prefix[s:e][o]
                ridx[s:e] = ridx[s:e][o]
                if tail is not None:
                    tail[s:e] = tail[s:e][o]
        return cls(interval, prefix, ridx, tail)

    def __len__(self) -> int:
        return len(self._prefix) + sum(len(v) for v in self._extra.values())

    def nbytes(self) -> int:
        """Bytes held by the sorted arrays."""
        tail = 0 if self._tail is None else self._tail.nbytes
        return int(self._prefix.nbytes + self._idx.nbytes + tail)

    def add(self, other: RidTable) -> None:
        """Merge a (small) table of newly enrolled riders into this one."""
        for prefix, idx in zip(other._prefix.tolist(), other._idx.tolist(), strict=True):
            self._extra.setdefault(prefix, []).append(idx)
        for prefix, idxs in other._extra.items():
            self._extra.setdefault(prefix, []).extend(idxs)

    @property
    def has_extra(self) -> bool:
        """Whether riders were merged in after the build (see :meth:`add`)."""
        return bool(self._extra)

    def candidates(self, rid: bytes, *, extras: bool = True) -> list[int]:
        """Rider indexes whose rid in this interval may be ``rid`` (almost always 0 or 1).

        Their rids start with ``rid``'s first 8 bytes (and, in a table with tails, the
        ones from the sorted arrays end with its last 4); the caller checks the rest.
        """
        key = int.from_bytes(rid[:8], "big")
        want = int.from_bytes(rid[8:12], "big")
        prefixes, tails = self._prefix, self._tail
        pos = int(np.searchsorted(prefixes, np.uint64(key)))
        out: list[int] = []
        while pos < len(prefixes) and int(prefixes[pos]) == key:
            if tails is None or int(tails[pos]) == want:
                out.append(int(self._idx[pos]))
            pos += 1
        if extras:
            out.extend(self._extra.get(key, ()))
        return out

    def extra_candidates(self, rid: bytes) -> list[int]:
        """Rider indexes merged in after the build whose rid starts like ``rid``."""
        return list(self._extra.get(int.from_bytes(rid[:8], "big"), ()))

    def lookup(self, prefix: U64, tail: U32 | None = None) -> I64:
        """The rider of each rid, as far as the sorted arrays tell (extras not searched).

        Args:
            prefix: the rids' first 8 bytes.
            tail: their last 4 bytes (compared in a table with tails).

        Returns:
            Per rid: a rider index (in a table with tails, the lowest one with that rid;
            without, the one rider whose rid starts with those bytes, the rest still to
            check), :data:`NOT_FOUND`, or :data:`NEEDS_SCAN` (with tails: the first
            bytes match and the tail does not; without: several riders' rids start
            with those bytes).
        """
        m = len(prefix)
        out = np.full(m, NOT_FOUND, dtype=np.int64)
        n = len(self._prefix)
        if not m or not n:
            return out
        order = np.argsort(prefix)
        q = prefix[order]
        pos = np.searchsorted(self._prefix, q)
        pos_c = np.minimum(pos, n - 1)
        hit = (pos < n) & (self._prefix[pos_c] == q)
        res = np.where(hit, self._idx[pos_c].astype(np.int64), NOT_FOUND)
        if self._tail is not None and tail is not None:
            res[hit & (self._tail[pos_c] != tail[order])] = NEEDS_SCAN
        else:
            after = np.minimum(pos_c + 1, n - 1)
            res[hit & (pos_c + 1 < n) & (self._prefix[after] == q)] = NEEDS_SCAN
        out[order] = res
        return out
