"""Live BLE advertisement source: bleak on BlueZ, passive when it can, never fatal.

:class:`BleakSource` scans with bleak and hands every advertisement that carries the
token company id to the sink as a :class:`busbell.AdvRecord` stamped with the injected
clock. It prefers *passive* scanning through a BlueZ advertisement monitor with an
or-pattern on the company id (bleak's ``scanning_mode="passive"``): plain active
discovery leaves the controller's duplicate filter on, which cuts a token down to about
one report every ~10 s. When BlueZ lacks the AdvertisementMonitorManager1 interface
(BlueZ < 5.56, no ``--experimental``, kernel < 5.10) ``mode="auto"`` falls back to
active scanning once and says so in the log.

The source never raises on Bluetooth trouble: a ``BleakError``, a D-Bus error
(``org.bluez.Error.InProgress``, ``NotReady``, adapter gone) or a lost bus is counted
by reason, logged, and the scanner restarts after a jittered exponential backoff. A
watchdog restarts the scanner when nothing at all was heard for
``silence_restart_s``, and a small D-Bus watch restarts it as soon as the adapter is
removed or powered off, bluetoothd leaves the bus or the bus connection drops. See
``docs/ble-host.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from bleak import BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakBluetoothNotAvailableReason,
    BleakDBusError,
    BleakError,
)
from dbus_fast import AuthError, BusType, DBusError, Message, MessageType
from dbus_fast.aio import MessageBus

from busbell import DEFAULT_COMPANY_ID, AdvRecord, get_logger, option
from busbell._mqtt import backoff_delays
from edge._source import AdvertisementSink

__all__ = ["SCANNER_MODES", "BleakSource", "ScannerParams", "ScannerStats", "classify_error"]

SCANNER_MODES = ("auto", "passive", "active")

_BLUEZ = "org.bluez"
_ADAPTER_IFACE = "org.bluez.Adapter1"
_OM_IFACE = "org.freedesktop.DBus.ObjectManager"
_PROPS_IFACE = "org.freedesktop.DBus.Properties"

ScanMode = Literal["passive", "active"]

_IN_PROGRESS_RESET = 3
"""Consecutive ``InProgress`` start failures before bleak's bus connection is reset."""


@dataclass(frozen=True, slots=True)
class ScannerParams:
    """BLE scanner settings (the ``[scanner]`` config section)."""

    mode: str = option(
        "auto",
        doc="auto (passive advertisement monitor, falling back to active discovery when "
        "BlueZ lacks monitor support), passive, or active.",
    )
    adapter: str = option(
        "", doc='Bluetooth adapter, e.g. "hci0"; empty means the first powered adapter.'
    )
    company_id: int = option(
        DEFAULT_COMPANY_ID,
        doc="Manufacturer-data company id of rider tokens (0xFFFF is the test id); "
        "adverts without it are dropped.",
    )
    silence_restart_s: float = option(
        60.0,
        doc="Restart the scanner when no advertisement at all arrived for this long "
        "(0 turns the watchdog off).",
    )
    backoff_initial_s: float = option(0.5, doc="First delay before restarting a failed scanner.")
    backoff_max_s: float = option(30.0, doc="Longest delay between scanner restart attempts.")
    dbus_timeout_s: float = option(
        10.0, doc="Deadline for starting or stopping the scanner over D-Bus."
    )

    def __post_init__(self) -> None:
        if self.mode not in SCANNER_MODES:
            raise ValueError(f"scanner.mode must be one of {', '.join(SCANNER_MODES)}")
        if not 0 <= self.company_id <= 0xFFFF:
            raise ValueError("scanner.company_id must be within 0..65535")
        if self.silence_restart_s < 0:
            raise ValueError("scanner.silence_restart_s must not be negative")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("scanner backoff needs 0 < backoff_initial_s <= backoff_max_s")
        if self.dbus_timeout_s <= 0:
            raise ValueError("scanner.dbus_timeout_s must be positive")
        if self.adapter and ("/" in self.adapter or not self.adapter.isascii()):
            raise ValueError('scanner.adapter must be an adapter name like "hci0"')


@dataclass
class ScannerStats:
    """Counters of one :class:`BleakSource` (read them, never write).

    Attributes:
        mode: the scanning mode in use (``passive``/``active``), ``None`` before the first
            successful start.
        running: whether a scanner is started right now.
        adverts: advertisements handed to the sink.
        ignored: advertisements seen without the token company id (dropped).
        starts: successful scanner starts.
        restarts: restarts after a fault, a silence or a lost adapter.
        silent_restarts: restarts by the silence watchdog.
        errors: failures counted by reason (see :func:`classify_error`).
    """

    mode: str | None = None
    running: bool = False
    adverts: int = 0
    ignored: int = 0
    starts: int = 0
    restarts: int = 0
    silent_restarts: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (for the bus status topic and metrics)."""
        return {
            "mode": self.mode,
            "running": self.running,
            "adverts": self.adverts,
            "ignored": self.ignored,
            "starts": self.starts,
            "restarts": self.restarts,
            "silent_restarts": self.silent_restarts,
            "errors": dict(self.errors),
        }


def classify_error(exc: BaseException) -> str:  # noqa: PLR0911
    """A short snake_case reason for a scanner failure, used as the counter name.

    ``in_progress``, ``not_ready``, ``adapter_missing``, ``powered_off``,
    ``monitor_unsupported``, ``access_denied``, ``bus_unavailable``, ``timeout``,
    ``dbus_error``, ``bleak_error`` or ``unexpected``.
    """
    if isinstance(exc, BleakDBusError):
        name = exc.dbus_error
        if name == "org.bluez.Error.InProgress":
            return "in_progress"
        if name == "org.bluez.Error.NotReady":
            return "not_ready"
        if name in (
            "org.freedesktop.DBus.Error.UnknownObject",
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "org.bluez.Error.DoesNotExist",
        ):
            return "adapter_missing"
        if name in ("org.freedesktop.DBus.Error.AccessDenied", "org.bluez.Error.NotAuthorized"):
            return "access_denied"
        return "dbus_error"
    if isinstance(exc, BleakBluetoothNotAvailableError):
        return {
            BleakBluetoothNotAvailableReason.NO_BLUETOOTH: "adapter_missing",
            BleakBluetoothNotAvailableReason.NO_BLE_CENTRAL_ROLE: "adapter_missing",
            BleakBluetoothNotAvailableReason.POWERED_OFF: "powered_off",
            BleakBluetoothNotAvailableReason.DENIED_BY_SYSTEM: "access_denied",
            BleakBluetoothNotAvailableReason.DENIED_BY_USER: "access_denied",
            BleakBluetoothNotAvailableReason.DENIED_BY_UNKNOWN: "access_denied",
        }.get(exc.reason, "bleak_error")
    if isinstance(exc, BleakError):
        text = str(exc)
        if "passive scanning" in text and "BlueZ" in text:
            return "monitor_unsupported"
        if text.startswith("adapter ") and text.endswith("not found"):
            return "adapter_missing"
        return "bleak_error"
    if isinstance(exc, AuthError):
        return "access_denied"
    if isinstance(exc, DBusError):
        return "dbus_error"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError | EOFError):
        return "bus_unavailable"
    return "unexpected"


class _AdapterWatch:
    """Sets ``lost`` when the adapter goes away (own D-Bus link, so bleak stays unchanged).

    Reasons in ``why``: ``adapter_removed``, ``adapter_powered_off``, ``bluez_gone``
    (bluetoothd left the bus) and ``bus_lost`` (our system-bus connection dropped).
    """

    def __init__(self, adapter_path: str | None) -> None:
        self._path = adapter_path
        self.lost = asyncio.Event()
        self.why = ""
        self._bus: MessageBus | None = None
        self._disconnect_task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        bus = MessageBus(bus_type=BusType.SYSTEM)
        await bus.connect()
        self._bus = bus
        bus.add_message_handler(self._on_message)
        self._disconnect_task = asyncio.create_task(self._on_disconnect(bus))
        rules = [
            "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',"
            f"arg0='{_BLUEZ}'",
            f"type='signal',sender='{_BLUEZ}',interface='{_OM_IFACE}',member='InterfacesRemoved'",
            f"type='signal',sender='{_BLUEZ}',interface='{_PROPS_IFACE}',"
            f"member='PropertiesChanged',arg0='{_ADAPTER_IFACE}'",
        ]
        for rule in rules:
            reply = await bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="AddMatch",
                    signature="s",
                    body=[rule],
                )
            )
            if reply.message_type == MessageType.ERROR:
                raise BleakDBusError(reply.error_name or "unknown", reply.body)

    async def _on_disconnect(self, bus: MessageBus) -> None:
        with contextlib.suppress(Exception):
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        if self._bus is bus and not self.lost.is_set():  # not our own close()
            self.why = "bus_lost"
            self.lost.set()

    def _mine(self, path: str | None) -> bool:
        return path is not None and (self._path is None or path == self._path)

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL or self.lost.is_set():
            return
        if msg.member == "NameOwnerChanged" and msg.body and msg.body[0] == _BLUEZ:
            if not msg.body[2]:  # bluetoothd left the bus (crash or restart)
                self.why = "bluez_gone"
                self.lost.set()
        elif msg.member == "InterfacesRemoved" and msg.interface == _OM_IFACE:
            path, ifaces = msg.body
            if _ADAPTER_IFACE in ifaces and self._mine(path):
                self.why = "adapter_removed"
                self.lost.set()
        elif msg.member == "PropertiesChanged" and msg.interface == _PROPS_IFACE:
            iface, changed, _invalid = msg.body
            powered = changed.get("Powered")
            off = powered is not None and powered.value is False
            if iface == _ADAPTER_IFACE and off and self._mine(msg.path):
                self.why = "adapter_powered_off"
                self.lost.set()

    def close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
        if self._disconnect_task is not None:
            self._disconnect_task.cancel()
            self._disconnect_task = None


class BleakSource:
    """Live advertisements from a BlueZ adapter through bleak.

    Args:
        params: scanner settings (the ``[scanner]`` section).
        clock: the bus's time (GNSS-disciplined UNIX seconds) used to stamp adverts.
        monotonic: monotonic time for the watchdog (injectable for tests).
        rng: random source for the backoff jitter.
        name: the source's name in logs and status.
    """

    def __init__(
        self,
        params: ScannerParams,
        clock: Callable[[], float],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        name: str = "ble",
    ) -> None:
        self.name = name
        self.params = params
        self._clock = clock
        self._monotonic = monotonic
        self._rng = rng or random.Random()
        self._log = get_logger("edge.scanner", source=name, adapter=params.adapter or "default")
        self._mode: ScanMode = "active" if params.mode == "active" else "passive"
        self._last_heard = 0.0
        self._heard = 0
        self.stats = ScannerStats()

    @property
    def mode(self) -> ScanMode:
        """The mode the next (or current) scanner runs in."""
        return self._mode

    def _count(self, reason: str) -> None:
        self.stats.errors[reason] = self.stats.errors.get(reason, 0) + 1

    def _scanner(self, sink: AdvertisementSink) -> BleakScanner:
        cid = self.params.company_id

        def on_advert(device: BLEDevice, adv: AdvertisementData) -> None:
            self._last_heard = self._monotonic()
            self._heard += 1
            data = adv.manufacturer_data
            if cid not in data:
                self.stats.ignored += 1
                return
            rec = AdvRecord(
                self._clock(),
                device.address,
                int(adv.rssi),
                {k: bytes(v) for k, v in data.items()},
            )
            self.stats.adverts += 1
            try:
                sink(rec)
            except Exception:
                self._count("sink_error")
                self._log.exception("scanner_sink_error", addr=device.address)

        bluez: BlueZScannerArgs = {}
        if self.params.adapter:
            bluez["adapter"] = self.params.adapter
        if self._mode == "passive":
            pattern = OrPattern(
                0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, cid.to_bytes(2, "little")
            )
            bluez["or_patterns"] = [pattern]
        return BleakScanner(detection_callback=on_advert, scanning_mode=self._mode, bluez=bluez)

    async def run(self, sink: AdvertisementSink) -> None:
        """Scan until cancelled; faults are counted, logged and followed by a restart."""
        delays = backoff_delays(
            self.params.backoff_initial_s, self.params.backoff_max_s, rng=self._rng
        )
        first = True
        streak = 0  # consecutive in_progress failures
        while True:
            if not first:
                self.stats.restarts += 1
            first = False
            heard_before = self._heard
            try:
                ended = await self._session(sink)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = classify_error(exc)
                self._count(reason)
                if reason == "monitor_unsupported" and self.params.mode == "auto":
                    self._mode = "active"
                    self._log.warning(
                        "scanner_mode_fallback",
                        from_mode="passive",
                        to_mode="active",
                        error=str(exc),
                        hint="BlueZ >= 5.56 with --experimental and Linux >= 5.10 "
                        "are needed for passive scanning; see docs/ble-host.md",
                    )
                    continue
                streak = streak + 1 if reason == "in_progress" else 0
                if streak >= _IN_PROGRESS_RESET and await self._reset_bleak_bus():
                    streak = 0
                delay = next(delays)
                log = self._log.exception if reason == "unexpected" else self._log.warning
                log(
                    "scanner_failed",
                    reason=reason,
                    mode=self._mode,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=round(delay, 3),
                )
                await asyncio.sleep(delay)
                continue
            streak = 0
            if self._heard > heard_before:
                delays = backoff_delays(
                    self.params.backoff_initial_s, self.params.backoff_max_s, rng=self._rng
                )
            if ended == "silent":
                self.stats.silent_restarts += 1
                self._log.warning(
                    "scanner_silent_restart",
                    mode=self._mode,
                    silent_s=self.params.silence_restart_s,
                )
            else:
                self._count(ended)
                delay = next(delays)
                self._log.warning("scanner_interrupted", why=ended, retry_in_s=round(delay, 3))
                await asyncio.sleep(delay)

    async def _reset_bleak_bus(self) -> bool:
        """Drop bleak's D-Bus connection so bluetoothd forgets its discovery session.

        bluetoothd answers ``StartDiscovery`` with ``InProgress`` while the *same*
        connection still holds a session, e.g. after a start timed out once bluetoothd
        had accepted it. That never clears by itself; bluetoothd drops a client's
        sessions when it leaves the bus, and bleak reconnects on the next start. This
        reaches into bleak's manager (private ``_bus``); if that changes it does nothing.
        """
        from bleak.backends.bluezdbus.manager import get_global_bluez_manager

        try:
            manager = await get_global_bluez_manager()
        except Exception:
            return False
        bus = getattr(manager, "_bus", None)
        if bus is None or not hasattr(bus, "disconnect"):
            return False
        bus.disconnect()
        self._count("bus_reset")
        self._log.warning("scanner_bus_reset", after=_IN_PROGRESS_RESET, reason="in_progress")
        return True

    async def _session(self, sink: AdvertisementSink) -> str:
        """Start one scanner and watch it; returns why it should be restarted."""
        p = self.params
        watch = _AdapterWatch(f"/org/bluez/{p.adapter}" if p.adapter else None)
        try:
            async with asyncio.timeout(p.dbus_timeout_s):
                await watch.open()
            scanner = self._scanner(sink)
            async with asyncio.timeout(p.dbus_timeout_s):
                await scanner.start()
            self.stats.starts += 1
            self.stats.running = True
            self.stats.mode = self._mode
            self._last_heard = self._monotonic()
            self._log.info("scanner_started", mode=self._mode, company_id=p.company_id)
            try:
                return await self._watch(watch)
            finally:
                self.stats.running = False
                await self._stop(scanner)
        finally:
            watch.close()

    async def _watch(self, watch: _AdapterWatch) -> str:
        silence = self.params.silence_restart_s
        while True:
            if silence <= 0:
                await watch.lost.wait()
                return watch.why
            left = self._last_heard + silence - self._monotonic()
            if left <= 0:
                return "silent"
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await watch.lost.wait()
                return watch.why

    async def _stop(self, scanner: BleakScanner) -> None:
        try:
            async with asyncio.timeout(self.params.dbus_timeout_s):
                await scanner.stop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # typical after the adapter vanished: StopDiscovery on a missing object
            self._count("stop_failed")
            self._log.info("scanner_stop_failed", error=f"{type(exc).__name__}: {exc}")
        else:
            self._log.info("scanner_stopped", mode=self._mode)
