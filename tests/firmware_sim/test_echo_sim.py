"""Bus beacons in the simulated radio world and tokens that echo them (firmware_sim._beacon)."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from busbell import AdvRecord, derive_rider_keys, interval_of, rid_for_interval
from busbell._echo import bus_tag, decode_echo, echo_code
from firmware_sim._beacon import EchoModel, EchoParams, bus_seq_at, seq_breaks
from firmware_sim._output import GenerateOptions, ScenarioOutput, run_scenario
from firmware_sim._radio import DEFAULT_PARAMS, Placement, RadioChannel
from firmware_sim._scenarios import build_scenario
from firmware_sim._sweep import CELLS
from firmware_sim._tokens import DeviceKind, TokenDevice
from firmware_sim._vehicle import BusPlan
from firmware_sim._world import TokenEnvelope

_ECHO = GenerateOptions(envelope=TokenEnvelope(echo_share=1.0))


def _adverts(out: ScenarioOutput) -> list[tuple[str, AdvRecord]]:
    return [
        (b, r)
        for b, recs in sorted(out.result.records.items())
        for r in recs
        if isinstance(r, AdvRecord)
    ]


def _payload(r: AdvRecord) -> bytes:
    return next(iter(r.mfr.values()))


def test_beacon_seq_follows_the_bus_through_its_stops() -> None:
    out = run_scenario("transfer_two_buses", 1, options=GenerateOptions(skip_stop_bus="bus-55-01"))
    plan = out.result.plans["bus-55-01"]
    breaks = seq_breaks(plan)
    first = plan.calls[0]
    assert bus_seq_at(breaks, plan.t_start - 5.0) == first.idx
    for call in plan.calls:
        # serving the stop with the doors open, then the next once the doors have closed
        assert bus_seq_at(breaks, call.t_open + 0.5) == call.idx
        assert bus_seq_at(breaks, call.t_close + 0.5) == call.idx + 1
    called = {c.idx for c in plan.calls}
    passed = [i for i in range(first.idx, plan.calls[-1].idx) if i not in called]
    assert out.result.skipped_stops[0]["idx"] in passed
    for i in passed:  # passed without stopping: k + 1 once past it
        t = plan.motion.time_at_s(plan.path.stop_s[i], plan.t_start)
        assert bus_seq_at(breaks, t - 1.0) == i
        assert bus_seq_at(breaks, t + 1.0) == i + 1


def _rid_owner(out: ScenarioOutput) -> dict[bytes, str]:
    res = out.result
    intervals = range(interval_of(res.t0) - 1, interval_of(res.t1) + 2)
    owner = {}
    for pid, key in res.rider_keys.items():
        rid_key = derive_rider_keys(key).rid_key
        for i in intervals:
            owner[rid_for_interval(rid_key, i)] = pid
    return owner


@pytest.mark.parametrize("name", ["quiet_route", "transfer_bunched"])
def test_a_riders_echo_names_its_bus_with_its_boarding_stops_seq(name: str) -> None:
    out = run_scenario(name, 1, options=replace(_ECHO, radio=CELLS[1].radio(DEFAULT_PARAMS)))
    res = out.result
    owner = _rid_owner(out)
    idx_of = {b: {c.stop_id: c.idx for c in pl.calls} for b, pl in res.plans.items()}
    legs = {(lg.rider_id, lg.bus_id): lg for lg in res.legs}
    aboard = right = 0
    for b, r in _adverts(out):
        raw = _payload(r)
        pid = owner.get(raw[3:15])
        leg = legs.get((pid, b)) if pid is not None else None
        if leg is None or not leg.board_t <= r.t <= leg.alight_t:
            continue
        dec = decode_echo(raw[23])
        if dec is None:  # a fob, or not yet heard
            continue
        aboard += 1
        code, seq = dec
        right += (
            code == echo_code(bus_tag(b), raw[3:15]) and seq == idx_of[b][leg.board_stop_id] % 8
        )
    assert aboard > 500
    assert right / aboard > 0.95
    audit = res.stats["echo"]
    assert audit["listening_tokens"] > 0
    row = audit["by_role"]["rider_aboard"]
    assert row["echo_bus_seq"] / row["adverts"] > 0.9
    assert sum(leg["adverts"] for leg in audit["legs"]) == row["adverts"]


def test_only_phones_listen_and_nothing_is_echoed_without_echo_share() -> None:
    name = "shared_stop_three_routes"
    base = run_scenario(name, 2)
    assert all(_payload(r)[23] == 0 for _, r in _adverts(base))
    assert "echo" not in base.result.stats
    zero = run_scenario(name, 2, options=GenerateOptions(envelope=TokenEnvelope(echo_share=0.0)))
    assert _adverts(zero) == _adverts(base)
    echo = run_scenario(name, 2, options=_ECHO)
    kinds = {p.person_id: p.kind for p in build_scenario(name, 2, "small").persons}
    owner = _rid_owner(echo)
    by_kind: dict[DeviceKind, list[int]] = {}
    for _, r in _adverts(echo):
        pid = owner[_payload(r)[3:15]]
        if pid in kinds:
            by_kind.setdefault(kinds[pid], []).append(_payload(r)[23])
    assert set(by_kind[DeviceKind.FOB]) == {0}
    for kind in (DeviceKind.PHONE_FOREGROUND, DeviceKind.ANDROID_BACKGROUND):
        echoes = by_kind[kind]
        assert sum(e != 0 for e in echoes) > 0.9 * len(echoes)
    with pytest.raises(ValueError, match="echo_share"):
        TokenEnvelope(echo_share=1.5)


@pytest.mark.parametrize(("plain", "echo"), [(2, 22), (10, 23), (20, 24), (10, 25)])
def test_adverts_with_the_echo_are_those_without_except_byte_23(plain: int, echo: int) -> None:
    """A classifier can be A/B-tested on identical radio: the echo draws no shared number."""
    assert CELLS[echo - 1].radio(DEFAULT_PARAMS) == CELLS[plain - 1].radio(DEFAULT_PARAMS)
    name = "bus_alongside_red_light"
    a = run_scenario(name, 3, options=CELLS[plain - 1].options(GenerateOptions()))
    b = run_scenario(name, 3, options=CELLS[echo - 1].options(GenerateOptions()))
    assert a.result.legs == b.result.legs
    ra, rb = _adverts(a), _adverts(b)
    assert len(ra) == len(rb)
    for (ba, x), (bb, y) in zip(ra, rb, strict=True):
        assert (ba, x.t, x.addr, x.rssi) == (bb, y.t, y.addr, y.rssi)
        assert _payload(x)[:23] == _payload(y)[:23]
    echoed = sum(_payload(y)[23] != 0 for _, y in rb)
    assert echoed > len(rb) / 10
    assert a.result.records.keys() == b.result.records.keys()


def _xy(plan: BusPlan, t: float) -> tuple[float, float]:
    s, _ = plan.motion.at(t)
    x, y, _, _ = plan.path.line.at(s)
    return x, y


def _listen(
    plan: BusPlan,
    spot: tuple[float, float] | None,
    ticks: range,
    *,
    follow: set[int] | None = None,
) -> TokenDevice:
    """A foreground phone app that stands at ``spot`` (or rides in the bus at ticks ``follow``)."""
    tok = TokenDevice("tok-x", bytes(16), DeviceKind.PHONE_FOREGROUND, {}, phase_s=0.3)
    model = EchoModel(
        EchoParams(),
        RadioChannel(DEFAULT_PARAMS, random.Random(1)),
        {plan.bus_id: plan},
        0.0,
        random.Random(2),
    )
    span = {plan.bus_id: (plan.t_start - 10.0, plan.t_end)}
    for k in ticks:
        if follow is not None and k in follow:
            near = [(plan.bus_id, 2.0, 1)]
        elif spot is not None:
            d = math.dist(spot, _xy(plan, k + 1.0))
            near = [(plan.bus_id, d, 0)] if d <= 100.0 else []
        else:
            near = []
        model.refresh(tok, Placement.IN_HAND, k, near, {plan.bus_id: False}, span)
    return tok


def _echo_at(tok: TokenDevice, t: float) -> int:
    return tok.echoes.get(tok.refresh_index(t), 0)


def test_a_person_at_a_stop_who_does_not_board_echoes_nothing_after_the_bus_left() -> None:
    plan = run_scenario("quiet_route", 1).result.plans["bus-55-01"]
    call = plan.calls[len(plan.calls) // 2]
    x, y, tx, ty = plan.path.line.at(call.s)
    spot = (x + 4.0 * ty, y - 4.0 * tx)  # on the pavement, 4 m from the kerb
    ticks = range(math.floor(call.t_arrive) - 120, math.floor(call.t_close) + 150)
    tok = _listen(plan, spot, ticks)
    rid = rid_for_interval(tok.keys.rid_key, interval_of(tok.clock(call.t_close)))
    code = echo_code(bus_tag(plan.bus_id), rid)
    during = decode_echo(_echo_at(tok, call.t_close - 0.1))
    assert during is not None
    assert during[0] == code
    # heard since it approached the stop: the seq of the stop it came to next
    assert during[1] == call.idx % 8
    after = [_echo_at(tok, float(t)) for t in range(math.ceil(call.t_close) + 70, ticks.stop)]
    assert after
    assert set(after) == {0}


def test_the_echo_restarts_after_a_gap_longer_than_gap_s() -> None:
    plan = run_scenario("quiet_route", 1).result.plans["bus-55-01"]
    a, b = plan.calls[1], plan.calls[-2]
    assert (b.idx - a.idx) % 8 != 0
    gap = EchoParams().gap_s
    start = math.floor(a.t_open)
    # aboard from stop a, deaf (a phone in a shielded bag) for a stretch, then heard again
    short = {*range(start, start + 60), *range(start + 60 + int(gap) - 12, start + 200)}
    tok = _listen(plan, None, range(start, start + 200), follow=short)
    kept = decode_echo(_echo_at(tok, start + 30.0))
    assert kept is not None
    assert kept[1] == a.idx % 8
    assert decode_echo(_echo_at(tok, start + 199.0)) == kept  # a short gap: still since a
    rejoin = math.floor(b.t_open)
    long = {*range(start, start + 60), *range(rejoin, rejoin + 40)}
    tok = _listen(plan, None, range(start, rejoin + 40), follow=long)
    first = decode_echo(_echo_at(tok, start + 30.0))
    again = decode_echo(_echo_at(tok, rejoin + 30.0))
    assert first is not None
    assert again is not None
    assert first[1] == a.idx % 8
    assert again[1] == b.idx % 8  # started afresh, at the seq heard then
    assert rejoin - (start + 60) > gap
