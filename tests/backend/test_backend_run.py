"""``busbell backend run`` as a process: SIGTERM stops it cleanly; a port in use ends it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.mosquitto


def _config(tmp: Path, broker: Any, prefix: str, api_port: int) -> Path:
    cfg = tmp / "backend.toml"
    cfg.write_text(
        f'[database]\nurl = "sqlite+aiosqlite:///{tmp / "ledger.db"}"\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nprefix = "{prefix}"\n'
        f"[api]\nport = {api_port}\n"
    )
    return cfg


def _start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "busbell.cli", "backend", "run", "--config", str(cfg)],
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=cfg.parent,
        )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_ingest_then_the_service_exit_0(
    tmp_path: Path, shared_broker: Any, topic_prefix: str, sig: signal.Signals
) -> None:
    log = tmp_path / "backend.log"
    proc = _start(_config(tmp_path, shared_broker, topic_prefix, free_port()), log)
    try:
        deadline = time.monotonic() + 60
        while b'"fare_ingest_subscribed"' not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert f'"signal": "{sig.name}", "event": "backend_stopping"' in text
    # ingest finished (its batch in flight committed and acked) before the rest stopped
    assert text.index('"backend_stopping"') < text.index('"fare_ingest_stopped"')
    assert "Traceback" not in text


def test_api_port_in_use_ends_the_process_with_a_clear_error(
    tmp_path: Path, shared_broker: Any, topic_prefix: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log = tmp_path / "backend.log"
        proc = _start(_config(tmp_path, shared_broker, topic_prefix, port), log)
        try:
            # it exited 1 (it used to go on without its API and hang at exit)
            assert proc.wait(timeout=60) == 1, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    failed = [json.loads(x) for x in text.splitlines() if '"backend_task_failed"' in x]
    assert [f["task"] for f in failed] == ["busbell-backend.api"]
    assert f"HTTP server could not start on 127.0.0.1:{port}" in failed[0]["error"]
    # then the other tasks stop at once: none loses its cancel (the API's broker link
    # did on Python 3.11, in aiomqtt's wait_for, until the stop watchdog cut it short)
    assert "busbell: error: HTTP server could not start" in text
    assert '"backend_stop_overdue"' not in text
    # (no Traceback check here: a task cancelled while closing a pooled SQLite
    # connection makes SQLAlchemy log one on this failure path)
