"""Ingest scale-out benchmark: N worker processes on a shared subscription, real MQTT.

For each worker count: a fresh PostgreSQL database, N ``run_ingest`` processes with
``[ingest] shared_subscription = true`` on the local mosquitto (round-robin ``$share``),
and :class:`benchmarks.backend_ingest.EdgeFleet` uploading pre-signed chains until every bus
is acknowledged. Prints wall time, events/s, the workers' CPU (from ``/proc``), the
re-send requests and edge retries, and bare Ed25519 verification per CPU-second in this
process for scale.

Run: ``python -m benchmarks.backend_scaleout --workers 1,2 --events 20000 --buses 100``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backend._db import create_engine, migrate
from backend._keys import register_device
from benchmarks.backend_ingest import _postgres_url, bare_verify_cpu_rate, drop_database
from busbell._logging import configure_logging
from busbell._mqtt import MqttSettings
from tests.factories.fare_events import EdgeFleet, device_key_for, make_events

__all__ = ["main"]

_WORKER = """
import asyncio, signal
from busbell import configure_logging, load_config
from backend.config import BackendConfig
from backend._ingest import run_ingest

async def main() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await run_ingest(load_config(BackendConfig), stop=stop)

configure_logging("info", json=True)
asyncio.run(main())
"""


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _postmaster(data_dir: Path) -> int | None:
    """The PostgreSQL server's process id, when it runs here and its files are readable."""
    try:
        return int((data_dir / "postmaster.pid").read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _tree_cpu_s(root: int) -> float:
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


def _load() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


async def _one(n_workers: int, n_events: int, n_buses: int, host: str, port: int) -> str:
    url, name = _postgres_url()
    prefix = f"bench-{name[-8:]}/busbell/v1"
    per_bus = n_events // n_buses
    buses = [f"X{i:04d}" for i in range(n_buses)]
    keys = {b: device_key_for(b) for b in buses}
    chains = {b: make_events(b, keys[b], per_bus) for b in buses}
    engine = create_engine(url)
    await migrate(engine)
    async with engine.begin() as conn:
        for b in buses:
            await register_device(conn, b, keys[b].public)
        data_dir = str((await conn.exec_driver_sql("SHOW data_directory")).scalar())
    await engine.dispose()
    postmaster = _postmaster(Path(data_dir))
    tmp = Path(tempfile.mkdtemp(prefix="busbell-scaleout-"))
    procs, logs = [], []
    for i in range(n_workers):
        log = tmp / f"w{i}.log"
        logs.append(log)
        env = dict(
            os.environ,
            BUSBELL_DATABASE__URL=url,
            BUSBELL_MQTT__HOST=host,
            BUSBELL_MQTT__PORT=str(port),
            BUSBELL_MQTT__PREFIX=prefix,
            BUSBELL_INGEST__SHARED_SUBSCRIPTION="true",
            BUSBELL_INGEST__WORKER_ID=f"w{i}-{name[-8:]}",
        )
        with log.open("wb") as err:
            procs.append(
                subprocess.Popen(  # noqa: S603, ASYNC220 - our own script; nothing else runs yet
                    [sys.executable, "-c", _WORKER], env=env, stderr=err, stdout=subprocess.DEVNULL
                )
            )
    try:
        deadline = time.monotonic() + 60
        while not all("fare_ingest_subscribed" in p.read_text(errors="replace") for p in logs):
            if time.monotonic() > deadline:
                raise SystemExit("workers did not subscribe: " + logs[0].read_text()[-2000:])
            await asyncio.sleep(0.1)
        cpu0 = sum(_cpu_s(p.pid) for p in procs)
        pg0 = _tree_cpu_s(postmaster) if postmaster else 0.0
        me0 = time.process_time()
        bare = bare_verify_cpu_rate(chains, keys)
        settings = MqttSettings(host=host, port=port, prefix=prefix)
        fleet = EdgeFleet(settings, chains, batch=50, window=500, retry_s=5.0)
        t0 = time.perf_counter()
        await fleet.run(timeout_s=1200)
        wall = time.perf_counter() - t0
        cpu = sum(_cpu_s(p.pid) for p in procs) - cpu0
        pg_cpu = _tree_cpu_s(postmaster) - pg0 if postmaster else None
        me_cpu = time.process_time() - me0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        drop_database(name)
    total = per_bus * n_buses
    return (
        f"{n_workers} worker(s): {total} events acked in {wall:.1f} s wall = "
        f"{total / wall:,.0f} events/s; workers' CPU {cpu:.1f} s = "
        f"{total / cpu:,.0f} events per worker CPU-second; resend requests "
        f"{fleet.resend_requests}, edge retries {fleet.retries}; bare verify in this "
        f"process {bare:,.0f}/CPU-s; PostgreSQL server CPU "
        f"{'n/a' if pg_cpu is None else f'{pg_cpu:.1f} s'}, edge fleet (this process) CPU "
        f"{me_cpu:.1f} s; load average {_load()}\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module doc)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.backend_scaleout")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--buses", type=int, default=100)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    args = ap.parse_args(argv)
    configure_logging("warning")
    for n in (int(x) for x in args.workers.split(",")):
        line = asyncio.run(_one(n, args.events, args.buses, args.host, args.port))
        sys.stdout.write(line)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
