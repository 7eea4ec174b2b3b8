"""The fault campaign: edge SIGKILLs under load, broker and backend kills, a partition.

One bus (``edge_writer.py``: the real fare store and uploader) uploads to a real
``busbell backend run`` (SQLite) through a private Mosquitto. The campaign SIGKILLs the
edge writer at random moments ``edge_kills`` times (restarting it each time), SIGKILLs
and restarts the broker and the backend at random moments during chosen cycles, and
stops the broker for ``partition_s`` once while the edge keeps recording. Then it lets
the edge drain and checks the backend's ledger against every seq the edge reported as
committed: none lost, none stored twice, seqs 1..last without a gap, every signature and
``prev`` link valid, nothing quarantined.

Full campaign (the figures in docs/reliability.md)::

    .venv/bin/python -m tests.faults.campaign --edge-kills 200 --broker-kills 10 \\
        --backend-kills 10 --partition-s 60

``tests/faults/test_faults.py`` runs a reduced one in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from busbell import DEVICES_HEADER, GENESIS_PREV, DeviceKey, event_hash, verify_event, write_rows
from tests.conftest import BrokerProcess, free_port

KEY = DeviceKey.from_seed(bytes(range(32)))
BUS = "bus-fault"
WRITER = Path(__file__).with_name("edge_writer.py")
ROOT = Path(__file__).parents[2]


@dataclass
class Result:
    """What a campaign did and found."""

    edge_kills: int = 0
    broker_kills: int = 0
    backend_kills: int = 0
    backend_terms: int = 0
    backend_term_exits: list[int] = field(default_factory=list)
    partitions: int = 0
    partition_s: float = 0.0
    reported: int = 0
    last_seq: int = 0
    stored: int = 0
    lost: list[int] = field(default_factory=list)
    duplicates: int = 0
    gaps: list[int] = field(default_factory=list)
    bad_links: int = 0
    bad_signatures: int = 0
    quarantined: int = 0
    backend_crashes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether nothing was lost, duplicated, broken or crashed."""
        return (
            not (
                self.lost
                or self.duplicates
                or self.gaps
                or self.bad_links
                or self.bad_signatures
                or self.quarantined
                or self.backend_crashes
                or any(self.backend_term_exits)
            )
            and self.stored == self.last_seq
        )


class _Lines:
    """A child's stdout lines through a thread (reading never blocks the campaign)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        out = proc.stdout

        def pump() -> None:
            with out:
                for raw in out:
                    self.q.put(raw.decode())
            self.q.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def get(self, timeout: float) -> str | None:
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            return ""


class Campaign:
    """Processes of one campaign, in ``workdir``."""

    def __init__(self, workdir: Path, rate: float, log: Callable[[str], None]) -> None:
        self.dir = workdir
        self.rate = rate
        self.log = log
        self.prefix = f"fault-{os.getpid()}/busbell/v1"
        (workdir / "broker").mkdir(parents=True, exist_ok=True)
        self.broker = BrokerProcess(free_port(), workdir / "broker")
        self.db = workdir / "ledger.db"
        self.edge_db = workdir / "edge.db"
        write_rows(workdir / "DEVICES.csv", DEVICES_HEADER, [(BUS, KEY.public.hex)])
        self.cfg = workdir / "backend.toml"
        self.cfg.write_text(
            f'[database]\nurl = "sqlite+aiosqlite:///{self.db}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {self.broker.port}\n'
            f'prefix = "{self.prefix}"\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.5\n'
            f'[files]\ndevices = "{workdir / "DEVICES.csv"}"\n'
            f"[api]\nport = {free_port()}\n"
            "[settlement]\nenabled = false\n"
        )
        self.backend: subprocess.Popen[bytes] | None = None
        self.reported: set[int] = set()
        self.result = Result()

    # -- processes ------------------------------------------------------------------------

    def start_backend(self) -> None:
        with (self.dir / "backend.log").open("ab") as err:
            self.backend = subprocess.Popen(
                [sys.executable, "-m", "busbell.cli", "backend", "run", "--config", str(self.cfg)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.dir,
            )

    def check_backend(self) -> None:
        if self.backend is not None and self.backend.poll() is not None:
            self.result.backend_crashes += 1
            self.log(f"backend exited by itself with {self.backend.returncode}: restarting")
            self.start_backend()

    def kill_backend(self) -> None:
        assert self.backend is not None
        self.backend.send_signal(signal.SIGKILL)
        self.backend.wait(30)
        self.result.backend_kills += 1
        self.start_backend()

    def term_backend(self) -> None:
        """SIGTERM the backend under load: it must exit 0 (within its 30 s grace)."""
        assert self.backend is not None
        self.backend.send_signal(signal.SIGTERM)
        try:
            code = self.backend.wait(45)
        except subprocess.TimeoutExpired:
            self.backend.kill()
            code = self.backend.wait(30) or -1
        self.result.backend_terms += 1
        self.result.backend_term_exits.append(code)
        self.start_backend()

    def writer(self, drain: bool = False) -> tuple[subprocess.Popen[bytes], _Lines]:
        args = [sys.executable, str(WRITER), str(self.edge_db), str(self.broker.port), self.prefix,
                "--bus", BUS, "--rate", str(self.rate)]  # fmt: skip
        if drain:
            args.append("--drain")
        with (self.dir / "edge.log").open("ab") as err:
            proc = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        return proc, _Lines(proc)

    def read(self, lines: _Lines, n: int, timeout: float = 30.0) -> None:
        got = 0
        deadline = time.monotonic() + timeout
        while got < n and time.monotonic() < deadline:
            line = lines.get(0.5)
            if line is None:
                raise RuntimeError(f"edge writer ended early: see {self.dir / 'edge.log'}")
            if line.startswith("R "):
                self.reported.add(int(line.split()[1]))
                got += 1

    # -- the campaign -------------------------------------------------------------------------

    def run(
        self,
        edge_kills: int,
        broker_kills: int,
        backend_kills: int,
        partition_s: float,
        backend_terms: int = 0,
    ) -> Result:
        t0 = time.monotonic()
        rng = random.Random(1)
        self.broker.start()
        self.start_backend()
        cycles = max(edge_kills, 1)
        broker_at = set(rng.sample(range(cycles), min(broker_kills, cycles)))
        backend_at = set(rng.sample(range(cycles), min(backend_kills, cycles)))
        term_at = set(rng.sample(range(cycles), min(backend_terms, cycles)))
        partition_at = rng.randrange(cycles) if partition_s > 0 else -1
        for cycle in range(edge_kills):
            self.check_backend()
            proc, lines = self.writer()
            self.read(lines, rng.randint(5, 40))
            if cycle in broker_at:
                self.broker.kill()
                self.result.broker_kills += 1
                self.read(lines, rng.randint(5, 30))
                self.broker.start()
            if cycle in backend_at:
                self.kill_backend()
            if cycle in term_at:
                self.term_backend()
            if cycle == partition_at:
                self.log(f"partition: broker down for {partition_s:.0f} s")
                self.broker.stop()
                end = time.monotonic() + partition_s
                while time.monotonic() < end:
                    self.read(lines, 50, timeout=1.0)
                self.broker.start()
                self.result.partitions += 1
                self.result.partition_s += partition_s
            self.read(lines, rng.randint(5, 60))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            while (line := lines.get(2.0)) is not None:  # what it printed before dying
                if line.startswith("R "):
                    self.reported.add(int(line.split()[1]))
            self.result.edge_kills += 1
            if (cycle + 1) % 20 == 0:
                self.log(f"{cycle + 1} edge kills, {len(self.reported)} events recorded")
        # drain: every recorded event acknowledged
        self.check_backend()
        proc, lines = self.writer(drain=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = lines.get(1.0)
            if line is None:
                break
            if line.startswith("DRAINED"):
                self.result.last_seq = int(line.split()[1])
                break
        proc.wait(30)
        assert self.backend is not None
        self.check_backend()
        self.backend.send_signal(signal.SIGTERM)
        self.backend.wait(60)
        self.broker.stop()
        self.verify()
        self.result.seconds = time.monotonic() - t0
        return self.result

    def verify(self) -> None:
        r = self.result
        r.reported = len(self.reported)
        con = sqlite3.connect(self.db)
        rows = con.execute(
            "SELECT seq, event_hash, prev, raw FROM fare_events WHERE bus_id = ? ORDER BY seq",
            (BUS,),
        ).fetchall()
        r.quarantined = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        con.close()
        seqs = [s for s, _, _, _ in rows]
        r.stored = len(seqs)
        r.duplicates = len(seqs) - len(set(seqs))
        r.lost = sorted(self.reported - set(seqs))
        r.gaps = sorted(set(range(1, r.last_seq + 1)) - set(seqs))[:20]
        prev_hash = GENESIS_PREV
        for seq, h, prev, raw in rows:
            ev = json.loads(raw)
            try:
                verify_event(ev, KEY.public)
            except Exception:
                r.bad_signatures += 1
            if prev != prev_hash or event_hash(ev) != h or ev["seq"] != seq:
                r.bad_links += 1
            prev_hash = h


def run_campaign(
    workdir: Path,
    *,
    edge_kills: int,
    broker_kills: int,
    backend_kills: int,
    partition_s: float,
    backend_terms: int = 0,
    rate: float = 200.0,
    log: Callable[[str], None] = lambda s: None,
) -> Result:
    """Run one campaign in ``workdir`` and return what it found."""
    c = Campaign(workdir, rate, log)
    try:
        return c.run(edge_kills, broker_kills, backend_kills, partition_s, backend_terms)
    finally:
        if c.backend is not None and c.backend.poll() is None:
            c.backend.kill()
        c.broker.kill()


def main() -> int:
    """``python -m tests.faults.campaign``: run a campaign and print what it found."""
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edge-kills", type=int, default=200)
    ap.add_argument("--broker-kills", type=int, default=10)
    ap.add_argument("--backend-kills", type=int, default=10)
    ap.add_argument("--partition-s", type=float, default=60.0)
    ap.add_argument("--backend-terms", type=int, default=0, help="SIGTERMs (must exit 0)")
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="busbell-faults-"))
    r = run_campaign(
        workdir,
        edge_kills=a.edge_kills,
        broker_kills=a.broker_kills,
        backend_kills=a.backend_kills,
        partition_s=a.partition_s,
        backend_terms=a.backend_terms,
        rate=a.rate,
        log=lambda s: print(s, flush=True),
    )
    print(json.dumps({**r.__dict__, "lost": len(r.lost), "gaps": len(r.gaps), "ok": r.ok}))
    print(f"workdir: {workdir}")
    return 0 if r.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
