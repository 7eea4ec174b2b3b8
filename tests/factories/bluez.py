"""A python-dbusmock BlueZ for tests of the real bleak path: a private D-Bus "system" bus,
the ``tests/edge/bluez_le_template.py`` bluetoothd on it, and its remote control."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from edge._ble import ScannerParams
from firmware_sim._bluez_feed import BUS_CONFIG as _SIM_BUS_CONFIG

__all__ = [
    "APPLE_CID",
    "TOKEN",
    "TOKEN_CID",
    "BlueZMock",
    "drop_bleak_bus",
    "eventually",
    "eventually_async",
    "fast_scanner_params",
    "running_bluez",
]

TEMPLATE = Path(__file__).resolve().parents[1] / "edge" / "bluez_le_template.py"
TOKEN = bytes(range(24))
TOKEN_CID = 0xFFFF
APPLE_CID = 0x004C

# The private system bus: the same config the simulator uses for its emulated bluetoothd.
BUS_CONFIG = _SIM_BUS_CONFIG


def fast_scanner_params(**kw: Any) -> ScannerParams:
    """``[scanner]`` on hci0 with short backoffs and no silence watchdog (tests of BlueZ)."""
    base: dict[str, Any] = {
        "adapter": "hci0",
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
        "dbus_timeout_s": 5.0,
        "silence_restart_s": 0.0,
    }
    base.update(kw)
    return ScannerParams(**base)


async def eventually(cond: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Wait until ``cond()`` holds (polling); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.02)


async def eventually_async(cond: Callable[[], Any], timeout: float = 5.0, what: str = "") -> None:
    """Wait until ``await cond()`` holds (polling); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.02)


class BlueZMock:
    """Remote control of the mocked bluetoothd (its org.bluez.Mock interface)."""

    def __init__(self, bus: MessageBus, env: dict[str, str], log: Any) -> None:
        self.bus = bus
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    async def start_bluetoothd(self) -> None:
        """Run the template in a dbusmock process; wait until it owns org.bluez."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dbusmock", "--system", "--template", str(TEMPLATE)],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not await self.has_owner():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dbusmock did not start, see {self.log.name}")
            await asyncio.sleep(0.05)

    async def has_owner(self) -> bool:
        reply = await self.bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="NameHasOwner",
                signature="s",
                body=["org.bluez"],
            )
        )
        return reply is not None and reply.body == [True]

    def kill_bluetoothd(self) -> None:
        """bluetoothd crashes: the process is killed, no InterfacesRemoved is sent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    async def call(self, member: str, signature: str = "", *body: Any) -> Any:
        reply = await self.bus.call(
            Message(
                destination="org.bluez",
                path="/",
                interface="org.bluez.Mock",
                member=member,
                signature=signature,
                body=list(body),
            )
        )
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"{member}: {reply.error_name} {reply.body}")
        return reply.body[0] if reply.body else None

    async def add_adapter(self, name: str = "hci0", *, monitors: bool = True) -> None:
        await self.call("AddLeAdapter", "sbb", name, monitors, True)

    async def remove_adapter(self, name: str = "hci0") -> None:
        await self.call("RemoveLeAdapter", "s", name)

    async def advertise(
        self,
        addr: str,
        rssi: int,
        mfr: dict[int, bytes],
        adapter: str = "hci0",
        *,
        uuids: list[str] | None = None,
    ) -> str:
        """One advertisement on the air (with ``uuids``: its service UUIDs too)."""
        body = {cid: Variant("ay", data) for cid, data in mfr.items()}
        if uuids is not None:
            sent: str = await self.call(
                "AdvertiseServices", "ssna{qv}as", adapter, addr, rssi, body, uuids
            )
            return sent
        result: str = await self.call("Advertise", "ssna{qv}", adapter, addr, rssi, body)
        return result

    async def fail_next(self, method: str, error: str, count: int = 1) -> None:
        await self.call("FailNext", "sssu", "hci0", method, error, count)

    async def wedge(self, adapter: str = "hci0") -> None:
        await self.call("Wedge", "s", adapter)

    async def state(self, adapter: str = "hci0") -> dict[str, Any]:
        text: str = await self.call("GetScanState", "s", adapter)
        return dict(json.loads(text))

    async def ad_state(self, adapter: str = "hci0") -> dict[str, Any]:
        """The adapter's advertisements (LEAdvertisingManager1), see the template."""
        text: str = await self.call("GetAdvertisingState", "s", adapter)
        return dict(json.loads(text))

    async def set_powered(self, powered: bool, adapter: str = "hci0") -> None:
        await self.call("SetPowered", "sb", adapter, powered)


async def drop_bleak_bus() -> None:
    """Disconnect bleak's per-loop BlueZ manager so no socket outlives the test."""
    from bleak.backends.bluezdbus import manager as bluez_manager

    loop = asyncio.get_running_loop()
    mgr = bluez_manager._global_instances.pop(loop, None)
    if mgr is not None and mgr._bus is not None:
        mgr._bus.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(mgr._bus.wait_for_disconnect(), 2)
        if mgr._bus_watcher_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(mgr._bus_watcher_task, 2)


@contextlib.asynccontextmanager
async def running_bluez(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[BlueZMock]:
    """A private system bus with the mocked bluetoothd on it; bleak is pointed at it."""
    sock = tmp_path / "system_bus_socket"
    conf = tmp_path / "system.conf"
    conf.write_text(BUS_CONFIG.format(sock=sock))
    daemon = subprocess.Popen(
        ["dbus-daemon", f"--config-file={conf}", "--nofork", "--print-address"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    control: MessageBus | None = None
    mock: BlueZMock | None = None
    mock_log = (tmp_path / "dbusmock.log").open("wb")
    try:
        assert daemon.stdout is not None
        address = daemon.stdout.readline().decode().strip()
        assert address.startswith("unix:"), address
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        control = await MessageBus(bus_type=BusType.SYSTEM).connect()
        mock = BlueZMock(control, {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": address}, mock_log)
        await mock.start_bluetoothd()
        yield mock
    finally:
        await drop_bleak_bus()
        if control is not None:
            control.disconnect()
        for proc in (mock.proc if mock else None, daemon):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        if daemon.stdout is not None:
            daemon.stdout.close()
        mock_log.close()
