"""The deny list: revoked riders and devices, published retained and versioned.

Revoking a rider stops new ``bk``s at once (:func:`backend._keys.rider_bk_schedule`
returns none), but a fob or app may hold ``bk``s for up to ``[keys] rider_days_ahead``
days. Buses never learn who a rider is, so the deny list carries the revoked riders'
*rids* for the coming ``[keys] denylist_hours`` (only riders whose issued ``bk``s may
still be valid), plus the revoked bus ids. Each change is a new version stored in
``denylist_versions`` and published retained (QoS 1) on ``denylist``, signed with the
backend's Ed25519 key (``[keys] signing_key``; :mod:`busbell._denylist` has the message
and its verification, which every bus runs)::

    {"v": 1, "version": 7, "t": 1760000000.0,
     "from_interval": 2933333, "to_interval": 2933621,
     "rids": ["9f1c...", ...], "devices": ["B17"], "sig": "<base64 Ed25519>"}
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from backend._db import denylist_versions, devices, riders
from backend._errors import UnknownDevice, UnknownRider
from busbell import (
    DeviceKey,
    KeyFileError,
    StoreError,
    Topics,
    canonical_bytes,
    derive_rider_keys,
    get_logger,
    interval_of,
    rid_for_interval,
)
from busbell._denylist import sign_denylist

__all__ = [
    "Publish",
    "build_denylist",
    "latest_denylist",
    "load_signing_key",
    "publish_denylist",
    "refresh_denylist",
    "revoke_device",
    "revoke_rider",
    "signing_key_path",
    "state_dir",
    "window_intervals",
]

Publish = Callable[..., Awaitable[None]]
"""``async (topic, payload, *, qos, retain)``, e.g. :meth:`busbell._mqtt.MqttSession.publish`."""

DAY_S = 86400


def _log() -> Any:
    return get_logger("backend.denylist")


async def build_denylist(
    engine: AsyncEngine, *, now: float, rider_days_ahead: int = 7, denylist_hours: float = 48.0
) -> dict[str, Any]:
    """The deny list content at ``now`` (without ``version``)."""
    first = interval_of(now)
    last = interval_of(now + denylist_hours * 3600)
    async with engine.connect() as conn:
        revoked_buses = [
            b
            for (b,) in await conn.execute(
                sa.select(devices.c.bus_id)
                .where(devices.c.revoked_at.is_not(None))
                .order_by(devices.c.bus_id)
            )
        ]
        rows = (
            await conn.execute(
                sa.select(riders.c.rider_id, riders.c.token_key, riders.c.revoked_at).where(
                    riders.c.status == "revoked",
                    riders.c.revoked_at > now - rider_days_ahead * DAY_S,
                )
            )
        ).all()
    rids: list[str] = []
    for _rider_id, token_key, revoked_at in rows:
        # bks issued before revocation reach at most rider_days_ahead past it.
        until = min(last, interval_of(revoked_at + rider_days_ahead * DAY_S))
        rk = derive_rider_keys(bytes.fromhex(token_key)).rid_key
        rids.extend(rid_for_interval(rk, i).hex() for i in range(first, until + 1))
    return {
        "v": 1,
        "t": now,
        "from_interval": first,
        "to_interval": last,
        "rids": sorted(rids),
        "devices": revoked_buses,
    }


async def latest_denylist(engine: AsyncEngine) -> dict[str, Any] | None:
    """The newest stored version, or ``None``."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(denylist_versions.c.payload)
                .order_by(denylist_versions.c.version.desc())
                .limit(1)
            )
        ).first()
    return None if row is None else dict(json.loads(row.payload))


async def _store_version(engine: AsyncEngine, body: dict[str, Any]) -> dict[str, Any]:
    for _attempt in range(5):
        try:
            async with engine.begin() as conn:
                top = (
                    await conn.execute(sa.select(sa.func.max(denylist_versions.c.version)))
                ).scalar()
                payload = dict(body, version=int(top or 0) + 1)
                await conn.execute(
                    denylist_versions.insert().values(
                        version=payload["version"],
                        issued_at=body["t"],
                        payload=canonical_bytes(payload).decode(),
                    )
                )
            _log().info(
                "denylist_version_created",
                version=payload["version"],
                rids=len(payload["rids"]),
                devices=len(payload["devices"]),
            )
            return payload
        except sa.exc.IntegrityError:
            continue  # another backend took this version number: take the next
    raise StoreError("cannot allocate a deny list version")  # pragma: no cover


async def refresh_denylist(
    engine: AsyncEngine,
    *,
    now: float | None = None,
    rider_days_ahead: int = 7,
    denylist_hours: float = 48.0,
    force: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Rebuild the deny list; store a new version when its content changed.

    Returns:
        The current payload and whether it is a new version.
    """
    t = time.time() if now is None else now
    body = await build_denylist(
        engine, now=t, rider_days_ahead=rider_days_ahead, denylist_hours=denylist_hours
    )
    latest = await latest_denylist(engine)
    if latest is not None and not force:
        # The window slides every interval; re-issue once the newest version has less
        # than half of its window ahead, or when the rids/devices changed.
        same = latest["rids"] == body["rids"] and latest["devices"] == body["devices"]
        half = (latest["to_interval"] - latest["from_interval"]) // 2
        fresh = interval_of(t) <= latest["from_interval"] + half
        if same and fresh:
            return latest, False
    return await _store_version(engine, body), True


async def revoke_rider(
    engine: AsyncEngine,
    rider_id: str,
    *,
    now: float | None = None,
    rider_days_ahead: int = 7,
    denylist_hours: float = 48.0,
) -> dict[str, Any]:
    """Revoke a rider (no more ``bk``s) and store a new deny list version.

    Returns:
        The new deny list payload, to publish with :func:`publish_denylist`.

    Raises:
        UnknownRider: when the rider is not enrolled.
    """
    t = time.time() if now is None else now
    async with engine.begin() as conn:
        res = await conn.execute(
            riders.update()
            .where(riders.c.rider_id == rider_id)
            .values(
                status="revoked",
                revoked_at=sa.func.coalesce(riders.c.revoked_at, t),
            )
        )
        if res.rowcount == 0:
            raise UnknownRider(rider_id)
    _log().info("rider_revoked", rider_id=rider_id)
    payload, _ = await refresh_denylist(
        engine, now=t, rider_days_ahead=rider_days_ahead, denylist_hours=denylist_hours, force=True
    )
    return payload


async def revoke_device(
    engine: AsyncEngine,
    bus_id: str,
    *,
    now: float | None = None,
    rider_days_ahead: int = 7,
    denylist_hours: float = 48.0,
) -> dict[str, Any]:
    """Revoke a bus and store a new deny list version.

    Ingest rejects its events after the workers' next registry refresh
    (``[ingest] device_refresh_s``) and it gets no more fleet keys.

    Returns:
        The new deny list payload, to publish with :func:`publish_denylist`.

    Raises:
        UnknownDevice: when the bus is not registered.
    """
    t = time.time() if now is None else now
    async with engine.begin() as conn:
        res = await conn.execute(
            devices.update()
            .where(devices.c.bus_id == bus_id)
            .values(revoked_at=sa.func.coalesce(devices.c.revoked_at, t))
        )
        if res.rowcount == 0:
            raise UnknownDevice(bus_id)
    _log().warning("device_revoked", bus_id=bus_id)
    payload, _ = await refresh_denylist(
        engine, now=t, rider_days_ahead=rider_days_ahead, denylist_hours=denylist_hours, force=True
    )
    return payload


async def publish_denylist(
    publish: Publish, topics: Topics, payload: dict[str, Any], key: DeviceKey
) -> None:
    """Sign a deny list version with the backend key and publish it retained, QoS 1."""
    signed = sign_denylist(payload, key)
    await publish(topics.denylist(), canonical_bytes(signed), qos=1, retain=True)
    _log().info("denylist_published", version=payload["version"], rids=len(payload["rids"]))


SIGNING_KEY_NAME = "busbell-backend-signing.pem"


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    """The backend's state directory when its database is not a file.

    ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``, ``/var/lib/busbell`` in the
    shipped unit; the first one if several), else ``$XDG_STATE_HOME/busbell``, else
    ``~/.local/state/busbell``. Never the working directory: a key written there ends up
    in whatever checkout or ``/`` the process was started from.
    """
    env = os.environ if env is None else env
    systemd = env.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "busbell"
    return Path(env.get("HOME") or Path.home()) / ".local" / "state" / "busbell"


def signing_key_path(config: Any, env: Mapping[str, str] | None = None) -> Path:
    """Where the deny-list signing key of a :class:`backend.config.BackendConfig` is.

    ``[keys] signing_key`` if set; else beside a SQLite database file; else (PostgreSQL,
    in-memory SQLite) in :func:`state_dir`.
    """
    if config.keys.signing_key is not None:
        return Path(config.keys.signing_key)
    url = str(config.database.url)
    if url.startswith("sqlite") and ":///" in url:
        db = url.split(":///", 1)[1].split("?", 1)[0]
        if db and db != ":memory:":
            return Path(db).parent / SIGNING_KEY_NAME
    return state_dir(env) / SIGNING_KEY_NAME


def load_signing_key(path: Path) -> DeviceKey:
    """The backend's deny-list signing key; generated and saved (0600) when missing.

    Several workers may start at once on one state directory: the new key is written
    to a private file and linked into place, so exactly one key wins and every worker
    loads that one.

    Raises:
        KeyFileError: when the file exists but is not an Ed25519 PEM key, or cannot be
            written.
    """
    if path.exists():
        return DeviceKey.load(path)
    key = DeviceKey.generate()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise KeyFileError(f"cannot create {path.parent}: {exc.strerror}") from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    key.save(tmp)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return DeviceKey.load(path)  # another worker made it first
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    _log().warning("backend_signing_key_created", path=str(path), public_key=key.public.hex)
    return key


def window_intervals(payload: dict[str, Any]) -> range:
    """The intervals a deny list payload covers."""
    return range(int(payload["from_interval"]), int(payload["to_interval"]) + 1)
