"""The rider API's interactive docs (Swagger UI) served from local assets, never a CDN.

FastAPI's default ``/docs`` page loads Swagger UI from jsDelivr and ``/redoc`` from
another CDN: blank offline and on a bus depot network. Here ``/docs`` uses the Swagger
UI 5 assets vendored by the ``fastapi-swagger`` package (only its files are used; Swagger
UI 4 cannot render the OpenAPI 3.1 FastAPI writes), served under ``/docs/assets``;
``/redoc`` is off.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

__all__ = ["ASSETS_PATH", "install_offline_docs"]

ASSETS_PATH = "/docs/assets"


def _assets_dir() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("fastapi_swagger.resources")))


def install_offline_docs(app: FastAPI) -> None:
    """Serve ``/docs`` with local Swagger UI assets (create the app with ``docs_url=None``).

    Raises:
        ValueError: when the app still has FastAPI's CDN-backed docs routes.
    """
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("create the FastAPI app with docs_url=None and redoc_url=None")
    assets = _assets_dir()
    app.mount(ASSETS_PATH, StaticFiles(directory=assets), name="swagger-ui-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - docs",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
            oauth2_redirect_url=oauth2_redirect,
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
