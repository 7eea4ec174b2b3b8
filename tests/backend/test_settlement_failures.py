"""The settlement worker survives what it does not expect (SQLite and PostgreSQL).

Each failure is injected through a real seam of the worker (its resolver, its journey
builder: a subclass of the real one that raises for one rid or rider), never by mocking
the store: the events go through real ingest into the real ledger, and every assertion
reads the real tables.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from backend._db import (
    charges,
    rider_segments,
    settlement_dirty,
    settlement_watermarks,
    unresolved_segments,
)
from backend._journeys import Journey, JourneyBuilder, Segment
from backend._resolve import (
    DEFAULT_PROOF_SLACK_S,
    ONLINE_TABLE_BYTES,
    Resolver,
    RiderKeyring,
    TableBuilder,
)
from backend._settlement import (
    FAILURES,
    RIDER_DAYS_FAILING,
    UNEXPECTED,
    SettlementWorker,
)
from tests.backend import test_settlement
from tests.backend.test_settlement import DAY, NOW, Env
from tests.factories.backend_world import T0
from tests.factories.tasks import LIVE_TIMEOUT_S

env = test_settlement.env
"""The ledger with three riders and buses, ingest, a worker and the API (fixture)."""


class _PoisonResolver(Resolver):
    """The worker's resolver, whose bulk lookup raises for a batch holding a ``poison``
    rid (a bug one row triggers) and whose :meth:`prepare_ahead` raises ``crash_passes``
    times (a bug that fails the whole pass)."""

    def __init__(self) -> None:
        super().__init__(
            RiderKeyring(),
            cache_intervals=16,
            proof_slack_s=DEFAULT_PROOF_SLACK_S,
            builder=TableBuilder(0),
            max_table_bytes=ONLINE_TABLE_BYTES,
            table_tails=False,
        )
        self.poison: set[str] = set()
        self.crash_passes = 0

    def resolve_near(
        self, rids: Sequence[str | bytes], intervals: Sequence[int]
    ) -> list[tuple[int, int] | None]:
        if self.poison.intersection(r for r in rids if isinstance(r, str)):
            raise RuntimeError("rid lookup bug")
        return super().resolve_near(rids, intervals)

    def prepare_ahead(self, now_t: float) -> list[int]:
        if self.crash_passes:
            self.crash_passes -= 1
            raise RuntimeError("table build bug")
        return super().prepare_ahead(now_t)


class _PoisonBuilder(JourneyBuilder):
    """The worker's journey builder, raising for the riders in ``poison`` (a bug one
    rider's rows trigger)."""

    poison: frozenset[str] = frozenset()

    def build_rider(self, segments: Sequence[Segment], category: str | None = None) -> Any:
        if any(s.rider_id in self.poison for s in segments):
            raise RuntimeError("pricing bug")
        out: list[Journey] = super().build_rider(segments, category)
        return out


def _worker(env: Env, **kw: Any) -> tuple[SettlementWorker, _PoisonResolver]:
    """A worker on ``env``'s ledger as ``env.worker`` is, with a :class:`_PoisonResolver`."""
    resolver = _PoisonResolver()
    old = env.worker
    worker = SettlementWorker(
        env.engine,
        old.builder.feed,
        env.rules,
        resolver=resolver,
        clock=lambda: NOW,
        **kw,
    )
    return worker, resolver


def _poison_builder(worker: SettlementWorker, riders: set[str]) -> None:
    b = worker.builder
    worker.builder = _PoisonBuilder(b.engine, b.feed, b.policy)
    worker.builder.poison = frozenset(riders)


async def _charged(env: Env) -> list[str]:
    return sorted(c["rider_id"] for c in await env.rows(charges, "charge_id"))


def _unexpected(unit: str) -> float:
    return float(UNEXPECTED.labels(unit)._value.get())


async def test_an_event_whose_settling_raises_is_dead_lettered_and_its_bus_goes_on(
    env: Env,
) -> None:
    """Before: any exception but a database error raised out of ``settle_once`` and ended
    ``run()``'s loop: one bad row stopped settlement of every bus. Now the event whose
    lookup raises (found by looking the batch's rids up one by one) goes to
    ``unresolved_segments`` as ``settle_error`` with the exception (never charged),
    logged with its traceback and counted; the bus's other events and the other buses
    settle. A restarted worker (a fix deployed) settles it at its first pass."""
    w = env.world
    bad = w.ride("r0001", "bus-01", board=1, alight=3, t=T0)
    w.ride("r0002", "bus-01", board=2, alight=5, t=T0 + 60)
    w.ride("r0003", "bus-02", board=1, alight=4, t=T0 + 30)
    await env.ingest([e for c in w.buses.values() for e in c.events])
    worker, resolver = _worker(env)
    resolver.poison = {e["rid"] for e in bad}
    before = _unexpected("event")
    with capture_logs() as logs:
        report = await worker.settle_once()
    assert report.unresolved == {"settle_error": len(bad)}
    assert await _charged(env) == ["r0002", "r0003"]
    dead = await env.rows(unresolved_segments, "event_id")
    assert sorted((d["event_id"], d["reason"], d["detail"]) for d in dead) == sorted(
        (e["event_id"], "settle_error", "RuntimeError: rid lookup bug") for e in bad
    )
    failed = [e for e in logs if e["event"] == "segment_settle_failed"]
    assert [(e["event_id"], e["log_level"], repr(e["exc_info"])) for e in failed] == [
        (e["event_id"], "error", "RuntimeError('rid lookup bug')") for e in bad
    ]
    assert _unexpected("event") - before == len(bad)
    marks = {r["bus_id"]: r["settled_seq"] for r in await env.rows(settlement_watermarks, "bus_id")}
    assert marks == {b: len(w.buses[b].events) for b in ("bus-01", "bus-02")}
    # the same worker does not retry it; a restarted one (the bug fixed) settles it
    assert (await worker.settle_once()).segments == 0
    restarted, _ = _worker(env)
    report = await restarted.settle_once()
    assert report.segments == len(bad)
    assert await env.rows(unresolved_segments, "event_id") == []
    assert await _charged(env) == ["r0001", "r0002", "r0003"]


async def test_a_dead_letter_retried_after_a_restart_takes_its_new_verdict(env: Env) -> None:
    """A ``settle_error`` event retried by a restarted worker that now fails for a reason
    of its own (here: its rider was revoked meanwhile) keeps that reason, never charged;
    it is no longer a dead letter."""
    w = env.world
    bad = w.ride("r0001", "bus-01", board=1, alight=3, t=T0)
    await env.ingest(bad)
    worker, resolver = _worker(env)
    resolver.poison = {e["rid"] for e in bad}
    w.ride("r0002", "bus-01", board=2, alight=5, t=T0 + 60)  # (a batch of two rids)
    await env.ingest(w.buses["bus-01"].events[len(bad) :])
    assert (await worker.settle_once()).unresolved == {"settle_error": len(bad)}
    assert (await env.client.post("/riders/r0001/revoke")).status_code == 200
    restarted, _ = _worker(env)
    await restarted.settle_once()
    dead = await env.rows(unresolved_segments, "event_id")
    assert sorted((d["event_id"], d["reason"], d["rider_id"]) for d in dead) == sorted(
        (e["event_id"], "revoked_rider", "r0001") for e in bad
    )
    assert await _charged(env) == ["r0002"]


async def test_a_bus_whose_batch_raises_waits_and_the_other_buses_settle(env: Env) -> None:
    """A batch that raises and holds no event to blame alone (here its only event) is no
    dead letter: the bus waits ``retry_delay`` (doubling with each failure in a row,
    logged ``settlement_bus_failed`` with the traceback, counted) while the other buses
    and rider-days are settled; once its lookup works the bus settles where it was."""
    w = env.world
    bad = w.ride("r0001", "bus-01", board=1, alight=3, t=T0)
    w.ride("r0002", "bus-02", board=2, alight=5, t=T0 + 60)
    await env.ingest([e for c in w.buses.values() for e in c.events])
    worker, resolver = _worker(env, interval_s=5.0, retry_max_s=60.0)
    resolver.poison = {e["rid"] for e in bad}
    before = _unexpected("bus")
    with capture_logs() as logs:
        report = await worker.settle_once(now=NOW)
    assert (report.failed_buses, report.unresolved) == (1, {})
    assert await _charged(env) == ["r0002"]
    (failed,) = [e for e in logs if e["event"] == "settlement_bus_failed"]
    assert (failed["bus_id"], failed["failures"], failed["retry_in_s"]) == ("bus-01", 1, 10.0)
    assert (failed["log_level"], failed["exc_info"]) == ("error", True)
    assert _unexpected("bus") - before == 1
    # not tried again before its delay; then tried, failing again: the delay doubles
    assert (await worker.settle_once(now=NOW + 9)).failed_buses == 0
    with capture_logs() as logs:
        assert (await worker.settle_once(now=NOW + 10)).failed_buses == 1
    assert [e["retry_in_s"] for e in logs if e["event"] == "settlement_bus_failed"] == [20.0]
    resolver.poison = set()
    assert (await worker.settle_once(now=NOW + 29)).events == 0
    report = await worker.settle_once(now=NOW + 30)
    assert (report.events, report.failed_buses) == (len(bad), 0)
    assert await _charged(env) == ["r0001", "r0002"]
    assert await env.rows(unresolved_segments, "event_id") == []


async def test_a_rider_day_that_raises_is_put_aside_and_every_other_one_is_charged(
    env: Env,
) -> None:
    """Before: only a BusbellError of one rider-day was contained; any other exception
    (a bug in pricing, a bad row) raised out of the pass, so no rider-day after it (nor
    the link retention) was ever computed, every pass. Now the rider-day is rolled back
    and keeps its mark with ``attempts``, ``failed_at`` and ``error`` (the quarantine,
    visible in ``settlement_dirty``), logged with the traceback, counted, in the gauge;
    it waits ``retry_delay(attempts)`` unless a new segment marks it again or the worker
    restarts; the other riders are charged meanwhile."""
    w = env.world
    w.ride("r0001", "bus-01", board=1, alight=3, t=T0)
    w.ride("r0002", "bus-02", board=2, alight=5, t=T0 + 60)
    w.ride("r0003", "bus-03", board=1, alight=4, t=T0 + 30)
    await env.ingest([e for c in w.buses.values() for e in c.events])
    worker, _ = _worker(env, interval_s=5.0, retry_max_s=300.0)
    _poison_builder(worker, {"r0002"})
    before = (_unexpected("rider_day"), FAILURES._value.get())
    with capture_logs() as logs:
        report = await worker.settle_once(now=NOW)
    assert await _charged(env) == ["r0001", "r0003"]
    failed = [e for e in logs if e["event"] == "rider_day_failed"]
    n = len(failed)
    assert n >= 1
    assert report.failed_rider_days == n
    assert {
        (e["rider_id"], e["attempts"], e["retry_in_s"], repr(e["exc_info"])) for e in failed
    } == {("r0002", 1, 10.0, "RuntimeError('pricing bug')")}
    assert (_unexpected("rider_day"), FAILURES._value.get()) == (before[0] + n, before[1] + n)
    assert RIDER_DAYS_FAILING._value.get() == n
    marks = await env.rows(settlement_dirty, "rider_id", "service_day")
    assert {(m["rider_id"], m["attempts"], m["failed_at"], m["error"]) for m in marks} == {
        ("r0002", 1, NOW, "RuntimeError: pricing bug")
    }
    assert DAY in {m["service_day"] for m in marks}

    # put aside until its delay has run out, then tried again (and failing again)
    with capture_logs() as logs:
        report = await worker.settle_once(now=NOW + 9)
    assert (report.rider_days_waiting, report.failed_rider_days) == (n, 0)
    assert not [e for e in logs if e["event"] == "rider_day_failed"]
    report = await worker.settle_once(now=NOW + 10)
    assert (report.rider_days_waiting, report.failed_rider_days) == (0, n)
    marks = await env.rows(settlement_dirty, "rider_id", "service_day")
    assert {(m["attempts"], m["failed_at"]) for m in marks} == {(2, NOW + 10)}

    # a new segment of the rider marks its day again: tried at once
    await env.ingest(w.ride("r0002", "bus-02", board=6, alight=8, t=T0 + 1800))
    report = await worker.settle_once(now=NOW + 11)
    assert report.failed_rider_days >= 1
    assert RIDER_DAYS_FAILING._value.get() >= 1

    # a restarted worker, the bug fixed: its first pass tries every one, whatever the delay
    restarted, _ = _worker(env, interval_s=5.0, retry_max_s=300.0)
    report = await restarted.settle_once(now=NOW + 12)
    assert report.failed_rider_days == 0
    assert await env.rows(settlement_dirty, "rider_id") == []
    assert RIDER_DAYS_FAILING._value.get() == 0
    assert set(await _charged(env)) == {"r0001", "r0002", "r0003"}


async def test_run_survives_passes_that_raise_and_backs_off(env: Env) -> None:
    """Before: ``run()`` caught only StoreError; any other exception ended the worker's
    loop and settlement silently stopped for good. Now each crashed pass is logged
    ``settlement_pass_crashed`` with the traceback, counted (``unexpected_errors{unit=
    "pass"}`` and ``failures``), and the next pass waits a jittered backoff doubling from
    ``interval_s`` (reset by a pass that works); the worker settles once the fault is gone."""
    w = env.world
    w.ride("r0001", "bus-01", board=1, alight=3, t=T0)
    await env.ingest(w.buses["bus-01"].events)
    worker, resolver = _worker(env, interval_s=0.02, retry_max_s=1.0, rng=random.Random(7))
    resolver.crash_passes = 3
    before = (_unexpected("pass"), FAILURES._value.get())
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(worker.run(stop))
        async with asyncio.timeout(LIVE_TIMEOUT_S):
            while not await _charged(env):
                assert not task.done(), task
                await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, LIVE_TIMEOUT_S)
    crashed = [e for e in logs if e["event"] == "settlement_pass_crashed"]
    assert [(e["log_level"], e["exc_info"], e["error"]) for e in crashed] == [
        ("error", True, "RuntimeError: table build bug")
    ] * 3
    waits = [e["retry_in_s"] for e in crashed]
    for k, wait in enumerate(waits):  # equal jitter: uniform(cap / 2, cap), cap doubling
        cap = 0.02 * 2**k
        assert cap / 2 <= wait <= cap
    assert (_unexpected("pass"), FAILURES._value.get()) == (before[0] + 3, before[1] + 3)
    assert await _charged(env) == ["r0001"]
    assert [e["event"] for e in logs][-1] == "settlement_stopped"


async def test_a_rider_whose_links_cannot_be_grouped_keeps_them_and_the_pass_goes_on(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link retention (``tentative_link_days``) raising for one rider's rows (a bad
    row, a bug in grouping) ended the pass, and ``run()`` with it. Now that rider's rows
    are kept (fares do not depend on them), logged ``tentative_links_failed`` with the
    traceback and counted; the other riders' dropped pieces go as before."""
    w = env.world
    b = (int(T0 // 600) + 1) * 600.0

    def piece(rider: str, t: float) -> dict[str, Any]:
        fields = w.segment_fields(
            rider,
            route_id="R1",
            trip_id="T1",
            start=(t, "S03", "tentative"),
            end=(t + 148.0, None, "rotated"),
            distance_m=800.0,
        )
        fields["evidence"].update({"co_n": 2, "co_lo": -92.0, "co_hi": -88.5})
        return w.buses["bus-01"].emit(fields)

    events = [piece("r0002", b - 150.0), piece("r0003", b - 150.0)]
    await env.ingest(events)
    await env.worker.settle_once(now=NOW)
    real = env.worker.builder.dropped_tentative

    def grouping(segments: Sequence[Segment]) -> Any:
        if any(s.rider_id == "r0002" for s in segments):
            raise RuntimeError("grouping bug")
        return real(segments)

    monkeypatch.setattr(env.worker.builder, "dropped_tentative", grouping)
    before = _unexpected("links")
    with capture_logs() as logs:
        report = await env.worker.settle_once(now=NOW + 36 * 86400.0)
    assert report.tentative_links_deleted == 1
    (failed,) = [e for e in logs if e["event"] == "tentative_links_failed"]
    assert (failed["rider_id"], repr(failed["exc_info"]), failed["log_level"]) == (
        "r0002",
        "RuntimeError('grouping bug')",
        "error",
    )
    assert _unexpected("links") - before == 1
    async with env.engine.connect() as conn:
        left = (
            await conn.execute(
                sa.select(rider_segments.c.rider_id).order_by(rider_segments.c.rider_id)
            )
        ).all()
    assert [r.rider_id for r in left] == ["r0002"]


async def test_a_bug_failing_every_rider_day_floods_no_log(env: Env) -> None:
    """A bug failing every rider-day would log one traceback per rider-day and retry:
    ``rider_day_failed`` goes through the worker's log budget per exception type
    (``burst`` lines a window, then ``suppressed=N``); the counters count every one."""
    from backend._ingest_bounds import LogBudget

    w = env.world
    for k, rider in enumerate(("r0001", "r0002", "r0003")):
        w.ride(rider, f"bus-0{k + 1}", board=1, alight=3, t=T0 + 60 * k)
    await env.ingest([e for c in w.buses.values() for e in c.events])
    clock = [NOW]
    worker, _ = _worker(env, log_budget=LogBudget(burst=1, window_s=60.0))
    worker.clock = lambda: clock[0]
    _poison_builder(worker, {"r0001", "r0002", "r0003"})
    before = _unexpected("rider_day")
    with capture_logs() as logs:
        report = await worker.settle_once(now=NOW)
    n = report.failed_rider_days
    assert n >= 3
    assert _unexpected("rider_day") - before == n
    assert [e["rider_id"] for e in logs if e["event"] == "rider_day_failed"] == ["r0001"]
    assert RIDER_DAYS_FAILING._value.get() == n
    clock[0] = NOW + 60.0
    with capture_logs() as logs:
        report = await worker.settle_once(now=NOW + 600.0)
    assert report.failed_rider_days == n
    assert [(e["rider_id"], e["suppressed"]) for e in logs if e["event"] == "rider_day_failed"] == [
        ("r0001", n - 1)
    ]


async def test_what_settlement_put_aside_is_listed_by_an_ops_command(
    env: Env, tmp_path: Path
) -> None:
    """``busbell backend settlement-failures`` lists the failing rider-days and the
    dead-lettered events with their errors and counts the never-charged events by reason
    (read-only; exit status 3 while anything is put aside, 0 once a restarted worker
    settled it all, 1 on a database it cannot read)."""
    import json
    import subprocess
    import sys

    from backend._settlement import settlement_failures

    w = env.world
    bad = w.ride("r0001", "bus-01", board=1, alight=3, t=T0)
    w.ride("r0002", "bus-01", board=2, alight=5, t=T0 + 60)
    w.ride("r0003", "bus-02", board=1, alight=4, t=T0 + 30)
    await env.ingest([e for c in w.buses.values() for e in c.events])
    worker, resolver = _worker(env)
    resolver.poison = {e["rid"] for e in bad}
    _poison_builder(worker, {"r0003"})
    await worker.settle_once()
    found = await settlement_failures(env.engine)
    assert found.dead_letters_total == len(bad)
    assert found.unresolved == {"settle_error": len(bad)}
    assert [(r["bus_id"], r["event_id"], r["detail"]) for r in found.dead_letters] == [
        ("bus-01", e["event_id"], "RuntimeError: rid lookup bug") for e in bad
    ]
    assert found.rider_days_total >= 1
    assert {(r["rider_id"], r["attempts"], r["error"]) for r in found.rider_days} == {
        ("r0003", 1, "RuntimeError: pricing bug")
    }
    assert (await settlement_failures(env.engine, limit=0)).rider_days == []

    url = env.engine.url.render_as_string(hide_password=False)
    cmd = [sys.executable, "-m", "busbell.cli", "backend", "settlement-failures", "--db", url]

    def run(*more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cmd, *more], capture_output=True, text=True, timeout=LIVE_TIMEOUT_S, check=False
        )

    r = await asyncio.to_thread(run)
    assert r.returncode == 3, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"rider-days failing: {found.rider_days_total}"
    assert lines[1].startswith(f"  r0003 {DAY}: 1 attempt(s), last ")
    assert lines[1].endswith(" UTC: RuntimeError: pricing bug")
    assert f"events dead-lettered (settle_error): {len(bad)}" in lines
    assert lines[-1] == f"events never charged, by reason: settle_error {len(bad)}"
    r = await asyncio.to_thread(run, "--json")
    assert json.loads(r.stdout)["unresolved"] == {"settle_error": len(bad)}

    restarted, _ = _worker(env)
    await restarted.settle_once()
    r = await asyncio.to_thread(run)
    assert (r.returncode, r.stdout.splitlines()) == (
        0,
        [
            "rider-days failing: 0",
            "events dead-lettered (settle_error): 0",
            "events never charged, by reason: none",
        ],
    )
    # a mark not yet recomputed (attempts 0) and an event never charged for a reason
    # of its own (an unknown rid) are no failure: listed as such, exit 0
    async with env.engine.begin() as conn:
        await conn.execute(
            settlement_dirty.insert().values(rider_id="r0002", service_day=DAY, marked_at=NOW)
        )
        await conn.execute(
            unresolved_segments.insert().values(
                event_id="e" * 64,
                bus_id="bus-01",
                seq=99,
                rid="0" * 24,
                interval=1,
                start_t=T0,
                reason="unresolved_rid",
                detail="no rider",
                recorded_at=NOW,
            )
        )
    r = await asyncio.to_thread(run)
    assert (r.returncode, r.stdout.splitlines()) == (
        0,
        [
            "rider-days failing: 0",
            "events dead-lettered (settle_error): 0",
            "events never charged, by reason: unresolved_rid 1",
        ],
    )
    empty = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    r = await asyncio.to_thread(run, "--db", empty)  # (the last --db wins)
    assert r.returncode == 1
    assert "cannot read the settlement tables" in r.stderr


async def test_a_dead_letter_that_still_raises_after_a_restart_stalls_nothing(env: Env) -> None:
    """A restarted worker retries the ``settle_error`` events at its first pass. Before:
    when the lookup of such an event still raised (the worker restarted by its
    supervisor, the bug not yet fixed), the retry raised out of the pass (a lone event's
    lookup error, or every one's, is raised as "the resolver does not work"), so the
    first pass never completed: no bus and no rider-day was settled again, ever. Now
    the retry looks each dead letter up alone: one that raises again stays a dead
    letter, and the pass goes on."""
    w = env.world
    bad = w.ride("r0001", "bus-01", board=1, alight=3, t=T0)
    w.ride("r0002", "bus-01", board=2, alight=5, t=T0 + 60)
    await env.ingest([e for c in w.buses.values() for e in c.events])
    worker, resolver = _worker(env)
    resolver.poison = {e["rid"] for e in bad}
    await worker.settle_once()
    assert await _charged(env) == ["r0002"]

    restarted, resolver = _worker(env)
    resolver.poison = {e["rid"] for e in bad}  # restarted, the bug still there
    await env.ingest(w.ride("r0003", "bus-02", board=1, alight=4, t=T0 + 30))
    report = await restarted.settle_once()
    assert (report.segments, report.unresolved) == (1, {})
    assert await _charged(env) == ["r0002", "r0003"]
    dead = await env.rows(unresolved_segments, "event_id")
    assert [(d["event_id"], d["reason"]) for d in dead] == [
        (e["event_id"], "settle_error") for e in bad
    ]
    # the next restart, the bug fixed, settles it
    fixed, _ = _worker(env)
    await fixed.settle_once()
    assert await _charged(env) == ["r0001", "r0002", "r0003"]
