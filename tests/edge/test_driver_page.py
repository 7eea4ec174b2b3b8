"""The driver display page end to end: real Mosquitto, real server, headless Chromium.

Each test serves the page as ``busbell edge display`` does (``run_driver_page`` on its own
MQTT link), publishes display models on the broker under a unique prefix, and reads what
Chromium (``/usr/bin/chromium``, driven by Playwright) shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from busbell import validate_driver_ack
from busbell._mqtt import MqttMessage, MqttSession, MqttSettings
from edge._driver_page import DriverPageSettings, run_driver_page
from tests.conftest import free_port
from tests.factories.driver_page import chromium, stop
from tests.factories.tasks import LIVE_TIMEOUT_S

pytestmark = [pytest.mark.mosquitto, pytest.mark.browser, pytest.mark.timeout(90)]

BUS = "bus-7"
WAIT_MS = 15000


def model(**kw: Any) -> dict[str, Any]:
    nxt = stop("S3", "정자역 Jeongja Stn.", 3, 2, assist=True, requested=True, ids=("r-1", "r-2"))
    m: dict[str, Any] = {
        "v": 1,
        "bus_id": BUS,
        "t": time.time(),
        "route_id": "55",
        "trip_id": "55-0812",
        "online": True,
        "on_board": 17,
        "next_stop": nxt,
        "stops": [
            nxt,
            stop("S4", "수내역 Sunae Stn.", 4, 1, ids=("r-3",)),
            stop("S5", "서현역 Seohyeon Stn.", 5),
            stop("S6", "판교역 Pangyo Stn.", 6, 1, ids=("r-far",)),
        ],
    }
    m.update(kw)
    return m


class Broker:
    """A test client on the broker: publishes and collects messages of some topics."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.settings = MqttSettings(host=host, port=port, prefix=prefix)
        self.prefix = prefix

    def topic(self, kind: str) -> str:
        return f"{self.prefix}/buses/{BUS}/{kind}"

    async def publish(self, kind: str, payload: bytes | str | dict[str, Any]) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload, ensure_ascii=False)
        async with MqttSession(
            self.settings, f"t-pub-{uuid.uuid4().hex[:8]}", clean_start=True
        ) as s:
            await s.publish(self.topic(kind), payload, qos=1, retain=kind != "driver/ack")

    @contextlib.asynccontextmanager
    async def watch(self, kind: str) -> AsyncIterator[asyncio.Queue[MqttMessage]]:
        q: asyncio.Queue[MqttMessage] = asyncio.Queue()
        s = MqttSession(self.settings, f"t-sub-{uuid.uuid4().hex[:8]}", clean_start=True)
        async with s:
            await s.subscribe([self.topic(kind)])

            async def pump() -> None:
                async for m in s.messages():
                    q.put_nowait(m)

            task = asyncio.create_task(pump())
            try:
                yield q
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def serve(
    host: str, port: int, prefix: str, *, page_port: int | None = None, **kw: Any
) -> AsyncIterator[str]:
    """Run the page (its own MQTT link) until the block ends; yields its URL."""
    mqtt = MqttSettings(
        host=host, port=port, prefix=prefix, backoff_initial_s=0.1, backoff_max_s=0.5
    )
    settings = replace(DriverPageSettings(port=page_port or free_port()), **kw)
    stop_ev = asyncio.Event()
    listening = asyncio.Event()
    task = asyncio.create_task(
        run_driver_page(
            mqtt, BUS, settings, stop=stop_ev, on_listening=lambda h, p: listening.set()
        )
    )
    try:
        async with asyncio.timeout(20):
            await listening.wait()
        yield f"http://127.0.0.1:{settings.port}/"
    finally:
        stop_ev.set()
        async with asyncio.timeout(20):
            await task


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


async def open_page(browser: Any, url: str, width: int = 1024, height: int = 600) -> Any:
    ctx = await browser.new_context(viewport={"width": width, "height": height})
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.errors = errors
    await page.goto(url)
    return page


async def text_is(page: Any, selector: str, want: str) -> None:
    from playwright.async_api import expect

    await expect(page.locator(selector)).to_have_text(want, timeout=WAIT_MS)


async def state(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=LIVE_TIMEOUT_S) as c:
        r = await c.get(url + "state")
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out


async def test_retained_model_appears_on_the_page(
    shared_broker: Any, topic_prefix: str, browser: Any
) -> None:
    from playwright.async_api import expect

    broker = Broker(shared_broker.host, shared_broker.port, topic_prefix)
    await broker.publish("status", {"state": "online", "bus_id": BUS})
    await broker.publish("display", model())  # retained before the page exists
    async with serve(shared_broker.host, shared_broker.port, topic_prefix) as url:
        page = await open_page(browser, url)
        await text_is(page, "#next-name", "정자역 Jeongja Stn.")
        await text_is(page, "#wait-count", "2")
        await expect(page.locator("#stop-requested")).to_be_visible()
        await expect(page.locator("#stop-requested")).to_have_text("하차 요청")
        await expect(page.locator("#wait-assist")).to_be_visible()
        await text_is(page, "#on-board", "17")
        await text_is(page, "#route", "55")
        names = page.locator("#stops .stop .name")
        await expect(names).to_have_text(
            ["수내역 Sunae Stn.", "서현역 Seohyeon Stn.", "판교역 Pangyo Stn."]
        )
        await expect(page.locator('#stops [data-stop-id="S4"] .tag.waits')).to_have_text("1")
        for pill in ("#conn-page", "#conn-broker", "#conn-edge", "#conn-net"):
            await expect(page.locator(pill)).to_have_class("pill ok", timeout=WAIT_MS)
        await expect(page.locator("#stale")).to_be_hidden()
        await text_is(page, "#ack-label", "확인 (4)")
        assert await page.evaluate("document.documentElement.lang") == "ko"

        # the next model replaces it: pushed, no reload; the bus lost its uplink (the
        # data on screen is still current: a red light, no stale banner)
        await broker.publish(
            "display",
            model(next_stop=None, stops=[], on_board=3, route_id=None, trip_id=None, online=False),
        )
        await expect(page.locator("#conn-net")).to_have_class("pill down", timeout=WAIT_MS)
        await expect(page.locator("#conn-edge")).to_have_class("pill ok")
        await expect(page.locator("#stale")).to_be_hidden()
        await text_is(page, "#next-name", "운행 정보 없음")
        await text_is(page, "#on-board", "3")
        await expect(page.locator("#stop-requested")).to_be_hidden()
        await text_is(page, "#ack-label", "요청 없음")
        await expect(page.locator("#ack")).to_be_disabled()

        # the edge daemon's last will: the page says the edge is gone
        await broker.publish("status", b'{"state":"offline"}')
        await expect(page.locator("#conn-edge")).to_have_class("pill down", timeout=WAIT_MS)
        await expect(page.locator("#stale")).to_be_visible()
        await expect(page.locator("#stale-text")).to_contain_text("단말 꺼짐")
        assert page.errors == []
    await broker.publish("display", b"")
    await broker.publish("status", b"")


async def test_ack_publishes_the_ids_shown(
    shared_broker: Any, topic_prefix: str, browser: Any
) -> None:
    from playwright.async_api import expect

    broker = Broker(shared_broker.host, shared_broker.port, topic_prefix)
    await broker.publish("display", model())
    async with serve(shared_broker.host, shared_broker.port, topic_prefix, stops_shown=2) as url:
        page = await open_page(browser, url)
        # two following stops shown: S4, S5; S6 (r-far) is beyond them
        await expect(page.locator("#stops .stop")).to_have_count(2, timeout=WAIT_MS)
        await text_is(page, "#more", "외 1곳")
        await text_is(page, "#ack-label", "확인 (3)")
        async with broker.watch("driver/ack") as acks:
            before = time.time()
            await page.click("#ack")
            async with asyncio.timeout(10):
                m = await acks.get()
        body = json.loads(m.payload)
        validate_driver_ack(body)
        assert body["request_ids"] == ["r-1", "r-2", "r-3"]
        assert before - 1 <= body["t"] <= time.time() + 1
        assert not m.retain
        assert m.qos == 1
        await text_is(page, "#ack-label", "확인됨 ✓")
        await expect(page.locator("#ack")).to_be_disabled()
        st = await state(url)
        assert st["state"]["acked"] == ["r-1", "r-2", "r-3"]
        assert st["stats"]["acks_published"] == 1

        # a new wait at a shown stop lights the button again, for the new id only
        nxt = model()["next_stop"]
        nxt = {**nxt, "waits": 3, "request_ids": ["r-1", "r-2", "r-new"]}
        await broker.publish("display", model(next_stop=nxt, stops=[nxt, *model()["stops"][1:]]))
        await text_is(page, "#ack-label", "확인 (1)")
        async with broker.watch("driver/ack") as acks:
            await page.click("#ack")
            async with asyncio.timeout(10):
                m = await acks.get()
        assert json.loads(m.payload)["request_ids"] == ["r-1", "r-2", "r-new", "r-3"]
        assert page.errors == []
    await broker.publish("display", b"")


async def test_broker_restart_shows_disconnected_then_recovers(
    private_broker: Any, browser: Any
) -> None:
    from playwright.async_api import expect

    prefix = f"t-{uuid.uuid4().hex[:8]}/busbell/v1"
    broker = Broker(private_broker.host, private_broker.port, prefix)
    await broker.publish("status", {"state": "online", "bus_id": BUS})
    await broker.publish("display", model())
    async with serve(private_broker.host, private_broker.port, prefix) as url:
        page = await open_page(browser, url)
        await expect(page.locator("#conn-broker")).to_have_class("pill ok", timeout=WAIT_MS)
        await expect(page.locator("#ack")).to_be_enabled()

        private_broker.kill()
        await expect(page.locator("#conn-broker")).to_have_class("pill down", timeout=WAIT_MS)
        await expect(page.locator("#stale")).to_be_visible()
        await expect(page.locator("#stale-text")).to_contain_text("중계 서버 연결 끊김")
        await expect(page.locator("body")).to_have_class("stale")
        await expect(page.locator("#ack")).to_be_disabled()
        await text_is(page, "#ack-label", "연결 끊김 — 확인 불가")
        await text_is(page, "#next-name", "정자역 Jeongja Stn.")  # the last model, greyed

        private_broker.start()
        await expect(page.locator("#conn-broker")).to_have_class("pill ok", timeout=WAIT_MS)
        await expect(page.locator("#stale")).to_be_hidden()
        await expect(page.locator("#ack")).to_be_enabled()
        await broker.publish("display", model(on_board=41))
        await text_is(page, "#on-board", "41")
        assert page.errors == []


async def test_page_reconnects_when_its_server_comes_back(
    shared_broker: Any, topic_prefix: str, browser: Any
) -> None:
    from playwright.async_api import expect

    broker = Broker(shared_broker.host, shared_broker.port, topic_prefix)
    await broker.publish("display", model())
    port = free_port()
    async with serve(shared_broker.host, shared_broker.port, topic_prefix, page_port=port) as url:
        page = await open_page(browser, url)
        await text_is(page, "#on-board", "17")
    await expect(page.locator("body")).to_have_class("stale disconnected", timeout=WAIT_MS)
    await expect(page.locator("#conn-page")).to_have_class("pill down")
    await expect(page.locator("#stale-text")).to_contain_text("화면 연결 끊김")
    for n in range(14, 19):  # published while no page server runs
        await broker.publish("display", model(on_board=n))
    async with serve(shared_broker.host, shared_broker.port, topic_prefix, page_port=port):
        await expect(page.locator("#conn-page")).to_have_class("pill ok", timeout=WAIT_MS)
        await text_is(page, "#on-board", "18")
        await expect(page.locator("#stale")).to_be_hidden()
        # only the retained latest: no session kept the models it missed to replay them
        assert (await state(url))["stats"]["displays"] == 1
    await broker.publish("display", b"")


async def test_malformed_models_are_rejected_counted_and_never_rendered(
    shared_broker: Any, topic_prefix: str, browser: Any
) -> None:
    broker = Broker(shared_broker.host, shared_broker.port, topic_prefix)
    await broker.publish("display", model())
    bad_stop = {**model()["next_stop"], "waits": "many"}
    bad: list[tuple[str, bytes | dict[str, Any]]] = [
        ("not_json", b"{not json"),
        ("too_deep", b"[" * 50000),
        ("not_utf8", b'{"v":"\xff"}'),
        ("non_finite", json.dumps(model(t=float("nan"))).encode()),
        ("not_object", b"[1,2]"),
        ("wrong_version", model(v=2)),
        ("missing", {k: v for k, v in model().items() if k != "stops"}),
        ("unknown_field", model(extra=1)),
        ("invalid", model(next_stop=bad_stop)),
        ("invalid", model(on_board=-1)),
        ("wrong_bus", model(bus_id="bus-other")),
        ("too_large", model(stops=[model()["next_stop"]] * 3000)),
    ]
    async with serve(
        shared_broker.host, shared_broker.port, topic_prefix, max_payload_bytes=65536
    ) as url:
        page = await open_page(browser, url)
        await text_is(page, "#on-board", "17")
        with capture_logs() as logs:
            for _, payload in bad:
                await broker.publish("display", payload)
            await broker.publish("display", model(on_board=99, route_id="R-after"))
            await text_is(page, "#on-board", "99")
        # nothing bad was shown: the good model before and after the bad ones
        await text_is(page, "#route", "R-after")
        st = await state(url)
        want: dict[str, int] = {}
        for reason, _ in bad:
            want[reason] = want.get(reason, 0) + 1
        assert st["stats"]["displays_rejected"] == want
        assert st["display"]["on_board"] == 99
        rejected = [e for e in logs if e["event"] == "driver_display_rejected"]
        assert [e["reason"] for e in rejected] == [r for r, _ in bad]
        assert all(e["log_level"] == "warning" and e["bus_id"] == BUS for e in rejected)
        assert page.errors == []
    await broker.publish("display", b"")


async def test_language_switch_is_remembered(
    shared_broker: Any, topic_prefix: str, browser: Any
) -> None:
    broker = Broker(shared_broker.host, shared_broker.port, topic_prefix)
    await broker.publish("display", model())
    async with serve(shared_broker.host, shared_broker.port, topic_prefix) as url:
        page = await open_page(browser, url, 1280, 800)
        await text_is(page, "#stop-requested", "하차 요청")
        await text_is(page, "#lang", "EN")
        await page.click("#lang")
        await text_is(page, "#stop-requested", "STOP REQUESTED")
        await text_is(page, "#ack-label", "ACKNOWLEDGE (4)")
        await text_is(page, '[data-i18n="next_stop"]', "Next stop")
        await text_is(page, "#lang", "한국어")
        assert await page.evaluate("document.documentElement.lang") == "en"
        await page.reload()
        await text_is(page, "#stop-requested", "STOP REQUESTED")
        await page.click("#lang")
        await text_is(page, "#stop-requested", "하차 요청")
        await page.reload()
        await text_is(page, '[data-i18n="next_stop"]', "다음 정류장")
        assert page.errors == []
    await broker.publish("display", b"")


async def test_ack_endpoint_refuses_what_a_browser_must_not_do(
    shared_broker: Any, topic_prefix: str
) -> None:
    broker = Broker(shared_broker.host, shared_broker.port, topic_prefix)
    await broker.publish("display", model())
    async with serve(
        shared_broker.host, shared_broker.port, topic_prefix, ack_token="s3cret"
    ) as url:
        ok = {"Content-Type": "application/json", "Authorization": "Bearer s3cret"}
        auth = {"Authorization": "Bearer s3cret"}
        async with (
            httpx.AsyncClient(base_url=url, headers=auth, timeout=LIVE_TIMEOUT_S) as c,
            broker.watch("driver/ack") as acks,
        ):
            async with asyncio.timeout(10):
                while (await c.get("state")).json()["display"] is None:
                    await asyncio.sleep(0.05)
            r1 = b'{"request_ids":["r-1"]}'
            cases: list[tuple[str, int, dict[str, str], bytes]] = [
                (
                    "unauthorized",
                    401,
                    {"Content-Type": "application/json", "Authorization": ""},
                    r1,
                ),
                ("unauthorized", 401, {**ok, "Authorization": "Bearer nope"}, r1),
                ("forbidden_origin", 403, {**ok, "Origin": "http://evil.example"}, r1),
                ("not_json", 415, {**ok, "Content-Type": "text/plain"}, r1),
                ("too_large", 413, ok, b'{"request_ids":["' + b"x" * 20000 + b'"]}'),
                ("not_json", 400, ok, b"{nope"),
                ("too_deep", 400, ok, b'{"request_ids":[["r-1"]]}'),
                ("invalid", 400, ok, b'{"request_ids":[]}'),
                ("invalid", 400, ok, b'{"request_ids":["a/b"]}'),
                ("unknown_field", 400, ok, b'{"request_ids":["r-1"],"t":1}'),
                ("nothing_to_ack", 409, ok, b'{"request_ids":["r-unknown"]}'),
            ]
            with capture_logs() as logs:
                for reason, status, headers, body in cases:
                    r = await c.post("ack", content=body, headers=headers)
                    assert (r.status_code, r.json()["error"]) == (status, reason), body[:60]
            assert acks.empty()
            want: dict[str, int] = {}
            for reason, *_ in cases:
                want[reason] = want.get(reason, 0) + 1
            assert (await c.get("state")).json()["stats"]["acks_rejected"] == want
            assert [e["reason"] for e in logs if e["event"] == "driver_ack_rejected"] == [
                reason for reason, *_ in cases
            ]
            # the same origin and the token: published, ids no longer shown left out
            r = await c.post(
                "ack",
                content=b'{"request_ids":["r-3","r-gone"]}',
                headers={**ok, "Origin": url.rstrip("/")},
            )
            assert r.status_code == 200
            assert r.json() == {"acked": ["r-3"], "stale": ["r-gone"]}
            async with asyncio.timeout(10):
                m = await acks.get()
            assert json.loads(m.payload)["request_ids"] == ["r-3"]
            page = await c.get("")
            assert "default-src 'none'" in page.headers["content-security-policy"]
            assert '<script src="app.js"' in page.text
    await broker.publish("display", b"")


async def test_with_a_token_reading_the_request_ids_needs_it_too(
    shared_broker: Any, topic_prefix: str, browser: Any
) -> None:
    from playwright.async_api import expect

    broker = Broker(shared_broker.host, shared_broker.port, topic_prefix)
    await broker.publish("display", model())
    async with serve(
        shared_broker.host, shared_broker.port, topic_prefix, ack_token="s3cret"
    ) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            for path in ("state", "events", "events?token=nope"):
                r = await c.get(path)
                assert (r.status_code, r.json()["error"]) == (401, "unauthorized"), path
            r = await c.get("state?token=s3cret")
            assert r.status_code == 200
            assert r.json()["stats"]["readers_refused"] == 3
            async with c.stream("GET", "events?token=s3cret") as ok:
                assert ok.status_code == 200
                assert await anext(ok.aiter_lines()) == "retry: 1000"
        # a terminal opened once with the token shows the model and acks
        page = await open_page(browser, url + "?token=s3cret")
        await text_is(page, "#next-name", "정자역 Jeongja Stn.")
        async with broker.watch("driver/ack") as acks:
            await page.click("#ack")
            async with asyncio.timeout(10):
                m = await acks.get()
        assert json.loads(m.payload)["request_ids"] == ["r-1", "r-2", "r-3", "r-far"]
        assert page.errors == []
        # one without it shows nothing of the riders' requests
        stranger = await open_page(browser, url)
        await expect(stranger.locator("#conn-page")).to_have_class("pill down", timeout=WAIT_MS)
        await text_is(stranger, "#next-name", "–")  # never had a model
        assert "r-1" not in await stranger.content()
    await broker.publish("display", b"")


async def test_too_many_browsers_get_503(shared_broker: Any, topic_prefix: str) -> None:
    async with serve(shared_broker.host, shared_broker.port, topic_prefix, max_clients=1) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            async with c.stream("GET", "events") as first:
                assert first.status_code == 200
                lines = first.aiter_lines()
                assert await anext(lines) == "retry: 1000"
                r = await c.get("events")
                assert r.status_code == 503
                st = (await c.get("state")).json()["stats"]
                assert (st["clients"], st["clients_refused"]) == (1, 1)
            # a browser that went away frees its place
            async with asyncio.timeout(10):
                while (await c.get("state")).json()["stats"]["clients"] != 0:
                    await asyncio.sleep(0.05)
            async with c.stream("GET", "events") as again:
                assert again.status_code == 200


async def test_two_page_servers_of_one_bus_do_not_take_each_others_connection(
    shared_broker: Any, topic_prefix: str
) -> None:
    """Two terminals of one bus (or two test runs on one broker): with one fixed client id
    the broker handed the connection back and forth and models were lost meanwhile."""
    broker = Broker(shared_broker.host, shared_broker.port, topic_prefix)
    host, port = shared_broker.host, shared_broker.port
    with capture_logs() as logs:
        async with serve(host, port, topic_prefix) as a, serve(host, port, topic_prefix) as b:
            async with httpx.AsyncClient(timeout=LIVE_TIMEOUT_S) as c:
                for url in (a, b):
                    async with asyncio.timeout(15):
                        while not (await c.get(url + "state")).json()["state"]["broker"]:
                            await asyncio.sleep(0.05)
                for n in range(1, 6):
                    await broker.publish("display", model(on_board=n))
                for url in (a, b):
                    async with asyncio.timeout(15):
                        while ((await c.get(url + "state")).json()["display"] or {}).get(
                            "on_board"
                        ) != 5:
                            await asyncio.sleep(0.05)
                    assert (await c.get(url + "state")).json()["stats"]["displays"] == 5
    assert [e for e in logs if e["event"] == "uplink_lost"] == []
    await broker.publish("display", b"")
