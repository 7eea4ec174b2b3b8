"""A synthetic bus line for edge tests and benchmarks: a GTFS feed, fleet keys, and BLE
traces of riders boarding and alighting (moved out of benchmarks/edge_classifier.py)."""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from backend._fare_engine import FareEngine
from backend._fare_rules import load_rules
from backend._journeys import JourneyBuilder, Segment
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
    offset_m,
    rid_for_interval,
)
from edge._params import ClassifierParams
from edge._pipeline import EdgePipeline
from edge._segment import SegmentDraft

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

    # (the latest opening at or before tt decides: openings rise and all last dwell_s; a
    # bisection, not a scan of every stop's, for each advert)
    opened = [o for o in opens if not math.isnan(o)]

    def door_open_at(tt: float) -> bool:
        i = bisect.bisect_right(opened, tt)
        return i > 0 and tt < opened[i - 1] + plan.dwell_s

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


def fleet_keys_for(recs: Sequence[TraceRecord]) -> dict[int, bytes]:
    """The fleet keys of the days the trace covers (and neighbours), by day."""
    days = {day_of(r.t) for r in recs}
    return {d + k: fleet_key_of(d + k) for d in days for k in (-1, 0, 1)}


def verifier_for(recs: Sequence[TraceRecord]) -> TokenVerifier:
    """A verifier holding the fleet keys of the days the trace covers (and neighbours).

    A pass over every record: a test that builds many verifiers for one trace (a restore
    every few records) takes :func:`fleet_keys_for` once and a ``TokenVerifier`` of them
    each time.
    """
    return TokenVerifier(fleet_keys_for(recs))


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


def assert_fare_invariants(
    drafts: Sequence[SegmentDraft], tokens: Sequence[SynthToken], feed: Feed, trip_id: str = "T1"
) -> None:
    """The invariants of issue 11 over one replay's drafts, through the backend's journeys.

    One rid's segments never overlap (the live fault suite's check after restarts); every
    draft is some token's; no rider is charged twice for one bus trip; no charged leg boards
    at or after its alighting stop on ``trip_id``.
    """
    ends: dict[str, float] = {}
    for d in sorted(drafts, key=lambda d: d.start.t):
        assert d.start.t >= ends.get(d.rid, -math.inf), f"rid {d.rid} overlaps itself"
        ends[d.rid] = d.end.t
    segments = []
    for n, d in enumerate(drafts, 1):
        assert d.start.t <= d.end.t
        assert d.distance_m >= 0.0
        k = token_of(d, tokens)
        assert k is not None
        ev = {**d.to_event_fields(), "bus_id": "SYN", "seq": n, "event_id": f"e{n}"}
        segments.append(Segment.from_event(ev, rider_id=f"tok{k}"))
    trips: set[tuple[str, str, str | None]] = set()
    trip = feed.trips[trip_id]
    for j in JourneyBuilder(FareEngine(load_rules()), feed).build(segments):
        if not j.charged:
            continue
        for leg in j.legs:
            key = (leg.rider_id, leg.bus_id, leg.trip_id)
            assert key not in trips, f"charged twice for one trip: {key}"
            trips.add(key)
            b, a = leg.board_stop_id, leg.alight_stop_id
            if b is not None and a is not None:
                assert b != a
                if b in trip.stop_ids and a in trip.stop_ids:
                    assert trip.stop_ids.index(b) < trip.stop_ids.index(a)


__all__ = [
    "COMPANY",
    "BusPlan",
    "SynthToken",
    "assert_fare_invariants",
    "bus_timeline",
    "fleet_key_of",
    "latlon",
    "replay",
    "synth_trace",
    "token_of",
    "verifier_for",
    "write_gtfs",
]
