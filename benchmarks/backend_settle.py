"""Synthetic signed fare events for tests and the settle benchmark.

:class:`World` writes a small GTFS feed, RIDERS.csv and DEVICES.csv and mints rides as
real fare events v1: proof payloads from :func:`busbell.encode_payload`, chained with
:func:`busbell.event_hash`, signed with :class:`busbell.DeviceKey`. A ride that crosses
a 600-s rid interval is split into ``rotated`` / ``continued`` segments as the edge does.

Run the benchmark: ``python -m benchmarks.backend_settle --events 50000,1000000 --riders
20000,400000 --buses 50,1000`` (per run: generates a day's signed events in bus order,
times the bare single-process Ed25519 verification of the same events before and after,
times ``busbell backend settle`` in-process with one worker per CPU, and prints the
figures and their ratio; the 1M run is a long one, about ten minutes). With ``--dir D
--generate-only`` the events are only written (under ``D``, a subdirectory per run), and
``--dir D --reuse`` then times them without writing them again.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from busbell._canonical import canonical_bytes
from tests.factories.backend_world import (
    T0,
    World,
)

__all__ = ["main"]


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


_SETTLE_MODULES = (
    "backend._fare_engine",
    "backend._fare_rules",
    "backend._journeys",
    "backend._resolve",
    "backend._settle",
    "busbell._cliutil",
    "busbell._gtfs",
)
"""What ``backend settle`` imports when it starts (numpy, msgspec, the fare engine...)."""


def _cpu() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its reaped children."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all processes, ``/proc/stat``)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _load() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def _modes(text: str) -> list[str]:
    modes = text.split(",")
    if not modes or any(m not in ("runs", "every") for m in modes):
        raise argparse.ArgumentTypeError(f"runs and/or every, not {text!r}")
    return modes


def _run(args: argparse.Namespace, d: Path, n_events: int, riders: int, buses: int) -> None:
    out = sys.stdout.write
    world = World(d, riders=riders, buses=buses)
    events = d / "EVENTS.jsonl"
    meta = d / "EVENTS.meta.json"
    wanted = {"events": n_events, "riders": riders, "buses": buses, "order": args.order}
    t0 = time.perf_counter()
    if args.reuse and meta.exists() and json.loads(meta.read_text())["wanted"] == wanted:
        n = json.loads(meta.read_text())["written"]
        made = "reused"
    else:
        n = (_bulk if args.order == "time" else _day)(world, n_events, events)
        if args.order == "closing":
            lines = events.read_bytes().splitlines(keepends=True)
            lines.sort(key=lambda line: json.loads(line)["end"]["t"])  # stable: seq order kept
            events.write_bytes(b"".join(lines))
        meta.write_text(json.dumps({"wanted": wanted, "written": n}))
        made = "generated"
    t_gen = time.perf_counter() - t0
    out(
        f"{made} {n:,} signed events of {riders:,} riders on {buses} buses ({args.order} "
        f"order) in {t_gen:.1f} s ({os.path.getsize(events) >> 20} MB); "
        f"load average {_load()}\n"
    )
    if args.generate_only:
        return
    # settle's modules are imported before the clock, as the ceiling's are: the figure
    # is settling's rate, not the interpreter's start (printed, paid once per process)
    t_import = time.perf_counter()
    for name in _SETTLE_MODULES:
        importlib.import_module(name)
    t_import = time.perf_counter() - t_import
    bare_before = bare_verify_rate(events, world.devices_csv)
    for mode in args.verify:
        bare_before = _settle_once(
            args,
            world,
            d=d,
            events=events,
            n=n,
            mode=mode,
            bare_before=bare_before,
            t_import=t_import,
        )


def _settle_once(
    args: argparse.Namespace,
    world: World,
    *,
    d: Path,
    events: Path,
    n: int,
    mode: str,
    bare_before: float,
    t_import: float,
) -> float:
    """Time one ``backend settle`` of the events, the bare verify rate around it.

    Returns the bare rate measured after it (the next mode's "before").
    """
    from backend.cli import main as cli_main

    out = sys.stdout.write
    stats_path = d / f"STATS-{mode}.json"
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # peak RSS from here
    cpu0 = _cpu()
    busy0 = _machine_busy()
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
            "--verify",
            mode,
            "--stats",
            str(stats_path),
            "--force",
        ]
    )
    t_settle = time.perf_counter() - t0
    busy = _machine_busy() - busy0
    own, workers = (b - a for a, b in zip(cpu0, _cpu(), strict=True))
    with open("/proc/self/status", encoding="ascii") as f:
        peak = next((ln.split()[1] for ln in f if ln.startswith("VmHWM:")), "0")
    bare_after = bare_verify_rate(events, world.devices_csv)
    bare = (bare_before + bare_after) / 2
    rate = n / t_settle
    signatures = json.loads(stats_path.read_text())["signatures"]
    out(
        f"settle --verify {mode}: {n:,} events in {t_settle:.1f} s ({rate:,.0f} events/s, "
        f"{t_settle / n * 1e6:.0f} us/event), peak RSS {int(peak) >> 10} MB "
        f"(this process), exit {status}; {signatures:,} signatures verified "
        f"({signatures / n:.1%} of the events)\n"
        f"bare single-process Ed25519 verify of the same events: {bare:,.0f}/s "
        f"(before {bare_before:,.0f}, after {bare_after:,.0f})\n"
        f"ratio settle / bare verify: {rate / bare:.2f}; load average {_load()}; settle's "
        f"modules imported before the clock in {t_import:.2f} s\n"
        f"settle CPU per event: this process {own / n * 1e6:.1f} us, worker processes "
        f"{workers / n * 1e6:.1f} us, together {(own + workers) * bare / n:.2f}x the bare "
        f"verify time per event ({1e6 / bare:.1f} us); two cores at most "
        f"{2 * n / bare / (own + workers):.2f}x\n"
        f"other processes on the machine meanwhile: {max(0.0, busy - own - workers):.1f} "
        f"CPU-s in settle's {t_settle:.1f} s ({os.cpu_count()} CPUs: "
        f"{max(0.0, busy - own - workers) / t_settle:.2f} of a CPU on average)\n"
    )
    return bare_after


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
        choices=["bus", "closing", "time"],
        default="bus",
        help=(
            "bus: a day of 14 h written bus by bus (as buses upload after a day offline); "
            "closing: the same events sorted by end time (as buses upload live); "
            "time: the old bulk generator"
        ),
    )
    ap.add_argument("--processes", type=int, default=0, help="settle --processes (0: CPUs)")
    ap.add_argument(
        "--verify",
        type=_modes,
        default=["runs"],
        help="settle --verify, comma-separated: runs, every or both (one settle each, in "
        "this order, the bare verify timed between them)",
    )
    ap.add_argument(
        "--dir", type=Path, default=None, help="keep the files here (a subdirectory per run)"
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="with --dir: settle the events a run with the same sizes and order left there",
    )
    ap.add_argument(
        "--generate-only",
        action="store_true",
        help="with --dir: only write the events (then time them later with --reuse)",
    )
    args = ap.parse_args(argv)
    runs = len(args.events)
    riders = args.riders * runs if len(args.riders) == 1 else args.riders
    buses = args.buses * runs if len(args.buses) == 1 else args.buses
    if not len(riders) == len(buses) == runs:
        ap.error("give one --riders and --buses value, or one per --events value")
    if (args.reuse or args.generate_only) and args.dir is None:
        ap.error("--reuse and --generate-only need --dir")
    for n, r, b in zip(args.events, riders, buses, strict=True):
        with tempfile.TemporaryDirectory() as tmp:
            d = args.dir / f"{n}-{r}-{b}-{args.order}" if args.dir else Path(tmp)
            d.mkdir(parents=True, exist_ok=True)
            _run(args, d, n, r, b)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
