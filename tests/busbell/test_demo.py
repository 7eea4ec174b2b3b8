"""``busbell demo`` end to end: every component as a real process, and the browser view.

The simulator plays a scenario live at 40x speed to one edge daemon per bus over MQTT and
TCP; the edges record and upload signed events; the backend ingests, settles and charges.
Headless Chromium renders the fleet view while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest

from busbell._mqtt import MqttSession, MqttSettings
from tests.conftest import free_port

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(240)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def wait_state(port: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/state", timeout=2) as r:
                last = json.loads(r.read())
            kinds = {t["kind"] for t in last["topics"]}
            if {"status", "occupancy"} <= kinds:
                return last
        except OSError:
            pass
        time.sleep(0.5)
    return last


def driver_state(url: str, timeout: float) -> dict[str, Any]:
    """A driver page's ``/state`` once it holds a display model with a route."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}state", timeout=2) as r:
                last = json.loads(r.read())
            if (last.get("display") or {}).get("route_id"):
                return last
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"no display model on {url}: {last}")


async def _retain(broker: Any, retained: dict[str, bytes]) -> None:
    settings = MqttSettings(host=broker.host, port=broker.port)
    async with MqttSession(settings, "t-stale-demo", clean_start=True) as s:
        for topic, payload in retained.items():
            await s.publish(topic, payload, qos=1, retain=True)


async def _retained_under(broker: Any, prefix: str) -> dict[str, bytes]:
    """What the broker keeps retained under ``prefix`` (all of it: the retained messages
    come right after the SUBACK, before the marker published after it)."""
    settings = MqttSettings(host=broker.host, port=broker.port)
    marker = f"{prefix}/test/marker"
    found: dict[str, bytes] = {}
    async with MqttSession(settings, f"t-retained-{os.getpid()}", clean_start=True) as s:
        await s.subscribe([f"{prefix}/#"], qos=0)
        await s.publish(marker, b"", qos=0)
        async with asyncio.timeout(60):
            async for m in s.messages():
                if m.topic == marker:
                    return found
                if m.retain and m.payload:
                    found[m.topic] = m.payload
    return found


def _open_events(client: httpx.Client, port: int, proc: subprocess.Popen[str]) -> httpx.Response:
    """Open the fleet view's event stream (it starts listening just after its line)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return client.send(
                client.build_request("GET", f"http://127.0.0.1:{port}/events"), stream=True
            )
        except httpx.ConnectError:
            assert proc.poll() is None, "the demo exited"
            assert time.monotonic() < deadline, "the fleet view does not listen"
            time.sleep(0.2)


def _kill_orphans(pids: dict[str, int]) -> None:
    """After the demo itself had to be killed: end its children (own sessions) too."""
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _assert_gone(pids: dict[str, int]) -> None:
    for name, pid in pids.items():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        with open(f"/proc/{pid}/stat") as f:  # a zombie not yet reaped by init is gone too
            assert f.read().split()[2] == "Z", f"{name} (pid {pid}) still runs"


@pytest.mark.browser
def test_demo_runs_the_whole_system(shared_broker: Any, topic_prefix: str, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (run .ci/run, or apt-get install chromium)")
    view_port = free_port()
    work = tmp_path / "demo"
    # what an earlier run left retained must not greet this run: an ack beyond its empty
    # fare stores, a trip sign-on, a deny list of a higher version revoking the bus
    bus = f"{topic_prefix}/buses/bus-55-01"
    stale_trip = {"t": time.time() - 3600, "route_id": "R-stale", "direction_id": 0}
    stale_denylist = {"version": 999, "rids": [], "devices": ["bus-55-01"]}
    asyncio.run(
        _retain(
            shared_broker,
            {
                f"{bus}/fares/ack": b'{"upto_seq":99}',
                f"{bus}/vehicle/trip": json.dumps({**stale_trip, "trip_id": "T-stale"}).encode(),
                f"{topic_prefix}/denylist": json.dumps(stale_denylist).encode(),
            },
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "busbell.cli", "demo", "--scenario", "quiet_route"]
        + ["--speed", "40", "--no-browser", "--grace", "10", "--duration", "150"]
        + ["--prefix", topic_prefix, "--workdir", str(work), "--view-port", str(view_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        state = wait_state(view_port, 90)
        kinds = {t["kind"] for t in state.get("topics", [])}
        assert {"status", "occupancy"} <= kinds, state
        status = next(t for t in state["topics"] if t["kind"] == "status")
        assert status["ids"]["bus"] == "bus-55-01"
        assert status["body"]["state"] == "online"
        # the bus's driver display page follows the same bus
        page = tomllib.loads((work / "edge-bus-55-01.toml").read_text())["driver_page"]
        driver_url = f"http://127.0.0.1:{page['port']}/"
        model = driver_state(driver_url, 30)["display"]
        assert (model["bus_id"], model["route_id"]) == ("bus-55-01", "55"), model
        with urllib.request.urlopen(driver_url, timeout=5) as r:
            assert b"app.js" in r.read()
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic"]
            + ["--no-first-run", "--disable-background-networking", "--disable-component-update"]
            + ["--disable-sync", f"--user-data-dir={tmp_path / 'chrome'}"]
            + ["--virtual-time-budget=4000", "--dump-dom", f"http://127.0.0.1:{view_port}/"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert 'data-bus="bus-55-01"' in dom
        assert re.search(r'class="big occupancy">\d+<', dom), dom[:2000]
        out, _ = proc.communicate(timeout=200)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"  bus-55-01: {driver_url}\n" in out
    m = re.search(r"bus-55-01\s+(\d+) events, up to seq (\d+)", out)
    assert m, out
    assert int(m.group(1)) == int(m.group(2)) >= 5
    assert "quarantined: 0" in out
    # the bell loop: the riders' app waits went through the rider API and were served
    w = re.search(r"rider-app waits: (\d+) \((\d+) served\)", out)
    assert w, out
    assert int(w.group(1)) == int(w.group(2)) >= 1
    assert "every bus of this scenario halts at every stop: no missed stop" in out
    j = re.search(r"journeys settled: (\d+); charges: (\d+) totalling (\d+) KRW", out)
    assert j, out
    truth = [
        json.loads(line) for line in (work / "scenario" / "JOURNEYS.jsonl").read_text().splitlines()
    ]
    assert int(j.group(1)) == len(truth)
    assert int(j.group(3)) > 0
    edge_log = (work / "logs" / "edge-bus-55-01.log").read_text()
    assert "fare_ack_beyond_last" not in edge_log
    assert "fleet_keys_running_out" not in edge_log
    assert "T-stale" not in edge_log
    assert "bus_device_revoked" not in edge_log


def _plan_args(workdir: Path) -> dict[str, Any]:
    """``DemoPlan`` arguments of a one-bus quiet_route demo on the shared broker, but the prefix."""
    return {
        "workdir": workdir,
        "scenario": "quiet_route",
        "seed": 1,
        "speed": 5.0,
        "broker_host": "127.0.0.1",
        "broker_port": 1883,
        "view_port": 8090,
        "api_port": 8080,
        "stream_ports": {"bus-55-01": 9000},
    }


def test_two_demos_on_one_broker_use_different_client_ids(tmp_path: Path) -> None:
    """A client id is broker-wide: two demos (or a demo and the test suite) on one broker
    must not take over each other's MQTT sessions, whatever their topic prefixes."""
    from busbell._demo import DemoPlan

    def ids(plan: DemoPlan) -> set[str]:
        text = plan.backend_toml() + plan.edge_toml("bus-55-01")
        return set(re.findall(r'client_id = "([^"]+)"', text))

    args = _plan_args(tmp_path)
    first, second = (
        ids(DemoPlan(prefix="busbell/v1", **args)),
        ids(DemoPlan(prefix="busbell/v1", **args)),
    )
    assert len(first) == len(second) == 2
    assert not first & second


def test_the_demo_backend_api_keeps_the_buses_clock(tmp_path: Path) -> None:
    """The buses play the scenario's date at --speed from ``start_unix``; the backend's API
    clock is configured to read the same (every sim gets the same start)."""
    from backend.config import ApiSettings
    from busbell._demo import DemoPlan

    plan = DemoPlan(prefix="", **_plan_args(tmp_path))
    plan.truth = {"t_start": 1_773_116_390.0}
    assert "clock_t" not in plan.backend_toml()  # no start chosen: the wall clock
    assert "--start-unix" not in plan.sim_args("bus-55-01")
    plan.start_unix = time.time() + 10
    backend = tomllib.loads(plan.backend_toml())
    api = backend["api"]
    # the scenarios' riders ask as they reach the stop: not refused for a bus too close
    assert backend["waits"] == {"cutoff_stops": 0}
    clock = ApiSettings(
        clock_t=api["clock_t"], clock_at_unix=api["clock_at_unix"], clock_speed=api["clock_speed"]
    ).clock()
    assert clock() == pytest.approx(1_773_116_390.0 - 10 * plan.speed, abs=plan.speed)
    with pytest.raises(ValueError, match="go together"):
        ApiSettings(clock_t=1.0)
    with pytest.raises(ValueError, match="positive"):
        ApiSettings(clock_t=1.0, clock_at_unix=2.0, clock_speed=0.0)
    args = plan.sim_args("bus-55-01")
    assert args[args.index("--start-unix") + 1] == repr(plan.start_unix)
    assert args[args.index("--speed") + 1] == str(plan.speed)


def test_the_summary_of_a_ledger_without_events_says_none_yet(tmp_path: Path) -> None:
    """Stopped a minute in, the list under 'fare events stored by the backend:' was empty."""
    import io

    from backend._db import create_engine, migrate
    from busbell._demo import DemoPlan, _summary

    async def ledger() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'backend.db'}")
        await migrate(engine)
        await engine.dispose()

    asyncio.run(ledger())
    out = io.StringIO()
    _summary(DemoPlan(prefix="", **_plan_args(tmp_path)), out)
    assert "fare events stored by the backend:\n  none yet (a bus uploads a ride when" in (
        out.getvalue()
    )


def test_a_demo_without_a_prefix_gets_one_of_its_own(tmp_path: Path) -> None:
    """Two demos on one broker must not see each other's buses, bells and retained state:
    without --prefix each run has its own topic prefix; a given prefix is kept."""
    from busbell._demo import DemoPlan
    from busbell._topics import DEFAULT_PREFIX, Topics

    args = _plan_args(tmp_path)
    first, second = DemoPlan(prefix="", **args), DemoPlan(prefix="", **args)
    assert first.own_prefix
    assert second.own_prefix
    assert first.prefix != second.prefix
    for plan in (first, second):
        assert not plan.prefix.startswith(DEFAULT_PREFIX)
        assert Topics(plan.prefix).parse(Topics(plan.prefix).status("b")) is not None
        assert f'prefix = "{plan.prefix}"' in plan.backend_toml()
        assert f'prefix = "{plan.prefix}"' in plan.edge_toml("bus-55-01")
    given = DemoPlan(prefix="lab/busbell/v1", **args)
    assert given.prefix == "lab/busbell/v1"
    assert not given.own_prefix


def test_sigterm_stops_the_demo_and_everything_it_started(
    shared_broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    """A demo stopped by SIGTERM (a service manager, a test's clean-up) stops its children;
    it used to die at once and leave the backend and the edges running, orphaned."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "busbell.cli", "demo", "--scenario", "quiet_route"]
        + ["--speed", "40", "--no-browser", "--prefix", topic_prefix]
        + ["--workdir", str(tmp_path / "demo"), "--view-port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pids: dict[str, int] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.match(r"\s+started (\S+)\s+pid (\d+)", line)
            if m:
                pids[m.group(1)] = int(m.group(2))
            if "edge-bus-55-01" in pids:
                break
        assert {"backend", "edge-bus-55-01"} <= set(pids), pids
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
            _kill_orphans(pids)
    assert "logs:" in out  # the clean-up ran to its end
    assert proc.returncode == 143, out  # 128 + SIGTERM: stopped before its end
    _assert_gone(pids)


def test_sigterm_stops_the_demo_while_a_browser_streams_the_fleet_view(
    shared_broker: Any, tmp_path: Path
) -> None:
    """uvicorn (>= 0.29) took over SIGTERM while serving the fleet view, and its graceful
    shutdown waited for the browser's endless event stream: the demo never stopped.

    No --prefix: the run's own prefix keeps it apart from other demos on the broker, and
    what it left retained there is cleared when it stops.
    """
    view_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "busbell.cli", "demo", "--scenario", "quiet_route"]
        + ["--speed", "1", "--no-browser", "--workdir", str(tmp_path / "demo")]
        + ["--view-port", str(view_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pids: dict[str, int] = {}
    prefix = ""
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if m := re.match(r"\s+MQTT topics under (\S+)/ \(this run only", line):
                prefix = m.group(1)
            if m := re.match(r"\s+started (\S+)\s+pid (\d+)", line):
                pids[m.group(1)] = int(m.group(2))
            if line.startswith("fleet view:"):
                break
        assert prefix.startswith("busbell-demo/"), prefix
        assert {"backend", "edge-bus-55-01", "sim-bus-55-01"} <= set(pids), pids
        with httpx.Client(timeout=60) as client:
            response = _open_events(client, view_port, proc)
            try:
                assert response.status_code == 200
                topic = ""
                # keep the iterator: a dropped one closes the connection (httpcore)
                lines = response.iter_lines()
                for sse in lines:
                    if sse.startswith("data: "):
                        topic = json.loads(sse[6:])["topic"]
                        break
                assert topic.startswith(f"{prefix}/"), topic
                proc.terminate()  # with the stream open, as a browser keeps it
                out, _ = proc.communicate(timeout=60)
            finally:
                response.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
            _kill_orphans(pids)
    assert "logs:" in out, out
    assert proc.returncode == 143, out
    assert re.search(r"cleared \d+ retained messages under " + re.escape(prefix), out), out
    _assert_gone(pids)
    assert asyncio.run(_retained_under(shared_broker, prefix)) == {}


def test_the_exit_status_of_a_demo_stopped_early_is_128_plus_the_signal() -> None:
    from busbell._demo import _Signalled, stopped_status

    assert stopped_status(KeyboardInterrupt()) == 130  # Ctrl-C
    assert stopped_status(_Signalled(signal.SIGTERM)) == 143
    assert stopped_status(_Signalled(signal.SIGHUP)) == 129


def test_sigterm_stops_the_view_only_demo_while_a_browser_streams(
    shared_broker: Any, topic_prefix: str
) -> None:
    """``busbell demo --view-only`` too: SIGTERM ends it although an event stream is open."""
    view_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "busbell.cli", "demo", "--view-only", "--prefix", topic_prefix]
        + ["--broker", f"{shared_broker.host}:{shared_broker.port}"]
        + ["--view-port", str(view_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with httpx.Client(timeout=60) as client:
            response = _open_events(client, view_port, proc)
            try:
                assert response.status_code == 200
                proc.terminate()
                out, _ = proc.communicate(timeout=60)
            finally:
                response.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, out


async def test_the_fleet_view_server_leaves_signals_alone_and_ends_streams_on_shutdown() -> None:
    """The view's server keeps the caller's SIGTERM handler while it serves, and its
    shutdown ends an open event stream cleanly instead of waiting for it for ever."""
    import uvicorn

    from busbell._http import http_server, serve_http
    from busbell._webview import FleetView

    view = FleetView(MqttSettings(prefix="test-view/busbell/v1"))  # not following MQTT
    port = free_port()
    server = http_server(
        uvicorn.Config(view.app(), host="127.0.0.1", port=port, lifespan="off"),
        on_shutdown=view.close,
    )
    own = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        serving = asyncio.create_task(serve_http(server))
        async with httpx.AsyncClient(timeout=60) as client:
            async with asyncio.timeout(60):
                while not server.started:
                    await asyncio.sleep(0.05)
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            async with client.stream("GET", f"http://127.0.0.1:{port}/events") as response:
                assert response.status_code == 200
                server.should_exit = True
                async with asyncio.timeout(60):
                    # ends without an error: the stream finished, it was not cut
                    assert [line async for line in response.aiter_lines() if line] == []
            async with asyncio.timeout(60):
                await serving
    finally:
        signal.signal(signal.SIGTERM, own)


def test_the_demo_bus_that_skips_a_stop_records_a_signed_missed_stop(
    shared_broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    """The bell loop's other end: a bus drives past a stop where a rider app waits; the
    edge signs a missed record, the backend verifies and stores it, the wait goes back
    to pending for the next bus, and the operator's report verifies the record again."""
    work = tmp_path / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "busbell.cli", "demo", "--scenario", "rider_by_door_stays"]
        + ["--speed", "40", "--no-browser", "--grace", "10", "--duration", "150"]
        + ["--prefix", topic_prefix, "--workdir", str(work), "--view-port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    truth = json.loads((work / "scenario" / "truth.json").read_text())
    (skipped,) = truth["skipped_stops"]
    assert f"bus-55-01 will drive past stop {skipped['stop_id']}" in out
    assert "scenario-skip-" not in out  # the attempts to find a bus that can skip are not listed
    assert "missed stops recorded (signed by the bus): 1" in out
    assert f"bus-55-01 passed {skipped['stop_id']} on route 55" in out
    assert re.search(r"bus-55-01\s+(\d+) events, up to seq \1 \(1 of them a missed stop\)", out)
    assert "buses passed a waiting rider by 1 time(s)" in out
    # the in-process fleet view logs to logs/demo.log, not between the demo's lines
    assert "view_connected" not in out
    assert '"view_connected"' in (work / "logs" / "demo.log").read_text()
    command = re.search(r"see: (busbell backend missed-report .+)$", out, re.M)
    assert command, out
    report = subprocess.run(
        [sys.executable, "-m", "busbell.cli", *command.group(1).split()[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert ": 1 (1 verified)" in report
    assert f"({skipped['stop_id']}): 1 missed, by bus-55-01 (1)" in report
    # one clock end to end: the rider API stamps the wait on the buses' clock (the
    # scenario's date at --speed), so it was made before the bus passed, within its
    # lifetime; on the wall clock it was "made" months after the pass
    with contextlib.closing(sqlite3.connect(work / "backend.db")) as conn:
        ((wait_t, expires_t, passed_t),) = conn.execute(
            "SELECT json_extract(record, '$.wait.t'), json_extract(record, '$.wait.expires_t'),"
            " passed_t FROM missed_stops"
        ).fetchall()
    assert wait_t < passed_t < expires_t, (wait_t, passed_t, expires_t)
    assert truth["t_start"] - 60 <= wait_t <= skipped["t"], (wait_t, truth["t_start"])
    made = re.search(r"wait made (\d\d:\d\d:\d\d), (\d+ min )?\d+ s before", report)
    assert made, report
