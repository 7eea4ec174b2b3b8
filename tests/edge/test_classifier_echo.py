"""Presence classifier: the token's echo of the bus (token v1 byte 23; issue 11).

A listening token echoes the bus it has heard longest without a gap: ``code << 3 | seq``,
the code this bus's for the rid (``echo_code(bus_tag(vehicle id), rid)``) or another
bus's, ``seq`` the beacon's stop index mod 8 when that stretch began (docs/protocol.md).
Scripted worlds through the real classifier (its stops carry their index in the trip, as
the vehicle context's do): a rider too thin for every other rule is boarded from the stop
its echo names, and only with the bus's own hearing of it; an echo naming another bus
bars the thin rules; with ``echo_evidence`` off, or no echo, nothing changes. Each test
can fail: the thin rider is missed without its echo, the colliding non-rider is charged
if the points are not asked for, the barred token boards without its echo.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Callable

from busbell._echo import bus_tag, echo_code, encode_echo
from edge._classifier import _ECHO_DEFAULTS, _RID_SLOTS, PresenceClassifier, _Rid
from edge._params import ClassifierParams
from tests.edge.test_classifier import Token, World, add_riders, by_name

TAG = bus_tag("bus-echo")
OTHER = bus_tag("bus-beside")

Echo = Callable[["EchoWorld", bytes], int]
Plan = dict[int, tuple[tuple[float, ...], tuple[float, ...]]]
"""When a token is heard: ``plan[stop index] = (seconds after the doors opened while they
stand open, metres past their closing on the hop after)``."""


def own(seq: int) -> Echo:
    """An echo of this bus since stop index ``seq`` (mod 8)."""
    return lambda _w, rid: encode_echo(echo_code(TAG, rid), seq % 8)


def other(seq: int) -> Echo:
    """An echo of another bus (its code for the rid is never this bus's: a test's choice)."""

    def f(_w: EchoWorld, rid: bytes) -> int:
        code = echo_code(OTHER, rid)
        if code == echo_code(TAG, rid):
            code = code % 31 + 1
        return encode_echo(code, seq % 8)

    return f


class EchoWorld(World):
    """:class:`World` whose bus has a beacon tag, stops their trip index, tokens an echo."""

    def __init__(self, params: ClassifierParams | None = None, *, tag: bytes | None = TAG):
        super().__init__(params)
        self.c = PresenceClassifier(self.p, tag)
        self.c.on_trip("R1", "T1")
        self.echoes: dict[str, Echo] = {}

    def step(self, dt: float = 0.5) -> None:
        for tok in self.tokens:
            r = tok.rssi(self)
            if r is None:
                continue
            tt = self.t + tok.skew
            rid = tok.rid(tt)
            raw = bytes([0x20 | tok.flags]) + rid + struct.pack(">d", self.t) + bytes(3)
            e = self.echoes.get(tok.name)
            self.c.advert(
                self.t,
                rid,
                math.floor(tt / 600),
                math.floor(tt / 4) * 4.0,
                round(r),
                tok.flags,
                raw,
                self.odo,
                tok.addr,
                0 if e is None else e(self, rid),
            )
        self.out.extend(self.c.tick(self.t, self.odo))
        self.t += dt

    def stop_index(self, stop_id: str | None) -> int | None:
        """Stops are named by their index in the trip (``S3`` is index 3)."""
        return None if stop_id is None else int(stop_id[1:])


def _marks(w: EchoWorld, plan: Plan) -> bool:
    """Whether the token is heard now (:data:`Plan`)."""
    v = w.visit
    if v is None or v.stop_index not in plan:
        return False
    at_doors, on_hop = plan[v.stop_index]
    if v.close_t is None:
        return any(m <= w.t - v.open_t < m + 0.5 for m in at_doors)
    assert v.close_odo_m is not None
    return any(m <= w.odo - v.close_odo_m < m + 5.0 for m in on_hop)


def _trip(w: EchoWorld) -> None:
    """S0 .. S5, 800 m apart, 20-s dwells; 300 m past S5."""
    for i in range(6):
        w.dwell(f"S{i}", 20)
        w.move(800 if i < 5 else 300)


THIN: Plan = {1: ((10.0, 13.0), (300.0, 500.0)), 3: ((6.0, 8.0), ())}
"""A weak rider S1 -> S3: twice at S1's doors, at two points on the hop after (half what the
co-movement rule asks), silent through S2, twice at S3's doors as it walks out last, 6-8 s
after they opened."""


def _thin(
    echo: Echo | None,
    params: ClassifierParams | None = None,
    *,
    plan: Plan = THIN,
    level: float = -92.0,
    tag: bytes | None = TAG,
    ambiguous: Callable[[int, int], bool] | None = None,
) -> list[str]:
    w = EchoWorld(params, tag=tag)
    w.c.echo_ambiguous = ambiguous
    add_riders(w, -80.0)
    tok = w.add(Token("bag", lambda world: level if _marks(world, plan) else None))  # type: ignore[arg-type]
    if echo is not None:
        w.echoes["bag"] = echo
    _trip(w)
    return [f"{d.start.stop_id}->{d.end.stop_id}" for d in by_name(w.finish(), tok)]


def test_a_thin_rider_whose_echo_names_this_bus_since_its_stop_is_charged_from_there() -> None:
    # without its echo: too thin for every rule (missed, the weak cells' commonest miss)
    assert _thin(None) == []
    # its echo: with this bus since S1, heard so at two points after the bus left S1
    got = _thin(own(1))
    assert got, "the echo boarded nobody"
    assert {g.split("->")[0] for g in got} == {"S1"}
    assert got[-1].endswith("->S3")


def test_the_echo_is_ignored_when_switched_off_or_without_the_buses_tag() -> None:
    off = ClassifierParams(echo_evidence=False)
    assert _thin(own(1), off) == _thin(None, off) == []
    assert _thin(own(1), tag=None) == []


def test_a_colliding_code_alone_charges_nobody() -> None:
    # a token at S1's doors whose echo byte reads as this bus's (a code collision, 1 rid in
    # 31: it is another bus's): never heard after the bus left, or at one point only
    waiter: Plan = {1: ((10.0, 13.0), ())}
    assert _thin(own(1), plan=waiter) == []
    one_point: Plan = {1: ((10.0, 13.0), (300.0,)), 3: ((6.0, 8.0), ())}
    assert _thin(own(1), plan=one_point) == []
    # the bus's hearing asked for: with no point asked, the same token would board
    assert _thin(own(1), ClassifierParams(echo_points=1), plan=one_point) != []


def test_an_echo_since_a_stop_the_bus_never_served_or_after_its_candidacy_boards_nobody() -> None:
    # seq 2 at S1's doors names the stop ahead (S2), not one the bus has left: the stretch
    # began after the token's candidacy at S1; seq 7 names no stop of this trip yet
    assert _thin(own(2)) == []
    assert _thin(own(7)) == []


def test_a_car_beside_the_bus_from_a_stop_gone_before_the_next_is_not_boarded_by_its_echo() -> None:
    # a car beside the bus at S1's doors, at a red light and on with it for 540 m, gone
    # before S2: its phone heard the bus longest since S1 (it echoes it with S1's seq), and
    # the bus heard it at three points; it never stayed with the bus through a stop (small
    # scale, tuning seed 2, cell 22, rush_hour_crowd r-00072)
    car: Plan = {1: ((3.0, 5.0), (300.0, 420.0, 540.0))}
    assert _thin(own(1), plan=car) == []
    # one heard at two points on the hop and past S2, then at S3's doors: without its echo,
    # charged S1 -> S2 (it faded at S2); its echo says it stayed with the bus through S2
    rode_on: Plan = {1: ((3.0, 5.0), (300.0, 420.0)), 2: ((), (200.0,)), 3: ((6.0,), ())}
    assert _thin(None, plan=rode_on) == ["S1->S2"]
    got = _thin(own(1), plan=rode_on)
    assert {g.split("->")[0] for g in got} == {"S1"}
    assert got[-1] == "S1->S3"


def test_a_candidate_far_below_the_riders_or_falling_away_is_not_boarded_by_its_echo() -> None:
    # the riders at -80: 30 dB under them is a vehicle beside the bus (two shells)
    assert _thin(own(1), level=-110.0) == []


def test_the_echo_dates_a_boarding_from_the_stop_it_names() -> None:
    """Heard at S1's doors (its echo since S1), silent on the hop, heard densely from S2's
    doors on: the dense rules board it at S2, its echo and the bus's hearing at S1 from
    S1."""
    plan: Plan = {
        1: ((10.0, 13.0), ()),
        2: (tuple(float(s) for s in range(20)), tuple(float(m) for m in range(0, 800, 5))),
        3: (tuple(float(s) for s in range(4)), ()),
    }
    assert _thin(None, plan=plan, level=-75.0) == ["S2->S3"]
    assert _thin(own(1), plan=plan, level=-75.0) == ["S1->S3"]


THICK: Plan = {1: ((10.0, 13.0), (300.0, 420.0, 540.0, 660.0)), 2: ((2.0, 4.0), ())}
"""Heard at S1's doors, at four points on the hop after (what the co-movement rule asks) and
at S2's doors as it walks out."""


def test_an_echo_naming_another_bus_bars_the_thin_rules() -> None:
    assert _thin(None, plan=THICK) == ["S1->S2"]
    # it has heard another bus longer than this one (a rider of a bus beside this one)
    assert _thin(other(1), plan=THICK) == []
    # two such echoes in a row are not enough with three asked, and 0 switches it off
    assert _thin(other(1), ClassifierParams(echo_other_adverts=0), plan=THICK) == ["S1->S2"]


def test_an_echo_of_this_bus_after_another_lifts_the_bar() -> None:
    def switch(w: EchoWorld, rid: bytes) -> int:
        # another bus while at S1 (it stood there first), this bus from the hop on
        assert w.visit is not None
        return (other(1) if w.visit.close_t is None else own(1))(w, rid)

    assert _thin(switch, plan=THICK) == ["S1->S2"]


def test_the_echo_evidence_is_kept_per_rid() -> None:
    w = EchoWorld()
    add_riders(w, -80.0)
    tok = w.add(Token("bag", lambda world: -92.0 if _marks(world, THIN) else None))  # type: ignore[arg-type]
    w.echoes["bag"] = own(1)
    w.dwell("S0", 20)
    w.move(800)
    w.dwell("S1", 20)
    w.move(600)
    r = w.c._rids[tok.rid(w.t)]
    assert r.ec == echo_code(TAG, r.rid)
    assert (r.eo_seq, r.eo_k, r.eo_pts, r.ex_run) == (1, 1, 2, 0)
    assert r.eo_n == 4
    assert w.c._echo_visit(r) is w.c._visits[-1]


def test_a_fresh_rids_echo_fields_are_the_restore_defaults() -> None:
    r = _Rid(b"x" * 12, 1, 600.0)
    assert {k: getattr(r, k) for k in _ECHO_DEFAULTS} == _ECHO_DEFAULTS
    assert set(_ECHO_DEFAULTS) <= set(_RID_SLOTS)


def test_the_echo_parameters_are_documented_options() -> None:
    names = {f.name for f in dataclasses.fields(ClassifierParams)}
    assert {"echo_evidence", "echo_points", "echo_other_adverts"} <= names
    for f in dataclasses.fields(ClassifierParams):
        if f.name.startswith("echo_"):
            assert f.metadata["doc"]


def test_an_echo_of_another_bus_changes_nothing_for_the_dense_rules() -> None:
    """A rider heard densely from S1 to S3 is boarded by the dense rules whatever its echo."""
    plan: Plan = {
        1: (tuple(float(s) for s in range(20)), tuple(float(m) for m in range(0, 800, 5))),
        2: (tuple(float(s) for s in range(20)), tuple(float(m) for m in range(0, 800, 5))),
        3: (tuple(float(s) for s in range(4)), ()),
    }
    base = _thin(None, plan=plan, level=-75.0)
    assert base == ["S1->S3"]
    assert _thin(other(1), plan=plan, level=-75.0) == base


def test_an_echo_from_a_stop_the_bus_never_heard_it_near_does_not_move_a_boarding() -> None:
    """First heard at S3's doors, past S3 and at S4's doors, its echo naming S1: the bus did
    not hear it at S1 or in the hop after, so S1 stays a guess (a waiter at S3 may have
    heard the bus serve S1 where the route loops back near S3: small scale, tuning seed 3,
    cell 22, shared_stop_three_routes r-00007); its boarding is the other rules' (S3)."""
    later: Plan = {3: ((6.0, 8.0), (200.0, 350.0, 500.0)), 4: ((6.0, 8.0), ())}
    assert _thin(None, plan=later) == ["S3->S4"]
    assert _thin(own(1), plan=later) == ["S3->S4"]
    # heard on the hop after S1 as well: it has been with the bus since S1
    near: Plan = {1: ((), (300.0,)), **later}
    assert _thin(own(1), plan=near)[-1:] == ["S1->S4"]


def test_a_new_rid_that_takes_over_its_old_rids_candidacy_goes_on_with_its_echo() -> None:
    """The echo stretch outlives the rid (a free rotation link): a thin candidate of S1 whose
    rid rotates on the hop (token clock 410 s ahead) is taken over by its new rid
    (:meth:`_take_over`), which goes on with the old rid's stretch: first heard at S1's
    doors, its points and the new rid's together."""
    plan: Plan = {
        1: ((10.0, 13.0), (250.0, 300.0, 450.0, 550.0, 650.0)),
        2: ((6.0, 8.0), (200.0,)),
        3: ((6.0, 8.0), ()),
    }
    w = EchoWorld()
    add_riders(w, -80.0)
    tok = w.add(Token("bag", lambda world: -92.0 if _marks(world, plan) else None, skew=410.0))  # type: ignore[arg-type]
    w.echoes["bag"] = own(1)
    took: list[tuple[float, int]] = []
    step = w.step

    def watch(dt: float = 0.5) -> None:
        step(dt)
        for rid, r in w.c._rids.items():
            if rid.startswith(b"bag") and r.pred == 2 and r.state == 2 and not took:
                took.append((r.eo_t0, r.eo_pts))

    w.step = watch  # type: ignore[method-assign]
    w.dwell("S0", 20)
    w.move(800)
    s1 = w.dwell("S1", 20)
    for i in range(2, 6):
        w.move(800)
        w.dwell(f"S{i}", 20)
    w.move(300)
    assert took, "no new rid took over the candidacy"
    eo_t0, _ = took[0]
    assert s1.close_t is not None
    assert eo_t0 <= s1.close_t  # the old rid's first echo, at S1's doors
    assert by_name(w.finish(), tok)


def test_an_echo_since_the_stop_after_its_candidacy_bars_the_thin_rules() -> None:
    """A car first heard 40 m past S1's doors and carried with the bus to S2, gone as it halts
    there: without its echo the co-movement rule charges it S1 -> S2. Its phone first heard
    the bus after it left S1, so it echoes the bus since S2 (the beacon names the stop it
    comes to next): a rider boarding at S1 heard the bus there (small scale, tuning seed 3,
    cell 24, rush_hour_crowd r-00070, r-00071). An echo since S1, or an earlier stop, is
    what a rider's is, and bars nothing."""
    car: Plan = {
        1: ((), (40.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 780.0)),
        2: ((0.0,), ()),
    }
    assert _thin(None, plan=car, level=-88.0) == ["S1->S2"]
    assert _thin(own(2), plan=car, level=-88.0) == []
    assert _thin(own(1), plan=car, level=-88.0) == ["S1->S2"]
    assert _thin(own(0), plan=car, level=-88.0) == ["S1->S2"]
    assert _thin(own(2), ClassifierParams(echo_evidence=False), plan=car, level=-88.0) == ["S1->S2"]


def _rotating(echo: Echo, plan: Plan, skew: float) -> list[str]:
    """A weak rider (``plan``, -92 dBm, riders at -80) whose rid rotates at ``600 - skew``
    s past a whole interval of the world's clock: its boarded segments, start -> end."""
    w = EchoWorld()
    add_riders(w, -80.0)
    tok = w.add(Token("bag", lambda world: -92.0 if _marks(world, plan) else None, skew=skew))  # type: ignore[arg-type]
    w.echoes["bag"] = echo
    _trip(w)
    return [
        f"{d.start.stop_id}->{d.end.stop_id}"
        for d in by_name(w.finish(), tok)
        if d.start.cause != "tentative"
    ]


DROPPED: Plan = {1: ((10.0, 13.0), (300.0, 500.0)), 3: ((6.0, 8.0), ())}
"""Heard at S1's doors and at two points on the hop after, silent through S2 (its candidacy
dropped long before its rid ends), heard under its next rid (it rotates on the hop to S3)
in the bus standing at S3 as it walks out."""


def test_a_dropped_candidates_echo_stretch_goes_on_under_its_next_rid() -> None:
    """Full scale, tuning seed 1, cell 23, bus_alongside_red_light r-00115: each rid too thin
    alone (missed); the next rid's echo names this bus since the same stop (S1): the
    token's stretch, heard past S1 at two points and at S3's doors after they opened."""
    assert _rotating(own(1), DROPPED, skew=300.0) == ["S1->S3"]
    # without the echo, or with it off: missed
    assert _thin(None, plan=DROPPED) == []


def test_a_next_rid_whose_echo_names_another_stop_does_not_go_on_with_the_stretch() -> None:
    """The same token, its next rid echoing this bus since S3 (its phone lost the beacon
    and heard it afresh: another stretch, not the dropped rid's): nothing links the two."""

    def restarted(w: EchoWorld, rid: bytes) -> int:
        return own(1 if w.visit is not None and (w.visit.stop_index or 0) < 3 else 3)(w, rid)

    assert _rotating(restarted, DROPPED, skew=300.0) == []


PAIRED: Plan = {1: ((10.0, 13.0), (300.0, 500.0, 700.0, 790.0)), 2: ((2.0, 4.0, 6.0, 8.0), ())}
"""Heard at S1's doors and at points on the hop up to S2, its rid rotating as the bus
arrives at S2 (the rotation pairing pairs the two), its next rid heard in the bus standing
at S2 as it walks out last."""


def test_a_rotation_paired_candidate_goes_on_with_its_old_rids_echo_stretch() -> None:
    """Full scale, tuning seed 1, cell 23, rider_jumps_off_last_moment r-00061: two echo
    points under its first rid, its next rid heard at S2's doors only (a candidate of S2
    paired with the first): each too thin alone; one stretch since S1 by the echo."""
    assert _rotating(own(1), PAIRED, skew=360.0) == ["S1->S2"]


def test_a_one_hop_rider_heard_as_the_next_doors_open_is_boarded_by_its_echo() -> None:
    """Full scale, tuning seed 1, cell 23, shared_stop_three_routes r-00240: heard at S1's
    doors, at two points on the hop and in the first seconds at S2's doors as it walks out
    (never past them: no later stop's doors for ``eo_late``). Its echo since S1 and the
    bus's hearing board it S1 -> S2; without the echo it is missed. A car beside the bus
    that drives on as it halts at S2 is not heard at the open doors (above)."""
    one_hop: Plan = {1: ((10.0, 13.0), (300.0, 500.0)), 2: ((1.0, 2.0), ())}
    assert _thin(None, plan=one_hop) == []
    assert _thin(own(1), plan=one_hop) == ["S1->S2"]
    # heard at S2's doors under a stretch that began at S2 (a waiter there): nothing
    assert _thin(own(2), plan=one_hop) == []


OLD_ONE_POINT: Plan = {2: ((), (400.0,)), 3: ((2.0, 4.0, 6.0), ())}
"""Heard once on the hop S2 -> S3 (400 m past S2, 400 m before S3's doors: one echo point)
and at S3's open doors: full scale, tuning seed 1, cell 23, ``rush_hour_crowd`` r-00330
(BD003 -> BD010, echo since BD003, one point 828 m past BD009 and three adverts at BD010's
doors)."""


def clear(_index: int, _seq: int) -> bool:
    """The feed's answer for a stretch on a straight route (:class:`edge._beacon.EchoSeqs`):
    no bus of another pattern sends that seq there, and the echo's stop lies beyond
    ``echo_reach_m`` of where the bus first heard it."""
    return False


def test_one_echo_point_boards_a_stretch_older_than_a_stop() -> None:
    """Its echo since S1, the bus served S2 (doors opened and closed) before it first heard
    the token: nobody waiting at a stop names a stop a whole stop back, so the bus's one
    point of its own hearing boards it (thirty-eighth pass), where the feed rules out a
    collision and a route looping back (forty-first pass)."""
    assert _thin(None, plan=OLD_ONE_POINT, ambiguous=clear) == []
    assert _thin(own(1), plan=OLD_ONE_POINT, ambiguous=clear) == ["S1->S3"]
    # without a feed the bus cannot tell a rider from someone standing where the route
    # loops back past S1: one point boards nobody
    assert _thin(own(1), plan=OLD_ONE_POINT) == []
    # a stretch since S2, the stop the bus left last (a waiter at S2 or S3 who heard it
    # coming names that): one point is not enough
    assert _thin(own(2), plan=OLD_ONE_POINT, ambiguous=clear) == []
    # the two-point rule as before: one point after the echo's own stop is not enough
    one: Plan = {1: ((10.0, 13.0), (300.0,)), 3: ((6.0, 8.0), ())}
    assert _thin(own(1), plan=one, ambiguous=clear) == []


def test_one_echo_point_is_refused_when_the_seq_may_be_another_patterns_bus() -> None:
    """A person at S3 near a bus of another pattern serving S3 as its stop index 1 (a G6000
    run beside bus-17 at BD005; beside bus-55 at BD009): where that bus's code for the rid
    equals this bus's (1 rid in 31) the echo reads "since S1" of this bus. Full scale,
    tuning seed 2, cell 23, ``transfer_bunched`` r-02094 and full 22 seed 3
    ``shared_stop_three_routes`` r-00313, both on no bus, were charged by one point."""
    asked: list[tuple[int, int]] = []

    def g6000(index: int, seq: int) -> bool:
        asked.append((index, seq))
        return (index, seq) == (3, 1)

    assert _thin(own(1), plan=OLD_ONE_POINT, ambiguous=g6000) == []
    assert (3, 1) in asked  # (the stop the bus was coming to as it first heard it: S3)
    # another seq at S3 is not ambiguous: boarded
    assert _thin(own(1), plan=OLD_ONE_POINT, ambiguous=lambda i, s: (i, s) == (3, 2)) == ["S1->S3"]
    # with two points the collision guard does not apply (the bus's own hearing, moving)
    two: Plan = {2: ((), (300.0, 500.0)), 3: ((2.0, 4.0, 6.0), ())}
    assert _thin(own(1), plan=two, ambiguous=g6000) == _thin(own(1), plan=two) != []


def _heirs_after(
    n: int, echo: Echo, plan: Plan, skew: float
) -> tuple[dict[tuple[int, int], bytes], int]:
    """``n`` weak tokens (``plan``, ``echo``, one clock ``skew``) over the trip, then 40
    intervals of ticks: the echo heirs left, and the rids known."""
    w = EchoWorld()
    add_riders(w, -80.0)
    for i in range(n):
        w.add(Token(f"bag{i}", lambda world: -92.0 if _marks(world, plan) else None, skew=skew))  # type: ignore[arg-type]
        w.echoes[f"bag{i}"] = echo
    _trip(w)
    for _ in range(40):
        w.t += 600.0
        w.c.tick(w.t, w.odo)
    return dict(w.c._echo_heirs), len(w.c._rids)


def test_echo_heirs_do_not_outlive_their_rids() -> None:
    """Two dropped candidates of one interval echoing since one stop share a key (``b""``:
    neither links); a dropped rid whose stretch restarted at a later stop leaves its first
    key behind. Neither stays once every rid is forgotten (a bus runs for days; each is in
    every checkpoint)."""
    assert _heirs_after(2, own(1), DROPPED, 300.0) == ({}, 0)

    def restarted(w: EchoWorld, rid: bytes) -> int:
        return own(1 if w.visit is not None and (w.visit.stop_index or 0) < 4 else 4)(w, rid)

    later: Plan = {1: ((10.0, 13.0), (300.0, 500.0)), 4: ((), (300.0, 500.0))}
    assert _heirs_after(1, restarted, later, 0.0) == ({}, 0)


class RidAddressToken(Token):
    """A token whose BLE address rotates with its rid (cell 24's fobs and phones): no
    address links its rids (:meth:`PresenceClassifier._inherit` never applies)."""

    def __init__(self, name: str, rssi: Callable[[World], float | None], *, skew: float = 0.0):
        self._iv = 0
        super().__init__(name, rssi, skew=skew)

    def rid(self, token_t: float) -> bytes:
        self._iv = math.floor(token_t / 600)
        return super().rid(token_t)

    @property
    def addr(self) -> str:
        return f"addr-{self.name}-{self._iv}"

    @addr.setter
    def addr(self, _value: str) -> None:
        pass


def _heard(plan: Plan) -> Callable[[World], float | None]:
    """-92 dBm when ``plan`` says the token is heard."""
    return lambda world: -92.0 if _marks(world, plan) else None  # type: ignore[arg-type]


def _rid_addresses(
    echo: Echo | None, plan: Plan, skew: float, *, twin: Plan | None = None
) -> list[str]:
    """A weak rider (``plan``, -92 dBm, riders at -80) whose address rotates with its rid,
    at ``600 - skew`` s past a whole interval of the world's clock: its rides. ``twin``: a
    second such token (its plan; the same clock and echo)."""
    w = EchoWorld()
    add_riders(w, -80.0)
    tok = w.add(RidAddressToken("bag", _heard(plan), skew=skew))
    if twin is not None:
        w.add(RidAddressToken("twin", _heard(twin), skew=skew))
    if echo is not None:
        w.echoes["bag"] = w.echoes["twin"] = echo
    _trip(w)
    return [f"{d.start.stop_id}->{d.end.stop_id}" for d in by_name(w.finish(), tok)]


POOLED: Plan = {1: ((10.0, 13.0), (300.0, 660.0, 760.0)), 2: ((6.0, 8.0), ())}
"""Heard at S1's doors and once on the hop, its rid ending there (it goes to the rotation
pool: it stopped at its interval's end), its next rid first heard 11 s into its interval
(a rotation rid) but 36 s after the last advert (the pairing's window is 30 s at most), at
two points within 150 m of S2 (its own stretch: enough points, too near S2), then at S2's
doors as it walks out."""


def test_a_pooled_candidate_no_new_rid_took_bequeaths_its_echo_stretch() -> None:
    """Full scale, tuning seed 1, cell 24, rush_hour_crowd r-00036 (BD008 -> BD009): the
    old rid, a candidate in the rotation pool that nothing paired, was never offered to
    its next rid's echo; the next rid's own two points, first heard near S2, do not say it
    was aboard since S1 (a waiter at S2 may echo S1's beacon). One stretch since S1 by
    the echo, heard at S1's doors: S1 -> S2. Without the echo: missed."""
    assert _rid_addresses(own(1), POOLED, skew=385.0) == ["S1->S2"]
    assert _rid_addresses(None, POOLED, skew=385.0) == []
    # its next rid 10 s later (21 s into its interval: a candidate, judged as it is
    # first heard): linked on its first point, once the pool let the old rid go
    assert _rid_addresses(own(1), POOLED, skew=395.0) == ["S1->S2"]

    # the next rid's echo names another stretch (since S2): nothing links the two
    def restarted(w: EchoWorld, rid: bytes) -> int:
        return own(1 if rid.endswith(b"3.") else 2)(w, rid)

    assert _rid_addresses(restarted, POOLED, skew=385.0) == []


RIDER_ON: Plan = {
    0: ((10.0, 13.0), (200.0, 300.0, 400.0, 500.0, 600.0)),
    1: ((6.0, 8.0), (200.0, 400.0)),
    2: ((), (300.0, 500.0)),
    3: ((6.0, 8.0), ()),
}
"""A rider S0 -> S3 boarded at S0 (co-movement), heard through S1 and 400 m on, its rid
ending 40 s later on the hop (held aboard, silent through S2's doors); its next rid first
heard 50 s into its interval, 300 m past S2 (no rotation pairing: not a rotation rid), at
two points on that hop and at S3's doors as it walks out."""


def test_a_riders_next_rid_goes_on_with_the_riders_echo_stretch() -> None:
    """Full scale, tuning seed 2, cell 24, transfer_bunched r-00055 (BD005 -> SE002, charged
    to SE001): the old rid held aboard and closed at the next door, its token's next rid
    (heard a few times a minute) never boarded. Its echo goes on with the rider's since
    S0 (one rider so, the same clock): a segment from S2, the last stop served before its
    first advert, which the backend joins with the rider's S0 -> S2. Since the twenty-fourth
    pass its own stretch, first heard mid-hop past S2, boards it from its echo's stop (S0:
    :meth:`_echo_near`); the backend joins the two segments of the trip all the same (one
    bus trip's segments that overlap are one leg)."""
    assert _rid_addresses(own(0), RIDER_ON, skew=360.0) == ["S0->S2", "S0->S3"]
    # without the echo the ride is cut at S2
    assert _rid_addresses(None, RIDER_ON, skew=360.0) == ["S0->S2"]

    # a second rider boarded at S0 in the same interval, with the same clock (its next
    # rid unheard): either rider's stretch may be the token's, neither is linked (its own
    # stretch, first heard mid-hop past S2, boards it from S0: the twenty-fourth pass)
    twin = {0: RIDER_ON[0], 1: RIDER_ON[1]}
    assert _rid_addresses(own(0), RIDER_ON, skew=360.0, twin=twin) == ["S0->S2", "S0->S3"]


RIDER_ON_NEAR: Plan = {**RIDER_ON, 2: ((), (40.0, 300.0, 500.0))}
"""As :data:`RIDER_ON`, but the next rid first heard 40 m past S2's doors (where a waiter
at S2 is heard): its own stretch does not say where it boarded (:meth:`_echo_near`), so
only the rider link can."""


def test_the_rider_link_needs_exactly_one_rider_to_go_on_with() -> None:
    """The rider link alone boards the next rid first heard just past S2 (from S2, joined
    by the backend with the rider's S0 -> S2); with a second rider who boarded at S0 in the
    same interval with the same clock, either stretch may be the token's: nothing is
    linked, and the ride is cut at S2 as without the echo."""
    assert _rid_addresses(own(0), RIDER_ON_NEAR, skew=360.0) == ["S0->S2", "S2->S3"]
    assert _rid_addresses(None, RIDER_ON_NEAR, skew=360.0) == ["S0->S2"]
    twin = {0: RIDER_ON[0], 1: RIDER_ON[1]}
    assert _rid_addresses(own(0), RIDER_ON_NEAR, skew=360.0, twin=twin) == ["S0->S2"]


def test_riders_echo_stretches_do_not_outlive_their_rids() -> None:
    """The riders' stretches kept for their tokens' next rids (the rids, and the forgotten
    rids' records) are gone once every rid is forgotten (each is in every checkpoint)."""
    w = EchoWorld()
    add_riders(w, -80.0)
    for name in ("bag", "twin"):
        w.add(RidAddressToken(name, _heard({0: RIDER_ON[0], 1: RIDER_ON[1]}), skew=360.0))
        w.echoes[name] = own(0)
    _trip(w)
    assert w.c._echo_riders  # (the two riders' stretches, kept past their rids' end)
    for _ in range(40):
        w.t += 600.0
        w.c.tick(w.t, w.odo)
    assert (w.c._echo_riders, w.c._echo_gone, len(w.c._rids)) == ({}, {}, 0)


def test_a_stretch_taken_over_from_another_rid_is_ambiguous_if_either_was() -> None:
    """The collision guard survives a link (:meth:`PresenceClassifier._echo_continues`):
    full scale, tuning seed 3, cell 22, ``shared_stop_three_routes`` r-00313's own stretch
    was first heard at BD009, where a G6000 run sends its seq; the passer-by's rid it was
    linked with, heard mid-hop, was not."""
    for mine, old_amb, seq, want in (
        (True, False, 1, True),
        (False, True, 1, True),
        (False, False, 1, False),
        (True, False, -1, False),  # (no stretch of its own: the old rid's alone)
    ):
        r, old = _Rid(b"r" * 16, 0, 0.0), _Rid(b"o" * 16, 0, 0.0)
        r.eo_amb, r.eo_seq = mine, seq
        old.eo_amb, old.eo_seq = old_amb, 1
        PresenceClassifier._echo_continues(r, old)
        assert r.eo_amb is want
