"""A hindsight upper bound on the legs any presence rule can charge, and the misses by cause.

The scorer counts a leg observable when the bus heard the rider even once during it
(:mod:`firmware_sim._heard`). Whether a classifier can reach the targets on a cell then
depends on how much of what the bus heard of its riders looks like nothing it heard of
anybody else. This measures it on kept scenario directories (``busbell sim score --keep``),
from the files as written (traces, ``truth.json``, ``RIDERS.csv``, ``JOURNEYS.jsonl``):

* every **true leg**: the rider's adverts the bus heard from boarding to alighting (true
  times), the rider's rids linked by the truth (``RIDERS.csv``: an oracle linking, so
  rotations, rid addresses and clock offsets cost nothing here);
* every **non-leg**: the adverts a bus heard of a person while that person was not on a
  leg of that bus (waiters for other buses, pedestrians, car occupants, riders of another
  bus, a rider before or after their own ride), cut into episodes at silences longer than
  ``--gap`` seconds; an episode within :data:`~firmware_sim._score.MATCH_SLACK_S` of the
  person's own leg on that bus is the leg's (a charge from it would match the leg).

Of each the features (:class:`Heard`, :data:`FEATURES`): adverts; duration (first to last
advert); distinct positions heard while the bus moved (``POSITION_STEP_M`` odometer bins
of the trace's GNSS); the odometer span heard while moving; the stops whose doors it was
heard past (``DOOR_PAST_M`` before the stop and after it); the stop visits it was heard
at (truth.json's calls, arrival to departure); the median level against the riders aboard
then (adverts of true legs of that bus within ``LEVEL_WINDOW_S``); the adverts whose
byte-23 echo names this bus (``echo_code(bus_tag(bus), rid)``). Higher is more like a
rider on every one (a rule is *monotone*).

Two bounds, with hindsight on all the data given, at most ``floor(passes / 10,000)``
non-leg episodes charged (passes as truth.json counts them: the scorer's 1 bystander per
10,000 passes; each charged episode would be one bystander charge):

* **any monotone rule** (:func:`monotone_bound`): the legs no non-leg *dominates* (is at
  or above on every feature), and with charges allowed those under the best set of that
  many non-legs (searched exhaustively). No rule that charges a leg without charging whatever was
  heard at least as well on every feature can charge more: an upper bound on every
  monotone classifier of these features, however complex;
* **at most three thresholds** (:func:`best_rule`): the best conjunction of thresholds, the
  kind of rule a classifier pass adds; per cell, and one pooled over the cells.

Why an upper bound: the rider's rids are linked by the truth, the leg's window is the true
one, the riders' level is known, conflicts with the rider's own bus are settled by the
truth, and the thresholds are chosen on the very data they are scored on. A classifier
has none of this, and must also name the stops (the journey figure, observable journeys
whose every leg is charged, bounds exact journeys from above). What it does not bound: a
rule on evidence that is not among these features, or not monotone in them, could separate
more (the report counts the legs the kept run charged that the bound does not).

If the scenario directories hold the kept run's ``score.json``, the classifier's own misses
are compared: how many the bound charges (separable by those features) and which features
separate them. Reads only; generates and scores nothing. Command line:
``python -m benchmarks.presence_bound DIR...`` (:func:`bound_report`).
"""

from __future__ import annotations

import bisect
import json
import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from busbell._cliutil import dirs_holding
from busbell._echo import bus_tag, echo_code
from busbell._errors import TraceError
from busbell._geo import haversine_m
from busbell._trace import GnssRecord, TraceReader
from firmware_sim._heard import (
    RID_SLACK_S,
    leg_windows,
    person_rids,
    trace_adverts,
    unheard_legs,
)
from firmware_sim._score import MATCH_SLACK_S, leg_key, load_journeys

__all__ = [
    "FEATURES",
    "Heard",
    "Leg",
    "NonLeg",
    "Rule",
    "ScenarioMeasure",
    "best_rule",
    "bound_report",
    "measure_scenario",
    "monotone_bound",
    "scenario_dirs",
    "separating",
    "single_thresholds",
]

FEATURES = (
    "adverts",
    "duration_s",
    "positions",
    "span_m",
    "doors",
    "at_doors",
    "level_db",
    "echo_bus",
)
"""The features a rule may put a threshold on, in the order of :meth:`Heard.vector`."""

EPISODE_GAP_S = 120.0
"""A non-leg episode ends at a silence longer than this (default of ``--gap``)."""
MOVING_MPS = 1.0
"""The bus moves when its latest GNSS fix says at least this."""
POSITION_STEP_M = 25.0
"""Distinct positions are odometer bins this long."""
DOOR_PAST_M = 100.0
"""A stop's doors are heard past when heard this far before the stop and this far after it."""
LEVEL_WINDOW_S = 30.0
"""The riders aboard an advert is compared with: their adverts within this either side."""
AROUND_S = 120.0
"""A leg's adverts heard this long before boarding and after alighting are counted apart."""
BYSTANDERS_PER_PASS = 1e-4
"""The target: at most one bystander charge per 10,000 bystander passes."""
ADVERT_BINS = ((0, 0), (1, 2), (3, 5), (6, 20), (21, math.inf))
"""The bins of the legs by adverts heard."""
GRID = 12
"""Thresholds tried per grid feature (quantiles of the legs' values), besides none."""


@dataclass(frozen=True, slots=True)
class Heard:
    """What a bus heard of one person over one leg or episode."""

    adverts: int
    duration_s: float
    """From the first advert to the last."""
    positions: int
    span_m: float
    doors: int
    at_doors: int
    """Stop visits (arrival to departure) during which it was heard."""
    level_db: float
    """Median of (RSSI - the riders aboard then); NaN: no rider aboard heard then."""
    echo_bus: int
    echoed: int
    """Adverts with a non-zero echo, this bus's or another's."""

    def vector(self) -> tuple[float, ...]:
        """The values of :data:`FEATURES` (an unknown level counts as the highest)."""
        level = math.inf if math.isnan(self.level_db) else self.level_db
        return (
            float(self.adverts),
            self.duration_s,
            float(self.positions),
            self.span_m,
            float(self.doors),
            float(self.at_doors),
            level,
            float(self.echo_bus),
        )


@dataclass(frozen=True, slots=True)
class Leg:
    """A true leg, what its bus heard of the rider, and what the kept run charged."""

    scenario: str
    rider_id: str
    bus_id: str
    board_t: float
    alight_t: float
    board_stop_id: str
    alight_stop_id: str
    journey: int
    observable: bool
    heard: Heard
    before: int
    """The rider's adverts the bus heard in the ``AROUND_S`` before boarding."""
    after: int
    """... and in the ``AROUND_S`` after alighting."""
    ends: bool
    """Heard at or just after its boarding stop and just before or at its alighting stop
    (:func:`_ends_heard`): without both, no rule can name its stops but by a guess."""
    verdict: str
    """``score.json``'s: ``exact``, ``missed``, ``wrong`` (stops or twice), or ``""`` (none)."""


@dataclass(frozen=True, slots=True)
class NonLeg:
    """An episode a bus heard of a person not on a leg of that bus."""

    scenario: str
    person: str
    bus_id: str
    t0: float
    t1: float
    riding: bool
    """The person was on an observable leg of another bus meanwhile: a charge from this
    episode would conflict with that leg, and the truth settles the conflict (the backend's
    overlap rules, made perfect), so it is listed but never counted as a bystander charge."""
    heard: Heard


@dataclass(slots=True)
class ScenarioMeasure:
    """The legs and non-legs of one kept scenario."""

    cell: str
    seed: str
    scenario: str
    passes: int
    scored: bool
    """The kept run's ``score.json`` is there (the legs' verdicts are its)."""
    legs: list[Leg] = field(default_factory=list)
    nonlegs: list[NonLeg] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Adv:
    t: float
    rssi: int
    rid: bytes
    echo: int


class _Bus:
    """One bus's trace as a track: odometer, motion, stop visits, riders' levels.

    The stop visits are truth.json's calls, arrival to departure: a bus knows them from its
    GNSS and the GTFS stops even where a door sensor fails (``door_sensor_stuck``).
    """

    def __init__(
        self, bus_id: str, gnss: list[GnssRecord], calls: Sequence[dict[str, Any]]
    ) -> None:
        self.bus_id = bus_id
        self.tag = bus_tag(bus_id)
        self.t: list[float] = []
        self.odo: list[float] = []
        self.speed: list[float] = []
        total = 0.0
        prev: GnssRecord | None = None
        for g in sorted(gnss, key=lambda r: r.t):
            if prev is not None:
                total += haversine_m(prev.lat, prev.lon, g.lat, g.lon)
            self.t.append(g.t)
            self.odo.append(total)
            self.speed.append(g.speed_mps)
            prev = g
        self.visits = sorted((float(c["t_arrive"]), float(c["t_depart"])) for c in calls)
        self._riders: list[tuple[float, int]] = []
        self._ref: dict[int, float | None] = {}
        self._codes: dict[bytes, int] = {}

    def odo_at(self, t: float) -> float:
        """The odometer at ``t`` (linear between fixes)."""
        i = bisect.bisect_right(self.t, t)
        if i == 0:
            return self.odo[0] if self.odo else 0.0
        if i == len(self.t):
            return self.odo[-1]
        t0, t1 = self.t[i - 1], self.t[i]
        f = (t - t0) / (t1 - t0) if t1 > t0 else 0.0
        return self.odo[i - 1] + f * (self.odo[i] - self.odo[i - 1])

    def moving(self, t: float) -> bool:
        """Whether the latest fix at or before ``t`` says the bus moves."""
        i = bisect.bisect_right(self.t, t)
        return i > 0 and self.speed[i - 1] >= MOVING_MPS

    def set_riders(self, levels: list[tuple[float, int]]) -> None:
        """The (t, RSSI) of every advert of a rider on a true leg of this bus."""
        self._riders = sorted(levels)
        self._ref.clear()

    def ref(self, t: float) -> float | None:
        """The median level of the riders aboard within ``LEVEL_WINDOW_S`` of ``t`` (1-s bins)."""
        k = math.floor(t)
        if k not in self._ref:
            a = bisect.bisect_left(self._riders, (k - LEVEL_WINDOW_S, -1000))
            z = bisect.bisect_right(self._riders, (k + 1 + LEVEL_WINDOW_S, 1000))
            rows = self._riders[a:z]
            self._ref[k] = statistics.median(r for _, r in rows) if rows else None
        return self._ref[k]

    def names_me(self, a: _Adv) -> bool:
        """Whether the advert's echo names this bus (its code for the advert's rid)."""
        if not a.echo:
            return False
        code = self._codes.get(a.rid)
        if code is None:
            code = self._codes[a.rid] = echo_code(self.tag, a.rid)
        return a.echo >> 3 == code

    def heard(self, advs: Sequence[_Adv]) -> Heard:
        """The features of a person's adverts (sorted by time) on this bus."""
        every = [(a.t, self.odo_at(a.t)) for a in advs]
        odos = [o for a, (_, o) in zip(advs, every, strict=True) if self.moving(a.t)]
        t_first, t_last = (advs[0].t, advs[-1].t) if advs else (0.0, 0.0)
        doors = 0
        for o, c in self.visits:
            if not t_first < o < c < t_last:
                continue
            at = self.odo_at(o)
            doors += any(t < o and x <= at - DOOR_PAST_M for t, x in every) and any(
                t > c and x >= at + DOOR_PAST_M for t, x in every
            )
        levels = []
        for a in advs:
            r = self.ref(a.t)
            if r is not None:
                levels.append(a.rssi - r)
        return Heard(
            adverts=len(advs),
            duration_s=round(t_last - t_first, 3),
            positions=len({math.floor(o / POSITION_STEP_M) for o in odos}),
            span_m=round(max(odos) - min(odos), 1) if odos else 0.0,
            doors=doors,
            at_doors=sum(
                1
                for o, c in self.visits
                if t_first <= c and t_last >= o and any(o <= t <= c for t, _ in every)
            ),
            level_db=float(statistics.median(levels)) if levels else math.nan,
            echo_bus=sum(1 for a in advs if self.names_me(a)),
            echoed=sum(1 for a in advs if a.echo),
        )


def _read_bus(
    d: Path, bus: dict[str, Any], rid_owner: dict[bytes, str]
) -> tuple[_Bus, dict[str, list[_Adv]]]:
    """The track of one bus of truth.json and every advert of a known person on it, by person."""
    trace = d / bus["trace"]
    gnss: list[GnssRecord] = []

    def skip(_err: TraceError) -> None:
        return None  # a fault scenario's broken line: the edge skips it too

    with trace.open(encoding="utf-8", errors="surrogateescape") as f:
        reader = TraceReader(f, on_error=skip)
        for rec in reader:
            if isinstance(rec, GnssRecord):
                gnss.append(rec)
        bus_id = reader.meta.bus_id
    by_person: dict[str, list[_Adv]] = {}
    for t, rssi, payloads in trace_adverts(trace):
        for hexed in payloads:
            try:
                raw = bytes.fromhex(hexed)
            except ValueError:
                continue
            person = rid_owner.get(raw[3:15])
            if person is None or len(raw) < 24:
                continue
            by_person.setdefault(person, []).append(_Adv(t, rssi, raw[3:15], raw[23]))
    for advs in by_person.values():
        advs.sort(key=lambda a: a.t)
    return _Bus(bus_id, gnss, bus.get("calls", [])), by_person


def _verdicts(d: Path) -> dict[tuple[str, str, float], str] | None:
    """Each erred leg of the kept run's ``score.json`` -> ``missed`` or ``wrong``."""
    path = d / "score.json"
    if not path.is_file():
        return None
    out: dict[tuple[str, str, float], str] = {}
    for x in json.loads(path.read_text("utf-8")).get("details", []):
        if x.get("kind") in ("missed", "wrong"):
            leg = x["leg"]
            out[leg_key(leg["rider_id"], leg["bus_id"], leg["board_t"])] = str(x["kind"])
    return out


def _part(d: Path, prefix: str) -> str:
    for p in d.parts:
        if p.startswith(prefix):
            return p
    return "-"


def _window(advs: Sequence[_Adv], a: float, z: float) -> list[_Adv]:
    ts = [x.t for x in advs]
    return list(advs[bisect.bisect_left(ts, a) : bisect.bisect_right(ts, z)])


def _ends_heard(
    advs: Sequence[_Adv], calls: Sequence[dict[str, Any]], b0: float, b1: float
) -> bool:
    """Whether the rider was heard at both ends of the leg (truth.json's calls).

    From the bus's arrival at the boarding stop to its arrival at the next stop, and from
    its departure from the stop before the alighting stop to its departure from that stop.
    """
    arr = [float(c["t_arrive"]) for c in calls]
    dep = [float(c["t_depart"]) for c in calls]
    if not arr:
        return False
    i = max(0, bisect.bisect_right(arr, b0) - 1)  # the call the rider boarded at
    k = max(0, bisect.bisect_right(arr, b1) - 1)  # ... and alighted at
    first = _window(advs, arr[i], arr[i + 1] if i + 1 < len(arr) else math.inf)
    last = _window(advs, dep[k - 1] if k > 0 else -math.inf, dep[k])
    return bool(first) and bool(last)


def _episodes(advs: Sequence[_Adv], gap_s: float) -> Iterator[list[_Adv]]:
    run: list[_Adv] = []
    for a in advs:
        if run and a.t - run[-1].t > gap_s:
            yield run
            run = []
        run.append(a)
    if run:
        yield run


def measure_scenario(d: Path, gap_s: float = EPISODE_GAP_S) -> ScenarioMeasure:
    """The legs and non-legs of one kept scenario directory (module docs)."""
    truth = json.loads((d / "truth.json").read_text("utf-8"))
    journeys = load_journeys(d / "JOURNEYS.jsonl")
    windows = leg_windows(journeys)
    unobservable = {
        leg_key(u["rider_id"], u["bus_id"], u["board_t"])
        for u in [*truth.get("unobservable_legs", []), *unheard_legs(d, journeys)]
    }
    verdicts = _verdicts(d)
    rid_owner = person_rids(
        d, float(truth["t_start"]) - RID_SLACK_S, float(truth["t_end"]) + RID_SLACK_S
    )
    m = ScenarioMeasure(
        _part(d, "cell-"),
        _part(d, "seed-"),
        d.name,
        int(truth.get("bystander_passes", {}).get("total", 0)),
        verdicts is not None,
    )
    riding: dict[str, list[tuple[float, float]]] = {}
    for (person, bus_id), spans in windows.items():
        riding.setdefault(person, []).extend(
            (a, z) for a, z in spans if leg_key(person, bus_id, a) not in unobservable
        )
    for bus in truth["buses"]:
        track, by_person = _read_bus(d, bus, rid_owner)
        bus_id = track.bus_id
        track.set_riders(
            [
                (a.t, a.rssi)
                for person, advs in by_person.items()
                for b0, b1 in windows.get((person, bus_id), ())
                for a in _window(advs, b0, b1)
            ]
        )
        for j, jn in enumerate(journeys):
            person = str(jn["rider_id"])
            for leg in jn["legs"]:
                if leg.get("bus_id") != bus_id or leg.get("board_t") is None:
                    continue
                if leg.get("alight_t") is None:
                    continue
                b0, b1 = float(leg["board_t"]), float(leg["alight_t"])
                advs = by_person.get(person, [])
                key = leg_key(person, bus_id, b0)
                verdict = "" if verdicts is None else verdicts.get(key, "exact")
                m.legs.append(
                    Leg(
                        d.name,
                        person,
                        bus_id,
                        b0,
                        b1,
                        str(leg.get("board_stop_id")),
                        str(leg.get("alight_stop_id")),
                        j,
                        key not in unobservable,
                        track.heard(_window(advs, b0, b1)),
                        len(_window(advs, b0 - AROUND_S, b0)) - len(_window(advs, b0, b0)),
                        len(_window(advs, b1, b1 + AROUND_S)) - len(_window(advs, b1, b1)),
                        _ends_heard(advs, bus.get("calls", []), b0, b1),
                        verdict,
                    )
                )
        for person, advs in sorted(by_person.items()):
            own = windows.get((person, bus_id), [])
            for ep in _episodes(advs, gap_s):
                t0, t1 = ep[0].t, ep[-1].t
                if any(t0 <= z + MATCH_SLACK_S and t1 >= a - MATCH_SLACK_S for a, z in own):
                    continue
                rides = any(t0 <= z and t1 >= a for a, z in riding.get(person, []))
                m.nonlegs.append(NonLeg(d.name, person, bus_id, t0, t1, rides, track.heard(ep)))
    return m


@dataclass(frozen=True, slots=True)
class Rule:
    """Charge when every named feature is at or above its threshold."""

    thresholds: tuple[tuple[str, float], ...]

    def charges(self, h: Heard) -> bool:
        """Whether the rule charges what was heard."""
        v = dict(zip(FEATURES, h.vector(), strict=True))
        return all(v[f] >= x for f, x in self.thresholds)

    def __str__(self) -> str:
        if not self.thresholds:
            return "anything heard"
        return " and ".join(f"{f} {_at_least(x)}" for f, x in self.thresholds)


def _at_least(x: float) -> str:
    """``>= x``, or ``> y`` when ``x`` is the float just above a shorter ``y``."""
    y = float(np.nextafter(x, -math.inf))
    return f"> {y:g}" if len(repr(y)) < len(repr(x)) else f">= {x:g}"


def _matrix(rows: Sequence[Heard]) -> npt.NDArray[np.float64]:
    if not rows:
        return np.zeros((0, len(FEATURES)))
    return np.array([h.vector() for h in rows], dtype=np.float64)


def _grid(values: npt.NDArray[np.float64]) -> list[float]:
    """-inf (no threshold) and up to ``GRID`` quantiles of the legs' values of a feature."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [-math.inf]
    qs = np.unique(np.quantile(finite, np.linspace(0.0, 0.3, GRID), method="lower"))
    return [-math.inf, *[float(q) for q in qs]]


def best_rule(legs: Sequence[Heard], nonlegs: Sequence[Heard], allowed: int) -> tuple[Rule, int]:
    """The rule of the family charging the most ``legs`` and at most ``allowed`` ``nonlegs``.

    Thresholds on up to two features come from a grid of the legs' lowest values (the
    legs a rule loses are the weakest); a third feature's threshold is then solved exactly:
    just above the ``allowed + 1``-th highest value among the non-legs the others let
    through. Ties go to the rule with fewer thresholds. Returns the rule and the legs it
    charges.
    """
    lm, nm = _matrix(legs), _matrix(nonlegs)
    grids = [_grid(lm[:, i]) for i in range(len(FEATURES))]
    best = (Rule(()), -1, 99)
    n = len(FEATURES)
    for s in range(n):
        for g1, g2 in combinations([i for i in range(n) if i != s], 2):
            for x1 in grids[g1]:
                l1 = lm[:, g1] >= x1
                n1 = nm[:, g1] >= x1
                for x2 in grids[g2]:
                    lmask = l1 & (lm[:, g2] >= x2)
                    vals = nm[n1 & (nm[:, g2] >= x2), s]
                    if vals.size <= allowed:
                        xs = -math.inf
                    else:
                        kth = float(
                            np.partition(vals, vals.size - allowed - 1)[vals.size - allowed - 1]
                        )
                        xs = float(np.nextafter(kth, math.inf))
                    got = int(np.count_nonzero(lmask & (lm[:, s] >= xs)))
                    terms = tuple(
                        (FEATURES[i], x)
                        for i, x in sorted(((g1, x1), (g2, x2), (s, xs)))
                        if x > -math.inf
                    )
                    if got > best[1] or (got == best[1] and len(terms) < best[2]):
                        best = (Rule(terms), got, len(terms))
    return best[0], best[1]


def monotone_bound(
    legs: Sequence[Heard], nonlegs: Sequence[Heard], allowed: int
) -> tuple[list[bool], int]:
    """The legs the best monotone rule of all charges, charging at most ``allowed`` non-legs.

    A rule is monotone when charging what was heard means charging anything heard at or
    above it on every feature. Its charged set is then an up-set: charging a leg charges
    every non-leg at or above it on every feature (that *dominates* it). With ``allowed``
    0 the best rule charges exactly the legs no non-leg dominates; beyond that, the set of
    at most ``allowed`` non-legs whose charge lets the most legs through, searched
    exhaustively (:func:`_most_legs`; the fewest non-legs on a tie). Past the search's
    budget, every leg dominated by at most ``allowed`` non-legs (still an upper bound, no
    longer one rule's). Returns which legs it charges and the non-legs it charges.
    """
    lm, nm = _matrix(legs), _matrix(nonlegs)
    dom: list[frozenset[int]] = []
    for row in lm:
        hit = np.flatnonzero(np.all(nm >= row, axis=1)) if nm.size else np.zeros(0, np.int64)
        dom.append(frozenset(int(i) for i in hit))
    near = [d for d in dom if 0 < len(d) <= allowed]
    spent = _most_legs(near, allowed)
    if spent is None:  # (too many to search: each leg a rule could charge on its own)
        return [len(d) <= allowed for d in dom], min(allowed, len(frozenset().union(*near)))
    return [d <= spent for d in dom], len(spent)


SEARCH_NODES = 200_000
"""The most subsets :func:`_most_legs` tries before it gives up."""


def _most_legs(doms: Sequence[frozenset[int]], allowed: int) -> frozenset[int] | None:
    """The at most ``allowed`` non-legs that cover the most legs' dominators ``doms``.

    The smallest such union on a tie; ``None`` past :data:`SEARCH_NODES`. Branch and bound
    over the distinct dominator sets, heaviest first. Not a greedy choice by cost, which is
    not the best: a leg under one non-leg can take the place of three under two others.
    """
    weight = Counter(doms)
    sets = sorted(weight, key=lambda d: (-weight[d], len(d), sorted(d)))
    rest = [0] * (len(sets) + 1)
    for i in range(len(sets) - 1, -1, -1):
        rest[i] = rest[i + 1] + weight[sets[i]]
    best: tuple[int, int, frozenset[int]] = (0, 0, frozenset())
    # (depth first; each set taken adds a non-leg: at most `allowed` taken on a path)
    stack: list[tuple[int, frozenset[int]]] = [(0, frozenset())]
    for _ in range(SEARCH_NODES):
        if not stack:
            return best[2]
        i, u = stack.pop()
        got = sum(w for d, w in weight.items() if d <= u)
        if (got, -len(u)) > best[:2]:
            best = (got, -len(u), u)
        if i == len(sets) or got + rest[i] < best[0]:
            continue
        d = sets[i]
        stack.append((i + 1, u))
        if not d <= u and len(u | d) <= allowed:
            stack.append((i + 1, u | d))
    return best[2] if not stack else None


def separating(leg: Heard, nonlegs: Sequence[Heard]) -> list[str]:
    """The features that keep ``leg`` above the non-legs.

    Without any one of them, some non-leg would dominate it. Empty when a non-leg
    dominates it already (it is not separable).
    """
    nm = _matrix(nonlegs)
    if not nm.size:
        return []
    ge = nm >= np.array(leg.vector())
    if bool(np.any(np.all(ge, axis=1))):
        return []
    return [
        f for i, f in enumerate(FEATURES) if bool(np.any(np.all(np.delete(ge, i, axis=1), axis=1)))
    ]


def single_thresholds(nonlegs: Sequence[Heard], allowed: int) -> dict[str, float]:
    """Per feature, the lowest threshold that charges at most ``allowed`` of the non-legs."""
    nm = _matrix(nonlegs)
    out: dict[str, float] = {}
    for i, f in enumerate(FEATURES):
        vals = np.sort(nm[:, i])[::-1]
        out[f] = -math.inf if vals.size <= allowed else float(np.nextafter(vals[allowed], math.inf))
    return out


def scenario_dirs(paths: Sequence[Path]) -> list[Path]:
    """The scenario directories (with a ``truth.json``) at or under each path."""
    return dirs_holding(paths, "truth.json")


def _bins(legs: Sequence[Leg]) -> str:
    c: Counter[str] = Counter()
    for lg in legs:
        for lo, hi in ADVERT_BINS:
            if lo <= lg.heard.adverts <= hi:
                c[_bin_name(lo, hi)] += 1
    return ", ".join(f"{_bin_name(lo, hi)}: {c[_bin_name(lo, hi)]}" for lo, hi in ADVERT_BINS)


def _bin_name(lo: float, hi: float) -> str:
    if lo == hi:
        return f"{lo:g}"
    return f"{lo:g}+" if math.isinf(hi) else f"{lo:g}-{hi:g}"


def _pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100.0 * a / b:.2f} %)" if b else f"{a}/0"


def _journeys(ms: Sequence[ScenarioMeasure], charged: Callable[[Leg], bool]) -> tuple[int, int]:
    """Observable journeys, and those of which ``charged`` holds for every leg."""
    n = ok = 0
    for m in ms:
        by_j: dict[int, list[Leg]] = {}
        for lg in m.legs:
            by_j.setdefault(lg.journey, []).append(lg)
        for legs in by_j.values():
            if all(lg.observable for lg in legs):
                n += 1
                ok += all(charged(lg) for lg in legs)
    return n, ok


def _features(h: Heard) -> str:
    lvl = "-" if math.isnan(h.level_db) else f"{h.level_db:+.1f}"
    return (
        f"adverts {h.adverts} in {h.duration_s:.0f} s, positions {h.positions}, "
        f"span {h.span_m:.0f} m, "
        f"doors past {h.doors}, at doors {h.at_doors}, level {lvl} dB, "
        f"echo {h.echo_bus}/{h.echoed}"
    )


def report(
    ms: Sequence[ScenarioMeasure], label: str, pooled: Rule | None, *, listing: bool
) -> list[str]:
    """The lines of one cell (or of everything): legs, the bounds, the classifier's misses."""
    legs = [lg for m in ms for lg in m.legs]
    obs = [lg for lg in legs if lg.observable]
    nonlegs = [x for m in ms for x in m.nonlegs if not x.riding]
    riders = [x.heard for m in ms for x in m.nonlegs if x.riding]
    riding = len(riders)
    passes = sum(m.passes for m in ms)
    allowed = math.floor(passes * BYSTANDERS_PER_PASS + 1e-9)
    heard = [x.heard for x in nonlegs]
    lines = [
        f"{label}: {len(ms)} scenario runs, {passes} bystander passes (a rule may charge "
        f"{allowed}), {len(nonlegs)} non-leg episodes heard (and {riding} of riders of "
        "another bus, settled by the truth)",
        f"  legs {len(legs)}, observable {len(obs)}; legs by adverts heard during "
        f"the leg: {_bins(legs)}",
    ]
    flags, spent = monotone_bound([lg.heard for lg in obs], heard, allowed)
    up = {id(lg) for lg, f in zip(obs, flags, strict=True) if f}
    n_j, ok_j = _journeys(ms, lambda lg: id(lg) in up)
    _, ends_j = _journeys(ms, lambda lg: id(lg) in up and lg.ends)
    lines.append(
        f"  bound, any monotone rule: {_pct(len(up), len(obs))} observable legs (missed >= "
        f"{_pct(len(obs) - len(up), len(obs))}), exact journeys <= {_pct(ok_j, n_j)}, "
        f"<= {_pct(ends_j, n_j)} with both ends of every leg heard; non-legs it charges: "
        f"{spent}"
    )
    rule, got = best_rule([lg.heard for lg in obs], heard, allowed)
    _, r_ok = _journeys(ms, lambda lg: rule.charges(lg.heard))
    lines.append(
        f"  best rule of <= 3 thresholds ({rule}): {_pct(got, len(obs))} observable legs, "
        f"exact journeys <= {_pct(r_ok, n_j)}; non-legs it charges: "
        f"{sum(rule.charges(h) for h in heard)} (and {sum(rule.charges(h) for h in riders)} "
        "of riders of another bus)"
    )
    if pooled is not None:
        p_got = sum(pooled.charges(lg.heard) for lg in obs)
        _, p_ok = _journeys(ms, lambda lg: pooled.charges(lg.heard))
        lines.append(
            f"  pooled rule ({pooled}): {_pct(p_got, len(obs))} observable legs, exact journeys "
            f"<= {_pct(p_ok, n_j)}; non-legs it charges here: "
            f"{sum(pooled.charges(h) for h in heard)}"
        )
    kept = [m for m in ms if m.scored]
    if kept:
        scored = [lg for m in kept for lg in m.legs if lg.observable]
        missed = [lg for lg in scored if lg.verdict == "missed"]
        sep = [lg for lg in missed if id(lg) in up]
        s_j, s_exact = _journeys(kept, lambda lg: lg.verdict == "exact")
        wrong = [lg for lg in scored if lg.verdict == "wrong"]
        _, s_ok = _journeys(kept, lambda lg: id(lg) in up)
        lines.append(
            f"  classifier ({len(kept)} runs with a score.json): missed "
            f"{_pct(len(missed), len(scored))}, exact journeys {_pct(s_exact, s_j)} (bound "
            f"<= {_pct(s_ok, s_j)}); its misses by adverts heard: {_bins(missed)}; the monotone "
            f"bound charges {len(sep)} of them (separable), {len(missed) - len(sep)} are "
            f"dominated by a non-leg; the 3-threshold rule charges "
            f"{sum(rule.charges(lg.heard) for lg in missed)}; it charged "
            f"{sum(lg.verdict != 'missed' and id(lg) not in up for lg in scored)} legs the "
            "bound does not (evidence beyond these features); wrong stops or twice: "
            f"{len(wrong)} legs, {sum(not lg.ends for lg in wrong)} of them with an end unheard"
        )
        if sep:
            need: Counter[str] = Counter()
            for lg in sep:
                need.update(separating(lg.heard, heard))
            lines.append(
                "  separable misses: needed features "
                + (", ".join(f"{f} {n}" for f, n in need.most_common()) or "none alone")
                + " (misses a non-leg would dominate without it); median "
                + _median_features(sep)
            )
            one = single_thresholds(heard, allowed)
            by_one = sorted(
                (
                    (sum(one[f] <= v for v in col), f)
                    for f, col in zip(
                        FEATURES, zip(*(lg.heard.vector() for lg in sep), strict=True), strict=True
                    )
                ),
                reverse=True,
            )
            lines.append(
                "  one threshold alone, at most the allowed non-legs: "
                + ", ".join(
                    f"{f} {_at_least(one[f])} charges {n} of them and "
                    f"{sum(one[f] <= lg.heard.vector()[FEATURES.index(f)] for lg in obs)} legs"
                    for n, f in by_one
                    if n
                )
            )
        for lg in missed if listing else []:
            tag = "SEPARABLE" if id(lg) in up else "dominated"
            lines.append(
                f"    missed {tag:9} {lg.scenario} {lg.rider_id} {lg.bus_id} {lg.board_stop_id}"
                f" -> {lg.alight_stop_id}: {_features(lg.heard)}; before {lg.before},"
                f" after {lg.after}"
            )
    for x in nonlegs if listing else []:
        if rule.charges(x.heard):
            lines.append(
                f"    non-leg charged by the rule {x.scenario} {x.person} {x.bus_id} "
                f"{x.t0:.0f}-{x.t1:.0f}: {_features(x.heard)}"
            )
    return lines


def _median_features(legs: Sequence[Leg]) -> str:
    cols = list(zip(*(lg.heard.vector() for lg in legs), strict=True))
    return ", ".join(
        f"{name} {statistics.median(col):g}" for name, col in zip(FEATURES, cols, strict=True)
    )


def bound_report(
    dirs: Sequence[Path], gap_s: float = EPISODE_GAP_S, *, listing: bool = False
) -> list[str]:
    """The report of the scenario directories at or under ``dirs``: per cell, then in all.

    The pooled rule is the best rule of at most three thresholds over every cell together.

    Raises:
        ValueError: no scenario directory (with a ``truth.json``) under those paths.
    """
    found = scenario_dirs(dirs)
    if not found:
        raise ValueError("no scenario directory (with a truth.json) under those paths")
    ms = [measure_scenario(d, gap_s) for d in found]
    allowed = math.floor(sum(m.passes for m in ms) * BYSTANDERS_PER_PASS + 1e-9)
    obs = [lg.heard for m in ms for lg in m.legs if lg.observable]
    nonlegs = [x.heard for m in ms for x in m.nonlegs if not x.riding]
    pooled, _ = best_rule(obs, nonlegs, allowed)
    by_cell: dict[str, list[ScenarioMeasure]] = {}
    for m in ms:
        by_cell.setdefault(m.cell, []).append(m)
    lines: list[str] = []
    for cell, cms in sorted(by_cell.items()):
        lines += report(cms, cell, pooled, listing=listing)
    if len(by_cell) > 1:
        lines += report(ms, "all", None, listing=False)
    return lines
