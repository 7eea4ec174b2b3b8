"""The fleet view in headless Chromium: buses, waits and request states read as words."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from busbell import Topics
from busbell._http import http_server, serve_http
from busbell._mqtt import MqttSession, MqttSettings
from busbell._webview import FleetView, stop_names
from tests.conftest import free_port
from tests.factories.tasks import LIVE_TIMEOUT_S

pytestmark = [pytest.mark.mosquitto, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _stop(stop_id: str, name: str, seq: int, **kw: Any) -> dict[str, Any]:
    base = {"waits": 0, "assist": False, "stop_requested": False, "request_ids": []}
    return {"stop_id": stop_id, "name": name, "seq": seq, **base, **kw}


async def test_the_fleet_view_shows_buses_waits_and_statuses_in_words(
    shared_broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (run .ci/run, or apt-get install chromium)")
    t = Topics(topic_prefix)
    # the buses' clock, which the backend's waits and statuses are on too: a simulated date
    # months from this browser's (the demo's scenario time)
    now = time.time() - 200 * 86400
    gtfs = tmp_path / "gtfs"
    gtfs.mkdir()
    (gtfs / "stops.txt").write_text(
        "stop_id,stop_name,stop_lat,stop_lon\nS05,City Hall,37.5,127.0\nS09,Market,37.6,127.1\n"
    )
    (gtfs / "routes.txt").write_text("route_id,route_short_name\n11,11\n")
    (gtfs / "trips.txt").write_text("route_id,service_id,trip_id\n11,D,T1\n")
    (gtfs / "stop_times.txt").write_text("trip_id,stop_id,stop_sequence\nT1,S05,1\nT1,S09,2\n")
    settings = MqttSettings(host=shared_broker.host, port=shared_broker.port, prefix=topic_prefix)
    display = {
        "v": 1,
        "bus_id": "bus-1",
        "t": now,
        "route_id": "11",
        "trip_id": "T1",
        "online": True,
        "on_board": 17,
        "next_stop": _stop("S05", "시청", 1, waits=2, assist=True, stop_requested=True),
        "stops": [
            _stop("S05", "시청", 1, waits=2, assist=True, stop_requested=True),
            _stop("S06", "Library", 2, waits=1),
        ],
    }
    wait = {
        "request_id": "w-abc",
        "route_id": "11",
        "stop_id": "S09",
        "t": now,
        "expires_t": now + 600,
        "source": "app",
        "assist": False,
    }
    retained = {
        t.status("bus-1"): {"state": "online", "bus_id": "bus-1", "backlog": 0},
        t.display("bus-1"): display,
        t.occupancy("bus-1"): {"on_board": 17},
        t.wait("11", "S09", "w-abc"): wait,
        t.request_status("w-abc"): {
            "request_id": "w-abc",
            "state": "missed",
            "bus_id": "bus-2",
            "t": now,
        },
        t.request_status("sr-1"): {
            "request_id": "sr-1",
            "state": "acknowledged",
            "bus_id": "bus-1",
            "t": now,
        },
    }
    view = FleetView(settings, stops=stop_names(gtfs))
    port = free_port()
    server = http_server(
        uvicorn.Config(
            view.app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        ),
        on_shutdown=view.close,
    )
    follow = asyncio.create_task(view.follow())
    serving = asyncio.create_task(serve_http(server))
    try:
        async with MqttSession(settings, f"t-view-{topic_prefix[5:17]}", clean_start=True) as pub:
            for topic, body in retained.items():
                await pub.publish(topic, json.dumps(body), qos=1, retain=True)
            async with asyncio.timeout(30):
                while len(view.latest) < len(retained) or not server.started:
                    await asyncio.sleep(0.05)
            async with httpx.AsyncClient(timeout=LIVE_TIMEOUT_S) as client:
                names = (await client.get(f"http://127.0.0.1:{port}/stops")).json()
            assert names == {"S05": "City Hall", "S09": "Market"}
            from playwright.async_api import async_playwright, expect

            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM)
                try:
                    page = await browser.new_page()
                    errors: list[str] = []
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    await page.goto(f"http://127.0.0.1:{port}/")
                    wait_line = page.locator('li.wait[data-request="w-abc"]')
                    await expect(wait_line).to_contain_text("MISSED by bus-2", timeout=30_000)
                    await expect(page.locator('[data-bus="bus-1"] .next')).to_contain_text(
                        "2 waiting", timeout=30_000
                    )
                    dom = await page.content()
                    text = " ".join((await page.inner_text("body")).split())
                    assert errors == []
                finally:
                    await browser.close()
            for topic in retained:
                await pub.publish(topic, b"", qos=1, retain=True)
    finally:
        server.should_exit = True
        follow.cancel()
        await asyncio.gather(follow, serving, return_exceptions=True)
    assert 'data-bus="bus-1"' in dom
    assert re.search(r'class="big occupancy">17<', dom)
    # the bus: next stop (the display model's name), who waits there, what follows
    assert "next stop 시청 (S05) 2 waiting, needs assistance, stop requested" in text
    assert "Library (S06): 1 waiting" in text
    assert 'class="bell on"' in dom  # STOP REQUESTED shown
    assert 'class="bell assist on"' in dom
    # the wait in words: route, GTFS stop name, its state
    assert "Route 11 at Market (S09): MISSED by bus-2: waiting for the next bus" in text
    assert "rider app" in text
    # measured on the buses' clock: not "expired", not "4800 h ago"
    assert "rider app, expires in 10 min; w-abc" in text, text
    assert " h ago" not in text, text
    assert "sr-1: driver of bus-1 acknowledged" in text
    waits_html = dom[dom.index('id="waits"') : dom.index('id="requests"')]
    assert '{"' not in waits_html  # not raw JSON


def test_refused_payloads_are_counted_logged_and_not_shown() -> None:
    from structlog.testing import capture_logs

    t = Topics()
    view = FleetView(MqttSettings())
    deep = b"[" * 100 + b"]" * 100
    with capture_logs() as logs:
        view._on_message(t.status("b1"), b'{"state":"online"}')
        view._on_message(t.status("b2"), deep)
        view._on_message(t.status("b3"), b"\xff{")
        view._on_message(t.status("b4"), b'{"t":1e999}')
    assert list(view.latest) == [t.status("b1")]
    assert view.rejects.counts == {"too_deep": 1, "not_utf8": 1, "non_finite": 1}
    assert [(e["event"], e["reason"]) for e in logs] == [
        ("view_bad_payload", "too_deep"),
        ("view_bad_payload", "not_utf8"),
        ("view_bad_payload", "non_finite"),
    ]
