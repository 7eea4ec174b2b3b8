"""Benchmark of verified fare ingest, and the signed-event factory tests use.

``python -m benchmarks.backend_ingest --db sqlite|postgres --events N [--buses B]``
pre-signs N events over B buses, then feeds them through :class:`~backend._ingest.Ingestor`
(decode, schema, Ed25519 verification, chain check, idempotent insert, commit, ack
bookkeeping) in MQTT-sized batches, and prints events/s verified and stored per CPU
second of this process (the database server's CPU is not counted; for SQLite it is
in-process). MQTT is not involved.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
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
    Topics,
    UplinkError,
    canonical_bytes,
    configure_logging,
    derive_event_id,
    derive_missed_event_id,
    event_hash,
    sign_event,
)
from busbell._mqtt import MqttSession, MqttSettings

__all__ = ["EdgeFleet", "batch_payload", "device_key_for", "make_events"]


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
    missed_every: int = 0,
) -> list[dict[str, Any]]:
    """``n`` signed, chained v1 chain records of one bus starting at ``start_seq``.

    Segments, except that every ``missed_every``-th seq (when > 0) is a ``missed``
    record (the bus passed a stop with a live wait).
    """
    out: list[dict[str, Any]] = []
    for k in range(n):
        seq = start_seq + k
        t = t0 + seq * 90.0
        rid = hashlib.sha256(f"{bus_id}/{seq}".encode()).hexdigest()[:24]
        ev: dict[str, Any]
        if missed_every > 0 and seq % missed_every == 0:
            request_id = f"q-{bus_id}-{seq}"
            stop = f"S{seq % 30}"
            ev = {
                "v": 1,
                "type": "missed",
                "bus_id": bus_id,
                "seq": seq,
                "event_id": derive_missed_event_id(bus_id, seq, request_id, t),
                "prev": prev,
                "request_id": request_id,
                "route_id": "R100",
                "trip_id": f"T{seq // 40}",
                "stop_id": stop,
                "wait": {
                    "request_id": request_id,
                    "route_id": "R100",
                    "stop_id": stop,
                    "t": t - 300.0,
                    "expires_t": t + 600.0,
                    "source": "app",
                    "assist": False,
                },
                "passed": {
                    "t": t,
                    "lat": 37.5,
                    "lon": 127.0,
                    "speed_mps": 8.5,
                    "distance_m": 12.0,
                },
                "doors_opened": False,
            }
            signed = sign_event(ev, key)
            prev = event_hash(signed)
            out.append(signed)
            continue
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


class EdgeFleet:
    """Simulated edges uploading pre-signed chains like the real uploader does.

    Keeps every event until acked; publishes batches with a bounded window ahead of
    the ack; answers ``fares/resend``; after ``retry_s`` without ack progress re-sends
    everything after the last ack (go-back-N). Acks are taken as a monotonic maximum.
    One MQTT session serves all buses (the backend cannot tell the difference).
    """

    def __init__(
        self,
        settings: MqttSettings,
        chains: dict[str, list[dict[str, Any]]],
        *,
        batch: int = 50,
        window: int = 500,
        retry_s: float = 3.0,
        client_id: str = "busbell-test-edges",
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.prefix)
        self.chains = chains
        self.batch = batch
        self.window = window
        self.retry_s = retry_s
        self.client_id = client_id
        self.acked = dict.fromkeys(chains, 0)
        self.sent = dict.fromkeys(chains, 0)
        self.resend_requests = 0
        self.retries = 0
        self._progress = dict.fromkeys(chains, 0.0)
        self._wake = asyncio.Event()

    def acked_total(self) -> int:
        """Events acknowledged over all buses."""
        return sum(self.acked.values())

    def done(self) -> bool:
        """Whether every bus's last event is acknowledged."""
        return all(self.acked[b] >= len(c) for b, c in self.chains.items())

    async def _send(self, session: MqttSession, bus: str, lo: int, hi: int) -> None:
        # Events lo..hi (1-based, inclusive) in batches.
        chain = self.chains[bus]
        for start in range(lo, hi + 1, self.batch):
            part = chain[start - 1 : min(hi, start + self.batch - 1)]
            if part:
                await session.publish(self.topics.fares(bus), batch_payload(bus, part), qos=1)

    async def _listen(self, session: MqttSession, pending: list[tuple[str, int, int]]) -> None:
        async for msg in session.messages():
            parsed = self.topics.parse(msg.topic)
            if parsed is None or not msg.payload:
                continue
            bus = parsed.ids["bus"]
            body = json.loads(msg.payload)
            if parsed.kind == "fares_ack" and body["upto_seq"] > self.acked[bus]:
                self.acked[bus] = body["upto_seq"]
                self._progress[bus] = time.monotonic()
            elif parsed.kind == "fares_resend":
                self.resend_requests += 1
                pending.append((bus, body["from_seq"], body["to_seq"]))
            self._wake.set()

    async def run(self, timeout_s: float = 120.0) -> None:
        """Upload until every bus is fully acked.

        Raises:
            TimeoutError: when that does not happen within ``timeout_s``.
        """
        pending: list[tuple[str, int, int]] = []
        async with MqttSession(self.settings, self.client_id, clean_start=True) as session:
            await session.subscribe(
                [
                    f"{self.topics.prefix}/buses/+/fares/ack",
                    f"{self.topics.prefix}/buses/+/fares/resend",
                ]
            )
            listener = asyncio.create_task(self._listen(session, pending))
            try:
                async with asyncio.timeout(timeout_s):
                    now = time.monotonic()
                    self._progress = dict.fromkeys(self.chains, now)
                    while not self.done():
                        if listener.done():
                            listener.result()
                        await self._step(session, pending)
                        self._wake.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), 0.1)
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError, UplinkError):
                    await listener

    async def _step(self, session: MqttSession, pending: list[tuple[str, int, int]]) -> None:
        # Each bus is its own edge: their uploads go out concurrently (one bus's batches
        # in order), not one publish round trip after another for the whole fleet.
        sends = []
        while pending:
            bus, lo, hi = pending.pop(0)
            sends.append(self._send(session, bus, max(lo, self.acked[bus] + 1), hi))
        now = time.monotonic()
        for bus, chain in self.chains.items():
            if self.acked[bus] >= len(chain):
                continue
            if now - self._progress[bus] > self.retry_s:
                self.retries += 1
                self._progress[bus] = now
                self.sent[bus] = self.acked[bus]  # go back: re-send everything unacked
            lo = self.sent[bus] + 1
            hi = min(len(chain), self.acked[bus] + self.window)
            if hi >= lo:
                sends.append(self._send(session, bus, lo, hi))
                self.sent[bus] = hi
        await asyncio.gather(*sends)


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
    bare_before = bare_verify_cpu_rate(chains, keys)
    total = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    # One transaction per ~1000 events, as the worker batches MQTT messages.
    per_txn = max(1, 1000 // batch)
    for i in range(0, len(messages), per_txn):
        res = await ing.ingest(messages[i : i + per_txn])
        await ing.record_acks(res.acks)
        total += res.stored
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    bare_after = bare_verify_cpu_rate(chains, keys)
    await engine.dispose()
    return {
        "events": total,
        "cpu_s": cpu,
        "wall_s": wall,
        "sign_s": sign_s,
        "bare_before": bare_before,
        "bare_after": bare_after,
    }


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
        prog="python -m benchmarks.backend_ingest",
        description="Benchmark verified fare ingest (decode, verify, chain, store).",
        epilog="example: python -m benchmarks.backend_ingest --db sqlite --events 20000",
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
                    [  # noqa: S607
                        "psql",
                        "-h",
                        os.environ.get("BUSBELL_TEST_PG_HOST", "127.0.0.1"),
                        "-p",
                        os.environ.get("BUSBELL_TEST_PG_PORT", "5432"),
                        "-U",
                        "postgres",
                        "-qc",
                        f'DROP DATABASE "{drop}"',
                    ],
                    check=False,
                )
    per_cpu = r["events"] / r["cpu_s"]
    bare = (r["bare_before"] + r["bare_after"]) / 2
    with open("/proc/loadavg", encoding="ascii") as f:
        load = " ".join(f.read().split()[:3])
    sys.stdout.write(
        f"backend ingest ({args.db}): {int(r['events'])} events stored, "
        f"{r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU of this process\n"
        f"  {r['events'] / r['wall_s']:.0f} events/s wall, "
        f"{per_cpu:.0f} events/s per CPU-second (verified and stored)\n"
        f"  bare Ed25519 verify of the same events, same process: {bare:.0f}/CPU-s "
        f"(before {r['bare_before']:.0f}, after {r['bare_after']:.0f})\n"
        f"  ratio ingest / bare verify (per CPU-second): {per_cpu / bare:.2f}\n"
        f"  (pre-signing took {r['sign_s']:.1f} s; load average {load})\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
