"""A live web view of the fleet (driver display model, status, occupancy, requests).

Per bus it shows the route, the next stop and who waits there, the stops after it, stop
requests and assistance, in words; the boarding-wait requests with their state
("seen by bus-0001", "MISSED by bus-0002: waiting for the next bus") and the latest
request statuses. Stop names come from GTFS (``stops``) or the display models.

Serves one HTML page and a Server-Sent-Events stream fed by an MQTT subscription to
every busbell topic under the prefix. ``busbell demo`` starts it; ops can run it on its
own with ``busbell demo --view-only``. The page keeps the latest message per topic, so
retained state (status, display, occupancy, waits) shows as soon as it loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Mapping
from importlib import resources
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from busbell._errors import UplinkError
from busbell._http import http_server, serve_http
from busbell._logging import get_logger
from busbell._mqtt import MqttSession, MqttSettings, ReconnectLoop, SessionChange
from busbell._rejects import RejectLog
from busbell._safejson import JsonLimits, JsonRejected, loads_bounded
from busbell._topics import Topics

__all__ = ["FleetView", "serve_view", "stop_names"]

log = get_logger("busbell.webview")

VIEW_LIMITS = JsonLimits(max_bytes=1024 * 1024)
"""What the fleet view parses (a fares batch, the largest payload, is 256 KiB by default)."""


class FleetView:
    """Latest message per topic, fanned out to browser clients."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        max_clients: int = 64,
        stops: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.stops = dict(stops or {})
        """Stop id -> name (GTFS), for the page's readable stops."""
        self.topics = Topics(settings.prefix)
        self.latest: dict[str, dict[str, Any]] = {}
        self._clients: set[asyncio.Queue[str]] = set()
        self._max_clients = max_clients
        self._closing = asyncio.Event()
        self.connected = False
        self.rejects = RejectLog(log, "view_bad_payload")
        """Payloads the bounded parser refused, by reason (logged, rate-limited)."""

    def close(self) -> None:
        """End every event stream (the server is shutting down); new ones end at once."""
        self._closing.set()

    def _publish(self, item: dict[str, Any]) -> None:
        data = json.dumps(item, ensure_ascii=False)
        for q in list(self._clients):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()  # coalesce: a slow browser loses the oldest update
            q.put_nowait(data)

    async def follow(self) -> None:
        """Subscribe to every busbell topic and keep the latest state (runs forever)."""
        client_id = f"busbell-view-{secrets.token_hex(4)}"
        loop: ReconnectLoop[MqttSession] = ReconnectLoop(
            lambda: MqttSession(self.settings, client_id, clean_start=True),
            initial_s=self.settings.backoff_initial_s,
            max_s=self.settings.backoff_max_s,
            on_change=self._changed,
        )

        async def keep_latest(s: MqttSession) -> None:
            await s.subscribe([self.topics.everything()], qos=0)
            loop.up()
            async for m in s.messages():
                self._on_message(m.topic, m.payload)
            raise UplinkError("message stream ended")

        await loop.run(keep_latest)

    def _changed(self, change: SessionChange) -> None:
        self.connected = change.state == "up"
        if change.state == "up":
            log.info("view_connected", broker=f"{self.settings.host}:{self.settings.port}")
        elif change.errors:
            log.warning("view_disconnected", error=change.error)

    def _on_message(self, topic: str, payload: bytes) -> None:
        parsed = self.topics.parse(topic)
        if parsed is None or parsed.kind == "fleet_keys":
            return
        try:
            body = loads_bounded(payload, VIEW_LIMITS) if payload else None
        except JsonRejected as exc:
            self.rejects.reject(exc.reason, topic=topic)
            return
        if parsed.kind == "fares" and isinstance(body, dict):
            evs = body.get("events", [])
            body = {"count": len(evs) if isinstance(evs, list) else 0}
        item = {"topic": topic, "kind": parsed.kind, "ids": parsed.ids, "body": body}
        if body is None:
            self.latest.pop(topic, None)
        else:
            self.latest[topic] = item
        self._publish(item)

    async def stream(self) -> AsyncIterator[str]:
        """SSE lines: a snapshot of the latest state, then every update, until closed.

        The stream ends when :meth:`close` is called: a browser keeps it open for as
        long as the page is, and the server's shutdown would otherwise wait for it.
        """
        if self._closing.is_set():
            return
        if len(self._clients) >= self._max_clients:
            yield "event: busy\ndata: {}\n\n"
            return
        q: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)
        self._clients.add(q)
        closing: asyncio.Future[Any] = asyncio.ensure_future(self._closing.wait())
        got: asyncio.Future[Any] | None = None
        try:
            for item in list(self.latest.values()):
                yield f"data: {json.dumps(item, ensure_ascii=False)}\n\n"
            while not closing.done():
                if got is None:
                    got = asyncio.ensure_future(q.get())
                await asyncio.wait({got, closing}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
                if closing.done():
                    return
                if got.done():
                    data, got = got.result(), None
                    yield f"data: {data}\n\n"
                else:
                    yield ": keep-alive\n\n"
        finally:
            closing.cancel()
            if got is not None:
                got.cancel()
            self._clients.discard(q)

    def app(self) -> Starlette:
        """The ASGI app: ``/`` page, ``/events`` SSE, ``/state`` snapshot, ``/stops`` names."""

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

        async def stops(_: Request) -> JSONResponse:
            return JSONResponse(self.stops)

        return Starlette(
            routes=[
                Route("/", page),
                Route("/events", events),
                Route("/state", state),
                Route("/stops", stops),
            ]
        )


def stop_names(gtfs: str | os.PathLike[str] | None) -> dict[str, str]:
    """Stop id -> name from a GTFS static directory (empty without one).

    Raises:
        ContractError: the directory is not a readable GTFS feed.
    """
    if gtfs is None:
        return {}
    from busbell._gtfs import load_gtfs

    return {sid: stop.name for sid, stop in load_gtfs(gtfs).stops.items() if stop.name}


async def serve_view(
    settings: MqttSettings,
    host: str,
    port: int,
    *,
    stops: Mapping[str, str] | None = None,
) -> None:
    """Run the view until cancelled.

    It leaves the process's signals to its caller (uvicorn's own handlers would replace
    those of ``busbell demo``).

    Args:
        settings: the broker and topic prefix.
        host: the address to listen on.
        port: the TCP port to listen on.
        stops: stop id -> name (:func:`stop_names` of a GTFS directory): the page names
            stops with it (else with the names in the buses' display models, or the ids).
    """
    view = FleetView(settings, stops=stops)
    server = http_server(
        uvicorn.Config(view.app(), host=host, port=port, log_level="warning", lifespan="off"),
        on_shutdown=view.close,
    )
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(view.follow(), name="busbell.view.mqtt")
            tg.create_task(serve_http(server), name="busbell.view.http")
    finally:
        view.close()


PAGE = (resources.files("busbell") / "webview.html").read_text(encoding="utf-8")
