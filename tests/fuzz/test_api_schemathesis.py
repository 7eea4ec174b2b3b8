"""schemathesis against the rider API's OpenAPI document, served by a real uvicorn.

Every operation is called with generated (valid and invalid) parameters and bodies, as
an operator with every scope and without credentials. Checks: no 5xx
(``not_a_server_error``), 2xx bodies match the documented schema, documented content
types, and ``ignored_auth`` (an operation that declares the bearer scheme must refuse a
request whose credentials were removed).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
)

from backend._api import ApiState, create_app  # noqa: E402
from backend._api_auth import ApiAuth  # noqa: E402
from backend._auth import (  # noqa: E402
    SCOPES,
    OperatorRegistry,
    RateLimiter,
    new_operator_token,
    operator_entry,
)
from backend._db import create_engine, migrate  # noqa: E402
from busbell import Topics, load_gtfs  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.factories.backend_world import write_gtfs  # noqa: E402
from tests.factories.tasks import LIVE_TIMEOUT_S  # noqa: E402
from tests.fuzz.conftest import EXAMPLES  # noqa: E402

DOC = Path(__file__).parents[2] / "docs" / "rider-api.openapi.json"
SCHEMA = schemathesis.openapi.from_path(str(DOC))
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
TOKEN = new_operator_token()
PER_OPERATION = max(10, EXAMPLES // 10)


class Server:
    """The rider API on a real uvicorn in a thread (its own loop and database)."""

    def __init__(self, tmp: Path) -> None:
        import uvicorn

        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: Any = None
        self._uvicorn = uvicorn
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{self.tmp / 'api.db'}")
        await migrate(engine)
        write_gtfs(self.tmp / "gtfs")
        lots = RateLimiter(1e6, 10**6)
        auth = ApiAuth(
            operators=OperatorRegistry([operator_entry("fuzz", SCOPES, TOKEN)]),
            riders=RateLimiter(1e6, 10**6),
            operators_rate=lots,
            anonymous=RateLimiter(1e6, 10**6),
            enrol=RateLimiter(1e6, 10**6),
        )
        state = ApiState(
            engine=engine, topics=Topics("fuzz/v1"), feed=load_gtfs(self.tmp / "gtfs"), auth=auth
        )
        config = self._uvicorn.Config(
            create_app(state), host="127.0.0.1", port=self.port, log_level="critical"
        )
        self.server = self._uvicorn.Server(config)
        try:
            await self.server.serve()
        finally:
            await engine.dispose()

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while self.server is None or not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the API did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with Server(tmp_path_factory.mktemp("schemathesis")) as server:
        # a real rider, so that generated ids sometimes hit an existing one
        import httpx

        r = httpx.post(
            f"{server.url}/riders",
            json={"rider_id": "fuzz-rider"},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=LIVE_TIMEOUT_S,
        )
        assert r.status_code == 201
        yield server


@SCHEMA.parametrize()
@settings(max_examples=PER_OPERATION, deadline=None)
def test_api_as_operator(case: Any, api: Server) -> None:
    case.call_and_validate(
        base_url=api.url, headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS
    )


@SCHEMA.parametrize()
@settings(max_examples=PER_OPERATION, deadline=None)
def test_api_without_credentials(case: Any, api: Server) -> None:
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    response = case.call(base_url=api.url)
    assert response.status_code < 500, (case.method, case.path, response.status_code)
    protected = case.path.startswith(("/riders/{rider_id}", "/devices/", "/ops/"))
    if protected:
        # refused before any rider data is read: 401, or a malformed request (a body that
        # is not JSON is 400 before authentication), an unknown path or method
        assert response.status_code in (400, 401, 404, 405, 413, 422), (
            case.path,
            response.status_code,
        )
        assert "token_key" not in response.text
        assert "journeys" not in response.text


@SCHEMA.parametrize()
@settings(max_examples=max(5, PER_OPERATION // 4), deadline=None)
def test_removing_credentials_is_refused(case: Any, api: Server) -> None:
    """schemathesis's ignored_auth: an operation that declares the scheme refuses a
    request whose credentials are removed or made invalid."""
    case.call_and_validate(
        base_url=api.url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=[ignored_auth, not_a_server_error],
    )
