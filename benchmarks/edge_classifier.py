"""Synthetic replays for the presence classifier: a test fixture and a benchmark.

``python -m benchmarks.edge_classifier [--adverts N] [--tokens K]`` builds a synthetic
trace (one bus on a straight route, K rider tokens boarding and alighting, bystanders
at the stops), then measures the classifier alone (pre-verified advertisements) and the
whole :class:`edge.EdgePipeline` including the :class:`busbell.TokenVerifier`, and
prints advertisements per second. Everything is seeded and deterministic.

The generator is deliberately simple (log-distance RSSI with Gaussian noise, a shell
loss outside the bus, random packet loss); the real simulator lives in
``firmware_sim``. The tests in ``tests/edge`` build their scenarios with it.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import math
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from busbell import (
    AdvRecord,
    DoorRecord,
    Feed,
    GnssRecord,
    RiderKeys,
    TokenVerifier,
    TraceRecord,
    TripRecord,
    day_of,
    derive_rider_keys,
    encode_payload,
    load_gtfs,
    offset_m,
    rid_for_interval,
)
from edge._classifier import PresenceClassifier
from edge._params import ClassifierParams
from edge._pipeline import EdgePipeline
from edge._segment import SegmentDraft
from edge._vehicle import StopVisit, VehicleContext

__all__ = [
    "LAT0",
    "LON0",
    "BusPlan",
    "SynthToken",
    "bus_timeline",
    "fleet_key_of",
    "replay",
    "synth_trace",
    "token_of",
    "verifier_for",
    "write_gtfs",
]

LAT0, LON0 = 37.5, 127.0
ROUTE_ID, TRIP_ID = "R1", "T1"
COMPANY = 0xFFFF


def fleet_key_of(day: int) -> bytes:
    """A deterministic test fleet key for a UTC day."""
    return bytes((day * 7 + i) % 256 for i in range(32))


def stop_xy(i: int, spacing_m: float) -> float:
    """Metres east of the route origin of stop ``i``."""
    return i * spacing_m


def latlon(x: float, y: float = 0.0) -> tuple[float, float]:
    """Route-local metres (east, north) to (lat, lon)."""
    return offset_m(LAT0, LON0, y, x)


def write_gtfs(directory: Path, n_stops: int = 8, spacing_m: float = 400.0) -> Path:
    """Write a one-route GTFS feed (stops S0.. every ``spacing_m`` metres due east)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "agency.txt").write_text(
        "agency_id,agency_name,agency_url,agency_timezone\nA,Test,http://x,Asia/Seoul\n"
    )
    rows = ["stop_id,stop_name,stop_lat,stop_lon"]
    for i in range(n_stops):
        lat, lon = latlon(stop_xy(i, spacing_m))
        rows.append(f"S{i},Stop {i},{lat:.7f},{lon:.7f}")
    (directory / "stops.txt").write_text("\n".join(rows) + "\n")
    (directory / "routes.txt").write_text(f"route_id,route_short_name,route_type\n{ROUTE_ID},1,3\n")
    (directory / "trips.txt").write_text(
        f"route_id,service_id,trip_id,direction_id\n{ROUTE_ID},WK,{TRIP_ID},0\n"
    )
    st = ["trip_id,arrival_time,departure_time,stop_id,stop_sequence"]
    for i in range(n_stops):
        hh = f"08:{i:02d}:00"
        st.append(f"{TRIP_ID},{hh},{hh},S{i},{i + 1}")
    (directory / "stop_times.txt").write_text("\n".join(st) + "\n")
    return directory


@dataclass
class SynthToken:
    """One BLE token in the synthetic world.

    ``kind``: ``rider`` (waits at ``board``, rides to ``alight``), ``bystander`` (stands at
    stop ``board`` the whole time), ``alongside`` (inside another vehicle that stays next
    to the bus from ``t_from`` to ``t_to``).
    """

    token_key: bytes
    kind: str = "rider"
    board: int = 0
    alight: int = 1
    adv_interval_s: float = 0.5
    inside_dist_m: float = 4.0
    loss_db: float = 0.0
    clock_skew_s: float = 0.0
    flags: int = 0
    lateral_m: float = 3.0
    walk_dir: tuple[float, float] = (0.6, 0.8)
    """Direction (along the route, away from it) an alighted rider walks in."""
    t_from: float = 0.0
    t_to: float = 0.0
    quiet: tuple[float, float] = (0.0, 0.0)
    """A quiet stretch: no advert from ``quiet[0]`` s after boarding for ``quiet[1]`` s
    (a phone in a pocket behind a crowd, a packet storm)."""
    keys: RiderKeys | None = field(default=None, repr=False)


@dataclass
class BusPlan:
    """The bus's day: stops, dwell, speed, red lights, GNSS and door faults."""

    t0: float = 1_790_000_100.0
    n_stops: int = 8
    spacing_m: float = 400.0
    speed_mps: float = 10.0
    dwell_s: float = 20.0
    red_lights: dict[int, float] = field(default_factory=dict)
    """Stop the bus for the given seconds halfway after stop index k (doors closed)."""
    gnss_gaps: list[tuple[float, float]] = field(default_factory=list)
    """Absolute time ranges with no GNSS fix."""
    gnss_noise_m: float = 0.0
    door_mode: str = "ok"
    """``ok``, ``none`` (no door records), ``stuck_open`` (doors report open after stop 1)."""
    trip_id: str | None = TRIP_ID
    skip_stops: tuple[int, ...] = ()
    """Stops the bus passes without stopping."""


def bus_timeline(plan: BusPlan) -> tuple[list[tuple[float, float, float, float]], list[float]]:
    """Phases ``(t_start, t_end, x_start, x_end)`` and the door-open times per stop."""
    phases: list[tuple[float, float, float, float]] = []
    opens: list[float] = []
    t = plan.t0
    for i in range(plan.n_stops):
        x = stop_xy(i, plan.spacing_m)
        if i in plan.skip_stops:
            opens.append(math.nan)
        else:
            phases.append((t, t + plan.dwell_s + 4.0, x, x))
            opens.append(t + 2.0)
            t += plan.dwell_s + 4.0
        if i == plan.n_stops - 1:
            break
        nx = stop_xy(i + 1, plan.spacing_m)
        if i in plan.red_lights:
            mid = (x + nx) / 2
            dt = (mid - x) / plan.speed_mps
            phases.append((t, t + dt, x, mid))
            t += dt
            phases.append((t, t + plan.red_lights[i], mid, mid))
            t += plan.red_lights[i]
            dt = (nx - mid) / plan.speed_mps
            phases.append((t, t + dt, mid, nx))
            t += dt
        else:
            dt = (nx - x) / plan.speed_mps
            phases.append((t, t + dt, x, nx))
            t += dt
    return phases, opens


def bus_x(phases: Sequence[tuple[float, float, float, float]], t: float) -> tuple[float, float]:
    """Bus position (m) and speed at ``t``."""
    if t < phases[0][0]:
        return phases[0][2], 0.0
    for t1, t2, x1, x2 in phases:
        if t1 <= t < t2:
            f = (t - t1) / (t2 - t1)
            return x1 + f * (x2 - x1), (x2 - x1) / (t2 - t1)
    return phases[-1][3], 0.0


def _rssi(rng: random.Random, d: float, inside: bool, door_open: bool, loss: float) -> float:
    if inside:
        return -50.0 - 17.3 * math.log10(max(d, 0.5)) - loss + rng.gauss(0.0, 4.0)
    shell = 4.0 if door_open else 10.0
    return -50.0 - 21.0 * math.log10(max(d, 0.5)) - shell - loss + rng.gauss(0.0, 6.0)


def synth_trace(
    plan: BusPlan,
    tokens: Sequence[SynthToken],
    *,
    seed: int = 1,
    packet_loss: float = 0.1,
    until: float | None = None,
) -> tuple[list[TraceRecord], dict[str, tuple[int, int]]]:
    """Build a trace of one bus and the tokens around it (up to ``until``, if given).

    Returns:
        The records sorted by time, and the ground truth: for each rider's token key
        (hex), the (board, alight) stop indexes it really rode.
    """
    rng = random.Random(seed)
    phases, opens = bus_timeline(plan)
    t_end = phases[-1][1] + 60.0
    if until is not None:
        t_end = min(t_end, until)
    recs: list[TraceRecord] = []
    recs.append(TripRecord(plan.t0 - 1.0, ROUTE_ID, 0, plan.trip_id))
    # GNSS 1 Hz
    t = plan.t0 - 0.5
    while t < t_end:
        if not any(a <= t < b for a, b in plan.gnss_gaps):
            x, v = bus_x(phases, t)
            n = plan.gnss_noise_m
            lat, lon = latlon(x + rng.gauss(0, n) if n else x, rng.gauss(0, n) if n else 0.0)
            recs.append(GnssRecord(t, lat, lon, abs(v)))
        t += 1.0
    # doors
    for i, o in enumerate(opens):
        if math.isnan(o) or plan.door_mode == "none":
            continue
        if plan.door_mode == "stuck_open" and i >= 1:
            if i == 1:
                recs.append(DoorRecord(o, True))
            continue
        recs.append(DoorRecord(o, True))
        recs.append(DoorRecord(o + plan.dwell_s, False))

    def door_open_at(tt: float) -> bool:
        return any(not math.isnan(o) and o <= tt < o + plan.dwell_s for o in opens)

    truth: dict[str, tuple[int, int]] = {}
    cache: dict[tuple[int, int, int], bytes] = {}
    for k, tok in enumerate(tokens):
        keys = tok.keys or derive_rider_keys(tok.token_key)
        trng = random.Random(seed * 1_000_003 + k)
        if tok.kind == "rider":
            t_board = opens[tok.board] + trng.uniform(1.0, plan.dwell_s - 4.0)
            t_alight = opens[tok.alight] + trng.uniform(1.0, plan.dwell_s - 4.0)
            t_start, t_stop = opens[tok.board] - 150.0, t_alight + 120.0
            truth[tok.token_key.hex()] = (tok.board, tok.alight)
        elif tok.kind == "bystander":
            t_board = t_alight = math.inf
            t_start, t_stop = opens[tok.board] - 150.0, opens[tok.board] + 150.0
        else:
            t_board = t_alight = math.inf
            t_start, t_stop = tok.t_from, tok.t_to
        tt = t_start + trng.uniform(0, tok.adv_interval_s)
        q0 = t_board + tok.quiet[0]
        q1 = q0 + tok.quiet[1]
        if until is not None:
            t_stop = min(t_stop, until)
        while tt < t_stop:
            if q0 <= tt < q1:
                tt = q1
                continue
            bx, _ = bus_x(phases, tt)
            if tok.kind == "rider" and t_board <= tt < t_alight:
                d, inside = tok.inside_dist_m, True
            elif tok.kind == "rider" and tt >= t_alight:
                walk = 1.4 * (tt - t_alight)
                x_r = stop_xy(tok.alight, plan.spacing_m) + walk * tok.walk_dir[0]
                lat_m = tok.lateral_m + walk * tok.walk_dir[1]
                d, inside = math.hypot(bx - x_r, lat_m), False
            elif tok.kind == "alongside":
                d, inside = tok.lateral_m, False
            else:
                x_r = stop_xy(tok.board, plan.spacing_m)
                d, inside = math.hypot(bx - x_r, tok.lateral_m), False
            extra = 10.0 if tok.kind == "alongside" else 0.0
            rssi = _rssi(trng, d, inside, door_open_at(tt), tok.loss_db + extra)
            if rssi >= -95.0 and trng.random() >= packet_loss:
                tok_t = tt + tok.clock_skew_s
                ck = (k, math.floor(tok_t / 4), tok.flags)
                payload = cache.get(ck)
                if payload is None:
                    payload = cache[ck] = encode_payload(
                        keys, tok_t, fleet_key=fleet_key_of(day_of(tok_t)), flags=tok.flags
                    )
                r = max(-127, min(20, round(rssi)))
                recs.append(AdvRecord(tt, f"AA:{k:010X}"[:17], r, {COMPANY: payload}))
            tt += tok.adv_interval_s * trng.uniform(0.9, 1.1)
    recs.sort(key=lambda r: (r.t, type(r).__name__))
    return recs, truth


def verifier_for(recs: Sequence[TraceRecord]) -> TokenVerifier:
    """A verifier holding the fleet keys of the days the trace covers (and neighbours)."""
    days = {day_of(r.t) for r in recs}
    keys = {d + k: fleet_key_of(d + k) for d in days for k in (-1, 0, 1)}
    return TokenVerifier(keys)


def replay(
    feed: Feed, recs: Sequence[TraceRecord], params: ClassifierParams | None = None
) -> tuple[list[SegmentDraft], EdgePipeline]:
    """Feed a whole trace through a fresh pipeline; returns the drafts and the pipeline."""
    pipe = EdgePipeline("SYN", feed, verifier_for(recs), params)
    out: list[SegmentDraft] = []
    for r in recs:
        out.extend(pipe.feed(r))
    out.extend(pipe.finish(recs[-1].t + 1.0 if recs else 0.0))
    return out, pipe


def token_of(draft: SegmentDraft, tokens: Sequence[SynthToken]) -> int | None:
    """Index of the token whose rid the draft is about (None if no token matches)."""
    for k, tok in enumerate(tokens):
        keys = tok.keys or derive_rider_keys(tok.token_key)
        if rid_for_interval(keys.rid_key, draft.interval).hex() == draft.rid:
            return k
    return None


BOUNDARY_T = 1_790_001_000.0
"""A 600-s rid interval boundary (the crowd benchmark puts it just after departure)."""


def _crowd_plan(seconds_after: float) -> BusPlan:
    """12 stops; the rid boundary comes ``seconds_after`` s after the bus leaves stop 0."""
    plan = BusPlan(t0=0.0, n_stops=12, dwell_s=30.0)
    _, opens = bus_timeline(plan)
    plan.t0 = BOUNDARY_T - seconds_after - (opens[0] + plan.dwell_s)
    return plan


def _ceiling(n: int = 200_000) -> float:
    """A bare ceiling timed in the same run: HMAC-SHA256 of 15 bytes (the btag check) / s."""
    key, msg = bytes(16), bytes(15)
    new, sha = hmac.new, hashlib.sha256
    t0 = time.perf_counter()
    for _ in range(n):
        new(key, msg, sha).digest()
    return n / (time.perf_counter() - t0)


def _bench(n_adverts: int, n_tokens: int, seed: int, crowd: bool = False) -> None:  # noqa: PLR0915
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="busbell-bench-"))
    plan = _crowd_plan(60.0) if crowd else BusPlan(n_stops=30, dwell_s=20.0)
    gtfs = load_gtfs(write_gtfs(tmp / "gtfs", plan.n_stops, plan.spacing_m))
    tokens: list[SynthToken] = []
    for i in range(n_tokens):
        kind = "rider" if i % 5 else "bystander"
        if crowd:  # everyone boards at stop 0, the rid boundary comes as the bus rides on
            b = 0 if kind == "rider" else rng.randrange(0, plan.n_stops)
            a = rng.randrange(plan.n_stops - 4, plan.n_stops)
        else:
            b = rng.randrange(0, plan.n_stops - 2)
            a = rng.randrange(b + 1, plan.n_stops)
        tokens.append(
            SynthToken(
                token_key=rng.randbytes(16),
                kind=kind,
                board=b,
                alight=a,
                adv_interval_s=rng.choice([0.25, 0.5, 1.0, 2.0] if crowd else [0.1, 0.2, 0.5, 1.0]),
                inside_dist_m=rng.uniform(1, 10),
                loss_db=rng.uniform(0, 12),
            )
        )
    t0 = time.perf_counter()
    until = BOUNDARY_T + 150.0 if crowd else None
    recs, _ = synth_trace(plan, tokens, seed=seed, until=until)
    advs = [r for r in recs if isinstance(r, AdvRecord)]
    n_adverts = min(n_adverts, len(advs)) if crowd else n_adverts
    while len(advs) < n_adverts:  # not enough: cycle (timing only)
        advs = advs + advs
    gen_s = time.perf_counter() - t0
    sys.stdout.write(
        f"synthetic trace: {len(recs):,} records, {len(advs):,} adverts available, "
        f"{n_tokens} tokens, generated in {gen_s:.1f} s\n"
    )
    # stream of the first n adverts with the vehicle records in between, in time order
    limit_t = advs[n_adverts - 1].t if n_adverts <= len(advs) else math.inf
    stream = [r for r in recs if r.t <= limit_t][: n_adverts * 2]
    verifier = verifier_for(recs)
    # classifier alone: the vehicle context runs first; the adverts are pre-verified and
    # the stop visits replayed (as fresh objects, opened and closed at the right moments)
    pre = verifier_for(recs)
    vehicle = VehicleContext(gtfs, ClassifierParams())
    ops: list[tuple[Any, ...]] = []
    n = 0
    for r in stream:
        if isinstance(r, AdvRecord):
            raw = r.mfr[COMPANY]
            acc = pre.verify(raw, r.t)
            p = acc.payload
            ops.append(
                (
                    0,
                    r.t,
                    p.rid,
                    acc.interval,
                    acc.token_t,
                    r.rssi,
                    int(p.flags),
                    raw,
                    vehicle.odometer_m,
                    r.addr,
                )
            )
            n += 1
        else:
            for ev in vehicle.feed_record(r):
                v = ev.visit
                ops.append(
                    (
                        1,
                        r.t,
                        ev.kind,
                        id(v),
                        v.seq,
                        v.stop_id,
                        v.open_t,
                        v.open_odo_m,
                        v.close_t,
                        v.close_odo_m,
                        vehicle.odometer_m,
                    )
                )
    clf = PresenceClassifier(ClassifierParams())
    clf.on_trip(ROUTE_ID, TRIP_ID)
    advert, tick, on_visit = clf.advert, clf.tick, clf.on_visit
    copies: dict[int, StopVisit] = {}
    ticks: list[float] = []
    clock = time.perf_counter
    t0 = time.perf_counter()
    for op in ops:
        if op[0] == 0:
            _, t, rid, interval, token_t, rssi, flags, raw, odo, addr = op
            advert(t, rid, interval, token_t, rssi, flags, raw, odo, addr)
        else:
            _, t, kind, key, seq, stop_id, open_t, open_odo, close_t, close_odo, odo = op
            c = copies.get(key)
            if kind == "open":
                if c is None:
                    c = copies[key] = StopVisit(seq, stop_id, open_t, open_odo, "door")
                c.close_t = c.close_odo_m = None
            elif c is not None:
                c.close_t, c.close_odo_m = close_t, close_odo
            if c is not None:
                on_visit(kind, c, t)
        if t >= clf._next_tick:  # time only the ticks that do work
            k0 = clock()
            tick(t, odo)
            ticks.append(clock() - k0)
        else:
            tick(t, odo)
    dt = time.perf_counter() - t0
    ticks.sort()
    span = (ops[-1][1] - ops[0][1]) if ops else 0.0
    crossed = sum(1 for b in range(2) if ops and ops[0][1] < BOUNDARY_T + b * 600 <= ops[-1][1])
    ceiling = _ceiling()
    sys.stdout.write(
        f"classifier alone (advert + tick per advert, stop visits replayed): {n:,} adverts "
        f"over {span:.0f} s of trace ({crossed} rid boundary crossed, "
        f"{clf.tokens_in_range(ops[-1][1] if ops else None)} tokens in range at the end) "
        f"in {dt:.2f} s = {n / dt:,.0f} adverts/s; {clf.confirmed} confirmations, "
        f"{sum(clf.closed.values())} segments, {clf.on_board()} on board\n"
        f"  ticks: {len(ticks):,}, longest {ticks[-1] * 1e3:.1f} ms, "
        f"p99 {ticks[int(len(ticks) * 0.99)] * 1e3:.1f} ms, total {sum(ticks):.2f} s\n"
        f"  ceiling (bare HMAC-SHA256 of 15 bytes, same run): {ceiling:,.0f}/s; "
        f"classifier = {n / dt / ceiling:.2f}x the ceiling\n"
    )
    pipe = EdgePipeline("BENCH", gtfs, verifier)
    feed = pipe.feed
    n_seg = 0
    t0 = time.perf_counter()
    for r in stream:
        n_seg += len(feed(r))
    n_seg += len(pipe.finish(stream[-1].t + 60))
    dt = time.perf_counter() - t0
    st = pipe.stats
    sys.stdout.write(
        f"full pipeline (TokenVerifier + vehicle + classifier): {len(stream):,} records "
        f"({st.adverts_seen:,} adverts, {st.adverts_accepted:,} accepted) in {dt:.2f} s = "
        f"{st.adverts_seen / dt:,.0f} adverts/s; {n_seg} segments\n"
    )
    uncached = EdgePipeline(
        "BENCH", gtfs, verifier_for(recs), ClassifierParams(verify_cache_size=0)
    )
    m = min(len(stream), 50_000)
    t0 = time.perf_counter()
    for r in stream[:m]:
        uncached.feed(r)
    dt = time.perf_counter() - t0
    sys.stdout.write(
        f"full pipeline without the payload memo: {uncached.adverts_seen:,} adverts in "
        f"{dt:.2f} s = {uncached.adverts_seen / dt:,.0f} adverts/s\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.edge_classifier",
        description="Throughput of the presence classifier and the edge pipeline.",
        epilog="examples: python -m benchmarks.edge_classifier --adverts 300000 --tokens 300;"
        " python -m benchmarks.edge_classifier --crowd --tokens 3000 --adverts 1500000",
    )
    ap.add_argument("--adverts", type=int, default=300_000)
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--crowd",
        action="store_true",
        help="all riders board at stop 0 and a rid boundary comes 60 s after the bus leaves"
        " it (every token rotates within seconds); the trace ends 150 s after the boundary",
    )
    args = ap.parse_args(argv)
    from busbell import configure_logging

    configure_logging("warning")  # debug logs of the classifier would dominate the timing
    _bench(args.adverts, args.tokens, args.seed, args.crowd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
