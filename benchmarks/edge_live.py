"""Benchmark: a live daemon with 300 tokens in range at 2,000 adverts/s.

Run: ``python -m benchmarks.edge_live [--seconds S] [--tokens N] [--rate R]``. Starts the real
:class:`~edge._daemon.EdgeDaemon` (real pipeline, SQLite store, MQTT link to the local
broker) with an in-process source that emits valid token advertisements of N riders at
R adverts/s, and GNSS at 1 Hz over MQTT. Prints the RSS (MB) and the CPU use of this
process (% of one core) over the measured window; the source's own cost is included.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

from busbell import (
    AdvRecord,
    DeviceKey,
    Topics,
    configure_logging,
    day_of,
    derive_rider_keys,
    encode_payload,
)
from busbell._mqtt import MqttSession, MqttSettings
from edge._daemon import EdgeDaemon
from edge._source import AdvertisementSink
from edge.config import EdgeConfig
from tests.factories.edge_world import fleet_key_of, latlon, write_gtfs


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class SyntheticSource:
    """``tokens`` riders on board, ``rate`` adverts/s in total, payloads valid now."""

    name = "synthetic"

    def __init__(self, tokens: int, rate: float) -> None:
        self.keys = [derive_rider_keys(i.to_bytes(16, "big")) for i in range(1, tokens + 1)]
        self.rate = rate
        self.sent = 0
        self._cache_tq = -1
        self._payloads: list[bytes] = []

    def _payloads_at(self, t: float) -> list[bytes]:
        tq = int(t // 4)
        if tq != self._cache_tq:
            fk = fleet_key_of(day_of(t))
            self._payloads = [encode_payload(k, t, fleet_key=fk) for k in self.keys]
            self._cache_tq = tq
        return self._payloads

    async def run(self, sink: AdvertisementSink) -> None:
        n = len(self.keys)
        tick = 0.01
        per_tick = self.rate * tick
        owed = 0.0
        i = 0
        next_t = time.monotonic()
        while True:
            now = time.time()
            payloads = self._payloads_at(now)
            owed += per_tick
            while owed >= 1.0:
                k = i % n
                sink(
                    AdvRecord(
                        now,
                        f"02:00:00:00:{k >> 8:02x}:{k & 255:02x}",
                        -55 - k % 20,
                        {0xFFFF: payloads[k]},
                    )
                )
                i += 1
                owed -= 1.0
            self.sent = i
            next_t += tick
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))


async def _gnss(settings: MqttSettings, topics: Topics, bus: str) -> None:
    async with MqttSession(settings, f"bench-vehicle-{uuid.uuid4().hex[:8]}") as s:
        await s.publish(
            topics.vehicle(bus, "trip"),
            json.dumps({"t": time.time(), "route_id": "R1", "direction_id": 0, "trip_id": "T1"}),
        )
        x = 0.0
        while True:
            x += 5.0
            lat, lon = latlon(x % 2800)
            await s.publish(
                topics.vehicle(bus, "gnss"),
                json.dumps({"t": time.time(), "lat": lat, "lon": lon, "speed_mps": 5.0}),
            )
            await asyncio.sleep(1.0)


async def _main(seconds: float, tokens: int, rate: float, host: str, port: int) -> None:
    bus = "bench-live"
    prefix = f"bench-{uuid.uuid4().hex[:8]}/busbell/v1"
    with tempfile.TemporaryDirectory() as tmp:
        gtfs = write_gtfs(Path(tmp) / "gtfs")
        cfg = EdgeConfig(bus_id=bus, gtfs=gtfs, store=Path(tmp) / "fares.db", source="stream")
        mqtt = dataclasses.replace(cfg.mqtt, host=host, port=port, prefix=prefix)
        cfg = dataclasses.replace(cfg, mqtt=mqtt)
        today = day_of(time.time())
        fleet = {d: fleet_key_of(d) for d in range(today - 1, today + 8)}
        source = SyntheticSource(tokens, rate)
        # the production clock: GNSS-disciplined by the 1 Hz fixes below
        daemon = EdgeDaemon(cfg, source, device_key=DeviceKey.generate(), fleet_keys=fleet)
        run = asyncio.create_task(daemon.run())
        gnss = asyncio.create_task(_gnss(mqtt, Topics(prefix), bus))
        await asyncio.sleep(5.0)  # warm-up: caches, connections
        c0, w0, s0 = time.process_time(), time.perf_counter(), source.sent
        await asyncio.sleep(seconds)
        c1, w1, s1 = time.process_time(), time.perf_counter(), source.sent
        rss = _rss_mb()
        status = daemon.status()
        daemon.request_stop()
        gnss.cancel()
        await asyncio.wait_for(run, 30)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rate_seen = (s1 - s0) / (w1 - w0)
    sys.stdout.write(
        f"tokens={tokens} adverts/s={rate_seen:.0f} window={w1 - w0:.0f}s\n"
        f"CPU {100 * (c1 - c0) / (w1 - w0):.1f} % of one core (daemon + synthetic source)\n"
        f"RSS {rss:.1f} MB (peak {peak:.1f} MB)\n"
        f"tokens_in_range={status['tokens_in_range']} rejected={status['rejected']} "
        f"dropped={status['scanner']['adverts_dropped']}\n"
    )


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.edge_live")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--tokens", type=int, default=300)
    p.add_argument("--rate", type=float, default=2000.0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    a = p.parse_args()
    configure_logging("warning")
    asyncio.run(_main(a.seconds, a.tokens, a.rate, a.host, a.port))


if __name__ == "__main__":
    main()
