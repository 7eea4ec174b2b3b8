"""Display-model stops and a headless Chromium for the driver page tests and screenshots."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

__all__ = ["CHROMIUM", "chromium", "stop"]

CHROMIUM = os.environ.get("BUSBELL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def stop(
    stop_id: str,
    name: str,
    seq: int,
    waits: int = 0,
    *,
    assist: bool = False,
    requested: bool = False,
    ids: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One stop of a display model."""
    return {
        "stop_id": stop_id,
        "name": name,
        "seq": seq,
        "waits": waits,
        "assist": assist,
        "stop_requested": requested,
        "request_ids": list(ids),
    }


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """Headless Chromium (``CHROMIUM``) under Playwright; fails the test if it is missing."""
    from playwright.async_api import async_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed (run .ci/run, or apt-get install chromium)")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM)
        try:
            yield b
        finally:
            await b.close()
