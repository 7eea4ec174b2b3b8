"""Device registry, fleet day keys, their confidential delivery to buses, rider ``bk``s.

* Devices: :func:`import_devices` (DEVICES.csv), :func:`register_device`,
  :func:`load_devices` (what ingest verifies signatures against).
* Fleet keys: one random 32-byte key per UTC day, generated ``days_ahead`` days ahead
  (:func:`ensure_fleet_keys`), stored in ``fleet_keys``, imported from and exported to
  FLEET.csv.
* Delivery: each bus gets its coming days' keys on ``buses/{bus}/keys`` (retained,
  QoS 1), encrypted to that bus (:func:`seal_key_bundle`, :func:`open_key_bundle`);
  see ``docs/keys.md`` for the exact construction.
* Riders: :func:`rider_bk_schedule` gives a rider's app or fob its ``bk`` per interval;
  revoked riders get none.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from backend._db import devices, fleet_keys, insert_ignore, riders
from backend._errors import UnknownDevice, UnknownRider
from backend.config import BackendConfig, KeysSettings
from busbell import (
    FLEET_HEADER,
    INTERVAL_S,
    ContractError,
    DeviceKey,
    KeyFileError,
    PublicKey,
    StoreError,
    Topics,
    UplinkError,
    canonical_bytes,
    day_of,
    derive_bk,
    derive_rider_keys,
    get_logger,
    interval_of,
    read_devices,
    read_fleet_keys,
    rid_for_interval,
    write_rows,
)
from busbell._keybundle import (
    BUNDLE_ALG,
    bus_kex_private,
    ed25519_to_x25519_public,
    open_key_bundle,
    seal_key_bundle,
)

__all__ = [
    "BUNDLE_ALG",
    "DeviceInfo",
    "bus_kex_private",
    "distribute_once",
    "ed25519_to_x25519_public",
    "ensure_fleet_keys",
    "export_fleet_keys",
    "import_devices",
    "import_fleet_keys",
    "key_bundle_for_bus",
    "load_devices",
    "load_fleet_keys",
    "open_key_bundle",
    "publish_key_bundles",
    "register_device",
    "rider_bk_schedule",
    "run_key_distribution",
    "seal_key_bundle",
]


def _log() -> Any:
    # Looked up per use: busbell.get_logger binds at call time, so a module-level
    # logger would miss configure_logging() and structlog.testing.capture_logs().
    return get_logger("backend.keys")


DAY_S = 86400


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A registered bus as ingest sees it.

    Attributes:
        public: its Ed25519 public key.
        revoked: whether the device was revoked (its events are rejected).
    """

    public: PublicKey
    revoked: bool = False


# --- devices -------------------------------------------------------------------------


async def load_devices(conn: AsyncConnection) -> dict[str, DeviceInfo]:
    """Every registered device, revoked ones flagged."""
    rows = await conn.execute(
        sa.select(devices.c.bus_id, devices.c.public_key, devices.c.revoked_at)
    )
    out: dict[str, DeviceInfo] = {}
    for bus_id, public_key, revoked_at in rows:
        try:
            out[bus_id] = DeviceInfo(PublicKey(bytes.fromhex(public_key)), revoked_at is not None)
        except (ValueError, KeyFileError):
            _log().error("device_key_invalid", bus_id=bus_id)
    return out


async def register_device(
    conn: AsyncConnection,
    bus_id: str,
    public_key: PublicKey,
    *,
    kex_public_key: bytes | None = None,
    now: float | None = None,
) -> bool:
    """Register a bus (or change its key; a revoked device stays revoked).

    Args:
        conn: a connection inside a transaction.
        bus_id: the bus id (a topic level).
        public_key: its Ed25519 device key.
        kex_public_key: an X25519 key to deliver fleet keys to; ``None`` to use the one
            derived from ``public_key`` (see ``docs/keys.md``).
        now: registration time (UNIX seconds).

    Returns:
        Whether anything changed.

    Raises:
        ContractError: when ``bus_id`` cannot be a topic level.
    """
    from busbell import check_topic_id

    check_topic_id(bus_id, "bus_id")
    if kex_public_key is not None and len(kex_public_key) != 32:
        raise ContractError("an X25519 public key is 32 bytes", field="kex_public_key")
    kex = kex_public_key.hex() if kex_public_key is not None else None
    # Insert unless present, then compare: two registrars at once (``backend run``'s ingest
    # and key distribution both import DEVICES.csv at start, as do several workers) must
    # not fail on each other's row, as a select-then-insert did on PostgreSQL.
    inserted = await conn.execute(
        insert_ignore(devices, conn.dialect.name).values(
            bus_id=bus_id,
            public_key=public_key.hex,
            kex_public_key=kex,
            registered_at=time.time() if now is None else now,
            revoked_at=None,
        )
    )
    if inserted.rowcount == 1:
        _log().info("device_registered", bus_id=bus_id)
        return True
    row = (
        await conn.execute(
            sa.select(devices.c.public_key, devices.c.kex_public_key).where(
                devices.c.bus_id == bus_id
            )
        )
    ).one()
    if row.public_key == public_key.hex and row.kex_public_key == kex:
        return False
    await conn.execute(
        devices.update()
        .where(devices.c.bus_id == bus_id)
        .values(public_key=public_key.hex, kex_public_key=kex)
    )
    _log().warning("device_key_changed", bus_id=bus_id)
    return True


async def import_devices(engine: AsyncEngine, path: str | os.PathLike[str]) -> int:
    """Import DEVICES.csv (``bus_id,public_key``) into the registry.

    Returns:
        How many devices were added or changed.

    Raises:
        KeyFileError: when the file is unreadable or invalid.
    """
    table = read_devices(path)
    changed = 0
    async with engine.begin() as conn:
        for bus_id, key in sorted(table.items()):
            changed += await register_device(conn, bus_id, key)
    _log().info("devices_imported", path=str(path), devices=len(table), changed=changed)
    return changed


async def _kex_public(conn: AsyncConnection, bus_id: str) -> bytes:
    row = (
        await conn.execute(
            sa.select(devices.c.public_key, devices.c.kex_public_key, devices.c.revoked_at).where(
                devices.c.bus_id == bus_id
            )
        )
    ).first()
    if row is None or row.revoked_at is not None:
        raise UnknownDevice(bus_id)
    if row.kex_public_key:
        return bytes.fromhex(row.kex_public_key)
    return ed25519_to_x25519_public(bytes.fromhex(row.public_key))


# --- fleet keys ------------------------------------------------------------------------


async def load_fleet_keys(
    conn: AsyncConnection, first_day: int | None = None, last_day: int | None = None
) -> dict[int, bytes]:
    """Fleet keys by UTC day, optionally only ``first_day..last_day`` (inclusive)."""
    q = sa.select(fleet_keys.c.day, fleet_keys.c.fleet_key)
    if first_day is not None:
        q = q.where(fleet_keys.c.day >= first_day)
    if last_day is not None:
        q = q.where(fleet_keys.c.day <= last_day)
    return {int(d): bytes.fromhex(k) for d, k in await conn.execute(q.order_by(fleet_keys.c.day))}


async def ensure_fleet_keys(
    engine: AsyncEngine, *, now: float | None = None, days_ahead: int = 7
) -> list[int]:
    """Generate the missing fleet keys from today to ``days_ahead`` days ahead.

    Keys are never replaced: a key already stored (generated or imported) wins, also
    when two backends race (``ON CONFLICT DO NOTHING``).

    Returns:
        The days for which this call stored a new key.
    """
    t = time.time() if now is None else now
    today = day_of(t)
    wanted = range(today, today + days_ahead + 1)
    added: list[int] = []
    async with engine.begin() as conn:
        have = await load_fleet_keys(conn, today, today + days_ahead)
        stmt = insert_ignore(fleet_keys, conn.dialect.name)
        for day in wanted:
            if day in have:
                continue
            res = await conn.execute(
                stmt.values(day=day, fleet_key=secrets.token_bytes(32).hex(), created_at=t)
            )
            if res.rowcount:
                added.append(day)
    if added:
        _log().info("fleet_keys_generated", days=added)
    return added


async def import_fleet_keys(engine: AsyncEngine, path: str | os.PathLike[str]) -> int:
    """Import FLEET.csv (``day,fleet_key``); keys already stored are kept.

    Returns:
        How many days were added.

    Raises:
        KeyFileError: when the file is invalid, or a day in it has a different key in
            the database (a key is never silently replaced).
    """
    table = read_fleet_keys(path)
    added = 0
    async with engine.begin() as conn:
        have = await load_fleet_keys(conn)
        for day, key in sorted(table.items()):
            if day in have:
                if have[day] != key:
                    raise KeyFileError(f"{path}: day {day} has a different key in the database")
                continue
            await conn.execute(
                fleet_keys.insert().values(day=day, fleet_key=key.hex(), created_at=time.time())
            )
            added += 1
    _log().info("fleet_keys_imported", path=str(path), days=len(table), added=added)
    return added


async def export_fleet_keys(
    engine: AsyncEngine,
    path: str | os.PathLike[str],
    *,
    first_day: int | None = None,
    last_day: int | None = None,
) -> int:
    """Write FLEET.csv with the stored keys (optionally a day range); returns rows."""
    async with engine.connect() as conn:
        keys = await load_fleet_keys(conn, first_day, last_day)
    write_rows(path, FLEET_HEADER, [(str(d), k.hex()) for d, k in sorted(keys.items())])
    return len(keys)


# --- confidential delivery --------------------------------------------------------------


async def key_bundle_for_bus(
    engine: AsyncEngine, bus_id: str, *, now: float | None = None, days_ahead: int = 7
) -> dict[str, Any]:
    """The sealed bundle for one bus: the keys of today-1 .. today+days_ahead.

    Yesterday's key is included so a bus can still check tokens just after midnight.

    Raises:
        UnknownDevice: when the bus is not registered or is revoked.
    """
    t = time.time() if now is None else now
    today = day_of(t)
    async with engine.connect() as conn:
        recipient = await _kex_public(conn, bus_id)
        keys = await load_fleet_keys(conn, today - 1, today + days_ahead)
    return seal_key_bundle(bus_id, recipient, keys, issued_at=t)


async def publish_key_bundles(
    engine: AsyncEngine,
    publish: Any,
    topics: Topics,
    *,
    now: float | None = None,
    days_ahead: int = 7,
) -> int:
    """Seal and publish (retained, QoS 1) every active bus's key bundle.

    Args:
        engine: the ledger.
        publish: ``async (topic, payload, *, qos, retain)``, e.g. ``MqttSession.publish``.
        topics: topic names.
        now: UNIX time.
        days_ahead: days of keys after today.

    Returns:
        How many buses got a bundle. A revoked bus's retained bundle is cleared.
    """
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(devices.c.bus_id, devices.c.revoked_at))).all()
    n = 0
    for bus_id, revoked_at in rows:
        topic = topics.fleet_keys(bus_id)
        if revoked_at is not None:
            await publish(topic, b"", qos=1, retain=True)
            continue
        bundle = await key_bundle_for_bus(engine, bus_id, now=now, days_ahead=days_ahead)
        await publish(topic, canonical_bytes(bundle), qos=1, retain=True)
        n += 1
    _log().info("fleet_keys_published", buses=n)
    return n


# --- riders ----------------------------------------------------------------------------


async def rider_bk_schedule(
    engine: AsyncEngine,
    rider_id: str,
    from_t: float,
    hours: float,
    *,
    max_days_ahead: int = 7,
    now: float | None = None,
) -> list[tuple[int, int, bytes]]:
    """A rider's ``bk`` for each interval from ``from_t`` for ``hours``.

    The app or fob puts ``btag = HMAC-SHA256(bk, payload[0:15])[:4]`` in its
    advertisements; it never sees a fleet key. Intervals whose day has no fleet key
    yet, or that lie more than ``max_days_ahead`` days after ``now``, are left out.

    Args:
        engine: the ledger.
        rider_id: the rider.
        from_t: UNIX time of the first interval wanted.
        hours: how many hours of intervals (a week is 1008 intervals, 16 KB of bk).
        max_days_ahead: the horizon (``[keys] rider_days_ahead``).
        now: the current UNIX time.

    Returns:
        ``[(interval, day, bk)]`` in interval order; empty for a revoked rider.

    Raises:
        UnknownRider: when the rider is not enrolled.
    """
    t_now = time.time() if now is None else now
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(riders.c.token_key, riders.c.status).where(riders.c.rider_id == rider_id)
            )
        ).first()
        if row is None:
            raise UnknownRider(rider_id)
        if row.status != "active" or hours <= 0:
            return []
        first = interval_of(from_t)
        last = min(
            interval_of(from_t + hours * 3600 - 1e-6),
            interval_of(t_now + max_days_ahead * DAY_S),
        )
        if last < first:
            return []
        keys = await load_fleet_keys(conn, day_of(first * INTERVAL_S), day_of(last * INTERVAL_S))
    rk = derive_rider_keys(bytes.fromhex(row.token_key))
    out: list[tuple[int, int, bytes]] = []
    for i in range(first, last + 1):
        day = day_of(i * INTERVAL_S)
        fk = keys.get(day)
        if fk is None:
            continue
        out.append((i, day, derive_bk(fk, rid_for_interval(rk.rid_key, i))))
    return out


# --- the distribution loop ---------------------------------------------------------------


async def distribute_once(
    engine: AsyncEngine,
    publish: Any,
    topics: Topics,
    settings: KeysSettings,
    *,
    key: DeviceKey,
    now: float | None = None,
) -> None:
    """Rotate (generate missing days), publish every bus's bundle and the deny list.

    The deny list is rebuilt first (a new version when revoked riders or devices
    changed, or when half of its window has passed) and published signed with ``key``.
    """
    from backend._denylist import publish_denylist, refresh_denylist

    t = time.time() if now is None else now
    await ensure_fleet_keys(engine, now=t, days_ahead=settings.days_ahead)
    await publish_key_bundles(engine, publish, topics, now=t, days_ahead=settings.days_ahead)
    payload, _new = await refresh_denylist(
        engine,
        now=t,
        rider_days_ahead=settings.rider_days_ahead,
        denylist_hours=settings.denylist_hours,
    )
    await publish_denylist(publish, topics, payload, key)


async def run_key_distribution(
    config: BackendConfig,
    *,
    stop: asyncio.Event | None = None,
    changed: asyncio.Event | None = None,
    engine: AsyncEngine | None = None,
) -> None:
    """Keep fleet keys rotated and delivered, and the deny list published, until ``stop``.

    Imports ``[keys] fleet_keys_file`` and ``[files] devices`` first when set; then
    every ``[keys] publish_interval_s``, and at once whenever ``changed`` is set (a
    revocation), runs :func:`distribute_once`. MQTT failures are retried with backoff.

    Raises:
        StoreError: when the database cannot be reached at start.
        KeyFileError: when a configured key file is invalid.
    """
    from backend._db import engine_for, migrate
    from backend._denylist import load_signing_key, signing_key_path
    from busbell._mqtt import MqttSession, ReconnectLoop, SessionChange

    stop = stop or asyncio.Event()
    changed = changed or asyncio.Event()
    db = config.database
    own_engine = engine is None
    engine = engine_for(db) if engine is None else engine
    try:
        key = load_signing_key(signing_key_path(config))
        if own_engine and db.migrate_on_start:
            await migrate(engine)
        if config.keys.fleet_keys_file is not None:
            await import_fleet_keys(engine, config.keys.fleet_keys_file)
        if config.files.devices is not None:
            await import_devices(engine, config.files.devices)
        topics = Topics(config.mqtt.prefix)
        client_id = (config.mqtt.client_id or "busbell-backend") + "-keys"

        def failed(change: SessionChange) -> None:
            if change.errors:
                _log().warning("key_distribution_failed", error=change.error)

        loop: ReconnectLoop[MqttSession] = ReconnectLoop(
            lambda: MqttSession(config.mqtt, client_id),
            initial_s=config.mqtt.backoff_initial_s,
            max_s=config.mqtt.backoff_max_s,
            retry_on=(UplinkError, StoreError),
            on_change=failed,
        )

        async def publish(session: MqttSession) -> None:
            while not stop.is_set():
                changed.clear()
                await distribute_once(engine, session.publish, topics, config.keys, key=key)
                loop.up()
                await _wait_any(stop, changed, config.keys.publish_interval_s)

        await loop.run(publish, stop=stop)
    finally:
        if own_engine:
            await engine.dispose()


async def _wait_any(a: asyncio.Event, b: asyncio.Event, timeout_s: float) -> None:
    """Return when ``a`` or ``b`` is set, or after ``timeout_s``."""
    waits = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
