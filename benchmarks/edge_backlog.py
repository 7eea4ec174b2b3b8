"""Benchmark: a 100,000-event backlog drains to a local broker and an acking consumer.

Run: ``python -m benchmarks.edge_backlog [--events N] [--host H] [--port P]``. Prints the
time to record the backlog and the time until the backend acknowledged every event.
Also provides :func:`synthetic_draft`, the synthetic segments tests and benchmarks use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from busbell import DeviceKey, Topics, configure_logging
from busbell._mqtt import MqttSession, MqttSettings
from edge._events import EventBuilder
from tests.factories.drafts import synthetic_draft

__all__ = ["main"]


async def _consumer(settings: MqttSettings, topics: Topics, bus: str, total: int) -> None:
    async with MqttSession(settings, f"bench-backend-{uuid.uuid4().hex[:8]}") as s:
        await s.subscribe([topics.fares(bus)])
        upto = 0
        async for m in s.messages():
            body = json.loads(m.payload)
            seqs = [e["seq"] for e in body["events"]]
            if seqs and seqs[0] == upto + 1:
                upto = seqs[-1]
                await s.publish(topics.fares_ack(bus), json.dumps({"upto_seq": upto}), qos=1)
            if upto >= total:
                return


def _start_backend(tmp: Path, settings: MqttSettings, bus: str) -> subprocess.Popen[bytes]:
    """Start the real backend (``busbell backend run``: ingest on SQLite) for the bus."""
    import socket

    key = DeviceKey.from_seed(bytes(32))
    (tmp / "DEVICES.csv").write_text(f"bus_id,public_key\n{bus},{key.public.hex}\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        api_port = sock.getsockname()[1]
    cfg = tmp / "backend.toml"
    cfg.write_text(
        f'[database]\nurl = "sqlite+aiosqlite:///{tmp / "backend.db"}"\n'
        f'[mqtt]\nhost = "{settings.host}"\nport = {settings.port}\nprefix = "{settings.prefix}"\n'
        f'client_id = "bench-backend-{uuid.uuid4().hex[:6]}"\n'
        f'[files]\ndevices = "{tmp / "DEVICES.csv"}"\n[api]\nport = {api_port}\n'
        "[settlement]\nenabled = false\n"
    )
    log = tmp / "backend.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "busbell.cli", "backend", "run", "--config", str(cfg)],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while b'"fare_ingest_subscribed"' not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"backend did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


async def _main(n: int, host: str, port: int, with_backend: bool = False) -> None:
    from edge._store import FareStore
    from edge._uplink import FareUploader, MqttLink, UplinkSettings

    bus = "bench-bus"
    prefix = f"bench-{uuid.uuid4().hex[:8]}/busbell/v1"
    settings = MqttSettings(host=host, port=port, prefix=prefix)
    topics = Topics(prefix)
    with tempfile.TemporaryDirectory() as tmp:
        store = await FareStore.open(
            Path(tmp) / "fares.db", EventBuilder(bus, DeviceKey.from_seed(bytes(32)))
        )
        t = time.perf_counter()
        for lo in range(0, n, 5000):
            await store.append_many(synthetic_draft(i) for i in range(lo, min(n, lo + 5000)))
        t_record = time.perf_counter() - t
        sys.stdout.write(f"recorded {n} events in {t_record:.1f} s\n")
        uploader = FareUploader(store, bus, topics, UplinkSettings())
        link = MqttLink(settings, bus, topics, client_id=f"bench-edge-{uuid.uuid4().hex[:8]}")
        uploader.attach(link)
        backend = _start_backend(Path(tmp), settings, bus) if with_backend else None
        consumer = asyncio.create_task(
            asyncio.sleep(0) if backend else _consumer(settings, topics, bus, n)
        )
        await asyncio.sleep(0.5)
        t = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            tl = tg.create_task(link.run())
            tu = tg.create_task(uploader.run(link))
            await consumer
            while await store.backlog():  # noqa: ASYNC110 - polls another process's effect
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - t
            tl.cancel()
            tu.cancel()
        await store.close()
        if backend is not None:
            backend.terminate()
            backend.wait(30)
    who = "the real backend (busbell backend run, SQLite)" if with_backend else "an acking consumer"
    sys.stdout.write(f"acked by {who}\n")
    sys.stdout.write(
        f"drained {n} events in {elapsed:.1f} s ({n / elapsed:.0f} events/s, "
        f"{uploader.stats.batches_sent} batches)\n"
    )


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.edge_backlog")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument(
        "--with-backend",
        action="store_true",
        help="ack from the real backend (busbell backend run: verify, store, ack) instead",
    )
    a = p.parse_args()
    configure_logging("warning")
    asyncio.run(_main(a.events, a.host, a.port, a.with_backend))


if __name__ == "__main__":
    main()
