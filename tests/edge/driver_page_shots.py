"""Screenshots of the driver display for ``docs/img/`` (not a test; run it by hand).

    .venv/bin/python -m tests.edge.driver_page_shots [--out docs/img]

Serves the page with ``run_driver_page`` (as ``busbell edge display`` does) against the
machine's Mosquitto on 127.0.0.1:1883 under a fresh topic prefix, publishes display
models there, and photographs headless Chromium (``/usr/bin/chromium``) at a 1024x600 and
a 1280x800 terminal. Korean text needs a Korean system font (``fonts-nanum`` or
``fonts-noto-cjk``); the page loads no web fonts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from playwright.async_api import Page, async_playwright

from busbell._mqtt import MqttSession, MqttSettings
from busbell._ports import free_port
from edge._driver_page import DriverPageSettings, run_driver_page
from tests.factories.driver_page import stop

BUS = "bus-55-01"
CHROMIUM = "/usr/bin/chromium"


def busy_model() -> dict[str, Any]:
    nxt = stop(
        "BD003",
        "정자역 Jeongja Stn.",
        3,
        3,
        assist=True,
        requested=True,
        ids=("w-a1", "w-a2", "w-a3"),
    )
    return {
        "v": 1,
        "bus_id": BUS,
        "t": time.time(),
        "route_id": "55",
        "trip_id": "55-0812",
        "online": True,
        "on_board": 23,
        "next_stop": nxt,
        "stops": [
            nxt,
            stop("BD004", "정자동 카페거리 Jeongja Cafe St.", 4),
            stop("BD005", "수내역 Sunae Stn.", 5, 1, ids=("w-b1",)),
            stop("BD006", "서현역 Seohyeon Stn.", 6, 2, assist=True, ids=("w-c1", "w-c2")),
            stop("BD007", "서현시장 Seohyeon Market", 7, requested=False),
            stop("BD008", "백현동 Baekhyeon-dong", 8, 1, ids=("w-d1",)),
            stop("BD009", "판교역 Pangyo Stn.", 9, 4, ids=("w-e1", "w-e2", "w-e3", "w-e4")),
        ],
    }


def quiet_model() -> dict[str, Any]:
    nxt = stop("BD009", "판교역 Pangyo Stn.", 9)
    return {
        **busy_model(),
        "on_board": 7,
        "next_stop": nxt,
        "stops": [nxt, stop("BD010", "판교테크노밸리 Pangyo Techno Valley", 10)],
    }


def long_model() -> dict[str, Any]:
    """Long names and many requests: the type shrinks, nothing is cut off."""
    names = [
        "판교테크노밸리 Pangyo Techno Valley",
        "정자동 카페거리 Jeongja Cafe St.",
        "서현역 AK플라자 Seohyeon Stn. AK Plaza",
        "수원월드컵경기장 Suwon World Cup Stadium",
        "경기대학교 후문 Kyonggi University Back Gate",
        "아주대학교입구 Ajou University Entrance",
    ]
    nxt = stop(
        "X0",
        "수원역환승센터(10번승강장) Suwon Stn. Transfer Center Platform 10",
        1,
        12,
        assist=True,
        requested=True,
        ids=tuple(f"w-x{k}" for k in range(12)),
    )
    following = [
        stop(
            f"X{i + 1}",
            name,
            i + 2,
            i,
            assist=i % 2 == 0,
            requested=i == 3,
            ids=tuple(f"w-{i}-{k}" for k in range(i)),
        )
        for i, name in enumerate(names)
    ]
    return {
        **busy_model(),
        "route_id": "G6000",
        "trip_id": "G6000-0712-1",
        "on_board": 58,
        "next_stop": nxt,
        "stops": [nxt, *following],
    }


async def publish(settings: MqttSettings, topic: str, model: dict[str, Any]) -> None:
    async with MqttSession(settings, f"shots-{uuid.uuid4().hex[:8]}", clean_start=True) as s:
        await s.publish(topic, json.dumps(model, ensure_ascii=False), qos=1, retain=True)


async def shoot(page: Page, out: Path, name: str) -> None:
    while await page.evaluate("document.getAnimations().length"):  # the flash has to end
        await asyncio.sleep(0.1)
    await page.screenshot(path=str(out / name))
    print(out / name)


async def main(out: Path) -> None:
    prefix = f"shots-{uuid.uuid4().hex[:8]}/busbell/v1"
    mqtt = MqttSettings(prefix=prefix)
    topic = f"{prefix}/buses/{BUS}/display"
    status = f"{prefix}/buses/{BUS}/status"
    port = free_port()
    settings = DriverPageSettings(port=port)
    stop_server = asyncio.Event()
    await publish(mqtt, status, {"state": "online", "bus_id": BUS})
    await publish(mqtt, topic, busy_model())
    server = asyncio.create_task(run_driver_page(mqtt, BUS, settings, stop=stop_server))
    url = f"http://127.0.0.1:{port}/"
    out.mkdir(parents=True, exist_ok=True)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM)
            for w, h in ((1024, 600), (1280, 800)):
                for lang in ("ko", "en"):
                    ctx = await browser.new_context(viewport={"width": w, "height": h})
                    page = await ctx.new_page()
                    await page.goto(url)
                    if lang == "en":
                        await page.click("#lang")
                    await page.wait_for_selector("#ack.pending")
                    await shoot(page, out, f"driver-display-{w}x{h}-{lang}.png")
                    await ctx.close()
            ctx = await browser.new_context(viewport={"width": 1024, "height": 600})
            page = await ctx.new_page()
            await page.goto(url)
            await page.click("#ack")
            await page.wait_for_selector("#ack.done")
            await shoot(page, out, "driver-display-acked-1024x600-ko.png")
            await publish(mqtt, topic, long_model())
            await page.wait_for_selector("#ack.pending")
            await shoot(page, out, "driver-display-long-names-1024x600-ko.png")
            await publish(mqtt, topic, quiet_model())
            await page.wait_for_selector("#stop-requested", state="hidden")
            await shoot(page, out, "driver-display-quiet-1024x600-ko.png")
            stop_server.set()
            await server
            await page.wait_for_selector("body.disconnected")
            await shoot(page, out, "driver-display-disconnected-1024x600-ko.png")
            await browser.close()
    finally:
        stop_server.set()
        await asyncio.gather(server, return_exceptions=True)
        await publish_clear(mqtt, (topic, status))


async def publish_clear(settings: MqttSettings, topics: tuple[str, ...]) -> None:
    async with MqttSession(settings, f"shots-{uuid.uuid4().hex[:8]}", clean_start=True) as s:
        for t in topics:
            await s.publish(t, b"", qos=1, retain=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    asyncio.run(main(ap.parse_args().out))
