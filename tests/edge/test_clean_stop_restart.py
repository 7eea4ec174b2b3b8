"""A clean stop mid-trip, then a restart: soon, the rides go on; long after, they end at the stop.

A clean stop (SIGTERM) mid-trip keeps the open presences in the checkpoint
(``Checkpointer.stop``), so a restart for an update or a new configuration cuts no ride
short. A bus switched off for the night, or whose driver signed off early, restarted the
next morning with those rides open and only then closed them ``lost`` by the resume's fade
rules: events a day late, charged to the last stop seen, and the trip "mid-trip" for ever.
Now the first record later than the stop decides (``classifier.stop_resume_max_s``): within
the bound the presences are resumed as before; past it they are closed as of the stop, at
the stop where the bus stood (``evidence.end_by`` ``stopped``), and the trip ends.

Through the real daemon (its SIGTERM path and its restore) and a file store; the world is
the checkpoint tests' (``tests/factories/restart_world.py``).
"""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from busbell import AdvRecord, DeviceKey, DoorRecord, TraceRecord, TripRecord
from edge._checkpoint import Checkpointer
from edge._events import EventBuilder
from edge._params import ClassifierParams
from edge._pipeline import EdgePipeline
from edge._store import FareStore
from tests.factories.edge_daemon import run_and_stop_cleanly
from tests.factories.edge_world import verifier_for
from tests.factories.restart_world import T0, quiet_moments, world

KEY = DeviceKey.from_seed(bytes(range(32)))


async def _events(tmp: Path) -> list[dict[str, object]]:
    store = await FareStore.open(tmp / "fares.db", EventBuilder("B", KEY))
    try:
        return [json.loads(e.data) for e in await store.unacked(100_000)]
    finally:
        await store.close()


def _later(rec: AdvRecord, t: float) -> AdvRecord:
    """An advert heard at ``t`` (its token time stale by then: rejected, but fed)."""
    return AdvRecord(t, rec.addr, rec.rssi, rec.mfr)


async def _stopped_then_restarted(
    tmp: Path, stop_t: float, down_s: float, params: ClassifierParams | None = None
) -> tuple[EdgePipeline, int, EdgePipeline, list[dict[str, object]], list[TraceRecord]]:
    """The daemon stopped cleanly at ``stop_t`` (the trace fed to it, its last advert
    through the daemon), then a new one on the same store restarted
    ``down_s`` later (one advert heard then). The stopped pipeline, how many were on board
    at the stop, the restarted pipeline, the events the restart recorded, the trace."""
    p = params or ClassifierParams()
    feed, recs, _ = world(tmp)
    pipe = EdgePipeline("B", feed, verifier_for(recs), p)
    last = [r for r in recs if r.t <= stop_t and isinstance(r, AdvRecord)][-1]
    for r in recs:
        if r.t > stop_t:
            break
        if r is not last:
            pipe.feed(r)  # (what closed before: not recorded, not looked at)
    await run_and_stop_cleanly(tmp, pipe, [last], stop_t, classifier=p)
    assert pipe.mid_trip
    aboard = pipe.on_board()
    assert aboard > 0
    before = len(await _events(tmp))
    again = EdgePipeline("B", feed, verifier_for(recs), p)
    await run_and_stop_cleanly(
        tmp, again, [_later(last, pipe.t + down_s)], pipe.t + down_s, classifier=p
    )
    return pipe, aboard, again, (await _events(tmp))[before:], recs


def _moving_stop(recs: list[TraceRecord]) -> float:
    return next(t for t in quiet_moments(recs, 2.0, 42.0) if t > T0 + 150)


async def test_a_restart_long_after_a_clean_stop_closes_the_rides_as_of_the_stop(
    tmp_path: Path,
) -> None:
    # switched off between stops, restarted 11 minutes later (past stop_resume_max_s,
    # 600 s): every rider aboard is closed as of the stop (not a day late), by the fade
    # rules where the bus stood between stops, and the trip ends
    _, recs, _ = world(tmp_path / "w")
    stop_t = _moving_stop(recs)
    with capture_logs() as logs:
        pipe, aboard, again, events, _ = await _stopped_then_restarted(tmp_path, stop_t, 660.0)
    assert len(events) == aboard
    assert all(e["end"]["t"] <= pipe.t for e in events)  # as of the stop
    assert all(e["evidence"]["end_by"] == "stopped" for e in events)
    assert all(e["start"]["cause"] in ("boarded", "continued") for e in events)
    assert again.on_board() == 0
    assert not again.mid_trip  # the trip ended with the bus's service
    assert again.vehicle.trip_id is None
    assert again.classifier._trip_id is None  # (no later rider tagged with it)
    assert again.stopped_t is None
    (closed,) = [e for e in logs if e["event"] == "stopped_trip_closed"]
    assert closed["on_board"] == aboard
    assert closed["segments"] == aboard
    assert closed["stop_id"] is None  # it stood between stops
    assert closed["down_s"] == pytest.approx(660.0)
    assert not [e for e in logs if e["event"] == "stopped_trip_resumed"]


async def test_a_quick_restart_after_a_clean_stop_resumes_the_rides(tmp_path: Path) -> None:
    # an update: restarted 60 s later, within the bound: nothing closed, the riders are
    # aboard again, the trip goes on (and the second stop keeps them again)
    with capture_logs() as logs:
        _, aboard, again, events, _ = await _stopped_then_restarted(
            tmp_path, _moving_stop(world(tmp_path / "w")[1]), 60.0
        )
    assert events == []
    assert again.on_board() == aboard
    assert again.mid_trip
    (resumed,) = [e for e in logs if e["event"] == "stopped_trip_resumed"]
    assert resumed["on_board"] == aboard
    assert not [e for e in logs if e["event"] == "stopped_trip_closed"]


async def test_the_bound_is_configurable(tmp_path: Path) -> None:
    # the same 60 s with the bound at 30 s: closed
    p = ClassifierParams(stop_resume_max_s=30.0)
    _, aboard, again, events, _ = await _stopped_then_restarted(
        tmp_path, _moving_stop(world(tmp_path / "w")[1]), 60.0, p
    )
    assert len(events) == aboard
    assert again.on_board() == 0


async def test_stopped_at_a_stop_the_riders_alight_there(tmp_path: Path) -> None:
    # the driver signs off at a stop, its doors open (10 s into the dwell): whoever was
    # heard aboard there alighted there; whoever was boarding there was still a candidate
    # (not confirmed before the bus moved on), dropped
    _, recs, _ = world(tmp_path / "w")
    opens = [r.t for r in recs if isinstance(r, DoorRecord) and r.open]
    stop_t = opens[4] + 10.0
    pipe, _, again, events, _ = await _stopped_then_restarted(tmp_path, stop_t, 700.0)
    visit = pipe.vehicle.current_visit
    assert visit is not None
    assert visit.stop_id == "S4"
    assert events
    ends = [e["end"]["stop_id"] for e in events]
    assert "S4" in ends
    # (riders S0 -> S3 whose rids rotated just before S3's doors, still waiting for their
    # new rids: closed by the fade rules, where they were last heard, S3: their stop)
    assert set(ends) <= {"S3", "S4"}
    assert all(e["end"]["cause"] == "alighted" for e in events)
    assert all(e["start"]["stop_id"] != "S4" for e in events)
    assert again.vehicle.current_visit is None  # (closed as of the stop)


async def test_stopped_just_after_the_doors_closed_the_riders_alight_at_that_stop(
    tmp_path: Path,
) -> None:
    # the doors closed 1 s before the stop, the bus not yet moved: where it stood is that
    # stop (riders who boarded there never rode: no segment; by the fade rules they were
    # charged a ride "alighted" at their boarding stop)
    _, recs, _ = world(tmp_path / "w")
    closes = [r.t for r in recs if isinstance(r, DoorRecord) and not r.open]
    stop_t = closes[2] + 1.0
    pipe, _, _, events, _ = await _stopped_then_restarted(tmp_path, stop_t, 700.0)
    assert pipe.vehicle.current_visit is None
    last = pipe.vehicle.last_visit()
    assert last is not None
    assert last.stop_id == "S2"
    assert any(r.board == 2 for r in world(tmp_path / "w2")[2])  # (someone boarded there)
    assert events
    assert all(e["end"]["stop_id"] == "S2" for e in events)
    assert all(e["start"]["stop_id"] != "S2" for e in events)


async def test_a_crash_checkpoint_is_resumed_however_late(tmp_path: Path) -> None:
    # no clean stop (a power cut: the last periodic snapshot): the restart resumes the
    # rides whatever the gap, as after any crash (nothing says the service ended); their
    # rids' intervals ended meanwhile: they wait for their new rids as rotated riders
    feed, recs, _ = world(tmp_path)
    stop_t = _moving_stop(recs)
    pipe = EdgePipeline("B", feed, verifier_for(recs))
    store = await FareStore.open(tmp_path / "fares.db", EventBuilder("B", KEY), clock=time.time)
    cp = Checkpointer(pipe, store, 10.0)
    for r in recs:
        if r.t > stop_t:
            break
        assert pipe.feed(r) == []
    await cp.save()
    await store.close()
    aboard = pipe.on_board()
    assert aboard > 0
    again = EdgePipeline("B", feed, verifier_for(recs))
    last = next(r for r in reversed(recs) if isinstance(r, AdvRecord) and r.t <= stop_t)
    with capture_logs() as logs:
        await run_and_stop_cleanly(
            tmp_path,
            again,
            [_later(last, stop_t + 3600.0)],
            stop_t + 3600.0,
            classifier=ClassifierParams(),
        )
    assert await _events(tmp_path) == []
    assert again.mid_trip  # (its riders resumed: rotated while it was down, to be paired)
    assert again.vehicle.trip_id == "T1"
    assert not [e for e in logs if str(e["event"]).startswith("stopped_trip_")]


def test_a_retained_trip_redelivered_at_the_restart_does_not_decide(tmp_path: Path) -> None:
    # the onboard system's retained trip message comes first at the restart, with its old
    # time: the decision waits for the first record later than the stop
    feed, recs, _ = world(tmp_path)
    stop_t = _moving_stop(recs)
    pipe = EdgePipeline("B", feed, verifier_for(recs))
    for r in recs:
        if r.t > stop_t:
            break
        pipe.feed(r)
    pipe.stop_mid_trip()
    blob = pipe.snapshot()
    aboard = pipe.on_board()
    again = EdgePipeline("B", feed, verifier_for(recs))
    again.restore(blob)
    assert again.stopped_t == pipe.t
    (trip,) = [r for r in recs if isinstance(r, TripRecord)]
    assert again.feed(trip) == []
    assert again.stopped_t == pipe.t  # (still to decide)
    assert again.on_board() == aboard
    last = next(r for r in reversed(recs) if isinstance(r, AdvRecord) and r.t <= stop_t)
    closed = again.feed(_later(last, pipe.t + 700.0))
    assert len(closed) == aboard
    assert again.stopped_t is None
    # delivered again at the next reconnect, it signs on to nothing: the trip ended
    # (before, the bus went back on its trip, mid-trip, and new candidates were tagged with it)
    assert again.feed(trip) == []
    assert (again.vehicle.trip_id, again.mid_trip) == (None, False)
    assert (again.classifier._route_id, again.classifier._trip_id) == (None, None)


def test_a_restore_of_a_checkpoint_without_a_clean_stop_forgets_one(tmp_path: Path) -> None:
    # a pipeline that stopped cleanly, restored from a checkpoint saved without a stop,
    # or by the code before stop_resume_max_s (no such field): nothing to decide
    feed, recs, _ = world(tmp_path)
    pipe = EdgePipeline("B", feed, verifier_for(recs))
    for r in recs[:3000]:
        pipe.feed(r)
    blob = pipe.snapshot()
    state = pickle.loads(blob)
    del state["pipeline"]["_stopped_t"]
    older = pickle.dumps(state)
    for b in (blob, older):
        pipe.stop_mid_trip()
        assert pipe.stopped_t is not None
        pipe.restore(b)
        assert pipe.stopped_t is None
