"""``busbell demo``: the whole system on one machine, as separate processes.

The demo generates a simulated scenario (``busbell sim scenario``), then starts the
backend (``busbell backend run``: ingest, rider API, key delivery) on SQLite, one edge
daemon per bus (``busbell edge run``, advert source = a TCP stream), the simulator's
live players (``busbell sim run``: GNSS, doors, trip and stop-call waits over MQTT, the
riders' app waits through the rider API, adverts to each edge) and the fleet web view.

The bell loop: the riders' apps post their waits to the rider API (with an operator token
the demo makes with ``busbell backend api-token``), the edges show them to the drivers and
serve them when the doors open at the stop; the first bus that can drives past a stop
nobody uses while a rider app waits there (``busbell sim ... --skip-stop``): the edge
signs a ``missed`` record, the backend stores it, and the summary at the end says how the
waits ended and which stops were missed (``busbell backend missed-report`` shows them).

Everything talks through MQTT, HTTP and files only, as in production. It uses the broker
on 127.0.0.1:1883 when one answers, and starts a private mosquitto otherwise.

Unless ``--prefix`` is given, each run keeps its topics under a prefix of its own
(``busbell-demo/<run id>/v1``): two demos on one broker, or a demo on a broker that also
carries a real fleet, do not see each other's buses, bells and retained state (and a
demo's backend does not join the fleet backend's shared subscription to fare uploads).
The run clears what it left retained under that prefix when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import webbrowser
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from busbell._mqtt import MqttSettings
from busbell._ports import free_port
from busbell._topics import DEFAULT_PREFIX

__all__ = ["DemoPlan", "main"]

EPILOG = """\
examples:
  busbell demo                                  # default scenario, browser view on :8090
  busbell demo --prefix demo/v1                 # fixed topic prefix (one demo at a time)
  busbell demo --scenario shared_stop_three_routes --speed 10 --no-browser
  busbell demo --duration 120 --workdir /tmp/demo   # stop after two minutes, keep the files
  busbell demo --view-only --broker 10.0.0.5:1883   # just the fleet view of a live broker
  busbell demo --view-only --gtfs gtfs/            # ... with stop names from GTFS

exit status: 0 when the run reached its end, 1 on an error; stopped early it stops
every process it started and exits 128 + the signal: 130 (Ctrl-C), 143 (SIGTERM),
129 (SIGHUP). --view-only exits 0 when stopped.
"""


DEMO_PREFIX = "busbell-demo/{run_id}/v1"
"""The topic prefix of a demo run without ``--prefix``."""

START_LEAD_S = 6.0
START_LEAD_PER_BUS_S = 1.5
"""The scenario starts this long after the backend is started (plus this per bus): the
time the backend and the edges take to come up (a bus that starts later catches up)."""


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _port_open(host, port):
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {host}:{port} after {timeout:.0f} s")
        time.sleep(0.1)


@dataclass
class DemoPlan:
    """Where everything of one demo run lives."""

    workdir: Path
    scenario: str
    seed: int
    speed: float
    broker_host: str
    broker_port: int
    prefix: str
    view_port: int
    api_port: int
    buses: list[str] = field(default_factory=list)
    stream_ports: dict[str, int] = field(default_factory=dict)
    driver_ports: dict[str, int] = field(default_factory=dict)
    """Each bus's driver display page (``[driver_page]`` of its edge) on 127.0.0.1."""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    """Part of every MQTT client id: two demos on one broker must not take over each
    other's sessions (a client id is broker-wide, whatever the topic prefix)."""
    truth: dict[str, Any] = field(default_factory=dict)
    """The generated scenario's ``truth.json``."""
    own_prefix: bool = False
    """Whether ``prefix`` is this run's own (derived from ``run_id``, not given)."""
    skip_bus: str | None = None
    """The bus that drives past a stop (a rider app waits there: a missed stop)."""
    operator_entry: str = ""
    """The backend's ``[api] operators`` entry of the demo's rider app (posts waits)."""
    operator_token: str = ""
    stopped_early: bool = False
    """Whether the run was stopped (Ctrl-C, --duration) before the simulation ended."""
    start_unix: float | None = None
    """The UNIX time at which the scenario's start plays: the one clock of the run (the
    buses' scenario time at ``speed``, which the backend's API keeps too), so a wait a
    rider app makes and the bus passing the stop are stamped on one time line."""

    def __post_init__(self) -> None:
        if not self.prefix:
            self.prefix = DEMO_PREFIX.format(run_id=self.run_id)
            self.own_prefix = True

    @property
    def scn(self) -> Path:
        """The generated scenario directory."""
        return self.workdir / "scenario"

    def mqtt_toml(self, client_id: str) -> str:
        """The ``[mqtt]`` section for one component."""
        return (
            f'[mqtt]\nhost = "{self.broker_host}"\nport = {self.broker_port}\n'
            f'prefix = "{self.prefix}"\nclient_id = "{client_id}"\n'
        )

    @property
    def signing_key_path(self) -> Path:
        """The backend's deny-list signing key of this run."""
        return self.workdir / "backend-signing.pem"

    def denylist_public_key(self) -> str:
        """The public half of the deny-list key (hex), made on first use."""
        from busbell._signing import DeviceKey

        path = self.signing_key_path
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            DeviceKey.generate().save(path)
        return DeviceKey.load(path).public.hex

    def backend_toml(self) -> str:
        """The backend's config file (its deny-list key is made here, before any process)."""
        self.denylist_public_key()
        s = self.scn
        return (
            f'[database]\nurl = "sqlite+aiosqlite:///{self.workdir / "backend.db"}"\n\n'
            f"{self.mqtt_toml(f'demo-{self.run_id}-backend')}\n"
            f'[files]\ndevices = "{s / "DEVICES.csv"}"\nriders = "{s / "RIDERS.csv"}"\n'
            f'gtfs = "{s / "gtfs"}"\n\n'
            f'[keys]\nfleet_keys_file = "{s / "FLEET.csv"}"\n'
            f'signing_key = "{self.signing_key_path}"\n\n'
            f'[api]\nhost = "127.0.0.1"\nport = {self.api_port}\n'
            + (f"operators = [{json.dumps(self.operator_entry)}]\n" if self.operator_entry else "")
            + self._api_clock_toml()
        )

    def _api_clock_toml(self) -> str:
        """The API's clock: the buses' (the scenario's date at ``speed``), not the wall's.

        The buses stamp what they sign (a missed stop's ``passed.t``) with their GNSS
        clock, which reads the scenario's time; the rider API stamps a wait (``t``,
        ``expires_t``) with its own. On the wall clock a missed stop's wait was made
        months after the bus passed; on this one it is made before, as it was. With it,
        ``[waits] cutoff_stops = 0``: the riders' waits are not refused for a bus too close.
        """
        if self.start_unix is None or "t_start" not in self.truth:
            return ""
        return (
            f"clock_t = {float(self.truth['t_start'])!r}\n"
            f"clock_at_unix = {self.start_unix!r}\nclock_speed = {float(self.speed)!r}\n"
            # The scenarios' riders ask for the bus as they reach the stop, often with it a
            # stop or two away: the rule refusing those (cutoff_stops) is waived, as it was
            # in effect when the API's clock was not the buses' (their positions were stale).
            "\n[waits]\ncutoff_stops = 0\n"
        )

    def sim_args(self, bus: str) -> list[str]:
        """``busbell sim run`` arguments for one bus (its adverts go to its edge)."""
        args = [
            *("sim", "run", "--broker", f"{self.broker_host}:{self.broker_port}"),
            *("--bus", bus, "--scenario", self.scenario, "--seed", str(self.seed)),
            *("--speed", str(self.speed), "--prefix", self.prefix, "--scenario-time"),
            *("--adv-target", f"tcp://127.0.0.1:{self.stream_ports[bus]}"),
        ]
        if self.start_unix is not None:
            args += ["--start-unix", repr(self.start_unix)]
        if self.skip_bus is not None:
            args += ["--skip-stop", self.skip_bus]
        if self.operator_token:
            # the riders' phones: their waits go through the rider API
            args += ["--waits-api", f"http://127.0.0.1:{self.api_port}"]
            args += ["--api-token", self.operator_token]
        return args

    def edge_toml(self, bus: str) -> str:
        """One bus's edge config file."""
        s = self.scn
        return (
            f'bus_id = "{bus}"\ndevice_key = "{s / "keys" / f"{bus}.pem"}"\n'
            f'fleet_keys = "{s / "FLEET.csv"}"\ngtfs = "{s / "gtfs"}"\n'
            f'store = "{self.workdir / f"{bus}.fares.db"}"\nsource = "stream"\n'
            f'denylist_public_key = "{self.denylist_public_key()}"\n\n'
            f"{self.mqtt_toml(f'demo-{self.run_id}-edge-{bus}')}\n"
            f'[stream]\nhost = "127.0.0.1"\nport = {self.stream_ports[bus]}\n\n'
            "[status]\ninterval_s = 2.0\n"
            + (
                f'\n[driver_page]\nenabled = true\nhost = "127.0.0.1"\n'
                f"port = {self.driver_ports[bus]}\n"
                if bus in self.driver_ports
                else ""
            )
        )

    def driver_urls(self) -> dict[str, str]:
        """The driver display page of each bus."""
        return {b: f"http://127.0.0.1:{p}/" for b, p in self.driver_ports.items()}


class _Procs:
    """The demo's child processes; all are ended together."""

    def __init__(self, logdir: Path, out: IO[str]) -> None:
        self.logdir = logdir
        self.out = out
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], *, show: bool = True) -> subprocess.Popen[bytes]:
        log = self.logdir / f"{name}.log"
        with log.open("ab") as f:
            proc = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
                [sys.executable, "-m", "busbell.cli", *args],
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        if show:
            self.out.write(f"  started {name:<22} pid {proc.pid:<7} log {log}\n")
        return proc

    def failed(self) -> list[str]:
        return [
            n
            for n, p in self.procs.items()
            if p.poll() is not None and p.returncode != 0 and not n.startswith("sim-")
        ]

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _scenario(plan: DemoPlan, procs: _Procs, out: IO[str]) -> None:
    """Generate the scenario; the first bus that can drives past a stop nobody uses."""
    args = ["sim", "scenario", "--name", plan.scenario, "--seed", str(plan.seed)]
    args += ["--out", str(plan.scn)]
    proc = procs.start("scenario", args)
    if proc.wait() != 0:
        raise RuntimeError(f"scenario generation failed: see {procs.logdir / 'scenario.log'}")
    truth = json.loads((plan.scn / "truth.json").read_text())
    plan.buses = [b["bus_id"] for b in truth["buses"]]
    for bus in plan.buses:
        # 2 (a usage error) when every stop of this bus's run has riders: try the next
        attempt = f"scenario-skip-{bus}"
        # (not listed: a bus that cannot skip says nothing useful; the one that can is said)
        status = procs.start(attempt, [*args, "--skip-stop", bus], show=False).wait()
        del procs.procs[attempt]  # a bus that cannot skip is no failure of the demo
        if status == 0:
            truth = json.loads((plan.scn / "truth.json").read_text())
            plan.skip_bus = bus
            (skipped,) = truth["skipped_stops"]
            out.write(
                f"  {bus} will drive past stop {skipped['stop_id']} where a rider app waits: "
                "a missed stop, signed by the bus\n"
            )
            break
    else:
        out.write("  (every bus of this scenario halts at every stop: no missed stop)\n")
    plan.truth = truth


def _operator(plan: DemoPlan, procs: _Procs) -> None:
    """An operator token for the demo's rider app (it posts the riders' waits)."""
    name = "api-token"
    proc = procs.start(name, ["backend", "api-token", "demo-rider-app", "--scopes", "riders:write"])
    if proc.wait() != 0:
        raise RuntimeError(f"no operator token: see {procs.logdir / f'{name}.log'}")
    text = (procs.logdir / f"{name}.log").read_text()
    token = re.search(r"^token: (\S+)$", text, re.M)
    entry = re.search(r'^operators = \["([^"]+)"\]$', text, re.M)
    if token is None or entry is None:
        raise RuntimeError(f"no operator token in {procs.logdir / f'{name}.log'}")
    plan.operator_token, plan.operator_entry = token.group(1), entry.group(1)


def _wait_log(log: Path, event: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until a component logged ``event`` (its structured logs are JSON lines)."""
    deadline = time.monotonic() + timeout
    while f'"{event}"' not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            raise RuntimeError(f"{log.stem} exited with {proc.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{log.stem} did not log {event} within {timeout:.0f} s")
        time.sleep(0.1)


async def _clear_retained(plan: DemoPlan) -> None:
    """Clear what an earlier run on this broker and prefix left retained for these buses.

    A demo's edges start with empty fare stores, so an old ``fares/ack`` (or an old
    ``online`` status, which :func:`_wait_online` would believe) must not greet them; nor
    an old trip sign-on, or an old deny list (global under the prefix) whose higher
    version would make the edges ignore this run's backend's list, or revoke a bus.
    """
    from busbell._mqtt import MqttSession
    from busbell._topics import Topics

    topics = Topics(plan.prefix)
    settings = MqttSettings(host=plan.broker_host, port=plan.broker_port, prefix=plan.prefix)
    async with MqttSession(settings, f"demo-{plan.run_id}-clear", clean_start=True) as s:
        for bus in plan.buses:
            for topic in (
                topics.status(bus),
                topics.display(bus),
                topics.occupancy(bus),
                topics.fares_ack(bus),
                topics.fleet_keys(bus),
                topics.vehicle(bus, "trip"),
            ):
                await s.publish(topic, b"", qos=1, retain=True)
        await s.publish(topics.denylist(), b"", qos=1, retain=True)


async def _sweep_retained(plan: DemoPlan, limit_s: float) -> int:
    """Clear every message retained under the run's own prefix; returns how many.

    Only for a prefix that is this run's alone: nothing else publishes there. The
    retained messages come right after the SUBACK, before a message published after it
    (all at QoS 0, in order), so the marker ends the collection.
    """
    from busbell._mqtt import MqttSession

    settings = MqttSettings(host=plan.broker_host, port=plan.broker_port, prefix=plan.prefix)
    marker = f"{plan.prefix}/demo/swept"
    retained: set[str] = set()
    async with MqttSession(settings, f"demo-{plan.run_id}-sweep", clean_start=True) as s:
        await s.subscribe([f"{plan.prefix}/#"], qos=0)
        await s.publish(marker, b"", qos=0)
        async with asyncio.timeout(limit_s):
            async for m in s.messages():
                if m.topic == marker:
                    break
                if m.retain and m.payload:
                    retained.add(m.topic)
        for topic in sorted(retained):
            await s.publish(topic, b"", qos=1, retain=True)
    return len(retained)


async def _wait_online(plan: DemoPlan, limit_s: float) -> None:
    """Wait until every edge's retained status says online (connected and subscribed)."""
    from busbell._mqtt import MqttSession
    from busbell._topics import Topics

    topics = Topics(plan.prefix)
    settings = MqttSettings(host=plan.broker_host, port=plan.broker_port, prefix=plan.prefix)
    waiting = set(plan.buses)
    async with MqttSession(settings, f"demo-{plan.run_id}-wait", clean_start=True) as s:
        await s.subscribe([topics.status(b) for b in plan.buses])
        try:
            async with asyncio.timeout(limit_s):
                async for m in s.messages():
                    parsed = topics.parse(m.topic)
                    with contextlib.suppress(ValueError):
                        if parsed and json.loads(m.payload or b"{}").get("state") == "online":
                            waiting.discard(parsed.ids["bus"])
                    if not waiting:
                        return
        except TimeoutError:
            raise RuntimeError(
                f"edges not online after {limit_s:.0f} s: {sorted(waiting)}"
            ) from None


async def _view(plan: DemoPlan) -> None:
    from busbell._webview import serve_view, stop_names

    settings = MqttSettings(host=plan.broker_host, port=plan.broker_port, prefix=plan.prefix)
    await serve_view(settings, "127.0.0.1", plan.view_port, stops=stop_names(plan.scn / "gtfs"))


def _summary(plan: DemoPlan, out: IO[str]) -> None:
    import sqlite3

    db = plan.workdir / "backend.db"
    if not db.exists():
        return
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            # a bus's chain is its fare events and its missed-stop records
            rows = conn.execute(
                "SELECT bus_id, COUNT(*), MAX(seq), SUM(missed) FROM ("
                " SELECT bus_id, seq, 0 AS missed FROM fare_events"
                " UNION ALL SELECT bus_id, seq, 1 AS missed FROM missed_stops"
                ") GROUP BY bus_id ORDER BY bus_id"
            ).fetchall()
            quarantined = conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
            journeys = conn.execute("SELECT COUNT(*) FROM journeys").fetchone()[0]
            charged = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(fare_krw), 0) FROM charges"
            ).fetchone()
        except sqlite3.Error as exc:
            out.write(f"  (no ledger summary: {exc})\n")
            return
    out.write("\nfare events stored by the backend:\n")
    if not rows:
        # a bus uploads a ride once it closes (the rider alighted): a minute in, none has
        out.write("  none yet (a bus uploads a ride when the rider has alighted)\n")
    for bus, n, top, missed in rows:
        of_them = f" ({missed} of them a missed stop)" if missed else ""
        out.write(f"  {bus:<16} {n:>5} events, up to seq {top}{of_them}\n")
    out.write(f"  quarantined: {quarantined}\n")
    out.write(f"journeys settled: {journeys}; charges: {charged[0]} totalling {charged[1]} KRW\n")
    _bells_summary(plan, db, out)
    if (plan.scn / "JOURNEYS.jsonl").exists():
        from busbell._demo_report import expected_vs_settled

        for line in expected_vs_settled(plan.scn, db, stopped_early=plan.stopped_early):
            out.write(line + "\n")


def _bells_summary(plan: DemoPlan, db: Path, out: IO[str]) -> None:
    """The bell loop: the riders' waits and how they ended, the missed stops recorded."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            states = dict(
                conn.execute("SELECT state, COUNT(*) FROM rider_waits GROUP BY state").fetchall()
            )
            passed_by = conn.execute("SELECT COALESCE(SUM(missed), 0) FROM rider_waits").fetchone()
            missed = conn.execute(
                "SELECT bus_id, stop_id, route_id FROM missed_stops ORDER BY passed_t"
            ).fetchall()
        except sqlite3.Error as exc:
            out.write(f"  (no bell summary: {exc})\n")
            return
    words = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"
    out.write(f"rider-app waits: {sum(states.values())} ({words}); ")
    out.write(f"buses passed a waiting rider by {passed_by[0]} time(s)\n")
    out.write(f"missed stops recorded (signed by the bus): {len(missed)}\n")
    for bus, stop, route in missed:
        out.write(f"  {bus} passed {stop} on route {route}\n")
    if missed:
        out.write(
            f"  see: busbell backend missed-report --db sqlite+aiosqlite:///{db} "
            f"--gtfs {plan.scn / 'gtfs'} --since {int(plan.truth.get('t_start', 0))}\n"
        )


def run_demo(a: argparse.Namespace, out: IO[str]) -> int:
    """Run the demo until its duration ends, the simulation ends (+ grace) or Ctrl-C."""
    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="busbell-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logdir = workdir / "logs"
    logdir.mkdir(exist_ok=True)
    from busbell._logging import configure_logging

    # this process's own logs (the fleet view's, its MQTT sessions') go beside the
    # others', not between the lines the demo prints
    view_log = (logdir / "demo.log").open("a", encoding="utf-8")
    configure_logging("info", json=True, stream=view_log)
    procs = _Procs(logdir, out)
    host, _, port = a.broker.partition(":")
    broker_host, broker_port = host or "127.0.0.1", int(port or 1883)
    plan = DemoPlan(
        workdir=workdir,
        scenario=a.scenario,
        seed=a.seed,
        speed=a.speed,
        broker_host=broker_host,
        broker_port=broker_port,
        prefix=a.prefix or "",
        view_port=a.view_port,
        api_port=a.api_port or free_port(),
    )
    out.write(
        f"busbell demo: scenario {a.scenario} (seed {a.seed}), files in {workdir}\n"
        f"  MQTT topics under {plan.prefix}/"
        f"{' (this run only; cleared when it stops)' if plan.own_prefix else ''}\n"
    )
    broker: subprocess.Popen[bytes] | None = None
    # The children run in their own sessions (a Ctrl-C reaches only the demo, which stops
    # them in order); SIGTERM and SIGHUP must stop them too, not leave them running.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        if not _port_open(broker_host, broker_port):
            mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
            if not os.path.exists(mosquitto):
                out.write("no MQTT broker answers and mosquitto is not installed\n")
                return 1
            plan.broker_host, plan.broker_port = "127.0.0.1", free_port()
            conf = workdir / "mosquitto.conf"
            conf.write_text(f"listener {plan.broker_port} 127.0.0.1\nallow_anonymous true\n")
            with (logdir / "mosquitto.log").open("ab") as f:
                broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=f, stderr=f)  # noqa: S603
            _wait_port("127.0.0.1", plan.broker_port, broker, 10)
            out.write(f"  started a private mosquitto on port {plan.broker_port}\n")
        _scenario(plan, procs, out)
        _operator(plan, procs)
        from busbell._demo_report import demo_length_line

        out.write(demo_length_line(plan.truth, plan.speed, a.grace) + "\n")
        if not plan.own_prefix:  # a new prefix holds nothing yet
            asyncio.run(_clear_retained(plan))
        # the run's one clock: the scenario's start plays once every process is up
        plan.start_unix = round(time.time() + START_LEAD_S + START_LEAD_PER_BUS_S * len(plan.buses))
        (workdir / "backend.toml").write_text(plan.backend_toml())
        backend = procs.start(
            "backend", ["backend", "run", "--config", str(workdir / "backend.toml")]
        )
        _wait_port("127.0.0.1", plan.api_port, backend, 60)
        for bus in plan.buses:
            plan.stream_ports[bus] = free_port()
            plan.driver_ports[bus] = free_port()  # never the stream's: both bound later
            cfg = workdir / f"edge-{bus}.toml"
            cfg.write_text(plan.edge_toml(bus))
            edge = procs.start(f"edge-{bus}", ["edge", "run", "--config", str(cfg)])
            _wait_port("127.0.0.1", plan.stream_ports[bus], edge, 60)
            _wait_port("127.0.0.1", plan.driver_ports[bus], edge, 60)
        _wait_log(logdir / "backend.log", "fare_ingest_subscribed", backend, 60)
        asyncio.run(_wait_online(plan, 60))
        sims = [procs.start(f"sim-{bus}", plan.sim_args(bus)) for bus in plan.buses]
        url = f"http://127.0.0.1:{plan.view_port}/"
        drivers = "".join(f"  {bus}: {u}\n" for bus, u in plan.driver_urls().items())
        out.write(
            f"\nfleet view: {url}\ndriver display (the terminal in each bus's cab):\n"
            f"{drivers}rider API:  http://127.0.0.1:{plan.api_port}/docs\n"
            f"follow it:  busbell tail --broker {plan.broker_host}:{plan.broker_port}"
            f" --prefix {plan.prefix}\nCtrl-C stops everything.\n"
        )
        out.flush()
        return asyncio.run(_supervise(plan, procs, sims, a, url, out))
    except KeyboardInterrupt as exc:
        plan.stopped_early = True
        return stopped_status(exc)
    except RuntimeError as exc:
        out.write(f"busbell demo: {exc}\n")
        return 1
    finally:
        # a second Ctrl-C or SIGTERM must not cut the clean-up short (it is bounded:
        # children get 15 s before SIGKILL)
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            if procs.procs:
                out.write("stopping the demo's processes\n")
                out.flush()
            procs.stop()
            if broker is not None:
                broker.terminate()
                broker.wait(10)
            elif plan.own_prefix and "backend" in procs.procs:  # nothing published before
                _sweep(plan, out)
            _summary(plan, out)
            out.write(f"logs: {logdir}\n")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            configure_logging("info")
            view_log.close()


def _sweep(plan: DemoPlan, out: IO[str]) -> None:
    """Clear the run's retained messages from the shared broker (best effort)."""
    from busbell._errors import UplinkError

    try:
        n = asyncio.run(_sweep_retained(plan, 30))
    except (UplinkError, TimeoutError, OSError) as exc:
        out.write(f"  retained messages under {plan.prefix} not cleared: {exc}\n")
        return
    out.write(f"  cleared {n} retained messages under {plan.prefix}\n")


class _Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the demo runs so that it stops its children."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, frame: object) -> None:
    raise _Signalled(signum)


def stopped_status(exc: KeyboardInterrupt) -> int:
    """The exit status of a demo run stopped before its end: 128 + the signal's number.

    As a shell reports a process a signal ended: 130 after Ctrl-C (SIGINT), 143 after
    SIGTERM, 129 after SIGHUP, although the demo caught the signal and stopped its
    processes cleanly first. A run that reaches its end exits 0; ``--view-only``, which
    has no end of its own, exits 0 when stopped.
    """
    return 128 + (exc.signum if isinstance(exc, _Signalled) else signal.SIGINT)


async def _supervise(  # noqa: PLR0917 - private helper of run_demo
    plan: DemoPlan,
    procs: _Procs,
    sims: list[subprocess.Popen[bytes]],
    a: argparse.Namespace,
    url: str,
    out: IO[str],
) -> int:
    view = asyncio.create_task(_view(plan), name="busbell.demo.view")
    if not a.no_browser:
        with contextlib.suppress(Exception):
            webbrowser.open(url)
    start = time.monotonic()
    sims_done_at: float | None = None
    try:
        while True:
            await asyncio.sleep(0.5)
            if view.done():
                view.result()
            failed = procs.failed()
            if failed:
                out.write(f"busbell demo: {', '.join(failed)} stopped; see the logs\n")
                return 1
            if a.duration and time.monotonic() - start >= a.duration:
                plan.stopped_early = sims_done_at is None
                return 0
            if sims_done_at is None and all(p.poll() is not None for p in sims):
                sims_done_at = time.monotonic()
                out.write("simulation finished; letting the edges upload and close segments\n")
                out.flush()
            if sims_done_at is not None and time.monotonic() - sims_done_at >= a.grace:
                return 0
    finally:
        view.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await view


def main(argv: Sequence[str], prog: str = "busbell demo") -> int:
    """Entry point of ``busbell demo``."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run the whole busbell system on this machine: simulated buses and "
        "riders, one edge daemon per bus, the backend, and a live fleet view in a browser.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scenario", default="transfer_two_buses", help="simulator scenario")
    p.add_argument("--seed", type=int, default=1, help="scenario seed (default 1)")
    p.add_argument("--speed", type=float, default=5.0, help="simulation time factor (default 5)")
    p.add_argument("--broker", default="127.0.0.1:1883", help="MQTT broker HOST:PORT")
    p.add_argument(
        "--prefix",
        default="",
        help="MQTT topic prefix (default: busbell-demo/<run id>/v1, new for every run, so "
        "demos sharing a broker stay apart; with --view-only: the fleet's "
        f"{DEFAULT_PREFIX}). A demo given a prefix clears its buses' retained topics and "
        "the deny list under it when it starts: never give it a live fleet's prefix",
    )
    p.add_argument("--view-port", type=int, default=8090, help="fleet view port (default 8090)")
    p.add_argument("--api-port", type=int, default=0, help="rider API port (default: free)")
    p.add_argument("--workdir", help="keep all files here (default: a new temp directory)")
    p.add_argument("--duration", type=float, default=0, help="stop after N seconds (0: no)")
    p.add_argument("--grace", type=float, default=20, help="seconds to run on after the sim ends")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--view-only", action="store_true", help="only serve the fleet view")
    p.add_argument("--gtfs", help="with --view-only: GTFS directory, for stop names")
    a = p.parse_args(list(argv))
    if a.view_only:
        host, _, port = a.broker.partition(":")
        prefix = a.prefix or DEFAULT_PREFIX
        settings = MqttSettings(host=host or "127.0.0.1", port=int(port or 1883), prefix=prefix)
        from busbell._errors import ContractError
        from busbell._webview import serve_view, stop_names

        try:
            stops = stop_names(a.gtfs)
        except ContractError as exc:
            sys.stderr.write(f"busbell demo: {exc}\n")
            return 2
        sys.stdout.write(f"fleet view: http://127.0.0.1:{a.view_port}/ (topics under {prefix})\n")
        sys.stdout.flush()

        previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(serve_view(settings, "127.0.0.1", a.view_port, stops=stops))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0
    return run_demo(a, sys.stdout)
