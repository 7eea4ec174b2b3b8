"""Regenerate token_v1.json, the published token v1 test vectors.

Run: ``.venv/bin/python tests/vectors/generate_token_vectors.py > tests/vectors/token_v1.json``.
The keys are derived from fixed labels so the file is reproducible byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import sys

from busbell import day_of, derive_bk, derive_rider_keys, encode_payload, interval_of

TOKEN_KEYS = [
    "000102030405060708090a0b0c0d0e0f",
    "ffffffffffffffffffffffffffffffff",
    *(hashlib.sha256(f"busbell-vector-token-{n}".encode()).hexdigest()[:32] for n in (1, 2, 3)),
]
# Around an interval boundary (1700000400 = 2833334 * 600), and a UTC-day boundary
# (1700006400 = 19676 * 86400), plus an ordinary time.
TIMES = [1700000000.0, 1700000399.9, 1700000400.0, 1700006399.5, 1700006400.0, 1700007000.0]
FLAGS = [1, 0, 2, 4, 7]


def fleet_key(day: int) -> bytes:
    """The test fleet key of a UTC day."""
    return hashlib.sha256(f"busbell-vector-fleet-{day}".encode()).digest()


def main() -> None:
    """Print the vectors as JSON."""
    vectors = []
    for k_i, key_hex in enumerate(TOKEN_KEYS):
        keys = derive_rider_keys(bytes.fromhex(key_hex))
        for t_i, t in enumerate(TIMES):
            flags = FLAGS[(k_i + t_i) % len(FLAGS)]
            day = day_of(t)
            payload = encode_payload(keys, t, fleet_key=fleet_key(day), flags=flags)
            rid = payload[3:15]
            vectors.append(
                {
                    "token_key": key_hex,
                    "t": t,
                    "flags": flags,
                    "day": day,
                    "interval": interval_of(t),
                    "fleet_key": fleet_key(day).hex(),
                    "rid_key": keys.rid_key.hex(),
                    "mac_key": keys.mac_key.hex(),
                    "rid": rid.hex(),
                    "bk": derive_bk(fleet_key(day), rid).hex(),
                    "payload": payload.hex(),
                }
            )
    doc = {
        "format": "busbell-token-vectors/1",
        "spec": "docs/protocol.md#rider-token-v1",
        "company_id": 65535,
        "vectors": vectors,
    }
    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
