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
from pathlib import Path
from typing import Any

from busbell import (
    AdvRecord,
    Feed,
    TokenVerifier,
    TraceRecord,
    load_gtfs,
)
from edge._classifier import PresenceClassifier
from edge._params import ClassifierParams
from edge._pipeline import EdgePipeline
from edge._vehicle import StopVisit, VehicleContext
from tests.factories.edge_world import (
    COMPANY,
    ROUTE_ID,
    TRIP_ID,
    BusPlan,
    SynthToken,
    bus_timeline,
    synth_trace,
    verifier_for,
    write_gtfs,
)

__all__ = ["bench_tokens", "crowd_plan", "edge_build", "main"]


BOUNDARY_T = 1_790_001_000.0
"""A 600-s rid interval boundary (the crowd benchmark puts it just after departure)."""


def edge_build() -> str:
    """Which build of the edge's hot path this process runs (``setup.py``, ``BUSBELL_MYPYC``)."""
    import edge._classifier
    from edge._build import compiled_modules

    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    where = Path(edge._classifier.__file__ or "").parent
    return f"compiled by mypyc ({', '.join(compiled)}; from {where})"


def crowd_plan(seconds_after: float) -> BusPlan:
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


def bench_tokens(n_tokens: int, rng: random.Random, plan: BusPlan, crowd: bool) -> list[SynthToken]:
    """The benchmark's tokens: 4 in 5 riders, 1 in 5 bystanders at the stops.

    ``crowd``: every rider boards at stop 0 and rides to one of the last four stops
    (so with :func:`crowd_plan` all of them are in range as the rid boundary passes).
    """
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
    return tokens


def _bench(n_adverts: int, n_tokens: int, seed: int, crowd: bool = False) -> None:
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="busbell-bench-"))
    plan = crowd_plan(60.0) if crowd else BusPlan(n_stops=30, dwell_s=20.0)
    gtfs = load_gtfs(write_gtfs(tmp / "gtfs", plan.n_stops, plan.spacing_m))
    tokens = bench_tokens(n_tokens, rng, plan, crowd)
    t0 = time.perf_counter()
    until = BOUNDARY_T + 150.0 if crowd else None
    recs, _ = synth_trace(plan, tokens, seed=seed, until=until)
    advs = [r for r in recs if isinstance(r, AdvRecord)]
    n_adverts = min(n_adverts, len(advs)) if crowd else n_adverts
    while len(advs) < n_adverts:  # not enough: cycle (timing only)
        advs = advs + advs
    gen_s = time.perf_counter() - t0
    sys.stdout.write(f"edge build: {edge_build()}\n")
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
    c0 = time.process_time()
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
    dc = time.process_time() - c0
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
        f"classifier = {n / dt / ceiling:.2f}x the ceiling; CPU {dc / n * 1e6:.2f} us/advert\n"
    )
    _bench_pipeline(gtfs, stream, recs, verifier)


def _bench_pipeline(
    gtfs: Feed, stream: list[TraceRecord], recs: list[TraceRecord], verifier: TokenVerifier
) -> None:
    """The full pipeline over the same stream, then without the payload memo."""
    pipe = EdgePipeline("BENCH", gtfs, verifier)
    feed = pipe.feed
    n_seg = 0
    t0 = time.perf_counter()
    c0 = time.process_time()
    for r in stream:
        n_seg += len(feed(r))
    n_seg += len(pipe.finish(stream[-1].t + 60))
    dt = time.perf_counter() - t0
    dc = time.process_time() - c0
    st = pipe.stats
    ceiling = _ceiling()
    sys.stdout.write(
        f"full pipeline (TokenVerifier + vehicle + classifier): {len(stream):,} records "
        f"({st.adverts_seen:,} adverts, {st.adverts_accepted:,} accepted) in {dt:.2f} s = "
        f"{st.adverts_seen / dt:,.0f} adverts/s; {n_seg} segments\n"
        f"  = {st.adverts_seen / dt / ceiling:.2f}x the ceiling timed after it "
        f"({ceiling:,.0f}/s); CPU {dc / st.adverts_seen * 1e6:.2f} us/advert\n"
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
