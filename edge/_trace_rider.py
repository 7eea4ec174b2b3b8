"""Trace one rider through a bus's classifier: every advert of their rids and every decision.

An analysis tool for the accuracy work (issue 11): given a scenario directory written by
``busbell sim scenario`` / ``busbell sim score --keep`` (``traces/``, ``gtfs/``,
``FLEET.csv``, ``RIDERS.csv``, ``JOURNEYS.jsonl``, ``truth.json``, ``score.json``), it
derives the rider's rids from their token key (as the backend does), replays the bus's
trace through :class:`~edge._pipeline.EdgePipeline` in process, and reports, for each
advert of those rids the bus accepted: the time, RSSI, what the bus was doing (standing at
a stop with its doors open, or how far past the last one), the rid's classifier state
after it, its smoothed level and the riders' level; every state change of those rids (a
tick can change one without an advert), every stop visit, and every segment they closed.

The summary of a leg (:class:`LegEvidence`) is the evidence the bus had: how many adverts
it decoded while the rider was aboard, how many while moving, over how much travel,
and at what level against the riders aboard (the classifier's ``riders' level``).

It reads the simulator's files by name only (no import of ``firmware_sim``: the edge and
the simulator stay independent) and is not part of the daemon. ``busbell edge
trace-rider`` is its command line (``docs/simulator.md``).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median_high
from typing import Any

from busbell import (
    AdvRecord,
    BusbellError,
    TokenRejected,
    TokenVerifier,
    TraceReader,
    TraceRecord,
    derive_rider_keys,
    interval_of,
    load_gtfs,
    parse_payload,
    read_fleet_keys,
    rid_for_interval,
)
from edge._classifier import PresenceClassifier, State
from edge._params import ClassifierParams
from edge._pipeline import EdgePipeline
from edge._segment import SegmentDraft

__all__ = [
    "LegEvidence",
    "TraceRow",
    "errors_of",
    "format_rows",
    "leg_evidence",
    "rids_of",
    "trace_bus",
    "trace_rider",
    "true_legs",
]


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One line of a rider's trace on one bus.

    Attributes:
        t: GNSS time.
        kind: ``adv`` (an accepted advert of the rider), ``state`` (a rid's state changed),
            ``pair`` (a rid entered or left the rotation pool, or its pairing changed),
            ``visit`` (doors opened/closed), ``segment`` (a segment of the rider closed).
        rid: the rid's label (``i<interval>``) or ``""``.
        text: what happened, human-readable.
        rssi: the advert's RSSI (``adv`` only).
        moving: whether the bus was between stops (no visit open) at the advert.
        odo: the bus's odometer (m).
        riders_lvl: the riders' level the classifier held (dBm, ``inf`` unknown).
    """

    t: float
    kind: str
    rid: str
    text: str
    rssi: int | None = None
    moving: bool = False
    odo: float = 0.0
    riders_lvl: float = math.inf


@dataclass(slots=True)
class LegEvidence:
    """What the bus had of a rider during one true leg (board to alight).

    Attributes:
        adverts: adverts of the rider's rids the bus accepted during the leg.
        moving: of those, heard with no stop visit open.
        travel_m: odometer from the first to the last advert heard while moving.
        rids: distinct rids heard during the leg.
        median_rssi: median RSSI of those adverts (``None`` if none).
        riders_lvl: median riders' level at those adverts (``inf`` if unknown).
        states: every state each rid entered, in order (``rid label -> state names``).
        segments: the rider's segments this bus closed (any time), as text.
    """

    adverts: int = 0
    moving: int = 0
    travel_m: float = 0.0
    rids: int = 0
    median_rssi: float | None = None
    riders_lvl: float = math.inf
    states: dict[str, list[str]] = field(default_factory=dict)
    segments: list[str] = field(default_factory=list)

    def line(self) -> str:
        """A one-line summary."""
        lvl = "-" if self.riders_lvl == math.inf else f"{self.riders_lvl:.0f}"
        med = "-" if self.median_rssi is None else f"{self.median_rssi:.0f}"
        st = "; ".join(f"{k}: {'>'.join(v)}" for k, v in self.states.items())
        return (
            f"{self.adverts} adverts ({self.moving} moving over {self.travel_m:.0f} m), "
            f"{self.rids} rids, median {med} dBm vs riders {lvl}; states {st or '-'}; "
            f"segments {' | '.join(self.segments) or 'none'}"
        )


def rids_of(token_key: bytes, t0: float, t1: float) -> dict[bytes, int]:
    """The rids a token broadcasts from ``t0`` to ``t1`` (one interval of slack each way).

    Returns:
        ``rid -> interval``.
    """
    keys = derive_rider_keys(token_key)
    first = interval_of(t0) - 1
    last = interval_of(t1) + 1
    return {rid_for_interval(keys.rid_key, i): i for i in range(first, last + 1)}


def _rid_of(payload: bytes | None) -> bytes | None:
    """The rid of a token payload (``None``: no payload, or not a valid one)."""
    if payload is None:
        return None
    try:
        return parse_payload(payload).rid
    except TokenRejected:
        return None


def _segment_text(d: SegmentDraft) -> str:
    return (
        f"{d.start.cause} {d.start.stop_id} @{d.start.t:.1f} -> {d.end.cause} "
        f"{d.end.stop_id} @{d.end.t:.1f} ({d.distance_m:.0f} m)"
    )


def trace_bus(
    records: Iterable[TraceRecord],
    pipeline: EdgePipeline,
    rids: Mapping[bytes, int],
) -> Iterator[TraceRow]:
    """Feed ``records`` through ``pipeline``; yield the rows that concern ``rids``.

    Args:
        records: one bus's trace records, in time order (the meta line excluded).
        pipeline: a fresh pipeline for that bus.
        rids: the rider's rids (``rid -> interval``).
    """
    cls = pipeline.classifier
    veh = pipeline.vehicle
    states = dict.fromkeys(rids, State.NEW)
    pairing: dict[bytes, _Pairing] = dict.fromkeys(rids, (None, None, None, False))
    visit_key: tuple[int, bool] | None = None
    t = 0.0
    for rec in records:
        t = rec.t
        drafts = pipeline.feed(rec)
        v = veh.current_visit
        key = None if v is None else (v.seq, v.is_open)
        if key != visit_key:
            if v is not None:
                yield TraceRow(t, "visit", "", f"doors open at {v.stop_id}", odo=veh.odometer_m)
            elif visit_key is not None:
                yield TraceRow(t, "visit", "", "doors closed", odo=veh.odometer_m)
            visit_key = key
        lvl = cls._riders_lvl
        if type(rec) is AdvRecord:
            rid = _rid_of(rec.mfr.get(pipeline.params.company_id))
            if rid is not None and rid in rids:
                r = cls._rids.get(rid)
                extra = ""
                if r is not None:
                    level = "-" if r.lvl is None else f"{r.lvl:.0f}"
                    extra = (
                        f" ewma {r.ewma:.0f} lvl {level} co_n {r.co_n}"
                        f"{' co_only' if r.co_only else ''}{' absent' if r.absent else ''}"
                    )
                    if r.eo_seq >= 0 or r.ex_run:  # (its echo: docs/classifier.md)
                        extra += (
                            f" echo k{r.eo_k} pts {r.eo_pts} late {r.eo_late}"
                            f"{f' other {r.ex_run}' if r.ex_run else ''}"
                        )
                where = (
                    f"at {v.stop_id}"
                    if v is not None
                    else f"{veh.odometer_m - _last_close(pipeline):.0f} m on"
                )
                yield TraceRow(
                    t,
                    "adv",
                    f"i{rids[rid]}",
                    f"{rec.rssi} dBm {where} -> {cls.state_of(rid).name}{extra}",
                    rssi=rec.rssi,
                    moving=v is None,
                    odo=veh.odometer_m,
                    riders_lvl=lvl,
                )
        yield from _changes(t, cls, rids, states, veh.odometer_m)
        yield from _pairing(t, cls, rids, pairing)
        for d in drafts:
            rid_b = bytes.fromhex(d.rid)
            if rid_b in rids:
                yield TraceRow(t, "segment", f"i{d.interval}", _segment_text(d))
    for d in pipeline.finish(t):
        rid_b = bytes.fromhex(d.rid)
        if rid_b in rids:
            yield TraceRow(t, "segment", f"i{d.interval}", "finish: " + _segment_text(d))


def _last_close(pipeline: EdgePipeline) -> float:
    """Odometer where the doors last closed (0 before any stop)."""
    for v in reversed(pipeline.classifier._visits):
        if v.close_odo_m is not None:
            return v.close_odo_m
    return 0.0


def _changes(
    t: float,
    cls: PresenceClassifier,
    rids: Mapping[bytes, int],
    states: dict[bytes, State],
    odo: float,
) -> Iterator[TraceRow]:
    for rid, old in states.items():
        now = cls.state_of(rid)
        if now != old:
            states[rid] = now
            yield TraceRow(t, "state", f"i{rids[rid]}", f"{old.name} -> {now.name}", odo=odo)


_POOL_KIND = {1: "rider", 2: "candidate"}
_Pairing = tuple[int | None, bytes | None, bytes | None, bool]
"""A rid's place in the rotation pairing: its kind in the pool (as an old rid), the old
rid it is paired with (as a new one), the new rid its pool entry is paired with, and
whether it waits for its address' next rid (a candidate's heir)."""


def _pairing_of(cls: PresenceClassifier, rid: bytes, interval: int) -> _Pairing:
    got = cls._olds.get(rid)
    taken = None
    if got is not None:
        taken = next((n for n, o in cls._match.items() if o == rid), None)
    r = cls._rids.get(rid)
    heir = (
        r is not None and bool(r.addr) and cls._heirs.get((interval + 1, r.addr), (b"",))[0] == rid
    )
    return (got[1] if got is not None else None, cls._match.get(rid), taken, heir)


def _label(rids: Mapping[bytes, int], rid: bytes) -> str:
    return f"i{rids[rid]}" if rid in rids else f"another token's rid {rid.hex()}"


def _pairing(
    t: float,
    cls: PresenceClassifier,
    rids: Mapping[bytes, int],
    seen: dict[bytes, _Pairing],
) -> Iterator[TraceRow]:
    """Rows for changes of the rider's rids in the rotation pairing.

    As an old rid: entering or leaving the pool (a rider's or a candidate's), the new rid
    the pool paired it with (the rider's own or another token's), waiting for its
    address' next rid; as a new rid: the old rid it is paired with.
    """
    for rid, was in seen.items():
        now = _pairing_of(cls, rid, rids[rid])
        if now == was:
            continue
        seen[rid] = now
        label = f"i{rids[rid]}"
        texts = []
        if now[0] != was[0]:
            texts.append(
                f"in the rotation pool ({_POOL_KIND.get(now[0], now[0])})"
                if now[0] is not None
                else "out of the rotation pool"
            )
        if now[1] != was[1]:
            texts.append(
                "out of the pairing (confirmed, dropped or re-paired)"
                if now[1] is None
                else f"paired with {_label(rids, now[1])}"
            )
        if now[2] != was[2] and now[2] is not None:
            texts.append(f"its pool entry paired with {_label(rids, now[2])}")
        if now[3] != was[3]:
            texts.append(
                "waits for its address' next rid" if now[3] else "no longer waits for an heir"
            )
        for text in texts:
            yield TraceRow(t, "pair", label, text)


def _read_trace(path: Path) -> tuple[str, list[TraceRecord]]:
    with path.open(encoding="utf-8") as fp:
        reader = TraceReader(fp)
        return reader.meta.bus_id, list(reader)


def _token_key(scenario: Path, rider: str) -> bytes:
    with (scenario / "RIDERS.csv").open(encoding="utf-8", newline="") as fp:
        for row in csv.DictReader(fp):
            if row["rider_id"] == rider:
                return bytes.fromhex(row["token_key"])
    raise BusbellError(f"{rider} is not in {scenario / 'RIDERS.csv'}")


def true_legs(scenario: Path, rider: str) -> list[dict[str, Any]]:
    """The rider's true legs (``JOURNEYS.jsonl``, every journey)."""
    out: list[dict[str, Any]] = []
    with (scenario / "JOURNEYS.jsonl").open(encoding="utf-8") as fp:
        for line in fp:
            j = json.loads(line)
            if j["rider_id"] == rider:
                out.extend(j["legs"])
    return out


def trace_rider(
    scenario: Path,
    rider: str,
    bus_id: str,
    params: ClassifierParams | None = None,
) -> list[TraceRow]:
    """Replay ``bus_id``'s trace of a scenario directory and trace ``rider`` on it."""
    truth = json.loads((scenario / "truth.json").read_text(encoding="utf-8"))
    buses = {b["bus_id"]: b for b in truth["buses"]}
    if bus_id not in buses:
        raise BusbellError(f"no bus {bus_id} in {scenario} (buses: {', '.join(sorted(buses))})")
    rids = rids_of(_token_key(scenario, rider), float(truth["t_start"]), float(truth["t_end"]))
    p = params or ClassifierParams()
    verifier = TokenVerifier(read_fleet_keys(scenario / "FLEET.csv"), window_s=p.tq_window_s)
    pipe = EdgePipeline(bus_id, load_gtfs(scenario / "gtfs"), verifier, p)
    _, records = _read_trace(scenario / buses[bus_id]["trace"])
    return list(trace_bus(records, pipe, rids))


def leg_evidence(rows: Iterable[TraceRow], board_t: float, alight_t: float) -> LegEvidence:
    """Summarise ``rows`` (of :func:`trace_rider`) over one true leg."""
    ev = LegEvidence()
    rssi: list[int] = []
    lvls: list[float] = []
    seen: set[str] = set()
    moving_odo: list[float] = []
    for row in rows:
        if row.kind == "segment":
            ev.segments.append(f"{row.rid} {row.text}")
        if row.kind == "state":
            names = ev.states.setdefault(row.rid, [])
            names.append(row.text.split(" -> ")[1])
        if row.kind != "adv" or not board_t - 1.0 <= row.t <= alight_t + 1.0:
            continue
        ev.adverts += 1
        seen.add(row.rid)
        assert row.rssi is not None
        rssi.append(row.rssi)
        if row.riders_lvl != math.inf:
            lvls.append(row.riders_lvl)
        if row.moving:
            ev.moving += 1
            moving_odo.append(row.odo)
    ev.rids = len(seen)
    if rssi:
        ev.median_rssi = median_high(rssi)
    if lvls:
        ev.riders_lvl = median_high(lvls)
    if moving_odo:
        ev.travel_m = max(moving_odo) - min(moving_odo)
    return ev


def errors_of(scenario: Path) -> list[dict[str, Any]]:
    """The observable legs in error of a kept scenario (``score.json`` details).

    Returns:
        ``{"kind", "rider_id", "bus_id", "leg", "charges"}`` per missed or wrong observable
        leg, and per bystander charge (``leg`` then the charge).
    """
    score = json.loads((scenario / "score.json").read_text(encoding="utf-8"))
    out: list[dict[str, Any]] = []
    for d in score.get("details", []):
        if d["kind"] == "bystander_charged":
            c = d["charge"]
            out.append(
                {
                    "kind": "bystander",
                    "rider_id": c["rider_id"],
                    "bus_id": c["bus_id"],
                    "leg": c,
                    "charges": [c],
                }
            )
        elif d.get("observable", True):
            leg = d["leg"]
            out.append(
                {
                    "kind": d["kind"],
                    "rider_id": leg["rider_id"],
                    "bus_id": leg["bus_id"],
                    "leg": leg,
                    "charges": d.get("charges", []),
                }
            )
    return out


def format_rows(rows: Iterable[TraceRow], t0: float = 0.0) -> str:
    """The rows as text, times relative to ``t0``."""
    lines = []
    for r in rows:
        lines.append(f"{r.t - t0:9.1f} {r.kind:7} {r.rid:9} {r.text}")
    return "\n".join(lines)
