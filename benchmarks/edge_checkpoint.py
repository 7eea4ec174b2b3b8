"""The classifier checkpoint with thousands of tokens in range: its size and its cost.

``python -m benchmarks.edge_checkpoint [--tokens 3000]`` replays the crowd of
``benchmarks.edge_classifier --crowd`` (every rider boards at stop 0, a rid boundary
comes 60 s after the bus leaves it, so every token rotates within seconds) through an
:class:`edge.EdgePipeline` and, at three moments (10 s before the boundary, all riders
on board; 25 s after it, old and new rids both held; 85 s after it), measures what the daemon does
(``edge/_checkpoint.py``): ``EdgePipeline.snapshot()`` (pickled state, taken on the event
loop), ``FareStore.save_checkpoint`` into a file-backed store (SQLite WAL,
``synchronous=FULL``, as on the bus), and ``load_checkpoint`` + ``restore`` into a fresh
pipeline. The bare ceilings timed in the same run are ``sqlite3`` writing a blob of the
same size into the same kind of database (WAL, ``synchronous=FULL``, one transaction) and,
for the snapshot, ``pickle.dumps`` of as many plain tuples of floats as the rid records
held have slots (the least pickling that many values can cost).
The databases go to a temporary directory under ``$BENCH_DIR`` (default: the system's;
use a directory on the disk the bus would use, not a tmpfs, for fsync to count).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.edge_classifier import BOUNDARY_T, bench_tokens, crowd_plan
from busbell import AdvRecord, DeviceKey, load_gtfs
from edge._classifier import _Rid
from edge._events import EventBuilder
from edge._pipeline import EdgePipeline
from edge._store import FareStore
from tests.factories.edge_world import synth_trace, verifier_for, write_gtfs

__all__ = ["main"]


def _times(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _bare_blob_write(path: Path, blob: bytes, n: int) -> list[float]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS b (id INTEGER PRIMARY KEY, t REAL, state BLOB)")

    def write() -> None:
        db.execute("INSERT OR REPLACE INTO b (id, t, state) VALUES (1, 0.0, ?)", (blob,))

    try:
        return _times(write, n)
    finally:
        db.close()


def _ms(xs: Sequence[float]) -> str:
    return f"median {statistics.median(xs) * 1e3:.1f} ms, max {max(xs) * 1e3:.1f} ms"


async def _measure(label: str, pipe: EdgePipeline, feed_dir: Path, tmp: Path, repeat: int) -> None:
    gtfs = load_gtfs(feed_dir)
    clf = pipe.classifier
    in_range = clf.tokens_in_range()
    snaps = _times(pipe.snapshot, repeat)
    blob = pipe.snapshot()
    # bare ceiling of the snapshot: pickling as many tuples of as many floats as the rid
    # records have slots (the least a snapshot of that many rids can cost in pickle)
    width = len(_Rid.__slots__)
    plain = [tuple(float(i * width + k) for k in range(width)) for i in range(len(clf._rids))]
    bare_snaps = _times(lambda: pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL), repeat)
    store_path = tmp / f"store-{label}.sqlite"
    store = await FareStore.open(
        store_path, EventBuilder("BENCH", DeviceKey.from_seed(bytes(32))), clock=lambda: pipe.t
    )
    try:
        writes = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            await store.save_checkpoint(blob, pipe.t)
            writes.append(time.perf_counter() - t0)
        loads = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            found = await store.load_checkpoint()
            assert found is not None
            fresh = EdgePipeline("BENCH", gtfs, pipe.verifier, pipe.params)
            fresh.restore(found[1])
            loads.append(time.perf_counter() - t0)
        assert fresh.on_board() == pipe.on_board()
    finally:
        await store.close()
    bare = _bare_blob_write(tmp / f"bare-{label}.sqlite", blob, repeat)
    sys.stdout.write(
        f"{label}: t = boundary {pipe.t - BOUNDARY_T:+.0f} s, {in_range:,} tokens in range, "
        f"{pipe.on_board():,} on board, {len(clf._rids):,} rids held, "
        f"{len(clf._olds):,} in the rotation pool\n"
        f"  checkpoint {len(blob):,} bytes ({len(blob) / max(len(clf._rids), 1):.0f} B/rid)\n"
        f"  snapshot (pickle, on the event loop): {_ms(snaps)}; bare pickle of "
        f"{len(plain):,} tuples of {width} floats, same run: {_ms(bare_snaps)}; ratio "
        f"{statistics.median(snaps) / statistics.median(bare_snaps):.2f}x\n"
        f"  save_checkpoint (SQLite WAL, synchronous=FULL): {_ms(writes)}; bare sqlite3 blob "
        f"write of the same size, same run: {_ms(bare)}; ratio "
        f"{statistics.median(writes) / statistics.median(bare):.2f}x\n"
        f"  snapshot + save (one periodic checkpoint): "
        f"{(statistics.median(snaps) + statistics.median(writes)) * 1e3:.1f} ms median\n"
        f"  load_checkpoint + restore into a fresh pipeline: {_ms(loads)}\n"
    )


async def _bench(n_tokens: int, seed: int, repeat: int) -> None:
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="busbell-ckpt-", dir=os.environ.get("BENCH_DIR")))
    plan = crowd_plan(60.0)
    feed_dir = write_gtfs(tmp / "gtfs", plan.n_stops, plan.spacing_m)
    tokens = bench_tokens(n_tokens, rng, plan, crowd=True)
    t0 = time.perf_counter()
    recs, _ = synth_trace(plan, tokens, seed=seed, until=BOUNDARY_T + 90.0)
    n_adv = sum(isinstance(r, AdvRecord) for r in recs)
    sys.stdout.write(
        f"synthetic crowd trace: {len(recs):,} records ({n_adv:,} adverts), {n_tokens} tokens, "
        f"generated in {time.perf_counter() - t0:.1f} s; {repeat} repetitions per figure\n"
    )
    pipe = EdgePipeline("BENCH", load_gtfs(feed_dir), verifier_for(recs))
    marks = [
        ("10 s before the rid boundary", BOUNDARY_T - 10.0),
        ("25 s after it", BOUNDARY_T + 25.0),
        ("85 s after it", BOUNDARY_T + 85.0),
    ]
    for r in recs:
        while marks and r.t >= marks[0][1]:
            await _measure(marks.pop(0)[0], pipe, feed_dir, tmp, repeat)
        pipe.feed(r)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.edge_checkpoint",
        description="Size and cost of the classifier checkpoint with a crowd in range.",
        epilog="example: python -m benchmarks.edge_checkpoint --tokens 3000",
    )
    ap.add_argument("--tokens", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=10, help="repetitions per figure")
    args = ap.parse_args(argv)
    from busbell import configure_logging

    configure_logging("warning")
    asyncio.run(_bench(args.tokens, args.seed, args.repeat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
