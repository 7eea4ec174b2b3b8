"""A live web view of the fleet (driver display model, status, occupancy, requests).

Serves one HTML page and a Server-Sent-Events stream fed by an MQTT subscription to
every busbell topic under the prefix. ``busbell demo`` starts it; ops can run it on its
own with ``busbell demo --view-only``. The page keeps the latest message per topic, so
retained state (status, display, occupancy, waits) shows as soon as it loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from busbell._errors import UplinkError
from busbell._http import serve_http
from busbell._logging import get_logger
from busbell._mqtt import MqttSession, MqttSettings, backoff_delays
from busbell._topics import Topics

__all__ = ["FleetView", "serve_view"]

log = get_logger("busbell.webview")


class FleetView:
    """Latest message per topic, fanned out to browser clients."""

    def __init__(self, settings: MqttSettings, *, max_clients: int = 64) -> None:
        self.settings = settings
        self.topics = Topics(settings.prefix)
        self.latest: dict[str, dict[str, Any]] = {}
        self._clients: set[asyncio.Queue[str]] = set()
        self._max_clients = max_clients
        self.connected = False

    def _publish(self, item: dict[str, Any]) -> None:
        data = json.dumps(item, ensure_ascii=False)
        for q in list(self._clients):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()  # coalesce: a slow browser loses the oldest update
            q.put_nowait(data)

    async def follow(self) -> None:
        """Subscribe to every busbell topic and keep the latest state (runs forever)."""
        delays = backoff_delays(self.settings.backoff_initial_s, self.settings.backoff_max_s)
        client_id = f"busbell-view-{secrets.token_hex(4)}"
        while True:
            try:
                async with MqttSession(self.settings, client_id, clean_start=True) as s:
                    await s.subscribe([self.topics.everything()], qos=0)
                    self.connected = True
                    log.info("view_connected", broker=f"{self.settings.host}:{self.settings.port}")
                    async for m in s.messages():
                        parsed = self.topics.parse(m.topic)
                        if parsed is None or parsed.kind == "fleet_keys":
                            continue
                        try:
                            body = json.loads(m.payload) if m.payload else None
                        except ValueError:
                            log.warning("view_bad_payload", topic=m.topic)
                            continue
                        if parsed.kind == "fares" and isinstance(body, dict):
                            evs = body.get("events", [])
                            body = {"count": len(evs) if isinstance(evs, list) else 0}
                        item = {
                            "topic": m.topic,
                            "kind": parsed.kind,
                            "ids": parsed.ids,
                            "body": body,
                        }
                        if body is None:
                            self.latest.pop(m.topic, None)
                        else:
                            self.latest[m.topic] = item
                        self._publish(item)
            except UplinkError as exc:
                self.connected = False
                log.warning("view_disconnected", error=str(exc))
                await asyncio.sleep(next(delays))

    async def stream(self) -> AsyncIterator[str]:
        """SSE lines: a snapshot of the latest state, then every update."""
        if len(self._clients) >= self._max_clients:
            yield "event: busy\ndata: {}\n\n"
            return
        q: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)
        self._clients.add(q)
        try:
            for item in list(self.latest.values()):
                yield f"data: {json.dumps(item, ensure_ascii=False)}\n\n"
            while True:
                try:
                    data = await asyncio.wait_for(q.get(), timeout=15)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield f"data: {data}\n\n"
        finally:
            self._clients.discard(q)

    def app(self) -> Starlette:
        """The ASGI app: ``/`` page, ``/events`` SSE, ``/state`` JSON snapshot."""

        async def page(_: Request) -> HTMLResponse:
            return HTMLResponse(PAGE)

        async def events(_: Request) -> StreamingResponse:
            return StreamingResponse(
                self.stream(),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )

        async def state(_: Request) -> JSONResponse:
            return JSONResponse({"connected": self.connected, "topics": list(self.latest.values())})

        return Starlette(
            routes=[Route("/", page), Route("/events", events), Route("/state", state)]
        )


async def serve_view(settings: MqttSettings, host: str, port: int) -> None:
    """Run the view until cancelled."""
    view = FleetView(settings)
    server = uvicorn.Server(
        uvicorn.Config(view.app(), host=host, port=port, log_level="warning", lifespan="off")
    )
    async with asyncio.TaskGroup() as tg:
        tg.create_task(view.follow(), name="busbell.view.mqtt")
        tg.create_task(serve_http(server), name="busbell.view.http")


PAGE = (resources.files("busbell") / "webview.html").read_text(encoding="utf-8")
