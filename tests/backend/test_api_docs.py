"""The rider API's /docs works offline: Swagger UI from local assets, rendered by Chromium."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from backend._api import ApiState, create_app
from backend._api_docs import ASSETS_PATH, install_offline_docs
from backend._db import create_engine, migrate
from busbell import Topics, load_gtfs
from busbell._http import http_server, serve_http
from tests.factories.backend_world import write_gtfs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/api.db")
    await migrate(engine)
    write_gtfs(tmp_path / "gtfs")
    state = ApiState(
        engine=engine, topics=Topics("t/busbell/v1"), feed=load_gtfs(tmp_path / "gtfs")
    )
    yield create_app(state)
    await engine.dispose()


async def test_docs_page_loads_no_external_url(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
        assert urls, page.text
        external = [u for u in urls if "//" in u]
        assert external == [], external
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
            assert f"{ASSETS_PATH}/{asset}" in page.text
            r = await client.get(f"{ASSETS_PATH}/{asset}")
            assert r.status_code == 200
            assert len(r.content) > 500
        assert (await client.get("/redoc")).status_code == 404
        assert (await client.get("/openapi.json")).json()["info"]["title"] == "busbell rider API"


def test_install_refuses_an_app_with_cdn_docs() -> None:
    with pytest.raises(ValueError, match="docs_url=None"):
        install_offline_docs(FastAPI())


@pytest.mark.browser
async def test_chromium_renders_the_operations_offline(app: FastAPI) -> None:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (run .ci/run, or apt-get install chromium)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = http_server(config)
    task = asyncio.create_task(serve_http(server), name="docs-server")
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        # --virtual-time-budget lets the page's scripts run and fetch /openapi.json before
        # the DOM is dumped; the machine has no route to a CDN, so what renders is local
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=15000",
            "--dump-dom",
            f"http://127.0.0.1:{port}/docs",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        dom, _ = await asyncio.wait_for(proc.communicate(), timeout=90)
    finally:
        server.should_exit = True
        await task
    text = dom.decode()
    assert 'class="swagger-ui"' in text
    assert "opblock" in text  # operations were rendered from /openapi.json
    assert "/riders" in text
