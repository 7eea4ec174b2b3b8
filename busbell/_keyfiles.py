"""CSV key files, each with a header; readers validate every row.

FLEET.csv (``day,fleet_key``), DEVICES.csv (``bus_id,public_key``) and RIDERS.csv
(``rider_id,token_key``).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

from busbell._errors import KeyFileError
from busbell._signing import PublicKey, load_public_hex

__all__ = [
    "DEVICES_HEADER",
    "FLEET_HEADER",
    "RIDERS_HEADER",
    "append_row",
    "read_devices",
    "read_fleet_keys",
    "read_riders",
    "write_rows",
]

FLEET_HEADER = ("day", "fleet_key")
DEVICES_HEADER = ("bus_id", "public_key")
RIDERS_HEADER = ("rider_id", "token_key")


def _rows(path: str | os.PathLike[str], header: tuple[str, str]) -> Iterable[tuple[int, str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            head = next(reader, None)
            if head is None or tuple(h.strip() for h in head) != header:
                raise KeyFileError(f"{path}: header must be {','.join(header)}, got {head}")
            for lineno, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != 2:
                    raise KeyFileError(f"{path}:{lineno}: expected 2 columns, got {len(row)}")
                yield lineno, row[0].strip(), row[1].strip()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None


def _hex(value: str, n: int, where: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise KeyFileError(f"{where}: not hex") from None
    if len(raw) != n:
        raise KeyFileError(f"{where}: expected {2 * n} hex characters, got {len(value)}")
    return raw


def read_fleet_keys(path: str | os.PathLike[str]) -> dict[int, bytes]:
    """Read FLEET.csv into ``{day: 32-byte key}``.

    Raises:
        KeyFileError: naming the file and line of the first bad row.
    """
    out: dict[int, bytes] = {}
    for lineno, day, key in _rows(path, FLEET_HEADER):
        if not day.lstrip("-").isdigit():
            raise KeyFileError(f"{path}:{lineno}: day must be an integer, got {day!r}")
        if int(day) in out:
            raise KeyFileError(f"{path}:{lineno}: day {day} appears twice")
        out[int(day)] = _hex(key, 32, f"{path}:{lineno}")
    return out


def read_devices(path: str | os.PathLike[str]) -> dict[str, PublicKey]:
    """Read DEVICES.csv into ``{bus_id: public key}``."""
    out: dict[str, PublicKey] = {}
    for lineno, bus_id, key in _rows(path, DEVICES_HEADER):
        if not bus_id:
            raise KeyFileError(f"{path}:{lineno}: empty bus_id")
        try:
            out[bus_id] = load_public_hex(key)
        except KeyFileError as exc:
            raise KeyFileError(f"{path}:{lineno}: {exc}") from None
    return out


def read_riders(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """Read RIDERS.csv into ``{rider_id: 16-byte token key}``."""
    out: dict[str, bytes] = {}
    for lineno, rider_id, key in _rows(path, RIDERS_HEADER):
        if not rider_id:
            raise KeyFileError(f"{path}:{lineno}: empty rider_id")
        out[rider_id] = _hex(key, 16, f"{path}:{lineno}")
    return out


def write_rows(
    path: str | os.PathLike[str], header: tuple[str, str], rows: Iterable[tuple[str, str]]
) -> None:
    """Write a whole CSV key file (header first)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def append_row(path: str | os.PathLike[str], header: tuple[str, str], row: tuple[str, str]) -> None:
    """Append one row, writing the header first when the file is new or empty."""
    p = Path(path)
    new = not p.exists() or p.stat().st_size == 0
    with open(p, "a", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        if new:
            w.writerow(header)
        w.writerow(row)
