"""Benchmark of verified fare ingest, and the signed-event factory tests use.

``python -m backend._bench_ingest --db sqlite|postgres --events N [--buses B]``
pre-signs N events over B buses, then feeds them through :class:`~backend._ingest.Ingestor`
(decode, schema, Ed25519 verification, chain check, idempotent insert, commit, ack
bookkeeping) in MQTT-sized batches, and prints events/s verified and stored per CPU
second of this process (the database server's CPU is not counted; for SQLite it is
in-process). MQTT is not involved.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backend._db import create_engine, migrate
from backend._ingest import IngestCore, Ingestor
from backend._keys import register_device
from busbell import (
    GENESIS_PREV,
    DeviceKey,
    canonical_bytes,
    configure_logging,
    derive_event_id,
    event_hash,
    sign_event,
)

__all__ = ["batch_payload", "device_key_for", "make_events"]


def device_key_for(bus_id: str) -> DeviceKey:
    """A deterministic device key per bus (tests and benchmarks only)."""
    return DeviceKey.from_seed(hashlib.sha256(b"busbell-test-device:" + bus_id.encode()).digest())


def make_events(
    bus_id: str,
    key: DeviceKey,
    n: int,
    *,
    start_seq: int = 1,
    prev: str = GENESIS_PREV,
    t0: float = 1_760_000_000.0,
) -> list[dict[str, Any]]:
    """``n`` signed, chained v1 segment events of one bus starting at ``start_seq``."""
    out: list[dict[str, Any]] = []
    for k in range(n):
        seq = start_seq + k
        t = t0 + seq * 90.0
        rid = hashlib.sha256(f"{bus_id}/{seq}".encode()).hexdigest()[:24]
        ev = {
            "v": 1,
            "type": "segment",
            "bus_id": bus_id,
            "seq": seq,
            "event_id": derive_event_id(bus_id, seq, rid, t),
            "prev": prev,
            "rid": rid,
            "interval": int(t // 600),
            "route_id": "R100",
            "trip_id": f"T{seq // 40}",
            "start": {"t": t, "stop_id": f"S{seq % 30}", "cause": "boarded"},
            "end": {"t": t + 60.0, "stop_id": f"S{(seq + 3) % 30}", "cause": "alighted"},
            "distance_m": 1234.5,
            "proof": {"first": "21" + "ab" * 23, "last": "21" + "cd" * 23},
            "evidence": {"adv": 17, "rssi_max": -61},
        }
        signed = sign_event(ev, key)
        prev = event_hash(signed)
        out.append(signed)
    return out


def batch_payload(bus_id: str, events: Sequence[dict[str, Any]]) -> bytes:
    """One MQTT payload of a batch ``{"bus_id": ..., "events": [...]}``."""
    return canonical_bytes({"bus_id": bus_id, "events": list(events)})


async def _run(url: str, n_events: int, n_buses: int, batch: int) -> dict[str, float]:
    per_bus = max(1, n_events // n_buses)
    t0 = time.perf_counter()
    buses = [f"BENCH{b:04d}" for b in range(n_buses)]
    keys = {b: device_key_for(b) for b in buses}
    chains = {b: make_events(b, keys[b], per_bus) for b in buses}
    sign_s = time.perf_counter() - t0
    # MQTT-sized messages: `batch` events of one bus each, buses interleaved.
    messages: list[tuple[str, bytes]] = []
    for i in range(0, per_bus, batch):
        for b in buses:
            messages.append((b, batch_payload(b, chains[b][i : i + batch])))
    engine = create_engine(url)
    await migrate(engine)
    async with engine.begin() as conn:
        for b in buses:
            await register_device(conn, b, keys[b].public)
    ing = Ingestor(engine, IngestCore(), worker_id="bench")
    await ing.refresh_devices()
    total = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    # One transaction per ~1000 events, as the worker batches MQTT messages.
    per_txn = max(1, 1000 // batch)
    for i in range(0, len(messages), per_txn):
        res = await ing.ingest(messages[i : i + per_txn])
        await ing.record_acks(res.acks)
        total += res.stored
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await engine.dispose()
    return {"events": total, "cpu_s": cpu, "wall_s": wall, "sign_s": sign_s}


def _postgres_url() -> tuple[str, str]:
    host = os.environ.get("BUSBELL_TEST_PG_HOST", "127.0.0.1")
    port = os.environ.get("BUSBELL_TEST_PG_PORT", "5432")
    name = f"busbell_bench_{uuid.uuid4().hex[:8]}"
    subprocess.run(  # noqa: S603
        ["psql", "-h", host, "-p", port, "-U", "postgres", "-qc", f'CREATE DATABASE "{name}"'],  # noqa: S607
        check=True,
    )
    return f"postgresql+asyncpg://postgres@{host}:{port}/{name}", name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backend._bench_ingest",
        description="Benchmark verified fare ingest (decode, verify, chain, store).",
        epilog="example: python -m backend._bench_ingest --db sqlite --events 20000",
    )
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--buses", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50, help="events per MQTT message")
    parser.add_argument("--url", help="use this database URL instead of a scratch one")
    args = parser.parse_args(argv)
    configure_logging("warning")
    drop: str | None = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            url = args.url
        elif args.db == "sqlite":
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        else:
            url, drop = _postgres_url()
        try:
            r = asyncio.run(_run(url, args.events, args.buses, args.batch))
        finally:
            if drop is not None:
                subprocess.run(  # noqa: S603
                    ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f'DROP DATABASE "{drop}"'],  # noqa: S607
                    check=False,
                )
    sys.stdout.write(
        f"backend ingest ({args.db}): {int(r['events'])} events stored, "
        f"{r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU of this process\n"
        f"  {r['events'] / r['wall_s']:.0f} events/s wall, "
        f"{r['events'] / r['cpu_s']:.0f} events/s per CPU-second (verified and stored)\n"
        f"  (pre-signing took {r['sign_s']:.1f} s)\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
