"""Synthetic signed fare events for tests and the settle benchmark.

:class:`World` writes a small GTFS feed, RIDERS.csv and DEVICES.csv and mints rides as
real fare events v1: proof payloads from :func:`busbell.encode_payload`, chained with
:func:`busbell.event_hash`, signed with :class:`busbell.DeviceKey`. A ride that crosses
a 600-s rid interval is split into ``rotated`` / ``continued`` segments as the edge does.

Run the benchmark: ``python -m benchmarks.backend_settle --events 50000,1000000 --riders
20000,400000 --buses 50,1000`` (per run: generates a day's signed events in bus order,
times the bare single-process Ed25519 verification of the same events before and after,
times ``busbell backend settle`` in-process with one worker per CPU, and prints the
figures and their ratio; the 1M run is a long one, about ten minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from busbell._canonical import canonical_bytes, sha256_hex
from busbell._fare_event import GENESIS_PREV, derive_event_id, derive_missed_event_id
from busbell._keyfiles import DEVICES_HEADER, RIDERS_HEADER, write_rows
from busbell._signing import DeviceKey
from busbell._token import INTERVAL_S, RiderKeys, derive_rider_keys, encode_payload, interval_of

__all__ = ["BusChain", "World", "missed_fields", "write_gtfs"]

T0 = 1_762_500_000.0  # 2025-11-07 07:20 UTC = 16:20 Asia/Seoul
STOP_SPACING_M = 800.0
N_STOPS = 30


def write_gtfs(directory: Path) -> None:
    """A two-route feed: R1 (gyeonggi_city) and R2 (gyeonggi_wide_area), 30 stops each.

    Stop ``Sxx`` lies 800 m after ``S(xx-1)``; both routes serve all stops in direction
    0, R1 also in reverse (direction 1). ``shape_dist_traveled`` is in metres.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "agency.txt").write_text(
        "agency_id,agency_name,agency_url,agency_timezone\nA,Test,https://example.org,Asia/Seoul\n"
    )
    stops = ["stop_id,stop_name,stop_lat,stop_lon"]
    for k in range(1, N_STOPS + 1):
        stops.append(f"S{k:02d},Stop {k},37.{4000 + k * 7:04d},127.{1000 + k * 9:04d}")
    (directory / "stops.txt").write_text("\n".join(stops) + "\n")
    (directory / "routes.txt").write_text(
        "route_id,route_short_name,route_type\nR1,1,3\nR2,2000,3\nR3,30,3\n"
    )
    (directory / "route_networks.txt").write_text(
        "network_id,route_id\ngyeonggi_city,R1\ngyeonggi_wide_area,R2\n"
    )
    (directory / "trips.txt").write_text(
        "route_id,service_id,trip_id,direction_id\nR1,D,T1,0\nR1,D,T1R,1\nR2,D,T2,0\nR3,D,T3,0\n"
    )
    rows = ["trip_id,arrival_time,departure_time,stop_id,stop_sequence,shape_dist_traveled"]
    order = {
        "T1": list(range(1, N_STOPS + 1)),
        "T1R": list(range(N_STOPS, 0, -1)),
        "T2": list(range(1, N_STOPS + 1)),
        "T3": list(range(1, 11)),
    }
    for trip, seq in order.items():
        for n, k in enumerate(seq):
            hhmmss = f"{6 + n // 30:02d}:{(n * 2) % 60:02d}:00"
            rows.append(f"{trip},{hhmmss},{hhmmss},S{k:02d},{n + 1},{n * STOP_SPACING_M:.1f}")
    (directory / "stop_times.txt").write_text("\n".join(rows) + "\n")


@dataclass
class BusChain:
    """One bus's event chain: numbering, ``prev`` and signing."""

    bus_id: str
    key: DeviceKey
    seq: int = 0
    prev: str = GENESIS_PREV
    events: list[dict[str, Any]] = field(default_factory=list)

    def emit(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Number, chain and sign an event made of the segment ``fields``."""
        self.seq += 1
        event = dict(fields)
        event["bus_id"] = self.bus_id
        event["seq"] = self.seq
        event["prev"] = self.prev
        if fields["type"] == "missed":
            event["event_id"] = derive_missed_event_id(
                self.bus_id, self.seq, fields["request_id"], fields["passed"]["t"]
            )
        else:
            event["event_id"] = derive_event_id(
                self.bus_id, self.seq, fields["rid"], fields["start"]["t"]
            )
        body = canonical_bytes(event)
        event["sig"] = self.key.sign_b64(body)
        self.prev = sha256_hex(canonical_bytes(event))
        self.events.append(event)
        return event


def missed_fields(request_id: str, stop_id: str, t: float, route_id: str = "R1") -> dict[str, Any]:
    """The fields of a ``missed`` record (before numbering and signing): passed at ``t``."""
    return {
        "v": 1,
        "type": "missed",
        "request_id": request_id,
        "route_id": route_id,
        "trip_id": "T1",
        "stop_id": stop_id,
        "wait": {
            "request_id": request_id,
            "route_id": route_id,
            "stop_id": stop_id,
            "t": t - 120.0,
            "expires_t": t + 600.0,
            "source": "app",
            "assist": False,
        },
        "passed": {"t": t, "lat": 37.5, "lon": 127.0, "speed_mps": 9.0, "distance_m": 8.0},
        "doors_opened": False,
    }


class World:
    """Riders, buses, fleet keys and a GTFS feed in a directory; mints signed rides.

    Args:
        directory: where to write ``gtfs/``, ``RIDERS.csv``, ``DEVICES.csv``.
        riders: how many riders (ids ``r0001``...).
        buses: how many buses (ids ``bus-01``...).
    """

    def __init__(self, directory: Path, *, riders: int = 4, buses: int = 2) -> None:
        self.dir = directory
        self.gtfs = directory / "gtfs"
        write_gtfs(self.gtfs)
        self.token_keys: dict[str, bytes] = {
            f"r{n:04d}": hashlib.sha256(f"rider-{n}".encode()).digest()[:16]
            for n in range(1, riders + 1)
        }
        self.keys: dict[str, RiderKeys] = {
            r: derive_rider_keys(k) for r, k in self.token_keys.items()
        }
        self.buses: dict[str, BusChain] = {
            f"bus-{n:02d}": BusChain(
                f"bus-{n:02d}", DeviceKey.from_seed(hashlib.sha256(f"bus-{n}".encode()).digest())
            )
            for n in range(1, buses + 1)
        }
        self.fleet_key = hashlib.sha256(b"fleet").digest()
        self.riders_csv = directory / "RIDERS.csv"
        self.devices_csv = directory / "DEVICES.csv"
        write_rows(
            self.riders_csv, RIDERS_HEADER, [(r, k.hex()) for r, k in self.token_keys.items()]
        )
        write_rows(
            self.devices_csv, DEVICES_HEADER, [(b, c.key.public.hex) for b, c in self.buses.items()]
        )

    def payload(self, rider: str | RiderKeys, t: float, flags: int = 0) -> str:
        """Hex payload of the rider's token at time ``t``."""
        keys = self.keys[rider] if isinstance(rider, str) else rider
        return encode_payload(keys, t, fleet_key=self.fleet_key, flags=flags).hex()

    def segment_fields(
        self,
        rider: str | RiderKeys,
        *,
        route_id: str | None,
        trip_id: str | None,
        start: tuple[float, str | None, str],
        end: tuple[float, str | None, str],
        distance_m: float,
        proof: tuple[str, str] | None = None,
        rssi_med: int | None = None,
    ) -> dict[str, Any]:
        """The fields of one segment event (before numbering and signing)."""
        keys = self.keys[rider] if isinstance(rider, str) else rider
        t_first, t_last = start[0], end[0]
        rid_hex = encode_payload(keys, t_first, fleet_key=self.fleet_key)[3:15].hex()
        first, last = proof or (self.payload(keys, t_first), self.payload(keys, t_last))
        return {
            "v": 1,
            "type": "segment",
            "rid": rid_hex,
            "interval": interval_of(t_first),
            "route_id": route_id,
            "trip_id": trip_id,
            "start": {"t": start[0], "stop_id": start[1], "cause": start[2]},
            "end": {"t": end[0], "stop_id": end[1], "cause": end[2]},
            "distance_m": round(distance_m, 1),
            "proof": {"first": first, "last": last},
            "evidence": {"adv_count": 10}
            if rssi_med is None
            else {"adv_count": 10, "rssi_med": rssi_med},
        }

    def ride(
        self,
        rider: str,
        bus: str,
        *,
        board: int,
        alight: int,
        t: float,
        route_id: str = "R1",
        trip_id: str | None = "T1",
        end_cause: str = "alighted",
        alight_stop_known: bool = True,
        speed_mps: float = 8.0,
        rssi_med: int | None = None,
    ) -> list[dict[str, Any]]:
        """Mint the events of one ride from stop ``S{board}`` to ``S{alight}``.

        The ride is split at rid interval boundaries into ``rotated``/``continued``
        segments (with ``stop_id`` null there), exactly one event per segment.
        """
        chain = self.buses[bus]
        duration = abs(alight - board) * STOP_SPACING_M / speed_mps
        boundary = (interval_of(t) + 1) * INTERVAL_S
        t = min(t, boundary - 1.0)  # a first piece shorter than 1 s cannot be split
        t_end = t + duration
        cuts = [t]
        while boundary <= t_end:
            t_end = max(t_end, boundary + 2.0)
            cuts.append(float(boundary))
            boundary += INTERVAL_S
        cuts.append(t_end)
        out = []
        for n in range(len(cuts) - 1):
            a, b = cuts[n], cuts[n + 1]
            last = n == len(cuts) - 2
            start_stop = f"S{board:02d}" if n == 0 else None
            start_cause = "boarded" if n == 0 else "continued"
            if last:
                end_stop = f"S{alight:02d}" if alight_stop_known else None
                cause = end_cause
                b_proof = b
            else:
                end_stop, cause = None, "rotated"
                b = b - 0.5
                b_proof = b
            a_proof = a if n == 0 else a + 0.5
            fields = self.segment_fields(
                rider,
                route_id=route_id,
                trip_id=trip_id,
                start=(round(a_proof, 3), start_stop, start_cause),
                end=(round(b_proof, 3), end_stop, cause),
                distance_m=(b_proof - a_proof) * speed_mps,
                rssi_med=rssi_med,
            )
            out.append(chain.emit(fields))
        return out

    def write_events(self, path: Path, events: list[dict[str, Any]] | None = None) -> Path:
        """Write events (default: every bus's, in seq order) as JSONL."""
        if events is None:
            events = [e for c in self.buses.values() for e in c.events]
        with open(path, "w", encoding="utf-8") as f:
            for e in events:
                f.write(json.dumps(e, separators=(",", ":")) + "\n")
        return path


def _bulk(world: World, n_events: int, out: Path) -> int:
    """Write about ``n_events`` events of many short rides, streaming to ``out``."""
    riders = list(world.keys)
    buses = list(world.buses)
    written = 0
    t = T0
    k = 0
    with open(out, "w", encoding="utf-8") as f:
        while written < n_events:
            rider = riders[k % len(riders)]
            bus = buses[(k // len(riders)) % len(buses)]
            board = 1 + (k * 7) % 20
            alight = board + 1 + (k % 8)
            # each rider rides once per 40 min of synthetic time: no overlaps
            start = t + (k % len(riders)) * 0.37
            for e in world.ride(rider, bus, board=board, alight=alight, t=start):
                f.write(json.dumps(e, separators=(",", ":")) + "\n")
                written += 1
            world.buses[bus].events.clear()
            k += 1
            if k % len(riders) == 0:
                t += 2400.0
    return written


def _day(world: World, n_events: int, out: Path, *, hours: float = 14.0) -> int:
    """About ``n_events`` events of one service day, written in **bus order**.

    Every rider rides about equally often, at times spread over ``hours``; each ride
    goes to a bus chosen by a hash. The file holds bus 1's whole chain, then bus 2's...
    (how buses upload after a day offline), so every bus's events span the whole day.
    """
    riders = list(world.keys)
    buses = list(world.buses)
    rides = max(1, int(n_events / 1.75))  # a ride is 1.75 segments on average here
    rounds = max(1, -(-rides // len(riders)))
    span = hours * 3600.0 / rounds
    parts = {b: out.with_name(f"{out.name}.{b}") for b in buses}
    files = {b: open(p, "w", encoding="utf-8") for b, p in parts.items()}  # noqa: SIM115
    written = 0
    try:
        for k in range(rides):
            rider = riders[k % len(riders)]
            r = k // len(riders)
            h = int(hashlib.sha256(f"ride-{k}".encode()).hexdigest()[:8], 16)
            bus = buses[h % len(buses)]
            board = 1 + h % 20
            alight = board + 1 + (h >> 8) % 8
            start = T0 + r * span + (k % len(riders)) * (span - 3000.0) / len(riders)
            for e in world.ride(rider, bus, board=board, alight=alight, t=start):
                files[bus].write(json.dumps(e, separators=(",", ":")) + "\n")
                written += 1
            world.buses[bus].events.clear()
    finally:
        for f in files.values():
            f.close()
    with open(out, "wb") as dst:
        for b in buses:
            with open(parts[b], "rb") as src:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            parts[b].unlink()
    return written


def bare_verify_rate(events: Path, devices: Path, *, limit: int = 100_000) -> float:
    """Bare single-process Ed25519 verifications per second over the file's events.

    The ceiling the issue measures against: the signed bytes and signatures are
    prepared first (not timed); only ``PublicKey.verify`` is timed.
    """
    import base64

    from busbell._keyfiles import read_devices

    keys = read_devices(devices)
    work: list[tuple[Any, bytes, bytes]] = []
    with open(events, "rb") as f:
        for line in f:
            ev = json.loads(line)
            sig = base64.b64decode(ev.pop("sig"))
            work.append((keys[ev["bus_id"]], sig, canonical_bytes(ev)))
            if len(work) >= limit:
                break
    t0 = time.perf_counter()
    for key, sig, msg in work:
        key.verify(sig, msg)
    return len(work) / (time.perf_counter() - t0)


def _load() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def _run(args: argparse.Namespace, d: Path, n_events: int, riders: int, buses: int) -> None:
    from backend.cli import main as cli_main

    out = sys.stdout.write
    world = World(d, riders=riders, buses=buses)
    events = d / "EVENTS.jsonl"
    t0 = time.perf_counter()
    n = (_day if args.order == "bus" else _bulk)(world, n_events, events)
    t_gen = time.perf_counter() - t0
    out(
        f"generated {n:,} signed events of {riders:,} riders on {buses} buses ({args.order} "
        f"order) in {t_gen:.1f} s ({os.path.getsize(events) >> 20} MB); "
        f"load average {_load()}\n"
    )
    bare_before = bare_verify_rate(events, world.devices_csv)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # peak RSS from here
    t0 = time.perf_counter()
    status = cli_main(
        [
            "settle",
            str(events),
            "--gtfs",
            str(world.gtfs),
            "--riders",
            str(world.riders_csv),
            "--devices",
            str(world.devices_csv),
            "--out",
            str(d / "JOURNEYS.jsonl"),
            "--processes",
            str(args.processes),
            "--force",
        ]
    )
    t_settle = time.perf_counter() - t0
    with open("/proc/self/status", encoding="ascii") as f:
        peak = next((ln.split()[1] for ln in f if ln.startswith("VmHWM:")), "0")
    bare_after = bare_verify_rate(events, world.devices_csv)
    bare = (bare_before + bare_after) / 2
    rate = n / t_settle
    out(
        f"settle: {n:,} events in {t_settle:.1f} s ({rate:,.0f} events/s, "
        f"{t_settle / n * 1e6:.0f} us/event), peak RSS {int(peak) >> 10} MB "
        f"(this process), exit {status}\n"
        f"bare single-process Ed25519 verify of the same events: {bare:,.0f}/s "
        f"(before {bare_before:,.0f}, after {bare_after:,.0f})\n"
        f"ratio settle / bare verify: {rate / bare:.2f}; load average {_load()}\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.backend_settle")
    ap.add_argument(
        "--events",
        type=_ints,
        default=[10_000],
        help="events per run, comma-separated (one run each, e.g. 50000,1000000)",
    )
    ap.add_argument("--riders", type=_ints, default=[500], help="riders per run")
    ap.add_argument("--buses", type=_ints, default=[8], help="buses per run")
    ap.add_argument(
        "--order",
        choices=["bus", "time"],
        default="bus",
        help="bus: a day of 14 h written bus by bus (as buses upload); time: the old bulk",
    )
    ap.add_argument("--processes", type=int, default=0, help="settle --processes (0: CPUs)")
    ap.add_argument("--dir", type=Path, default=None, help="keep the files here (last run)")
    args = ap.parse_args(argv)
    runs = len(args.events)
    riders = args.riders * runs if len(args.riders) == 1 else args.riders
    buses = args.buses * runs if len(args.buses) == 1 else args.buses
    if not len(riders) == len(buses) == runs:
        ap.error("give one --riders and --buses value, or one per --events value")
    for n, r, b in zip(args.events, riders, buses, strict=True):
        with tempfile.TemporaryDirectory() as tmp:
            d = args.dir or Path(tmp)
            d.mkdir(parents=True, exist_ok=True)
            _run(args, d, n, r, b)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
