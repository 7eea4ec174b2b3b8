"""Riders' boarding-wait requests: the rider API's endpoints and the MQTT side.

The rules and the lifecycle are the sans-I/O core in :mod:`backend._waits`; this module
is its adapter:

* :class:`WaitService` keeps the core's :class:`~backend._waits.WaitBook` and
  :class:`~backend._waits.FleetPositions` in step with the database (``rider_waits``:
  one live wait per rider, the rate rule, across restarts) and the broker (it publishes
  what the core returns; :meth:`WaitService.on_message` takes the waits, request
  statuses, display models and bus statuses the API's MQTT link receives).
* :func:`rider_router` - ``POST/GET /riders/{rider_id}/waits``,
  ``GET/DELETE /riders/{rider_id}/waits/{request_id}``.

Every refused request and every message not applied is counted by reason
(Prometheus ``busbell_wait_requests_rejected{reason}``,
``busbell_wait_messages_rejected{kind,reason}``) and logged.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from prometheus_client import Counter
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from backend._db import is_postgres, rider_waits, riders
from backend._waits import (
    FINAL_STATES,
    LIVE_STATES,
    STATES,
    FleetPositions,
    LiveWait,
    Publish,
    StateChange,
    WaitBook,
    WaitRejected,
    WaitRules,
    check_request,
)
from busbell._errors import UplinkError
from busbell._gtfs import Feed
from busbell._logging import get_logger
from busbell._topics import Topics

if TYPE_CHECKING:  # backend._api imports this module
    from backend._api import Publisher

__all__ = [
    "WAIT_REQUEST_MAX_BYTES",
    "WaitOut",
    "WaitRequest",
    "WaitService",
    "WaitsOut",
    "rider_router",
]

log = get_logger("backend.waits")

WAIT_REQUEST_MAX_BYTES = 4096
"""Largest wait request body (bigger: 413, counted ``oversized``)."""

WAITS_ACCEPTED = Counter("busbell_wait_requests_accepted", "Wait requests published")
WAITS_REJECTED = Counter(
    "busbell_wait_requests_rejected", "Wait requests refused by the rider API", ["reason"]
)
MESSAGES_REJECTED = Counter(
    "busbell_wait_messages_rejected",
    "Wait, request status or display messages not applied",
    ["kind", "reason"],
)
WAIT_STATES = Counter(
    "busbell_wait_state_changes", "Wait state changes (from buses and the backend)", ["state"]
)


class _NoBroker(Exception):
    """No broker connection: the API answers 503."""


def _rejected(reason: str, **kw: Any) -> None:
    WAITS_REJECTED.labels(reason).inc()
    log.info("wait_request_rejected", reason=reason, **kw)


def _message_rejected(kind: str, reason: str) -> None:
    MESSAGES_REJECTED.labels(kind, reason).inc()
    log.info("wait_message_rejected", kind=kind, reason=reason)


class WaitService:
    """The wait core bound to the database and the broker.

    Args:
        engine: the ledger database (``rider_waits``, ``riders``).
        topics: topic names.
        rules: the wait rules (``[waits]``).
        feed: GTFS static, for route/stop checks, bus positions and stop names.
        publisher: returns the broker connection, or ``None`` when there is none.
        clock: wall time (UNIX seconds).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        topics: Topics,
        rules: WaitRules,
        *,
        feed: Feed | None,
        publisher: Callable[[], Publisher | None],
        clock: Callable[[], float],
    ) -> None:
        self.engine = engine
        self.topics = topics
        self.rules = rules
        self.feed = feed
        self.clock = clock
        self._publisher = publisher
        self.positions = FleetPositions(
            feed,
            max_age_s=rules.position_max_age_s,
            on_reject=lambda reason: _message_rejected("display", reason),
        )
        self.book = WaitBook(topics, rules, on_reject=_message_rejected)
        self._lock = asyncio.Lock()
        self.restored = False

    # ------------------------------------------------------------------ state

    async def restore(self) -> int:
        """Track the live waits stored before a restart; returns how many.

        Waits whose lifetime ended while the backend was down are marked ``expired``
        (the broker dropped their retained messages at their expiry).
        """
        now = self.clock()
        async with self.engine.begin() as conn:
            ended = await conn.execute(
                sa.update(rider_waits)
                .where(
                    rider_waits.c.state.in_(sorted(LIVE_STATES)),
                    rider_waits.c.expires_t <= now,
                )
                .values(state="expired", bus_id=None, state_t=rider_waits.c.expires_t)
            )
            rows = (
                await conn.execute(
                    sa.select(rider_waits).where(
                        rider_waits.c.state.in_(sorted(LIVE_STATES)),
                        rider_waits.c.expires_t > now,
                    )
                )
            ).all()
        if ended.rowcount:
            log.info("waits_expired_while_down", waits=ended.rowcount)
        for r in rows:
            self.book.restore(
                LiveWait(
                    r.request_id,
                    r.route_id,
                    r.stop_id,
                    r._mapping["t"],
                    r.expires_t,
                    "app",
                    bool(r.assist),
                    r.state,
                    r.bus_id,
                    r.state_t,
                    r.missed,
                )
            )
        self.restored = True
        if rows:
            log.info("waits_restored", waits=len(rows))
        return len(rows)

    async def _publish(self, pubs: Sequence[Publish]) -> None:
        if not pubs:
            return
        pub = self._publisher()
        if pub is None:
            raise _NoBroker
        for p in pubs:
            await pub.publish(p.topic, p.payload, qos=1, retain=p.retain, expiry_s=p.expiry_s)

    async def _record(self, changes: Sequence[StateChange]) -> None:
        if not changes:
            return
        async with self.engine.begin() as conn:
            for c in changes:
                WAIT_STATES.labels(c.state).inc()
                await conn.execute(
                    sa.update(rider_waits)
                    .where(
                        rider_waits.c.request_id == c.request_id,
                        rider_waits.c.state.not_in(sorted(FINAL_STATES)),
                    )
                    .values(
                        state=c.state,
                        bus_id=c.bus_id,
                        state_t=c.t,
                        missed=rider_waits.c.missed + int(c.missed),
                    )
                )

    # ------------------------------------------------------------------ rider side

    async def _rider(self, conn: AsyncConnection, rider_id: str) -> None:
        q = sa.select(riders.c.status).where(riders.c.rider_id == rider_id)
        if is_postgres(conn):
            q = q.with_for_update()  # serialises one rider's requests
        status = (await conn.execute(q)).scalar_one_or_none()
        if status is None:
            raise HTTPException(404, f"unknown rider {rider_id!r}")
        if status != "active":
            _rejected("rider_inactive", rider_id=rider_id)
            raise HTTPException(403, f"rider {rider_id!r} is {status}")

    async def request(
        self,
        rider_id: str,
        *,
        route_id: str,
        stop_id: str,
        assist: bool,
        lifetime_s: int | None,
    ) -> tuple[LiveWait, str | None]:
        """A rider's new wait; the rider's live wait, if any, is cancelled (replaced).

        Returns:
            The new wait and the request id it replaced (or ``None``).

        Raises:
            HTTPException: 404 unknown rider, 403 revoked rider, 4xx a rule, 503 no broker.
        """
        async with self._lock, self.engine.begin() as conn:
            now = self.clock()
            await self._rider(conn, rider_id)
            recent = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(rider_waits)
                    .where(
                        rider_waits.c.rider_id == rider_id,
                        rider_waits.c.t > now - self.rules.rate_window_s,
                    )
                )
            ).scalar_one()
            try:
                if len(self.book.waits) >= self.rules.max_live_waits:
                    raise WaitRejected("too_many_waits", "too many live waits; retry later", 503)
                lifetime = check_request(
                    self.rules,
                    route_id=route_id,
                    stop_id=stop_id,
                    lifetime_s=lifetime_s,
                    recent_requests=int(recent),
                    now=now,
                    feed=self.feed,
                    positions=self.positions,
                )
            except WaitRejected as exc:
                _rejected(exc.reason, rider_id=rider_id, route_id=route_id, stop_id=stop_id)
                raise HTTPException(exc.http_status, str(exc)) from None
            if self._publisher() is None:
                raise HTTPException(503, "not connected to the MQTT broker")
            live = (
                await conn.execute(
                    sa.select(rider_waits.c.request_id).where(
                        rider_waits.c.rider_id == rider_id,
                        rider_waits.c.state.in_(sorted(LIVE_STATES)),
                    )
                )
            ).all()
            replaced: str | None = None
            pubs: list[Publish] = []
            old_waits: list[LiveWait] = []
            for (old_id,) in live:
                replaced = old_id
                if old_id in self.book.waits:
                    old_waits.append(self.book.waits[old_id])
                    p, _ = self.book.cancel(old_id, now)
                    pubs += p
            w = LiveWait(
                f"w-{secrets.token_hex(8)}", route_id, stop_id, now, now + lifetime, "app", assist
            )
            pubs += self.book.add(w)
            try:
                await self._publish(pubs)
            except (UplinkError, _NoBroker) as exc:
                self.book.waits.pop(w.request_id, None)
                for old in old_waits:
                    self.book.restore(old)
                raise HTTPException(503, f"MQTT broker unavailable: {exc}") from None
            if live:
                await conn.execute(
                    sa.update(rider_waits)
                    .where(
                        rider_waits.c.rider_id == rider_id,
                        rider_waits.c.state.in_(sorted(LIVE_STATES)),
                    )
                    .values(state="cancelled", bus_id=None, state_t=now)
                )
            await conn.execute(
                sa.insert(rider_waits).values(
                    request_id=w.request_id,
                    rider_id=rider_id,
                    route_id=route_id,
                    stop_id=stop_id,
                    assist=assist,
                    t=now,
                    expires_t=w.expires_t,
                    state="pending",
                    bus_id=None,
                    state_t=now,
                    missed=0,
                )
            )
        WAITS_ACCEPTED.inc()
        log.info(
            "wait_requested",
            request_id=w.request_id,
            route_id=route_id,
            stop_id=stop_id,
            replaced=replaced,
        )
        return w, replaced

    async def cancel(self, rider_id: str, request_id: str) -> sa.Row[Any]:
        """Cancel a rider's live wait.

        Raises:
            HTTPException: 404 not the rider's wait, 409 not live, 503 no broker.
        """
        async with self._lock, self.engine.begin() as conn:
            now = self.clock()
            row = await self._row(conn, rider_id, request_id)
            if row.state not in LIVE_STATES or row.request_id not in self.book.waits:
                _rejected("not_live", rider_id=rider_id, request_id=request_id)
                raise HTTPException(409, f"wait {request_id!r} is {row.state}, not live")
            if self._publisher() is None:
                raise HTTPException(503, "not connected to the MQTT broker")
            w = self.book.waits[request_id]
            pubs, changes = self.book.cancel(request_id, now)
            try:
                await self._publish(pubs)
            except (UplinkError, _NoBroker) as exc:
                self.book.restore(w)
                raise HTTPException(503, f"MQTT broker unavailable: {exc}") from None
            await conn.execute(
                sa.update(rider_waits)
                .where(rider_waits.c.request_id == request_id)
                .values(state="cancelled", bus_id=None, state_t=now)
            )
            for c in changes:
                WAIT_STATES.labels(c.state).inc()
            row = await self._row(conn, rider_id, request_id)
        log.info("wait_cancelled", request_id=request_id)
        return row

    async def _row(self, conn: AsyncConnection, rider_id: str, request_id: str) -> sa.Row[Any]:
        row = (
            await conn.execute(
                sa.select(rider_waits).where(
                    rider_waits.c.request_id == request_id, rider_waits.c.rider_id == rider_id
                )
            )
        ).first()
        if row is None:
            raise HTTPException(404, f"rider {rider_id!r} has no wait {request_id!r}")
        return row

    async def get(self, rider_id: str, request_id: str) -> sa.Row[Any]:
        """One of a rider's waits.

        Raises:
            HTTPException: 404.
        """
        async with self.engine.connect() as conn:
            return await self._row(conn, rider_id, request_id)

    async def history(self, rider_id: str, limit: int) -> list[sa.Row[Any]]:
        """A rider's waits, newest first.

        Raises:
            HTTPException: 404 unknown rider.
        """
        async with self.engine.connect() as conn:
            known = (
                await conn.execute(
                    sa.select(riders.c.rider_id).where(riders.c.rider_id == rider_id)
                )
            ).first()
            if known is None:
                raise HTTPException(404, f"unknown rider {rider_id!r}")
            return list(
                (
                    await conn.execute(
                        sa.select(rider_waits)
                        .where(rider_waits.c.rider_id == rider_id)
                        .order_by(rider_waits.c.t.desc(), rider_waits.c.request_id)
                        .limit(limit)
                    )
                ).all()
            )

    # ------------------------------------------------------------------ broker side

    async def on_message(self, topic: str, payload: bytes) -> None:
        """Take a message the API's MQTT link received (any busbell topic).

        Raises:
            UplinkError: publishing what the message calls for failed (the link
                reconnects; the retained messages bring the state back).
        """
        parsed = self.topics.parse(topic)
        if parsed is None:
            return
        now = self.clock()
        if parsed.kind == "display":
            self.positions.on_display(parsed.ids["bus"], payload)
        elif parsed.kind == "status":
            self.positions.on_status(parsed.ids["bus"], payload)
        elif parsed.kind == "wait":
            self.book.on_wait(
                parsed.ids["route"], parsed.ids["stop"], parsed.ids["request"], payload, now
            )
        elif parsed.kind == "request_status":
            async with self._lock:
                pubs, changes = self.book.on_status(parsed.ids["request"], payload, now)
                await self._apply(pubs, changes)

    async def tick(self) -> None:
        """Expire the waits whose lifetime is over.

        Raises:
            UplinkError: the broker is gone (retried on the next tick).
        """
        async with self._lock:
            pubs, changes = self.book.tick(self.clock())
            await self._apply(pubs, changes)

    async def _apply(self, pubs: list[Publish], changes: list[StateChange]) -> None:
        # published first: once the database says a state, the broker has it too; the
        # database is written whatever happens to the broker (the core has moved on)
        try:
            await self._publish(pubs)
        except _NoBroker:
            raise UplinkError("not connected to the MQTT broker") from None
        finally:
            await self._record(changes)
            for c in changes:
                log.info(
                    "wait_state_changed", request_id=c.request_id, state=c.state, bus_id=c.bus_id
                )

    def subscriptions(self) -> list[str]:
        """The topic filters the MQTT link must subscribe to for this service."""
        p = self.topics.prefix
        return [
            f"{p}/routes/+/stops/+/waits/+",
            f"{p}/requests/+/status",
            f"{p}/buses/+/display",
            f"{p}/buses/+/status",
        ]

    def stop_name(self, stop_id: str) -> str | None:
        """The GTFS name of a stop, if known."""
        stop = self.feed.stops.get(stop_id) if self.feed is not None else None
        return stop.name if stop is not None else None


# ---------------------------------------------------------------------------- HTTP


class WaitRequest(BaseModel):
    """A rider at a stop wants the next bus of a route to stop."""

    model_config = {"extra": "forbid"}

    route_id: str = Field(min_length=1, max_length=128)
    stop_id: str = Field(min_length=1, max_length=128)
    assist: bool = Field(False, description="The rider needs extra time (wheelchair, sight).")
    expires_in_s: int | None = Field(
        None,
        ge=1,
        le=86400,
        description="Lifetime of the request (default and limits: [waits] in the config; "
        "900 s, 60..3600 s unless configured).",
    )


class WaitOut(BaseModel):
    """A wait request and its state."""

    request_id: str
    rider_id: str
    route_id: str
    stop_id: str
    stop_name: str | None = Field(None, description="GTFS stop name, when known.")
    assist: bool
    state: str = Field(description=f"One of {', '.join(STATES)}.")
    bus_id: str | None = Field(None, description="The bus that reported the state.")
    t: float
    expires_t: float
    state_t: float
    missed: int = Field(0, description="How many buses passed the stop without stopping.")
    topic: str
    replaced: str | None = Field(
        None, description="The rider's previous live wait, cancelled by this one."
    )


class WaitsOut(BaseModel):
    """A rider's waits, newest first."""

    rider_id: str
    waits: list[WaitOut]


class _CountedRoute(APIRoute):
    """Counts and logs malformed and oversized requests on the wait endpoints."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > WAIT_REQUEST_MAX_BYTES:
                _rejected("oversized", path=request.url.path)
                raise HTTPException(
                    413, f"a wait request is at most {WAIT_REQUEST_MAX_BYTES} bytes"
                )
            try:
                return await original(request)
            except RequestValidationError as exc:
                _rejected("malformed", path=request.url.path, errors=len(exc.errors()))
                raise

        return handler


def rider_router(service: WaitService) -> APIRouter:
    """The rider's wait endpoints (``/riders/{rider_id}/waits...``)."""
    router = APIRouter(route_class=_CountedRoute, tags=["waits"])

    def out(row: Any, replaced: str | None = None) -> WaitOut:
        return WaitOut(
            request_id=row.request_id,
            rider_id=row.rider_id,
            route_id=row.route_id,
            stop_id=row.stop_id,
            stop_name=service.stop_name(row.stop_id),
            assist=bool(row.assist),
            state=row.state,
            bus_id=row.bus_id,
            t=row._mapping["t"],
            expires_t=row.expires_t,
            state_t=row.state_t,
            missed=row.missed,
            topic=service.topics.wait(row.route_id, row.stop_id, row.request_id),
            replaced=replaced,
        )

    @router.post("/riders/{rider_id}/waits", status_code=201, response_model=WaitOut)
    async def post_wait(rider_id: str, body: WaitRequest) -> WaitOut:
        """Ask the next bus of a route to stop for the rider at a stop.

        Publishes the retained wait ``routes/{route}/stops/{stop}/waits/{request_id}``
        (message expiry = its lifetime) and the retained status ``pending``. A rider
        holds one live wait: a new one cancels the previous (``replaced``). Refused
        (and counted): an unknown route or stop, a stop the route does not serve, a
        lifetime outside the limits, a next bus already past the stop ``cutoff_stops``
        before (409), more than ``rate_max`` requests per ``rate_window_s`` (429).
        """
        w, replaced = await service.request(
            rider_id,
            route_id=body.route_id,
            stop_id=body.stop_id,
            assist=body.assist,
            lifetime_s=body.expires_in_s,
        )
        return out(await service.get(rider_id, w.request_id), replaced)

    @router.get("/riders/{rider_id}/waits", response_model=WaitsOut)
    async def list_waits(
        rider_id: str, limit: int = Query(20, ge=1, le=200, description="Most waits listed.")
    ) -> WaitsOut:
        """The rider's waits, newest first, with the state buses reported."""
        rows = await service.history(rider_id, limit)
        return WaitsOut(rider_id=rider_id, waits=[out(r) for r in rows])

    @router.get("/riders/{rider_id}/waits/{request_id}", response_model=WaitOut)
    async def get_wait(rider_id: str, request_id: str) -> WaitOut:
        """One of the rider's waits and its state."""
        return out(await service.get(rider_id, request_id))

    @router.delete("/riders/{rider_id}/waits/{request_id}", response_model=WaitOut)
    async def delete_wait(rider_id: str, request_id: str) -> WaitOut:
        """Cancel the rider's live wait: clears the retained wait, status ``cancelled``."""
        return out(await service.cancel(rider_id, request_id))

    return router
