"""Why a bus charged nobody for a rider it carried: every missed leg of a kept run, by cause.

An analysis tool for the accuracy work (issue 11), beside :mod:`edge._trace_rider`: for
each observable leg a kept scenario's ``score.json`` lists as missed, it replays that bus's
trace once through :class:`~edge._pipeline.EdgePipeline` in process (every missed rider of
the bus at once), with the classifier's debug events on, and says where the rider's rids
went during the leg:

* ``never_heard``: the bus accepted no advert of theirs during the leg;
* ``never_candidate``: heard, but no rid of theirs was ever a candidate (or a rotating
  rid) from the leg's boarding on: first heard moving, never at a stop's open doors;
* ``dropped:<why>``: a candidate (or rotating rid) was made and dropped, by the rule
  ``why`` of the classifier's ``rid_dropped`` event (``silent``, ``left_behind``,
  ``rid_ended``, ``rotating_silent``, ``rotating_unpaired_thin``,
  ``rotating_unpaired_not_rider``; ``docs/classifier.md``), ``dropped:finish`` when the
  trace ended with it a candidate, ``dropped:none`` when it was still a candidate;
* ``discarded``: confirmed, but its segment was discarded as never ridden
  (``segment_discarded``);
* ``sent_tentative`` / ``sent_segment``: the edge sent a tentative piece or a segment
  overlapping the leg, which settlement did not charge (held, or a piece judged too thin).

The first three of these and ``discarded`` are legs the edge never emitted. Each leg also
gets the evidence the bus had: adverts during the leg, how many while moving, the rider's
median RSSI against the riders' level the classifier held, the most co-movement points any
of its candidacies gathered, whether a rid of theirs was heard at the boarding stop's
open doors (with the truth's door times unknown to the edge, "open doors" are the
classifier's stop visits), and the echoes its adverts carried (token byte 23: how many
named this bus, how many another; docs/classifier.md, "Twentieth pass").

It reads the simulator's files by name (no import of ``firmware_sim``). ``busbell edge
why-missed`` is its command line (``docs/simulator.md``).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median_high
from typing import Any

import structlog

from busbell import AdvRecord, TokenVerifier, load_gtfs, read_fleet_keys
from busbell._cliutil import dirs_holding
from busbell._echo import bus_tag, echo_code
from edge._classifier import State
from edge._params import ClassifierParams
from edge._pipeline import EdgePipeline
from edge._segment import SegmentDraft
from edge._trace_rider import _read_trace, _rid_of, _token_key, errors_of, rids_of

__all__ = ["MissedLeg", "cause_table", "missed_legs", "scenario_dirs"]

_LOOKBACK_S = 60.0
"""Adverts and decisions this long before the true boarding count for the leg (a rider
waiting at the stop is heard before the doors open)."""
_AFTER_S = 900.0
"""Decisions about the leg's rids this long after the true alighting count (a candidate
is dropped after a silence, well after the rider got off)."""

_EDGE_CAUSES = ("never_heard", "never_candidate", "dropped", "discarded")
_ECHO_BYTE = 23
"""The token payload's echo byte (docs/protocol.md, "Bus beacon v1 and the echo")."""


@dataclass(slots=True)
class MissedLeg:
    """One missed observable leg and where its rider's rids went.

    Attributes:
        scenario: the scenario directory.
        rider_id: the rider.
        bus_id: the bus they rode.
        board_stop_id: true boarding stop.
        alight_stop_id: true alighting stop.
        board_t: true boarding time.
        alight_t: true alighting time.
        cause: ``never_heard``, ``never_candidate``, ``dropped:<why>``, ``discarded``,
            ``sent_tentative`` or ``sent_segment`` (module docstring).
        adverts: adverts of the rider's rids the bus accepted during the leg.
        moving: of those, heard with no stop visit open.
        at_board_doors: of those, heard while the boarding stop's visit was open.
        median_rssi: their median RSSI (``None`` if none).
        riders_lvl: the median riders' level at those adverts (``None`` if unknown).
        points: points the bus heard them at while moving during the leg, any rid, any
            level, ``sparse_step_m`` apart: an upper bound of what one candidacy gathers.
        co_n: the most co-movement points any candidacy of theirs gathered.
        again_pts: the most points a rid of theirs was heard at while moving after a drop
            and before the next doors opened (a candidate dropped for a silence, then heard
            moving with the bus again).
        echo_own: of the adverts during the leg, those whose echo named this bus.
        echo_other: those whose echo named another bus (0: no echo, in neither).
        heard_from: their first advert during the leg (``inf`` if none).
        heard_to: their last advert during the leg.
        states: the states the leg's rids entered, in order, per rid (``i<interval>``).
        drops: the ``rid_dropped`` events of the leg's rids (``why`` and fields).
    """

    scenario: Path
    rider_id: str
    bus_id: str
    board_stop_id: str
    alight_stop_id: str
    board_t: float
    alight_t: float
    cause: str = ""
    adverts: int = 0
    moving: int = 0
    at_board_doors: int = 0
    median_rssi: float | None = None
    riders_lvl: float | None = None
    co_n: int = 0
    points: int = 0
    again_pts: int = 0
    echo_own: int = 0
    echo_other: int = 0
    heard_from: float = math.inf
    heard_to: float = -math.inf
    states: dict[str, list[str]] = field(default_factory=dict)
    drops: list[dict[str, Any]] = field(default_factory=list)

    @property
    def heard(self) -> str:
        """Where in the ride the bus heard the rider.

        ``none``, ``end`` (only in the last third of the ride's time, the walk to the
        door included), ``start`` (only in the first third, the wait at the stop
        included), ``middle`` (only within one third between) or ``spread`` (over a
        third of the ride or more).
        """
        if self.adverts == 0:
            return "none"
        d = max(self.alight_t - self.board_t, 1.0)
        a, b = (self.heard_from - self.board_t) / d, (self.heard_to - self.board_t) / d
        if b - a >= 1.0 / 3.0:
            return "spread"
        if a >= 2.0 / 3.0:
            return "end"
        if b <= 1.0 / 3.0:
            return "start"
        return "middle"

    @property
    def never_emitted(self) -> bool:
        """Whether the edge sent nothing of the leg (the cause is the edge's)."""
        return self.cause.split(":")[0] in _EDGE_CAUSES

    @property
    def evidence(self) -> str:
        """The evidence the bus had, coarsely, for a leg the edge never emitted.

        ``end_only`` (heard only in the last third of the ride: the walk to the door says
        nothing of where they boarded), ``points<=2`` or ``points=3`` (co-movement points
        over the whole leg, any rid, any level: fewer than ``sparse_adverts`` would ask of
        one candidacy), ``heard_again`` (four points or more, a candidacy dropped on the
        way and its rid heard moving with the bus at three points or more before the next
        doors opened), ``points>=4`` (four or more, other); ``-`` for a leg the edge sent.
        """
        if not self.never_emitted:
            return "-"
        if self.heard in ("end", "none"):
            return "end_only" if self.heard == "end" else "none"
        if self.points <= 2:
            return "points<=2"
        if self.points == 3:
            return "points=3"
        return "heard_again" if self.again_pts >= 3 else "points>=4"

    def line(self) -> str:
        """One line: the leg, the cause and the evidence."""
        med = "-" if self.median_rssi is None else f"{self.median_rssi:.0f}"
        lvl = "-" if self.riders_lvl is None else f"{self.riders_lvl:.0f}"
        st = "; ".join(f"{k}: {'>'.join(v)}" for k, v in self.states.items())
        echo = (
            f"echo this bus {self.echo_own}, another {self.echo_other}; "
            if self.echo_own or self.echo_other
            else ""
        )
        return (
            f"{self.scenario.name} {self.rider_id} {self.bus_id} {self.board_stop_id}->"
            f"{self.alight_stop_id}: {self.cause}; heard {self.heard}: {self.adverts} adverts "
            f"({self.moving} "
            f"moving, {self.at_board_doors} at the boarding doors), median {med} dBm vs "
            f"riders {lvl}, {self.points} points moving, co_n {self.co_n}, heard again after "
            f"a drop {self.again_pts}; {echo}"
            f"states {st or '-'}"
        )


@dataclass(slots=True)
class _Heard:
    """What one replay recorded of one rid."""

    adverts: list[tuple[float, int, bool, str | None, float, float]] = field(default_factory=list)
    """``(t, rssi, moving, open visit's stop, riders' level, odometer)`` per accepted advert."""
    states: list[tuple[float, State]] = field(default_factory=list)
    segments: list[SegmentDraft] = field(default_factory=list)
    co_n: list[tuple[float, int]] = field(default_factory=list)
    echoes: list[tuple[float, int]] = field(default_factory=list)
    """``(t, echo)`` per accepted advert whose echo (payload byte 23) was not 0."""


@contextmanager
def _debug_events() -> Iterator[list[dict[str, Any]]]:
    """Collect every structlog event at debug level while the block runs (then restore)."""
    got: list[dict[str, Any]] = []
    old = structlog.get_config()

    def keep(_logger: Any, _method: str, event: Any) -> Any:
        got.append(dict(event))
        raise structlog.DropEvent

    structlog.configure(
        processors=[keep], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)
    )
    try:
        yield got
    finally:
        structlog.configure(**old)


def _replay(
    scenario: Path, bus_id: str, rids: Mapping[bytes, int], params: ClassifierParams
) -> tuple[dict[bytes, _Heard], list[dict[str, Any]]]:
    """Replay one bus; what it did with ``rids`` and its classifier's debug events."""
    truth = json.loads((scenario / "truth.json").read_text(encoding="utf-8"))
    trace = next(b["trace"] for b in truth["buses"] if b["bus_id"] == bus_id)
    verifier = TokenVerifier(read_fleet_keys(scenario / "FLEET.csv"), window_s=params.tq_window_s)
    pipe = EdgePipeline(bus_id, load_gtfs(scenario / "gtfs"), verifier, params)
    _, records = _read_trace(scenario / trace)
    cls, veh = pipe.classifier, pipe.vehicle
    heard = {rid: _Heard() for rid in rids}
    company = params.company_id
    t = 0.0
    with _debug_events() as events:
        for rec in records:
            t = rec.t
            drafts = pipe.feed(rec)
            if type(rec) is AdvRecord:
                rid = _rid_of(rec.mfr.get(company))
                h = heard.get(rid) if rid is not None else None
                r = cls._rids.get(rid) if rid is not None else None
                if h is not None and r is not None and r.last_t == rec.t:
                    payload = rec.mfr.get(company)
                    if payload is not None and len(payload) > _ECHO_BYTE and payload[_ECHO_BYTE]:
                        h.echoes.append((t, payload[_ECHO_BYTE]))
                    v = veh.current_visit
                    stop = None if v is None else v.stop_id
                    h.adverts.append(
                        (t, rec.rssi, v is None, stop, cls._riders_lvl, veh.odometer_m)
                    )
            for rid, h in heard.items():
                r = cls._rids.get(rid)
                if r is None:
                    continue
                st = State(r.state)
                if not h.states or h.states[-1][1] != st:
                    h.states.append((t, st))
                if r.co_n and (not h.co_n or h.co_n[-1][1] != r.co_n):
                    h.co_n.append((t, r.co_n))
            _keep_segments(drafts, heard)
        _keep_segments(pipe.finish(t), heard)
        for rid, h in heard.items():
            r = cls._rids.get(rid)
            if r is not None and (not h.states or h.states[-1][1] != State(r.state)):
                h.states.append((t, State(r.state)))
    return heard, events


def _keep_segments(drafts: Iterable[SegmentDraft], heard: dict[bytes, _Heard]) -> None:
    for d in drafts:
        h = heard.get(bytes.fromhex(d.rid))
        if h is not None:
            h.segments.append(d)


def _points(odos: Iterable[float], step: float) -> int:
    """Points ``step`` or more apart along the way (as the co-movement rules space them)."""
    n, prev = 0, -math.inf
    for o in sorted(odos):
        if o >= prev + step:
            n, prev = n + 1, o
    return n


def _evidence(
    leg: MissedLeg, mine: Mapping[bytes, int], heard: Mapping[bytes, _Heard], step: float
) -> list[bytes]:
    """Fill in what the bus heard of the leg; the rider's rids it heard during it."""
    t0, t1 = leg.board_t - _LOOKBACK_S, leg.alight_t + 1.0
    rssi: list[int] = []
    lvls: list[float] = []
    odos: list[float] = []
    in_leg: list[bytes] = []
    tag = bus_tag(leg.bus_id)
    for rid in mine:
        advs = [a for a in heard[rid].adverts if t0 <= a[0] <= t1]
        if advs:
            in_leg.append(rid)
        echoes = [e for t, e in heard[rid].echoes if t0 <= t <= t1]
        if echoes:
            code = echo_code(tag, rid)
            own = sum(1 for e in echoes if e >> 3 == code)
            leg.echo_own += own
            leg.echo_other += len(echoes) - own
        for t, level, moving, stop, riders, odo in advs:
            rssi.append(level)
            leg.heard_from = min(leg.heard_from, t)
            leg.heard_to = max(leg.heard_to, t)
            if moving:
                leg.moving += 1
                odos.append(odo)
            if stop == leg.board_stop_id:
                leg.at_board_doors += 1
            if riders != math.inf:
                lvls.append(riders)
    leg.adverts = len(rssi)
    leg.points = _points(odos, step)
    if rssi:
        leg.median_rssi = float(median_high(rssi))
    if lvls:
        leg.riders_lvl = float(median_high(lvls))
    return in_leg


def _judge(
    leg: MissedLeg,
    mine: Mapping[bytes, int],
    heard: Mapping[bytes, _Heard],
    events: list[dict[str, Any]],
    step: float,
) -> None:
    in_leg = _evidence(leg, mine, heard, step)
    if not in_leg:
        leg.cause = "never_heard"
        return
    t0, end = leg.board_t - _LOOKBACK_S, leg.alight_t + _AFTER_S
    hexes = {rid.hex(): rid for rid in in_leg}
    for rid in in_leg:
        h = heard[rid]
        leg.states[f"i{mine[rid]}"] = [s.name for t, s in h.states if t0 <= t <= end]
        leg.co_n = max([leg.co_n, *(n for t, n in h.co_n if t0 <= t <= end)])
    sent = [
        d
        for rid in in_leg
        for d in heard[rid].segments
        if d.end.t >= leg.board_t - _LOOKBACK_S and d.start.t <= leg.alight_t + _LOOKBACK_S
    ]
    if sent:
        whole = any(d.start.cause != "tentative" for d in sent)
        leg.cause = "sent_segment" if whole else "sent_tentative"
        return
    mine_events = [
        e for e in events if e.get("rid") in hexes and t0 <= float(e.get("t", t0)) <= end
    ]
    if any(e["event"] == "segment_discarded" for e in mine_events):
        leg.cause = "discarded"
        return
    reached = {s for names in leg.states.values() for s in names}
    opens = [float(e["t"]) for e in events if e["event"] == "stop_visit_opened"]
    leg.drops = [
        {k: v for k, v in e.items() if k not in {"event", "log_level", "component"}}
        for e in mine_events
        if e["event"] == "rid_dropped"
    ]
    if leg.drops:
        for d in leg.drops:
            h = heard[hexes[d["rid"]]]
            since = max([t0, *(t for t, s in h.states if t < d["t"] and s == State.GONE)])
            d["co_max"] = max([0, *(n for t, n in h.co_n if since <= t <= d["t"])])
            # heard again moving with the bus before the next doors opened
            nxt = min([math.inf, *(t for t in opens if t > d["t"])])
            odos = [a[5] for a in h.adverts if d["t"] < a[0] < nxt and a[2]]
            d["again"], d["again_pts"] = len(odos), _points(odos, step)
            leg.again_pts = max(leg.again_pts, d["again_pts"])
        # the candidacy that gathered the most co-movement points (the first of those)
        best = max(leg.drops, key=lambda d: d["co_max"])
        leg.cause = "dropped:" + best["why"]
    elif reached & {"CANDIDATE", "ROTATING"}:
        last = [names[-1] for names in leg.states.values() if names]
        leg.cause = "dropped:finish" if "GONE" in last else "dropped:none"
    elif "ONBOARD" in reached:
        leg.cause = "confirmed_unsent"
    else:
        leg.cause = "never_candidate"


def missed_legs(scenario: Path, params: ClassifierParams | None = None) -> list[MissedLeg]:
    """Every missed observable leg of a kept scenario, with its cause.

    Each bus with a missed leg is replayed once, with every missed rider's rids.
    """
    p = params or ClassifierParams()
    truth = json.loads((scenario / "truth.json").read_text(encoding="utf-8"))
    t_start, t_end = float(truth["t_start"]), float(truth["t_end"])
    by_bus: dict[str, list[MissedLeg]] = {}
    for e in errors_of(scenario):
        if e["kind"] != "missed":
            continue
        lg = e["leg"]
        by_bus.setdefault(e["bus_id"], []).append(
            MissedLeg(
                scenario,
                e["rider_id"],
                e["bus_id"],
                lg["board_stop_id"],
                lg["alight_stop_id"],
                float(lg["board_t"]),
                float(lg["alight_t"]),
            )
        )
    out: list[MissedLeg] = []
    for bus_id, legs in sorted(by_bus.items()):
        of_rider = {
            rider: rids_of(_token_key(scenario, rider), t_start, t_end)
            for rider in {lg.rider_id for lg in legs}
        }
        every = {rid: i for rids in of_rider.values() for rid, i in rids.items()}
        heard, events = _replay(scenario, bus_id, every, p)
        for lg in legs:
            _judge(lg, of_rider[lg.rider_id], heard, events, p.sparse_step_m)
            out.append(lg)
    return out


def scenario_dirs(paths: Iterable[Path]) -> list[Path]:
    """The kept scenario directories (with a ``score.json``) at or under ``paths``."""
    return dirs_holding(paths, "score.json")


def cause_table(legs: Iterable[MissedLeg], *, heard: bool = False, evidence: bool = False) -> str:
    """Counts by cause, per cell directory (``cell-NN`` in the path) and in all.

    Args:
        legs: the missed legs.
        heard: count by cause and where in the ride the bus heard the rider
            (:attr:`MissedLeg.heard`).
        evidence: count the legs the edge never emitted by the evidence the bus had
            (:attr:`MissedLeg.evidence`).
    """
    counts: Counter[tuple[str, str]] = Counter()
    cells: set[str] = set()
    for lg in legs:
        cell = next((part for part in lg.scenario.parts if part.startswith("cell-")), "-")
        cells.add(cell)
        if evidence:
            if lg.never_emitted:
                counts[(f"never emitted, {lg.evidence}", cell)] += 1
            continue
        counts[(f"{lg.cause} ({lg.heard})" if heard else lg.cause, cell)] += 1
    order = sorted(cells)
    causes = sorted({c for c, _ in counts}, key=lambda c: (-sum(counts[(c, x)] for x in order), c))
    head = f"{'cause':44}" + "".join(f"{c:>9}" for c in order) + f"{'all':>7}"
    lines = [head]
    for c in causes:
        row = [counts[(c, x)] for x in order]
        lines.append(f"{c:44}" + "".join(f"{n:>9}" for n in row) + f"{sum(row):>7}")
    total = [sum(n for (c, x), n in counts.items() if x == cell) for cell in order]
    lines.append(f"{'all':44}" + "".join(f"{n:>9}" for n in total) + f"{sum(total):>7}")
    return "\n".join(lines)
