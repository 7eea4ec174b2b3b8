"""``evidence.riders_lvl`` counted per level change equals counting it at every advert.

The classifier counts a rid's adverts at the riders' level (``_riders_key``) only when
that level changes, on a tick (``_lv_flush``), not at each advert. The reference here is
the straightforward per-advert count the classifier had before: at every advert, one
more at the level then, the count emptied whenever the rid's RSSI histogram ``hist`` is
(a fresh candidacy, a rid made a stop's candidate as its doors open). A scripted world
whose riders' level moves every few seconds, with riders heard waiting before they
board, alighting, rid rotations and bystanders forgotten, must give every segment the
same counts and the same ``riders_lvl``. (Restores: tests/edge/test_checkpoint.py
compares the events, evidence included, of replays restored every 7/50/333 records.)
"""

from __future__ import annotations

import math
from typing import Any, cast

from edge._classifier import PresenceClassifier, _median, _Rid
from edge._params import ClassifierParams
from edge._segment import SegmentDraft
from tests.edge.test_classifier import Token, World, by_name, outside


class PerAdvert:
    """The classifier with a per-advert reference count beside its own, compared at
    every segment it closes: a stand-in the world drives as its classifier (not a
    subclass: the compiled build's classifier cannot be subclassed)."""

    def __init__(self, params: ClassifierParams) -> None:
        self.c = PresenceClassifier(params)
        self.ref: dict[int, tuple[_Rid, dict[int, int], dict[int, int]]] = {}
        """id(rid record) -> (the record, the ``hist`` the counts go with, the counts)."""
        self.records: dict[str, _Rid] = {}
        """rid (hex) -> its record, as of its last advert."""
        self.compared: list[tuple[dict[int, int], int | None]] = []
        self.keys: set[int | None] = set()
        self.key: int | None = None
        self.changes = 0
        self.differ: list[tuple[str, dict[int, int], dict[int, int]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.c, name)  # (on_trip, on_visit, errors, ...)

    def _ref_counts(self, r: _Rid) -> dict[int, int]:
        got = self.ref.get(id(r))
        if got is None or got[0] is not r or got[1] is not r.hist:
            # its hist was emptied (or it is new): so were the counts it goes with
            got = self.ref[id(r)] = (r, r.hist, {})
        return got[2]

    def advert(  # noqa: PLR0917 - the classifier's signature
        self,
        t: float,
        rid: bytes,
        interval: int,
        token_t: float,
        rssi: int,
        flags: int,
        raw: bytes,
        odo: float,
        addr: str = "",
    ) -> None:
        self.c.advert(t, rid, interval, token_t, rssi, flags, raw, odo, addr)
        k = self.c._riders_key
        self.keys.add(k)
        if k != self.key:
            self.key = k
            self.changes += 1
        r = self.records[rid.hex()] = self.c._rids[rid]
        counts = self._ref_counts(r)
        if k is not None:
            counts[k] = counts.get(k, 0) + 1

    def _compare(self, drafts: list[SegmentDraft]) -> list[SegmentDraft]:
        for d in drafts:
            r = self.records[d.rid]
            ref = dict(self._ref_counts(r))
            self.compared.append((ref, d.evidence.get("riders_lvl")))
            if self.c._lv_counts(r) != ref or d.evidence.get("riders_lvl") != (
                _median(ref) if ref else None
            ):
                self.differ.append((d.rid, ref, self.c._lv_counts(r)))
        return drafts

    def tick(self, t: float, odo: float) -> list[SegmentDraft]:
        return self._compare(self.c.tick(t, odo))

    def finish(self, t: float, odo: float) -> list[SegmentDraft]:
        return self._compare(self.c.finish(t, odo))


def test_riders_lvl_counted_per_level_change_equals_per_advert_counting() -> None:
    c = PerAdvert(ClassifierParams())
    w = World()
    w.c = cast("PresenceClassifier", c)  # (the world drives it as its classifier)
    c.on_trip("R1", "T1")
    t0 = w.t
    where: dict[str, str] = {}  # "" (not in range), "stop" (waiting at it), "bus"
    at_stop: dict[int, list[tuple[str, bool]]] = {}

    def rider(name: str, level: float, wander: float, board: int, alight: int) -> Token:
        phase = len(where) * 0.9
        where[name] = ""

        def rssi(w: World) -> float | None:
            if where[name] == "stop":
                return -84.0  # heard waiting as the bus comes: its counts start again
            # each rider's level wanders: the riders' upper quartile moves every few
            # seconds, so the classifier's counts are flushed at many levels
            return level + wander * math.sin((w.t - t0) / 17.0 + phase) if where[name] else None

        at_stop.setdefault(board, []).append((name, True))
        at_stop.setdefault(alight, []).append((name, False))
        return w.add(Token(name, rssi))

    for i in range(9):
        rider(f"rd{i}", -58.0 + i, 16.0, i % 3, 4 + i % 4)
    weak = rider("weak", -76.0, 2.0, 1, 7)  # well below the others: its riders_lvl matters
    w.wait(5)
    for s in range(8):
        for name, on in at_stop.get(s, []):
            if on:
                where[name] = "stop"
        if s in (1, 3, 5):
            w.add(Token(f"by{s}", outside(-66.0)))  # a bystander, forgotten later
        w.wait(20.0)
        for name, on in at_stop.get(s, []):
            where[name] = "bus" if on else ""
        w.dwell(f"S{s}", 20.0)
        w.move(900.0)
        w.wait(40.0)  # held at a light: ticks go on, the level moves
    w.move(400.0)
    w.finish()
    assert w.t - t0 > 900.0  # across a rid boundary: every rider's rid rotated
    assert c.differ == []
    assert c.errors == {}
    assert len(by_name(w.out, weak)) >= 2
    assert len(c.compared) == len(w.out) >= 12
    assert all(lvl is not None for _, lvl in c.compared)
    # each counted at many levels (8 or more: the riders waiting in the rotation pool
    # steady the level at the rid boundary)
    assert all(len(ref) >= 8 for ref, _ in c.compared)
    assert c.changes >= 100


def test_a_forgotten_rid_keeps_its_adverts_at_the_level_they_were_heard_at() -> None:
    # A rid forgotten (heard outside, then silent) leaves the live rids, so no later level
    # change counts its adverts; the rotation pool may still close it (a record held only
    # by the pool). Its adverts are counted as it leaves, at the level they were heard at,
    # not at whatever the level is when it closes. (The scripted world above forgets 20
    # rids, none of them held by the pool: it does not reach this.)
    w = World()
    c = w.c
    c.on_trip("R1", "T1")
    c._riders_key = -60  # the riders' level (no riders aboard here: it stays)
    heard = {"v": True}
    w.add(Token("by", lambda _: -80.0 if heard["v"] else None))
    w.wait(10.0)
    (rec,) = c._rids.values()
    n = rec.n_adv
    assert n >= 15
    heard["v"] = False
    w.wait(c.params.outside_forget_s + 10.0)
    assert rec.rid not in c._rids  # forgotten
    c._riders_key = -50  # the level moves on
    assert c._lv_counts(rec) == {-60: n}
    assert c.errors == {}
