"""The rider API over a real database (SQLite and PostgreSQL) and a fake or real broker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from backend._api import ApiState, create_app
from backend._db import charges, create_engine, journeys, legs, migrate
from busbell import Topics, load_gtfs
from tests.factories.backend_world import write_gtfs
from tests.factories.mqtt import RecordingPublisher

OPENAPI_DOC = Path(__file__).resolve().parents[2] / "docs" / "rider-api.openapi.json"


async def _client(
    url: str, tmp_path: Path, operator: Any, **kw: Any
) -> tuple[httpx.AsyncClient, ApiState]:
    engine = create_engine(url)
    await migrate(engine)
    gtfs = tmp_path / "gtfs"
    write_gtfs(gtfs)
    state = ApiState(
        engine=engine,
        topics=Topics("t/busbell/v1"),
        feed=load_gtfs(gtfs),
        auth=operator.auth,
        **kw,
    )
    app = create_app(state)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api", headers=operator.headers
    )
    return client, state


@pytest.fixture
async def sqlite_api(
    tmp_path: Path, operator: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, ApiState, RecordingPublisher]]:
    broker = RecordingPublisher()
    client, state = await _client(
        f"sqlite+aiosqlite:///{tmp_path}/api.db", tmp_path, operator, publisher=broker
    )
    async with client:
        yield client, state, broker
    await state.engine.dispose()


async def test_enrol_revoke_and_hooks(
    sqlite_api: tuple[httpx.AsyncClient, ApiState, RecordingPublisher],
) -> None:
    client, state, _ = sqlite_api
    enrolled: list[tuple[str, bytes]] = []
    revoked: list[str] = []
    state.on_enrolled = lambda r, k: enrolled.append((r, k))
    state.on_revoked = revoked.append
    r = await client.post("/riders", json={"kind": "fob", "rider_id": "alice"})
    assert r.status_code == 201
    body = r.json()
    assert body["rider_id"] == "alice"
    assert len(bytes.fromhex(body["token_key"])) == 16
    assert enrolled == [("alice", bytes.fromhex(body["token_key"]))]
    r = await client.post("/riders", json={"kind": "fob", "rider_id": "alice"})
    assert r.status_code == 409
    r = await client.post("/riders", json={"kind": "watch"})
    assert r.status_code == 422
    r = await client.post("/riders", json={"rider_id": "bad/id"})
    assert r.status_code == 422
    r = await client.post("/riders", json={})
    assert r.status_code == 201
    assert r.json()["kind"] == "app"
    status = (await client.get("/riders/alice")).json()
    assert status["status"] == "active"
    assert "token_key" not in status
    r = await client.post("/riders/alice/revoke")
    assert r.status_code == 200
    assert r.json()["status"] == "revoked"
    r2 = await client.post("/riders/alice/revoke")
    assert r2.json()["revoked_at"] == r.json()["revoked_at"]
    assert revoked == ["alice"]
    assert (await client.post("/riders/nobody/revoke")).status_code == 404


async def test_journeys_and_charges(
    sqlite_api: tuple[httpx.AsyncClient, ApiState, RecordingPublisher],
) -> None:
    client, state, _ = sqlite_api
    await client.post("/riders", json={"rider_id": "bob"})
    async with state.engine.begin() as conn:
        for n, t in enumerate((1000.0, 5000.0)):
            jid = f"j{n}"
            await conn.execute(
                sa.insert(journeys).values(
                    journey_id=jid,
                    rider_id="bob",
                    first_board_t=t,
                    last_alight_t=t + 600,
                    fare_krw=1650 + n,
                    category="adult",
                    ruleset_id="rs",
                    explain=["line 1", "total"],
                    computed_at=t + 700,
                )
            )
            for leg_no in (1, 2):
                await conn.execute(
                    sa.insert(legs).values(
                        journey_id=jid,
                        leg_no=leg_no,
                        bus_id="b1",
                        route_id="R1",
                        trip_id=None,
                        network_id="gyeonggi_city",
                        board_stop_id="S01",
                        board_t=t,
                        alight_stop_id="S02",
                        alight_t=t + 300,
                        distance_m=800.0,
                        event_ids=["e1"],
                    )
                )
            await conn.execute(
                sa.insert(charges).values(
                    charge_id=f"c{n}",
                    rider_id="bob",
                    journey_id=jid,
                    t=t,
                    fare_krw=1650 + n,
                    category="adult",
                    created_at=t + 700,
                )
            )
    r = await client.get("/riders/bob/journeys")
    assert r.status_code == 200
    js = r.json()["journeys"]
    assert [j["journey_id"] for j in js] == ["j1", "j0"]
    assert [leg["leg_no"] for leg in js[0]["legs"]] == [1, 2]
    assert js[0]["explain"] == ["line 1", "total"]
    r = await client.get("/riders/bob/journeys", params={"since": 2000})
    assert [j["journey_id"] for j in r.json()["journeys"]] == ["j1"]
    c = (await client.get("/riders/bob/charges")).json()
    assert c["total_krw"] == 1650 + 1651
    assert [x["charge_id"] for x in c["charges"]] == ["c1", "c0"]
    assert (await client.get("/riders/nobody/journeys")).status_code == 404
    assert (await client.get("/riders/bob/charges", params={"limit": 0})).status_code == 422
    assert (await client.get("/riders/bob/journeys", params={"limit": "x"})).status_code == 422
    empty = (await client.get("/riders/bob/journeys", params={"since": 10**9})).json()
    assert empty["journeys"] == []


async def test_healthz_says_whether_the_broker_is_connected(
    sqlite_api: tuple[httpx.AsyncClient, ApiState, RecordingPublisher],
) -> None:
    client, state, _ = sqlite_api
    assert (await client.get("/healthz")).json() == {"ok": True, "mqtt": True}
    state.publisher = None
    assert (await client.get("/healthz")).json() == {"ok": True, "mqtt": False}


@pytest.mark.postgres
async def test_enrol_and_ledger_on_postgres(pg_url: str, tmp_path: Path, operator: Any) -> None:
    client, state = await _client(pg_url, tmp_path, operator, publisher=RecordingPublisher())
    async with client:
        r = await client.post("/riders", json={"rider_id": "pg-rider", "kind": "app"})
        assert r.status_code == 201
        assert (await client.post("/riders", json={"rider_id": "pg-rider"})).status_code == 409
        assert (await client.get("/riders/pg-rider/journeys")).json()["journeys"] == []
        assert (await client.get("/riders/pg-rider/charges")).json()["total_krw"] == 0
        assert (await client.post("/riders/pg-rider/revoke")).json()["status"] == "revoked"
    await state.engine.dispose()


async def test_openapi_document_is_current(
    sqlite_api: tuple[httpx.AsyncClient, ApiState, RecordingPublisher],
) -> None:
    """docs/rider-api.openapi.json is the served document; regenerate with
    ``BUSBELL_WRITE_OPENAPI=1 pytest tests/backend/test_api.py -k openapi``."""
    import os

    client, _, _ = sqlite_api
    served = (await client.get("/openapi.json")).json()
    text = json.dumps(served, indent=2, sort_keys=True) + "\n"
    if os.environ.get("BUSBELL_WRITE_OPENAPI") == "1":
        OPENAPI_DOC.write_text(text, encoding="utf-8")
    assert OPENAPI_DOC.exists(), "run with BUSBELL_WRITE_OPENAPI=1 to create it"
    assert OPENAPI_DOC.read_text(encoding="utf-8") == text, (
        "docs/rider-api.openapi.json is stale: rerun with BUSBELL_WRITE_OPENAPI=1"
    )
    for path in (
        "/riders",
        "/riders/{rider_id}/journeys",
        "/riders/{rider_id}/waits",
        "/riders/{rider_id}/waits/{request_id}",
        "/gtfs-rt/vehicle-positions",
    ):
        assert path in served["paths"]
