"""The token's echo (payload byte 23) through the real pipeline: threading, the off switch,
the checkpoint, and random echoes in random worlds (issue 11, docs/classifier.md
"Twentieth pass").

Byte 23 lies outside the token's tags (docs/protocol.md), so a synthetic trace's adverts
keep verifying with any echo written into them: the same world is replayed with no echo,
with this bus's echo, with other buses' and with random bytes.
"""

from __future__ import annotations

import json
import math
import pickle
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from busbell import (
    AdvRecord,
    Feed,
    TokenVerifier,
    TraceRecord,
    derive_rider_keys,
    load_gtfs,
    parse_payload,
    rid_for_interval,
)
from busbell._echo import bus_tag, echo_code, encode_echo
from edge._beacon import beacon_stop_index
from edge._classifier import _ECHO_DEFAULTS
from edge._params import ClassifierParams
from edge._pipeline import CheckpointError, EdgePipeline
from edge._segment import SegmentDraft
from tests.edge.test_classifier_properties import _feed, worlds
from tests.factories.edge_world import (
    COMPANY,
    BusPlan,
    SynthToken,
    assert_fare_invariants,
    fleet_keys_for,
    synth_trace,
    write_gtfs,
)
from tests.factories.properties import examples
from tests.factories.restart_world import world

BUS = "B"

EchoOf = Callable[[AdvRecord, bytes], int]
"""The echo an advert carries, given the advert and its rid."""


def with_echo(recs: Sequence[TraceRecord], echo_of: EchoOf) -> list[TraceRecord]:
    """The trace with each token advert's byte 23 set by ``echo_of``."""
    out: list[TraceRecord] = []
    for r in recs:
        if isinstance(r, AdvRecord) and COMPANY in r.mfr:
            payload = r.mfr[COMPANY]
            e = echo_of(r, parse_payload(payload).rid)
            out.append(replace(r, mfr={**r.mfr, COMPANY: payload[:23] + bytes([e])}))
        else:
            out.append(r)
    return out


def own_echo(bus_id: str, seq: int = 0) -> EchoOf:
    tag = bus_tag(bus_id)
    return lambda _r, rid: encode_echo(echo_code(tag, rid), seq)


def random_echo(seed: int) -> EchoOf:
    rng = random.Random(seed)
    return lambda _r, _rid: rng.randrange(256)


def run(
    feed: Feed,
    recs: Sequence[TraceRecord],
    params: ClassifierParams | None = None,
    bus_id: str = BUS,
) -> tuple[list[str], EdgePipeline]:
    pipe = EdgePipeline(bus_id, feed, TokenVerifier(fleet_keys_for(recs)), params)
    out: list[SegmentDraft] = []
    for r in recs:
        out.extend(pipe.feed(r))
    out.extend(pipe.finish(recs[-1].t + 1.0))
    assert pipe.stats.errors == {}
    return [_event(d) for d in out], pipe


def _event(d: SegmentDraft) -> str:
    """The draft's event fields, the echo byte of its proof's payloads aside (the proof
    carries the payloads as heard)."""
    ev = d.to_event_fields()
    ev["proof"] = {k: v[:-2] for k, v in ev["proof"].items()}
    return json.dumps(ev, sort_keys=True)


@pytest.mark.timeout(600)  # whole-trace replays (see test_checkpoint)
def test_with_the_echo_off_or_every_echo_0_the_events_are_those_of_no_echo(tmp_path: Path) -> None:
    feed, recs, _ = world(tmp_path)
    expected, plain = run(feed, recs)
    off = ClassifierParams(echo_evidence=False)
    for echo_of in (own_echo(BUS, 2), random_echo(5)):
        changed = with_echo(recs, echo_of)
        assert changed != recs
        got, pipe = run(feed, changed, off)
        assert got == expected
        # nothing of the echo was read or kept
        for r in pipe.classifier._rids.values():
            assert {k: getattr(r, k) for k in _ECHO_DEFAULTS} == _ECHO_DEFAULTS
    # on, with every echo 0 (a token that does not listen): the same
    for r in plain.classifier._rids.values():
        assert {k: getattr(r, k) for k in _ECHO_DEFAULTS} == _ECHO_DEFAULTS


@pytest.mark.timeout(600)
def test_the_echo_byte_reaches_the_classifier_against_this_buses_tag(tmp_path: Path) -> None:
    feed, recs, _ = world(tmp_path)
    _, pipe = run(feed, with_echo(recs, own_echo(BUS, 2)))
    rids = list(pipe.classifier._rids.values())
    assert rids
    assert all(r.ec == echo_code(bus_tag(BUS), r.rid) for r in rids)
    assert all(r.eo_n > 0 and r.eo_seq == 2 and r.ex_run == 0 for r in rids)
    # the same echo read by another bus names another bus (its code differs for most rids)
    _, beside = run(feed, with_echo(recs, own_echo(BUS, 2)), bus_id="C")
    ex = [r.ex_run for r in beside.classifier._rids.values()]
    assert sum(1 for n in ex if n > 0) > len(ex) // 2


def _replay_restoring(
    feed: Feed, recs: list[TraceRecord], every: int, blob_filter: Callable[[bytes], bytes]
) -> list[str]:
    keys = fleet_keys_for(recs)
    pipe = EdgePipeline(BUS, feed, TokenVerifier(keys))
    out: list[SegmentDraft] = []
    for i, r in enumerate(recs):
        if every and i and i % every == 0:
            fresh = EdgePipeline(BUS, feed, TokenVerifier(keys))
            fresh.restore(blob_filter(pipe.snapshot()))
            pipe = fresh
        out.extend(pipe.feed(r))
    out.extend(pipe.finish(recs[-1].t + 1.0))
    return [_event(d) for d in out]


def _without_slots(blob: bytes, names: Collection[str]) -> bytes:
    """The checkpoint as code from before ``names`` were kept wrote it (no such slots)."""
    state = pickle.loads(blob)
    slots: list[str] = state["rid_slots"]
    keep = [i for i, name in enumerate(slots) if name not in names]
    state["rid_slots"] = [slots[i] for i in keep]
    state["rid_records"] = [tuple(row[i] for i in keep) for row in state["rid_records"]]
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def _without_echo_slots(blob: bytes) -> bytes:
    """The checkpoint as code from before the echo wrote it (no echo slots)."""
    return _without_slots(blob, _ECHO_DEFAULTS.keys())


def _echoed_pipeline(tmp_path: Path) -> tuple[Feed, list[TraceRecord], EdgePipeline]:
    """The world's feed and records, and a pipeline fed its first 3,000 echoed records."""
    feed, recs, _ = world(tmp_path)
    echoed = with_echo(recs, own_echo(BUS, 1))
    first = EdgePipeline(BUS, feed, TokenVerifier(fleet_keys_for(recs)))
    for r in echoed[:3000]:
        first.feed(r)
    return feed, recs, first


@pytest.mark.timeout(600)
def test_the_echo_evidence_survives_a_restore_at_every_step(tmp_path: Path) -> None:
    feed, recs, _ = world(tmp_path)
    echoed = with_echo(recs, own_echo(BUS, 1))
    expected, _ = run(feed, echoed)
    assert _replay_restoring(feed, echoed, 97, lambda b: b) == expected


def test_a_checkpoint_from_before_the_echo_restores_with_no_echo_heard(tmp_path: Path) -> None:
    feed, recs, first = _echoed_pipeline(tmp_path)
    assert any(r.eo_n for r in first.classifier._rids.values())
    old = _without_echo_slots(first.snapshot())
    pipe = EdgePipeline(BUS, feed, TokenVerifier(fleet_keys_for(recs)))
    pipe.restore(old)
    assert pipe.classifier._rids.keys() == first.classifier._rids.keys()
    for rr in pipe.classifier._rids.values():
        assert {k: getattr(rr, k) for k in _ECHO_DEFAULTS} == _ECHO_DEFAULTS
        assert rr.n_adv == first.classifier._rids[rr.rid].n_adv
    # with zero echoes a checkpoint from before restores to the very state of this code's
    plain = EdgePipeline(BUS, feed, TokenVerifier(fleet_keys_for(recs)))
    for r in recs[:3000]:
        plain.feed(r)
    a = EdgePipeline(BUS, feed, TokenVerifier(fleet_keys_for(recs)))
    a.restore(_without_echo_slots(plain.snapshot()))
    assert pickle.loads(a.snapshot()) == pickle.loads(plain.snapshot())
    # some of the echo's slots but not all: another version
    state = pickle.loads(old)
    state["rid_slots"] = [*state["rid_slots"], "eo_n"]
    state["rid_records"] = [(*row, 0) for row in state["rid_records"]]
    with pytest.raises(CheckpointError, match="another classifier version"):
        EdgePipeline(BUS, feed, TokenVerifier(fleet_keys_for(recs))).restore(pickle.dumps(state))


@st.composite
def echo_plans(draw: st.DrawFn, n: int) -> list[tuple[str, int]]:
    """Per token: what it echoes (``none``, this bus's code, another's, random bytes) and a
    seq."""
    kinds = st.sampled_from(["none", "own", "own", "other", "random"])
    return [(draw(kinds), draw(st.integers(0, 7))) for _ in range(n)]


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), st.data())
def test_random_echoes_never_crash_never_board_after_alighting_never_double_charge(
    tmp_path_factory: pytest.TempPathFactory,
    world_: tuple[BusPlan, list[SynthToken], float, int],
    data: st.DataObject,
) -> None:
    plan, toks, loss, seed = world_
    feed = _feed(tmp_path_factory)
    plans = data.draw(echo_plans(len(toks)))
    recs, _ = synth_trace(plan, toks, seed=seed, packet_loss=loss)
    tag = bus_tag("SYN")
    rng = random.Random(seed)
    ivs = range(math.floor(recs[0].t / 600) - 1, math.floor(recs[-1].t / 600) + 2)
    owner = {
        rid_for_interval(derive_rider_keys(tok.token_key).rid_key, iv): k
        for k, tok in enumerate(toks)
        for iv in ivs
    }

    def echo_of(_r: AdvRecord, rid: bytes) -> int:
        kind, seq = plans[owner[rid]]
        if kind == "own":
            return encode_echo(echo_code(tag, rid), seq)
        if kind == "other":
            return encode_echo(echo_code(bus_tag("OTHER"), rid), seq)
        return rng.randrange(256) if kind == "random" else 0

    echoed = with_echo(recs, echo_of)
    pipe = EdgePipeline("SYN", feed, TokenVerifier(fleet_keys_for(recs)))
    drafts: list[SegmentDraft] = []
    for r in echoed:
        drafts.extend(pipe.feed(r))
    drafts.extend(pipe.finish(echoed[-1].t + 1.0))
    assert pipe.stats.errors == {}
    assert_fare_invariants(drafts, toks, feed)


def test_the_echos_stop_is_the_beacons_stop_index_stops_passed_counted(tmp_path: Path) -> None:
    """The classifier reckons the stop an echo's stretch began at with the beacon's own stop
    index (:func:`edge._beacon.beacon_stop_index`, stops passed without stopping counted):
    from the stop visits alone, a stop passed would shift it 8 stops back."""
    feed = load_gtfs(write_gtfs(tmp_path / "g", 8, 400.0))
    plan = BusPlan(n_stops=8, spacing_m=400.0, skip_stops=(2,))
    tok = SynthToken(bytes(16), board=0, alight=7)
    recs, _ = synth_trace(plan, [tok], seed=3)
    pipe = EdgePipeline(BUS, feed, TokenVerifier(fleet_keys_for(recs)))
    assert isinstance(pipe.classifier.stop_index_now, partial)
    assert pipe.classifier.stop_index_now.func is beacon_stop_index
    tag = bus_tag(BUS)
    first: dict[bytes, int] = {}
    for r in recs:
        if isinstance(r, AdvRecord) and COMPANY in r.mfr:
            payload = r.mfr[COMPANY]
            rid = parse_payload(payload).rid
            # the stretch began on the way to S3, once past S2 (passed): seq 3
            i = beacon_stop_index(pipe.vehicle)
            if rid not in first and i == 3:
                first[rid] = -1  # (the classifier's eo_k, below)
            seq = 3 if rid in first else 0
            e = encode_echo(echo_code(tag, rid), seq) if rid in first else 0
            r = replace(r, mfr={COMPANY: payload[:23] + bytes([e])})  # noqa: PLW2901
        pipe.feed(r)
        if isinstance(r, AdvRecord) and first:
            for rid in first:
                k = pipe.classifier._rids[rid].eo_k if rid in pipe.classifier._rids else None
                if k is not None:
                    first[rid] = k
    assert first
    assert set(first.values()) == {3}, first
    assert all(v.stop_index != 2 for v in pipe.vehicle.visits)


def test_a_checkpoint_from_before_the_stretchs_latest_advert_restores_without_it(
    tmp_path: Path,
) -> None:
    """A checkpoint written before ``eo_t1`` (the echo stretch's latest advert, which the
    rotation pairing's echo bar reads) restores every other echo field, ``eo_t1`` 0.0: the
    bar then reads nothing of that rid (:meth:`PresenceClassifier._echo_apart`)."""
    feed, recs, first = _echoed_pipeline(tmp_path)
    assert any(r.eo_t1 for r in first.classifier._rids.values())
    pipe = EdgePipeline(BUS, feed, TokenVerifier(fleet_keys_for(recs)))
    pipe.restore(_without_slots(first.snapshot(), {"eo_t1"}))
    for rr in pipe.classifier._rids.values():
        was = first.classifier._rids[rr.rid]
        assert rr.eo_t1 == 0.0
        assert (rr.eo_seq, rr.eo_k, rr.eo_n, rr.eo_pts) == (
            was.eo_seq,
            was.eo_k,
            was.eo_n,
            was.eo_pts,
        )


def test_a_checkpoint_from_before_the_collision_guard_restores_without_it(tmp_path: Path) -> None:
    """A checkpoint written before ``eo_amb`` (thirty-eighth pass) restores every other
    field, ``eo_amb`` False: no stretch known ambiguous, one echo point boards an old one."""
    feed, recs, first = _echoed_pipeline(tmp_path)
    pipe = EdgePipeline(BUS, feed, TokenVerifier(fleet_keys_for(recs)))
    pipe.restore(_without_slots(first.snapshot(), {"eo_amb"}))
    assert pipe.classifier._rids.keys() == first.classifier._rids.keys()
    for rr in pipe.classifier._rids.values():
        assert rr.eo_amb is False
        assert rr.pool_lvl == first.classifier._rids[rr.rid].pool_lvl


def test_a_checkpoint_from_before_the_pools_level_restores_without_it(tmp_path: Path) -> None:
    """A checkpoint written before ``pool_lvl`` (the riders' level as a rid joined the
    rotation pool, which a candidate's next rid is boarded near) restores every other field,
    ``pool_lvl`` -inf: no pool level, the riders' level now alone judges that rid's heir
    (:meth:`PresenceClassifier._heir_near`); so does one written before the echo too."""
    feed, recs, first = _echoed_pipeline(tmp_path)
    for names in (
        {"pool_lvl", "eo_amb"},
        {"pool_lvl", "eo_amb", "eo_t1"},
        {"pool_lvl", "eo_amb", *_ECHO_DEFAULTS},
    ):
        pipe = EdgePipeline(BUS, feed, TokenVerifier(fleet_keys_for(recs)))
        pipe.restore(_without_slots(first.snapshot(), names))
        assert pipe.classifier._rids.keys() == first.classifier._rids.keys()
        for rr in pipe.classifier._rids.values():
            assert rr.pool_lvl == -math.inf
            assert rr.n_adv == first.classifier._rids[rr.rid].n_adv
