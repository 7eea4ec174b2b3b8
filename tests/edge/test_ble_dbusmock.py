"""BleakSource against bleak, unchanged, talking to a python-dbusmock BlueZ.

Each test starts its own dbus-daemon (a private "system" bus from a config file in
tmp), runs ``tests/edge/bluez_le_template.py`` in a dbusmock process on it, points
``DBUS_SYSTEM_BUS_ADDRESS`` at it (bleak's dbus-fast ``MessageBus(bus_type=SYSTEM)``
reads it when it connects) and drives the mock over D-Bus: add adapters, put
advertisements on the air, inject faults. See docs/ble-host.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from structlog.testing import capture_logs

from busbell import AdvRecord
from edge._ble import BleakSource, ScannerParams
from tests.factories.bluez import (
    APPLE_CID,
    TOKEN,
    TOKEN_CID,
    BlueZMock,
    eventually,
    eventually_async,
    fast_scanner_params,
)

# A missing dbus-daemon fails these tests loudly (.ci/run installs it).
pytestmark = pytest.mark.dbus


def params(**kw: Any) -> ScannerParams:
    return fast_scanner_params(**kw)


class Running:
    """A BleakSource running in a task, with the records it produced."""

    def __init__(self, source: BleakSource) -> None:
        self.source = source
        self.records: list[AdvRecord] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.source.run(self.records.append))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def started(self, n: int = 1) -> None:
        await eventually(lambda: self.source.stats.starts >= n, what=f"{n} scanner start(s)")


def clock() -> float:
    return 1_700_000_000.5


async def test_active_mode_receives_adverts_with_rssi_and_mfr(bluez: BlueZMock) -> None:
    await bluez.add_adapter(monitors=False)
    src = BleakSource(params(mode="active"), clock)
    async with Running(src) as run:
        await run.started()
        st = await bluez.state()
        assert st["discovering"] is True
        assert st["filters"] == [{"Transport": "le", "DuplicateData": False}]
        assert await bluez.advertise("C0:00:00:00:00:01", -61, {TOKEN_CID: TOKEN}) == "added"
        assert await bluez.advertise("C0:00:00:00:00:02", -70, {APPLE_CID: b"\x10\x05"}) == "added"
        assert await bluez.advertise("C0:00:00:00:00:01", -58, {TOKEN_CID: TOKEN}) == "changed"
        await eventually(lambda: len(run.records) >= 2, what="two token adverts")
        await eventually(lambda: src.stats.ignored >= 1, what="foreign advert ignored")
    assert run.records == [
        AdvRecord(clock(), "C0:00:00:00:00:01", -61, {TOKEN_CID: TOKEN}),
        AdvRecord(clock(), "C0:00:00:00:00:01", -58, {TOKEN_CID: TOKEN}),
    ]
    assert src.stats.mode == "active"
    assert src.stats.adverts == 2
    assert src.stats.errors == {}
    assert (await bluez.state())["discovering"] is False  # stopped on cancel


async def _monitor_active(bluez: BlueZMock) -> bool:
    st = await bluez.state()
    return any(m["active"] for m in st["monitors"])


async def test_passive_mode_registers_or_pattern_monitor_and_receives(bluez: BlueZMock) -> None:
    await bluez.add_adapter(monitors=True)
    src = BleakSource(params(mode="passive"), clock)
    async with Running(src) as run:
        await run.started()
        await eventually_async(lambda: _monitor_active(bluez), what="monitor activated")
        st = await bluez.state()
        assert st["discovering"] is False  # passive: no discovery session at all
        assert st["registered_apps"] == 1
        [monitor] = st["monitors"]
        # AD type 0xFF, company id little-endian at offset 0
        assert monitor["patterns"] == [[0, 0xFF, "ffff"]]
        assert await bluez.advertise("C0:00:00:00:00:01", -55, {TOKEN_CID: TOKEN}) == "added"
        assert await bluez.advertise("C0:00:00:00:00:02", -50, {APPLE_CID: b"\x01"}) == "no_match"
        assert await bluez.advertise("C0:00:00:00:00:01", -52, {TOKEN_CID: TOKEN}) == "changed"
        await eventually(lambda: len(run.records) >= 2, what="two passive adverts")
        st = await bluez.state()
        assert st["monitors"][0]["found"] == ["/org/bluez/hci0/dev_C0_00_00_00_00_01"]
        await eventually_async(
            lambda: _device_found_acked(bluez), what="DeviceFound answered by bleak"
        )
    assert [(r.addr, r.rssi, r.mfr) for r in run.records] == [
        ("C0:00:00:00:00:01", -55, {TOKEN_CID: TOKEN}),
        ("C0:00:00:00:00:01", -52, {TOKEN_CID: TOKEN}),
    ]
    assert src.stats.mode == "passive"
    assert src.stats.errors == {}
    assert (await bluez.state())["registered_apps"] == 0  # UnregisterMonitor on cancel


async def _device_found_acked(bluez: BlueZMock) -> bool:
    return bool((await bluez.state())["device_found_ok"] >= 1)


async def test_passive_pattern_uses_configured_company_id(bluez: BlueZMock) -> None:
    await bluez.add_adapter(monitors=True)
    src = BleakSource(params(mode="passive", company_id=0x1234), clock)
    async with Running(src) as run:
        await run.started()
        await eventually_async(lambda: _monitor_active(bluez), what="monitor activated")
        assert (await bluez.state())["monitors"][0]["patterns"] == [[0, 0xFF, "3412"]]
        assert await bluez.advertise("C0:00:00:00:00:03", -60, {TOKEN_CID: TOKEN}) == "no_match"
        assert await bluez.advertise("C0:00:00:00:00:04", -60, {0x1234: TOKEN}) == "added"
        await eventually(lambda: len(run.records) == 1)
    assert run.records[0].mfr == {0x1234: TOKEN}


async def test_auto_falls_back_to_active_without_monitor_support(bluez: BlueZMock) -> None:
    await bluez.add_adapter(monitors=False)
    src = BleakSource(params(mode="auto", silence_restart_s=0.3), clock)
    with capture_logs() as logs:
        async with Running(src) as run:
            await run.started()
            assert src.stats.mode == "active"
            assert (await bluez.state())["discovering"] is True
            assert await bluez.advertise("C0:00:00:00:00:05", -66, {TOKEN_CID: TOKEN}) == "added"
            await eventually(lambda: len(run.records) == 1)
            # a restart (here by the watchdog) stays active, no second fallback
            await run.started(2)
            assert src.stats.mode == "active"
    events = [e["event"] for e in logs]
    assert events.count("scanner_mode_fallback") == 1
    assert src.stats.errors == {"monitor_unsupported": 1}
    assert src.mode == "active"


async def test_auto_uses_passive_when_monitors_exist(bluez: BlueZMock) -> None:
    await bluez.add_adapter(monitors=True)
    src = BleakSource(params(mode="auto"), clock)
    async with Running(src) as run:
        await run.started()
        await eventually_async(lambda: _monitor_active(bluez), what="monitor activated")
    assert src.stats.mode == "passive"


async def test_passive_mode_without_monitor_support_keeps_retrying(bluez: BlueZMock) -> None:
    await bluez.add_adapter(monitors=False)
    src = BleakSource(params(mode="passive"), clock)
    async with Running(src):
        await eventually(lambda: src.stats.errors.get("monitor_unsupported", 0) >= 2)
    assert src.stats.starts == 0
    assert src.mode == "passive"


async def test_in_progress_is_retried_and_recovers(bluez: BlueZMock) -> None:
    await bluez.add_adapter(monitors=False)
    await bluez.fail_next("StartDiscovery", "org.bluez.Error.InProgress", 1)
    src = BleakSource(params(mode="active"), clock)
    with capture_logs() as logs:
        async with Running(src) as run:
            await run.started()
            assert await bluez.advertise("C0:00:00:00:00:06", -70, {TOKEN_CID: TOKEN}) == "added"
            await eventually(lambda: len(run.records) == 1)
    assert src.stats.errors == {"in_progress": 1}
    assert src.stats.restarts == 1
    failed = [e for e in logs if e["event"] == "scanner_failed"]
    assert [e["reason"] for e in failed] == ["in_progress"]


async def test_not_ready_while_powered_off_then_recovers(bluez: BlueZMock) -> None:
    await bluez.add_adapter(monitors=False)
    await bluez.call("SetPowered", "sb", "hci0", False)
    src = BleakSource(params(mode="active"), clock)
    async with Running(src) as run:
        await eventually(lambda: src.stats.errors.get("not_ready", 0) >= 1, what="not_ready")
        await bluez.call("SetPowered", "sb", "hci0", True)
        await run.started()
        assert await bluez.advertise("C0:00:00:00:00:07", -70, {TOKEN_CID: TOKEN}) == "added"
        await eventually(lambda: len(run.records) == 1)
        # powering off while scanning is noticed at once (no silence needed)
        await bluez.call("SetPowered", "sb", "hci0", False)
        await eventually(lambda: src.stats.errors.get("adapter_powered_off", 0) == 1)
        await bluez.call("SetPowered", "sb", "hci0", True)
        await run.started(2)


async def test_adapter_removed_then_readded_recovers(bluez: BlueZMock) -> None:
    await bluez.add_adapter(monitors=True)
    src = BleakSource(params(mode="passive"), clock)
    with capture_logs() as logs:
        async with Running(src) as run:
            await run.started()
            await eventually_async(lambda: _monitor_active(bluez), what="monitor activated")
            assert await bluez.advertise("C0:00:00:00:00:08", -64, {TOKEN_CID: TOKEN}) == "added"
            await eventually(lambda: len(run.records) == 1)
            await bluez.remove_adapter()
            await eventually(
                lambda: src.stats.errors.get("adapter_missing", 0) >= 2, what="start failures"
            )
            assert src.stats.errors["adapter_removed"] == 1
            await bluez.add_adapter(monitors=True)
            await run.started(2)
            await eventually_async(lambda: _monitor_active(bluez), what="monitor re-activated")
            assert await bluez.advertise("C0:00:00:00:00:08", -63, {TOKEN_CID: TOKEN}) == "added"
            await eventually(lambda: len(run.records) == 2)
    events = [e["event"] for e in logs]
    assert "scanner_interrupted" in events
    assert events.count("scanner_started") == 2


async def test_silence_watchdog_restarts_a_wedged_scanner(bluez: BlueZMock) -> None:
    await bluez.add_adapter(monitors=False)
    src = BleakSource(params(mode="active", silence_restart_s=0.5), clock)
    with capture_logs() as logs:
        async with Running(src) as run:
            await run.started()
            assert await bluez.advertise("C0:00:00:00:00:09", -60, {TOKEN_CID: TOKEN}) == "added"
            await eventually(lambda: len(run.records) == 1)
            await bluez.wedge()
            assert await bluez.advertise("C0:00:00:00:00:09", -61, {TOKEN_CID: TOKEN}) == "wedged"
            await run.started(2)  # the watchdog stopped and restarted discovery
            assert src.stats.silent_restarts >= 1
            assert await bluez.advertise("C0:00:00:00:00:09", -62, {TOKEN_CID: TOKEN}) == "changed"
            await eventually(lambda: len(run.records) == 2)
    assert [r.rssi for r in run.records] == [-60, -62]
    assert "scanner_silent_restart" in [e["event"] for e in logs]
    assert src.stats.errors == {}


async def test_sink_errors_are_counted_not_fatal(bluez: BlueZMock) -> None:
    await bluez.add_adapter(monitors=False)
    src = BleakSource(params(mode="active"), clock)
    got: list[AdvRecord] = []

    def sink(rec: AdvRecord) -> None:
        got.append(rec)
        raise ValueError("boom")

    task = asyncio.create_task(src.run(sink))
    try:
        await eventually(lambda: src.stats.starts == 1)
        await bluez.advertise("C0:00:00:00:00:0A", -60, {TOKEN_CID: TOKEN})
        await bluez.advertise("C0:00:00:00:00:0A", -59, {TOKEN_CID: TOKEN})
        await eventually(lambda: len(got) == 2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert src.stats.errors == {"sink_error": 2}


async def test_bluetoothd_crash_and_restart_recovers(bluez: BlueZMock) -> None:
    await bluez.add_adapter(monitors=False)
    src = BleakSource(params(mode="active"), clock)
    async with Running(src) as run:
        await run.started()
        assert await bluez.advertise("C0:00:00:00:00:0B", -60, {TOKEN_CID: TOKEN}) == "added"
        await eventually(lambda: len(run.records) == 1)
        bluez.kill_bluetoothd()
        await eventually(lambda: src.stats.errors.get("bluez_gone", 0) == 1, what="bluez_gone")
        await eventually(lambda: sum(src.stats.errors.values()) >= 3, what="failed restarts")
        await bluez.start_bluetoothd()
        await bluez.add_adapter(monitors=False)
        await run.started(2)
        assert await bluez.advertise("C0:00:00:00:00:0B", -61, {TOKEN_CID: TOKEN}) == "added"
        await eventually(lambda: len(run.records) == 2)
    assert run.records[1].rssi == -61


async def test_stale_own_discovery_session_is_cleared_by_bus_reset(bluez: BlueZMock) -> None:
    from bleak.backends.bluezdbus.manager import get_global_bluez_manager

    await bluez.add_adapter(monitors=False)
    manager = await get_global_bluez_manager()  # bleak's connection, as the source uses it
    assert manager._bus is not None
    await bluez.call("AddStaleSession", "ss", "hci0", manager._bus.unique_name)
    src = BleakSource(params(mode="active"), clock)
    with capture_logs() as logs:
        async with Running(src) as run:
            await run.started()
            assert await bluez.advertise("C0:00:00:00:00:0C", -60, {TOKEN_CID: TOKEN}) == "added"
            await eventually(lambda: len(run.records) == 1)
    assert src.stats.errors == {"in_progress": 3, "bus_reset": 1}
    assert [e["event"] for e in logs].count("scanner_bus_reset") == 1
