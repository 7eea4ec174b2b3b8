"""Backend fixtures: every ledger test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from backend._db import create_engine, migrate
from backend._keys import register_device
from tests.factories.fare_events import device_key_for


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database URL: an SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def registered_buses() -> tuple[str, ...]:
    """The buses ``engine`` registers, each with ``device_key_for(bus)``: none here; a
    module that ingests overrides this fixture with its buses."""
    return ()


@pytest.fixture
async def engine(db_url: str, registered_buses: tuple[str, ...]) -> AsyncIterator[AsyncEngine]:
    """A migrated engine on ``db_url``, ``registered_buses`` registered (at t=1)."""
    eng = create_engine(db_url)
    await migrate(eng)
    if registered_buses:
        async with eng.begin() as conn:
            for b in registered_buses:
                await register_device(conn, b, device_key_for(b).public, now=1.0)
    yield eng
    await eng.dispose()


class OperatorCredentials:
    """An :class:`backend._api.ApiAuth` with one all-scopes operator, and its headers."""

    def __init__(self) -> None:
        from backend._api_auth import ApiAuth
        from backend._auth import SCOPES, OperatorRegistry, new_operator_token, operator_entry

        self.token = new_operator_token()
        self.auth = ApiAuth(
            operators=OperatorRegistry([operator_entry("test-ops", SCOPES, self.token)])
        )
        self.headers = {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def operator() -> OperatorCredentials:
    """API credentials of an operator with every scope (``auth`` for ApiState, ``headers``)."""
    return OperatorCredentials()
