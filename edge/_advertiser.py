"""Live bus beacon: one BlueZ LE advertisement, kept registered and current, never fatal.

:class:`BeaconAdvertiser` exports an ``org.bluez.LEAdvertisement1`` object on its own
system-bus connection (dbus-fast, as bleak uses) and registers it with the adapter's
``org.bluez.LEAdvertisingManager1`` (``RegisterAdvertisement``): ``Type`` ``broadcast``
(non-connectable), ``ServiceUUIDs`` ``[beacon.service_uuid]`` (none when it is empty),
``ManufacturerData`` ``{company_id: beacon}``, ``MinInterval`` / ``MaxInterval`` and, when
configured, ``TxPower``. What bluetoothd does with it, read in
its ``src/advertising.c`` (5.56 and current):

* it reads the object's properties after ``RegisterAdvertisement`` (``GetManagedObjects``
  on the object's path, then ``Properties.GetAll``) and answers only once the kernel
  took the advertisement; a bad property fails the call with ``org.bluez.Error.Failed``
  ("Failed to parse advertisement."), no instance left with ``NotPermitted``, the same
  object twice with ``AlreadyExists``;
* once registered it watches the object's ``PropertiesChanged`` and re-parses each
  changed property it knows (``ManufacturerData`` among them), then refreshes the
  advertisement in the kernel. A new ``seq`` is therefore one ``PropertiesChanged``
  signal, no re-registration; a change made while the registration was still being
  answered is signalled again once it is (bluetoothd watches only from then on);
* ``MinInterval``, ``MaxInterval`` and ``TxPower`` are read only with ``--experimental``
  in 5.56 (ignored otherwise, not an error) and always in later versions;
* it calls ``Release()`` when it drops the advertisement itself (the adapter removed,
  bluetoothd stopping), and forgets the advertisement when our connection closes.

The advertiser never raises on Bluetooth trouble and never stops the scanner: a failed
registration, a lost adapter (removed or powered off), ``Release()``, bluetoothd leaving
the bus or our connection dropping is counted by reason, logged, and the advertisement
is registered again after a jittered exponential backoff (the scanner's settings). On a
clean stop it unregisters. See ``docs/ble-host.md``.
"""

# No "from __future__ import annotations": dbus-fast reads the D-Bus signatures from the
# annotations, and a deferred "None" return is not one.

import asyncio
import random
from dataclasses import dataclass, field
from typing import Annotated, Any

from dbus_fast import AuthError, BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusInt16, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from busbell import get_logger
from busbell._mqtt import backoff_delays
from edge._beacon import BeaconParams
from edge._ble import ScannerParams, _AdapterWatch

__all__ = ["AD_PATH", "AdvertiserStats", "BeaconAdvertiser", "BeaconUnavailable", "ad_reason"]

AD_PATH = "/org/busbell/beacon0"
"""Where the advertisement object is exported on the advertiser's connection."""

_BLUEZ = "org.bluez"
_ADAPTER_IFACE = "org.bluez.Adapter1"
_MANAGER_IFACE = "org.bluez.LEAdvertisingManager1"
_AD_IFACE = "org.bluez.LEAdvertisement1"
_OM_IFACE = "org.freedesktop.DBus.ObjectManager"
_UNREGISTER_S = 0.5
"""Deadline of the unregistration on a clean stop (bluetoothd also drops the
advertisement when our connection closes right after)."""

_MfrData = Annotated[dict[int, Variant], DBusSignature("a{qv}")]
_Uuids = Annotated[list[str], DBusSignature("as")]


class BeaconUnavailable(Exception):
    """No adapter to advertise on (``reason``: ``adapter_missing``, ``advertising_unsupported``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def ad_reason(exc: BaseException) -> str:  # noqa: PLR0911
    """A short snake_case reason for an advertising failure, used as the counter name.

    ``no_instances``, ``rejected``, ``already_exists``, ``invalid_args``,
    ``adapter_missing``, ``advertising_unsupported``, ``access_denied``, ``timeout``,
    ``bus_unavailable``, ``dbus_error`` or ``unexpected``.
    """
    if isinstance(exc, BeaconUnavailable):
        return exc.reason
    if isinstance(exc, DBusError):
        name = exc.type
        if name == "org.bluez.Error.NotPermitted":  # "Maximum advertisements reached"
            return "no_instances"
        if name == "org.bluez.Error.Failed":  # a property refused, or the kernel refused
            return "rejected"
        if name == "org.bluez.Error.AlreadyExists":
            return "already_exists"
        if name == "org.bluez.Error.InvalidArguments":
            return "invalid_args"
        if name in (
            "org.freedesktop.DBus.Error.UnknownObject",
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "org.bluez.Error.DoesNotExist",
        ):
            return "adapter_missing"
        if name in (
            "org.freedesktop.DBus.Error.UnknownMethod",
            "org.freedesktop.DBus.Error.UnknownInterface",
        ):
            return "advertising_unsupported"
        if name in ("org.freedesktop.DBus.Error.AccessDenied", "org.bluez.Error.NotAuthorized"):
            return "access_denied"
        if name in ("org.freedesktop.DBus.Error.NoReply", "org.freedesktop.DBus.Error.Timeout"):
            return "timeout"
        return "dbus_error"
    if isinstance(exc, AuthError):
        return "access_denied"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError | EOFError):
        return "bus_unavailable"
    return "unexpected"


class _Advertisement(ServiceInterface):
    """The exported ``org.bluez.LEAdvertisement1`` (bluetoothd reads it, never writes)."""

    def __init__(
        self, company_id: int, payload: bytes, params: BeaconParams, advertiser: "BeaconAdvertiser"
    ) -> None:
        super().__init__(_AD_IFACE)
        self.company_id = company_id
        self.payload = payload
        self.params = params
        self._advertiser = advertiser

    @dbus_method()
    def Release(self) -> None:
        """Called by bluetoothd when it dropped the advertisement (adapter gone, stopping)."""
        self._advertiser._on_release()

    @dbus_property(PropertyAccess.READ)
    def Type(self) -> DBusStr:
        """Non-connectable, non-scannable: nobody connects to a bus."""
        return "broadcast"

    @dbus_property(PropertyAccess.READ)
    def ServiceUUIDs(self) -> _Uuids:
        """The beacon's service UUID, which phones scanning in the background filter on.

        An empty list puts no service UUID AD in the advertisement (bluetoothd writes one
        only for the UUIDs it is given).
        """
        return [self.params.service_uuid] if self.params.service_uuid else []

    @dbus_property(PropertyAccess.READ)
    def ManufacturerData(self) -> _MfrData:
        """The beacon under the fleet's company id."""
        return {self.company_id: Variant("ay", self.payload)}

    @dbus_property(PropertyAccess.READ)
    def MinInterval(self) -> DBusUInt32:
        """Shortest advertising interval (ms)."""
        return self.params.min_interval_ms

    @dbus_property(PropertyAccess.READ)
    def MaxInterval(self) -> DBusUInt32:
        """Longest advertising interval (ms)."""
        return self.params.max_interval_ms

    def mfr_changed(self) -> None:
        """Signal the new ``ManufacturerData`` (bluetoothd refreshes the advertisement)."""
        self.emit_properties_changed({"ManufacturerData": self.ManufacturerData})


class _AdvertisementWithTxPower(_Advertisement):
    """The advertisement with a ``TxPower`` request (only when one is configured)."""

    @dbus_property(PropertyAccess.READ)
    def TxPower(self) -> DBusInt16:
        """Requested transmit power (dBm)."""
        assert self.params.tx_power_dbm is not None
        return self.params.tx_power_dbm


@dataclass
class AdvertiserStats:
    """Counters of one :class:`BeaconAdvertiser` (read them, never write).

    Attributes:
        registered: whether bluetoothd holds the advertisement right now.
        adapter: the adapter path of the current (or last) registration.
        seq: the ``seq`` byte advertised now.
        registrations: successful ``RegisterAdvertisement`` calls.
        updates: payload changes signalled to bluetoothd while registered.
        released: ``Release()`` calls from bluetoothd.
        errors: failures and interruptions counted by reason (see :func:`ad_reason`
            and :class:`~edge._ble._AdapterWatch` for ``adapter_removed``,
            ``adapter_powered_off``, ``bluez_gone``, ``bus_lost``; ``released``).
    """

    registered: bool = False
    adapter: str | None = None
    seq: int = 0
    registrations: int = 0
    updates: int = 0
    released: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (for the bus status topic and metrics)."""
        return {
            "registered": self.registered,
            "adapter": self.adapter,
            "seq": self.seq,
            "registrations": self.registrations,
            "updates": self.updates,
            "released": self.released,
            "errors": dict(self.errors),
        }


class BeaconAdvertiser:
    """The bus beacon on the air through BlueZ.

    Args:
        params: the ``[beacon]`` section (intervals, transmit power).
        scanner: the ``[scanner]`` section: adapter, company id, backoff and D-Bus deadline
            are shared with the scanner.
        payload: the beacon to advertise first (:class:`edge._beacon.BeaconState`).
        rng: random source for the backoff jitter.
    """

    def __init__(
        self,
        params: BeaconParams,
        scanner: ScannerParams,
        payload: bytes,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.params = params
        self.scanner = scanner
        self._rng = rng or random.Random()
        cls = _Advertisement if params.tx_power_dbm is None else _AdvertisementWithTxPower
        self._ad = cls(scanner.company_id, payload, params, self)
        self._registered = False
        self._released = asyncio.Event()
        self._log = get_logger("edge.beacon", adapter=scanner.adapter or "default")
        self.stats = AdvertiserStats(seq=payload[-1])

    @property
    def payload(self) -> bytes:
        """The beacon advertised (or to be advertised) now."""
        return self._ad.payload

    def set_payload(self, payload: bytes) -> None:
        """Advertise ``payload`` from now on (a no-op when it is the one advertised)."""
        if payload == self._ad.payload:
            return
        self._ad.payload = payload
        self.stats.seq = payload[-1]
        if self._registered:
            self._ad.mfr_changed()
            self.stats.updates += 1
        self._log.info("beacon_updated", seq=payload[-1], registered=self._registered)

    def health(self) -> dict[str, Any]:
        """The advertiser's state for the status message (with the payload, hex)."""
        return {**self.stats.as_dict(), "payload": self._ad.payload.hex()}

    def _count(self, reason: str) -> None:
        self.stats.errors[reason] = self.stats.errors.get(reason, 0) + 1

    def _on_release(self) -> None:
        self.stats.released += 1
        self._registered = self.stats.registered = False
        self._released.set()

    async def run(self) -> None:
        """Keep the beacon registered until cancelled (then unregister it)."""
        p = self.scanner
        delays = backoff_delays(p.backoff_initial_s, p.backoff_max_s, rng=self._rng)
        while True:
            try:
                why = await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = ad_reason(exc)
                self._count(reason)
                delay = next(delays)
                log = self._log.exception if reason == "unexpected" else self._log.warning
                log(
                    "beacon_failed",
                    reason=reason,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=round(delay, 3),
                )
                await asyncio.sleep(delay)
                continue
            # it was registered: the next failure starts the backoff afresh
            delays = backoff_delays(p.backoff_initial_s, p.backoff_max_s, rng=self._rng)
            self._count(why)
            delay = next(delays)
            self._log.warning("beacon_interrupted", why=why, retry_in_s=round(delay, 3))
            await asyncio.sleep(delay)

    async def _session(self) -> str:
        """Register once and hold the registration; returns why it ended."""
        p = self.scanner
        watch = _AdapterWatch(f"/org/bluez/{p.adapter}" if p.adapter else None)
        bus: MessageBus | None = None
        adapter = ""
        self._released.clear()
        try:
            async with asyncio.timeout(p.dbus_timeout_s):
                await watch.open()
                bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
                bus.export(AD_PATH, self._ad)
                adapter = await self._find_adapter(bus)
                sent = self._ad.payload
                await _call(
                    bus, adapter, _MANAGER_IFACE, "RegisterAdvertisement", "oa{sv}", AD_PATH, {}
                )
            self._registered = self.stats.registered = True
            self.stats.adapter = adapter
            self.stats.registrations += 1
            if self._ad.payload != sent:  # changed while bluetoothd was not watching yet
                self._ad.mfr_changed()
                self.stats.updates += 1
            self._log.info(
                "beacon_registered",
                adapter_path=adapter,
                seq=self._ad.payload[-1],
                company_id=p.company_id,
                service_uuid=self.params.service_uuid or None,
                min_interval_ms=self.params.min_interval_ms,
                max_interval_ms=self.params.max_interval_ms,
                tx_power_dbm=self.params.tx_power_dbm,
            )
            lost = asyncio.create_task(watch.lost.wait())
            released = asyncio.create_task(self._released.wait())
            try:
                await asyncio.wait({lost, released}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
                released.cancel()
            if self._released.is_set():
                self._log.warning("beacon_released", adapter_path=adapter)
                return "released"
            return watch.why
        finally:
            was = self._registered
            self._registered = self.stats.registered = False
            if bus is not None:
                if was and bus.connected:
                    await self._unregister(bus, adapter)
                bus.unexport(AD_PATH, self._ad)
                bus.disconnect()
            watch.close()

    async def _unregister(self, bus: MessageBus, adapter: str) -> None:
        try:
            async with asyncio.timeout(_UNREGISTER_S):
                await _call(bus, adapter, _MANAGER_IFACE, "UnregisterAdvertisement", "o", AD_PATH)
        except Exception as exc:  # (bluetoothd drops it anyway when our connection closes)
            self._log.info("beacon_unregister_failed", error=f"{type(exc).__name__}: {exc}")
        else:
            self._log.info("beacon_unregistered", adapter_path=adapter)

    async def _find_adapter(self, bus: MessageBus) -> str:
        """The adapter to advertise on: the configured one, else the first that can.

        An adapter can advertise when it has ``LEAdvertisingManager1``.

        Raises:
            BeaconUnavailable: no such adapter, or none that can advertise.
        """
        reply = await _call(bus, "/", _OM_IFACE, "GetManagedObjects", "")
        objects: dict[str, dict[str, Any]] = reply[0]
        adapters = sorted(path for path, ifaces in objects.items() if _ADAPTER_IFACE in ifaces)
        if self.scanner.adapter:
            wanted = f"/org/bluez/{self.scanner.adapter}"
            adapters = [a for a in adapters if a == wanted]
        if not adapters:
            raise BeaconUnavailable("adapter_missing", "no Bluetooth adapter")
        for path in adapters:
            if _MANAGER_IFACE in objects[path]:
                return path
        raise BeaconUnavailable(
            "advertising_unsupported", f"{', '.join(adapters)}: no {_MANAGER_IFACE}"
        )


async def _call(
    bus: MessageBus, path: str, interface: str, member: str, signature: str, *body: Any
) -> list[Any]:
    """A method call to bluetoothd; its reply's body.

    Raises:
        dbus_fast.DBusError: the error bluetoothd (or the bus) answered.
    """
    reply = await bus.call(
        Message(
            destination=_BLUEZ,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
        )
    )
    assert reply is not None
    if reply.message_type == MessageType.ERROR:
        text = str(reply.body[0]) if reply.body else ""
        raise DBusError(reply.error_name or "org.freedesktop.DBus.Error.Failed", text, reply)
    return list(reply.body)
