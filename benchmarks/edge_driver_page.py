"""How long a display model takes from the broker to the driver's screen (not a test).

    .venv/bin/python -m benchmarks.edge_driver_page [--models 300] [--gap-ms 50]

Serves the page with ``run_driver_page`` against the machine's Mosquitto (127.0.0.1:1883,
a fresh prefix), opens it in headless Chromium (``/usr/bin/chromium``), publishes
``--models`` display models ``--gap-ms`` apart and records, in the page, when each one's
``on_board`` figure changed in the DOM (a MutationObserver; wall clock, same machine).
Latency = DOM change - publish call. The ceiling, timed in the same run and the same way,
is a bare MQTT subscriber receiving the same publishes: the page adds its server's
validation and SSE fan-out, the browser's EventSource, JSON parse and render.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

from playwright.async_api import async_playwright

from busbell._mqtt import MqttSession, MqttSettings
from busbell._ports import free_port
from edge._driver_page import DriverPageSettings, run_driver_page

BUS = "bus-bench"
CHROMIUM = "/usr/bin/chromium"

OBSERVE = """() => {
  window.__marks = [];
  const el = document.getElementById("on-board");
  new MutationObserver(() => {
    window.__marks.push([el.textContent, performance.timeOrigin + performance.now()]);
  }).observe(el, {childList: true, characterData: true, subtree: true});
}"""


def model(i: int) -> dict[str, Any]:
    nxt = {
        "stop_id": "S1",
        "name": "정자역 Jeongja Stn.",
        "seq": 1,
        "waits": 2,
        "assist": False,
        "stop_requested": False,
        "request_ids": ["r-1", "r-2"],
    }
    stops = [nxt] + [
        {**nxt, "stop_id": f"S{k}", "seq": k, "request_ids": [f"r-{k}"], "waits": 1}
        for k in range(2, 9)
    ]
    return {
        "v": 1,
        "bus_id": BUS,
        "t": time.time(),
        "route_id": "55",
        "trip_id": "55-1",
        "online": True,
        "on_board": i,
        "next_stop": nxt,
        "stops": stops,
    }


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def main(models: int, gap_ms: float) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}/busbell/v1"
    mqtt = MqttSettings(prefix=prefix)
    topic = f"{prefix}/buses/{BUS}/display"
    port = free_port()
    stop = asyncio.Event()
    server = asyncio.create_task(
        run_driver_page(mqtt, BUS, DriverPageSettings(port=port), stop=stop)
    )
    sent: dict[str, float] = {}
    bare: dict[str, float] = {}
    pub = MqttSession(mqtt, f"bench-pub-{uuid.uuid4().hex[:6]}", clean_start=True)
    sub = MqttSession(mqtt, f"bench-sub-{uuid.uuid4().hex[:6]}", clean_start=True)
    try:
        async with async_playwright() as pw, pub, sub:
            await sub.subscribe([topic], qos=1)

            async def receive() -> None:
                async for m in sub.messages():
                    if m.payload:
                        bare.setdefault(str(json.loads(m.payload)["on_board"]), time.time())

            reader = asyncio.create_task(receive())
            browser = await pw.chromium.launch(executable_path=CHROMIUM)
            page = await browser.new_page(viewport={"width": 1024, "height": 600})
            await pub.publish(topic, json.dumps(model(0)), qos=1, retain=True)
            await page.goto(f"http://127.0.0.1:{port}/")
            await page.wait_for_selector("#conn-broker.ok")
            await page.evaluate(OBSERVE)
            for i in range(1, models + 1):
                sent[str(i)] = time.time()
                await pub.publish(topic, json.dumps(model(i)), qos=1, retain=True)
                await asyncio.sleep(gap_ms / 1000)
            await asyncio.sleep(1.0)
            marks: list[list[Any]] = await page.evaluate("window.__marks")
            await browser.close()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await pub.publish(topic, b"", qos=1, retain=True)
    finally:
        stop.set()
        await asyncio.gather(server, return_exceptions=True)
    shown: dict[str, float] = {}
    for text, ms in marks:
        shown.setdefault(text, ms / 1000)
    page_ms = [1000 * (shown[k] - sent[k]) for k in sent if k in shown]
    bare_ms = [1000 * (bare[k] - sent[k]) for k in sent if k in bare]
    print(f"models published: {models}, {gap_ms:.0f} ms apart; rendered {len(page_ms)}")
    for name, xs in (("page (publish -> DOM)", page_ms), ("bare MQTT subscriber", bare_ms)):
        print(
            f"{name:24s} p50 {pct(xs, 0.5):6.1f} ms  p99 {pct(xs, 0.99):6.1f} ms  "
            f"max {max(xs):6.1f} ms  mean {statistics.fmean(xs):6.1f} ms"
        )
    print(
        f"ratio page/bare: p50 {pct(page_ms, 0.5) / pct(bare_ms, 0.5):.1f}x, "
        f"p99 {pct(page_ms, 0.99) / pct(bare_ms, 0.99):.1f}x"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=300)
    ap.add_argument("--gap-ms", type=float, default=50.0)
    a = ap.parse_args()
    asyncio.run(main(a.models, a.gap_ms))
