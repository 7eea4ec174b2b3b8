"""The rider API's rider and device routes.

Enrolment, tokens, categories, revocations, the ledger (journeys, charges), and
revoking a bus.

Routers with dependencies: each route gets the app's :class:`~backend._api_state.ApiState`
through :data:`~backend._api_state.State` and its credentials through the guards of
:mod:`backend._api_auth`; :func:`backend._api.create_app` includes them.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Query, Request, Security
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from backend._api_auth import (
    bearer,
    current_principal,
    issue_rider_token,
    refused,
    rider_access,
)
from backend._api_state import ApiState, State
from backend._auth import Principal, retry_after
from backend._db import charges, journeys, legs, riders
from busbell._logging import get_logger

__all__ = [
    "devices_router",
    "insert_rider",
    "operator_only",
    "rider_row",
    "riders_router",
]

log = get_logger("backend.api")

_RIDER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")

riders_router = APIRouter()
"""``/riders`` and ``/riders/{id}/...`` (the waits are :func:`backend._waits_api.rider_router`)."""
devices_router = APIRouter()
"""``/devices/{bus_id}/revoke``."""

_READ = [Security(rider_access("riders:read"))]
_WRITE = [Security(rider_access("riders:write"))]


class EnrolRequest(BaseModel):
    """Enrol a rider's token."""

    kind: Literal["fob", "app"] = Field("app", description="The token: a BLE fob or a phone app.")
    rider_id: str | None = Field(
        None,
        description=(
            "Rider id to use (1-64 of [A-Za-z0-9_.:-]; operators with riders:write only); "
            "default: a random, non-enumerable one."
        ),
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
    )
    category: Literal["adult", "youth", "child"] = Field(
        "adult",
        description=(
            "Fare category the rider's journeys are priced with; anything but adult needs "
            "an operator with riders:write."
        ),
    )


class EnrolResponse(BaseModel):
    """The issued token key: shown once, keep it in the fob or app."""

    rider_id: str
    kind: Literal["fob", "app"]
    category: Literal["adult", "youth", "child"]
    token_key: str = Field(description="16-byte token key, 32 hex characters; shown once.")
    enrolled_at: float
    access_token: str = Field(
        description="The rider's bearer token for this API (bbr_...); shown once."
    )


class TokenOut(BaseModel):
    """A rider's new API bearer token: shown once; the older ones no longer work."""

    rider_id: str
    access_token: str


class CategoryIn(BaseModel):
    """Set a rider's fare category (operators only)."""

    model_config = {"extra": "forbid"}

    category: Literal["adult", "youth", "child"]


class RiderStatus(BaseModel):
    """A rider's registration state."""

    rider_id: str
    status: Literal["active", "revoked"]
    kind: str
    category: str
    enrolled_at: float
    revoked_at: float | None


class LegOut(BaseModel):
    """One leg of a journey."""

    leg_no: int
    bus_id: str | None
    route_id: str
    trip_id: str | None
    network_id: str
    board_stop_id: str | None
    board_t: float
    alight_stop_id: str | None
    alight_t: float
    distance_m: float
    flags: list[str] = Field(default_factory=list, description="Review flags of the leg.")


class JourneyOut(BaseModel):
    """A priced journey."""

    journey_id: str
    first_board_t: float
    last_alight_t: float
    fare_krw: int
    category: str
    ruleset_id: str
    explain: list[str]
    legs: list[LegOut]
    charged: bool = Field(True, description="False: held for review, not charged.")
    flags: list[str] = Field(
        default_factory=list,
        description="Review flags (lost, suspected_replay, overlap_dropped, review, ...).",
    )


class JourneysOut(BaseModel):
    """A rider's journeys, newest first."""

    rider_id: str
    journeys: list[JourneyOut]


class ChargeOut(BaseModel):
    """One charge."""

    charge_id: str
    journey_id: str
    t: float
    fare_krw: int
    category: str
    created_at: float


class ChargesOut(BaseModel):
    """A rider's charges, newest first, with the total."""

    rider_id: str
    total_krw: int
    charges: list[ChargeOut]


class DeviceStatus(BaseModel):
    """A bus's registration state after a revocation."""

    bus_id: str
    revoked: bool
    denylist_version: int = Field(description="The deny list version that lists it.")


def _check_rider_id(rider_id: str) -> str:
    if not _RIDER_ID_RE.match(rider_id):
        # shaped like FastAPI's validation errors (the documented 422 body), no echo
        raise HTTPException(
            422,
            [
                {
                    "loc": ["path", "rider_id"],
                    "msg": "must be 1-64 of [A-Za-z0-9_.:-], starting with a letter or digit",
                    "type": "value_error",
                }
            ],
        )
    return rider_id


async def _enroller(
    request: Request,
    _credentials: Annotated[Any, Security(bearer)],
) -> Principal | None:
    """Enrolment takes optional credentials (an operator may set id and category)."""
    return await current_principal(request)


def operator_only(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: operators with ``scope`` only (riders never set their own category)."""

    async def check(
        request: Request,
        _credentials: Annotated[Any, Security(bearer)],
    ) -> Principal:
        principal = await current_principal(request)
        auth = request.app.state.busbell.auth
        if principal is None:
            refused(auth, "no_credentials", request)
            raise HTTPException(401, "bearer token required", {"WWW-Authenticate": "Bearer"})
        if principal.kind != "operator" or not principal.may("", scope):
            refused(auth, "forbidden", request, scope=scope)
            raise HTTPException(403, "not allowed")
        return principal

    return check


async def insert_rider(
    engine: AsyncEngine,
    rider_id: str,
    token_key: bytes,
    now: float,
    *,
    kind: str = "fob",
    category: str = "adult",
) -> str | None:
    """Insert the rider and its first API token; ``None`` when the id is taken."""
    async with engine.begin() as conn:
        exists = (
            await conn.execute(sa.select(riders.c.rider_id).where(riders.c.rider_id == rider_id))
        ).first()
        if exists is not None:
            return None
        await conn.execute(
            sa.insert(riders).values(
                rider_id=rider_id,
                token_key=token_key.hex(),
                status="active",
                enrolled_at=now,
                revoked_at=None,
                kind=kind,
                category=category,
            )
        )
        return await issue_rider_token(conn, rider_id, now)


@riders_router.post(
    "/riders",
    status_code=201,
    response_model=EnrolResponse,
    tags=["riders"],
    responses={403: {"description": "rider_id or category set without an operator"}},
    # credentials are optional here (open enrolment): {} = none
    openapi_extra={"security": [{}]},
)
async def enrol(
    body: EnrolRequest,
    request: Request,
    principal: Annotated[Principal | None, Security(_enroller)],
    state: State,
) -> EnrolResponse:
    """Enrol a rider: issues a fresh token key and API token, returned only here.

    Without operator credentials (when ``[api] open_enrolment``): a random rider id,
    the adult category, at most ``[api] enrol_per_hour`` per client address.
    """
    auth = state.auth
    operator = principal is not None and principal.may("", "riders:write")
    if not operator:
        if principal is not None and principal.kind == "operator":
            refused(auth, "forbidden", request, scope="riders:write")
            raise HTTPException(403, "enrolment needs the riders:write scope")
        if not auth.open_enrolment:
            refused(auth, "no_credentials", request)
            raise HTTPException(
                401, "enrolment needs operator credentials", {"WWW-Authenticate": "Bearer"}
            )
        if body.rider_id is not None or body.category != "adult":
            refused(auth, "forbidden", request, scope="riders:write")
            raise HTTPException(403, "only an operator sets rider_id or category")
        client = request.client.host if request.client is not None else "unknown"
        wait = auth.enrol.take(f"addr:{client}", auth.monotonic())
        if wait:
            refused(auth, "rate_limited", request, key="enrol")
            raise HTTPException(429, "too many enrolments", {"Retry-After": retry_after(wait)})
    rider_id = body.rider_id or f"r-{secrets.token_hex(12)}"
    token_key = secrets.token_bytes(16)
    now = state.clock()
    access_token = await insert_rider(
        state.engine, rider_id, token_key, now, kind=body.kind, category=body.category
    )
    if access_token is None:
        raise HTTPException(409, f"rider {rider_id!r} already exists")
    if state.on_enrolled is not None:
        state.on_enrolled(rider_id, token_key)
    log.info("rider_enrolled", rider_id=rider_id, kind=body.kind, category=body.category)
    return EnrolResponse(
        rider_id=rider_id,
        kind=body.kind,
        category=body.category,
        token_key=token_key.hex(),
        enrolled_at=now,
        access_token=access_token,
    )


@riders_router.post(
    "/riders/{rider_id}/token", response_model=TokenOut, tags=["riders"], dependencies=_WRITE
)
async def new_token(rider_id: str, state: State) -> TokenOut:
    """Issue the rider a new API token; every older token of the rider stops working."""
    await rider_row(state, rider_id)
    async with state.engine.begin() as conn:
        token = await issue_rider_token(conn, rider_id, state.clock(), replace=True)
    log.info("rider_token_issued", rider_id=rider_id)
    return TokenOut(rider_id=rider_id, access_token=token)


@riders_router.put(
    "/riders/{rider_id}/category",
    response_model=RiderStatus,
    tags=["riders"],
    dependencies=[Security(operator_only("riders:write"))],
)
async def set_category(rider_id: str, body: CategoryIn, state: State) -> RiderStatus:
    """Set the fare category future journeys are priced with (operators only)."""
    await rider_row(state, rider_id)
    async with state.engine.begin() as conn:
        await conn.execute(
            sa.update(riders).where(riders.c.rider_id == rider_id).values(category=body.category)
        )
    log.info("rider_category_set", rider_id=rider_id, category=body.category)
    row = await rider_row(state, rider_id)
    return _status(row)


@devices_router.post(
    "/devices/{bus_id}/revoke",
    response_model=DeviceStatus,
    tags=["devices"],
    dependencies=[Security(operator_only("devices:write"))],
)
async def revoke_bus(bus_id: str, state: State) -> DeviceStatus:
    """Revoke a bus (stolen or retired unit).

    Its fare events are refused, it gets no more fleet keys, and the next deny list
    (published at once) names it.
    """
    from backend._denylist import revoke_device
    from backend._errors import UnknownDevice

    try:
        payload = await revoke_device(state.engine, bus_id[:64], now=state.clock())
    except UnknownDevice:
        raise HTTPException(404, "unknown bus") from None
    if state.on_denylist_changed is not None:
        state.on_denylist_changed()
    return DeviceStatus(bus_id=bus_id, revoked=True, denylist_version=payload["version"])


def _status(row: sa.Row[Any], **changed: Any) -> RiderStatus:
    """A rider's row as :class:`RiderStatus` (``changed``: fields written since it was read)."""
    fields = {k: row._mapping[k] for k in RiderStatus.model_fields}
    return RiderStatus(**{**fields, **changed})


def _newest(
    table: sa.Table,
    rider_id: str,
    t: sa.Column[Any],
    key: sa.Column[Any],
    *,
    since: float | None,
    limit: int,
) -> sa.Select[Any]:
    """A rider's rows of ``table``, newest ``t`` first (ties by ``key``), from ``since``."""
    q = sa.select(table).where(table.c.rider_id == rider_id)
    if since is not None:
        q = q.where(t >= since)
    return q.order_by(t.desc(), key).limit(limit)


async def rider_row(state: ApiState, rider_id: str) -> sa.Row[Any]:
    """The rider's row; 422 for a malformed id, 404 for an unknown one."""
    _check_rider_id(rider_id)
    async with state.engine.connect() as conn:
        row = (await conn.execute(sa.select(riders).where(riders.c.rider_id == rider_id))).first()
    if row is None:
        raise HTTPException(404, f"unknown rider {rider_id!r}")
    return row


@riders_router.get(
    "/riders/{rider_id}", response_model=RiderStatus, tags=["riders"], dependencies=_READ
)
async def rider_status(rider_id: str, state: State) -> RiderStatus:
    """A rider's registration state (never the token key)."""
    row = await rider_row(state, rider_id)
    return _status(row)


@riders_router.post(
    "/riders/{rider_id}/revoke", response_model=RiderStatus, tags=["riders"], dependencies=_WRITE
)
async def revoke(rider_id: str, state: State) -> RiderStatus:
    """Revoke a rider's token (lost fob, closed account); idempotent."""
    row = await rider_row(state, rider_id)
    revoked_at = row.revoked_at
    if row.status != "revoked":
        revoked_at = state.clock()
        async with state.engine.begin() as conn:
            await conn.execute(
                sa.update(riders)
                .where(riders.c.rider_id == rider_id)
                .values(status="revoked", revoked_at=revoked_at)
            )
        if state.on_revoked is not None:
            state.on_revoked(rider_id)
        if state.on_denylist_changed is not None:
            state.on_denylist_changed()
        log.info("rider_revoked", rider_id=rider_id)
    return _status(row, status="revoked", revoked_at=revoked_at)


@riders_router.get(
    "/riders/{rider_id}/journeys",
    response_model=JourneysOut,
    tags=["riders"],
    dependencies=_READ,
)
async def rider_journeys(
    rider_id: str,
    state: State,
    since: float | None = Query(None, description="Only journeys from this UNIX time."),
    limit: int = Query(100, ge=1, le=1000),
) -> JourneysOut:
    """The rider's priced journeys with their legs, newest first."""
    await rider_row(state, rider_id)
    q = _newest(
        journeys,
        rider_id,
        journeys.c.first_board_t,
        journeys.c.journey_id,
        since=since,
        limit=limit,
    )
    async with state.engine.connect() as conn:
        rows = (await conn.execute(q)).all()
        ids = [r.journey_id for r in rows]
        leg_rows = (
            (
                await conn.execute(
                    sa.select(legs)
                    .where(legs.c.journey_id.in_(ids))
                    .order_by(legs.c.journey_id, legs.c.leg_no)
                )
            ).all()
            if ids
            else []
        )
    by_journey: dict[str, list[LegOut]] = {}
    for lr in leg_rows:
        by_journey.setdefault(lr.journey_id, []).append(
            LegOut(
                leg_no=lr.leg_no,
                bus_id=lr.bus_id,
                route_id=lr.route_id,
                trip_id=lr.trip_id,
                network_id=lr.network_id,
                board_stop_id=lr.board_stop_id,
                board_t=lr.board_t,
                alight_stop_id=lr.alight_stop_id,
                alight_t=lr.alight_t,
                distance_m=lr.distance_m,
                flags=[str(x) for x in (lr.flags or [])],
            )
        )
    return JourneysOut(
        rider_id=rider_id,
        journeys=[
            JourneyOut(
                journey_id=r.journey_id,
                first_board_t=r.first_board_t,
                last_alight_t=r.last_alight_t,
                fare_krw=r.fare_krw,
                category=r.category,
                ruleset_id=r.ruleset_id,
                explain=[str(x) for x in (r.explain or [])],
                legs=by_journey.get(r.journey_id, []),
                charged=bool(r.charged),
                flags=[str(x) for x in (r.flags or [])],
            )
            for r in rows
        ],
    )


@riders_router.get(
    "/riders/{rider_id}/charges", response_model=ChargesOut, tags=["riders"], dependencies=_READ
)
async def rider_charges(
    rider_id: str,
    state: State,
    since: float | None = Query(None, description="Only charges from this UNIX time."),
    limit: int = Query(100, ge=1, le=1000),
) -> ChargesOut:
    """The rider's charges, newest first, and their total."""
    await rider_row(state, rider_id)
    q = _newest(charges, rider_id, charges.c.t, charges.c.charge_id, since=since, limit=limit)
    async with state.engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    items = [
        ChargeOut(
            charge_id=r.charge_id,
            journey_id=r.journey_id,
            t=r._mapping["t"],
            fare_krw=r.fare_krw,
            category=r.category,
            created_at=r.created_at,
        )
        for r in rows
    ]
    return ChargesOut(rider_id=rider_id, total_krw=sum(c.fare_krw for c in items), charges=items)
