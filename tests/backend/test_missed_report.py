"""The operator's missed-stop report over records ingest verified and stored.

Records are minted and signed as a bus does, go through the real ingest into
``missed_stops`` (SQLite and PostgreSQL), and the report checks each again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from backend._api import ApiState, create_app
from backend._db import create_engine, devices, migrate, missed_stops
from backend._ingest import IngestCore, Ingestor
from backend._keys import register_device
from backend._missed import (
    MissedRecord,
    MissedReport,
    StopMissed,
    format_report,
    missed_report,
)
from busbell import GENESIS_PREV, derive_missed_event_id, event_hash, load_gtfs, sign_event
from busbell._signing import PublicKey
from tests.factories.backend_world import missed_fields, write_gtfs
from tests.factories.fare_events import batch_payload, device_key_for

T0 = 1_764_000_000.0


def chain(
    bus_id: str, misses: list[tuple[str, str, float]], wait_t: float | None = None
) -> list[dict[str, Any]]:
    """A bus's chain of ``missed`` records: (route, stop, passed time) each.

    ``wait_t``: every wait stamped at this time (with its lifetime of 900 s), not 120 s
    before its pass.
    """
    key = device_key_for(bus_id)
    out: list[dict[str, Any]] = []
    prev = GENESIS_PREV
    for seq, (route, stop, t) in enumerate(misses, start=1):
        request_id = f"w-{bus_id}-{seq}"
        ev = missed_fields(request_id, stop, t, route_id=route)
        if wait_t is not None:
            ev["wait"] |= {"t": wait_t, "expires_t": wait_t + 900.0}
        ev |= {
            "bus_id": bus_id,
            "seq": seq,
            "prev": prev,
            "event_id": derive_missed_event_id(bus_id, seq, request_id, t),
        }
        ev["wait"]["assist"] = seq == 1
        signed = sign_event(ev, key)
        prev = event_hash(signed)
        out.append(signed)
    return out


async def ledger(url: str) -> AsyncEngine:
    eng = create_engine(url)
    await migrate(eng)
    async with eng.begin() as conn:
        for bus in ("bus-1", "bus-2"):
            await register_device(conn, bus, device_key_for(bus).public, now=1.0)
    ing = Ingestor(eng, IngestCore(), worker_id="t")
    await ing.refresh_devices()
    b1 = chain("bus-1", [("R1", "S05", T0), ("R1", "S05", T0 + 3600), ("R1", "S09", T0 + 4000)])
    b2 = chain("bus-2", [("R1", "S05", T0 + 7200), ("R2", "S03", T0 + 9000)])
    res = await ing.ingest(
        [("bus-1", batch_payload("bus-1", b1)), ("bus-2", batch_payload("bus-2", b2))]
    )
    assert res.acks == {"bus-1": 3, "bus-2": 2}
    return eng


async def test_the_report_counts_missed_stops_per_route_and_stop_and_verifies_them(
    db_url: str,
) -> None:
    eng = await ledger(db_url)
    try:
        report = await missed_report(eng, stop_names={"S05": "City Hall"})
        assert report.total == 5
        assert report.checks == {"verified": 5}
        body = report.to_json()
        assert [(r["route_id"], r["missed"]) for r in body["routes"]] == [("R1", 4), ("R2", 1)]
        s05 = body["routes"][0]["stops"][0]
        assert (s05["stop_id"], s05["stop_name"], s05["missed"]) == ("S05", "City Hall", 3)
        assert s05["buses"] == {"bus-1": 2, "bus-2": 1}
        assert (s05["first_t"], s05["last_t"]) == (T0, T0 + 7200)
        rec = s05["records"][-1]  # newest first
        assert (rec["bus_id"], rec["seq"], rec["passed_t"], rec["wait_t"]) == (
            "bus-1",
            1,
            T0,
            T0 - 120,
        )
        assert (rec["distance_m"], rec["speed_mps"], rec["assist"]) == (8.0, 9.0, True)
        # the window and the filters
        assert (await missed_report(eng, since=T0 + 1, until=T0 + 8000)).total == 3
        assert (await missed_report(eng, route_id="R2")).total == 1
        assert (await missed_report(eng, bus_id="bus-2", stop_id="S05")).total == 1
        small = await missed_report(eng, limit=2)
        assert (small.total, small.truncated) == (2, True)
        lines = format_report(report)
        assert lines[0].endswith(": 5 (5 verified)")
        assert "route R1: 4 missed" in lines
        assert "  City Hall (S05): 3 missed, by bus-1 (2), bus-2 (1)" in lines
        assert any(
            "bus-1 seq 1  w-bus-1-1  passed 8 m away at 9.0 m/s" in line
            and "assistance asked" in line
            and line.endswith("[verified]")
            for line in lines
        )
        # both times on one clock: the wait 2 min before the pass (UTC here)
        (line,) = [line for line in lines if "w-bus-1-1 " in line]
        assert line.startswith("    2025-11-24 16:00:00  ")
        assert "wait made 15:58:00, 2 min 00 s before," in line
    finally:
        await eng.dispose()


async def test_a_wait_stamped_on_another_clock_than_the_pass_is_said_to_be(db_url: str) -> None:
    """The demo's buses ran on their scenario's date (GNSS at --speed) while its rider API
    stamped waits with the wall clock: a missed stop's wait was "made" months after the
    bus passed, and the report printed the two times side by side as one time line. A
    wait stamped after the pass (or before it by more than its lifetime) is now called
    what it is; the demo's API keeps the buses' clock (tests/busbell/test_demo.py)."""
    eng = create_engine(db_url)
    await migrate(eng)
    try:
        async with eng.begin() as conn:
            await register_device(conn, "bus-1", device_key_for("bus-1").public, now=1.0)
        ing = Ingestor(eng, IngestCore(), worker_id="t")
        await ing.refresh_devices()
        later = T0 + 270 * 86400.0  # the wall clock, months after the scenario's date
        events = chain("bus-1", [("R1", "S05", T0)], wait_t=later)
        assert (await ing.ingest([("bus-1", batch_payload("bus-1", events))])).acks == {"bus-1": 1}
        lines = format_report(await missed_report(eng, since=0))
        (after,) = [line for line in lines if "w-bus-1-1 " in line]
        assert "2025-11-24 16:00:00" in after
        assert (
            "wait made 2026-08-21 16:00:00 (by another clock than the bus's: not "
            "comparable with the pass)" in after
        )
        too_early = MissedRecord(
            bus_id="bus-2",
            seq=1,
            event_id="e",
            request_id="w-2",
            route_id="R1",
            trip_id=None,
            stop_id="S05",
            wait_t=T0,
            passed_t=T0 + 5000,
            distance_m=None,
            speed_mps=None,
            assist=False,
            source="app",
            check="verified",
            wait_expires_t=T0 + 900,
        )
        report = MissedReport(None, None, [StopMissed("R1", "S05", None, [too_early])])
        assert "(by another clock than the bus's" in format_report(report)[-1]
        assert (
            "1 min 23 s before"
            in format_report(
                MissedReport(
                    None,
                    None,
                    [StopMissed("R1", "S05", None, [replace(too_early, passed_t=T0 + 83)])],
                )
            )[-1]
        )
    finally:
        await eng.dispose()


async def test_a_tampered_or_unverifiable_record_is_reported_as_such(db_url: str) -> None:
    eng = await ledger(db_url)
    try:
        async with eng.begin() as conn:
            rows = {
                (r.bus_id, r.seq): r for r in (await conn.execute(sa.select(missed_stops))).all()
            }

            async def set_record(bus: str, seq: int, **values: Any) -> None:
                await conn.execute(
                    sa.update(missed_stops)
                    .where(missed_stops.c.bus_id == bus, missed_stops.c.seq == seq)
                    .values(**values)
                )

            # the stored record says the bus passed farther away than it signed
            rec = json.loads(rows[("bus-1", 1)].record)
            rec["passed"]["distance_m"] = 80.0
            await set_record("bus-1", 1, record=json.dumps(rec))
            # ... and with the hash recomputed, the signature gives it away
            rec = json.loads(rows[("bus-1", 2)].record)
            rec["passed"]["distance_m"] = 80.0
            await set_record("bus-1", 2, record=json.dumps(rec), event_hash=event_hash(rec))
            # a row whose columns do not say what its record says
            await set_record("bus-1", 3, stop_id="S10")
            await set_record("bus-2", 1, record="{not json")
            await conn.execute(sa.delete(devices).where(devices.c.bus_id == "bus-2"))
        report = await missed_report(eng)
        assert report.checks == {
            "hash_mismatch": 1,
            "bad_signature": 1,
            "mismatch": 1,
            "malformed": 1,
            "unknown_device": 1,
        }
    finally:
        await eng.dispose()


async def test_the_ops_endpoints_give_the_report_and_a_record_anyone_can_verify(
    db_url: str, tmp_path: Path, operator: Any
) -> None:
    eng = await ledger(db_url)
    gtfs = tmp_path / "gtfs"
    write_gtfs(gtfs)
    state = ApiState(engine=eng, feed=load_gtfs(gtfs), auth=operator.auth)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(state)), base_url="http://api"
        ) as stranger:
            # operators only: a stranger and a rider are refused
            assert (await stranger.get("/ops/missed-stops")).status_code == 401
            enrolled = (await stranger.post("/riders", json={})).json()
            rider = {"Authorization": f"Bearer {enrolled['access_token']}"}
            assert (await stranger.get("/ops/missed-stops", headers=rider)).status_code == 403
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(state)),
            base_url="http://api",
            headers=operator.headers,
        ) as client:
            body = (await client.get("/ops/missed-stops", params={"route_id": "R1"})).json()
            assert body["total"] == 4
            assert body["routes"][0]["stops"][0]["stop_name"] == "Stop 5"
            event_id = body["routes"][0]["stops"][0]["records"][0]["event_id"]
            one = (await client.get(f"/ops/missed-stops/{event_id}")).json()
            assert one["check"] == "verified"
            record = one["record"]
            # verify it without busbell's helpers: Ed25519 over the canonical JSON sans sig
            unsigned = {k: v for k, v in record.items() if k != "sig"}
            canonical = json.dumps(
                unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ).encode()
            PublicKey(bytes.fromhex(one["public_key"])).verify_b64(record["sig"], canonical)
            assert (await client.get("/ops/missed-stops/nope")).status_code == 404
            assert (await client.get("/ops/missed-stops", params={"limit": 0})).status_code == 422
    finally:
        await eng.dispose()


def test_the_cli_prints_the_report(tmp_path: Path) -> None:
    import asyncio

    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    asyncio.run(asyncio.wait_for(_ledger_and_dispose(url), 60))
    gtfs = tmp_path / "gtfs"
    write_gtfs(gtfs)
    base = [sys.executable, "-m", "busbell.cli", "backend", "missed-report", "--db", url]
    r = subprocess.run(
        [*base, "--since", "2025-11-24", "--gtfs", str(gtfs)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert ": 5 (5 verified)" in r.stdout
    assert "  Stop 5 (S05): 3 missed, by bus-1 (2), bus-2 (1)" in r.stdout
    assert "KST" in r.stdout.splitlines()[0]  # the agency's timezone
    r = subprocess.run(
        [*base, "--since", "0", "--route", "R2", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(r.stdout)["total"] == 1
    r = subprocess.run(
        [*base, "--since=-1d"], capture_output=True, text=True, timeout=60, check=True
    )
    assert r.stdout.startswith("missed stops ")
    assert ": 0" in r.stdout  # T0 is long ago
    # on a backend whose clock is its buses' (the demo's: the scenario's date), the default
    # window and the times "ago" are on that clock, not the wall clock
    cfg = tmp_path / "backend.toml"
    cfg.write_text(f"[api]\nclock_t = {T0 + 10_000}\nclock_at_unix = {time.time()}\n")
    for extra, want in (([], ": 5 (5 verified)"), (["--since=-1h"], ": 2 (2 verified)")):
        r = subprocess.run(
            [*base, "--config", str(cfg), *extra],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert r.stdout.splitlines()[0].endswith(want), r.stdout
    bad = subprocess.run(
        [*base, "--since", "yesterday"], capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode == 2
    assert "not a time" in bad.stderr
    empty = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    r = subprocess.run(
        [sys.executable, "-m", "busbell.cli", "backend", "missed-report", "--db", empty],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1
    assert "cannot read missed stops" in r.stderr


async def _ledger_and_dispose(url: str) -> None:
    eng = await ledger(url)
    await eng.dispose()
