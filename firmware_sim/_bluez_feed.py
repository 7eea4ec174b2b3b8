"""Live BlueZ path: put scenario advertisements on the air of an emulated bluetoothd.

The emulated bluetoothd is the python-dbusmock template ``firmware_sim/_bluez_template.py``
on a D-Bus "system" bus. :class:`PrivateBluez` starts one of its own (a private
``dbus-daemon`` plus ``python -m dbusmock --system --template ...`` with one powered LE
adapter that supports advertisement monitors); :class:`BluezFeed` connects to a bus
where the template runs and injects each advertisement with the template's
``org.bluez.Mock.Advertise`` call, which bluetoothd-like turns into a ``Device1``
``InterfacesAdded`` or ``PropertiesChanged`` (RSSI, ``ManufacturerData`` ``a{qv}`` of
``ay``) for whoever scans: the edge's bleak code, unchanged.

dbus-fast is imported lazily, so ``firmware_sim`` imports without D-Bus libraries.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from busbell import AdvRecord, get_logger

__all__ = ["BUS_CONFIG", "TEMPLATE_PATH", "BluezFeed", "PrivateBluez", "parse_bluez_target"]

TEMPLATE_PATH = Path(__file__).with_name("_bluez_template.py")

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"""


def _log() -> Any:
    return get_logger("firmware_sim.bluez")


def parse_bluez_target(text: str) -> str | None:
    """Parse ``bluez`` (start a private bus: None) or ``bluez:ADDRESS`` (use that bus).

    Raises:
        ValueError: not of that form.
    """
    if text == "bluez":
        return None
    if text.startswith("bluez:") and len(text) > len("bluez:"):
        return text.removeprefix("bluez:")
    raise ValueError(f"expected bluez or bluez:DBUS_ADDRESS, got {text!r}")


class PrivateBluez:
    """A private D-Bus system bus with the emulated bluetoothd on it.

    Use as an async context manager; :attr:`address` is the bus address to give the
    edge as ``DBUS_SYSTEM_BUS_ADDRESS``.
    """

    def __init__(self, *, adapter: str = "hci0", monitors: bool = True) -> None:
        self.adapter = adapter
        self.monitors = monitors
        self.address = ""
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._daemon: subprocess.Popen[bytes] | None = None
        self._mock: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> PrivateBluez:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    async def start(self, timeout_s: float = 15.0) -> None:
        """Start dbus-daemon and dbusmock; wait until ``org.bluez`` serves the adapter.

        Raises:
            RuntimeError: a binary is missing or a process did not come up.
        """
        try:
            daemon = self._spawn_bus()
            assert daemon.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(daemon.stdout.readline), timeout_s)
            self.address = line.decode().strip()
            if not self.address.startswith("unix:"):
                raise RuntimeError(f"dbus-daemon printed no address: {self.address!r}")
            mock = self._spawn_mock()
            feed = BluezFeed(self.address, adapter=self.adapter)
            deadline = time.monotonic() + timeout_s
            await feed.connect()
            try:
                while not await feed.ready():
                    if mock.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"the emulated bluetoothd did not start, see {self._log_path}"
                        )
                    await asyncio.sleep(0.05)
            finally:
                feed.close()
        except BaseException:
            self.stop()
            raise
        _log().info("bluez_started", address=self.address, adapter=self.adapter)

    @property
    def _log_path(self) -> Path:
        assert self._dir is not None
        return Path(self._dir.name) / "dbusmock.log"

    def _spawn_bus(self) -> subprocess.Popen[bytes]:
        exe = shutil.which("dbus-daemon")
        if exe is None:
            raise RuntimeError("dbus-daemon not found (install the dbus package)")
        self._dir = tempfile.TemporaryDirectory(prefix="busbell-bluez-")
        conf = Path(self._dir.name) / "system.conf"
        conf.write_text(BUS_CONFIG.format(sock=Path(self._dir.name) / "system_bus_socket"))
        self._daemon = subprocess.Popen(  # noqa: S603 - fixed arguments
            [exe, f"--config-file={conf}", "--nofork", "--print-address"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        return self._daemon

    def _spawn_mock(self) -> subprocess.Popen[bytes]:
        params = json.dumps({"adapter": self.adapter, "monitors": self.monitors})
        args = ["-m", "dbusmock", "--system", "--template", str(TEMPLATE_PATH)]
        with self._log_path.open("wb") as log:
            self._mock = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
                [sys.executable, *args, "--parameters", params],
                env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.address},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self._mock

    def stop(self) -> None:
        """Stop dbusmock and the bus; idempotent."""
        for proc in (self._mock, self._daemon):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        if self._daemon is not None and self._daemon.stdout is not None:
            self._daemon.stdout.close()
        self._mock = self._daemon = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


class BluezFeed:
    """Injects advertisements into the emulated bluetoothd at ``address``.

    ``outcomes`` counts what the emulated bluetoothd did with each one: ``added``,
    ``changed``, ``unchanged`` (equal to the last report, no signal, as bluetoothd),
    ``not_scanning``, ``no_match`` (no monitor pattern matches), ``wedged``, ``error``.
    """

    def __init__(self, address: str, *, adapter: str = "hci0") -> None:
        self.address = address
        self.adapter = adapter
        self.outcomes: Counter[str] = Counter()
        self._bus: Any = None

    async def connect(self) -> None:
        """Connect to the bus.

        Raises:
            RuntimeError: dbus-fast is not installed.
            OSError: the bus is unreachable.
        """
        try:
            from dbus_fast.aio import MessageBus
        except ImportError as exc:  # pragma: no cover - dbus-fast ships with bleak
            raise RuntimeError("the BlueZ path needs dbus-fast (pip install dbus-fast)") from exc
        self._bus = await MessageBus(bus_address=self.address).connect()

    def close(self) -> None:
        """Disconnect; idempotent."""
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    async def _call(self, member: str, signature: str, *body: Any) -> Any:
        from dbus_fast import Message, MessageType

        reply = await self._bus.call(
            Message(
                destination="org.bluez",
                path="/",
                interface="org.bluez.Mock",
                member=member,
                signature=signature,
                body=list(body),
            )
        )
        if reply is None or reply.message_type == MessageType.ERROR:
            err = None if reply is None else (reply.error_name, reply.body)
            raise RuntimeError(f"org.bluez.Mock.{member} failed: {err}")
        return reply.body[0] if reply.body else None

    async def ready(self) -> bool:
        """Whether the emulated bluetoothd serves ``org.bluez`` and has the adapter."""
        try:
            await self._call("GetScanState", "s", self.adapter)
        except RuntimeError:
            return False
        return True

    async def ensure_adapter(self, *, monitors: bool = True) -> None:
        """Add the adapter (powered) if the emulated bluetoothd does not have it yet."""
        if not await self.ready():
            await self._call("AddLeAdapter", "sbb", self.adapter, monitors, True)

    async def scan_state(self) -> dict[str, Any]:
        """The adapter's scan state (discovering, monitors, ...) as the template reports it."""
        return dict(json.loads(await self._call("GetScanState", "s", self.adapter)))

    async def wait_scanning(self, timeout_s: float) -> bool:
        """Wait until a client scans: discovery on or an activated monitor; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            st = await self.scan_state()
            if st["discovering"] or any(m["active"] for m in st["monitors"]):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)

    async def advertise(self, rec: AdvRecord) -> str:
        """Put one advertisement on the air; returns the emulated bluetoothd's outcome."""
        from dbus_fast import Variant

        mfr = {cid: Variant("ay", data) for cid, data in rec.mfr.items()}
        try:
            outcome = str(
                await self._call("Advertise", "ssna{qv}", self.adapter, rec.addr, rec.rssi, mfr)
            )
        except RuntimeError as exc:
            outcome = "error"
            if not self.outcomes["error"]:
                _log().warning("bluez_advertise_failed", error=str(exc))
        self.outcomes[outcome] += 1
        return outcome
