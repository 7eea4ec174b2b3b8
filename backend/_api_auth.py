"""The rider API's guards: authentication, authorisation, rate limits, body cap (FastAPI).

The rules are in :mod:`backend._auth`; this module applies them to requests:

* :class:`BodyLimit` (ASGI middleware) refuses a body over ``[api] max_body_bytes``
  with 413 before the application reads it (by ``Content-Length``, or while it streams
  in; the rest is read and dropped, never kept, up to 64 MiB so that the client gets the
  answer), and a JSON body nested deeper than 32 levels with 400; the responses are
  short and never echo the input.
* :func:`validation_error` replaces FastAPI's 422 body, which echoes the whole input,
  with at most 10 errors of location, message and type, each cut short.
* :func:`current_principal` (an app-wide dependency) resolves the bearer token to a
  :class:`~backend._auth.Principal` (401 for a bad token) and spends one token of the
  caller's rate-limit bucket (429 with ``Retry-After``): per rider, per operator, or per
  client address without valid credentials.
* :func:`rider_access` (per route) lets a rider reach only its own ``{rider_id}`` and an
  operator only with the scope: 401 without credentials, 403 for anyone else, before
  the handler looks the rider up (so a stranger cannot tell which ids exist).

Every refusal is counted (Prometheus ``busbell_api_refused_total{reason}``) and logged
through a rate-limited :class:`busbell.RejectLog` (``api_request_refused``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from backend._auth import (
    OPERATOR_PREFIX,
    OperatorRegistry,
    Principal,
    RateLimiter,
    hash_token,
    new_rider_token,
    retry_after,
    well_formed,
)
from backend._db import rider_tokens
from busbell._logging import get_logger
from busbell._rejects import RejectLog
from busbell._safejson import json_depth

__all__ = [
    "ApiAuth",
    "BodyLimit",
    "bearer",
    "current_principal",
    "http_error",
    "issue_rider_token",
    "refused",
    "rider_access",
    "rider_access_by_method",
    "validation_error",
]

log = get_logger("backend.api_auth")

REFUSED = Counter(
    "busbell_api_refused", "Rider API requests refused before the handler ran", ["reason"]
)
MAX_JSON_DEPTH = 32
DRAIN_MAX_BYTES = 64 * 1024 * 1024
"""A refused body is read and dropped up to this size so the client sees the 413."""

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description=(
        "A rider token (`bbr_...`, returned once by `POST /riders` or "
        "`POST /riders/{rider_id}/token`) reaches only that rider's data; an operator "
        "token (`bbo_...`, configured as `[api] operators` in the backend config) "
        "reaches any rider within its scopes: `riders:read`, `riders:write`, "
        "`devices:write`."
    ),
)


@dataclass
class ApiAuth:
    """The API's credentials and limits (from ``[api]``).

    Attributes:
        operators: the configured operator credentials.
        open_enrolment: whether callers without operator credentials may enrol.
        max_body_bytes: largest request body.
        riders: per-rider rate limit.
        operators_rate: per-operator rate limit.
        anonymous: per-address rate limit of requests without valid credentials.
        enrol: per-address enrolment limit (callers without operator credentials).
        monotonic: the clock of the rate limits.
    """

    operators: OperatorRegistry = field(default_factory=OperatorRegistry)
    open_enrolment: bool = True
    max_body_bytes: int = 16384
    riders: RateLimiter = field(default_factory=lambda: RateLimiter(5.0, 30))
    operators_rate: RateLimiter = field(default_factory=lambda: RateLimiter(200.0, 1000))
    anonymous: RateLimiter = field(default_factory=lambda: RateLimiter(5.0, 50))
    enrol: RateLimiter = field(default_factory=lambda: RateLimiter(20.0 / 3600, 5))
    monotonic: Callable[[], float] = time.monotonic
    rejects: RejectLog = field(
        default_factory=lambda: RejectLog(log, "api_request_refused"), repr=False
    )

    @classmethod
    def from_settings(cls, api: Any) -> ApiAuth:
        """Build from a :class:`backend.config.ApiSettings`."""
        return cls(
            operators=OperatorRegistry(api.operators),
            open_enrolment=api.open_enrolment,
            max_body_bytes=api.max_body_bytes,
            riders=RateLimiter(api.rate_per_s, api.rate_burst),
            operators_rate=RateLimiter(api.operator_rate_per_s, api.operator_rate_burst),
            anonymous=RateLimiter(api.anonymous_rate_per_s, api.anonymous_rate_burst),
            enrol=RateLimiter(api.enrol_per_hour / 3600.0, max(1, int(api.enrol_per_hour / 4))),
        )

    async def resolve(self, token: str, engine: AsyncEngine) -> Principal | None:
        """The principal holding ``token``, or ``None`` for an unknown or revoked one."""
        if not well_formed(token):
            return None
        if token.startswith(OPERATOR_PREFIX):
            op = self.operators.find(token)
            return None if op is None else Principal("operator", op.name, op.scopes)
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(rider_tokens.c.rider_id).where(
                        rider_tokens.c.token_hash == hash_token(token),
                        rider_tokens.c.revoked_at.is_(None),
                    )
                )
            ).first()
        return None if row is None else Principal("rider", row.rider_id)


def refused(auth: ApiAuth, reason: str, request: Request, **fields: Any) -> None:
    """Count and (rate-limited) log a refused request."""
    REFUSED.labels(reason).inc()
    auth.rejects.reject(reason, method=request.method, path=request.url.path, **fields)


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _limit(auth: ApiAuth, limiter: RateLimiter, key: str, request: Request) -> None:
    wait = limiter.take(key, auth.monotonic())
    if wait:
        refused(auth, "rate_limited", request, key=key.split(":", 1)[0])
        raise HTTPException(429, "too many requests", headers={"Retry-After": retry_after(wait)})


async def current_principal(request: Request) -> Principal | None:
    """Resolve the caller once per request and spend its rate limit (app-wide dependency).

    Raises:
        HTTPException: 401 for a bad or revoked token, 429 over the rate limit.
    """
    if hasattr(request.state, "principal"):
        p: Principal | None = request.state.principal
        return p
    state = request.app.state.busbell
    auth: ApiAuth = state.auth
    header = request.headers.get("authorization")
    if header is None:
        _limit(auth, auth.anonymous, f"addr:{_client(request)}", request)
        request.state.principal = None
        return None
    scheme, _, token = header.partition(" ")
    principal = (
        await auth.resolve(token.strip(), state.engine) if scheme.lower() == "bearer" else None
    )
    if principal is None:
        _limit(auth, auth.anonymous, f"addr:{_client(request)}", request)
        refused(auth, "bad_token", request)
        raise HTTPException(
            401,
            "invalid or revoked bearer token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    limiter = auth.riders if principal.kind == "rider" else auth.operators_rate
    _limit(auth, limiter, principal.key, request)
    request.state.principal = principal
    return principal


def rider_access(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller may act on the path's ``{rider_id}`` with ``scope``.

    Raises:
        HTTPException: 401 without credentials, 403 when not allowed.
    """

    async def check(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> Principal:
        return await _check(request, scope)

    return check


async def _check(request: Request, scope: str) -> Principal:
    principal = await current_principal(request)
    auth: ApiAuth = request.app.state.busbell.auth
    if principal is None:
        refused(auth, "no_credentials", request)
        raise HTTPException(401, "bearer token required", headers={"WWW-Authenticate": "Bearer"})
    rider_id = str(request.path_params.get("rider_id", ""))
    if not principal.may(rider_id, scope):
        refused(auth, "forbidden", request, principal=principal.kind, scope=scope)
        raise HTTPException(403, "not allowed")
    return principal


async def rider_access_by_method(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Principal:
    """:func:`rider_access` with ``riders:read`` for GET/HEAD, ``riders:write`` otherwise."""
    scope = "riders:read" if request.method in ("GET", "HEAD") else "riders:write"
    return await _check(request, scope)


async def issue_rider_token(
    conn: AsyncConnection, rider_id: str, now: float, *, replace: bool = False
) -> str:
    """Store a new bearer token for ``rider_id`` (hash only) and return it.

    Args:
        conn: a connection inside the caller's transaction.
        rider_id: the rider.
        now: issue time.
        replace: revoke the rider's earlier tokens.
    """
    if replace:
        await conn.execute(
            sa.update(rider_tokens)
            .where(rider_tokens.c.rider_id == rider_id, rider_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
    token = new_rider_token()
    await conn.execute(
        sa.insert(rider_tokens).values(
            token_hash=hash_token(token), rider_id=rider_id, created_at=now, revoked_at=None
        )
    )
    return token


async def http_error(request: Request, exc: Exception) -> Any:
    """FastAPI's HTTP error answer, with a 422 always in the documented shape.

    A route that refuses a request with ``HTTPException(422, "text")`` would answer
    ``{"detail": "text"}``, which is not the documented ``HTTPValidationError`` (found
    by schemathesis); it becomes one error entry, its message cut short.
    """
    from fastapi.exception_handlers import http_exception_handler
    from starlette.exceptions import HTTPException as StarletteHTTPException

    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 422 and isinstance(exc.detail, str):
        return JSONResponse(
            {"detail": [{"loc": ["body"], "msg": exc.detail[:200], "type": "value_error"}]},
            status_code=422,
            headers=exc.headers,
        )
    return await http_exception_handler(request, exc)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 without FastAPI's echo of the input: at most 10 short errors."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [str(x)[:64] for x in list(e.get("loc", ()))[:8]],
            "msg": str(e.get("msg", ""))[:200],
            "type": str(e.get("type", ""))[:64],
        }
        for e in exc.errors()[:10]
    ]
    return JSONResponse({"detail": errors}, status_code=422)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: bodies over ``max_bytes`` get 413 before the app sees them.

    The body (at most ``max_bytes``) is read here and handed to the application as one
    message; a JSON body nested deeper than :data:`MAX_JSON_DEPTH` gets 400.
    """

    def __init__(self, app: ASGIApp, max_bytes: Callable[[], int], on_refused: Any) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes()
        too_large = f"request body too large (max {limit} bytes)"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _discard(receive, DRAIN_MAX_BYTES)
            await self._refuse(scope, send, 413, too_large)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = bool(message.get("more_body", False))
            if len(body) > limit:
                if more:
                    await _discard(receive, DRAIN_MAX_BYTES)
                await self._refuse(scope, send, 413, too_large)
                return
        if body and (b"[" in body or b"{" in body):
            try:
                deep = json_depth(body.decode("utf-8")) > MAX_JSON_DEPTH
            except UnicodeDecodeError:
                deep = False  # not JSON text: the route's own parsing refuses it
            if deep:
                await self._refuse(scope, send, 400, "request body nested too deeply")
                return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send, status: int, detail: str) -> None:
        self.on_refused("body_too_large" if status == 413 else "body_too_deep", scope)
        response = JSONResponse(
            {"detail": detail}, status_code=status, headers={"Connection": "close"}
        )
        await response(scope, _no_receive, send)


async def _discard(receive: Receive, budget: int) -> None:
    """Read and drop the rest of a refused body, up to ``budget`` bytes.

    The server can only answer once the client has sent its body (HTTP/1.1 clients
    read the response after writing the request): closing on unread data makes the
    kernel reset the connection and the client sees an error instead of the 413. Past
    ``budget`` the connection is closed anyway. Memory stays at one chunk.
    """
    seen = 0
    while seen <= budget:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
