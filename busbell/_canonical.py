"""Canonical JSON bytes: keys sorted, no whitespace, UTF-8, no NaN/Infinity."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical_bytes", "sha256_hex"]


def canonical_bytes(obj: Any) -> bytes:
    """Serialise ``obj`` to busbell's canonical JSON bytes.

    Raises:
        ValueError: for values JSON cannot carry exactly (NaN, infinities).
        TypeError: for values that are not JSON types.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
