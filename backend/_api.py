"""The rider API (FastAPI); the ``busbell backend run`` service is :mod:`backend._service`.

The app is built from routers with dependencies: riders and devices
(:mod:`backend._riders_api`), waits (:mod:`backend._waits_api`), the operator's
missed-stop report (:mod:`backend._missed`); each route gets the app's
:class:`~backend._api_state.ApiState` as a dependency.

Endpoints (OpenAPI at ``/openapi.json``, a copy in ``docs/rider-api.openapi.json``):

* ``POST /riders``: enrol a fob or app; returns ``rider_id``, ``token_key`` and the
  rider's API ``access_token`` once.
* ``GET /riders/{id}/journeys``, ``GET /riders/{id}/charges``: the rider's ledger.
* ``POST /riders/{id}/revoke``: stop resolving the rider's tokens.
* ``POST /riders/{id}/token``: a new API token (the older ones stop working).
* ``PUT /riders/{id}/category``: set the fare category (operators only).
* ``POST /devices/{bus}/revoke``: revoke a bus (operators with ``devices:write``).
* ``POST /riders/{id}/waits``, ``GET /riders/{id}/waits[/{request_id}]``,
  ``DELETE /riders/{id}/waits/{request_id}``: boarding-wait requests, one live wait per
  rider, under the rules of ``[waits]`` (:mod:`backend._waits_api`, core in
  :mod:`backend._waits`).
* ``GET /ops/missed-stops``, ``GET /ops/missed-stops/{event_id}``: the operator's report
  of missed stops from the buses' signed records (:mod:`backend._missed`).
* ``GET /gtfs-rt/vehicle-positions``: GTFS-Realtime protobuf (``?format=json``: JSON).

Bad requests get a 4xx with ``{"detail": ...}``; a missing broker connection is 503.
Who may call what (bearer tokens, operator scopes, rate limits, body cap) is
:mod:`backend._auth` (rules) and :mod:`backend._api_auth` (guards).
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query, Response, Security
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend._api_auth import (
    ApiAuth,
    BodyLimit,
    current_principal,
    http_error,
    rider_access_by_method,
    validation_error,
)
from backend._api_docs import install_offline_docs
from backend._api_state import ApiState
from backend._gtfs_rt import build_feed, feed_to_json
from backend._missed import ops_router
from backend._riders_api import devices_router, insert_rider, operator_only, riders_router
from backend._waits_api import rider_router
from busbell._errors import ContractError
from busbell._logging import get_logger
from busbell._mqtt import Publisher

__all__ = [
    "ApiAuth",
    "ApiState",
    "Publisher",
    "create_app",
    "enroll_rider",
]

log = get_logger("backend.api")

# ---------------------------------------------------------------------------- app


def create_app(state: ApiState) -> FastAPI:
    """Build the FastAPI application over ``state``."""
    app = FastAPI(
        title="busbell rider API",
        version="1.0.0",
        description=(
            "Enrol rider tokens, read journeys and charges, post boarding-wait requests, "
            "and read GTFS-Realtime vehicle positions with occupancy."
        ),
        docs_url=None,  # /docs is served from local assets (no CDN): see _api_docs
        redoc_url=None,
    )
    install_offline_docs(app)
    app.state.busbell = state
    app.router.dependencies.append(Depends(current_principal))
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_middleware(
        BodyLimit,
        max_bytes=lambda: state.auth.max_body_bytes,
        on_refused=lambda reason, scope: log.warning(
            "api_request_refused", reason=reason, path=str(scope.get("path", ""))[:200]
        ),
    )
    assert state.waits is not None
    app.include_router(rider_router(state.waits), dependencies=[Security(rider_access_by_method)])
    names = {sid: s.name for sid, s in state.feed.stops.items() if s.name} if state.feed else {}
    app.include_router(
        ops_router(state.engine, names), dependencies=[Security(operator_only("riders:read"))]
    )

    app.include_router(riders_router)
    app.include_router(devices_router)

    @app.get(
        "/gtfs-rt/vehicle-positions",
        tags=["gtfs-realtime"],
        responses={
            200: {
                "description": "GTFS-Realtime FeedMessage (protobuf), or JSON with format=json.",
                "content": {"application/x-protobuf": {}, "application/json": {}},
            }
        },
    )
    async def vehicle_positions(
        format: Literal["pb", "json"] = Query("pb", description="pb (protobuf) or json."),
    ) -> Response:
        """Vehicle positions with occupancy_status from the buses' occupancy counts."""
        assert state.fleet is not None
        msg = build_feed(state.fleet, now=state.clock(), thresholds=state.occupancy)
        if format == "json":
            return Response(
                json.dumps(feed_to_json(msg), sort_keys=True), media_type="application/json"
            )
        return Response(msg.SerializeToString(), media_type="application/x-protobuf")

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        """Liveness and broker connection."""
        return {"ok": True, "mqtt": state.publisher is not None}

    return app


async def enroll_rider(
    url: str, rider_id: str, token_key: bytes, *, kind: str = "fob", category: str = "adult"
) -> str:
    """Enrol a rider into the database at ``url`` (migrating it first).

    The rider's ``kind`` (fob or app) and fare ``category`` are stored with the token
    key, which is all the online settlement needs to resolve and price the rider.

    Returns:
        The rider's rider-API bearer token (stored hashed; shown once).

    Raises:
        StoreError: the database cannot be reached or migrated.
        ContractError: the rider exists already.
    """
    from backend._db import create_engine, migrate

    engine = create_engine(url)
    try:
        await migrate(engine)
        access_token = await insert_rider(
            engine, rider_id, token_key, time.time(), kind=kind, category=category
        )
        if access_token is None:
            raise ContractError(f"rider {rider_id!r} already exists", field="rider_id")
        log.info("rider_enrolled", rider_id=rider_id, kind=kind, category=category)
        return access_token
    finally:
        await engine.dispose()
