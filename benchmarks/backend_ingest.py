"""Benchmark of verified fare ingest, and the signed-event factory tests use.

``python -m benchmarks.backend_ingest --db sqlite|postgres --events N [--buses B]
[--prefill M] [--verify runs|every]`` pre-signs N events over B buses (with
``--prefill``, first writes M ledger rows of other buses straight into ``fare_events``:
ingest into a ledger that is no longer small), then feeds them through
:class:`~backend._ingest.Ingestor` (decode, schema, Ed25519 verification: one per
hash-linked run of a transaction's records with ``runs``, the default as in ``[ingest]
verify``, or each record's with ``every``; chain check, idempotent insert, commit, ack
bookkeeping) in MQTT-sized batches, and prints events/s verified and stored per CPU
second of this process (the database server's CPU is not counted; for SQLite it is
in-process) and how many signatures were verified. MQTT is not involved.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from backend._db import create_engine, migrate
from backend._ingest import VERIFY_MODES, IngestCore, Ingestor
from backend._keys import register_device
from backend._record_check import Verify
from benchmarks._private_pg import private_postgres
from busbell import (
    DeviceKey,
    canonical_bytes,
    configure_logging,
    derive_event_id,
)
from tests.factories.fare_events import batch_payload, device_key_for, make_events

__all__ = ["bare_verify_cpu_rate", "main", "postmaster_pid", "tree_cpu_s"]


_PREFILL_CHUNK = 5000


async def _prefill(engine: Any, n: int) -> float:
    """Write ``n`` ``fare_events`` rows of 1,000 other buses (``PRE0000``...), each the
    ledger row of one genuine segment record with its bus, seq and derived event id
    changed (~1 KB of ``raw``), in transactions of 5,000; then a checkpoint. Returns
    the seconds it took."""
    import sqlalchemy as sa

    from busbell._fare_types import SEGMENT_COLUMNS, SegmentEvent, convert_event

    t0 = time.perf_counter()
    cols = (*SEGMENT_COLUMNS, "event_hash", "raw", "received_at", "worker_id")
    table = sa.table("fare_events", *(sa.column(c) for c in cols))
    per_bus = max(1, -(-n // 1000))
    (template,) = make_events("PRE0000", _PREFILL_KEY, 1)
    rec = convert_event(template)
    assert isinstance(rec, SegmentEvent)
    base = (*rec.ledger_row(), "0" * 64, canonical_bytes(template).decode(), 1.0, "prefill")
    done = 0
    while done < n:
        rows = []
        for k in range(done, min(n, done + _PREFILL_CHUNK)):
            bus, seq = f"PRE{k // per_bus:04d}", 1 + k % per_bus
            eid = derive_event_id(bus, seq, rec.rid, rec.start.t)
            rows.append(dict(zip(cols, (bus, seq, eid, *base[3:]), strict=True)))
        async with engine.begin() as conn:
            await conn.execute(sa.insert(table), rows)
        done += len(rows)
    if engine.dialect.name == "sqlite":
        async with engine.connect() as conn:  # outside the transaction SQLAlchemy begins
            raw_conn = (await conn.get_raw_connection()).driver_connection
            assert raw_conn is not None
            await (await raw_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")).close()
    else:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("CHECKPOINT")
    return time.perf_counter() - t0


_PREFILL_KEY = device_key_for("PREFILL")


def signatures_verified() -> float:
    """Ed25519 verifications ingest made in this process so far (its counter)."""
    return REGISTRY.get_sample_value("busbell_fare_signatures_verified_total") or 0.0


async def _run(
    url: str,
    n_events: int,
    n_buses: int,
    batch: int,
    prefill: int = 0,
    *,
    verify: Verify = "runs",
) -> dict[str, float]:
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
    prefill_s = await _prefill(engine, prefill) if prefill else 0.0
    async with engine.begin() as conn:
        for b in buses:
            await register_device(conn, b, keys[b].public)
    postmaster = None
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            data_dir = str((await conn.exec_driver_sql("SHOW data_directory")).scalar())
        postmaster = postmaster_pid(Path(data_dir))
    ing = Ingestor(engine, IngestCore(verify=verify), worker_id="bench")
    await ing.refresh_devices()
    bare_before = bare_verify_cpu_rate(chains, keys)
    total = 0
    pg0 = tree_cpu_s(postmaster) if postmaster else 0.0
    written0 = _written()
    sigs0 = signatures_verified()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    # One transaction per ~1000 events, as the worker batches MQTT messages.
    per_txn = max(1, 1000 // batch)
    # As the worker: acks noted after each commit, recorded by the gap sweep (every 0.5 s).
    next_tick = time.monotonic() + 0.5
    for i in range(0, len(messages), per_txn):
        res = await ing.ingest(messages[i : i + per_txn])
        ing.note_acks(res.acks)
        total += res.stored
        if time.monotonic() >= next_tick:
            next_tick = time.monotonic() + 0.5
            await ing.tick(time.time())
    await ing.record_acks()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    written = _written() - written0
    sigs = signatures_verified() - sigs0
    pg_cpu = tree_cpu_s(postmaster) - pg0 if postmaster else -1.0
    bare_after = bare_verify_cpu_rate(chains, keys)
    await engine.dispose()
    return {
        "events": total,
        "cpu_s": cpu,
        "wall_s": wall,
        "sign_s": sign_s,
        "bare_before": bare_before,
        "bare_after": bare_after,
        "pg_cpu": pg_cpu,
        "prefill_s": prefill_s,
        "written": written,
        "signatures": sigs,
    }


def _written() -> int:
    """Bytes this process has written (``/proc/self/io`` ``wchar``; SQLite's are here)."""
    with open("/proc/self/io", encoding="ascii") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0  # pragma: no cover - not Linux


def postmaster_pid(data_dir: Path) -> int | None:
    """The PostgreSQL server's process id, when it runs here and its files are readable."""
    try:
        return int((data_dir / "postmaster.pid").read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` (with its reaped children) and its live children."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        if pid == root:
            total += sum(int(x) for x in fields[11:15]) / tck  # utime stime cutime cstime
        elif ppid == root:
            total += (int(fields[11]) + int(fields[12])) / tck
    return total


def bare_verify_cpu_rate(
    chains: dict[str, list[dict[str, Any]]], keys: dict[str, DeviceKey], limit: int = 5000
) -> float:
    """Bare Ed25519 verifications per CPU-second of this process over the same events.

    The ceiling ingest is compared with: signed bytes and signatures are prepared first,
    only ``PublicKey.verify`` is timed (``time.process_time``, so other processes on a
    shared machine do not count).
    """
    work = []
    for bus, chain in chains.items():
        for ev in chain[: max(1, limit // len(chains))]:
            body = {k: v for k, v in ev.items() if k != "sig"}
            work.append((keys[bus].public, base64.b64decode(ev["sig"]), canonical_bytes(body)))
    cpu0 = time.process_time()
    for public, sig, msg in work:
        public.verify(sig, msg)
    return len(work) / (time.process_time() - cpu0)


def _pg_server() -> tuple[str, str]:
    host = os.environ.get("BUSBELL_TEST_PG_HOST", "127.0.0.1")
    return host, os.environ.get("BUSBELL_TEST_PG_PORT", "5432")


def _psql(sql: str, *, check: bool) -> None:
    """One statement through psql on the benchmark's PostgreSQL server."""
    host, port = _pg_server()
    subprocess.run(  # noqa: S603
        ["psql", "-h", host, "-p", port, "-U", "postgres", "-qc", sql],  # noqa: S607
        check=check,
    )


def _postgres_url() -> tuple[str, str]:
    """A scratch database on the benchmark's server: its URL and name."""
    host, port = _pg_server()
    name = f"busbell_bench_{uuid.uuid4().hex[:8]}"
    _psql(f'CREATE DATABASE "{name}"', check=True)
    return f"postgresql+asyncpg://postgres@{host}:{port}/{name}", name


def drop_database(name: str) -> None:
    """Drop a scratch database made by :func:`_postgres_url` (errors ignored)."""
    _psql(f'DROP DATABASE "{name}"', check=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.backend_ingest",
        description="Benchmark verified fare ingest (decode, verify, chain, store).",
        epilog="example: python -m benchmarks.backend_ingest --db sqlite --events 20000",
    )
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--buses", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50, help="events per MQTT message")
    parser.add_argument("--url", help="use this database URL instead of a scratch one")
    parser.add_argument(
        "--prefill",
        type=int,
        default=0,
        metavar="M",
        help="first write M ledger rows of other buses (not timed): a large ledger",
    )
    parser.add_argument(
        "--private-pg",
        action="store_true",
        help="with --db postgres: a PostgreSQL cluster of the benchmark's own "
        "(benchmarks/_private_pg.py)",
    )
    parser.add_argument(
        "--verify",
        choices=VERIFY_MODES,
        default="runs",
        help="[ingest] verify: one signature per hash-linked run (default) or per record",
    )
    args = parser.parse_args(argv)
    configure_logging("warning")
    drop: str | None = None
    with contextlib.ExitStack() as stack:
        if args.private_pg and args.db == "postgres" and not args.url:
            stack.enter_context(private_postgres())
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        if args.url:
            url = args.url
        elif args.db == "sqlite":
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        else:
            url, drop = _postgres_url()
        try:
            r = asyncio.run(
                _run(url, args.events, args.buses, args.batch, args.prefill, verify=args.verify)
            )
        finally:
            if drop is not None:
                drop_database(drop)
    per_cpu = r["events"] / r["cpu_s"]
    bare = (r["bare_before"] + r["bare_after"]) / 2
    with open("/proc/loadavg", encoding="ascii") as f:
        load = " ".join(f.read().split()[:3])
    sys.stdout.write(
        f"backend ingest ({args.db}, verify={args.verify}): {int(r['events'])} events stored"
        + (f" into {args.prefill} rows already there" if args.prefill else "")
        + f", {int(r['signatures'])} signatures verified, "
        f"{r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU of this process\n"
        f"  {r['events'] / r['wall_s']:.0f} events/s wall, "
        f"{per_cpu:.0f} events/s per CPU-second (verified and stored)\n"
        f"  bare Ed25519 verify of the same events, same process: {bare:.0f}/CPU-s "
        f"(before {r['bare_before']:.0f}, after {r['bare_after']:.0f})\n"
        f"  ratio ingest / bare verify (per CPU-second): {per_cpu / bare:.2f}\n"
        + (
            f"  PostgreSQL server CPU {r['pg_cpu']:.2f} s = "
            f"{r['pg_cpu'] / r['events'] * 1e6:.1f} us per event (not in the ratio)\n"
            if r["pg_cpu"] >= 0
            else ""
        )
        + (
            f"  written by this process: {r['written'] / r['events'] / 1024:.1f} KiB per event"
            " (the ledger's WAL and pages)\n"
            if args.db == "sqlite"
            else ""
        )
        + f"  (pre-signing took {r['sign_s']:.1f} s"
        + (f", prefill {r['prefill_s']:.1f} s" if args.prefill else "")
        + f"; load average {load})\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
