"""Fixtures of the edge tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.factories.bluez import BlueZMock, running_bluez


@pytest.fixture
async def bluez(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[BlueZMock]:
    """The mocked bluetoothd on a private system bus; bleak talks to it unchanged."""
    async with running_bluez(tmp_path, monkeypatch) as mock:
        yield mock
