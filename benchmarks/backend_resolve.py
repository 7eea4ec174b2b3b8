"""Benchmark: rid tables for N enrolled riders (build time, memory, lookups).

Run: ``python -m benchmarks.backend_resolve --riders 10000000`` (from the repository
root). Loads a keyring of N riders with random token keys (their ``rid_key`` derived
on the ``--processes`` worker processes, as the online worker's first pass does) and
ids like the rider API's (``r-`` + 24 hex digits), then prints:

- the keyring's load time and bytes by part (keys, ids, id index),
- the tables the online settlement worker holds, built one after the other on the
  worker processes with its byte budget: interval i (first), i+1 (next), i-1 (third:
  the window i-1..i+1 held), then i+2 built ahead once i+1 has begun (i-1 dropped first
  to stay in the budget); per build its time and this process's peak RSS (``VmHWM``,
  reset after the load) and RSS after,
- bulk lookups (:meth:`backend._resolve.Resolver.resolve_many`): rids per second over
  ``--lookups`` rids (90 % of enrolled riders, 10 % unknown), and one-at-a-time,
- at a small scale (``--ratio-riders``) in the same run: the table build in this process
  against bare AES, i.e. one ``cryptography`` AES context per rider encrypting its one
  block (what any per-key AES costs), as a ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from backend._resolve import ONLINE_TABLE_BYTES, Resolver, RiderKeyring, TableBuilder
from backend._ridtable import rid_words
from busbell._token import INTERVAL_S, interval_of, rid_for_interval

_LOAD_CHUNK = 1_000_000


def _status(field: str, pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover


def _reset_peak() -> None:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def _children() -> list[int]:
    pids: list[int] = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children", encoding="ascii") as f:
            pids.extend(int(p) for p in f.read().split())
    return pids


def _load() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def _keyring(n: int, seed: int, builder: TableBuilder) -> RiderKeyring:
    rng = np.random.default_rng(seed)
    ring = RiderKeyring()
    for a in range(0, n, _LOAD_CHUNK):
        m = min(_LOAD_CHUNK, n - a)
        ids = [f"r-{x:024x}" for x in (int(v) for v in rng.integers(0, 2**63, m))]
        ids = [f"{i[:-7]}{a + k:07x}" for k, i in enumerate(ids)]  # unique
        ring.extend(ids, rng.bytes(16 * m), builder=builder)  # rid_keys derived in workers
    return ring


def _bare_aes(keys: bytes, interval: int) -> float:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    block = b"BBRID" + bytes(7) + interval.to_bytes(4, "big")
    aes, ecb = algorithms.AES, modes.ECB()  # noqa: S305 - one block per rid, token v1
    t0 = time.perf_counter()
    out = [
        Cipher(aes(keys[k : k + 16]), ecb).encryptor().update(block)
        for k in range(0, len(keys), 16)
    ]
    dt = time.perf_counter() - t0
    assert len(out) == len(keys) // 16
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.backend_resolve")
    ap.add_argument("--riders", type=int, default=1_000_000)
    ap.add_argument("--processes", type=int, default=0, help="worker processes (0: CPUs)")
    ap.add_argument("--lookups", type=int, default=1_000_000)
    ap.add_argument("--ratio-riders", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args(argv)
    out = sys.stdout.write
    out(f"load average {_load()}\n")

    # small scale, same run: the table build in this process against bare AES
    small = RiderKeyring()
    rng = np.random.default_rng(args.seed + 1)
    m = args.ratio_riders
    small.extend([f"s{k}" for k in range(m)], rng.bytes(16 * m))
    keys = b"".join([small.rid_key(k) for k in range(m)])
    i = interval_of(time.time())
    bare = min(_bare_aes(keys, i) for _ in range(3))
    t_small = []
    for _ in range(3):
        t0 = time.perf_counter()
        small.build_tables([i])
        t_small.append(time.perf_counter() - t0)
    t_vec = []
    karr = np.frombuffer(keys, dtype=np.uint8).reshape(-1, 16)
    for _ in range(3):
        t0 = time.perf_counter()
        rid_words(karr, [i])
        t_vec.append(time.perf_counter() - t0)
    out(
        f"small scale ({m:,} riders, one process): bare AES (one cryptography context per "
        f"rider) {bare / m * 1e6:.2f} us/rider; vectorised AES {min(t_vec) / m * 1e6:.2f} "
        f"us/rider; table build (AES + sort) {min(t_small) / m * 1e6:.2f} us/rider = "
        f"{bare / min(t_small):.2f}x bare AES\n"
    )
    del small, keys, karr

    builder = TableBuilder(args.processes, parallel_min_riders=0)
    rss0 = _status("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    ring = _keyring(args.riders, args.seed, builder)
    t_load = time.perf_counter() - t0
    rss1 = _status("VmRSS")
    parts = ", ".join(f"{k} {v / 2**20:,.0f}" for k, v in ring.memory().items())
    out(
        f"riders: {args.riders:,}; keyring loaded in {t_load:.1f} s (rid_key derived on "
        f"{builder.processes} worker process(es)); {ring.nbytes() / 2**20:,.0f} MB of keys and "
        f"ids ({parts} MB); RSS {rss0:.0f} -> {rss1:.0f} MB, peak {_status('VmHWM'):.0f} MB\n"
    )
    _reset_peak()
    # as the online settlement worker keeps them: i-1..i+1, then, once interval i+1 has
    # begun, i+2 built ahead in the background (i-1 dropped first to stay in budget)
    resolver = Resolver(
        ring,
        cache_intervals=16,
        builder=builder,
        max_table_bytes=ONLINE_TABLE_BYTES,
        table_tails=False,
    )
    stages = []
    for label, k in (("first", i), ("next", i + 1), ("third", i - 1), ("ahead", i + 2)):
        t0 = time.perf_counter()
        if label == "ahead":
            assert resolver.prepare_ahead((i + 1) * INTERVAL_S + 1.0) == [k]
        table_mb = resolver.table(k).nbytes() / 2**20  # no reference kept: evictable
        dt = time.perf_counter() - t0
        stages.append(
            f"{label} {dt:.1f} s (peak {_status('VmHWM'):.0f} MB, then RSS "
            f"{_status('VmRSS'):.0f} MB, {len(resolver._tables)} held)"
        )
    out(
        f"one interval's table on {builder.processes} worker process(es), "
        f"{table_mb:.0f} MB each (no tails, as online): " + "; ".join(stages) + "\n"
    )
    resolver.close()
    hwm_online = _status("VmHWM")

    # lookups: 90 % enrolled riders' rids, 10 % unknown
    n_hit = args.lookups * 9 // 10
    picks = np.random.default_rng(args.seed + 2).integers(0, len(ring), n_hit)
    kb = b"".join([ring.rid_key(k) for k in picks.tolist()])
    words = rid_words(np.frombuffer(kb, dtype=np.uint8).reshape(-1, 16), [i])[0]
    del kb
    blob = words.T.astype(">u4").tobytes()
    probes = [blob[12 * k : 12 * k + 12] for k in range(n_hit)]
    probes += [os.urandom(12) for _ in range(args.lookups - n_hit)]
    for k in range(0, n_hit, max(1, n_hit // 200)):  # the probes are real rids
        assert probes[k] == rid_for_interval(ring.rid_key(int(picks[k])), i)
    for label in ("without tails (online)", "with tails (settle)"):
        if label.startswith("with tails"):
            resolver._tables.clear()  # the online tables go first
            resolver = Resolver(ring, builder=builder, table_tails=True)
            t0 = time.perf_counter()
            table_mb = resolver.table(i).nbytes() / 2**20
            out(f"a table with tails: {time.perf_counter() - t0:.1f} s, {table_mb:.0f} MB\n")
        t0 = time.perf_counter()
        found = resolver.resolve_many(probes, i)
        t_bulk = time.perf_counter() - t0
        hits = sum(1 for f in found[:n_hit] if f is not None)
        wrong = sum(1 for k in range(n_hit) if found[k] != int(picks[k]))
        misses = sum(1 for f in found[n_hit:] if f is None)
        one = probes[:100_000]
        t0 = time.perf_counter()
        for p in one:
            resolver.resolve_index(p, i)
        t_one = time.perf_counter() - t0
        out(
            f"lookups, table {label}: {len(probes):,} rids in bulk in {t_bulk:.2f} s = "
            f"{len(probes) / t_bulk:,.0f} rids/s ({hits:,}/{n_hit:,} enrolled found, {wrong} "
            f"wrong, {misses:,}/{len(probes) - n_hit:,} unknown not found); one at a time "
            f"{len(one) / t_one:,.0f} rids/s\n"
        )
        del found
    workers = max((_status("VmHWM", pid) for pid in _children()), default=0.0)
    builder.close()
    out(
        f"peak RSS since the keyring was loaded: the online tables {hwm_online:.0f} MB; the "
        f"whole run {_status('VmHWM'):.0f} MB (the lookup probes and a table with tails "
        f"included), largest worker {workers:.0f} MB; "
        f"load average {_load()}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
