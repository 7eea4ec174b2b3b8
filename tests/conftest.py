"""Shared fixtures: real Mosquitto brokers, PostgreSQL databases, unique topic prefixes.

Tests that stop or break a broker start their own (``private_broker``); others use the
machine's broker on 127.0.0.1:1883 under a unique topic prefix (``shared_broker``,
``topic_prefix``). PostgreSQL tests get a fresh database each (``pg_url``).

Under pytest-xdist (the README's test command runs ``-n 2``) the tests on the machine's broker
(those that ask for ``shared_broker`` or ``topic_prefix``, or are marked ``mosquitto``) all go
to the first worker at the start, run one at a time as without xdist: components run there
with their default MQTT client ids (``busbell-edge-BUS``, ``busbell-backend-ingest-0``, ...),
a client id is broker-wide, and two such tests at once would take each other's sessions over.
The other worker takes the other tests one by one. ``--core-coverage`` measures in each
worker and the controller combines their data before it applies the floors.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.coverage_gate import CoreCoverage

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PG_HOST = os.environ.get("BUSBELL_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("BUSBELL_TEST_PG_PORT", "5432"))


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """Each test starts and ends with structlog's defaults (an in-process CLI call may
    configure level filters that would hide events from ``capture_logs``)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def free_port() -> int:
    """A TCP port free on 127.0.0.1, safe from outgoing connections (busbell._ports).

    Imported when called: this module is loaded before ``--core-coverage`` starts
    measuring, and importing busbell here would leave its cores' definitions unmeasured.
    """
    from busbell._ports import free_port as pick

    return pick()


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections there."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def service_up(host: str, port: int, within_s: float = 10.0) -> bool:
    """Whether a machine service accepts connections, retried for ``within_s``.

    One 0.5-s connect failed the machine's broker once at load ~21 (the accept queue was
    slow, not the broker gone): a service the tests rely on gets several tries.
    """
    deadline = time.monotonic() + within_s
    while not port_open(host, port, timeout=2.0):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@dataclass
class BrokerProcess:
    """A private mosquitto instance the test may stop, kill and restart."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {self.workdir}/\n"
            "max_queued_messages 1000000\nmax_inflight_messages 100\n"
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        with (self.workdir / "mosquitto.log").open("ab") as err:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err
            )
        deadline = time.monotonic() + 10
        while not port_open(self.host, self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start: {self.workdir}/mosquitto.log")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A mosquitto of the test's own on a free port (may be stopped/killed by the test)."""
    if not os.path.exists(MOSQUITTO):
        pytest.fail("mosquitto is not installed (run .ci/run, or apt-get install mosquitto)")
    broker = BrokerProcess(free_port(), tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@dataclass(frozen=True)
class SharedBroker:
    """The machine's broker (never stopped by tests)."""

    host: str = "127.0.0.1"
    port: int = 1883


def xdist_worker(config: pytest.Config) -> str | None:
    """The pytest-xdist worker id (``gw0``, ``gw1``, ...) of this process, None outside one."""
    workerinput = getattr(config, "workerinput", None)
    return None if workerinput is None else str(workerinput["workerid"])


@pytest.fixture
def shared_broker() -> SharedBroker:
    """The machine's mosquitto on 127.0.0.1:1883."""
    if not service_up("127.0.0.1", 1883):
        pytest.fail("no MQTT broker on 127.0.0.1:1883 (start mosquitto)")
    return SharedBroker()


def _on_shared_broker(item: pytest.Item) -> bool:
    """Whether a test talks to the machine's broker (or may: every ``mosquitto`` test)."""
    fixtures = getattr(item, "fixturenames", ())
    return (
        "shared_broker" in fixtures
        or "topic_prefix" in fixtures
        or item.get_closest_marker("mosquitto") is not None
    )


_RUN_DIR = pytest.StashKey[Path]()
_BROKER_TESTS = "shared-broker-tests.txt"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """An xdist worker writes down which collected tests use the machine's broker (before
    it reports its collection: the controller's scheduler reads the file)."""
    config = session.config
    if xdist_worker(config) is None:
        return
    names = [item.nodeid for item in session.items if _on_shared_broker(item)]
    run_dir = Path(config.workerinput["busbell_run_dir"])  # type: ignore[attr-defined]
    out = run_dir / f"{_BROKER_TESTS}.{xdist_worker(config)}"
    out.write_text("".join(f"{n}\n" for n in names))


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's ``load`` scheduling (by index: schemathesis's items share node ids), but every
    test on the machine's broker goes to the first worker, all at the start."""
    from xdist.scheduler import LoadScheduling

    run_dir = config.stash[_RUN_DIR]

    class SharedBrokerScheduling(LoadScheduling):  # type: ignore[misc]
        def schedule(self) -> None:
            if self.collection is None and self._check_nodes_have_same_collection():
                lists = {p.read_text() for p in run_dir.glob(f"{_BROKER_TESTS}.*")}
                if len(lists) != 1:
                    raise RuntimeError(f"workers disagree on the broker tests: {run_dir}")
                broker = frozenset(lists.pop().splitlines())
                collection = next(iter(self.node2collection.values()))
                ours = [i for i, n in enumerate(collection) if n in broker]
                if ours and len(collection) > len(ours):
                    first = self.nodes[0]
                    self.collection = collection
                    self.maxschedchunk = self.maxschedchunk or len(collection)
                    self.pending[:] = [i for i in range(len(collection)) if i not in set(ours)]
                    self.node2pending[first].extend(ours)
                    first.send_runtest_some(ours)
                    for node in self.nodes[1:]:
                        self._send_tests(node, 2)
                    return
            super().schedule()

    return SharedBrokerScheduling(config, log)


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}/busbell/v1"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database (SQLAlchemy asyncpg URL), dropped afterwards."""
    if not service_up(PG_HOST, PG_PORT):
        pytest.fail(f"no PostgreSQL on {PG_HOST}:{PG_PORT}")
    name = f"busbell_test_{uuid.uuid4().hex[:10]}"
    psql = ["psql", "-h", PG_HOST, "-p", str(PG_PORT), "-U", "postgres", "-d", "postgres", "-qc"]
    subprocess.run([*psql, f'CREATE DATABASE "{name}"'], check=True)
    try:
        yield f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        subprocess.run([*psql, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], check=False)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--core-coverage",
        action="store_true",
        help="measure branch coverage of the sans-I/O cores and fail below their floors "
        "(tests/coverage_gate.py)",
    )


_CORE_GATE = pytest.StashKey[CoreCoverage]()
_CORE_RESULT = pytest.StashKey[tuple[list[str], list[str]]]()


def _distributing(config: pytest.Config) -> bool:
    """Whether this process hands the tests to xdist workers (and runs none itself)."""
    return getattr(config.option, "dist", "no") != "no" and bool(getattr(config.option, "tx", []))


def pytest_configure(config: pytest.Config) -> None:
    worker = xdist_worker(config)
    if worker is None and _distributing(config):  # the workers' lists and coverage data
        config.stash[_RUN_DIR] = Path(tempfile.mkdtemp(prefix="busbell-pytest-run-"))
    if not config.getoption("--core-coverage"):
        return
    data_file = Path(config.rootpath) / ".coverage.cores"
    if worker is not None:  # measures its share; the controller combines and reports
        run_dir = Path(config.workerinput["busbell_run_dir"])  # type: ignore[attr-defined]
        gate = CoreCoverage(data_file, measure_to=run_dir / f"{data_file.name}.{worker}")
    elif _RUN_DIR in config.stash:
        config.stash[_CORE_GATE] = CoreCoverage(data_file)  # measures nothing itself
        return
    else:
        gate = CoreCoverage(data_file)
    gate.start()
    config.stash[_CORE_GATE] = gate


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: tell each worker the run's directory (broker test lists, coverage data)."""
    node.workerinput["busbell_run_dir"] = str(node.config.stash[_RUN_DIR])


def pytest_unconfigure(config: pytest.Config) -> None:
    run_dir = config.stash.get(_RUN_DIR, None)
    if run_dir is not None:
        shutil.rmtree(run_dir, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    gate = session.config.stash.get(_CORE_GATE, None)
    if gate is None:
        return
    if xdist_worker(session.config) is not None:
        gate.stop()
        return
    run_dir = session.config.stash.get(_RUN_DIR, None)
    if run_dir is not None:
        result = gate.combine(run_dir)
    else:
        gate.stop()
        result = gate.report()
    session.config.stash[_CORE_RESULT] = result
    if result[1] and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    result = terminalreporter.config.stash.get(_CORE_RESULT, None)
    if result is None:
        return
    lines, failures = result
    terminalreporter.section("coverage of the sans-I/O cores (branch)")
    for line in lines:
        terminalreporter.write_line(line)
    for line in failures:
        terminalreporter.write_line(f"coverage gate: {line}", red=True)
