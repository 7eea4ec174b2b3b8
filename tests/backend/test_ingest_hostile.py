"""Hostile input on the fares topics (issue 13): nothing stops ingest or loses a fare.

Black box: the real ``busbell backend run`` process (SQLite and PostgreSQL) on a real
mosquitto, a 100,000-deep JSON array published retained, unsigned and forged events
with ``seq`` = 2**70, NaN, a flood, and genuine events of two buses in the same burst.
Then the same against :class:`~backend._ingest.Ingestor` directly, on both databases.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from backend._db import create_engine, fare_events, quarantine
from backend._errors import MalformedMessage
from backend._ingest import IngestCore, Ingestor
from backend._ingest_bounds import LogBudget, QuarantineBudget
from backend._keys import DeviceInfo
from busbell import DEVICES_HEADER, Topics, canonical_bytes, sign_event, write_rows
from busbell._mqtt import MqttSession, MqttSettings
from busbell._ports import free_port
from tests.factories.fare_events import batch_payload, device_key_for, make_events

DEEP = b"[" * 100_000 + b"]" * 100_000


def _event(bus: str, seq: int, **over: Any) -> dict[str, Any]:
    ev = dict(make_events(bus, device_key_for(bus), 1)[0])
    ev.pop("sig")
    ev.update(seq=seq, **over)
    return ev


def hostile_payloads(bus: str) -> list[tuple[str, bytes]]:
    """(what, payload) pairs a hostile publisher sends on ``buses/{bus}/fares``."""
    unsigned = _event(bus, 2**70)
    forged = dict(unsigned, sig="A" * 86 + "==")
    signed_huge = sign_event(_event(bus, 2**70), device_key_for(bus))
    signed_nul = sign_event(_event(bus, 3, route_id="r\x00"), device_key_for(bus))
    flood = [dict(forged, seq=1000 + i) for i in range(500)]
    return [
        ("deep", DEEP),
        ("unsigned_2_70", canonical_bytes(unsigned)),
        ("forged_2_70", canonical_bytes({"bus_id": bus, "events": [forged]})),
        ("signed_2_70", canonical_bytes(signed_huge)),
        ("signed_nul", canonical_bytes(signed_nul)),
        ("nan_batch", b'{"bus_id":"' + bus.encode() + b'","events":[],"x":NaN}'),
        ("overflow_float", b'{"bus_id":"' + bus.encode() + b'","events":[],"x":1e999}'),
        ("surrogate", canonical_bytes(_event(bus, 4, route_id="x")).replace(b'"x"', b'"\\ud800"')),
        ("flood", canonical_bytes({"bus_id": bus, "events": flood})),
        ("not_json", b"\x00\xff garbage"),
    ]


# --- budgets and the core -------------------------------------------------------------


def test_quarantine_budget_per_message_and_per_bus_window() -> None:
    b = QuarantineBudget(per_message=3, per_bus=5, window_s=60.0)
    assert b.admit("B1", 10, 0.0) == 3
    assert b.admit("B1", 10, 1.0) == 2  # the bus's minute is used up after 5
    assert b.admit("B1", 1, 30.0) == 0
    assert b.admit("B2", 2, 30.0) == 2  # per bus
    assert b.admit("B1", 1, 61.0) == 1  # a new window
    small = QuarantineBudget(per_message=1, per_bus=1, max_buses=4)
    for i in range(20):  # many topics: the table of windows stays bounded
        assert small.admit(f"X{i}", 1, float(i)) == 1
        assert len(small._windows) <= 4


def test_log_budget_reports_what_it_suppressed() -> None:
    lb = LogBudget(burst=2, window_s=10.0)
    key = ("e", "r", "B1")
    assert [lb.allow(key, t) for t in (0.0, 1.0, 2.0, 3.0)] == [0, 0, None, None]
    assert lb.allow(("e", "r", "B2"), 3.0) == 0
    assert lb.allow(key, 11.0) == 2


def test_core_rejects_hostile_payloads_without_raising_anything_else() -> None:
    core = IngestCore({"B1": DeviceInfo(device_key_for("B1").public)}, max_events_per_message=100)
    outcome: dict[str, str] = {}
    for what, payload in hostile_payloads("B1"):
        try:
            ok, bad = core.decode("B1", payload)
        except MalformedMessage as exc:
            outcome[what] = f"malformed:{exc.reason}"
            continue
        assert ok == []
        outcome[what] = ",".join(sorted({r.reason for r in bad}))
        assert all(r.seq is None or r.seq < 2**63 for r in bad)
    assert outcome == {
        "deep": "malformed:too_deep",
        "unsigned_2_70": "malformed:int_range",
        "forged_2_70": "malformed:int_range",
        "signed_2_70": "malformed:int_range",
        "signed_nul": "schema",
        "nan_batch": "malformed:non_finite",
        "overflow_float": "malformed:non_finite",
        "surrogate": "malformed:not_utf8",  # a lone surrogate escape: busbell.loads_bounded
        "flood": "malformed:too_many_events",
        "not_json": "malformed:not_utf8",
    }


# --- the Ingestor on SQLite and PostgreSQL ----------------------------------------------


@pytest.fixture
def registered_buses() -> tuple[str, ...]:
    return ("B1", "B2")


async def _count(engine: AsyncEngine, table: sa.Table, **where: str) -> int:
    q = sa.select(sa.func.count()).select_from(table)
    for k, v in where.items():
        q = q.where(table.c[k] == v)
    async with engine.connect() as conn:
        return int((await conn.execute(q)).scalar_one())


async def test_hostile_input_in_one_batch_with_genuine_events(engine: AsyncEngine) -> None:
    """Every hostile payload in the same transaction batch as genuine events of two
    buses: all genuine events stored and acked, quarantine bounded per message."""
    ing = Ingestor(engine, IngestCore(), worker_id="w", quarantine_budget=QuarantineBudget(5, 50))
    await ing.refresh_devices()
    chains = {b: make_events(b, device_key_for(b), 20) for b in ("B1", "B2")}
    messages: list[tuple[str, bytes]] = []
    for k in range(0, 20, 5):
        for b in ("B1", "B2"):
            messages.append((b, batch_payload(b, chains[b][k : k + 5])))
            messages.extend((b, p) for _, p in hostile_payloads(b))
    with capture_logs() as logs:
        res = await ing.ingest(messages)
    assert res.acks == {"B1": 20, "B2": 20}
    assert res.stored == 40
    for b in ("B1", "B2"):
        assert await _count(engine, fare_events, bus_id=b) == 20
    rows = await _count(engine, quarantine)
    assert 0 < rows <= 100  # 2 buses x 50 per minute, however many were rejected
    assert res.quarantined > rows
    # logs are rate-limited per (event, reason, bus), and say how much was suppressed
    quarantined = [e for e in logs if e["event"] == "fare_event_quarantined"]
    per_key = Counter((e["reason"], e["bus_id"]) for e in quarantined)
    assert quarantined
    assert max(per_key.values()) <= 10
    assert sum(per_key.values()) < res.quarantined


async def test_quarantine_failure_never_loses_the_valid_events(engine: AsyncEngine) -> None:
    """The quarantine transaction is separate: when it fails, the events stay committed."""
    ing = Ingestor(engine, IngestCore(), worker_id="w")
    await ing.refresh_devices()
    async with engine.begin() as conn:
        await conn.execute(sa.text("DROP TABLE quarantine"))
    chain = make_events("B1", device_key_for("B1"), 5)
    with capture_logs() as logs:
        res = await ing.ingest(
            [("B1", batch_payload("B1", chain)), ("B1", hostile_payloads("B1")[1][1])]
        )
    assert res.acks == {"B1": 5}
    assert await _count(engine, fare_events, bus_id="B1") == 5
    assert any(e["event"] == "fare_quarantine_store_failed" for e in logs)


# --- black box: `busbell backend run` -----------------------------------------------------


class Backend:
    """`busbell backend run` as a subprocess with its log in a file."""

    def __init__(self, tmp: Path, db_url: str, broker: Any, prefix: str) -> None:
        devices = tmp / "DEVICES.csv"
        write_rows(devices, DEVICES_HEADER, [(b, device_key_for(b).public.hex) for b in BUSES])
        self.api_port = free_port()
        self.config = tmp / "backend.toml"
        self.config.write_text(
            f'[database]\nurl = "{db_url}"\n'
            f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nprefix = "{prefix}"\n'
            f'[files]\ndevices = "{devices}"\n[api]\nport = {self.api_port}\n'
        )
        self.log = tmp / "backend.log"
        self.state = tmp / "state"
        self.proc: subprocess.Popen[bytes] | None = None
        self.offset = 0

    def start(self) -> None:
        self.offset = offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as f:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "busbell.cli",
                    "backend",
                    "run",
                    "--config",
                    str(self.config),
                ],
                stdout=f,
                stderr=subprocess.STDOUT,
                # the signing key's home for PostgreSQL (SQLite keeps it beside the file)
                env={**os.environ, "STATE_DIRECTORY": str(self.state)},
            )
        deadline = time.monotonic() + 60
        while b'"fare_ingest_subscribed"' not in self.log.read_bytes()[offset:]:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.05)

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            return False
        url = f"http://127.0.0.1:{self.api_port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200 and json.loads(r.read())["ok"] is True

    def stop(self) -> int:
        """Interrupt it (as Ctrl-C does) and return its exit status."""
        assert self.proc is not None
        assert self.proc.poll() is None, "the backend died"
        # nothing went wrong while it ran (its shutdown is not what this test is about)
        assert b"Traceback" not in self.log.read_bytes()[self.offset :]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)


BUSES = ("H1", "H2")


@pytest.fixture
def backend(
    tmp_path: Path, db_url: str, shared_broker: Any, topic_prefix: str
) -> Iterator[Backend]:
    b = Backend(tmp_path, db_url, shared_broker, topic_prefix)
    try:
        yield b
    finally:
        if b.proc is not None and b.proc.poll() is None:
            b.proc.kill()
            b.proc.wait()


async def _burst(settings: MqttSettings, topics: Topics, chains: dict[str, list[Any]]) -> None:
    """Genuine batches of every bus interleaved with every hostile payload, 20 Hz-ish."""
    async with MqttSession(settings, f"t-hostile-{topics.prefix[5:17]}", clean_start=True) as s:
        await s.publish(topics.fares(BUSES[0]), DEEP, qos=1, retain=True)
        for k in range(0, len(chains[BUSES[0]]), 5):
            for b in BUSES:
                for _, p in hostile_payloads(b):
                    await s.publish(topics.fares(b), p, qos=1)
                await s.publish(topics.fares(b), batch_payload(b, chains[b][k : k + 5]), qos=1)
                await asyncio.sleep(0.05)


async def _wait_acks(settings: MqttSettings, topics: Topics, want: dict[str, int]) -> None:
    got: dict[str, int] = {}
    async with MqttSession(settings, f"t-acks-{topics.prefix[5:17]}", clean_start=True) as s:
        await s.subscribe([topics.fares_ack(b) for b in want])
        async with asyncio.timeout(60):
            async for msg in s.messages():
                bus = topics.parse(msg.topic).ids["bus"]  # type: ignore[union-attr]
                got[bus] = max(got.get(bus, 0), json.loads(msg.payload)["upto_seq"])
                if all(got.get(b, 0) >= n for b, n in want.items()):
                    return


@pytest.mark.mosquitto
async def test_backend_run_survives_hostile_fares_and_stores_every_genuine_one(
    backend: Backend, db_url: str, shared_broker: Any, topic_prefix: str
) -> None:
    topics = Topics(topic_prefix)
    settings = MqttSettings(host=shared_broker.host, port=shared_broker.port, prefix=topic_prefix)
    chains = {b: make_events(b, device_key_for(b), 30) for b in BUSES}
    backend.start()
    try:
        acks = asyncio.create_task(_wait_acks(settings, topics, dict.fromkeys(BUSES, 20)))
        await _burst(settings, topics, {b: c[:20] for b, c in chains.items()})
        await acks
        assert backend.healthy()
        # Restart: the retained 100,000-deep array is delivered again, and ignored.
        backend.stop()
        backend.start()
        acks = asyncio.create_task(_wait_acks(settings, topics, dict.fromkeys(BUSES, 30)))
        async with MqttSession(settings, f"t-edge-{topic_prefix[5:17]}", clean_start=True) as s:
            for b in BUSES:
                await s.publish(topics.fares(b), batch_payload(b, chains[b][20:]), qos=1)
        await acks
        assert backend.healthy()
        backend.stop()
    finally:
        async with MqttSession(settings, f"t-clear-{topic_prefix[5:17]}", clean_start=True) as s:
            await s.publish(topics.fares(BUSES[0]), b"", qos=1, retain=True)
    eng = create_engine(db_url)
    try:
        for b in BUSES:
            assert await _count(eng, fare_events, bus_id=b) == 30
        # 10 hostile messages x 4 rounds per bus, the 500-event flood among them: the
        # table holds at most the per-message bound per message.
        assert await _count(eng, quarantine) <= 2 * 4 * 10 * 10
    finally:
        await eng.dispose()
    # the deny-list signing key was made in the test's own directory: beside the SQLite
    # file, or for PostgreSQL in the state directory (never the working directory)
    keys = list(backend.config.parent.rglob("busbell-backend-signing.pem"))
    assert len(keys) == 1
    sqlite = db_url.startswith("sqlite")
    assert keys[0].parent == (backend.config.parent if sqlite else backend.state)
    text = backend.log.read_text()
    lines = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    ignored = [e for e in lines if e.get("event") == "fare_message_ignored"]
    assert ignored
    assert ignored[0]["reason"] == "retained"
    assert not [e for e in lines if e.get("event") == "fare_message_failed"]
