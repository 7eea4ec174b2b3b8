"""The simulator's rider-app waits posted to the rider API (``sim run --waits-api``)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from structlog.testing import capture_logs

from firmware_sim._live import _post_wait

WAIT = {"route_id": "17", "stop_id": "BD003", "rider_id": "r-00001", "source": "app"}


class _Recorder(BaseHTTPRequestHandler):
    """Answers every POST as the rider API does and records what it was sent."""

    seen: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        out = json.dumps({"request_id": "w-0123456789abcdef"}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proxy_env(monkeypatch: pytest.MonkeyPatch, proxy: str) -> None:
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, proxy)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_api_is_reached_directly_despite_http_proxy(
    monkeypatch: pytest.MonkeyPatch, recorder: tuple[int, list[dict[str, Any]]], host: str
) -> None:
    # A machine behind a proxy (http_proxy set, no no_proxy): the demo's own rider API on
    # 127.0.0.1 must not be asked through the proxy, which cannot reach this loopback.
    port, seen = recorder
    _proxy_env(monkeypatch, f"http://127.0.0.1:{_closed_port()}")
    with capture_logs() as logs:
        outcome = _post_wait(f"http://{host}:{port}", "tok", WAIT, 900)
    assert outcome == "w-0123456789abcdef"
    assert seen == [
        {
            "path": "/riders/r-00001/waits",
            "auth": "Bearer tok",
            "body": {"route_id": "17", "stop_id": "BD003", "assist": False, "expires_in_s": 900},
        }
    ]
    assert [e["event"] for e in logs] == ["live_wait_posted"]


def test_remote_api_still_goes_through_the_proxy(
    monkeypatch: pytest.MonkeyPatch, recorder: tuple[int, list[dict[str, Any]]]
) -> None:
    # The recorder plays the proxy: a request for a remote host reaches it in absolute form.
    port, seen = recorder
    _proxy_env(monkeypatch, f"http://127.0.0.1:{port}")
    assert _post_wait("http://api.busbell.invalid/", None, WAIT, 60) == "w-0123456789abcdef"
    assert [s["path"] for s in seen] == ["http://api.busbell.invalid/riders/r-00001/waits"]
    assert seen[0]["auth"] is None


def test_failed_post_is_a_warning_and_an_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with capture_logs() as logs:
        outcome = _post_wait(f"http://127.0.0.1:{_closed_port()}", "tok", WAIT, 900)
    assert outcome.startswith("failed: ")
    assert [(e["event"], e["log_level"], e["rider_id"]) for e in logs] == [
        ("live_wait_post_failed", "warning", "r-00001")
    ]
