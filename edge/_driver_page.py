"""The driver display: a web page the edge serves to the driver's terminal.

:class:`DriverDisplay` follows the bus's retained display model v1
(``buses/{bus}/display``) and its retained status (``buses/{bus}/status``, whose last
will says when the edge daemon is gone) on the local broker, through an MQTT link (the
daemon's own :class:`~edge._uplink.MqttLink`, or one of its own for
``busbell edge display``). Every model is checked with
:func:`busbell.validate_display` before a browser sees it: a malformed, oversized or
foreign one is rejected, counted by reason and logged (``driver_display_rejected``),
and the page keeps showing the last good model.

:func:`serve_driver_page` serves (starlette on uvicorn, no FastAPI) ``GET /`` (the page:
``driver_page.html``, ``.js``, ``.css``, package data; no CDN, no web fonts),
``GET /events`` (Server-Sent Events: ``hello``, then ``display`` and ``state`` whenever
they change, and ``state`` at least every ``heartbeat_s``), ``GET /state`` (JSON
snapshot) and ``POST /ack`` (the big button: publishes
``buses/{bus}/driver/ack`` ``{"t","request_ids"}`` with the ids the page shows). See
``docs/driver-display.md``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

from busbell import (
    BusbellError,
    ContractError,
    JsonLimits,
    JsonRejected,
    RejectLog,
    Topics,
    UplinkError,
    canonical_bytes,
    get_logger,
    loads_object,
    option,
    validate_display,
    validate_driver_ack,
)
from busbell._mqtt import MqttSettings, SessionChange, retry_with_backoff

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = [
    "ASSETS",
    "AckRejected",
    "DisplayLink",
    "DriverDisplay",
    "DriverPageSettings",
    "DriverPageStats",
    "bind_listener",
    "run_driver_page",
    "serve_driver_page",
]

_log = get_logger("edge.driver_page")

ASSETS = {
    "/": ("driver_page.html", "text/html; charset=utf-8"),
    "/app.js": ("driver_page.js", "text/javascript; charset=utf-8"),
    "/style.css": ("driver_page.css", "text/css; charset=utf-8"),
}
"""URL path -> (package-data file in ``edge``, media type)."""

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_MONITOR_S = 0.25
_MAX_ACK_BODY = 16384
ACK_LIMITS = JsonLimits(max_bytes=_MAX_ACK_BODY, max_depth=2)
"""An ack request body: ``{"request_ids": [...]}``."""
DISPLAY_DEPTH = 4
"""model -> ``stops`` -> stop -> ``request_ids``."""
STATUS_DEPTH = 8
"""The edge's status nests counters a few levels; only its ``state`` is read."""


@dataclass(frozen=True, slots=True)
class DriverPageSettings:
    """The driver display page (the ``[driver_page]`` config section)."""

    enabled: bool = option(
        False, doc="Serve the driver display page from `busbell edge run` (task `.driver_page`)."
    )
    host: str = option(
        "127.0.0.1",
        doc="Address the page listens on: the bus unit's address on the onboard network "
        "the driver terminal is on (0.0.0.0 for every interface).",
    )
    port: int = option(8470, doc="TCP port of the page (0 picks a free one).")
    stops_shown: int = option(
        5,
        doc="Upcoming stops listed after the next stop; the ack button acknowledges the "
        "requests of the next stop and of these.",
    )
    stale_after_s: float = option(
        45.0,
        doc="The page greys out and says so when its display model is older than this "
        "(the edge republishes the model at least every 30 s).",
    )
    heartbeat_s: float = option(
        5.0,
        doc="Seconds between two connection-state events to each browser; a page that "
        "misses three reconnects by itself and shows itself disconnected.",
    )
    max_clients: int = option(8, doc="Most browsers following the page at once; more get HTTP 503.")
    max_payload_bytes: int = option(
        262144, doc="A display or status message larger than this is rejected unparsed."
    )
    ack_token: str | None = option(
        None,
        doc="When set, POST /ack needs the header `Authorization: Bearer TOKEN`, and GET "
        "/events and /state the same header or `?token=TOKEN` (they show the riders' "
        "request ids); open the page once as `/?token=TOKEN` (the page keeps it in its "
        "local storage). Unset, anyone on the onboard network can read and ack.",
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("driver_page.port must be 0-65535")
        if not 0 <= self.stops_shown <= 50:
            raise ValueError("driver_page.stops_shown must be 0-50")
        if not (self.stale_after_s > 0 and self.heartbeat_s > 0):
            raise ValueError("driver_page.stale_after_s and heartbeat_s must be positive")
        if self.max_clients < 1 or self.max_payload_bytes < 1024:
            raise ValueError("driver_page.max_clients >= 1 and max_payload_bytes >= 1024")
        if self.ack_token is not None and not self.ack_token:
            raise ValueError("driver_page.ack_token must not be empty (leave it unset)")


class DisplayLink(Protocol):
    """What the page needs of an MQTT link (:class:`edge._uplink.MqttLink` is one)."""

    @property
    def is_connected(self) -> bool:
        """Whether a broker session is up."""
        ...

    def route(self, topic: str, handler: Callable[[bytes], Awaitable[None]]) -> None:
        """Deliver messages on ``topic`` to ``handler`` (before the link runs)."""
        ...

    async def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish; raises :class:`busbell.UplinkError` when that fails."""
        ...


@dataclass(slots=True)
class DriverPageStats:
    """Counters of the driver page (``GET /state`` shows them)."""

    displays: int = 0
    displays_cleared: int = 0
    displays_rejected: dict[str, int] = dataclasses.field(default_factory=dict)
    status_rejected: dict[str, int] = dataclasses.field(default_factory=dict)
    acks_published: int = 0
    ack_ids_published: int = 0
    acks_rejected: dict[str, int] = dataclasses.field(default_factory=dict)
    clients: int = 0
    clients_refused: int = 0
    readers_refused: int = 0
    """GET /events or /state without the token (when ``ack_token`` is set)."""


class AckRejected(BusbellError):
    """An ack request the page cannot publish.

    Attributes:
        reason: snake_case reason (the ``acks_rejected`` counter key).
        status: the HTTP status to answer with.
    """

    def __init__(self, reason: str, status: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


class _Client:
    """One browser's pending events, coalesced to the latest of each kind."""

    __slots__ = ("pending", "wake")

    def __init__(self) -> None:
        self.pending: dict[str, str] = {}
        self.wake = asyncio.Event()

    def put(self, event: str, data: str) -> None:
        self.pending.pop(event, None)  # re-insert: events leave in the order they changed
        self.pending[event] = data
        self.wake.set()


def _ids_of(model: dict[str, Any] | None) -> set[str]:
    if model is None:
        return set()
    stops = list(model["stops"])
    if model["next_stop"] is not None:
        stops.append(model["next_stop"])
    return {rid for stop in stops for rid in stop["request_ids"]}


class DriverDisplay:
    """The latest display model and edge state of one bus, fanned out to browsers.

    Args:
        bus_id: the bus whose display this is.
        topics: topic names under the configured prefix.
        link: the MQTT link (routes are registered here: build before the link runs).
        settings: the ``[driver_page]`` settings.
        clock: the bus's time (UNIX seconds) for ack ``t`` and the model's age.
        monotonic: a monotonic clock (seconds).
    """

    def __init__(
        self,
        bus_id: str,
        topics: Topics,
        link: DisplayLink,
        settings: DriverPageSettings,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus_id = bus_id
        self.topics = topics
        self.link = link
        self.settings = settings
        self.stats = DriverPageStats()
        self.model: dict[str, Any] | None = None
        self.edge_state = "unknown"
        self.acked: set[str] = set()
        self._clock = clock
        self._monotonic = monotonic
        self._received_at: float | None = None
        self._clients: set[_Client] = set()
        self._closing = asyncio.Event()
        self._last_state_key: tuple[Any, ...] = ()
        self.address: tuple[str, int] | None = None
        """The bound ``(host, port)`` while :func:`serve_driver_page` serves."""
        self._display_limits = JsonLimits(
            max_bytes=settings.max_payload_bytes, max_depth=DISPLAY_DEPTH
        )
        self._status_limits = JsonLimits(
            max_bytes=settings.max_payload_bytes, max_depth=STATUS_DEPTH
        )
        self._display_rejects = RejectLog(_log, "driver_display_rejected")
        self._status_rejects = RejectLog(_log, "driver_status_rejected")
        self._ack_rejects = RejectLog(_log, "driver_ack_rejected")
        self._read_rejects = RejectLog(_log, "driver_read_rejected")
        self.stats.displays_rejected = self._display_rejects.counts
        self.stats.status_rejected = self._status_rejects.counts
        self.stats.acks_rejected = self._ack_rejects.counts
        link.route(topics.display(bus_id), self.on_display)
        link.route(topics.status(bus_id), self.on_status)

    # --- inputs -------------------------------------------------------------------

    async def on_display(self, payload: bytes) -> None:
        """MQTT handler of ``buses/{bus}/display``."""
        self.accept_display(payload)

    def accept_display(self, payload: bytes) -> bool:
        """Check one display message and show it; returns whether it was accepted.

        An empty payload (the retained model cleared) clears the page.
        """
        if not payload:
            self.stats.displays_cleared += 1
            self.model = None
            self._received_at = self._monotonic()
            self.acked.clear()
            _log.info("driver_display_cleared", bus_id=self.bus_id)
            self._broadcast_display()
            return True
        try:
            model = validate_display(loads_object(payload, self._display_limits))
        except ContractError as exc:  # JsonRejected too (size, UTF-8, depth, not JSON)
            return self._reject(exc.reason, exc.field, str(exc), len(payload))
        if model["bus_id"] != self.bus_id:
            return self._reject("wrong_bus", "bus_id", str(model["bus_id"]), len(payload))
        self.stats.displays += 1
        self.model = model
        self._received_at = self._monotonic()
        self.acked &= _ids_of(model)
        self._broadcast_display()
        return True

    def _reject(self, reason: str, field: str, error: str, size: int) -> bool:
        self._display_rejects.reject(
            reason, bus_id=self.bus_id, field=field, bytes=size, error=error
        )
        return False

    async def on_status(self, payload: bytes) -> None:
        """MQTT handler of ``buses/{bus}/status`` (only its ``state`` is read)."""
        state = "unknown"
        if payload:
            try:
                obj = loads_object(payload, self._status_limits)
            except JsonRejected as exc:
                self._status_rejects.reject(exc.reason, bus_id=self.bus_id, error=str(exc))
                return
            if obj.get("state") not in ("online", "offline"):
                self._status_rejects.reject("no_state", bus_id=self.bus_id)
                return
            state = obj["state"]
        if state != self.edge_state:
            self.edge_state = state
            _log.info("driver_edge_state", bus_id=self.bus_id, state=state)
        self.broadcast_state()

    # --- what the page sees --------------------------------------------------------

    def model_age_s(self) -> float | None:
        """Seconds since the shown model was made, ``None`` without one.

        The smaller of the time since it arrived and the time since its ``t`` (by the
        bus's clock): a display server on another clock is never stale for skew alone,
        and a retained model left by a dead edge is stale after ``stale_after_s``.
        """
        if self.model is None or self._received_at is None:
            return None
        since_rx = self._monotonic() - self._received_at
        since_t = self._clock() - float(self.model["t"])
        return max(0.0, min(since_rx, since_t) if math.isfinite(since_t) else since_rx)

    def state(self) -> dict[str, Any]:
        """The connection state the page shows (the ``state`` event)."""
        age = self.model_age_s()
        return {
            "broker": self.link.is_connected,
            "edge": self.edge_state,
            "age_s": None if age is None else round(age, 1),
            "stale": age is not None and age > self.settings.stale_after_s,
            "acked": sorted(self.acked),
        }

    def hello(self) -> dict[str, Any]:
        """What the page needs to know once (the ``hello`` event)."""
        return {
            "bus_id": self.bus_id,
            "stops_shown": self.settings.stops_shown,
            "heartbeat_s": self.settings.heartbeat_s,
            "stale_after_s": self.settings.stale_after_s,
            "ack_token": self.settings.ack_token is not None,
        }

    def _send(self, event: str, data: Any) -> None:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        for c in self._clients:
            c.put(event, text)

    def _broadcast_display(self) -> None:
        self._send("display", self.model)
        self.broadcast_state()

    def broadcast_state(self) -> None:
        """Send the connection state to every browser now."""
        state = self.state()
        self._last_state_key = (state["broker"], state["edge"], state["stale"], state["acked"])
        self._send("state", state)

    async def monitor(self) -> None:
        """Push the state when the broker link or staleness changes (runs until cancelled)."""
        while True:
            await asyncio.sleep(_MONITOR_S)
            s = self.state()
            if (s["broker"], s["edge"], s["stale"], s["acked"]) != self._last_state_key:
                self.broadcast_state()

    def close(self) -> None:
        """End every event stream (the server is shutting down); new ones end at once."""
        self._closing.set()

    async def stream(self) -> AsyncIterator[str]:
        """SSE text: ``hello``, the model and the state, then changes and heartbeats."""
        if self._closing.is_set():
            return
        client = _Client()
        self._clients.add(client)
        self.stats.clients = len(self._clients)
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            yield "retry: 1000\n\n"
            for event, data in (
                ("hello", self.hello()),
                ("display", self.model),
                ("state", self.state()),
            ):
                text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
                yield f"event: {event}\ndata: {text}\n\n"
            while True:
                client.wake.clear()
                woke = asyncio.ensure_future(client.wake.wait())
                try:
                    await asyncio.wait(
                        {woke, closing},
                        timeout=self.settings.heartbeat_s,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    woke.cancel()
                if closing.done():
                    return
                if not client.pending:  # heartbeat: the state carries the model's age
                    client.put("state", json.dumps(self.state(), separators=(",", ":")))
                while client.pending:
                    event = next(iter(client.pending))
                    yield f"event: {event}\ndata: {client.pending.pop(event)}\n\n"
        finally:
            closing.cancel()
            self._clients.discard(client)
            self.stats.clients = len(self._clients)

    def health(self) -> dict[str, Any]:
        """The page's counters for the edge's retained status (``driver_page``)."""
        st = self.stats
        return {
            "listening": self.address is not None,
            "clients": st.clients,
            "displays": st.displays,
            "displays_rejected": dict(st.displays_rejected),
            "acks_published": st.acks_published,
            "acks_rejected": dict(st.acks_rejected),
            "readers_refused": st.readers_refused,
        }

    def has_room(self) -> bool:
        """Whether one more browser may follow the page."""
        return len(self._clients) < self.settings.max_clients

    # --- the ack button ------------------------------------------------------------

    async def ack(self, request_ids: list[str]) -> dict[str, Any]:
        """Publish ``driver/ack`` for the ids of ``request_ids`` the model shows.

        Ids the current model no longer holds (served, expired, cancelled meanwhile)
        are left out and returned as ``stale``.

        Raises:
            AckRejected: nothing left to ack (409), or no broker (503).
        """
        shown = _ids_of(self.model)
        ids = list(dict.fromkeys(i for i in request_ids if i in shown))
        stale = sorted(set(request_ids) - shown)
        if not ids:
            raise AckRejected("nothing_to_ack", 409, "none of these requests is shown now")
        if not self.link.is_connected:
            raise AckRejected("not_connected", 503, "the display is not connected to the broker")
        body = {"t": round(self._clock(), 3), "request_ids": ids}
        validate_driver_ack(body)
        try:
            await self.link.publish(
                self.topics.driver_ack(self.bus_id), canonical_bytes(body), qos=1
            )
        except UplinkError as exc:
            raise AckRejected("publish_failed", 503, f"publishing the ack failed: {exc}") from exc
        self.stats.acks_published += 1
        self.stats.ack_ids_published += len(ids)
        self.acked.update(ids)
        _log.info("driver_ack_published", bus_id=self.bus_id, request_ids=len(ids))
        self.broadcast_state()
        return {"acked": ids, "stale": stale}

    def ack_rejected(self, reason: str, error: str) -> None:
        """Count and log an ack request that was refused."""
        self._ack_rejects.reject(reason, bus_id=self.bus_id, error=error)

    # --- HTTP -----------------------------------------------------------------------

    def app(self) -> Starlette:
        """The ASGI app: the page (``/``, ``/app.js``, ``/style.css``) and its endpoints.

        ``GET /events`` (SSE), ``GET /state`` (JSON snapshot), ``POST /ack``.
        """
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, Response, StreamingResponse
        from starlette.routing import Route

        headers = {
            "Cache-Control": "no-cache",
            "Content-Security-Policy": _CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        assets = {
            path: (resources.files("edge").joinpath(name).read_bytes(), media)
            for path, (name, media) in ASSETS.items()
        }

        async def asset(request: Request) -> Response:
            body, media = assets[request.url.path]
            return Response(body, media_type=media, headers=headers)

        def may_read(request: Request) -> bool:
            """With a token set, reading (request ids) needs it as much as acking."""
            token = self.settings.ack_token
            if token is None:
                return True
            got = request.headers.get("authorization", "")
            if got.startswith("Bearer "):
                got = got[len("Bearer ") :]
            else:  # EventSource cannot set headers
                got = request.query_params.get("token", "")
            if secrets.compare_digest(got.encode(), token.encode()):
                return True
            self.stats.readers_refused += 1
            self._read_rejects.reject("unauthorized", path=request.url.path)
            return False

        def refused() -> Response:
            return JSONResponse(
                {"error": "unauthorized", "detail": "missing or wrong token"}, 401, headers=headers
            )

        async def events(request: Request) -> Response:
            if not may_read(request):
                return refused()
            if not self.has_room():
                self.stats.clients_refused += 1
                _log.warning("driver_page_busy", clients=len(self._clients))
                return JSONResponse({"error": "too many displays"}, 503, headers=headers)
            return StreamingResponse(
                self.stream(),
                media_type="text/event-stream",
                headers={**headers, "X-Accel-Buffering": "no"},
            )

        async def state(request: Request) -> Response:
            if not may_read(request):
                return refused()
            return JSONResponse(
                {
                    "hello": self.hello(),
                    "state": self.state(),
                    "display": self.model,
                    "stats": dataclasses.asdict(self.stats),
                },
                headers=headers,
            )

        async def ack(request: Request) -> Response:
            try:
                ids = await self._ack_ids(request)
                return JSONResponse(await self.ack(ids), headers=headers)
            except AckRejected as exc:
                self.ack_rejected(exc.reason, str(exc))
                return JSONResponse(
                    {"error": exc.reason, "detail": str(exc)}, exc.status, headers=headers
                )

        routes = [Route(path, asset) for path in assets]
        routes += [
            Route("/events", events),
            Route("/state", state),
            Route("/ack", ack, methods=["POST"]),
        ]
        return Starlette(routes=routes)

    async def _ack_ids(self, request: Request) -> list[str]:
        """The request ids of an ack request, after every check a browser must pass.

        Raises:
            AckRejected: forbidden origin (403), bad token (401), not JSON (415, or 400
                with the reason of :func:`busbell.loads_object`), too large (413), or not
                ``{"request_ids": [...]}`` of valid ids (400).
        """
        origin = request.headers.get("origin")
        host = request.headers.get("host", "")
        if origin is not None and origin.split("://", 1)[-1] != host:
            raise AckRejected("forbidden_origin", 403, f"origin {origin[:100]} is not this page")
        token = self.settings.ack_token
        if token is not None:
            got = request.headers.get("authorization", "")
            if not secrets.compare_digest(got.encode(), f"Bearer {token}".encode()):
                raise AckRejected("unauthorized", 401, "missing or wrong ack token")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise AckRejected("not_json", 415, "the body must be application/json")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_ACK_BODY:
                raise AckRejected("too_large", 413, f"the body exceeds {_MAX_ACK_BODY} bytes")
        try:
            obj = loads_object(body, ACK_LIMITS)
            if set(obj) != {"request_ids"}:
                raise ContractError(
                    "ack request: the body must be {request_ids: [...]}", reason="unknown_field"
                )
            validate_driver_ack(obj)
        except ContractError as exc:  # JsonRejected too
            raise AckRejected(exc.reason, 400, str(exc)) from exc
        ids: list[str] = obj["request_ids"]
        return ids


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6, ``SO_REUSEADDR``).

    Raises:
        OSError: when the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve_driver_page(
    display: DriverDisplay, *, on_listening: Callable[[str, int], None] | None = None
) -> None:
    """Serve the page until cancelled; the daemon keeps running if its port is taken.

    A port that cannot be bound is logged (``driver_page_bind_failed``) and tried again
    with backoff; uvicorn's own binding would end the whole process instead.
    ``on_listening(host, port)`` is called with the bound address (port 0 picks one).
    """
    import uvicorn

    from busbell._http import http_server, serve_http

    settings = display.settings

    async def bind() -> socket.socket:
        return bind_listener(settings.host, settings.port)

    def failed(change: SessionChange) -> None:
        _log.error(
            "driver_page_bind_failed", host=settings.host, port=settings.port, error=change.error
        )

    sock = await retry_with_backoff(
        bind, initial_s=1.0, max_s=30.0, retry_on=(OSError,), on_failure=failed
    )
    host, port = sock.getsockname()[:2]
    display.address = (host, port)
    server = http_server(
        uvicorn.Config(display.app(), log_level="warning", lifespan="off"),
        on_shutdown=display.close,
    )
    _log.info("driver_page_serving", bus_id=display.bus_id, host=host, port=port)
    if on_listening is not None:
        on_listening(host, port)
    monitor = asyncio.create_task(
        display.monitor(), name=f"busbell[{display.bus_id}].driver_page.state"
    )
    try:
        await serve_http(server, sockets=[sock])
    finally:
        display.close()
        display.address = None
        sock.close()
        monitor.cancel()
        await asyncio.wait([monitor])


async def run_driver_page(
    mqtt: MqttSettings,
    bus_id: str,
    settings: DriverPageSettings,
    *,
    stop: asyncio.Event,
    on_listening: Callable[[str, int], None] | None = None,
) -> DriverDisplay:
    """``busbell edge display``: the page on a broker connection of its own, until ``stop``.

    The connection is an :class:`~edge._uplink.MqttLink` (reconnects with backoff) with
    the client id ``busbell-display-BUS-XXXXXX`` (random per process) and no last will:
    the bus's status stays the daemon's. Its session is clean and expires with the
    connection: the page needs only the retained state, and a persistent session would
    make the broker queue every model published while the page is down, to be replayed
    when it comes back. With no session to resume, the id need not be stable, and a
    fixed one made two page servers of one bus (two terminals) take the connection from
    each other over and over. Returns the display (its counters) once stopped.
    """
    import functools
    import secrets

    from busbell._mqtt import MqttSession
    from edge._uplink import MqttLink

    topics = Topics(mqtt.prefix)
    link = MqttLink(
        dataclasses.replace(mqtt, session_expiry_s=0),
        bus_id,
        topics,
        client_id=f"busbell-display-{bus_id}-{secrets.token_hex(3)}",
        lwt=False,
        session_factory=functools.partial(MqttSession, clean_start=True),
    )
    display = DriverDisplay(bus_id, topics, link, settings)
    name = f"busbell[{bus_id}]"
    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(link.run(), name=f"{name}.display_link"),
            tg.create_task(
                serve_driver_page(display, on_listening=on_listening), name=f"{name}.driver_page"
            ),
        ]
        await stop.wait()
        for t in tasks:
            t.cancel()
    return display
