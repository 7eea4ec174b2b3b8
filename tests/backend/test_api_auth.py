"""Rider API access control: every endpoint as a stranger, another rider, the rider and
operators; enrolment rules, tokens, rate limits, body caps, 422 without echo."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from backend._api import ApiState, create_app
from backend._api_auth import ApiAuth
from backend._auth import (
    SCOPES,
    OperatorRegistry,
    Principal,
    RateLimiter,
    hash_token,
    new_operator_token,
    operator_entry,
    parse_operator,
    well_formed,
)
from backend._db import create_engine, migrate, rider_tokens, riders
from busbell import Topics, load_gtfs
from tests.factories.backend_world import write_gtfs
from tests.factories.mqtt import RecordingPublisher
from tests.factories.tasks import LIVE_TIMEOUT_S


@dataclass
class Env:
    client: httpx.AsyncClient
    state: ApiState
    ops: dict[str, str]  # all scopes
    reader: dict[str, str]  # riders:read only
    devices: dict[str, str]  # devices:write only
    broker: RecordingPublisher

    async def enrol(self, **body: Any) -> tuple[str, dict[str, str]]:
        r = await self.client.post("/riders", json=body)
        assert r.status_code == 201, r.text
        j = r.json()
        return j["rider_id"], {"Authorization": f"Bearer {j['access_token']}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def env(db_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    engine = create_engine(db_url)
    await migrate(engine)
    gtfs = tmp_path / "gtfs"
    write_gtfs(gtfs)
    tokens = {name: new_operator_token() for name in ("ops", "reader", "devices")}
    auth = ApiAuth(
        operators=OperatorRegistry(
            [
                operator_entry("ops", SCOPES, tokens["ops"]),
                operator_entry("reader", ["riders:read"], tokens["reader"]),
                operator_entry("devices", ["devices:write"], tokens["devices"]),
            ]
        ),
        anonymous=RateLimiter(1000.0, 1000),
        enrol=RateLimiter(1000.0, 1000),
    )
    broker = RecordingPublisher()
    state = ApiState(
        engine=engine, topics=Topics("t/auth/v1"), feed=load_gtfs(gtfs), publisher=broker, auth=auth
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(state)), base_url="http://api"
    ) as client:
        yield Env(
            client,
            state,
            bearer(tokens["ops"]),
            bearer(tokens["reader"]),
            bearer(tokens["devices"]),
            broker,
        )
    await engine.dispose()


WAIT = {"route_id": "R1", "stop_id": "S05"}


def endpoints(rider: str) -> list[tuple[str, str, Any, str]]:
    """(method, path, json body, scope an operator needs) of every rider endpoint."""
    return [
        ("GET", f"/riders/{rider}", None, "riders:read"),
        ("GET", f"/riders/{rider}/journeys", None, "riders:read"),
        ("GET", f"/riders/{rider}/charges", None, "riders:read"),
        ("GET", f"/riders/{rider}/waits", None, "riders:read"),
        ("GET", f"/riders/{rider}/waits/w-unknown", None, "riders:read"),
        ("POST", f"/riders/{rider}/waits", WAIT, "riders:write"),
        ("DELETE", f"/riders/{rider}/waits/w-unknown", None, "riders:write"),
        ("POST", f"/riders/{rider}/token", None, "riders:write"),
        ("PUT", f"/riders/{rider}/category", {"category": "youth"}, "riders:write"),
        ("POST", f"/riders/{rider}/revoke", None, "riders:write"),
    ]


async def call(env: Env, method: str, path: str, body: Any, headers: dict[str, str]) -> int:
    r = await env.client.request(method, path, json=body, headers=headers)
    return r.status_code


async def test_every_rider_endpoint_as_stranger_other_rider_rider_and_operators(
    env: Env,
) -> None:
    ann, ann_h = await env.enrol()
    bob, bob_h = await env.enrol()
    ghost = "r-000000000000000000000000"  # does not exist
    # the list is complete: every /riders/{rider_id}... operation the API documents is in it
    paths = (await env.client.get("/openapi.json")).json()["paths"]
    documented = {
        (method.upper(), path)
        for path, ops in paths.items()
        if path.startswith("/riders/{rider_id}")
        for method in ops
    }
    listed = {
        (m, p.replace(ann, "{rider_id}").replace("w-unknown", "{request_id}"))
        for m, p, _, _ in endpoints(ann)
    }
    assert documented == listed
    for method, path, body, scope in endpoints(ann):
        what = f"{method} {path}"
        # a stranger: no credentials, a malformed token, a well-formed unknown token
        assert await call(env, method, path, body, {}) == 401, what
        assert await call(env, method, path, body, bearer("nope")) == 401, what
        assert await call(env, method, path, body, bearer(new_operator_token())) == 401, what
        # another rider, on an existing and a missing rider: 403 either way (no oracle)
        assert await call(env, method, path, body, bob_h) == 403, what
        ghost_path = path.replace(ann, ghost)
        assert await call(env, method, ghost_path, body, bob_h) == 403, what
        # an operator without the scope
        for headers in (env.devices, env.reader if scope == "riders:write" else None):
            if headers is not None:
                assert await call(env, method, path, body, headers) == 403, what
        # an operator with it reaches any rider (a missing one is 404)
        assert await call(env, method, ghost_path, body, env.ops) == 404, what
    # the rider itself, and an operator with the scope, get through (404: no such wait)
    expect = {
        "GET /riders/{r}": 200,
        "GET /riders/{r}/journeys": 200,
        "GET /riders/{r}/charges": 200,
        "GET /riders/{r}/waits": 200,
        "GET /riders/{r}/waits/w-unknown": 404,
        "POST /riders/{r}/waits": 201,
        "DELETE /riders/{r}/waits/w-unknown": 404,
        "POST /riders/{r}/token": 200,
        "PUT /riders/{r}/category": 403,  # a rider never sets its own fare category
        "POST /riders/{r}/revoke": 200,
    }
    for method, path, body, _scope in endpoints(ann):
        key = f"{method} {path.replace(ann, '{r}')}"
        headers = ann_h
        if path.endswith("/token"):
            got = await env.client.post(path, headers=ann_h)
            assert got.status_code == 200
            ann_h = bearer(got.json()["access_token"])  # the old token is now revoked
            assert await call(env, "GET", f"/riders/{ann}", None, headers) == 401
            continue
        assert await call(env, method, path, body, headers) == expect[key], key
    for method, path, body, scope in endpoints(bob):
        key = f"{method} {path.replace(bob, '{r}')}"
        want = 200 if key == "PUT /riders/{r}/category" else expect[key]
        headers = env.reader if scope == "riders:read" else env.ops
        if key == "POST /riders/{r}/waits":
            want = 201
        assert await call(env, method, path, body, headers) == want, key
    assert (await env.client.get(f"/riders/{bob}", headers=env.ops)).json()["category"] == "youth"
    # revoking a bus: operators with devices:write only
    changed: list[int] = []
    env.state.on_denylist_changed = lambda: changed.append(1)
    async with env.state.engine.begin() as conn:
        from backend._keys import register_device
        from busbell import DeviceKey

        await register_device(conn, "bus-9", DeviceKey.from_seed(bytes(32)).public)
    for headers, want in (({}, 401), (ann_h, 403), (env.reader, 403)):
        r = await env.client.post("/devices/bus-9/revoke", headers=headers)
        assert r.status_code == want
    assert changed == []
    assert (
        await env.client.post("/devices/bus-404/revoke", headers=env.devices)
    ).status_code == 404
    r = await env.client.post("/devices/bus-9/revoke", headers=env.devices)
    assert r.status_code == 200
    assert r.json()["revoked"] is True
    assert changed == [1]


async def test_enrolment_rules(env: Env) -> None:
    # a stranger gets a random id, the adult category and a working token
    ids = set()
    for _ in range(5):
        r = await env.client.post("/riders", json={"kind": "fob"})
        assert r.status_code == 201
        body = r.json()
        assert re.fullmatch(r"r-[0-9a-f]{24}", body["rider_id"])
        assert body["category"] == "adult"
        assert well_formed(body["access_token"])
        ids.add(body["rider_id"])
    assert len(ids) == 5
    # only the hash of a token is stored
    async with env.state.engine.connect() as conn:
        stored = {r.token_hash for r in (await conn.execute(sa.select(rider_tokens))).all()}
    assert body["access_token"] not in stored
    assert hash_token(body["access_token"]) in stored
    # a stranger or a rider may choose neither the id nor the category
    _, ann_h = await env.enrol()
    for headers in ({}, ann_h):
        for bad in ({"rider_id": "alice"}, {"category": "child"}, {"category": "youth"}):
            r = await env.client.post("/riders", json=bad, headers=headers)
            assert r.status_code == 403, (bad, r.text)
    assert (await env.client.post("/riders", json={"category": "adult"})).status_code == 201
    # an operator with riders:read may not enrol; with riders:write it sets id and category
    r = await env.client.post("/riders", json={"rider_id": "alice"}, headers=env.reader)
    assert r.status_code == 403
    r = await env.client.post(
        "/riders", json={"rider_id": "alice", "category": "child"}, headers=env.ops
    )
    assert r.status_code == 201
    assert r.json()["category"] == "child"
    async with env.state.engine.connect() as conn:
        row = (await conn.execute(sa.select(riders).where(riders.c.rider_id == "alice"))).one()
    assert row.category == "child"
    # closed enrolment: operators only
    env.state.auth.open_enrolment = False
    assert (await env.client.post("/riders", json={})).status_code == 401
    assert (await env.client.post("/riders", json={}, headers=env.ops)).status_code == 201


async def test_a_revoked_rider_still_reads_its_history_and_bad_tokens_are_counted(
    env: Env,
) -> None:
    ann, ann_h = await env.enrol()
    assert (await env.client.post(f"/riders/{ann}/revoke", headers=ann_h)).status_code == 200
    r = await env.client.get(f"/riders/{ann}/journeys", headers=ann_h)
    assert r.status_code == 200
    with capture_logs() as logs:
        r = await env.client.get(f"/riders/{ann}", headers=bearer("bbr_" + "A" * 43))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert [e["reason"] for e in logs if e["event"] == "api_request_refused"] == ["bad_token"]
    # basic auth, an empty bearer: 401 as well
    for header in ("Basic dXNlcjpwdw==", "Bearer ", "Bearer " + "x" * 5000):
        r = await env.client.get(f"/riders/{ann}", headers={"Authorization": header})
        assert r.status_code == 401


async def test_rate_limits_per_rider_per_operator_and_per_address(env: Env) -> None:
    auth = env.state.auth
    now = [0.0]
    auth.monotonic = lambda: now[0]
    auth.riders = RateLimiter(1.0, 3)
    auth.anonymous = RateLimiter(1.0, 4)
    auth.enrol = RateLimiter(1.0, 2)
    ann, ann_h = await env.enrol()
    bob, bob_h = await env.enrol()
    assert (await env.client.post("/riders", json={})).status_code == 429  # enrol limit
    codes = [(await env.client.get(f"/riders/{ann}", headers=ann_h)).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    r = await env.client.get(f"/riders/{ann}", headers=ann_h)
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    # another rider from the same address is not affected
    assert (await env.client.get(f"/riders/{bob}", headers=bob_h)).status_code == 200
    # the bucket refills with time
    now[0] += 2.0
    assert (await env.client.get(f"/riders/{ann}", headers=ann_h)).status_code == 200
    # guessing tokens spends the address's bucket: 401, then 429
    codes = [
        (await env.client.get(f"/riders/{ann}", headers=bearer("bbr_" + "B" * 43))).status_code
        for _ in range(6)
    ]
    assert codes[:2] == [401, 401]
    assert codes[-1] == 429
    # public endpoints are limited per address, too
    assert (await env.client.get("/healthz")).status_code == 429
    now[0] += 10.0
    assert (await env.client.get("/healthz")).status_code == 200


async def test_bodies_are_capped_before_they_are_read_and_errors_do_not_echo(env: Env) -> None:
    huge = b'{"kind":"' + b"A" * (20 * 1024 * 1024) + b'"}'
    r = await env.client.post("/riders", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert len(r.content) < 200
    assert b"AAAA" not in r.content

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: streamed, cut at the cap
        yield b'{"kind":"'
        for _ in range(100):
            yield b"B" * 65536
        yield b'"}'

    r = await env.client.post(
        "/riders", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert len(r.content) < 200
    # under the cap but invalid: 422 with short errors, never the input
    r = await env.client.post("/riders", json={"kind": "C" * 15000, "x" * 100: 1})
    assert r.status_code == 422
    assert len(r.content) < 1000
    assert "CCCC" not in r.text
    # deeply nested JSON under the cap: refused before the JSON parser recurses
    deep = b"[" * 5000 + b"]" * 5000
    r = await env.client.post(
        f"/riders/{(await env.enrol())[0]}/waits",
        content=deep,
        headers={**env.ops, "content-type": "application/json"},
    )
    assert r.status_code == 400
    assert len(r.content) < 200


def test_operator_entries_and_principals() -> None:
    token = new_operator_token()
    entry = operator_entry("night-desk", ["riders:read"], token)
    op = parse_operator(entry)
    assert op.name == "night-desk"
    assert op.scopes == frozenset({"riders:read"})
    assert token not in entry
    reg = OperatorRegistry([entry])
    assert reg.find(token) == op
    assert reg.find(new_operator_token()) is None
    for bad in (
        "x",
        "a|riders:read|" + "0" * 63,
        "a|riders:fly|" + "0" * 64,
        "a||" + "0" * 64,
        "a b|riders:read|" + "0" * 64,
        "a|riders:read|" + "G" * 64,
    ):
        with pytest.raises(ValueError, match="operator"):
            parse_operator(bad)
    with pytest.raises(ValueError, match="twice"):
        OperatorRegistry([entry, entry])
    rider = Principal("rider", "r-1")
    assert rider.may("r-1", "riders:write")
    assert not rider.may("r-2", "riders:read")
    assert not rider.may("r-1", "devices:write")
    reader = Principal("operator", "x", frozenset({"riders:read"}))
    assert reader.may("anyone", "riders:read")
    assert not reader.may("anyone", "riders:write")


def test_rate_limiter_buckets() -> None:
    lim = RateLimiter(2.0, 3, max_keys=2)
    assert [lim.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.take("a", 0.0) == pytest.approx(0.5)
    assert lim.take("a", 0.5) == 0.0  # refilled one token
    assert lim.take("b", 0.5) == 0.0
    assert lim.take("c", 0.5) == 0.0  # over max_keys: the least recently used is dropped
    assert len(lim) == 2
    assert lim.take("a", 0.5) == 0.0  # forgotten: starts full again
    with pytest.raises(ValueError, match="rate_per_s"):
        RateLimiter(0.0, 1)


def test_api_settings_refuse_malformed_operators(tmp_path: Path) -> None:
    from backend.config import BackendConfig
    from busbell import ConfigError, load_config

    cfg = tmp_path / "b.toml"
    cfg.write_text('[api]\noperators = ["ops|riders:write|nothex"]\n')
    with pytest.raises(ConfigError, match="token hash"):
        load_config(BackendConfig, cfg)
    cfg.write_text("[api]\nmax_body_bytes = 10\n")
    with pytest.raises(ConfigError, match="max_body_bytes"):
        load_config(BackendConfig, cfg)


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


@pytest.mark.mosquitto
async def test_backend_run_black_box(tmp_path: Path, shared_broker: Any, topic_prefix: str) -> None:
    """`busbell backend run` (real uvicorn): no credentials -> 401, a 20 MB body -> 413."""
    from backend.cli import run_backend
    from tests.conftest import free_port

    port = free_port()
    ops = new_operator_token()
    cfg = tmp_path / "backend.toml"
    cfg.write_text(
        f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "b.db"}"\n'
        f'[mqtt]\nhost = "{shared_broker.host}"\nport = {shared_broker.port}\n'
        f'prefix = "{topic_prefix}"\n'
        f'[api]\nport = {port}\noperators = ["{operator_entry("ops", SCOPES, ops)}"]\n'
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_backend(cfg, stop=stop))
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=LIVE_TIMEOUT_S
        ) as client:
            async with asyncio.timeout(30):
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get("/healthz")).status_code == 200:
                            break
                    await asyncio.sleep(0.1)
            r = await client.post("/riders", json={"rider_id": "x"}, headers=bearer(ops))
            assert r.status_code == 201
            assert (await client.get("/riders/x/journeys")).status_code == 401
            assert (await client.post("/riders/x/revoke")).status_code == 401
            r = await client.post(
                "/riders",
                content=b"{" + b" " * (20 * 1024 * 1024) + b"}",
                headers={"content-type": "application/json"},
            )
            assert r.status_code == 413
            assert len(r.content) < 200
            assert (await client.get("/riders/x", headers=bearer(ops))).status_code == 200
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0


def test_api_token_command_prints_a_working_config_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from backend.cli import main
    from backend.config import BackendConfig
    from busbell import load_config

    assert main(["api-token", "night-desk", "--scopes", "riders:read,devices:write"]) == 0
    out = capsys.readouterr().out.splitlines()
    token = out[0].removeprefix("token: ")
    assert token.startswith("bbo_")
    cfg = tmp_path / "b.toml"
    cfg.write_text("\n".join(out[2:]) + "\n")
    api = load_config(BackendConfig, cfg).api
    op = OperatorRegistry(api.operators).find(token)
    assert op is not None
    assert op.name == "night-desk"
    assert op.scopes == frozenset({"riders:read", "devices:write"})
    assert token not in cfg.read_text()


async def test_a_422_raised_by_a_route_has_the_documented_shape(env: Env) -> None:
    r = await env.client.get("/riders/bad%7Cid", headers=env.ops)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert isinstance(detail, list)
    assert {"loc", "msg", "type"} <= set(detail[0])
    rider, _ = await env.enrol()
    r = await env.client.post(
        f"/riders/{rider}/waits", json={"route_id": "R1", "stop_id": "1/0"}, headers=env.ops
    )
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], list)
