"""Deterministic keys of a simulated run: every key derives from the seed and a label.

These are simulation keys: derived with BLAKE2b from a public seed so that the same
seed gives byte-identical outputs. Never use them for anything real.
"""

from __future__ import annotations

import hashlib

from busbell import DeviceKey

__all__ = ["device_key", "fleet_key", "rider_key"]


def _derive(seed: int, *label: str, size: int) -> bytes:
    data = "|".join(("busbell-sim-v1", str(seed), *label)).encode()
    return hashlib.blake2b(data, digest_size=size).digest()


def fleet_key(seed: int, day: int) -> bytes:
    """The simulated fleet key (32 bytes) of a UTC day."""
    return _derive(seed, "fleet", str(day), size=32)


def rider_key(seed: int, rider_id: str) -> bytes:
    """A simulated rider's 16-byte ``token_key``."""
    return _derive(seed, "rider", rider_id, size=16)


def device_key(seed: int, bus_id: str) -> DeviceKey:
    """A simulated bus's Ed25519 device key."""
    return DeviceKey.from_seed(_derive(seed, "device", bus_id, size=32))
