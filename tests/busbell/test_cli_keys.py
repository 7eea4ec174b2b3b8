"""`busbell keys device` as the README's provisioning step runs it on a new bus unit."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from busbell import DeviceKey


def busbell(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "busbell.cli", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_keys_device_creates_the_key_directory(tmp_path: Path) -> None:
    # `busbell keys device --out /etc/busbell/bus.pem ...`: /etc/busbell does not exist yet
    out = tmp_path / "etc" / "busbell" / "bus.pem"
    devices = tmp_path / "DEVICES.csv"
    r = busbell("keys", "device", "--out", out, "--bus-id", "bus-0001", "--devices", devices)
    assert r.returncode == 0, r.stderr
    key = DeviceKey.load(out)
    assert r.stdout.strip() == key.public.hex
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert devices.read_text().splitlines() == ["bus_id,public_key", f"bus-0001,{key.public.hex}"]
    # a second run refuses to replace the key, in the one error format, and adds no row
    r = busbell("keys", "device", "--out", out, "--bus-id", "bus-0001", "--devices", devices)
    assert r.returncode != 0
    assert r.stderr.startswith("busbell: error: cannot create")
    assert "exists" in r.stderr
    assert DeviceKey.load(out).public.hex == key.public.hex
    assert len(devices.read_text().splitlines()) == 2


def test_keys_device_directory_that_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "etc"
    blocker.write_text("a file where the directory should be\n")
    r = busbell("keys", "device", "--out", blocker / "busbell" / "bus.pem")
    assert r.returncode != 0
    assert r.stderr.startswith("busbell: error: cannot create")
    assert "Traceback" not in r.stderr
