"""The bus's fleet keys and deny list, as delivered by the backend.

:class:`FleetKeyring` holds the fleet day keys the :class:`busbell.TokenVerifier` checks
``btag`` with: loaded from FLEET.csv at start, extended by key bundles the backend seals
to this bus on ``buses/{bus}/keys`` (``busbell.open_key_bundle``), and persisted back to
the file atomically so a restart with no network still has them. :class:`Denylist` keeps
the newest retained ``denylist`` version whose backend signature verifies
(:mod:`busbell._denylist`): revoked riders appear as their rids, which the bus then
ignores (no fare segment, no stop bell). Plain synchronous code; the daemon
feeds it MQTT payloads.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from busbell import (
    FLEET_HEADER,
    ContractError,
    JsonLimits,
    KeyFileError,
    PublicKey,
    loads_object,
    open_key_bundle,
    read_fleet_keys,
    write_rows,
)
from busbell._denylist import parse_denylist

__all__ = ["BUNDLE_LIMITS", "Denylist", "FleetKeyring"]

DAY_S = 86400.0
BUNDLE_LIMITS = JsonLimits(max_bytes=256 * 1024, max_depth=3)
"""A key bundle: a flat header and a ciphertext (a year of days is ~30 KB)."""


class FleetKeyring:
    """Fleet day keys by UTC day, persisted to a FLEET.csv file.

    Args:
        path: the FLEET.csv file (read at start if it exists; rewritten on new keys).
        bus_id: this bus (a bundle for another bus is refused).
        kex_private: this bus's X25519 key (``busbell.bus_kex_private(device_key)``).
        keep_days: if set, keys older than this many days before ``now`` are dropped on
            save. Off by default: ``now`` is the bus clock, and a replayed or simulated
            day can use keys far older than it (a year of keys is ~30 KB).
    """

    def __init__(
        self,
        path: Path,
        bus_id: str,
        kex_private: X25519PrivateKey,
        *,
        keep_days: int | None = None,
    ) -> None:
        self.path = path
        self.bus_id = bus_id
        self._kex = kex_private
        self.keep_days = keep_days
        self.keys: dict[int, bytes] = read_fleet_keys(path) if path.exists() else {}
        """Day -> key; mutated in place, so a verifier may hold ``keys.get``."""
        self.bundles_applied = 0
        self.bundles_rejected = 0

    def get(self, day: int) -> bytes | None:
        """The key of a UTC day, or ``None`` (the TokenVerifier's key lookup)."""
        return self.keys.get(day)

    def days_ahead(self, now: float) -> int:
        """How many whole days after today are covered without a gap (-1: not even today)."""
        today = math.floor(now / DAY_S)
        n = -1
        while today + n + 1 in self.keys:
            n += 1
        return n

    def apply_bundle(self, payload: bytes, now: float) -> list[int]:
        """Open a key bundle and merge its keys; returns the days that were new.

        Raises:
            ContractError: malformed, for another bus, or not decryptable by this bus.
        """
        try:
            message = loads_object(payload, BUNDLE_LIMITS)
        except ContractError:
            self.bundles_rejected += 1
            raise
        if message.get("bus_id") != self.bus_id:
            self.bundles_rejected += 1
            raise ContractError("key bundle is not for this bus", field="bus_id")
        try:
            keys = open_key_bundle(message, self._kex)
        except ContractError:
            self.bundles_rejected += 1
            raise
        changed = sorted(d for d, k in keys.items() if self.keys.get(d) != k)
        if changed:
            self.keys.update(keys)
            self._save(now)
        self.bundles_applied += 1
        return changed

    def _save(self, now: float) -> None:
        if self.keep_days is not None:
            oldest = math.floor(now / DAY_S) - self.keep_days
            for d in [d for d in self.keys if d < oldest]:  # in place: the verifier shares it
                del self.keys[d]
        rows = [(str(d), k.hex()) for d, k in sorted(self.keys.items())]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".fleet-", dir=self.path.parent)
        os.close(fd)
        try:
            write_rows(tmp, FLEET_HEADER, rows)
            os.chmod(tmp, 0o600)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise KeyFileError(f"cannot save fleet keys to {self.path}: {exc}") from exc


class Denylist:
    """The newest verified deny list version this bus has seen.

    Args:
        bus_id: this bus.
        public_key: the backend's deny-list signing key (``[keys]
            denylist_public_key``); without it every list is refused (``no_backend_key``).

    Attributes:
        rejected: lists refused (malformed, unsigned, badly signed, no key).
        stale: verified lists ignored because they were not newer than the current one.
    """

    def __init__(self, bus_id: str, public_key: PublicKey | None = None) -> None:
        self.bus_id = bus_id
        self.public_key = public_key
        self.version = 0
        self._rids: frozenset[bytes] = frozenset()
        self.devices: frozenset[str] = frozenset()
        self.rejected = 0
        self.stale = 0

    @property
    def bus_revoked(self) -> bool:
        """Whether this bus's own device is on the list."""
        return self.bus_id in self.devices

    def apply(self, payload: bytes) -> bool:
        """Take a deny list message; ``True`` when it replaced the current version.

        Verified older or equal versions are ignored (counted in :attr:`stale`); an
        empty payload (cleared retained message) changes nothing.

        Raises:
            ContractError: when the payload is malformed, unsigned or badly signed
                (``reason`` says which).
        """
        if not payload:
            return False
        try:
            msg = parse_denylist(payload, self.public_key)
        except ContractError:
            self.rejected += 1
            raise
        if msg.version <= self.version:
            self.stale += 1
            return False
        self.version, self._rids, self.devices = msg.version, msg.rids, msg.devices
        return True

    def denies(self, rid: bytes) -> bool:
        """Whether advertisements with this 12-byte rid must be ignored."""
        return rid in self._rids

    def __len__(self) -> int:
        return len(self._rids)
