"""Fleet keys, their sealed delivery to buses, rider bk schedules, the deny list."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncEngine

from backend._db import create_engine, fleet_keys, migrate, riders
from backend._denylist import (
    latest_denylist,
    publish_denylist,
    refresh_denylist,
    revoke_device,
    revoke_rider,
)
from backend._errors import UnknownDevice, UnknownRider
from backend._keys import (
    bus_kex_private,
    distribute_once,
    ed25519_to_x25519_public,
    ensure_fleet_keys,
    export_fleet_keys,
    import_devices,
    import_fleet_keys,
    key_bundle_for_bus,
    load_devices,
    open_key_bundle,
    register_device,
    rider_bk_schedule,
    run_key_distribution,
    seal_key_bundle,
)
from backend.config import BackendConfig, DatabaseSettings, KeysSettings
from busbell import (
    DEVICES_HEADER,
    FLEET_HEADER,
    ContractError,
    DeviceKey,
    KeyFileError,
    TokenVerifier,
    Topics,
    canonical_bytes,
    day_of,
    derive_rider_keys,
    encode_payload,
    interval_of,
    read_fleet_keys,
    rid_for_interval,
    sign_denylist,
    write_rows,
)
from busbell._mqtt import MqttSession, MqttSettings
from edge._keyring import Denylist

BACKEND_KEY = DeviceKey.from_seed(b"\x42" * 32)

NOW = 1_760_000_000.0  # day 20370
TODAY = day_of(NOW)
TOKEN_KEY = bytes(range(16))


async def enroll(engine: AsyncEngine, rider_id: str, token_key: bytes = TOKEN_KEY) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            riders.insert().values(
                rider_id=rider_id, token_key=token_key.hex(), status="active", enrolled_at=NOW
            )
        )


def raw_x25519_public(priv: X25519PrivateKey) -> bytes:
    return priv.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


# -- key agreement and sealing -------------------------------------------------------------


@pytest.mark.parametrize(
    "seed", [bytes(32), bytes(range(32)), b"\xff" * 32, b"busbell" * 4 + b"1234"]
)
def test_ed25519_to_x25519_matches_the_derived_private_key(seed: bytes) -> None:
    dev = DeviceKey.from_seed(seed)
    assert ed25519_to_x25519_public(dev.public.raw) == raw_x25519_public(bus_kex_private(dev))


def test_ed25519_to_x25519_rejects_bad_keys() -> None:
    with pytest.raises(ContractError):
        ed25519_to_x25519_public(b"\x00" * 31)
    with pytest.raises(ContractError):
        ed25519_to_x25519_public((1).to_bytes(32, "little"))  # y = 1: the identity


def test_seal_and_open_round_trip_and_tamper_detection() -> None:
    dev = DeviceKey.from_seed(bytes(range(32)))
    keys = {TODAY: b"\x01" * 32, TODAY + 1: b"\x02" * 32}
    msg = seal_key_bundle("B1", ed25519_to_x25519_public(dev.public.raw), keys, issued_at=NOW)
    assert set(msg) == {"v", "bus_id", "alg", "epk", "issued_at", "days", "nonce", "ct"}
    assert msg["days"] == [TODAY, TODAY + 1]
    wire = json.loads(json.dumps(msg))
    assert open_key_bundle(wire, bus_kex_private(dev)) == keys
    other = DeviceKey.generate()
    with pytest.raises(ContractError, match="does not decrypt"):
        open_key_bundle(wire, bus_kex_private(other))
    for field, value in (("bus_id", "B2"), ("issued_at", NOW + 1), ("epk", "00" * 32)):
        with pytest.raises(ContractError):
            open_key_bundle(dict(wire, **{field: value}), bus_kex_private(dev))
    ct = bytearray(base64.b64decode(wire["ct"]))
    ct[0] ^= 1
    with pytest.raises(ContractError):
        open_key_bundle(dict(wire, ct=base64.b64encode(bytes(ct)).decode()), bus_kex_private(dev))
    with pytest.raises(ContractError, match="unsupported"):
        open_key_bundle(dict(wire, alg="ROT13"), bus_kex_private(dev))
    with pytest.raises(ContractError, match="malformed"):
        open_key_bundle({"v": 1, "alg": wire["alg"]}, bus_kex_private(dev))


def test_sealed_bundle_vector() -> None:
    """The vector published in docs/keys.md (fixed ephemeral key and nonce)."""
    dev = DeviceKey.from_seed(bytes(range(32)))
    eph = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    msg = seal_key_bundle(
        "B1",
        ed25519_to_x25519_public(dev.public.raw),
        {20370: bytes(range(100, 132))},
        issued_at=1760000000.0,
        ephemeral=eph,
        nonce=bytes(range(12)),
    )
    assert msg["epk"] == raw_x25519_public(eph).hex()
    assert ed25519_to_x25519_public(dev.public.raw).hex() == VECTOR_RECIPIENT
    assert msg["ct"] == VECTOR_CT
    assert open_key_bundle(msg, bus_kex_private(dev)) == {20370: bytes(range(100, 132))}


VECTOR_RECIPIENT = "4701d08488451f545a409fb58ae3e58581ca40ac3f7f114698cd71deac73ca01"
VECTOR_CT = (
    "3WhgAWSrRTJK5K4Qewqz6ZmIKmsCTv0DfhyaSk1b6cvPzWs2XPvWER8pirvtBeCNsBVe91c57tBdAJs5GTtiaiN1"
    "xaMDVzrVF3eM0fRM3wYv/8Roa2YxIGaOPYjj3AekGJkD5ua1jOE40eJ8wlnI6wulrpW5o2S2ltwsN1FiSThLbX0GlQ=="
)


# -- fleet keys in the ledger --------------------------------------------------------------


async def test_ensure_import_export_fleet_keys(engine: AsyncEngine, tmp_path: Path) -> None:
    added = await ensure_fleet_keys(engine, now=NOW, days_ahead=3)
    assert added == [TODAY, TODAY + 1, TODAY + 2, TODAY + 3]
    assert await ensure_fleet_keys(engine, now=NOW, days_ahead=3) == []
    assert await ensure_fleet_keys(engine, now=NOW + 86400, days_ahead=3) == [TODAY + 4]
    out = tmp_path / "FLEET.csv"
    assert await export_fleet_keys(engine, out) == 5
    exported = read_fleet_keys(out)
    assert sorted(exported) == list(range(TODAY, TODAY + 5))
    # Re-importing the same keys is a no-op; new days are added; a changed key is refused.
    assert await import_fleet_keys(engine, out) == 0
    write_rows(
        out,
        FLEET_HEADER,
        [(str(d), k.hex()) for d, k in exported.items()] + [(str(TODAY - 1), "ab" * 32)],
    )
    assert await import_fleet_keys(engine, out) == 1
    write_rows(out, FLEET_HEADER, [(str(TODAY), "cd" * 32)])
    with pytest.raises(KeyFileError, match="different key"):
        await import_fleet_keys(engine, out)
    assert await export_fleet_keys(engine, out, first_day=TODAY, last_day=TODAY + 1) == 2


async def test_device_registry_and_bundle_for_bus(engine: AsyncEngine, tmp_path: Path) -> None:
    devs = {f"B{i}": DeviceKey.from_seed(bytes([i]) * 32) for i in range(3)}
    csv = tmp_path / "DEVICES.csv"
    write_rows(csv, DEVICES_HEADER, [(b, k.public.hex) for b, k in devs.items()])
    assert await import_devices(engine, csv) == 3
    assert await import_devices(engine, csv) == 0
    async with engine.begin() as conn:
        assert await register_device(conn, "B0", devs["B1"].public) is True  # key change
        assert await register_device(conn, "B0", devs["B0"].public) is True
        with pytest.raises(ContractError):
            await register_device(conn, "bad/id", devs["B0"].public)
        with pytest.raises(ContractError):
            await register_device(conn, "B9", devs["B0"].public, kex_public_key=b"x")
        loaded = await load_devices(conn)
    assert {b: d.public.hex for b, d in loaded.items()} == {
        b: k.public.hex for b, k in devs.items()
    }
    await ensure_fleet_keys(engine, now=NOW, days_ahead=2)
    bundle = await key_bundle_for_bus(engine, "B1", now=NOW, days_ahead=2)
    keys = open_key_bundle(bundle, bus_kex_private(devs["B1"]))
    assert sorted(keys) == [TODAY, TODAY + 1, TODAY + 2]  # yesterday has no key here
    with pytest.raises(UnknownDevice):
        await key_bundle_for_bus(engine, "B404", now=NOW)
    # A separately registered X25519 key takes precedence.
    kex = X25519PrivateKey.generate()
    async with engine.begin() as conn:
        await register_device(conn, "B2", devs["B2"].public, kex_public_key=raw_x25519_public(kex))
    assert open_key_bundle(await key_bundle_for_bus(engine, "B2", now=NOW), kex)
    await revoke_device(engine, "B2", now=NOW)
    with pytest.raises(UnknownDevice):
        await key_bundle_for_bus(engine, "B2", now=NOW)


# -- riders ---------------------------------------------------------------------------------


async def test_rider_bk_schedule_is_accepted_by_buses(engine: AsyncEngine) -> None:
    await ensure_fleet_keys(engine, now=NOW, days_ahead=2)
    await enroll(engine, "alice")
    sched = await rider_bk_schedule(engine, "alice", NOW, 24, now=NOW)
    # 24 h from mid-interval touch 145 intervals of 600 s.
    assert [i for i, _, _ in sched] == list(range(interval_of(NOW), interval_of(NOW) + 145))
    aligned = await rider_bk_schedule(engine, "alice", interval_of(NOW) * 600, 24, now=NOW)
    assert len(aligned) == 144
    async with engine.connect() as conn:
        fk = {
            int(d): bytes.fromhex(k)
            for d, k in await conn.execute(sa.select(fleet_keys.c.day, fleet_keys.c.fleet_key))
        }
    verifier = TokenVerifier(fk)
    rk = derive_rider_keys(TOKEN_KEY)
    for interval, day, bk in sched[::17]:
        t = interval * 600 + 5.0
        assert day == day_of(t)
        payload = encode_payload(rk, t, bk=bk)
        assert payload == encode_payload(rk, t, fleet_key=fk[day])
        assert verifier.verify(payload, t).interval == interval
    # Bounded by the horizon and by the fleet keys that exist.
    far = await rider_bk_schedule(engine, "alice", NOW, 24 * 30, now=NOW, max_days_ahead=7)
    assert day_of(far[-1][0] * 600) == TODAY + 2
    assert await rider_bk_schedule(engine, "alice", NOW, 0, now=NOW) == []
    with pytest.raises(UnknownRider):
        await rider_bk_schedule(engine, "bob", NOW, 1, now=NOW)
    await revoke_rider(engine, "alice", now=NOW)
    assert await rider_bk_schedule(engine, "alice", NOW, 24, now=NOW) == []


# -- deny list ------------------------------------------------------------------------------


async def test_denylist_versions(engine: AsyncEngine) -> None:
    await enroll(engine, "alice")
    await enroll(engine, "carol", bytes(16))
    async with engine.begin() as conn:
        await register_device(conn, "B1", DeviceKey.from_seed(bytes(32)).public)
    first, new = await refresh_denylist(engine, now=NOW)
    assert new
    assert first["version"] == 1
    assert first["rids"] == []
    assert first["devices"] == []
    assert (await refresh_denylist(engine, now=NOW + 60))[1] is False
    v2 = await revoke_rider(engine, "alice", now=NOW, denylist_hours=2)
    assert v2["version"] == 2
    rk = derive_rider_keys(TOKEN_KEY).rid_key
    i0 = interval_of(NOW)
    assert v2["rids"] == sorted(rid_for_interval(rk, i).hex() for i in range(i0, i0 + 13))
    v3 = await revoke_device(engine, "B1", now=NOW + 1)
    assert v3["version"] == 3
    assert v3["devices"] == ["B1"]
    from tests.factories.asyncapi import check

    for payload in (first, v2, v3):
        check("Denylist", json.loads(canonical_bytes(sign_denylist(payload, BACKEND_KEY))))
    bus = Denylist("B1", BACKEND_KEY.public)  # what the bus does with the real payload
    assert bus.apply(canonical_bytes(sign_denylist(v2, BACKEND_KEY)))
    assert bus.denies(rid_for_interval(rk, i0))
    assert bus.apply(canonical_bytes(sign_denylist(v3, BACKEND_KEY)))
    assert bus.bus_revoked
    assert (await latest_denylist(engine)) == v3
    # Later, only rids whose bks may still be valid remain; after the horizon none.
    later, new = await refresh_denylist(engine, now=NOW + 6 * 86400)
    assert new
    assert later["rids"]
    gone, _ = await refresh_denylist(engine, now=NOW + 8 * 86400)
    assert gone["rids"] == []
    assert gone["devices"] == ["B1"]
    with pytest.raises(UnknownRider):
        await revoke_rider(engine, "nobody")
    with pytest.raises(UnknownDevice):
        await revoke_device(engine, "B404")


# -- over MQTT --------------------------------------------------------------------------------


async def _retained(settings: MqttSettings, topic: str, client_id: str) -> dict[str, Any] | None:
    async with MqttSession(settings, client_id, clean_start=True) as s:
        await s.subscribe([topic])
        try:
            async with asyncio.timeout(2):
                async for m in s.messages():
                    return dict(json.loads(m.payload)) if m.payload else None
        except TimeoutError:
            return None
    return None


@pytest.mark.mosquitto
async def test_distribution_over_mqtt(
    tmp_path: Path, shared_broker: Any, topic_prefix: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'l.db'}"
    settings = MqttSettings(host=shared_broker.host, port=shared_broker.port, prefix=topic_prefix)
    topics = Topics(topic_prefix)
    engine = create_engine(url)
    await migrate(engine)
    bus = DeviceKey.from_seed(b"\x07" * 32)
    async with engine.begin() as conn:
        await register_device(conn, "B7", bus.public)
        await register_device(conn, "B8", DeviceKey.from_seed(b"\x08" * 32).public)
    async with MqttSession(settings, "t-keys-pub", clean_start=True) as s:
        await distribute_once(
            engine, s.publish, topics, KeysSettings(days_ahead=3), key=BACKEND_KEY, now=NOW
        )
        payload = await revoke_device(engine, "B8", now=NOW)
        await publish_denylist(s.publish, topics, payload, BACKEND_KEY)
        await distribute_once(
            engine, s.publish, topics, KeysSettings(days_ahead=3), key=BACKEND_KEY, now=NOW
        )
    await engine.dispose()
    # A bus connecting later gets its retained bundle and opens it with its device key.
    bundle = await _retained(settings, topics.fleet_keys("B7"), "t-keys-bus7")
    assert bundle is not None
    assert sorted(open_key_bundle(bundle, bus_kex_private(bus))) == list(range(TODAY, TODAY + 4))
    assert await _retained(settings, topics.fleet_keys("B8"), "t-keys-bus8") is None
    deny = await _retained(settings, topics.denylist(), "t-keys-deny")
    assert deny is not None
    assert deny["devices"] == ["B8"]
    assert deny["version"] == 2
    assert Denylist("B7", BACKEND_KEY.public).apply(canonical_bytes(deny))


@pytest.mark.mosquitto
async def test_run_key_distribution_until_stopped(
    tmp_path: Path, shared_broker: Any, topic_prefix: str
) -> None:
    fleet_csv = tmp_path / "FLEET.csv"
    write_rows(fleet_csv, FLEET_HEADER, [(str(TODAY), "11" * 32)])
    url = f"sqlite+aiosqlite:///{tmp_path / 'l.db'}"
    cfg = BackendConfig(
        database=DatabaseSettings(url=url),
        mqtt=MqttSettings(host=shared_broker.host, port=shared_broker.port, prefix=topic_prefix),
        keys=KeysSettings(fleet_keys_file=fleet_csv, days_ahead=1, publish_interval_s=0.2),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_key_distribution(cfg, stop=stop))
    settings = cfg.mqtt
    deny = None
    for _ in range(50):
        deny = await _retained(settings, Topics(topic_prefix).denylist(), "t-keys-run")
        if deny is not None:
            break
    stop.set()
    await asyncio.wait_for(task, 10)
    assert deny is not None
    assert deny["version"] >= 1
    # signed with the key the backend made beside its database on first start
    key = DeviceKey.load(tmp_path / "busbell-backend-signing.pem")
    assert Denylist("B1", key.public).apply(canonical_bytes(deny))
    engine = create_engine(url)
    async with engine.connect() as conn:
        days = {
            int(d): k
            for d, k in await conn.execute(sa.select(fleet_keys.c.day, fleet_keys.c.fleet_key))
        }
    await engine.dispose()
    assert days[TODAY] == "11" * 32  # imported from FLEET.csv
    assert day_of(time.time()) in days  # generated for the real today


def test_signing_key_default_is_beside_the_sqlite_file_or_in_the_state_directory(
    tmp_path: Path,
) -> None:
    from backend._denylist import SIGNING_KEY_NAME, signing_key_path, state_dir

    def cfg(url: str, key: Path | None = None) -> BackendConfig:
        return BackendConfig(database=DatabaseSettings(url=url), keys=KeysSettings(signing_key=key))

    env = {"STATE_DIRECTORY": "/var/lib/busbell:/var/lib/other", "HOME": "/home/x"}
    sqlite = f"sqlite+aiosqlite:///{tmp_path / 'db' / 'ledger.db'}"
    assert signing_key_path(cfg(sqlite), env) == tmp_path / "db" / SIGNING_KEY_NAME
    pg = "postgresql+asyncpg://postgres@127.0.0.1:5432/busbell"
    assert signing_key_path(cfg(pg), env) == Path("/var/lib/busbell") / SIGNING_KEY_NAME
    memory = "sqlite+aiosqlite:///:memory:"
    assert signing_key_path(cfg(memory), env) == Path("/var/lib/busbell") / SIGNING_KEY_NAME
    assert signing_key_path(cfg(pg, tmp_path / "k.pem"), env) == tmp_path / "k.pem"
    assert state_dir({"XDG_STATE_HOME": "/s", "HOME": "/home/x"}) == Path("/s/busbell")
    # a relative XDG_STATE_HOME is invalid by the spec: ignored
    assert state_dir({"XDG_STATE_HOME": "s", "HOME": "/home/x"}) == Path(
        "/home/x/.local/state/busbell"
    )
    assert state_dir({"HOME": "/home/x"}) == Path("/home/x/.local/state/busbell")
    for e in ({}, {"HOME": "/h"}, {"XDG_STATE_HOME": "/x"}):
        assert not str(signing_key_path(cfg(pg), e)).startswith(SIGNING_KEY_NAME)


def test_workers_starting_at_once_share_one_signing_key(tmp_path: Path) -> None:
    import concurrent.futures
    import os
    import stat

    from backend._denylist import load_signing_key

    path = tmp_path / "state" / "busbell-backend-signing.pem"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: load_signing_key(path).public.hex, range(16)))
    assert len(set(keys)) == 1
    assert DeviceKey.load(path).public.hex == keys[0]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


@pytest.mark.postgres
async def test_registrars_at_once_do_not_fail_on_each_others_rows(
    pg_url: str, tmp_path: Path
) -> None:
    # `backend run` starts ingest and key distribution together, both importing
    # DEVICES.csv, as do several ingest workers: on PostgreSQL a select-then-insert let
    # two of them insert the same bus and one died of the unique violation.
    path = tmp_path / "DEVICES.csv"
    keys = {f"bus-{i:03d}": DeviceKey.generate().public for i in range(40)}
    write_rows(path, DEVICES_HEADER, [(b, k.hex) for b, k in keys.items()])
    engines = [create_engine(pg_url) for _ in range(6)]
    try:
        await migrate(engines[0])
        changed = await asyncio.gather(*(import_devices(e, path) for e in engines))
        assert sum(changed) == len(keys)  # each bus added once, by one of them
        async with engines[0].connect() as conn:
            loaded = await load_devices(conn)
        assert {b: d.public.hex for b, d in loaded.items()} == {b: k.hex for b, k in keys.items()}
        # a changed key is still a change, an unchanged one is not
        new = DeviceKey.generate().public
        async with engines[1].begin() as conn:
            assert await register_device(conn, "bus-000", new)
            assert not await register_device(conn, "bus-000", new)
    finally:
        for e in engines:
            await e.dispose()
