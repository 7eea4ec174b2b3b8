"""``busbell edge run``: what the entry point does around the daemon."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from busbell import DeviceKey, day_of
from edge import cli
from edge._daemon import EdgeDaemon
from edge.config import EdgeConfig

GTFS = Path(__file__).resolve().parents[2] / "firmware_sim" / "data" / "gtfs"


def test_run_freezes_what_start_up_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full collection must not walk the feed and the modules with the loop stopped."""
    pem = tmp_path / "device.pem"
    DeviceKey.generate().save(pem)
    fleet = tmp_path / "FLEET.csv"
    fleet.write_text(f"day,fleet_key\n{day_of(1.8e9)},{'00' * 32}\n")
    config = EdgeConfig(
        bus_id="B1",
        store=tmp_path / "fares.db",
        gtfs=GTFS,
        device_key=pem,
        fleet_keys=fleet,
        source="stream",
    )
    frozen: list[int] = []

    async def run(self: EdgeDaemon) -> None:  # the daemon itself is tested elsewhere
        frozen.append(gc.get_freeze_count())

    monkeypatch.setattr(EdgeDaemon, "run", run)
    gc.unfreeze()
    try:
        assert asyncio.run(cli._run(config)) == 0
    finally:
        gc.unfreeze()
    assert len(frozen) == 1
    assert frozen[0] > 0
