"""The whole system under faults: ``busbell edge run`` and ``busbell backend run`` for real.

One bus of a simulated scenario (``firmware_sim``, shifted to start now) is played in
accelerated real time to a real ``busbell edge run`` (stream source: advertisements over
TCP; GNSS, doors and trip over MQTT on the bus's own Mosquitto). The bus broker bridges
the bus's fares, status and acks to a central Mosquitto, where a real ``busbell backend
run`` (SQLite) ingests them, reaching the central broker through a small MQTT-aware TCP
proxy. Faults, all optional:

* **edge SIGKILLs**: the whole ``busbell edge run`` process is SIGKILLed at random
  moments and restarted at once (advertisements sent while it is down are lost, as
  radio packets would be; vehicle signals wait in its persistent MQTT session);
* **backend kills between commit and ack**: the proxy watches what the backend sends; when
  armed, the moment the backend publishes a ``fares/ack`` (it does so only after the
  ledger commit) the proxy SIGKILLs the backend and drops that ack, so the commit is in
  the ledger and the ack never reached the broker; the backend is restarted;
* **a long partition**: the central broker is stopped for ``partition_s`` while the bus
  keeps recording (its broker queues the bridge traffic), then started again;
* **disk full**: the edge's store lives on a tmpfs of its own; it is filled to the last
  byte for ``disk_full_s`` and then emptied (root only; skipped otherwise);
* **clock steps**: the edge runs under libfaketime, and its system clock is stepped
  forwards and backwards (``FAKETIME_TIMESTAMP_FILE``; the monotonic clock is untouched).

At the end the bus is stopped with SIGTERM, restarted until the backend has acknowledged
every event its store holds, the backend is stopped with SIGTERM, and the ledger is
compared with the edge's own store: none lost, none stored twice, the chain intact and
every signature valid; besides, segments of one rid that overlap in time (a segment
emitted again after a restart) are counted. With ``--baseline`` the same scenario is run
once without faults first, and the riders (rid, interval) each run recorded are compared.

Full run (the figures in docs/reliability.md)::

    flock /work/heavy.lock .venv/bin/python -m tests.faults.live --baseline \\
        --edge-kills 30 --commit-ack-kills 5 --partition-s 180 --disk-full-s 20 --clock-steps

``tests/faults/test_live_faults.py`` runs reduced ones in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from busbell import (
    GENESIS_PREV,
    AdvRecord,
    DoorRecord,
    GnssRecord,
    Topics,
    TraceReader,
    TraceRecord,
    TripRecord,
    UplinkError,
    derive_rider_keys,
    event_hash,
    load_public_hex,
    record_to_json,
    rid_for_interval,
    verify_event,
)
from busbell._mqtt import MqttSession, MqttSettings
from tests.conftest import MOSQUITTO, BrokerProcess, free_port

ROOT = Path(__file__).parents[2]
LIBFAKETIME = next(
    (
        p
        for p in (
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
            "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
            "/usr/lib/faketime/libfaketime.so.1",
        )
        if os.path.exists(p)
    ),
    None,
)
CLOCK_STEPS = (3600.0, -86400.0, 2 * 86400.0, 0.0)
"""System clock offsets the edge is stepped through (an hour ahead, a day back, two days
ahead - less than the store's 7-day retention of acked events - and back to true)."""


@dataclass
class LiveResult:
    """What one run did and found."""

    scenario: str = ""
    bus: str = ""
    speed: float = 0.0
    seconds: float = 0.0
    edge_kills: int = 0
    edge_kills_running: int = 0
    """Edge SIGKILLs that hit a running daemon (``edge_started`` logged), not its start-up."""
    commit_ack_kills: int = 0
    commit_ack_checked: int = 0
    backend_terms: int = 0
    backend_terms_clean: int = 0
    """SIGTERMs after which the backend exited 0, no event acked beyond the ledger."""
    backend_terms_all_acked: int = 0
    """... and the bus then held acks for every event in the ledger (not always possible:
    an ack an earlier kill dropped waits for the bus's re-send)."""
    partitions: int = 0
    partition_s: float = 0.0
    disk_full_s: float = 0.0
    disk_full_skipped: str = ""
    status_store_not_ok: int = 0
    status_store_ok_after: bool = False
    display_during_disk_full: int = 0
    store_failure_logs: int = 0
    """``fare_store_failed`` lines the edge logged (rate-limited while the disk is full)."""
    clock_steps: list[float] = field(default_factory=list)
    adverts_sent: int = 0
    adverts_dropped: int = 0
    edge_events: int = 0
    stored: int = 0
    lost: list[int] = field(default_factory=list)
    extra: list[int] = field(default_factory=list)
    mismatched: int = 0
    duplicates: int = 0
    gaps: list[int] = field(default_factory=list)
    bad_links: int = 0
    bad_signatures: int = 0
    quarantined: int = 0
    overlaps: int = 0
    edge_crashes: int = 0
    backend_crashes: int = 0
    edge_exit: int | None = None
    backend_exit: int | None = None
    riders: list[tuple[str, int]] = field(default_factory=list)
    """(rid, interval) of every segment in the ledger."""
    rider_ids: dict[str, int] = field(default_factory=dict)
    """Segments in the ledger per rider of the scenario (rids resolved with RIDERS.csv)."""

    @property
    def ok(self) -> bool:
        """No event lost, duplicated or broken, no crash, clean SIGTERM exits."""
        return (
            self.edge_events > 0
            and self.stored == self.edge_events
            and not (
                self.lost
                or self.extra
                or self.mismatched
                or self.duplicates
                or self.gaps
                or self.bad_links
                or self.bad_signatures
                or self.quarantined
                or self.overlaps
                or self.edge_crashes
                or self.backend_crashes
                or self.backend_terms_clean != self.backend_terms
            )
            and self.edge_exit == 0
            and self.backend_exit == 0
        )

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (lists as counts)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("riders", "rider_ids")}
        out.update(lost=len(self.lost), extra=len(self.extra), gaps=len(self.gaps))
        out["riders"] = len(self.rider_ids)
        out["segments"] = sum(self.rider_ids.values())
        out["ok"] = self.ok
        return out


class BusBroker(BrokerProcess):
    """The bus's Mosquitto, bridged to the central one for this bus's topics."""

    def __init__(self, port: int, workdir: Path, central_port: int, bus: str, prefix: str) -> None:
        super().__init__(port, workdir)
        self.bridge = (
            f"\nconnection central\naddress 127.0.0.1:{central_port}\n"
            "bridge_protocol_version mqttv50\n"
            f"remote_clientid bridge-{bus}\ncleansession false\nlocal_cleansession false\n"
            "restart_timeout 1 2\nnotifications false\n"
            + "".join(
                f"topic buses/{bus}/{t} {d} 1 {prefix}/ {prefix}/\n"
                for t, d in (
                    ("fares", "out"),
                    ("status", "out"),
                    ("fares/ack", "in"),
                    ("fares/resend", "in"),
                    ("keys", "in"),
                )
            )
        )

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {self.workdir}/\n"
            "max_queued_messages 1000000\nmax_inflight_messages 100\n"
            + ("user root\n" if os.geteuid() == 0 else "")
            + self.bridge
        )
        with (self.workdir / "mosquitto.log").open("ab") as err:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err
            )
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                import socket

                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start: {self.workdir}/mosquitto.log")
            time.sleep(0.05)


def _varint(buf: bytes, i: int) -> tuple[int, int] | None:
    """An MQTT variable byte integer at ``buf[i:]``: (value, next index), or None if cut."""
    value, shift = 0, 0
    while i < len(buf):
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7
        if shift > 21:
            raise ValueError("malformed MQTT length")
    return None


class AckKillProxy:
    """TCP proxy backend -> central broker that can kill the backend at its next fares/ack.

    Client-to-broker bytes are split into MQTT packets; when ``armed`` and a PUBLISH to
    ``.../fares/ack`` goes by, ``on_ack(topic, payload)`` is called (it SIGKILLs the
    backend), the packet is not forwarded and every proxied connection is closed.
    """

    def __init__(self, target_port: int, on_ack: Callable[[str, bytes], None]) -> None:
        self.target_port = target_port
        self.on_ack = on_ack
        self.armed = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.drop_all()
        if self._server is not None:
            self._server.close()

    def drop_all(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _conn(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            br, bw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cw.transport.abort()
            return
        self._writers |= {cw, bw}

        async def down() -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await br.read(65536):
                    cw.write(data)
                    await cw.drain()
            cw.transport.abort()

        task = asyncio.create_task(down())
        buf = b""
        try:
            while data := await cr.read(65536):
                buf += data
                while True:
                    if len(buf) < 2:
                        break
                    got = _varint(buf, 1)
                    if got is None:
                        break
                    length, start = got
                    if len(buf) < start + length:
                        break
                    packet, buf = buf[: start + length], buf[start + length :]
                    if packet[0] >> 4 == 3 and self.armed:
                        tlen = int.from_bytes(packet[start : start + 2], "big")
                        topic = packet[start + 2 : start + 2 + tlen].decode()
                        if topic.endswith("/fares/ack"):
                            i = start + 2 + tlen + (2 if (packet[0] >> 1) & 3 else 0)
                            plen, j = _varint(packet, i) or (0, i)
                            self.armed = False
                            self.on_ack(topic, packet[j + plen :])
                            self.drop_all()
                            return
                    bw.write(packet)
                    await bw.drain()
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            bw.transport.abort()
            cw.transport.abort()
            self._writers -= {cw, bw}
            task.cancel()


@dataclass
class _Fill:
    """The edge's own small filesystem (tmpfs), and a file that fills it up."""

    mount: Path
    filler: Path

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 16, 4096, 512, 1):  # down to the last byte
                block = b"\0" * size
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, block)
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


class LiveRun:
    """The processes of one run, in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        *,
        scenario: str,
        seed: int,
        scale: str,
        bus: str,
        speed: float,
        log: Callable[[str], None],
        disk: bool,
        faketime: bool,
        start_at: float,
    ) -> None:
        from firmware_sim import GenerateOptions, generate

        self.dir = workdir
        self.log = log
        self.bus = bus
        self.speed = speed
        self.prefix = f"live-{os.getpid()}-{random.randrange(1 << 30)}/busbell/v1"
        self.topics = Topics(self.prefix)
        sc = workdir / "scenario"
        generate(scenario, seed, sc, scale, GenerateOptions(start_at=start_at))
        with (sc / "traces" / f"{bus}.jsonl").open(encoding="utf-8") as f:
            self.records: list[TraceRecord] = list(TraceReader(f))
        self.public = {
            b: load_public_hex(k)
            for b, k in (line.split(",") for line in (sc / "DEVICES.csv").read_text().split()[1:])
        }
        self.result = LiveResult(scenario=scenario, bus=bus, speed=speed)
        (workdir / "central").mkdir()
        (workdir / "bus").mkdir()
        self.central = BrokerProcess(free_port(), workdir / "central")
        self.busbroker = BusBroker(
            free_port(), workdir / "bus", self.central.port, bus, self.prefix
        )
        self.proxy = AckKillProxy(self.central.port, self._ack_seen)
        self.ledger = workdir / "ledger.db"
        self.backend: subprocess.Popen[bytes] | None = None
        self.backend_killed = False
        self.edge: subprocess.Popen[bytes] | None = None
        self.edge_killed = False
        self._edge_log_at = 0
        self.stream_port = free_port()
        self.fill: _Fill | None = None
        store_dir = workdir / "edge"
        store_dir.mkdir()
        if disk:
            reason = self._mount(store_dir)
            if reason:
                self.result.disk_full_skipped = reason
            else:
                self.fill = _Fill(store_dir, store_dir / "filler")
        self.store = store_dir / "fares.db"
        self.faketime = workdir / "faketime"
        self.faketime.write_text("+0\n")
        self.use_faketime = faketime and LIBFAKETIME is not None
        self.statuses: list[tuple[float, dict[str, Any]]] = []
        self.displays: list[float] = []
        self.sc = sc
        shutil.copy(sc / "FLEET.csv", workdir / "EDGE-FLEET.csv")  # the bus's own copy

    @staticmethod
    def _mount(d: Path) -> str:
        if os.geteuid() != 0:
            return "not root: no tmpfs of its own for the edge's store"
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(d)],
            capture_output=True,
            text=True,
            check=False,
        )
        return "" if r.returncode == 0 else f"mount failed: {r.stderr.strip()}"

    # -- processes ------------------------------------------------------------------------

    def start_backend(self) -> None:
        cfg = self.dir / "backend.toml"
        # a fresh API port at each start: a port released by the last backend may be an
        # outgoing connection's by now (free ports come from the ephemeral range)
        cfg.write_text(
            f'[database]\nurl = "sqlite+aiosqlite:///{self.ledger}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {self.proxy.port}\n'
            f'prefix = "{self.prefix}"\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.5\n'
            f'[files]\ndevices = "{self.sc / "DEVICES.csv"}"\n'
            f"[api]\nport = {free_port()}\n[settlement]\nenabled = false\n"
            # the fleet's day keys are the scenario's (the tokens were made with them)
            f'[keys]\nfleet_keys_file = "{self.sc / "FLEET.csv"}"\n'
        )
        self.backend_killed = False
        with (self.dir / "backend.log").open("ab") as err:
            self.backend = subprocess.Popen(
                [sys.executable, "-m", "busbell.cli", "backend", "run", "--config", str(cfg)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.dir,
            )

    def start_edge(self) -> None:
        sc = self.sc
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUSBELL_")}
        env.update(
            BUSBELL_BUS_ID=self.bus,
            BUSBELL_DEVICE_KEY=str(sc / "keys" / f"{self.bus}.pem"),
            BUSBELL_FLEET_KEYS=str(self.dir / "EDGE-FLEET.csv"),
            BUSBELL_GTFS=str(sc / "gtfs"),
            BUSBELL_STORE=str(self.store),
            BUSBELL_SOURCE="stream",
            BUSBELL_STREAM__PORT=str(self.stream_port),
            BUSBELL_MQTT__HOST="127.0.0.1",
            BUSBELL_MQTT__PORT=str(self.busbroker.port),
            BUSBELL_MQTT__PREFIX=self.prefix,
            BUSBELL_MQTT__BACKOFF_INITIAL_S="0.1",
            BUSBELL_MQTT__BACKOFF_MAX_S="1",
            BUSBELL_UPLINK__ACK_TIMEOUT_S="5",
            BUSBELL_STATUS__INTERVAL_S="1",
            BUSBELL_LOG_LEVEL="info",
        )
        if self.use_faketime:
            assert LIBFAKETIME is not None
            env.update(
                LD_PRELOAD=LIBFAKETIME,
                FAKETIME_TIMESTAMP_FILE=str(self.faketime),
                FAKETIME_NO_CACHE="1",
                FAKETIME_DONT_FAKE_MONOTONIC="1",
            )
        self.edge_killed = False
        log = self.dir / "edge.log"
        self._edge_log_at = log.stat().st_size if log.exists() else 0
        with log.open("ab") as err:
            self.edge = subprocess.Popen(
                [sys.executable, "-m", "busbell.cli", "edge", "run"],
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=ROOT,
                env=env,
            )

    def _ack_seen(self, topic: str, payload: bytes) -> None:
        """The proxy caught an ack on its way out: kill the backend, check the commit."""
        assert self.backend is not None
        self.backend_killed = True
        self.backend.kill()
        self.backend.wait(30)
        self.result.commit_ack_kills += 1
        with contextlib.suppress(ValueError, KeyError, TypeError):
            upto = int(json.loads(payload)["upto_seq"])
            bus = topic.split("/")[-3]
            con = sqlite3.connect(self.ledger)
            try:
                n = con.execute(
                    "SELECT count(*) FROM fare_events WHERE bus_id = ? AND seq <= ?", (bus, upto)
                ).fetchone()[0]
            finally:
                con.close()
            # the ack named events that were all in the ledger already: it was committed
            if n == upto:
                self.result.commit_ack_checked += 1
            self.log(f"killed the backend with its ack upto_seq={upto} unsent ({n} committed)")

    async def _watch(self) -> None:
        """Restart what a fault killed; count what died by itself."""
        while True:
            await asyncio.sleep(0.1)
            if self.backend is not None and self.backend.poll() is not None:
                if not self.backend_killed:
                    self.result.backend_crashes += 1
                    self.log(f"backend exited by itself ({self.backend.returncode})")
                self.start_backend()
            if self.edge is not None and self.edge.poll() is not None:
                if not self.edge_killed:
                    self.result.edge_crashes += 1
                    self.log(f"edge exited by itself ({self.edge.returncode})")
                self.start_edge()

    def _ledger_top(self) -> int:
        """The highest seq up to which the ledger holds this bus's chain without a gap."""
        con = sqlite3.connect(self.ledger, timeout=10)
        try:
            rows = con.execute(
                "SELECT seq FROM fare_events WHERE bus_id = ? ORDER BY seq", (self.bus,)
            ).fetchall()
        finally:
            con.close()
        top = 0
        for (seq,) in rows:
            if seq != top + 1:
                break
            top = seq
        return top

    async def _term_backend(self) -> None:
        """SIGTERM the backend under load: it must exit 0, having acked all it committed."""
        proc = self.backend
        assert proc is not None
        armed, self.proxy.armed = self.proxy.armed, False  # one fault at a time
        self.backend_killed = True
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
        self.result.backend_terms += 1
        await asyncio.sleep(2.0)  # its last ack crosses the bridge to the bus
        top, (_, acked) = self._ledger_top(), self._edge_state()
        if code == 0 and acked <= top:
            self.result.backend_terms_clean += 1
        if code == 0 and acked == top:
            self.result.backend_terms_all_acked += 1
        self.proxy.armed = armed
        self.log(f"backend SIGTERM: exit {code}, ledger top {top}, edge acked {acked}")
        # _watch has started it again meanwhile (it was ours to stop: not a crash)

    async def _edge_running(self, limit_s: float = 20.0) -> bool:
        """Wait until the edge started last has logged ``edge_started`` (it runs)."""
        deadline = time.monotonic() + limit_s
        log = self.dir / "edge.log"
        while time.monotonic() < deadline:
            with log.open("rb") as f:
                f.seek(self._edge_log_at)
                if b'"edge_started"' in f.read():
                    return True
            await asyncio.sleep(0.05)
        return False

    async def kill_running_edge(self) -> None:
        """SIGKILL the edge once it runs (not in its start-up), and restart it at once."""
        if await self._edge_running():
            self.result.edge_kills_running += 1
        self.kill_edge()

    def kill_edge(self) -> None:
        assert self.edge is not None
        self.edge_killed = True
        self.edge.send_signal(signal.SIGKILL)
        self.edge.wait(30)
        self.result.edge_kills += 1
        self.start_edge()

    # -- the bus's world ------------------------------------------------------------------

    async def _drive(self, session: MqttSession) -> None:
        """Play the bus's records: adverts over TCP (lost while the edge is down), vehicle
        signals over MQTT (QoS 1: its persistent session keeps them)."""
        writer: asyncio.StreamWriter | None = None
        next_try = 0.0
        loop = asyncio.get_running_loop()
        t0 = self.records[0].t
        wall0 = loop.time()
        for rec in self.records:
            delay = wall0 + (rec.t - t0) / self.speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if isinstance(rec, AdvRecord):
                if writer is None and loop.time() >= next_try:
                    try:
                        _, writer = await asyncio.open_connection("127.0.0.1", self.stream_port)
                    except OSError:
                        next_try = loop.time() + 0.1
                if writer is None:
                    self.result.adverts_dropped += 1
                    continue
                obj = record_to_json(rec)
                writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
                try:
                    await writer.drain()
                    self.result.adverts_sent += 1
                except (OSError, ConnectionError):
                    writer.transport.abort()
                    writer = None
                    self.result.adverts_dropped += 1
                if writer is not None and writer.transport.is_closing():
                    writer = None
                continue
            obj = record_to_json(rec)
            obj.pop("kind")
            kind = {GnssRecord: "gnss", DoorRecord: "doors", TripRecord: "trip"}[type(rec)]
            await session.publish(
                self.topics.vehicle(self.bus, kind),
                json.dumps(obj, separators=(",", ":")),
                qos=1,
                retain=kind == "trip",
            )
        if writer is not None:
            writer.transport.abort()

    async def _monitor(self, session: MqttSession) -> None:
        with contextlib.suppress(UplinkError):
            await self._read(session)

    async def _read(self, session: MqttSession) -> None:
        async for m in session.messages():
            now = time.monotonic()
            if m.topic == self.topics.status(self.bus) and m.payload:
                self.statuses.append((now, json.loads(m.payload)))
            elif m.topic == self.topics.display(self.bus):
                self.displays.append(now)

    # -- the run --------------------------------------------------------------------------

    def _edge_state(self) -> tuple[int, int]:
        """(last_seq, acked_upto) from the edge's store (read-only, WAL)."""
        try:
            con = sqlite3.connect(f"file:{self.store}?mode=ro", uri=True, timeout=5)
            try:
                row = con.execute("SELECT last_seq, acked_upto FROM chain").fetchone()
            finally:
                con.close()
        except sqlite3.Error:
            return (-1, -2)
        return (int(row[0]), int(row[1])) if row else (-1, -2)

    async def run(
        self,
        *,
        edge_kills: int,
        commit_ack_kills: int,
        backend_terms: int = 0,
        partition_s: float,
        disk_full_s: float,
        clock_steps: bool,
    ) -> LiveResult:
        t_start = time.monotonic()
        r = self.result
        rng = random.Random(7)
        self.central.start()
        self.busbroker.start()
        await self.proxy.start()
        self.start_backend()
        self.start_edge()
        duration = (self.records[-1].t - self.records[0].t) / self.speed
        # the fault schedule, in seconds after the first record is played
        plan: list[tuple[float, str]] = []
        lo, hi = 0.1 * duration, 0.9 * duration
        windows: list[tuple[float, float]] = []
        if partition_s > 0:
            at = rng.uniform(lo, max(lo, hi - partition_s))
            plan.append((at, "partition"))
            windows.append((at, at + partition_s))
        if disk_full_s > 0 and self.fill is not None:
            at = rng.uniform(lo, hi)
            plan.append((at, "disk_full"))
            windows.append((at - 2, at + disk_full_s + 5))  # no kill with segments in memory
        plan += [(rng.uniform(lo, hi), "commit_ack") for _ in range(commit_ack_kills)]
        plan += [(rng.uniform(lo, hi), "backend_term") for _ in range(backend_terms)]
        if clock_steps and self.use_faketime:
            plan += [((k + 1) * duration / (len(CLOCK_STEPS) + 1), f"clock {off}")
                     for k, off in enumerate(CLOCK_STEPS)]  # fmt: skip
        kills = 0
        while kills < edge_kills:
            at = rng.uniform(0.02 * duration, 0.98 * duration)
            if not any(a <= at <= b for a, b in windows):
                plan.append((at, "edge_kill"))
                kills += 1
        plan.sort()
        watch = asyncio.create_task(self._watch())
        vehicle = MqttSettings(host="127.0.0.1", port=self.busbroker.port, prefix=self.prefix)
        try:
            async with (
                MqttSession(vehicle, f"live-vehicle-{os.getpid()}", clean_start=True) as drv,
                MqttSession(vehicle, f"live-monitor-{os.getpid()}", clean_start=True) as mon,
            ):
                await mon.subscribe([self.topics.status(self.bus), self.topics.display(self.bus)])
                monitor = asyncio.create_task(self._monitor(mon))
                await asyncio.sleep(3.0)  # the edge and the backend start
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                drive = asyncio.create_task(self._drive(drv))
                for at, what in plan:
                    await asyncio.sleep(max(0.0, t0 + at - loop.time()))
                    if what == "edge_kill":
                        await self.kill_running_edge()
                    elif what == "backend_term":
                        await self._term_backend()
                    elif what == "commit_ack":
                        self.proxy.armed = True
                    elif what == "partition":
                        self.log(f"partition: central broker down for {partition_s:.0f} s")
                        self.central.stop()
                        await asyncio.sleep(partition_s)
                        self.central.start()
                        r.partitions += 1
                        r.partition_s += partition_s
                    elif what == "disk_full":
                        assert self.fill is not None
                        self.log(f"disk full for {disk_full_s:.0f} s")
                        self.fill.fill()
                        since = time.monotonic()
                        n_disp = len(self.displays)
                        await asyncio.sleep(disk_full_s)
                        r.display_during_disk_full = len(self.displays) - n_disp
                        r.status_store_not_ok = sum(
                            1
                            for t, s in self.statuses
                            if t >= since and not s.get("store", {}).get("ok", True)
                        )
                        self.fill.free()
                        r.disk_full_s += disk_full_s
                    elif what.startswith("clock "):
                        off = float(what.split()[1])
                        self.faketime.write_text(f"{off:+.0f}\n")
                        r.clock_steps.append(off)
                        self.log(f"edge system clock stepped to {off:+.0f} s")
                await drive
                # an armed ack kill waits for the next ack, which a loaded machine may send
                # after the drive ended (the edge still uploads its last events): give it time
                until = loop.time() + 60.0
                while self.proxy.armed and loop.time() < until:
                    await asyncio.sleep(0.1)
                self.proxy.armed = False
                if self.fill is not None and r.disk_full_s:
                    await asyncio.sleep(3.0)
                    last = [s for _, s in self.statuses][-1:]
                    r.status_store_ok_after = bool(last) and last[0].get("store", {}).get("ok")
                monitor.cancel()
            watch.cancel()
            await self._finish()
        finally:
            watch.cancel()
            for p in (self.edge, self.backend):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait(30)
            await self.proxy.close()
            self.busbroker.kill()
            self.central.kill()
            try:
                self.verify()
            finally:
                if self.fill is not None:
                    self.fill.free()
                    subprocess.run(["umount", "-l", str(self.fill.mount)], check=False)
        r.seconds = time.monotonic() - t_start
        return r

    async def _finish(self) -> None:
        """SIGTERM the edge; restart it until every event it holds is acknowledged."""
        r = self.result
        deadline = time.monotonic() + 300
        while True:
            assert self.edge is not None
            self.edge_killed = True  # our SIGTERM: not a crash
            self.edge.send_signal(signal.SIGTERM)
            r.edge_exit = await asyncio.to_thread(self.edge.wait, 60)
            if r.edge_exit != 0:
                self.log(f"edge exited {r.edge_exit} on SIGTERM")
                break
            last, acked = self._edge_state()
            if last == acked or time.monotonic() > deadline:
                break
            self.start_edge()
            while time.monotonic() < deadline:
                last, acked = self._edge_state()
                if last == acked:
                    break
                await asyncio.sleep(0.2)
        self.edge = None
        assert self.backend is not None
        self.backend_killed = True
        await asyncio.sleep(1.0)
        self.backend.send_signal(signal.SIGTERM)
        r.backend_exit = await asyncio.to_thread(self.backend.wait, 60)
        self.backend = None

    def verify(self) -> None:
        r = self.result
        con = sqlite3.connect(f"file:{self.store}?mode=ro", uri=True)
        edge_rows = con.execute("SELECT seq, event, hash FROM events ORDER BY seq").fetchall()
        con.close()
        con = sqlite3.connect(self.ledger)
        rows = con.execute(
            "SELECT seq, event_hash, prev, raw, event_id FROM fare_events WHERE bus_id = ? "
            "ORDER BY seq",
            (self.bus,),
        ).fetchall()
        r.quarantined = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        con.close()
        edge = {int(s): h for s, _, h in edge_rows}
        r.edge_events = len(edge)
        seqs = [s for s, *_ in rows]
        r.stored = len(seqs)
        r.duplicates = (len(seqs) - len(set(seqs))) + (len(rows) - len({e for *_, e in rows}))
        r.lost = sorted(set(edge) - set(seqs))
        r.extra = sorted(set(seqs) - set(edge))
        r.mismatched = sum(1 for s, h, *_ in rows if s in edge and edge[s] != h)
        r.gaps = sorted(set(range(1, max(edge, default=0) + 1)) - set(edge))[:20]
        key = self.public[self.bus]
        prev_hash = GENESIS_PREV
        by_rid: dict[str, list[tuple[float, float]]] = {}
        riders: set[tuple[str, int]] = set()
        for seq, h, prev, raw, _ in rows:
            ev = json.loads(raw)
            try:
                verify_event(ev, key)
            except Exception:
                r.bad_signatures += 1
            if prev != prev_hash or event_hash(ev) != h or ev["seq"] != seq:
                r.bad_links += 1
            prev_hash = h
            if ev.get("type") == "segment":
                by_rid.setdefault(ev["rid"], []).append((ev["start"]["t"], ev["end"]["t"]))
                riders.add((ev["rid"], int(ev["interval"])))
        for spans in by_rid.values():
            spans.sort()
            r.overlaps += sum(1 for a, b in itertools.pairwise(spans) if b[0] < a[1])
        r.riders = sorted(riders)
        r.rider_ids = self._resolve(riders, by_rid)
        edge_log = (self.dir / "edge.log").read_text(errors="replace")
        r.store_failure_logs = edge_log.count('"fare_store_failed"')

    def _resolve(
        self, riders: set[tuple[str, int]], by_rid: dict[str, list[tuple[float, float]]]
    ) -> dict[str, int]:
        """Segments per rider id: each (rid, interval) matched against every rider's rid."""
        keys = {
            rider: derive_rider_keys(bytes.fromhex(tk)).rid_key
            for rider, tk in (
                line.split(",") for line in (self.sc / "RIDERS.csv").read_text().split()[1:]
            )
        }
        table: dict[tuple[str, int], str] = {}
        for interval in {i for _, i in riders}:
            for rider, rk in keys.items():
                table[(rid_for_interval(rk, interval).hex(), interval)] = rider
        out: dict[str, int] = {}
        for rid, interval in riders:
            rider = table.get((rid, interval), f"unknown:{rid}")
            out[rider] = out.get(rider, 0) + len(by_rid.get(rid, []))
        return out


def run_live(
    workdir: Path,
    *,
    scenario: str = "rush_hour_crowd",
    seed: int = 5,
    scale: str = "full",
    bus: str = "bus-55-01",
    speed: float = 3.0,
    edge_kills: int = 0,
    commit_ack_kills: int = 0,
    backend_terms: int = 0,
    partition_s: float = 0.0,
    disk_full_s: float = 0.0,
    clock_steps: bool = False,
    start_at: float | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> LiveResult:
    """Run one scenario bus through the real edge and backend with the given faults.

    ``start_at`` (UNIX time) places the scenario; runs to be compared pass the same one
    (the scenario's riders and their rids depend on it). Default: 30 s from now.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    run = LiveRun(
        workdir,
        scenario=scenario,
        seed=seed,
        scale=scale,
        bus=bus,
        speed=speed,
        log=log,
        disk=disk_full_s > 0,
        faketime=clock_steps,
        start_at=float(int(time.time()) + 30) if start_at is None else start_at,
    )
    return asyncio.run(
        run.run(
            edge_kills=edge_kills,
            commit_ack_kills=commit_ack_kills,
            backend_terms=backend_terms,
            partition_s=partition_s,
            disk_full_s=disk_full_s,
            clock_steps=clock_steps,
        )
    )


def compare(base: LiveResult, faulty: LiveResult) -> dict[str, int]:
    """Riders recorded by a run without faults and by one with them (same scenario)."""
    b, f = set(base.rider_ids), set(faulty.rider_ids)
    return {
        "baseline_riders": len(b),
        "faulty_riders": len(f),
        "missing": len(b - f),
        "extra": len(f - b),
        "baseline_segments": sum(base.rider_ids.values()),
        "faulty_segments": sum(faulty.rider_ids.values()),
        "same_rid_intervals": len(set(base.riders) & set(faulty.riders)),
    }


def main() -> int:
    """``python -m tests.faults.live``: run (a baseline and) a faulty run, print both."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="rush_hour_crowd")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--scale", default="full")
    ap.add_argument("--bus", default="bus-55-01")
    ap.add_argument("--speed", type=float, default=3.0)
    ap.add_argument("--edge-kills", type=int, default=30)
    ap.add_argument("--commit-ack-kills", type=int, default=5)
    ap.add_argument("--backend-terms", type=int, default=0)
    ap.add_argument("--partition-s", type=float, default=0.0)
    ap.add_argument("--disk-full-s", type=float, default=0.0)
    ap.add_argument("--clock-steps", action="store_true")
    ap.add_argument("--baseline", action="store_true", help="run once without faults first")
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="busbell-live-"))
    # both runs play the very same scenario (its riders depend on when it starts)
    common = {"start_at": float(int(time.time()) + 30), "scenario": a.scenario,
              "seed": a.seed, "scale": a.scale, "bus": a.bus, "speed": a.speed,
              "log": lambda s: print(s, flush=True)}  # fmt: skip
    ok = True
    base = None
    if a.baseline:
        base = run_live(workdir / "baseline", **common)  # type: ignore[arg-type]
        print("baseline", json.dumps(base.summary()), flush=True)
        ok = base.ok
    r = run_live(
        workdir / "faults",
        edge_kills=a.edge_kills,
        commit_ack_kills=a.commit_ack_kills,
        backend_terms=a.backend_terms,
        partition_s=a.partition_s,
        disk_full_s=a.disk_full_s,
        clock_steps=a.clock_steps,
        **common,  # type: ignore[arg-type]
    )
    print("faults", json.dumps(r.summary()), flush=True)
    if base is not None:
        print("riders", json.dumps(compare(base, r)), flush=True)
    print(f"workdir: {workdir}")
    if not os.environ.get("BUSBELL_KEEP_WORKDIR"):
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok and r.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
