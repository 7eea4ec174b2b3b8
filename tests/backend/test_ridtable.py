"""Vectorised AES and rid tables: FIPS-197, cryptography, workers, background builds."""

from __future__ import annotations

import hashlib
import itertools
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from backend._resolve import (
    Resolver,
    RiderKeyring,
    TableBuilder,
    derive_keys_fast,
    derive_rid_keys,
)
from backend._ridtable import NEEDS_SCAN, RidTable, aes_words, rid_keys_of, rid_words
from busbell import derive_rider_keys, interval_of, rid_for_interval

T = 1_762_500_123.0
IV = interval_of(T)


def _keys(n: int) -> np.ndarray:  # type: ignore[type-arg]
    return np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16)


def test_aes_fips197_vector() -> None:
    key = np.frombuffer(bytes(range(16)), dtype=np.uint8).reshape(1, 16)
    plain = bytes.fromhex("00112233445566778899aabbccddeeff")
    out = aes_words(key, [plain]).astype(">u4").tobytes()
    assert out.hex() == "69c4e0d86a7b0430d8cdb78070b4c55a"


def test_aes_words_equal_cryptography_over_chunks() -> None:
    keys = _keys(70_000)  # crosses the 32,768-rider chunks
    blocks = [os.urandom(16) for _ in range(3)]
    out = aes_words(keys, blocks)
    for k in [*range(0, 70_000, 997), 32_767, 32_768, 69_999]:
        raw = keys[k].tobytes()
        for j, block in enumerate(blocks):
            enc = Cipher(algorithms.AES(raw), modes.ECB()).encryptor()
            assert out[j, :, k].astype(">u4").tobytes() == enc.update(block)


def test_many_intervals_per_key_equal_the_vectorised_path() -> None:
    keys = _keys(32_800)  # crosses a 32,768-rider chunk
    ivs = list(range(IV - 6, IV + 6))
    many = rid_keys_of(keys.tobytes(), ivs)  # one AES context per rider
    for j in (0, 7, 11):
        one = rid_keys_of(keys.tobytes(), [ivs[j]])  # vectorised
        assert np.array_equal(many[0][j], one[0][0])
        assert np.array_equal(many[1][j], one[1][0])


@pytest.mark.parametrize("interval", [0, 1, IV, 2**32 - 1, 2**32 + 5])
def test_rid_words_are_the_token_rids(interval: int) -> None:
    keys = _keys(50)
    words = rid_words(keys, [interval, interval + 1])
    prefix, tail = rid_keys_of(keys.tobytes(), [interval])
    for k in range(50):
        rid = rid_for_interval(keys[k].tobytes(), interval)
        assert words[0, :, k].astype(">u4").tobytes() == rid
        assert prefix[0, k].item().to_bytes(8, "big") + tail[0, k].item().to_bytes(4, "big") == rid
        assert words[1, :, k].astype(">u4").tobytes() == rid_for_interval(
            keys[k].tobytes(), interval + 1
        )


def _ring(n: int) -> tuple[RiderKeyring, list[bytes]]:
    tks = [hashlib.sha256(f"k{k}".encode()).digest()[:16] for k in range(n)]
    return RiderKeyring.from_token_keys((f"r{k}", tk) for k, tk in enumerate(tks)), tks


def test_tables_built_in_worker_processes_equal_inline() -> None:
    ring, _ = _ring(300)
    ring.revoke("r7")
    builder = TableBuilder(2, parallel_min_riders=0, chunk_riders=37)
    try:
        par = ring.build_tables([IV - 1, IV, IV + 1], builder=builder)
        par_late = ring.build_tables([IV], start=250, builder=builder)
    finally:
        builder.close()
    inline = ring.build_tables([IV - 1, IV, IV + 1])
    (inline_late,) = ring.build_tables([IV], start=250)
    for a, b in [*zip(par, inline, strict=True), (par_late[0], inline_late)]:
        assert a.interval == b.interval
        assert len(a) == len(b)
        for attr in ("_prefix", "_idx", "_tail"):
            assert np.array_equal(getattr(a, attr), getattr(b, attr))
        assert a.exact
    assert sorted(inline_late._idx.tolist()) == list(range(250, 300))


def test_a_killed_table_worker_breaks_one_build_not_every_later_one() -> None:
    """A table worker process killed (the OOM killer, an operator) broke the process
    pool for good: every later build raised ``BrokenProcessPool``, so the online
    settlement worker (pool from 200k riders) crashed every pass at ``prepare_ahead``
    until restarted. Now the broken pool is dropped with the build it failed, and the
    next build starts a new one."""
    import signal
    from concurrent.futures.process import BrokenProcessPool

    ring, _ = _ring(120)
    builder = TableBuilder(2, parallel_min_riders=0, chunk_riders=11)
    try:
        (before,) = ring.build_tables([IV], builder=builder)
        pool = builder._pool
        assert isinstance(pool, ProcessPoolExecutor)
        for pid in list(pool._processes):  # this test's own pool workers
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            ring.build_tables([IV], builder=builder)
        (after,) = ring.build_tables([IV], builder=builder)
    finally:
        builder.close()
    assert np.array_equal(after._prefix, before._prefix)


def test_next_interval_built_in_the_background() -> None:
    ring, tks = _ring(40)
    res = Resolver(ring)
    try:
        started = res.prepare_ahead(T)
        assert sorted(started) == [IV - 1, IV, IV + 1]
        assert res.prepare_ahead(T) == []  # already under way or built
        rid = rid_for_interval(ring.rid_key(3), IV + 1)
        assert res.resolve(rid, IV + 1) == "r3"  # waits for the build if needed
        assert res.ready(IV + 1)
        res.prepare(T)
        assert res.tables_built == 3  # the three background builds, nothing built twice
        # a rider enrolled after the background build is found too
        res.enrolled("late", bytes(16))
        late_rid = rid_for_interval(ring.rid_key(40), IV)
        assert res.resolve(late_rid, IV) == "late"
        assert res.resolve_many([late_rid, rid, b"\x00" * 12], [IV, IV + 1, IV]) == [40, 3, None]
    finally:
        res.close()
    assert tks


def test_keyring_bulk_load_and_index() -> None:
    ring = RiderKeyring()
    n = 70_000  # more than the 65,536 ids kept outside the sorted index
    for k in range(n):
        ring.add(f"a{k}", k.to_bytes(16, "big"))
    first = ring.extend([f"b{k}" for k in range(1000)], bytes(16_000))
    assert first == n
    assert len(ring) == n + 1000
    for k in (0, 1, 65_535, 65_536, n - 1):
        assert ring.index_of(f"a{k}") == k
        assert ring.rider_id(k) == f"a{k}"
    assert ring.index_of("b999") == n + 999
    assert ring.index_of("nobody") is None
    with pytest.raises(ValueError, match="already"):
        ring.extend(["c1", "a5"], bytes(32))
    with pytest.raises(ValueError, match="already"):
        ring.extend(["c1", "c1"], bytes(32))
    with pytest.raises(ValueError, match="16 bytes"):
        ring.extend(["c1"], bytes(15))
    assert len(ring) == n + 1000  # nothing added by the failures
    assert "c1" not in ring
    ring.add("c1", bytes(16))
    assert ring.index_of("c1") == n + 1000
    with pytest.raises(IndexError):
        ring.rider_id(n + 1001)


def test_fast_key_derivation_is_the_contracts_hkdf() -> None:
    for k in range(200):
        token_key = hashlib.sha256(f"t{k}".encode()).digest()[:16]
        keys = derive_rider_keys(token_key)
        assert derive_keys_fast(token_key) == (keys.rid_key, keys.mac_key)
    with pytest.raises(ValueError, match="16 bytes"):
        derive_keys_fast(b"short")


def test_table_memory_budget_keeps_the_three_newest() -> None:
    ring, _ = _ring(1000)  # 12,000 bytes per table
    res = Resolver(ring, cache_intervals=16, max_table_bytes=40_000, table_tails=False)
    for i in range(IV, IV + 6):
        res.table(i)
    assert [res.ready(i) for i in range(IV, IV + 6)] == [False] * 3 + [True] * 3
    unlimited = Resolver(ring, cache_intervals=16)
    for i in range(IV, IV + 6):
        unlimited.table(i)
    assert all(unlimited.ready(i) for i in range(IV, IV + 6))


def test_rid_keys_and_mac_keys_derived_like_the_contract() -> None:
    tks = [hashlib.sha256(f"d{k}".encode()).digest()[:16] for k in range(300)]
    derived = derive_rid_keys(b"".join(tks))
    ring = RiderKeyring()
    ring.extend([f"d{k}" for k in range(300)], b"".join(tks))
    for k, tk in enumerate(tks):
        keys = derive_rider_keys(tk)
        assert derived[16 * k : 16 * k + 16] == keys.rid_key
        assert ring.keys(k) == keys
        assert ring.token_key(k) == tk
    with pytest.raises(ValueError, match="16 bytes"):
        derive_rid_keys(bytes(17))
    with pytest.raises(IndexError):
        ring.mac_key(300)
    builder = TableBuilder(2, parallel_min_riders=0, chunk_riders=7)
    try:  # derived in worker processes, in rider order
        assert builder.derive_rid_keys(b"".join(tks)) == derived
    finally:
        builder.close()


@pytest.mark.parametrize(
    "rider_id",
    [
        "r-0123456789abcdef01234567",  # the rider API's form: packed
        "r-0123456789ABCDEF01234567",  # upper case: kept as text (would not round-trip)
        "r-0123456789abcdef0123456",  # odd length
        "r-0123456789abcdef0123456g",
        "r-0123456789abcdef 1234567",
        "x-0123456789abcdef01234567",
        "rider-ü-\N{BUS}",
        "",
    ],
)
def test_rider_ids_round_trip_packed_or_not(rider_id: str) -> None:
    ring = RiderKeyring()
    ring.add("first", bytes(16))
    idx = ring.add(rider_id, bytes(range(16)))
    assert ring.rider_id(idx) == rider_id
    assert ring.index_of(rider_id) == idx
    ring._ids.reindex()
    assert ring.index_of(rider_id) == idx
    assert ring.index_of(rider_id.upper() + "x") is None


def test_packed_ids_take_13_bytes() -> None:
    ring = RiderKeyring()
    ring.extend([f"r-{k:024x}" for k in range(1000)], bytes(16_000))
    assert ring.memory()["ids"] == 1000 * (13 + 4)
    assert ring.memory()["keys"] == 1000 * 32
    assert ring.memory()["id_index"] == 1000 * 8
    assert ring.rider_id(999) == f"r-{999:024x}"


def test_rekeyed_rider_resolves_only_with_the_new_key() -> None:
    ring, tks = _ring(50)
    res = Resolver(ring)
    old_rid = rid_for_interval(ring.rid_key(5), IV)
    assert res.resolve(old_rid, IV) == "r5"  # table built, cached
    assert ring.rekey("r5", tks[5]) == 5  # the same key: nothing changes
    new_tk = hashlib.sha256(b"new").digest()[:16]
    idx = res.keyring.rekey("r5", new_tk)
    assert idx == 50
    assert ring.index_of("r5") == 50
    ring._ids.reindex()
    assert ring.index_of("r5") == 50  # the newest, also from the sorted index
    assert ring.rider_id(5) == "r5"
    new_rid = rid_for_interval(derive_rider_keys(new_tk).rid_key, IV)
    assert res.resolve(old_rid, IV) is None
    assert res.resolve(new_rid, IV) == "r5"
    assert res.resolve_many([old_rid, new_rid], IV) == [None, 50]
    # a table built after the re-key: the same answers
    fresh = Resolver(ring)
    assert fresh.resolve_many([old_rid, new_rid], [IV, IV]) == [None, 50]
    assert ring.rekey("new-rider", new_tk) == 51  # rekey enrols an unknown rider


@pytest.mark.parametrize("tails", [True, False])
def test_bucket_sorted_table_equals_a_global_sort(tails: bool) -> None:
    rng = np.random.default_rng(3)
    n = 140_000  # 2**17 and more: two bits of buckets
    prefix = rng.integers(0, 2**64, n, dtype=np.uint64)
    tail = rng.integers(0, 2**32, n, dtype=np.uint32)
    prefix[100:110] = prefix[7]  # riders sharing a key: equal rids
    tail[100:110] = tail[7]
    prefix[50_000] = prefix[9]  # equal first bytes, another tail
    cuts = [0, 1, 33_333, 70_000, 70_001, n]
    chunks = [
        (a, prefix[a:b].copy(), tail[a:b].copy() if tails else None)
        for a, b in itertools.pairwise(cuts)
    ]
    chunks.reverse()  # given in any order
    table = RidTable.from_chunks(IV, chunks, 1000)
    assert chunks == []  # consumed
    assert table.exact is tails
    order = np.argsort(prefix, kind="stable")
    assert np.array_equal(table._prefix, prefix[order])
    assert np.array_equal(table._idx, order + 1000)
    assert table.nbytes() == (16 if tails else 12) * n
    if tails:
        assert np.array_equal(table._tail, tail[order])  # type: ignore[arg-type]
    rid7 = prefix[7].item().to_bytes(8, "big") + tail[7].item().to_bytes(4, "big")
    assert table.candidates(rid7) == [1007, *range(1100, 1110)]
    rid9 = prefix[9].item().to_bytes(8, "big") + tail[50_000].item().to_bytes(4, "big")
    assert table.candidates(rid9) == ([51_000] if tails else [1009, 51_000])
    found = table.lookup(prefix[[7, 50_000, 3]], tail[[7, 50_000, 3]])
    # with tails the lowest rider with the whole rid, or a scan when only the first
    # bytes match; without, a scan whenever several riders share the first bytes
    assert found.tolist() == ([1007, NEEDS_SCAN, 1003] if tails else [NEEDS_SCAN] * 2 + [1003])
    assert table.lookup(np.array([1, 2**64 - 1], dtype=np.uint64)).tolist() == [-1, -1]


@pytest.mark.parametrize("tails", [True, False])
def test_rid_with_the_right_first_bytes_and_a_wrong_tail_does_not_resolve(tails: bool) -> None:
    ring, _ = _ring(300)
    res = Resolver(ring, table_tails=tails)
    real = [rid_for_interval(ring.rid_key(k), IV) for k in range(300)]
    forged = [r[:8] + bytes(b ^ 0xFF for b in r[8:]) for r in real[:50]]
    forged += [r[:11] + bytes([r[11] ^ 1]) for r in real[50:100]]
    assert res.resolve_many(forged, IV) == [None] * 100
    assert all(res.resolve(f, IV) is None for f in forged[::7])
    assert res.resolve_many(real, IV) == list(range(300))
    # riders enrolled after the build (the table's extras) likewise
    late = ring.add("late", bytes(range(16)))
    late_rid = rid_for_interval(ring.rid_key(late), IV)
    bad = late_rid[:8] + bytes(4)
    assert res.resolve_many([late_rid, bad], IV) == [late, None]
    assert res.resolve(bad, IV) is None


def test_bulk_lookups_within_a_budget_build_one_table_at_a_time() -> None:
    ring, _ = _ring(1000)  # 12,000 bytes per table
    res = Resolver(ring, cache_intervals=16, max_table_bytes=40_000, table_tails=False)
    ivs = list(range(IV, IV + 6))
    rids = [rid_for_interval(ring.rid_key(k), i) for k, i in enumerate(ivs)]
    assert res.resolve_many(rids, ivs) == list(range(6))
    assert res.tables_built == 6
    assert len(res._tables) == 3  # never more than the budget (and the three kept)
    # found in the interval before or after (a token clock off at a boundary)
    near = res.resolve_near([*rids[:2], b"\x01" * 12], [IV + 1, IV, IV])
    assert near == [(0, IV), (1, IV + 1), None]


def test_tables_outside_the_window_make_room_before_a_build_ahead() -> None:
    ring, _ = _ring(1000)  # 12,000 bytes per table
    res = Resolver(ring, cache_intervals=16, max_table_bytes=40_000, table_tails=False)
    try:
        assert sorted(res.prepare_ahead(T)) == [IV - 1, IV, IV + 1]
        res.prepare(T)  # waits for them
        assert res.prepare_ahead(T + 600) == [IV + 2]
        assert IV - 1 not in res._tables  # dropped before the build started
        assert res.resolve(rid_for_interval(ring.rid_key(9), IV + 2), IV + 2) == "r9"
        assert [res.ready(k) for k in (IV - 1, IV, IV + 1, IV + 2)] == [False, True, True, True]
        roomy = Resolver(ring, cache_intervals=16, max_table_bytes=80_000, table_tails=False)
        roomy.prepare(T)
        roomy.prepare_ahead(T + 600)
        roomy.table(IV + 2)
        assert all(roomy.ready(k) for k in (IV - 1, IV, IV + 1, IV + 2))  # room for four
        roomy.close()
    finally:
        res.close()
