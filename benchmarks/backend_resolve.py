"""Benchmark: build one interval's rid lookup table for N enrolled riders.

Run: ``python -m benchmarks.backend_resolve --riders 1000000``. Prints the build time, the
resident memory (RSS) before and after, and a lookup rate. Keys are random (the keyring
stores derived keys; HKDF at enrolment is not part of the table build).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from backend._resolve import Resolver, RiderKeyring
from busbell._token import interval_of, rid_for_interval


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.backend_resolve")
    ap.add_argument("--riders", type=int, default=100_000)
    ap.add_argument("--lookups", type=int, default=100_000)
    args = ap.parse_args(argv)
    rss0 = _rss_mb()
    ring = RiderKeyring()
    t0 = time.perf_counter()
    rnd = os.urandom(48 * args.riders)
    for n in range(args.riders):
        ring.add_derived(f"r{n:07d}", rnd[48 * n : 48 * n + 16], rnd[48 * n + 16 : 48 * n + 48])
    del rnd
    t_load = time.perf_counter() - t0
    rss1 = _rss_mb()
    resolver = Resolver(ring)
    i = interval_of(time.time())
    t0 = time.perf_counter()
    table = resolver.table(i)
    t_build = time.perf_counter() - t0
    rss2 = _rss_mb()
    step = max(1, args.riders // max(1, args.lookups))
    probes = [rid_for_interval(ring.keys(k).rid_key, i).hex() for k in range(0, args.riders, step)]
    t0 = time.perf_counter()
    hits = sum(1 for p in probes if resolver.resolve(p, i) is not None)
    t_look = time.perf_counter() - t0
    t0 = time.perf_counter()
    resolver.prepare(i * 600 + 300)
    t_three = time.perf_counter() - t0
    rss3 = _rss_mb()
    out = sys.stdout.write
    out(f"riders: {args.riders:,}  (table entries {len(table):,})\n")
    out(f"keyring load: {t_load:.2f} s, RSS {rss0:.0f} -> {rss1:.0f} MB\n")
    out(
        f"one interval table: {t_build:.2f} s ({t_build / args.riders * 1e6:.2f} us/rider), "
        f"RSS {rss2:.0f} MB (table {rss2 - rss1:.0f} MB)\n"
    )
    out(
        f"lookups: {hits:,}/{len(probes):,} hit, {t_look / max(1, len(probes)) * 1e6:.2f} us each\n"
    )
    out(f"i-1 and i+1 added (one 2-block AES call per rider): {t_three:.2f} s, RSS {rss3:.0f} MB\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
