"""Benchmark: the settlement worker's rider change feed (``riders.changed_seq``).

Run: ``python -m benchmarks.backend_rider_feed --db postgres --riders 1000000`` (from the
repository root; ``--db postgres`` makes a scratch database on the server of
``BUSBELL_TEST_PG_HOST``/``_PORT``, default 127.0.0.1:5432, and drops it after). Enrols
N riders (ids like the rider API's, random token keys) in statements of 50,000 rows,
then prints:

- the cold pass: the first :meth:`backend._rider_feed.RiderFeed.refresh` of a fresh
  worker, which reads every rider and derives their ``rid_key`` on ``--processes``
  worker processes (what a settlement worker does once at start), its time and this
  process's peak RSS;
- a warm pass after ``--changes`` riders were revoked and as many enrolled: only those
  rows are read (what every settlement pass does);
- a pass with nothing changed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

import numpy as np
import sqlalchemy as sa

from backend._db import create_engine, migrate, riders
from backend._resolve import RiderKeyring, TableBuilder
from backend._rider_feed import RiderFeed
from benchmarks.backend_ingest import _postgres_url, drop_database
from benchmarks.backend_resolve import _load, _reset_peak, _status
from busbell import configure_logging

_INSERT_ROWS = 50_000


def _rows(first: int, n: int, rng: np.random.Generator) -> list[dict[str, object]]:
    keys = rng.bytes(16 * n)
    return [
        {
            "rider_id": f"r-{first + k:024x}",
            "token_key": keys[16 * k : 16 * k + 16].hex(),
            "status": "active",
            "enrolled_at": 1.0,
            "revoked_at": None,
            "kind": "fob",
            "category": "adult",
        }
        for k in range(n)
    ]


async def _run(url: str, n: int, changes: int, processes: int) -> None:
    out = sys.stdout.write
    engine = create_engine(url)
    try:
        await migrate(engine)
        rng = np.random.default_rng(7)
        t0 = time.perf_counter()
        for a in range(0, n, _INSERT_ROWS):
            async with engine.begin() as conn:
                await conn.execute(sa.insert(riders), _rows(a, min(_INSERT_ROWS, n - a), rng))
        out(
            f"enrolled {n:,} riders in {time.perf_counter() - t0:.1f} s "
            f"({_INSERT_ROWS:,}-row statements, change triggers on); load average {_load()}\n"
        )
        builder = TableBuilder(processes)
        ring = RiderKeyring()
        feed = RiderFeed(ring, ["adult", "youth", "child"], "adult", builder=builder)
        builder.derive_rid_keys(bytes(16))  # (workers not started by this: only for bulk)
        rss0 = _status("VmRSS")
        _reset_peak()
        t0 = time.perf_counter()
        cold = await feed.refresh(engine)
        dt = time.perf_counter() - t0
        out(
            f"cold pass: {cold.rows:,} rows read, {cold.added:,} riders added in {dt:.1f} s "
            f"({cold.rows / dt:,.0f} rows/s, rid_key derived on {builder.processes} "
            f"process(es)); keyring {ring.nbytes() / 2**20:,.0f} MB; RSS {rss0:.0f} -> "
            f"{_status('VmRSS'):.0f} MB, peak {_status('VmHWM'):.0f} MB\n"
        )
        victims = rng.choice(n, size=min(changes, n), replace=False).tolist()
        t0 = time.perf_counter()
        async with engine.begin() as conn:  # one statement: as an operator's bulk revoke
            await conn.execute(
                sa.update(riders)
                .where(riders.c.rider_id.in_([f"r-{k:024x}" for k in victims]))
                .values(status="revoked", revoked_at=100.0)
            )
        async with engine.begin() as conn:
            await conn.execute(sa.insert(riders), _rows(n, changes, rng))
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = await feed.refresh(engine)
        dt = time.perf_counter() - t0
        t0 = time.perf_counter()
        idle = await feed.refresh(engine)
        dt_idle = time.perf_counter() - t0
        revoked = sum(feed.revoked_at(ring.index_of(f"r-{k:024x}") or 0) == 100.0 for k in victims)
        out(
            f"warm pass after {len(victims):,} revocations and {changes:,} enrolments "
            f"(written in {t_write:.1f} s): {warm.rows:,} rows read, {warm.added:,} added, "
            f"{revoked:,} revocations seen, in {dt * 1000:.0f} ms; a pass with nothing "
            f"changed: {idle.rows} rows in {dt_idle * 1000:.1f} ms; load average {_load()}\n"
        )
        builder.close()
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.backend_rider_feed")
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--riders", type=int, default=1_000_000)
    ap.add_argument("--changes", type=int, default=1000)
    ap.add_argument("--processes", type=int, default=0, help="worker processes (0: CPUs)")
    args = ap.parse_args(argv)
    configure_logging("warning")
    sys.stdout.write(f"load average {_load()}; database {args.db}\n")
    if args.db == "postgres":
        url, name = _postgres_url()
        try:
            asyncio.run(_run(url, args.riders, args.changes, args.processes))
        finally:
            drop_database(name)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{os.path.join(tmp, 'ledger.db')}"
        asyncio.run(_run(url, args.riders, args.changes, args.processes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
