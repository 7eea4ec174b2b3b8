"""Open presences survive a restart (issue 11).

The pipeline's state is checkpointed in the fare store with every recorded segment and
every ``checkpoint_s``; after a SIGKILL mid-trip the restarted process restores it and
goes on. The rides settled from what the killed-and-restarted run recorded are compared
with the rides of the same trace replayed without the kill.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from busbell import (
    DeviceKey,
    Feed,
    TokenVerifier,
    TraceRecord,
    TripRecord,
    configure_logging,
    load_gtfs,
)
from edge._checkpoint import Checkpointer
from edge._events import EventBuilder
from edge._params import ClassifierParams
from edge._pipeline import CheckpointError, EdgePipeline
from edge._segment import SegmentDraft
from edge._store import FareStore
from edge._vehicle import StopVisit
from tests.edge import (
    test_classifier_bystanders,
    test_classifier_door_to_door,
    test_classifier_heard_again,
    test_classifier_rotation_held,
    test_classifier_unride,
)
from tests.edge.test_classifier import T0 as T0_CLS
from tests.edge.test_classifier import World, _weak_rider_rotating_unheard
from tests.factories.edge_world import (
    BusPlan,
    fleet_keys_for,
    replay,
    synth_trace,
    verifier_for,
    write_gtfs,
)
from tests.factories.restart_world import T0, quiet_moments, rides, world
from tests.factories.tasks import script_env

KEY = DeviceKey.from_seed(bytes(range(32)))


def test_snapshot_restore_mid_trip_loses_no_ride(tmp_path: Path) -> None:
    feed, recs, toks = world(tmp_path)
    whole, _ = replay(feed, recs)
    expected = rides(feed, whole, toks)
    assert len(expected) == 12
    # riders on board, the bus driving on
    kill_t = next(t for t in quiet_moments(recs, 2.0, 42.0) if t > T0 + 150)
    assert kill_t < T0 + 300  # before the rid boundary (T0 + 300)
    first = EdgePipeline("B", feed, verifier_for(recs))
    got: list[SegmentDraft] = []
    for r in recs:
        if r.t > kill_t:
            break
        got.extend(first.feed(r))
    blob = first.snapshot()
    assert first.on_board() > 0
    second = EdgePipeline("B", feed, verifier_for(recs))
    second.restore(blob)
    assert second.on_board() == first.on_board()
    for r in recs:  # down for 40 s: nothing heard, then on
        if r.t > kill_t + 40.0:
            got.extend(second.feed(r))
    got.extend(second.finish(recs[-1].t + 1.0))
    assert second.stats.errors == {}
    assert rides(feed, got, toks) == expected


def test_snapshot_restore_across_the_rid_boundary_keeps_the_rotation_pool(tmp_path: Path) -> None:
    # restored at every second around the boundary: the rotated rids waiting for their
    # new rids (the pool holds them, some no longer in the rid table) must come back as
    # the same records, so that every ride continues as in the replay without a restart
    feed, recs, toks = world(tmp_path)
    whole, _ = replay(feed, recs)
    expected = rides(feed, whole, toks)
    boundary = 1_790_000_400.0
    pooled = 0
    for kill_t in [boundary + dt for dt in (-2.0, 1.0, 3.0, 6.0, 10.0, 20.0)]:
        first = EdgePipeline("B", feed, verifier_for(recs))
        got: list[SegmentDraft] = []
        rest = []
        for r in recs:
            if r.t > kill_t:
                rest.append(r)
            else:
                got.extend(first.feed(r))
        pooled += len(first.classifier._olds)
        second = EdgePipeline("B", feed, verifier_for(recs))
        second.restore(first.snapshot())
        c1, c2 = first.classifier, second.classifier
        assert sorted(c2._rids) == sorted(c1._rids)
        assert {o: (r.rid, k) for o, (r, k, _) in c2._olds.items()} == {
            o: (r.rid, k) for o, (r, k, _) in c1._olds.items()
        }
        for rid, r in c1._rids.items():
            assert c2._rids[rid].state == r.state
            assert c2._rids[rid].start == r.start
        for r in rest:  # no downtime: the restored pipeline must go on exactly as before
            got.extend(second.feed(r))
        got.extend(second.finish(recs[-1].t + 1.0))
        assert second.stats.errors == {}
        assert rides(feed, got, toks) == expected, kill_t
    assert pooled > 0  # some restores had rotated rids waiting in the pool


def _events(drafts: list[SegmentDraft]) -> list[str]:
    """The drafts as the fare events' fields, in emission order (the events' seq order)."""
    return [json.dumps(d.to_event_fields(), sort_keys=True) for d in drafts]


def replay_restoring(
    feed: Feed,
    recs: list[TraceRecord],
    every: int,
    *,
    down: tuple[float, float] | None = None,
    at_restart: tuple[TraceRecord, ...] = (),
) -> tuple[list[SegmentDraft], int]:
    """Replay ``recs`` with the pipeline snapshotted and restored into a new pipeline at
    every ``every`` records (0: never), nothing lost; ``down``: also a restart after the
    records up to ``down[0]``, the records until ``down[1]`` lost, ``at_restart`` fed first
    after it (retained messages delivered again). Returns the drafts and how many restores
    held a ``_heirs`` entry or a rotated rid in the pool."""
    keys = fleet_keys_for(recs)  # (once: a pass over the trace; a fresh verifier each time)
    pipe = EdgePipeline("B", feed, TokenVerifier(keys))
    out: list[SegmentDraft] = []
    held = 0
    for i, r in enumerate(recs):
        if down is not None and down[0] < r.t <= down[1]:
            continue
        restart = down is not None and r.t > down[1] and pipe.t <= down[0]
        if restart or (every and i and i % every == 0):
            held += bool(pipe.classifier._heirs or pipe.classifier._olds)
            fresh = EdgePipeline("B", feed, TokenVerifier(keys))
            fresh.restore(pipe.snapshot())
            pipe = fresh
            for again in at_restart if restart else ():
                out.extend(pipe.feed(again))
        out.extend(pipe.feed(r))
    out.extend(pipe.finish(recs[-1].t + 1.0))
    assert pipe.stats.errors == {}
    return out, held


# Replays of a whole trace at every n records (each replay ~0.25 s of CPU, but one per restore
# point, two to three times that under --core-coverage): the suite's 120-s hang guard is too tight
# on a two-core machine running other work (CI on a loaded machine, load ~12, timed these out);
# 600 s still catches a hang.
@pytest.mark.timeout(600)
def test_a_restore_at_every_n_records_emits_exactly_the_events_of_no_restore(
    tmp_path: Path,
) -> None:
    # a restore with nothing lost (the next record comes as it would have) must go on
    # exactly as without it: same segments, same order (the events' seqs), same
    # evidence. Before: every restore started the resume grace (full fade timeouts from
    # the next record; late joiners of the current dwell never judged absent), and
    # restored every 7 or 50 records the replay emitted 3 segments differently
    feed, recs, _ = world(tmp_path)
    whole, _ = replay(feed, recs)
    expected = _events(whole)
    pooled = 0
    for every in (7, 50, 333):
        got, held = replay_restoring(feed, recs, every)
        assert _events(got) == expected, every
        pooled += held
    assert pooled > 0  # some restores had rotated rids waiting in the pool


@pytest.mark.timeout(600)  # a whole-trace replay: see above
def test_restores_after_a_real_restart_keep_that_restarts_grace(tmp_path: Path) -> None:
    # a restart with 40 s lost gives riders their full timeouts from it (the resume);
    # a checkpoint taken after it and restored without a gap must keep judging as that
    # restart did (the restart's times are checkpointed: before, they were dropped as if
    # derived from the parameters, and the grace ended at the next restore)
    feed, recs, _ = world(tmp_path)
    kill_t = next(t for t in quiet_moments(recs, 2.0, 42.0) if t > T0 + 150)
    boundary = 1_790_000_400.0  # down across it: the rids that ended meanwhile rotated
    for down in ((kill_t, kill_t + 40.0), (boundary - 15.0, boundary + 25.0)):
        once, _ = replay_restoring(feed, recs, 0, down=down)
        for every in (7, 50):
            got, _ = replay_restoring(feed, recs, every, down=down)
            assert _events(got) == _events(once), (down, every)


@pytest.mark.timeout(600)  # whole-trace replays: see above
def test_a_retained_trip_message_at_a_restart_changes_nothing(tmp_path: Path) -> None:
    # the broker delivers the retained sign-on again when the restarted edge subscribes,
    # with its old time, before anything new. Before, that record started the resume
    # at its old time (riders aboard got no grace after 40 s down and faded at once) and
    # signed the bus on to its trip afresh (stop matching from the first stop again)
    feed, recs, _ = world(tmp_path)
    kill_t = next(t for t in quiet_moments(recs, 2.0, 42.0) if t > T0 + 150)
    down = (kill_t, kill_t + 40.0)
    sign_on = next(r for r in recs if isinstance(r, TripRecord))
    once, _ = replay_restoring(feed, recs, 0, down=down)
    again, _ = replay_restoring(feed, recs, 0, down=down, at_restart=(sign_on, sign_on))
    assert _events(again) == _events(once)
    whole, _ = replay(feed, recs)
    assert _events(once) != _events(whole)  # (the restart's grace decides something)


class _Restoring(World):
    """The classifier tests' scripted world, its classifier checkpointed (through a
    pipeline's snapshot) and restored into a new pipeline's at every step while the doors
    are closed, nothing lost; ``at_doors``: at every step, the open doors included (the
    world's stop visit is then the restored classifier's copy, as a restored pipeline's
    vehicle and classifier share theirs)."""

    def __init__(
        self,
        feed: Feed,
        t0: float,
        params: ClassifierParams | None = None,
        *,
        at_doors: bool = False,
    ) -> None:
        super().__init__(params, t0=t0)
        self.feed = feed
        self.at_doors = at_doors
        self.heirs = 0
        """Restores that held a ``_heirs`` entry."""
        self.restores: list[tuple[bool, bool, bool]] = []
        """For each restore: doors open, a rid paired (``_match``), rids in the pool."""

    def step(self, dt: float = 0.5) -> None:
        if self.at_doors or self.visit is None or self.visit.close_t is not None:
            pipe = EdgePipeline("B", self.feed, verifier_for([]), self.p)
            pipe.classifier = self.c
            self.heirs += bool(self.c._heirs)
            self.restores.append(
                (
                    self.visit is not None and self.visit.close_t is None,
                    bool(self.c._match),
                    bool(self.c._olds),
                )
            )
            fresh = EdgePipeline("B", self.feed, verifier_for([]), self.p)
            fresh.restore(pipe.snapshot())
            self.c = fresh.classifier
            self.c.resume(self.t)  # (the pipeline's first record after a restore)
            v = self.c._visit
            if self.visit is not None and v is not None and v.seq == self.visit.seq:
                self.visit = v
        super().step(dt)

    def dwell(
        self, stop_id: str | None, seconds: float = 15.0, *, reopen: bool = False
    ) -> StopVisit:
        v = super().dwell(stop_id, seconds, reopen=reopen)
        if self.visit is not v and self.visit is not None:  # (restored while they stood open)
            self.visit.close_t, self.visit.close_odo_m = v.close_t, v.close_odo_m
            self.c.on_visit("close", self.visit, self.t)
            return self.visit
        return v


@pytest.mark.parametrize("keeps_address", [True, False])
def test_heirs_and_tentative_pieces_survive_a_restore_at_every_step(
    tmp_path: Path, keeps_address: bool
) -> None:
    # the weak rider whose rids each have two co-movement points: a phone (same BLE
    # address) whose new rid inherits the old rid's candidacy (``_heirs``) and boards at
    # S1; a fob (new address) whose two rids are sent as tentative pieces. Restored at
    # every step between the stops (the heir's wait included), the same events come out
    # (before: a restore's grace made them differ)
    feed = load_gtfs(write_gtfs(tmp_path / "g", 3, 800.0))
    plain = World(t0=T0_CLS + 470.0)
    _weak_rider_rotating_unheard(plain, keeps_address=keeps_address)
    expected = _events(plain.out)
    assert any('"tentative"' in e for e in expected)  # (the old rid's piece, both ways)
    w = _Restoring(feed, T0_CLS + 470.0)
    _weak_rider_rotating_unheard(w, keeps_address=keeps_address)
    assert _events(w.out) == expected
    assert w.heirs > 0  # restored while the old rid's candidacy waited for its heir


@pytest.mark.parametrize(
    "scripted",
    [
        test_classifier_heard_again.test_a_rider_heard_again_under_its_next_rid_keeps_its_boarding,
        test_classifier_heard_again.test_another_devices_next_rid_from_the_address_is_no_successor,
        test_classifier_heard_again.test_a_new_rid_from_the_address_of_a_dropped_candidate_continues_no_other_ride,
        test_classifier_unride.test_two_non_riders_dropped_one_after_the_other_leave_no_level,
        test_classifier_unride.test_a_non_rider_confirmed_before_a_rider_gives_back_the_riders_level,
        test_classifier_unride.test_a_rider_after_a_non_rider_is_not_measured_against_its_level,
        test_classifier_bystanders.test_someone_beside_the_doors_absent_at_them_16_db_below_strong_riders_is_not_charged,
        test_classifier_bystanders.test_a_token_beside_the_doors_at_the_floor_16_db_below_the_riders_boards,
        test_classifier_bystanders.test_a_few_spurious_weak_readings_do_not_lower_the_receivers_floor,
        test_classifier_bystanders.test_the_floor_follows_a_bus_that_decodes_weaker_adverts_often,
        test_classifier_door_to_door.test_a_weak_rider_carried_from_one_stops_doors_to_the_next_rode_that_hop,
        test_classifier_door_to_door.test_a_car_passing_the_bus_at_one_stop_and_driving_on_at_the_next_is_not_charged,
    ],
    ids=lambda f: f.__name__.removeprefix("test_")[:40],
)
def test_classifier_state_added_this_session_survives_a_restore_at_every_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scripted: Callable[[], None]
) -> None:
    # the scripted classifier tests, their world's classifier restored from a snapshot at
    # every step, the doors open included (before: only between the stops): each still
    # holds (the classifier's BLE address -> latest interval, ``_addr_iv``, the level of
    # the latest ride kept, ``_rode_lvl``, and the receiver's floor, ``_floor`` and
    # ``_lows``, are checkpointed: left out of a snapshot, the first, the fifth and the
    # seventh fail; review of 5a06baf, c049005 and 3cad75f, whose tests never restored a
    # classifier; and a rid's ``addr_after``: reset by a restore, the third fails; a rid's
    # door-to-door slots, ``dp_*``, left out, the door-to-door rider is missed)
    feed = load_gtfs(write_gtfs(tmp_path / "g", 3, 800.0))
    for module in (
        test_classifier_heard_again,
        test_classifier_unride,
        test_classifier_bystanders,
        test_classifier_door_to_door,
    ):
        monkeypatch.setattr(module, "World", lambda t0=T0_CLS: _Restoring(feed, t0, at_doors=True))
    scripted()


_HELD = test_classifier_rotation_held


@pytest.mark.parametrize(
    "scripted",
    [
        _HELD.test_a_paired_new_rid_silent_past_the_stop_and_heard_again_keeps_the_ride,
        _HELD.test_a_paired_new_rid_never_heard_again_still_ends_the_ride_at_its_stop,
        _HELD.test_a_fobs_new_rid_heard_past_the_pairing_window_is_held_and_rides_on,
        _HELD.test_a_paired_new_rid_heard_again_at_the_next_stops_open_doors_keeps_the_ride,
        _HELD.test_a_paired_new_rid_heard_again_just_after_the_next_doors_closed_keeps_the_ride,
        _HELD.test_a_paired_new_rid_silent_as_the_next_doors_open_is_held_to_the_doors_after,
        _HELD.test_a_paired_new_rids_silence_counts_from_a_restart,
        _HELD.test_a_successors_silence_counts_from_a_restart,
        _HELD.test_a_successor_silent_through_the_next_stops_open_doors_is_held_while_they_stand,
    ],
    ids=lambda f: f.__name__.removeprefix("test_")[:48],
)
def test_a_held_rotated_rider_survives_a_restore_at_every_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scripted: Callable[[], None]
) -> None:
    # the rotation-held worlds (a rotated rider's new rid held through a silence while
    # the bus moves: paired with the old rid, or a successor of an unpaired one), their
    # classifier restored from a snapshot at every step of the rider's life, the doors
    # open included: boarding, riding, the old rid rotating and waiting in the pool, the
    # new rid paired (or not) and made the next stop's candidate, its silence and its
    # hold, a real restart in it (the two restart worlds), heard again, alighting. Each
    # still holds (the existing restart tests cover one moment each)
    feed = load_gtfs(write_gtfs(tmp_path / "g", 3, 800.0))
    worlds: list[_Restoring] = []

    def restoring(params: ClassifierParams | None = None, t0: float = T0_CLS) -> _Restoring:
        worlds.append(_Restoring(feed, t0, params, at_doors=True))
        return worlds[-1]

    monkeypatch.setattr(_HELD, "World", restoring)
    scripted()
    restores = [x for w in worlds for x in w.restores]
    assert any(doors for doors, _, _ in restores)  # (restored while doors stood open)
    assert any(pooled for _, _, pooled in restores)  # (and while a rotated rid waited)


def _state_of(pipe: EdgePipeline) -> Any:
    """The pipeline's checkpointed state, as values (two snapshots of equal states may
    differ in bytes: pickle shares equal objects only when they are one object)."""
    return pickle.loads(pipe.snapshot())


@pytest.mark.timeout(600)  # a whole-trace replay: see above
def test_a_checkpoint_restored_into_a_used_pipeline_goes_on_as_the_uninterrupted_run(
    tmp_path: Path,
) -> None:
    # a restore must give exactly the checkpointed state, whatever the pipeline ran
    # before: the rotation pairing's index of new rids (a per-tick cache, never
    # checkpointed) was kept by a restore, so a pipeline that had built it at tick m on
    # another day's rids, restored to an earlier tick, paired at tick m from those rids:
    # no pairs for the rotated riders, their new rids unlinked for a tick (the state
    # differed at the boundary's first pairing; review of a29a32e's session)
    feed, recs, toks = world(tmp_path)
    others = [replace(tok, token_key=bytes(b ^ 0x5A for b in tok.token_key)) for tok in toks]
    recs2, _ = synth_trace(BusPlan(t0=T0, n_stops=8, spacing_m=800.0), others, seed=4)
    assert [r.t for r in recs2] == [r.t for r in recs]  # (the same day, other riders)
    used = EdgePipeline("B", feed, verifier_for(recs2))
    j = 0
    while used.classifier._index is None:  # to the tick that first built the pairing's index
        used.feed(recs2[j])
        j += 1
    whole = EdgePipeline("B", feed, verifier_for(recs))  # the uninterrupted run
    for r in recs[: j - 4]:
        whole.feed(r)
    assert whole.classifier._ticks < used.classifier._ticks
    used.restore(whole.snapshot())
    assert _state_of(used) == _state_of(whole)
    paired = 0
    for r in recs[j - 4 :]:
        expected = whole.feed(r)
        assert _events(used.feed(r)) == _events(expected), r.t
        assert _state_of(used) == _state_of(whole), r.t
        paired = max(paired, len(whole.classifier._match))
    assert paired > 0  # the rotated riders were paired meanwhile
    t_end = recs[-1].t + 1.0
    assert _events(used.finish(t_end)) == _events(whole.finish(t_end))


def _instance_attrs(obj: object) -> dict[str, Any]:
    """``vars(obj)``; of a class compiled by mypyc (no ``__dict__``), the attributes set of
    those its type's getset descriptors declare (not the checkpoint's own ``_attrs``)."""
    if hasattr(obj, "__dict__"):
        return dict(vars(obj))
    names = {
        k
        for cls in type(obj).__mro__
        for k, v in vars(cls).items()
        if isinstance(v, types.GetSetDescriptorType) and not k.startswith("__")
    }
    assert names  # (a compiled class)
    return {k: getattr(obj, k) for k in names if hasattr(obj, k)}


def _not_checkpointed(pipe: EdgePipeline, blob: bytes) -> dict[str, dict[str, Any]]:
    """The classifier's and the vehicle's attributes ``blob`` does not hold, hooks
    (callables) and the vehicle's stop grid (of the feed, not of the state) aside."""
    saved = pickle.loads(blob)
    out: dict[str, dict[str, Any]] = {}
    for name, obj in (("classifier", pipe.classifier), ("vehicle", pipe.vehicle)):
        out[name] = {
            k: v
            for k, v in _instance_attrs(obj).items()
            if k not in saved[name] and k != "_grid" and not callable(v)
        }
    return out


def test_a_restore_keeps_no_cache_of_the_state_it_replaced(tmp_path: Path) -> None:
    # what a checkpoint leaves out is configuration, the same in two pipelines built alike,
    # or a cache; a restore drops the caches of the state it replaces
    # (PresenceClassifier.STATE_CACHES, drop_caches), so a used pipeline restored is,
    # attribute by attribute, a fresh one restored from the same checkpoint. A cache of the
    # classifier's state left out of the checkpoint but kept by a restore fails here (as
    # the rotation pairing's index did before f73d5bb)
    feed, recs, _ = world(tmp_path)
    used = EdgePipeline("B", feed, verifier_for(recs))
    j = 0
    while used.classifier._index is None:  # past a rotation: the pairing's index built
        used.feed(recs[j])
        j += 1
    earlier = EdgePipeline("B", feed, verifier_for(recs))
    for r in recs[: j // 2]:
        earlier.feed(r)
    blob = earlier.snapshot()
    fresh = EdgePipeline("B", feed, verifier_for(recs))
    unused = _not_checkpointed(fresh, blob)
    assert "_index" in unused["classifier"]  # (not checkpointed: a cache)
    assert _not_checkpointed(used, blob) != unused  # (the index: what could go stale)
    used.restore(blob)
    fresh.restore(blob)
    assert _not_checkpointed(used, blob) == _not_checkpointed(fresh, blob)
    assert _state_of(used) == _state_of(fresh)


def test_a_bad_checkpoint_is_refused_and_leaves_the_pipeline_as_it_was(tmp_path: Path) -> None:
    feed, recs, _ = world(tmp_path)
    pipe = EdgePipeline("B", feed, verifier_for(recs))
    for blob in (
        b"not a pickle",
        pickle.dumps({"format": 99}),
        pickle.dumps({"format": 1, "rid_slots": ["x"]}),
        pickle.dumps(os.system),  # names a class the checkpoint may not name
    ):
        with pytest.raises(CheckpointError):
            pipe.restore(blob)
    assert pipe.on_board() == 0
    assert pipe.stats.adverts_seen == 0


def _with_rid_slots(blob: bytes, order: Callable[[list[str]], list[str]]) -> bytes:
    """The checkpoint with its rid records' slots (names and values) put in ``order``."""
    state = pickle.loads(blob)
    slots: list[str] = state["rid_slots"]
    new = order(list(slots))
    at = [slots.index(name) for name in new]
    state["rid_slots"] = new
    state["rid_records"] = [tuple(row[i] for i in at) for row in state["rid_records"]]
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def test_a_checkpoint_with_the_rid_slots_in_another_order_restores_the_same(
    tmp_path: Path,
) -> None:
    # the rid record's slots were alphabetical until the hot fields came first (cache
    # lines): a checkpoint written before restores by name, to the same state, and the
    # run goes on exactly as from the current code's own checkpoint
    feed, recs, toks = world(tmp_path)
    kill_t = next(t for t in quiet_moments(recs, 2.0, 42.0) if t > T0 + 150)
    first = EdgePipeline("B", feed, verifier_for(recs))
    for r in recs:
        if r.t > kill_t:
            break
        first.feed(r)
    blob = first.snapshot()
    assert first.on_board() > 0
    old = _with_rid_slots(blob, sorted)
    assert pickle.loads(old)["rid_slots"] != pickle.loads(blob)["rid_slots"]
    runs = []
    for b in (blob, old, _with_rid_slots(blob, lambda s: s[::-1])):
        pipe = EdgePipeline("B", feed, verifier_for(recs))
        pipe.restore(b)
        state = _state_of(pipe)
        got = [d for r in recs if r.t > kill_t for d in pipe.feed(r)]
        got.extend(pipe.finish(recs[-1].t + 1.0))
        runs.append((state, got))
    assert runs[1] == runs[0]
    assert runs[2] == runs[0]
    assert rides(feed, runs[0][1], toks)  # (riders rode on after the restore)


def test_a_checkpoint_whose_rid_slots_are_not_the_codes_is_refused(tmp_path: Path) -> None:
    feed, recs, _ = world(tmp_path)
    first = EdgePipeline("B", feed, verifier_for(recs))
    for r in recs[:2000]:
        first.feed(r)
    blob = first.snapshot()
    for order in (
        lambda s: [*s[:-1], "renamed"],  # a field of another version
        lambda s: [*s, s[0]],  # one more
        lambda s: s[1:],  # one fewer
    ):
        pipe = EdgePipeline("B", feed, verifier_for(recs))
        state = pickle.loads(blob)
        state["rid_slots"] = order(state["rid_slots"])
        with pytest.raises(CheckpointError, match="another classifier version"):
            pipe.restore(pickle.dumps(state))
        assert pipe.on_board() == 0
    state = pickle.loads(blob)
    state["rid_slots"] = [*state["rid_slots"][:-1], 7]  # not a name
    with pytest.raises(CheckpointError, match="another classifier version"):
        EdgePipeline("B", feed, verifier_for(recs)).restore(pickle.dumps(state))


# -- SIGKILL mid-trip, restart -------------------------------------------------------------


async def _run(db: str, gtfs: str, trace: str, resume_after: float) -> None:
    """Replay ``trace`` into a file store as the daemon records (checkpoint every 5 s):
    print each record's time after it is fed and its segments are committed."""
    configure_logging("warning")
    from busbell import TraceReader

    feed = load_gtfs(Path(gtfs))
    with open(trace, encoding="utf-8") as fp:
        recs = list(TraceReader(fp))
    pipe = EdgePipeline("B", feed, verifier_for(recs))
    store = await FareStore.open(db, EventBuilder("B", KEY), clock=time.time)
    cp = Checkpointer(pipe, store, ClassifierParams(checkpoint_s=5.0).checkpoint_s)
    await cp.restore()
    out = sys.stdout
    for r in recs:
        if r.t <= resume_after:
            continue
        drafts = pipe.feed(r)
        if drafts:
            await cp.record(drafts)
        elif cp.due():
            await cp.save()
        out.write(f"{r.t}\n")
        out.flush()
    drafts = pipe.finish(recs[-1].t + 1.0)
    if drafts:
        await cp.record(drafts)
    await store.close()
    out.write("done\n")
    out.flush()


def _start(db: Path, gtfs: Path, trace: Path, resume_after: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, str(db), str(gtfs), str(trace), str(resume_after)],
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.timeout(300)
def test_sigkill_mid_trip_then_restart_loses_no_ride(tmp_path: Path) -> None:
    from busbell import TraceWriter

    feed, recs, toks = world(tmp_path)
    whole, _ = replay(feed, recs)
    expected = rides(feed, whole, toks)
    trace = tmp_path / "trace.jsonl"
    with trace.open("w", encoding="utf-8") as fp:
        w = TraceWriter(fp, "B")
        for r in recs:
            w.write(r)
    db = tmp_path / "fares.db"
    # mid-trip, the bus driving on: no door change from the last checkpoint (5 s) until
    # after the restart (30 s later)
    kill_t = random.choice([t for t in quiet_moments(recs, 7.0, 32.0) if t > T0 + 150])
    proc = _start(db, tmp_path / "g", trace, float("-inf"))
    assert proc.stdout is not None
    last = float("-inf")
    for line in proc.stdout:
        last = float(line)
        if last >= kill_t:
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)  # reap it and close its pipes
    assert proc.returncode == -signal.SIGKILL
    assert last >= kill_t, "the run ended before the kill"
    # the bus restarts 30 s later: what was heard meanwhile is lost
    again = _start(db, tmp_path / "g", trace, kill_t + 30.0)
    stdout, stderr = again.communicate(timeout=240)
    assert again.returncode == 0, stderr
    assert stdout.rstrip().endswith("done")
    drafts = asyncio.run(_drafts(db))
    assert rides(feed, drafts, toks) == expected


async def _recorded_around_a_clean_stop(
    db: Path, feed: Feed, recs: list[TraceRecord], stop_t: float, *, down_s: float, every_s: float
) -> list[SegmentDraft]:
    """Record ``recs`` as the daemon does (checkpointed) and stop cleanly at ``stop_t`` as
    its SIGTERM does (``Checkpointer.stop``, what it closes recorded, the state saved); a
    new process on the same store restores and goes on ``down_s`` later to the end."""
    pipe = EdgePipeline("B", feed, verifier_for(recs))
    store = await FareStore.open(db, EventBuilder("B", KEY), clock=time.time)
    cp = Checkpointer(pipe, store, every_s)
    for r in recs:
        if r.t > stop_t:
            break
        if drafts := pipe.feed(r):
            await cp.record(drafts)
        elif cp.due():
            await cp.save()
    if drafts := cp.stop(stop_t):
        await cp.record(drafts)
    await cp.save()
    await store.close()
    pipe = EdgePipeline("B", feed, verifier_for(recs))
    store = await FareStore.open(db, EventBuilder("B", KEY), clock=time.time)
    cp = Checkpointer(pipe, store, every_s)
    await cp.restore()
    for r in recs:
        if r.t > stop_t + down_s and (drafts := pipe.feed(r)):
            await cp.record(drafts)
    if drafts := pipe.finish(recs[-1].t + 1.0):
        await cp.record(drafts)
    await store.close()
    return await _drafts(db)


def test_a_clean_stop_mid_trip_then_restart_loses_no_ride(tmp_path: Path) -> None:
    # SIGTERM for an update or a new configuration: before, the stop closed every open
    # ride (pipeline.finish) and the riders were charged to the last stop before it
    # (benchmarks.edge_clean_stop: 39 rides wrong over these 12 moments); mid-trip the
    # open presences now stay in the checkpoint and the restart restores them
    feed, recs, toks = world(tmp_path)
    whole, _ = replay(feed, recs)
    expected = rides(feed, whole, toks)
    moments = [t for t in quiet_moments(recs, 2.0, 42.0) if t > T0 + 60][::20]
    assert len(moments) == 12
    for n, stop_t in enumerate(moments):
        got = asyncio.run(
            _recorded_around_a_clean_stop(
                tmp_path / f"{n}.db", feed, recs, stop_t, down_s=30.0, every_s=10.0
            )
        )
        assert rides(feed, got, toks) == expected, stop_t - T0


async def test_the_daemons_clean_stop_mid_trip_records_no_ride_and_saves_them_open(
    tmp_path: Path,
) -> None:
    # the daemon's SIGTERM path itself (_shutdown_flush), not its steps re-enacted: stopped
    # mid-trip, it records no segment and leaves a checkpoint of that moment with the
    # riders aboard, which a restart restores (before: every open ride closed and recorded)
    from busbell import AdvRecord
    from tests.factories.edge_daemon import run_and_stop_cleanly

    feed, recs, _ = world(tmp_path)
    stop_t = next(t for t in quiet_moments(recs, 2.0, 42.0) if t > T0 + 150)
    pipe = EdgePipeline("B", feed, verifier_for(recs))
    assert [d for r in recs if r.t <= stop_t - 5.0 for d in pipe.feed(r)] == []
    # the last 5 s of adverts through the daemon (within one checkpoint_s, 10 s: a periodic
    # snapshot at the first of them at most)
    last = [r for r in recs if stop_t - 5.0 < r.t <= stop_t and isinstance(r, AdvRecord)]
    await run_and_stop_cleanly(tmp_path, pipe, last, stop_t)
    assert pipe.t == last[-1].t
    aboard = pipe.on_board()
    assert aboard > 0
    assert pipe.mid_trip
    store = await FareStore.open(tmp_path / "fares.db", EventBuilder("B", KEY))
    try:
        assert store.last_seq == 0  # nothing closed, nothing recorded
        found = await store.load_checkpoint()
    finally:
        await store.close()
    assert found is not None
    assert found[0] == pipe.t  # (saved at the stop, not the last periodic snapshot)
    again = EdgePipeline("B", feed, verifier_for(recs))
    again.restore(found[1])
    assert again.on_board() == aboard


async def test_a_clean_stop_records_what_a_failed_write_left_pending(tmp_path: Path) -> None:
    # the last write before the stop failed (the store locked by another writer), so the
    # closed segments wait in memory; the stop, mid-trip, closes nothing more, and the
    # store takes writes again: the stop records them (with the snapshot), not the
    # snapshot alone (it holds them closed: saved without them, they were lost for good)
    import sqlite3

    from busbell import AdvRecord
    from edge._daemon import EdgeDaemon
    from tests.factories.edge_daemon import QueueSource, config, until
    from tests.factories.mqtt import FakeBroker

    feed, recs, _ = world(tmp_path)
    probe = EdgePipeline("B", feed, verifier_for(recs))
    k = next(
        i
        for i, r in enumerate(recs)
        if probe.feed(r) and isinstance(r, AdvRecord) and r.t > T0 + 150
    )
    pipe = EdgePipeline("B", feed, verifier_for(recs))
    for r in recs[:k]:
        pipe.feed(r)
    source = QueueSource()
    broker = FakeBroker()
    daemon = EdgeDaemon(
        config(tmp_path, broker, "busbell/v1"),
        source,
        lambda: recs[k].t,
        pipeline=pipe,
        device_key=KEY,
        fleet_keys={},
        session_factory=broker.session,
        monotonic=lambda: 0.0,  # (no retry before the stop: the write fails once)
    )
    task = asyncio.create_task(daemon.run())
    await until(lambda: daemon.uploader is not None, 30)
    # the daemon may still be writing (start-up, a checkpoint) when it has an uploader: wait
    # for the lock rather than fail on it (timeout=0 failed this test ~1 run in 3)
    lock = sqlite3.connect(tmp_path / "fares.db", timeout=30)
    lock.execute("BEGIN EXCLUSIVE")
    source.q.put_nowait(recs[k])  # (closes segments: their write waits for the lock, fails)
    await until(lambda: daemon.stats.store_retries >= 1, 60)
    pending = len(daemon._pending)
    assert pending > 0
    lock.rollback()
    lock.close()
    assert pipe.mid_trip
    daemon.request_stop()
    await asyncio.wait_for(task, 30)
    store = await FareStore.open(tmp_path / "fares.db", EventBuilder("B", KEY))
    try:
        assert store.last_seq == pending
        found = await store.load_checkpoint()
    finally:
        await store.close()
    assert found is not None
    assert found[0] == pipe.t


def test_a_clean_stop_closes_every_ride_after_the_last_stop_or_without_checkpoints(
    tmp_path: Path,
) -> None:
    feed, recs, toks = world(tmp_path)
    whole, _ = replay(feed, recs)
    expected = rides(feed, whole, toks)

    def stopped(stop_t: float, every_s: float) -> tuple[EdgePipeline, int, list[SegmentDraft]]:
        pipe = EdgePipeline("B", feed, verifier_for(recs))
        fed = [d for r in recs if r.t <= stop_t for d in pipe.feed(r)]
        n = pipe.on_board()
        store = asyncio.run(
            FareStore.open(tmp_path / f"{stop_t}-{every_s}.db", EventBuilder("B", KEY))
        )
        try:
            closed = Checkpointer(pipe, store, every_s).stop(stop_t)
        finally:
            asyncio.run(store.close())
        return pipe, n, fed + closed

    # at the trip's last stop (served: its doors open): the stop closes what is open, as
    # finish does, and the rest of the trace adds nothing
    from busbell import DoorRecord

    last_open = max(r.t for r in recs if isinstance(r, DoorRecord) and r.open)
    pipe, n, got = stopped(last_open + 5.0, 10.0)
    assert not pipe.mid_trip
    assert n > 0
    assert pipe.on_board() == 0
    assert rides(feed, got, toks) == expected
    # mid-trip: kept open with checkpoints on; closed at the stop with checkpoint_s = 0
    stop_t = next(t for t in quiet_moments(recs, 2.0, 42.0) if t > T0 + 150)
    pipe, n, _ = stopped(stop_t, 10.0)
    assert pipe.mid_trip
    assert n > 0
    assert pipe.on_board() == n
    pipe, n, _ = stopped(stop_t, 0.0)
    assert n > 0
    assert pipe.on_board() == 0


async def _drafts(db: Path) -> list[SegmentDraft]:
    from edge._segment import SegmentEnd

    store = await FareStore.open(db, EventBuilder("B", KEY))
    try:
        events = [json.loads(e.data) for e in await store.unacked(100_000)]
    finally:
        await store.close()
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    return [
        SegmentDraft(
            rid=e["rid"],
            interval=e["interval"],
            route_id=e["route_id"],
            trip_id=e["trip_id"],
            start=SegmentEnd(e["start"]["t"], e["start"]["stop_id"], e["start"]["cause"]),
            end=SegmentEnd(e["end"]["t"], e["end"]["stop_id"], e["end"]["cause"]),
            distance_m=e["distance_m"],
            proof_first=e["proof"]["first"],
            proof_last=e["proof"]["last"],
            evidence=e["evidence"],
        )
        for e in events
    ]


if __name__ == "__main__":
    asyncio.run(_run(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
