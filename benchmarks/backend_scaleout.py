"""Ingest scale-out benchmark: N worker processes on a shared subscription, real MQTT.

For each worker count: a fresh PostgreSQL database, N ``run_ingest`` processes with
``[ingest] shared_subscription = true`` on mosquitto (round-robin ``$share``), and
:class:`tests.factories.fare_events.EdgeFleet` uploading pre-signed chains until every
bus is acknowledged (100 buses, 50 events per message).

What is timed (``--load``):

* ``drain`` (the default): the workers subscribe, then are stopped (``SIGSTOP``); the
  fleet publishes every bus's whole chain (QoS 1, each confirmed by the broker), which
  the broker queues for the stopped workers (round-robin: each gets its share); then
  the clock starts, the workers are continued (``SIGCONT``) and the clock stops when the
  fleet has read the last bus's final ack. The timed window holds the workers (decode,
  verify, plan, commit, acks), the PostgreSQL server, the broker (delivering the queued
  messages, the acks) and the fleet reading acks, but no uploading: the load generator
  does not take the CPU it measures. Needs the benchmark's own broker (``--own-broker``
  is implied: its queue limit is lifted, ``max_queued_messages 0``).
* ``live``: the fleet uploads while the workers ingest (a window of 500 events per bus
  ahead of the ack, as edges do), the clock runs from its first publish to the last
  ack; the fleet's CPU is inside the window, on the same cores.

Prints, per run: wall time, events/s, the CPU of the workers (and how long they were
runnable but waiting for a CPU: a busy machine's share, not ingest, when it is large),
the PostgreSQL server (its whole process tree: use ``--private-pg`` so that is only
this benchmark's), the broker (``--own-broker``) and the fleet (this process) inside the
window, each also per event; the records held on the way (rows written to
``fare_pending``: out of order at the worker that took them); re-send requests and edge
retries; bare Ed25519 verification per CPU-second in this process for scale; and each
worker count's events/s as a ratio to the latest run of the first count before it (all
counts run one after the other in one invocation, so ``--workers 1,2,1,2`` gives two
pairs, each 2-worker run against the 1-worker run just before it). Each run's two-core
ceiling is ``2 / (W + O)`` events/s, W the workers' and O everything else's CPU per event
in the window (what two idle cores could do at that cost); beside a ratio, the 2-worker
run's ceiling over the 1-worker run's events/s bounds what a second worker could add.

Rounds are made comparable: every run ingests the same pre-signed chains (signed once,
``--events`` over ``--buses``) into a new database, after a ``CHECKPOINT`` (with
``--private-pg``); the first ``--warmup K`` runs (default 1, of the first worker count)
are printed but not counted. A fresh cluster's first run creates the WAL files later
runs recycle (``+N WAL files`` on its line) and runs with cold caches. With
``--private-pg`` each line also gives the cluster's WAL written (bytes per event), WAL
files made, checkpoints and the autovacuum/autoanalyze runs on the run's tables. The
run's worker logs are in a temporary directory removed when it ends.

At the end a summary of each counted (1 worker, 2 workers) pair: the ratio; the 2-worker
run as a fraction of its two-core ceiling; the bound the 1-worker run's own CPU per
event sets (two cores at that cost over its events/s); and ``2 W / (W + O)``, the ratio
left if one worker used a whole core (with and without the fleet's CPU, the edges'
share): a target above it cannot be met on two cores at these costs.

``--verify runs|every`` sets the workers' ``[ingest] verify`` (default ``runs``, as the
setting's own default). ``--nice N`` (with ``--private-pg``; N < 0 needs root): the
benchmark re-runs itself in a session of its own and sets the nice value of that
session's autogroup (itself, the workers, its broker) and of its PostgreSQL cluster's to
N. The kernel here shares the CPUs between sessions first (``sched_autogroup``): other
sessions' work, niced or not, takes an equal share each, and N < 0 puts the benchmark
ahead of it (the line prints the autogroup's nice value).

Run: ``python -m benchmarks.backend_scaleout --workers 1,2,1,2,1,2 --events 200000
--buses 100 --private-pg [--warmup 1] [--verify every] [--load live]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend._db import create_engine, migrate
from backend._ingest import VERIFY_MODES
from backend._keys import register_device
from benchmarks._private_pg import private_postgres
from benchmarks.backend_ingest import (
    _pg_server,
    _postgres_url,
    bare_verify_cpu_rate,
    drop_database,
    postmaster_pid,
    tree_cpu_s,
)
from busbell import DeviceKey
from busbell._logging import configure_logging
from busbell._mqtt import MqttSettings
from busbell._ports import free_port
from tests.factories.fare_events import EdgeFleet, device_key_for, make_events
from tests.factories.tasks import stop_processes
from tests.factories.workers import INGEST_WORKER

__all__ = ["main"]


def _run_delay_s(pid: int) -> float:
    """Seconds ``pid`` spent runnable but waiting for a CPU (``/proc/PID/schedstat``)."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _autogroup() -> str:
    try:
        with open("/proc/self/autogroup", encoding="ascii") as f:
            return "autogroup " + f.read().split(" ", 1)[1].strip()
    except (OSError, IndexError):
        return "no autogroup"


def _load() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


@contextlib.contextmanager
def _own_broker(workdir: Path) -> Iterator[tuple[int, int]]:
    """A mosquitto of our own on a free port: ``(port, pid)``.

    Default settings but no limit on the messages queued per client (``drain`` queues
    all of a run's messages for stopped workers).
    """
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
        + ("user root\n" if os.geteuid() == 0 else ""),
        encoding="ascii",
    )
    proc = subprocess.Popen(  # noqa: S603 - our own configuration
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("mosquitto did not start")
            time.sleep(0.05)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class _Run:
    verify: str
    load: str
    workers: int
    events: int
    wall: float
    workers_cpu: float
    workers_waiting: float
    pg_cpu: float | None
    broker_cpu: float | None
    fleet_cpu: float
    held: int | None
    resends: int
    retries: int
    bare: float
    pg: _PgDelta | None = None
    warmup: bool = False

    def rate(self) -> float:
        """Events acked per second of wall time."""
        return self.events / self.wall

    def others_cpu(self) -> float:
        """CPU of everything but the workers inside the window (what is known of it)."""
        return (self.pg_cpu or 0.0) + (self.broker_cpu or 0.0) + self.fleet_cpu

    def ceiling(self) -> float:
        """Events/s two idle cores would give at this run's CPU per event (all processes)."""
        return 2 * self.events / (self.workers_cpu + self.others_cpu())

    def full_core_bound(self, *, fleet: bool = True) -> float:
        """``2 W / (W + O)``: the most 2 workers can give over 1 worker that uses a whole
        core (``1 / W`` events/s) at this run's CPU per event, on two cores (``fleet``:
        whether O counts the fleet's CPU)."""
        others = self.others_cpu() - (0.0 if fleet else self.fleet_cpu)
        return 2 * self.workers_cpu / (self.workers_cpu + others)

    def line(self, ref: _Run | None) -> str:
        rate = self.rate()
        us = 1e6 / self.events
        ratio = ""
        if ref:
            ratio = (
                f" ({rate / ref.rate():.2f}x the {ref.workers}-worker run "
                f"before; at most {self.ceiling() / ref.rate():.2f}x: this run's "
                "two-core ceiling over that run's events/s)"
            )
        tag = "WARM-UP (not counted): " if self.warmup else ""
        pgx = "" if self.pg is None else f"; {self.pg.text(self.events)}"
        pg = "n/a" if self.pg_cpu is None else f"{self.pg_cpu:.2f} s ({self.pg_cpu * us:.1f} us/ev)"
        broker = (
            "n/a"
            if self.broker_cpu is None
            else f"{self.broker_cpu:.2f} s ({self.broker_cpu * us:.1f} us/ev)"
        )
        held = "n/a" if self.held is None else f"{self.held}"
        return (
            f"{tag}{self.workers} worker(s), verify={self.verify}, load={self.load}: "
            f"{self.events} events acked in {self.wall:.2f} s wall = "
            f"{rate:,.0f} events/s{ratio}; workers' CPU {self.workers_cpu:.2f} s "
            f"({self.workers_cpu * us:.1f} us/ev), "
            f"{self.workers_waiting:.2f} s runnable waiting for a CPU; PostgreSQL {pg}, "
            f"broker {broker}, fleet (this process) {self.fleet_cpu:.2f} s "
            f"({self.fleet_cpu * us:.1f} us/ev); held on the way {held}; resend "
            f"requests {self.resends}, edge retries {self.retries}; two-core ceiling "
            f"{self.ceiling():,.0f} events/s (2 / all CPU per event), this run at "
            f"{rate / self.ceiling():.0%} of it{pgx}; bare verify "
            f"in this process {self.bare:,.0f}/CPU-s; {_autogroup()}; "
            f"load average {_load()}\n"
        )


_HELD_SQL = (
    "SELECT (SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'fare_pending'), "
    "(SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0) FROM pg_stat_user_tables)"
)
_CLUSTER_SQL = (
    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, "
    "(SELECT count(*) FROM pg_ls_waldir()), "
    "(SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter)"
)


def _psql_row(sql: str, db: str = "postgres") -> list[str] | None:
    """One row of ``sql`` on the benchmark's server (``None`` when it fails)."""
    host, port = _pg_server()
    out = subprocess.run(  # noqa: S603
        ["psql", "-h", host, "-p", port, "-U", "postgres", "-d", db, "-AtF", ",", "-c", sql],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    row = out.stdout.strip().split(",")
    return row if out.returncode == 0 and row != [""] else None


def _held(name: str) -> tuple[int | None, int | None]:
    """Rows written to ``fare_pending`` in database ``name``, and the autovacuum and
    autoanalyze runs on its tables (its statistics, read after the workers' connections
    closed, which flushes them)."""
    row = _psql_row(_HELD_SQL, name)
    try:
        return (int(row[0]), int(row[1])) if row else (None, None)
    except ValueError:
        return None, None


@dataclass(frozen=True)
class _PgDelta:
    """What the PostgreSQL cluster did in a run's window (cluster-wide counters)."""

    wal_bytes: int
    new_wal_files: int
    checkpoints: int
    autovacuums: int | None = None

    def text(self, events: int) -> str:
        av = "n/a" if self.autovacuums is None else str(self.autovacuums)
        return (
            f"WAL {self.wal_bytes / 2**20:,.0f} MiB ({self.wal_bytes / events:,.0f} B/ev), "
            f"{self.new_wal_files:+d} WAL files, {self.checkpoints} checkpoint(s), "
            f"{av} autovacuum/autoanalyze run(s)"
        )


def _cluster() -> tuple[int, int, int] | None:
    """(WAL position in bytes, files in ``pg_wal``, checkpoints so far) of the server."""
    row = _psql_row(_CLUSTER_SQL)
    try:
        return (int(row[0]), int(row[1]), int(row[2])) if row else None
    except ValueError:
        return None


def _autogroup_nice(pid: int, nice: int) -> None:
    """Set the nice value of ``pid``'s autogroup (its session's scheduling group).

    With ``kernel.sched_autogroup_enabled`` (as here) the scheduler first shares the
    CPUs between sessions, each session's group weighing as its autogroup nice says,
    and only then between a session's processes by their own nice: a process's nice
    value does nothing against another session's work.
    """
    with contextlib.suppress(OSError), open(f"/proc/{pid}/autogroup", "w", encoding="ascii") as f:
        f.write(str(nice))


def _signal_all(procs: list[subprocess.Popen[bytes]], sig: signal.Signals) -> None:
    for p in procs:
        os.kill(p.pid, sig)


async def _one(
    n_workers: int,
    chains: dict[str, list[dict[str, Any]]],
    keys: dict[str, DeviceKey],
    host: str,
    port: int,
    *,
    broker_pid: int | None,
    verify: str,
    load: str,
    nice: int,
    private: bool = False,
    warmup: bool = False,
) -> _Run:
    """One run: a fresh database, ``n_workers`` workers, the fleet, the timed window.

    Every run starts from the same state: a new database (migrated, buses registered),
    with ``private`` (the benchmark's own cluster) a ``CHECKPOINT`` (no dirty buffers of
    the set-up carried into the window) and the cluster's WAL, checkpoints and
    autovacuum runs in the window; the same pre-signed ``chains``. Its worker logs and
    database are removed when it ends.
    """
    url, name = _postgres_url()
    prefix = f"bench-{name[-8:]}/busbell/v1"
    engine = create_engine(url)
    await migrate(engine)
    async with engine.begin() as conn:
        for b in chains:
            await register_device(conn, b, keys[b].public)
        data_dir = str((await conn.exec_driver_sql("SHOW data_directory")).scalar())
    await engine.dispose()
    postmaster = postmaster_pid(Path(data_dir))
    if nice and postmaster:
        _autogroup_nice(postmaster, nice)  # the private cluster's (--nice needs --private-pg)
    procs: list[subprocess.Popen[bytes]] = []
    held: int | None = None
    autovacuums: int | None = None
    stopped = False
    with tempfile.TemporaryDirectory(prefix="busbell-scaleout-") as tmpdir:
        logs = [Path(tmpdir) / f"w{i}.log" for i in range(n_workers)]
        try:
            for i, log in enumerate(logs):
                env = dict(
                    os.environ,
                    BUSBELL_DATABASE__URL=url,
                    BUSBELL_MQTT__HOST=host,
                    BUSBELL_MQTT__PORT=str(port),
                    BUSBELL_MQTT__PREFIX=prefix,
                    # stopped while the broker is loaded: not dropped for missed keep-alives
                    BUSBELL_MQTT__KEEPALIVE_S="300",
                    BUSBELL_INGEST__SHARED_SUBSCRIPTION="true",
                    BUSBELL_INGEST__WORKER_ID=f"w{i}-{name[-8:]}",
                    BUSBELL_INGEST__VERIFY=verify,
                )
                with log.open("wb") as err:
                    procs.append(
                        subprocess.Popen(  # noqa: S603, ASYNC220 - our own script; nothing else runs yet
                            [sys.executable, "-c", INGEST_WORKER],
                            env=env,
                            stderr=err,
                            stdout=subprocess.DEVNULL,
                        )
                    )
            deadline = time.monotonic() + 60
            while not all("fare_ingest_subscribed" in p.read_text(errors="replace") for p in logs):
                if time.monotonic() > deadline:
                    raise SystemExit("workers did not subscribe: " + logs[0].read_text()[-2000:])
                await asyncio.sleep(0.1)
            bare = bare_verify_cpu_rate(chains, keys)
            settings = MqttSettings(host=host, port=port, prefix=prefix)
            drain = load == "drain"
            # drain: nothing is lost, a retry would be a fault (not a slow first ack)
            fleet = EdgeFleet(
                settings, chains, batch=50, window=500, retry_s=120.0 if drain else 5.0
            )
            if drain:
                _signal_all(procs, signal.SIGSTOP)
                stopped = True
                await fleet.preload()
            if private:
                _psql_row("CHECKPOINT")
            cluster0 = _cluster() if private else None
            cpu0 = sum(_cpu_s(p.pid) for p in procs)
            waiting0 = sum(_run_delay_s(p.pid) for p in procs)
            pg0 = tree_cpu_s(postmaster) if postmaster else 0.0
            broker0 = _cpu_s(broker_pid) if broker_pid else 0.0
            me0 = time.process_time()
            t0 = time.perf_counter()
            if drain:
                _signal_all(procs, signal.SIGCONT)
                stopped = False
            await fleet.run(timeout_s=1200)
            wall = time.perf_counter() - t0
            me_cpu = time.process_time() - me0
            cpu = sum(_cpu_s(p.pid) for p in procs) - cpu0
            waiting = sum(_run_delay_s(p.pid) for p in procs) - waiting0
            pg_cpu = tree_cpu_s(postmaster) - pg0 if postmaster else None
            broker_cpu = _cpu_s(broker_pid) - broker0 if broker_pid else None
            cluster1 = _cluster() if private else None
        finally:
            if stopped:
                _signal_all(procs, signal.SIGCONT)
            stop_processes(procs, grace_s=20)
            with contextlib.suppress(Exception):
                await asyncio.sleep(0.5)  # the workers' backends flush their statistics
                held, autovacuums = _held(name)
            drop_database(name)
    pg = None
    if cluster0 and cluster1:
        pg = _PgDelta(
            cluster1[0] - cluster0[0],
            cluster1[1] - cluster0[1],
            cluster1[2] - cluster0[2],
            autovacuums,
        )
    return _Run(
        verify,
        load,
        n_workers,
        sum(len(c) for c in chains.values()),
        wall,
        cpu,
        waiting,
        pg_cpu,
        broker_cpu,
        me_cpu,
        held,
        fleet.resend_requests,
        fleet.retries,
        bare,
        pg,
        warmup,
    )


def _summary(pairs: list[tuple[_Run, _Run]]) -> str:
    """Each counted (1 worker, 2 workers) pair: the ratio and what bounds it.

    * ``2w/1w``: the 2-worker run's events/s over the 1-worker run's just before it.
    * ``2w / its ceiling``: how close the 2-worker run came to two idle cores at its own
      CPU per event (``2 / (W + O)``).
    * ``bound (1w costs)``: two cores at the 1-worker run's CPU per event over its
      events/s: the most a second worker could add if it cost no more per event.
    * ``bound (1w at a core)``: ``2 W / (W + O)`` of the 1-worker run: the ratio left if
      one worker used a whole core (no commit waits); a target above it is out of
      reach on two cores whatever the code's latency. Beside it the same without the
      fleet's CPU (the edges' share: on buses, not on the backend's cores).
    """
    if not pairs:
        return ""
    out = [
        "summary (counted pairs): 2w/1w | 2w at % of its two-core ceiling | "
        "bound from the 1w run's CPU per event | bound if 1w used a whole core\n"
    ]
    for one, two in pairs:
        out.append(
            f"  {one.rate():,.0f} -> {two.rate():,.0f} events/s: "
            f"{two.rate() / one.rate():.2f}x | {two.rate() / two.ceiling():.0%} | "
            f"{one.ceiling() / one.rate():.2f}x | {one.full_core_bound():.2f}x "
            f"({one.full_core_bound(fleet=False):.2f}x without the fleet; "
            f"1w worker at {one.workers_cpu / one.wall:.0%} of a core, "
            f"W {one.workers_cpu * 1e6 / one.events:.1f} us/ev, "
            f"O {one.others_cpu() * 1e6 / one.events:.1f} us/ev; runnable waiting for a "
            f"CPU: 1w {one.workers_waiting:.1f} s of {one.wall:.1f}, "
            f"2w {two.workers_waiting:.1f} s (both) of {two.wall:.1f})\n"
        )
    ratios = sorted(two.rate() / one.rate() for one, two in pairs)
    out.append(f"  2w/1w median {ratios[len(ratios) // 2]:.2f}x of {len(ratios)} pair(s)\n")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module doc)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.backend_scaleout")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument(
        "--events",
        type=int,
        default=200_000,
        help="events per run (the same pre-signed chains every run)",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=1,
        metavar="K",
        help="first K runs of the first worker count, printed but not counted "
        "(the server's WAL files and caches, the broker's memory)",
    )
    ap.add_argument("--buses", type=int, default=100)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument(
        "--own-broker",
        action="store_true",
        help="start a mosquitto of our own on a free port (its CPU is measured; "
        "implied by --load drain)",
    )
    ap.add_argument(
        "--load",
        choices=("drain", "live"),
        default="drain",
        help="drain: the broker is loaded before the clock starts, only ingest is timed; "
        "live: the fleet uploads inside the timed window",
    )
    ap.add_argument(
        "--private-pg",
        action="store_true",
        help="a PostgreSQL cluster of the benchmark's own (its CPU is only ours)",
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="nice value of the benchmark's processes (itself, workers, own broker, "
        "private PostgreSQL); below 0 (root): ahead of other work on a shared machine",
    )
    ap.add_argument(
        "--verify",
        choices=VERIFY_MODES,
        default="runs",
        help="the workers' [ingest] verify: one signature per hash-linked run or per record",
    )
    args = ap.parse_args(argv)
    configure_logging("warning")
    # aiomqtt warns whenever more than 10 publishes are in flight: the fleet's 100 buses
    # upload concurrently by design
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    if args.nice and not args.private_pg:
        ap.error("--nice needs --private-pg (the shared server's processes are not ours)")
    if args.nice and os.getsid(0) != os.getpid():
        # a session of our own: its autogroup holds this benchmark's processes only
        argv = sys.argv[1:] if argv is None else argv
        cmd = [sys.executable, "-m", "benchmarks.backend_scaleout", *argv]
        return subprocess.run(cmd, start_new_session=True, check=False).returncode  # noqa: S603
    if args.nice:
        _autogroup_nice(os.getpid(), args.nice)
    with contextlib.ExitStack() as stack:
        if args.private_pg:
            stack.enter_context(private_postgres())
        port, broker_pid = args.port, None
        if args.own_broker or args.load == "drain":
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            port, broker_pid = stack.enter_context(_own_broker(workdir))
        per_bus = args.events // args.buses
        buses = [f"X{i:04d}" for i in range(args.buses)]
        keys = {b: device_key_for(b) for b in buses}
        chains = {b: make_events(b, keys[b], per_bus) for b in buses}  # the same every run
        counts = [int(x) for x in args.workers.split(",")]
        ref: _Run | None = None
        pairs: list[tuple[_Run, _Run]] = []
        for i, n in enumerate([counts[0]] * args.warmup + counts):
            warmup = i < args.warmup
            run = asyncio.run(
                _one(
                    n,
                    chains,
                    keys,
                    args.host,
                    port,
                    broker_pid=broker_pid,
                    verify=args.verify,
                    load=args.load,
                    nice=args.nice,
                    private=args.private_pg,
                    warmup=warmup,
                )
            )
            before = ref if ref is not None and ref.workers < n else None
            sys.stdout.write(run.line(before))
            sys.stdout.flush()
            if warmup:
                continue
            if before is not None and (before.workers, n) == (1, 2):
                pairs.append((before, run))
            if ref is None or run.workers == ref.workers:
                ref = run  # the reference of the runs after it
        sys.stdout.write(_summary(pairs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
