"""Riders' wait endpoints end to end: real database (SQLite and PostgreSQL), real mosquitto.

The API's own MQTT link (``backend._service.BrokerLink``) runs against the broker; a test
plays a bus by publishing display models and request statuses as an edge does.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from backend._api import ApiState, create_app
from backend._db import create_engine, migrate, rider_waits
from backend._service import BrokerLink
from backend._waits import WaitRules
from busbell import Topics, load_gtfs
from busbell._mqtt import MqttMessage, MqttSession, MqttSettings
from tests.factories.backend_world import write_gtfs

pytestmark = pytest.mark.mosquitto


@dataclass
class Api:
    client: httpx.AsyncClient
    state: ApiState
    topics: Topics
    bus: MqttSession
    settings: MqttSettings
    clock: list[float]

    async def rider(self, rider_id: str = "ann") -> str:
        r = await self.client.post("/riders", json={"rider_id": rider_id})
        assert r.status_code == 201, r.text
        return rider_id

    async def wait(self, rider: str = "ann", **body: Any) -> httpx.Response:
        return await self.client.post(
            f"/riders/{rider}/waits", json={"route_id": "R1", "stop_id": "S05", **body}
        )

    async def row(self, request_id: str) -> Any:
        async with self.state.engine.connect() as conn:
            return (
                await conn.execute(
                    sa.select(rider_waits).where(rider_waits.c.request_id == request_id)
                )
            ).one()

    async def until(self, what: Callable[[], Any], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not await what():
                await asyncio.sleep(0.02)

    async def until_state(self, request_id: str, state: str) -> Any:
        async def done() -> bool:
            return bool((await self.row(request_id)).state == state)

        await self.until(done)
        return await self.row(request_id)

    async def status(self, request_id: str, state: str, bus: str = "bus-1") -> None:
        body = {"request_id": request_id, "state": state, "bus_id": bus, "t": self.clock[0]}
        await self.bus.publish(
            self.topics.request_status(request_id), json.dumps(body), qos=1, retain=True
        )


async def retained(settings: MqttSettings, topic: str, timeout: float = 1.0) -> MqttMessage | None:
    """The message retained on ``topic`` (or ``None``): read with a fresh subscription."""
    marker = f"{settings.prefix}/test/marker/{uuid.uuid4().hex[:8]}"
    found: MqttMessage | None = None
    async with MqttSession(settings, f"t-ret-{uuid.uuid4().hex[:10]}", clean_start=True) as s:
        await s.subscribe([topic, marker], qos=0)
        await s.publish(marker, b"x", qos=0)
        async with asyncio.timeout(timeout + 5):
            async for m in s.messages():
                if m.topic == marker:
                    return found
                if m.retain and m.payload:
                    found = m
    return found


@pytest.fixture
async def api(
    db_url: str, tmp_path: Path, shared_broker: Any, topic_prefix: str, operator: Any
) -> AsyncIterator[Api]:
    gtfs = tmp_path / "gtfs"
    write_gtfs(gtfs)
    engine = create_engine(db_url)
    await migrate(engine)
    settings = MqttSettings(
        host=shared_broker.host,
        port=shared_broker.port,
        prefix=topic_prefix,
        backoff_initial_s=0.05,
        backoff_max_s=0.5,
    )
    topics = Topics(topic_prefix)
    clock = [1_764_000_000.0]
    state = ApiState(
        engine=engine,
        topics=topics,
        feed=load_gtfs(gtfs),
        wait_rules=WaitRules(rate_max=5, min_lifetime_s=1),
        clock=lambda: clock[0],
        auth=operator.auth,
    )
    link = asyncio.create_task(BrokerLink(settings, state, f"t-api-{uuid.uuid4().hex[:10]}").run())
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(state)),
        base_url="http://api",
        headers=operator.headers,
    )
    try:
        async with (
            client,
            MqttSession(settings, f"t-bus-{uuid.uuid4().hex[:10]}", clean_start=True) as bus,
        ):
            async with asyncio.timeout(10):
                while state.publisher is None:
                    await asyncio.sleep(0.02)
            yield Api(client, state, topics, bus, settings, clock)
    finally:
        link.cancel()
        await asyncio.gather(link, return_exceptions=True)
        await engine.dispose()


def rejected(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("busbell_wait_requests_rejected_total", {"reason": reason}) or 0.0
    )


def message_rejected(kind: str, reason: str) -> float:
    labels = {"kind": kind, "reason": reason}
    return REGISTRY.get_sample_value("busbell_wait_messages_rejected_total", labels) or 0.0


async def test_a_wait_is_published_retained_and_a_second_one_replaces_it(api: Api) -> None:
    rider = await api.rider()
    r = await api.wait(rider, assist=True)
    assert r.status_code == 201, r.text
    first = r.json()
    rid = first["request_id"]
    assert first["state"] == "pending"
    assert first["stop_name"] == "Stop 5"
    assert first["expires_t"] - first["t"] == 900
    assert first["replaced"] is None
    wait_topic = api.topics.wait("R1", "S05", rid)
    assert first["topic"] == wait_topic
    m = await retained(api.settings, wait_topic)
    assert m is not None
    body = json.loads(m.payload)
    assert body == {
        "request_id": rid,
        "route_id": "R1",
        "stop_id": "S05",
        "t": api.clock[0],
        "expires_t": api.clock[0] + 900,
        "source": "app",
        "assist": True,
    }
    m = await retained(api.settings, api.topics.request_status(rid))
    assert m is not None
    assert json.loads(m.payload)["state"] == "pending"

    # one live wait per rider: the second cancels the first
    api.clock[0] += 30
    r = await api.wait(rider, stop_id="S08")
    assert r.status_code == 201, r.text
    second = r.json()
    assert second["replaced"] == rid
    assert await retained(api.settings, wait_topic) is None
    m = await retained(api.settings, api.topics.request_status(rid))
    assert m is not None
    assert json.loads(m.payload)["state"] == "cancelled"
    assert (await api.row(rid)).state == "cancelled"
    listed = (await api.client.get(f"/riders/{rider}/waits")).json()["waits"]
    assert [(w["request_id"], w["state"]) for w in listed] == [
        (second["request_id"], "pending"),
        (rid, "cancelled"),
    ]
    # cancel: the retained wait is cleared, the status says cancelled
    r = await api.client.delete(f"/riders/{rider}/waits/{second['request_id']}")
    assert r.status_code == 200
    assert r.json()["state"] == "cancelled"
    assert await retained(api.settings, api.topics.wait("R1", "S08", second["request_id"])) is None
    before = rejected("not_live")
    assert (await api.client.delete(f"/riders/{rider}/waits/{rid}")).status_code == 409
    assert rejected("not_live") == before + 1
    # nobody else's wait: not found
    await api.rider("bob")
    assert (await api.client.get(f"/riders/bob/waits/{rid}")).status_code == 404
    assert (await api.client.delete(f"/riders/bob/waits/{rid}")).status_code == 404
    assert (await api.client.get("/riders/nobody/waits")).status_code == 404


async def test_status_follows_the_bus_and_a_missed_wait_goes_back_to_pending(api: Api) -> None:
    rider = await api.rider()
    rid = (await api.wait(rider)).json()["request_id"]
    await api.status(rid, "seen")
    assert (await api.until_state(rid, "seen")).bus_id == "bus-1"
    await api.status(rid, "acknowledged")
    await api.until_state(rid, "acknowledged")
    await api.status(rid, "missed")

    async def missed_once() -> bool:
        row = await api.row(rid)
        return bool(row.missed == 1 and row.state == "pending")

    await api.until(missed_once)
    m = await retained(api.settings, api.topics.request_status(rid))
    assert m is not None
    assert json.loads(m.payload)["state"] == "pending"  # for the next bus
    got = (await api.client.get(f"/riders/{rider}/waits/{rid}")).json()
    assert (got["state"], got["missed"], got["bus_id"]) == ("pending", 1, None)
    # the next bus serves it; the retained wait is cleared, the bus's status kept
    await api.status(rid, "seen", "bus-2")
    await api.until_state(rid, "seen")
    await api.status(rid, "served", "bus-2")
    row = await api.until_state(rid, "served")
    assert row.bus_id == "bus-2"
    assert await retained(api.settings, api.topics.wait("R1", "S05", rid)) is None
    m = await retained(api.settings, api.topics.request_status(rid))
    assert m is not None
    assert json.loads(m.payload)["bus_id"] == "bus-2"
    # a late status is stale: counted, not applied; a new wait is possible again
    before = message_rejected("status", "stale")
    await api.status(rid, "missed", "bus-3")

    async def counted() -> bool:
        return message_rejected("status", "stale") == before + 1

    await api.until(counted)
    assert (await api.row(rid)).state == "served"
    assert (await api.wait(rider)).status_code == 201


async def test_bad_statuses_from_the_broker_are_counted_and_the_link_keeps_running(
    api: Api,
) -> None:
    rider = await api.rider()
    rid = (await api.wait(rider)).json()["request_id"]
    topic = api.topics.request_status(rid)
    cases = [
        (b"{not json", "bad_json"),
        (
            json.dumps({"request_id": rid, "state": "teleported", "bus_id": "b", "t": 1}),
            "bad_state",
        ),
        (
            json.dumps({"request_id": "w-other", "state": "seen", "bus_id": "b", "t": 1}),
            "request_id_mismatch",
        ),
        (b"{" + b" " * 4000 + b"}", "oversized"),
    ]
    with capture_logs() as logs:
        for payload, reason in cases:
            before = message_rejected("status", reason)
            await api.bus.publish(topic, payload, qos=1)

            async def counted(reason: str = reason, before: float = before) -> bool:
                return message_rejected("status", reason) == before + 1

            await api.until(counted)
    assert {e["reason"] for e in logs if e["event"] == "wait_message_rejected"} >= {
        reason for _, reason in cases
    }
    assert (await api.row(rid)).state == "pending"
    await api.status(rid, "seen")
    await api.until_state(rid, "seen")


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"route_id": "R9"}, 404, "unknown_route"),
        ({"stop_id": "S99"}, 404, "unknown_stop"),
        ({"route_id": "R3", "stop_id": "S20"}, 422, "stop_not_on_route"),
        ({"route_id": "R1/x"}, 422, "bad_id"),
        ({"expires_in_s": 3601}, 422, "lifetime_too_long"),
        ({"expires_in_s": 0}, 422, "malformed"),
        ({"stop_id": None}, 422, "malformed"),
        ({"colour": "red"}, 422, "malformed"),
        ({"route_id": "R" * 5000}, 413, "oversized"),
    ],
)
async def test_bad_wait_requests_are_refused_counted_and_publish_nothing(
    api: Api, body: dict[str, Any], status: int, reason: str
) -> None:
    rider = await api.rider()
    before = rejected(reason)
    r = await api.wait(rider, **body)
    assert r.status_code == status, r.text
    assert "detail" in r.json()
    assert len(r.content) < 2000  # no echo of a big input
    assert rejected(reason) == before + 1
    assert (await api.client.get(f"/riders/{rider}/waits")).json()["waits"] == []


async def test_the_rate_rule_and_a_revoked_rider(api: Api) -> None:
    rider = await api.rider()
    for _ in range(5):
        assert (await api.wait(rider)).status_code == 201
    before = rejected("rate_limited")
    r = await api.wait(rider)
    assert r.status_code == 429
    assert rejected("rate_limited") == before + 1
    api.clock[0] += 3601  # the window moved on
    assert (await api.wait(rider)).status_code == 201
    await api.client.post(f"/riders/{rider}/revoke")
    assert (await api.wait(rider)).status_code == 403
    assert (
        await api.client.post("/riders/nobody/waits", json={"route_id": "R1", "stop_id": "S05"})
    ).status_code == 404


async def test_a_wait_is_refused_when_the_next_bus_is_too_close(api: Api) -> None:
    rider = await api.rider()
    model = {
        "v": 1,
        "bus_id": "bus-1",
        "t": api.clock[0],
        "route_id": "R1",
        "trip_id": "T1",
        "online": True,
        "on_board": 3,
        "next_stop": {"stop_id": "S04", "name": "Stop 4", "seq": 4},
        "stops": [],
    }
    await api.bus.publish(api.topics.display("bus-1"), json.dumps(model), qos=1, retain=True)

    async def known() -> bool:
        assert api.state.waits is not None
        return api.state.waits.positions.get("bus-1") is not None

    await api.until(known)
    before = rejected("bus_too_close")
    r = await api.wait(rider)  # S05 is the stop after the bus's next one
    assert r.status_code == 409
    assert "bus-1" in r.json()["detail"]
    assert rejected("bus_too_close") == before + 1
    assert (await api.wait(rider, stop_id="S06")).status_code == 201  # two stops on: fine
    # the bus goes offline (its last will): no position
    await api.bus.publish(api.topics.status("bus-1"), b'{"state":"offline"}', qos=1, retain=True)

    async def offline() -> bool:
        assert api.state.waits is not None
        return api.state.waits.positions.next_bus("R1", "S05", api.clock[0]) is None

    await api.until(offline)
    assert (await api.wait(rider)).status_code == 201


async def test_waits_expire_and_live_waits_survive_a_restart(api: Api) -> None:
    rider = await api.rider()
    rid = (await api.wait(rider, expires_in_s=1)).json()["request_id"]
    # the broker drops the retained wait at its message expiry
    wait_topic = api.topics.wait("R1", "S05", rid)

    async def gone() -> bool:
        return await retained(api.settings, wait_topic, timeout=0.2) is None

    await api.until(gone, timeout=15)
    # the backend marks it expired (its clock is the test's)
    assert api.state.waits is not None
    await api.state.waits.tick()
    assert (await api.row(rid)).state == "pending"
    api.clock[0] += 2
    await api.state.waits.tick()
    assert (await api.row(rid)).state == "expired"
    m = await retained(api.settings, api.topics.request_status(rid))
    assert m is not None
    assert json.loads(m.payload)["state"] == "expired"

    # a live wait is restored from the database by a new API process, so the one-wait rule
    # and cancelling still hold
    live = (await api.wait(rider)).json()["request_id"]
    # ... and one of another rider that ends while the API is down
    other = await api.rider("bo")
    gone = (await api.wait(other, expires_in_s=60)).json()["request_id"]
    api.clock[0] += 120
    fresh = ApiState(
        engine=api.state.engine,
        topics=api.topics,
        feed=api.state.feed,
        publisher=api.bus,
        clock=lambda: api.clock[0],
        auth=api.state.auth,
    )
    assert fresh.waits is not None
    assert await fresh.waits.restore() == 1
    assert (await api.row(gone)).state == "expired"
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(fresh)),
        base_url="http://api",
        headers=api.client.headers,
    ) as client:
        r = await client.post(f"/riders/{rider}/waits", json={"route_id": "R1", "stop_id": "S09"})
        assert r.json()["replaced"] == live
    assert (await api.row(live)).state == "cancelled"


async def test_without_a_broker_a_wait_is_503_and_nothing_is_stored(api: Api) -> None:
    rider = await api.rider()
    api.state.publisher = None
    r = await api.wait(rider)
    assert r.status_code == 503
    assert (await api.client.get(f"/riders/{rider}/waits")).json()["waits"] == []
