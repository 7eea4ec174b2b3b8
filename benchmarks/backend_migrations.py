"""How long the ledger migrations of ``fare_events`` take on a large ledger.

``python -m benchmarks.backend_migrations --db sqlite|postgres --rows N`` migrates a
scratch ledger to 0012, writes N ``fare_events`` rows (1,000 buses, ~1 KB of ``raw``
each, as :mod:`benchmarks.backend_ingest`'s ``--prefill``), then times each later
migration that rebuilds or re-indexes ``fare_events`` (0013: ``(bus_id, seq)`` primary
key, ``evidence`` as text; 0014: no ``event_id`` index) and the database's size after
each. Each migration runs in one transaction holding ``fare_events`` exclusively (see
``docs/operations.md``, "Migrations on a large ledger").
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from backend._db import create_engine, migrate
from benchmarks.backend_ingest import _postgres_url, _prefill, drop_database
from busbell import configure_logging

__all__ = ["main"]

_STEPS = ("0013", "0014")


async def _run(url: str, rows: int) -> list[tuple[str, float, float]]:
    engine = create_engine(url)
    try:
        await migrate(engine, "0012")
        t0 = time.perf_counter()
        await _prefill(engine, rows)
        out = [("prefill", time.perf_counter() - t0, await _size(engine))]
        for rev in _STEPS:
            t0 = time.perf_counter()
            await migrate(engine, rev)
            out.append((rev, time.perf_counter() - t0, await _size(engine)))
        return out
    finally:
        await engine.dispose()


async def _size(engine: AsyncEngine) -> float:
    """The ledger's size in MB (SQLite: its pages after a checkpoint; PostgreSQL: the
    database)."""
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":  # outside the transaction SQLAlchemy begins
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            await (await raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")).close()
            cur = await raw.execute(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
            )
            (size,) = await cur.fetchone()
            await cur.close()
        else:
            q = "SELECT pg_database_size(current_database())"
            size = (await conn.exec_driver_sql(q)).scalar()
    return float(size) / 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.backend_migrations",
        description="Time the fare_events migrations (0013, 0014) on a large ledger.",
    )
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--rows", type=int, default=500_000)
    args = parser.parse_args(argv)
    configure_logging("warning")
    drop: str | None = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.db == "sqlite":
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'ledger.db'}"
        else:
            url, drop = _postgres_url()
        try:
            steps = asyncio.run(_run(url, args.rows))
        finally:
            if drop is not None:
                drop_database(drop)
    with open("/proc/loadavg", encoding="ascii") as f:
        load = " ".join(f.read().split()[:3])
    sys.stdout.write(f"fare_events migrations ({args.db}), {args.rows} rows:\n")
    for name, seconds, size in steps:
        per_m = seconds / args.rows * 1e6
        sys.stdout.write(
            f"  {name}: {seconds:.1f} s ({per_m:.0f} s per million rows), {size:.0f} MB\n"
        )
    sys.stdout.write(f"  (load average {load})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
