"""Emulated hardware: a BlueZ 5 ``bluetoothd`` that scans for LE advertisements.

A python-dbusmock template. The simulator's live BlueZ path (``busbell sim run
--adv-target bluez``, :mod:`firmware_sim._bluez_feed`) puts scenario advertisements on
the air through it, and the edge's tests drive it directly (they load it through
``tests/edge/bluez_le_template.py``). See docs/ble-host.md and docs/simulator.md.

dbusmock's stock ``bluez5`` template types ``Device1.ManufacturerData`` as ``aa{qv}``,
which bleak cannot read, and its adapters do not scan. This template emulates what an
LE scanner client (bleak) sees of real bluetoothd:

* ``/`` is the ObjectManager; adapters are ``/org/bluez/hciN`` with ``Adapter1``
  (``SetDiscoveryFilter``/``StartDiscovery``/``StopDiscovery`` tracked per client, a
  second ``StartDiscovery`` from the same client fails with ``InProgress`` and
  ``NotReady`` while powered off, as bluetoothd does) and, when asked for,
  ``AdvertisementMonitorManager1`` (``RegisterMonitor``/``UnregisterMonitor``,
  ``SupportedMonitorTypes = ["or_patterns"]``).
* Monitors follow BlueZ's protocol: ``RegisterMonitor(root)`` registers an application
  root; bluetoothd reads the client's ``AdvertisementMonitor1`` objects under that root
  from ``GetManagedObjects`` and ``InterfacesAdded`` signals (bleak exports its monitor
  right after registering), calls ``Activate()`` on each valid one and ``DeviceFound()``
  the first time a matching device is seen.
* ``org.bluez.Mock.Advertise`` puts one advertisement on the air. It reaches D-Bus only
  if the adapter is discovering (active scan) or an activated monitor's or-pattern
  matches it (passive scan; in BlueZ the controller/kernel filters then). A new device
  appears with ``InterfacesAdded``; a known one gets ``PropertiesChanged`` holding only
  the properties whose value changed (bluetoothd does not re-emit equal values), with
  ``ManufacturerData`` typed ``a{qv}`` where each ``v`` holds an ``ay``.
  ``AdvertiseServices`` is the same for an advertisement that also lists service UUIDs
  (the device's ``UUIDs``; or-patterns match on the manufacturer data only).
* Faults: ``FailNext`` (next N calls of a method fail with a given D-Bus error),
  ``AddStaleSession`` (a client holds a discovery session it forgot about),
  ``Wedge`` (the adapter reports nothing until a scan is started again),
  ``RemoveLeAdapter``/``AddLeAdapter`` (hot-unplug, devices removed first as
  bluetoothd does), ``SetPowered``.
* Every adapter has ``LEAdvertisingManager1`` as bluetoothd's ``src/advertising.c``
  has it: ``RegisterAdvertisement(path, options)`` reads the client's
  ``LEAdvertisement1`` properties (``Properties.GetAll`` on that path; no answer, no
  reply, as bluetoothd), parses ``Type``, ``ServiceUUIDs`` (``bt_string_to_uuid``: 16-,
  32- or 128-bit, a 128-bit one on the Bluetooth base UUID taken as 16-bit),
  ``ManufacturerData``, ``Discoverable``, ``MinInterval``/``MaxInterval`` (ms, 20 ms ..
  0xFFFFFF slots, min <= max) and ``TxPower`` (-127..20) like its parsers (the others are
  accepted unread) and fails with ``org.bluez.Error.Failed`` "Failed to parse
  advertisement." on a bad one or on advertising data over 31 bytes as bluetoothd counts
  them (``bt_ad_length``: each UUID list 2 bytes plus its UUIDs, each manufacturer data
  4 plus its bytes; 3 more for the Flags of a ``peripheral`` that is discoverable, none
  for a ``broadcast``; a legacy controller: bluetoothd's ``max_adv_len`` 31),
  ``AlreadyExists`` for the same client and path twice, ``NotPermitted``
  when no instance is left (``SupportedInstances``/``ActiveInstances``, 5 by default,
  ``SetMaxAdvertisements``); once registered it follows the object's
  ``PropertiesChanged`` (a changed property is parsed again; a bad one is ignored, the
  advertisement stays). ``UnregisterAdvertisement`` (``DoesNotExist`` when unknown); a
  client leaving the bus loses its advertisements; removing the adapter calls each
  client's ``Release()`` (no reply). Power off keeps the registrations (bluetoothd does;
  the kernel advertises them again at power on): ``on_air`` says whether it transmits.
* ``GetScanState(adapter)`` returns the scan state as JSON for assertions, and
  ``GetAdvertisingState(adapter)`` the advertisements.

Parameters (JSON, ``--parameters``; optional): ``{"adapter": "hci0", "monitors": true}``
adds that adapter, powered, at load time (without ``adapter`` there is none until
``AddLeAdapter``). Load with ``python -m dbusmock --system --template <this file>``.
"""

# mypy: allow-subclassing-any, allow-untyped-decorators
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import dbus
import dbus.service
from dbusmock import OBJECT_MANAGER_IFACE, mockobject

BUS_NAME = "org.bluez"
MAIN_OBJ = "/"
SYSTEM_BUS = True
IS_OBJECT_MANAGER = True

MOCK_IFACE = "org.bluez.Mock"
ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
MONITOR_MANAGER_IFACE = "org.bluez.AdvertisementMonitorManager1"
MONITOR_IFACE = "org.bluez.AdvertisementMonitor1"
AGENT_MANAGER_IFACE = "org.bluez.AgentManager1"
ADV_MANAGER_IFACE = "org.bluez.LEAdvertisingManager1"
AD_IFACE = "org.bluez.LEAdvertisement1"
ERR_FAILED = "org.bluez.Error.Failed"
MAX_ADV_LEN = 31
"""Legacy advertising data (bluetoothd adds no Flags to a broadcast advertisement)."""
FLAGS_AD_LEN = 3
"""A Flags AD: length, type 0x01, one byte."""
BASE_UUID_TAIL = "-0000-1000-8000-00805f9b34fb"
"""The Bluetooth base UUID after its first 8 hex digits."""

AD_TYPE_MANUFACTURER = 0xFF


def _err(name: str, text: str) -> dbus.exceptions.DBusException:
    return dbus.exceptions.DBusException(text, name=name)


def _plain(v: Any) -> Any:
    """dbus-python value -> JSON-able value."""
    if isinstance(v, dbus.Boolean):
        return bool(v)
    if isinstance(v, dbus.Byte | int):
        return int(v)
    if isinstance(v, str):
        return str(v)
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return repr(v)


def _mfr_variant(mfr: dict[int, bytes]) -> dbus.Dictionary:
    return dbus.Dictionary(
        {
            dbus.UInt16(cid): dbus.Array([dbus.Byte(b) for b in data], signature="y")
            for cid, data in sorted(mfr.items())
        },
        signature="qv",
    )


def _matches(patterns: list[tuple[int, int, bytes]], mfr: dict[int, bytes]) -> bool:
    ads = [(AD_TYPE_MANUFACTURER, cid.to_bytes(2, "little") + data) for cid, data in mfr.items()]
    for start, ad_type, content in patterns:
        for t, payload in ads:
            if t == ad_type and payload[start : start + len(content)] == content:
                return True
    return False


class LeAdapter(mockobject.DBusMockObject):
    """``org.bluez.Adapter1`` with per-client discovery sessions and fault injection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.discovery_clients: set[str] = set()
        self.filters: dict[str, dict[str, Any]] = {}
        self.fail_next: dict[str, tuple[str, int]] = {}
        self.wedged = False
        self.apps: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.watches: dict[str, Any] = {}
        self.counters = {"activated": 0, "device_found_ok": 0, "device_found_err": 0}
        self.ads: dict[tuple[str, str], dict[str, Any]] = {}
        self.ads_pending: set[tuple[str, str]] = set()
        self.max_ads = 5
        self.ad_counters = {"registered": 0, "unregistered": 0, "released": 0, "rejected": 0}

    # --- helpers -------------------------------------------------------------------
    def check_fault(self, method: str) -> None:
        name, count = self.fail_next.get(method, ("", 0))
        if count > 0:
            self.fail_next[method] = (name, count - 1)
            raise _err(name, f"injected failure of {method}")

    def watch_client(self, sender: str) -> None:
        if sender in self.watches:
            return

        def owner_changed(new_owner: str) -> None:
            if not new_owner:
                self.discovery_clients.discard(sender)
                self.filters.pop(sender, None)
                for key in [k for k in self.apps if k[0] == sender]:
                    del self.apps[key]
                self.set_discovering()
                self.drop_ads(sender)
                watch = self.watches.pop(sender, None)
                if watch is not None:
                    watch.cancel()

        self.watches[sender] = self.connection.watch_name_owner(sender, owner_changed)

    def set_discovering(self) -> None:
        on = bool(self.discovery_clients)
        if bool(self.props[ADAPTER_IFACE]["Discovering"]) != on:
            self.props[ADAPTER_IFACE]["Discovering"] = dbus.Boolean(on)
            self.EmitSignal(
                dbus.PROPERTIES_IFACE,
                "PropertiesChanged",
                "sa{sv}as",
                [ADAPTER_IFACE, {"Discovering": dbus.Boolean(on)}, []],
            )

    def active_monitors(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for app in self.apps.values():
            for mpath, mon in app.items():
                if mon["active"]:
                    yield mpath, mon

    def state(self) -> dict[str, Any]:
        monitors = [
            {
                "path": mpath,
                "client": sender,
                "active": mon["active"],
                "patterns": [[s, t, c.hex()] for s, t, c in mon["patterns"]],
                "found": sorted(mon["found"]),
            }
            for (sender, _root), app in self.apps.items()
            for mpath, mon in app.items()
        ]
        return {
            "powered": bool(self.props[ADAPTER_IFACE]["Powered"]),
            "discovering": bool(self.props[ADAPTER_IFACE]["Discovering"]),
            "discovery_clients": len(self.discovery_clients),
            "filters": [_plain(f) for f in self.filters.values()],
            "registered_apps": len(self.apps),
            "monitors": monitors,
            "wedged": self.wedged,
            **self.counters,
        }

    # --- org.bluez.Adapter1 --------------------------------------------------------
    @dbus.service.method(ADAPTER_IFACE, in_signature="a{sv}", sender_keyword="sender")
    def SetDiscoveryFilter(self, discovery_filter: Any, sender: Any = None) -> None:
        self.check_fault("SetDiscoveryFilter")
        self.watch_client(sender)
        if discovery_filter:
            self.filters[sender] = dict(discovery_filter)
        else:
            self.filters.pop(sender, None)

    @dbus.service.method(ADAPTER_IFACE, in_signature="", out_signature="", sender_keyword="sender")
    def StartDiscovery(self, sender: Any = None) -> None:
        self.check_fault("StartDiscovery")
        if not self.props[ADAPTER_IFACE]["Powered"]:
            raise _err("org.bluez.Error.NotReady", "Resource Not Ready")
        if sender in self.discovery_clients:
            raise _err("org.bluez.Error.InProgress", "Operation already in progress")
        self.watch_client(sender)
        self.discovery_clients.add(sender)
        self.wedged = False
        self.set_discovering()

    @dbus.service.method(ADAPTER_IFACE, in_signature="", out_signature="", sender_keyword="sender")
    def StopDiscovery(self, sender: Any = None) -> None:
        self.check_fault("StopDiscovery")
        if not self.props[ADAPTER_IFACE]["Powered"]:
            raise _err("org.bluez.Error.NotReady", "Resource Not Ready")
        if sender not in self.discovery_clients:
            raise _err("org.bluez.Error.Failed", "No discovery started")
        self.discovery_clients.discard(sender)
        self.set_discovering()

    @dbus.service.method(ADAPTER_IFACE, in_signature="o", out_signature="")
    def RemoveDevice(self, path: Any) -> None:
        if path not in mockobject.objects:
            raise _err("org.bluez.Error.DoesNotExist", "Does Not Exist")
        _remove_device(str(path))

    # --- org.bluez.LEAdvertisingManager1 -------------------------------------------
    def ad_instances_changed(self) -> None:
        active = len(self.ads) + len(self.ads_pending)  # (bluetoothd counts its queue)
        changed = {
            "ActiveInstances": dbus.Byte(active),
            "SupportedInstances": dbus.Byte(max(0, self.max_ads - active)),
        }
        self.props[ADV_MANAGER_IFACE].update(changed)
        self.EmitSignal(
            dbus.PROPERTIES_IFACE, "PropertiesChanged", "sa{sv}as", [ADV_MANAGER_IFACE, changed, []]
        )

    def drop_ads(self, sender: str | None = None, *, release: bool = False) -> None:
        """Forget the advertisements of ``sender`` (every client's when ``None``)."""
        keys = [k for k in self.ads if sender is None or k[0] == sender]
        pending = [k for k in self.ads_pending if sender is None or k[0] == sender]
        for key in keys:
            ad = self.ads.pop(key)
            ad["match"].remove()
            if release:  # bluetoothd's client_release: Release() [noreply]
                msg = dbus.lowlevel.MethodCallMessage(key[0], key[1], AD_IFACE, "Release")
                msg.set_no_reply(True)
                self.connection.send_message(msg)
                self.ad_counters["released"] += 1
        self.ads_pending.difference_update(pending)
        if keys or pending:
            self.ad_instances_changed()

    def discoverable(self) -> bool:
        return bool(self.props[ADAPTER_IFACE]["Discoverable"])

    def ad_properties_changed(self, key: tuple[str, str], iface: Any, changed: Any) -> None:
        ad = self.ads.get(key)
        if ad is None or str(iface) != AD_IFACE:
            return
        for name, value in changed.items():
            try:
                trial = _parse_ad(
                    {**ad["props"], str(name): value}, adapter_discoverable=self.discoverable()
                )
            except ValueError:
                continue  # bluetoothd keeps advertising what it had
            ad.update(trial)
            ad["props"][str(name)] = value
            ad["updates"] += 1

    @dbus.service.method(
        ADV_MANAGER_IFACE,
        in_signature="oa{sv}",
        sender_keyword="sender",
        async_callbacks=("ok", "fail"),
    )
    def RegisterAdvertisement(
        self, path: Any, options: Any, sender: Any = None, ok: Any = None, fail: Any = None
    ) -> None:
        key = (str(sender), str(path))
        try:
            self.check_fault("RegisterAdvertisement")
            if key in self.ads or key in self.ads_pending:
                raise _err("org.bluez.Error.AlreadyExists", "Already Exists")
            if len(self.ads) + len(self.ads_pending) >= self.max_ads:
                raise _err("org.bluez.Error.NotPermitted", "Maximum advertisements reached")
        except dbus.exceptions.DBusException as exc:
            fail(exc)
            return
        self.watch_client(sender)
        self.ads_pending.add(key)
        self.ad_instances_changed()
        conn = self.connection

        def got(props: Any) -> None:
            if key not in self.ads_pending:
                return  # the client left (or unregistered) meanwhile
            self.ads_pending.discard(key)
            try:
                ad = _parse_ad(props, adapter_discoverable=self.discoverable())
            except ValueError:
                self.ad_counters["rejected"] += 1
                self.ad_instances_changed()
                fail(_err(ERR_FAILED, "Failed to parse advertisement."))
                return

            def changed(iface: Any, values: Any, _invalidated: Any) -> None:
                self.ad_properties_changed(key, iface, values)

            ad["props"] = dict(props)
            ad["updates"] = 0
            ad["match"] = conn.add_signal_receiver(
                changed,
                "PropertiesChanged",
                dbus.PROPERTIES_IFACE,
                bus_name=key[0],
                path=key[1],
                byte_arrays=True,
            )
            self.ads[key] = ad
            self.ad_counters["registered"] += 1
            self.ad_instances_changed()
            ok()

        # bluetoothd's proxy of the object never appears: the call stays unanswered
        conn.call_async(
            key[0], key[1], dbus.PROPERTIES_IFACE, "GetAll", "s", (AD_IFACE,),
            got, lambda _e: None, byte_arrays=True,
        )  # fmt: skip

    @dbus.service.method(ADV_MANAGER_IFACE, in_signature="o", sender_keyword="sender")
    def UnregisterAdvertisement(self, path: Any, sender: Any = None) -> None:
        self.check_fault("UnregisterAdvertisement")
        key = (str(sender), str(path))
        ad = self.ads.pop(key, None)
        if ad is None and key not in self.ads_pending:
            raise _err("org.bluez.Error.DoesNotExist", "Does Not Exist")
        self.ads_pending.discard(key)
        if ad is not None:
            ad["match"].remove()
        self.ad_counters["unregistered"] += 1
        self.ad_instances_changed()

    def ad_state(self) -> dict[str, Any]:
        powered = bool(self.props[ADAPTER_IFACE]["Powered"])
        return {
            "powered": powered,
            "active_instances": int(self.props[ADV_MANAGER_IFACE]["ActiveInstances"]),
            "supported_instances": int(self.props[ADV_MANAGER_IFACE]["SupportedInstances"]),
            "pending": len(self.ads_pending),
            "advertisements": [
                {
                    "client": sender,
                    "path": path,
                    "type": ad["type"],
                    "service_uuids": ad["service_uuids"],
                    "adv_len": ad["adv_len"],
                    "mfr": {str(cid): data.hex() for cid, data in sorted(ad["mfr"].items())},
                    "min_interval_ms": ad["min_interval_ms"],
                    "max_interval_ms": ad["max_interval_ms"],
                    "tx_power": ad["tx_power"],
                    "updates": ad["updates"],
                    "on_air": powered,
                }
                for (sender, path), ad in sorted(self.ads.items())
            ],
            **self.ad_counters,
        }


class LeAdapterWithMonitors(LeAdapter):
    """An adapter that also has ``org.bluez.AdvertisementMonitorManager1``."""

    @dbus.service.method(MONITOR_MANAGER_IFACE, in_signature="o", sender_keyword="sender")
    def RegisterMonitor(self, root: Any, sender: Any = None) -> None:
        self.check_fault("RegisterMonitor")
        key = (str(sender), str(root))
        if key in self.apps:
            raise _err("org.bluez.Error.AlreadyExists", "Already Exists")
        self.watch_client(sender)
        self.apps[key] = {}
        self.wedged = False
        conn = self.connection

        def interfaces_added(opath: Any, ifaces: Any, **_kw: Any) -> None:
            path = str(opath)
            if key not in self.apps or not (path == key[1] or path.startswith(key[1] + "/")):
                return
            if MONITOR_IFACE in ifaces:
                self.add_monitor(key, path, ifaces[MONITOR_IFACE])

        def interfaces_removed(path: Any, ifaces: Any, **_kw: Any) -> None:
            if key in self.apps and MONITOR_IFACE in ifaces:
                self.apps[key].pop(str(path), None)

        conn.add_signal_receiver(
            interfaces_added, "InterfacesAdded", OBJECT_MANAGER_IFACE, bus_name=sender
        )
        conn.add_signal_receiver(
            interfaces_removed, "InterfacesRemoved", OBJECT_MANAGER_IFACE, bus_name=sender
        )

        def got_objects(objs: Any) -> None:
            for path, ifaces in objs.items():
                if MONITOR_IFACE in ifaces and key in self.apps:
                    self.add_monitor(key, str(path), ifaces[MONITOR_IFACE])

        conn.call_async(
            sender, root, OBJECT_MANAGER_IFACE, "GetManagedObjects", "", (),
            got_objects, lambda _e: None,
        )  # fmt: skip

    def add_monitor(self, key: tuple[str, str], path: str, props: Any) -> None:
        app = self.apps[key]
        if path in app:
            return
        if str(props.get("Type", "")) != "or_patterns" or not props.get("Patterns"):
            return  # bluetoothd ignores invalid monitors
        patterns = [(int(s), int(t), bytes(bytearray(c))) for s, t, c in props["Patterns"]]
        mon: dict[str, Any] = {"patterns": patterns, "active": False, "found": set()}
        app[path] = mon

        def activated() -> None:
            mon["active"] = True
            self.counters["activated"] += 1

        self.connection.call_async(
            key[0], path, MONITOR_IFACE, "Activate", "", (), activated, lambda _e: None
        )

    @dbus.service.method(MONITOR_MANAGER_IFACE, in_signature="o", sender_keyword="sender")
    def UnregisterMonitor(self, root: Any, sender: Any = None) -> None:
        if self.apps.pop((str(sender), str(root)), None) is None:
            raise _err("org.bluez.Error.DoesNotExist", "Does Not Exist")


def _interval_ms(value: Any, name: str) -> int:
    if not isinstance(value, dbus.UInt32):
        raise ValueError(f"{name} must be a uint32")
    slots = int(int(value) / 0.625)
    if not 0x20 <= slots <= 0xFFFFFF:
        raise ValueError(f"{name} out of range")
    return int(value)


def _uuid(text: str) -> tuple[str, int]:
    """The UUID in full (lower case) and its size in bytes, as ``bt_string_to_uuid`` reads it.

    36 characters with dashes at 8, 13, 18 and 23 are a 128-bit UUID (16 bytes; 2 when it is
    on the Bluetooth base UUID), 8 or 10 a 32-bit one, 4 or 6 a 16-bit one (hex, ``0x``
    allowed); anything else fails (``ValueError``).
    """
    hexdigits = set("0123456789abcdefABCDEF")
    if len(text) == 36 and all(text[i] == "-" for i in (8, 13, 18, 23)):
        if not all(c in hexdigits for i, c in enumerate(text) if i not in (8, 13, 18, 23)):
            raise ValueError(f"ServiceUUIDs: {text!r}")
        full = text.lower()
        on_base = full.startswith("0000") and full[8:] == BASE_UUID_TAIL
        return full, 2 if on_base else 16
    digits = text[2:] if text[:2] in ("0x", "0X") else text
    if len(text) not in (4, 6, 8, 10) or not digits or not all(c in hexdigits for c in digits):
        raise ValueError(f"ServiceUUIDs: {text!r}")
    value = int(digits, 16)
    if len(text) in (4, 6):
        return f"{value & 0xFFFF:08x}{BASE_UUID_TAIL}", 2
    return f"{value & 0xFFFFFFFF:08x}{BASE_UUID_TAIL}", 4


def _parse_ad(props: Any, *, adapter_discoverable: bool = False) -> dict[str, Any]:
    """An advertisement as bluetoothd's parsers take it (``ValueError`` where they fail)."""
    ad_type = props.get("Type", "broadcast")  # (bluetoothd's default type is broadcast)
    if not isinstance(ad_type, str) or str(ad_type) not in ("broadcast", "peripheral"):
        raise ValueError("Type")
    raw_uuids = props.get("ServiceUUIDs", [])
    if not isinstance(raw_uuids, list):
        raise ValueError("ServiceUUIDs")
    # (bluetoothd reads the array's strings: an array of anything else adds no UUID)
    uuids = [_uuid(str(u)) for u in raw_uuids if isinstance(u, str)]
    mfr: dict[int, bytes] = {}
    raw = props.get("ManufacturerData", {})
    if not isinstance(raw, dict) or getattr(raw, "signature", "qv") != "qv":
        raise ValueError("ManufacturerData")
    for cid, value in raw.items():
        if isinstance(value, bytes):
            mfr[int(cid)] = bytes(value)
        elif isinstance(value, list) and all(isinstance(b, dbus.Byte) for b in value):
            mfr[int(cid)] = bytes(int(b) for b in value)
        else:
            raise ValueError("ManufacturerData")
    if str(ad_type) == "broadcast" and bool(props.get("Discoverable", False)):
        raise ValueError("Broadcast cannot set flags")
    lo = _interval_ms(props["MinInterval"], "MinInterval") if "MinInterval" in props else 0
    hi = _interval_ms(props["MaxInterval"], "MaxInterval") if "MaxInterval" in props else 0
    if lo > hi:
        raise ValueError("MinInterval must be less than MaxInterval")
    tx = props.get("TxPower")
    if tx is not None and (not isinstance(tx, dbus.Int16) or not -127 <= int(tx) <= 20):
        raise ValueError("TxPower")
    # bt_ad_length: one AD per UUID size present (2 bytes) plus the UUIDs, each
    # manufacturer data 2 + 2 + its bytes; the Flags of a peripheral: in its data when it
    # sets Discoverable, else reserved by calc_max_adv_len when the adapter is discoverable
    size = sum(n for _u, n in uuids) + 2 * len({n for _u, n in uuids})
    size += sum(2 + 2 + len(d) for d in mfr.values())
    if str(ad_type) == "peripheral" and ("Discoverable" in props or adapter_discoverable):
        size += FLAGS_AD_LEN
    if size > MAX_ADV_LEN:
        raise ValueError("Advertising data too long")
    return {
        "type": str(ad_type),
        "service_uuids": [u for u, _n in uuids],
        "adv_len": size,
        "mfr": mfr,
        "min_interval_ms": lo or None,
        "max_interval_ms": hi or None,
        "tx_power": None if tx is None else int(tx),
    }


def _remove_device(path: str) -> None:
    mockobject.objects[path].remove_from_connection()
    del mockobject.objects[path]
    mockobject.objects["/"].EmitSignal(
        OBJECT_MANAGER_IFACE, "InterfacesRemoved", "oas", [dbus.ObjectPath(path), [DEVICE_IFACE]]
    )


def _adapter(name: str) -> LeAdapter:
    obj = mockobject.objects.get("/org/bluez/" + name)
    if not isinstance(obj, LeAdapter):
        raise _err("org.bluez.Mock.NoSuchAdapter", f"no adapter {name}")
    return obj


def load(mock: Any, parameters: Any) -> None:
    mock.AddObject(
        "/org/bluez",
        AGENT_MANAGER_IFACE,
        {},
        [("RegisterAgent", "os", "", ""), ("UnregisterAgent", "o", "", "")],
    )
    if parameters and parameters.get("adapter"):
        AddLeAdapter(mock, str(parameters["adapter"]), bool(parameters.get("monitors", True)), True)


@dbus.service.method(MOCK_IFACE, in_signature="sbb", out_signature="s")
def AddLeAdapter(self: Any, name: str, monitors: bool, powered: bool) -> str:
    """Add adapter ``name`` (``hci0``); ``monitors`` exposes AdvertisementMonitorManager1."""
    path = "/org/bluez/" + name
    props = {
        "Address": dbus.String("00:1A:7D:DA:71:" + f"{len(name):02X}"),
        "AddressType": dbus.String("public"),
        "Name": dbus.String("busbell-mock"),
        "Alias": dbus.String("busbell-mock"),
        "Class": dbus.UInt32(0),
        "Powered": dbus.Boolean(bool(powered)),
        "Discoverable": dbus.Boolean(False),
        "Pairable": dbus.Boolean(False),
        "Discovering": dbus.Boolean(False),
        "UUIDs": dbus.Array([], signature="s"),
        "Roles": dbus.Array(["central", "peripheral"], signature="s"),
    }
    cls = LeAdapterWithMonitors if monitors else LeAdapter
    self.AddObject(path, ADAPTER_IFACE, props, [], mock_class=cls)
    aprops = {
        "ActiveInstances": dbus.Byte(0),
        "SupportedInstances": dbus.Byte(5),
        "SupportedIncludes": dbus.Array(["tx-power", "appearance", "local-name"], signature="s"),
        "SupportedFeatures": dbus.Array([], signature="s"),
        "SupportedCapabilities": dbus.Dictionary(
            {"MaxAdvLen": dbus.Byte(MAX_ADV_LEN), "MaxScnRspLen": dbus.Byte(MAX_ADV_LEN)},
            signature="sv",
        ),
    }
    mockobject.objects[path].AddProperties(ADV_MANAGER_IFACE, aprops)
    ifaces = {ADAPTER_IFACE: props, ADV_MANAGER_IFACE: aprops}
    if monitors:
        mprops = {
            "SupportedMonitorTypes": dbus.Array(["or_patterns"], signature="s"),
            "SupportedFeatures": dbus.Array([], signature="s"),
        }
        mockobject.objects[path].AddProperties(MONITOR_MANAGER_IFACE, mprops)
        ifaces[MONITOR_MANAGER_IFACE] = mprops
    self.EmitSignal(
        OBJECT_MANAGER_IFACE, "InterfacesAdded", "oa{sa{sv}}", [dbus.ObjectPath(path), ifaces]
    )
    return path


@dbus.service.method(MOCK_IFACE, in_signature="s", out_signature="")
def RemoveLeAdapter(self: Any, name: str) -> None:
    """Hot-unplug: remove the adapter's devices, then the adapter (as bluetoothd does)."""
    adapter = _adapter(name)
    for path in [p for p in mockobject.objects if p.startswith(adapter.path + "/")]:
        _remove_device(path)
    adapter.drop_ads(release=True)  # bluetoothd's btd_adv_manager_destroy
    for watch in adapter.watches.values():
        watch.cancel()
    self.RemoveObject(adapter.path)
    self.EmitSignal(
        OBJECT_MANAGER_IFACE,
        "InterfacesRemoved",
        "oas",
        [dbus.ObjectPath(adapter.path), [ADAPTER_IFACE, MONITOR_MANAGER_IFACE, ADV_MANAGER_IFACE]],
    )


@dbus.service.method(MOCK_IFACE, in_signature="sb", out_signature="")
def SetPowered(self: Any, name: str, powered: bool) -> None:
    """Power the adapter on or off (off ends every discovery session and monitor)."""
    adapter = _adapter(name)
    adapter.props[ADAPTER_IFACE]["Powered"] = dbus.Boolean(bool(powered))
    changed = {"Powered": dbus.Boolean(bool(powered))}
    if not powered:
        adapter.discovery_clients.clear()
        adapter.apps.clear()
        adapter.props[ADAPTER_IFACE]["Discovering"] = dbus.Boolean(False)
        changed["Discovering"] = dbus.Boolean(False)
    adapter.EmitSignal(
        dbus.PROPERTIES_IFACE, "PropertiesChanged", "sa{sv}as", [ADAPTER_IFACE, changed, []]
    )


@dbus.service.method(MOCK_IFACE, in_signature="sssu", out_signature="")
def FailNext(self: Any, name: str, method: str, error_name: str, count: int) -> None:
    """The next ``count`` calls of ``method`` on the adapter fail with ``error_name``."""
    _adapter(name).fail_next[str(method)] = (str(error_name), int(count))


@dbus.service.method(MOCK_IFACE, in_signature="ss", out_signature="")
def AddStaleSession(self: Any, name: str, client: str) -> None:
    """Give connection ``client`` a discovery session it does not know about.

    As after a ``StartDiscovery`` whose caller gave up waiting: the client's next
    ``StartDiscovery`` fails with ``InProgress`` until it leaves the bus.
    """
    adapter = _adapter(name)
    adapter.watch_client(str(client))
    adapter.discovery_clients.add(str(client))
    adapter.set_discovering()


@dbus.service.method(MOCK_IFACE, in_signature="s", out_signature="")
def Wedge(self: Any, name: str) -> None:
    """The adapter reports nothing until a client starts a scan (discovery or monitor)."""
    _adapter(name).wedged = True


@dbus.service.method(MOCK_IFACE, in_signature="s", out_signature="s")
def GetScanState(self: Any, name: str) -> str:
    """The adapter's scan state as JSON."""
    return json.dumps(_adapter(name).state())


@dbus.service.method(MOCK_IFACE, in_signature="s", out_signature="s")
def GetAdvertisingState(self: Any, name: str) -> str:
    """The adapter's advertisements (LEAdvertisingManager1) as JSON."""
    return json.dumps(_adapter(name).ad_state())


@dbus.service.method(MOCK_IFACE, in_signature="sy", out_signature="")
def SetMaxAdvertisements(self: Any, name: str, count: int) -> None:
    """How many advertisements the controller takes (bluetoothd's ``max_ads``)."""
    adapter = _adapter(name)
    adapter.max_ads = int(count)
    adapter.ad_instances_changed()


@dbus.service.method(MOCK_IFACE, in_signature="ssna{qv}", out_signature="s")
def Advertise(self: Any, name: str, address: str, rssi: int, mfr: Any) -> str:
    """One LE advertisement on the air; returns what bluetoothd did with it.

    ``added`` / ``changed`` / ``unchanged`` when reported, otherwise ``wedged``,
    ``not_scanning`` (no discovery, no monitor) or ``no_match`` (no monitor pattern
    matches and no discovery is running).
    """
    return _advertise(self, name, address, rssi, mfr, uuids=[])


@dbus.service.method(MOCK_IFACE, in_signature="ssna{qv}as", out_signature="s")
def AdvertiseServices(  # noqa: PLR0917 - a D-Bus method takes positional arguments
    self: Any, name: str, address: str, rssi: int, mfr: Any, uuids: Any
) -> str:
    """:func:`Advertise` of an advertisement that also lists service UUIDs.

    The device's ``UUIDs`` gains them in full (lower case), as bluetoothd adds the UUIDs
    of the advertising data to a device's list (it never drops one there).
    """
    try:
        full = [_uuid(str(u))[0] for u in uuids]
    except ValueError as exc:
        raise _err("org.bluez.Mock.BadUuid", str(exc)) from None
    return _advertise(self, name, address, rssi, mfr, uuids=full)


def _advertise(self: Any, name: str, address: str, rssi: int, mfr: Any, *, uuids: list[str]) -> str:
    adapter = _adapter(name)
    if adapter.wedged:
        return "wedged"
    if not adapter.props[ADAPTER_IFACE]["Powered"]:
        return "not_scanning"
    mfr_new = {int(k): bytes(bytearray(v)) for k, v in mfr.items()}
    monitors = list(adapter.active_monitors())
    hits = [(p, m) for p, m in monitors if _matches(m["patterns"], mfr_new)]
    if not adapter.props[ADAPTER_IFACE]["Discovering"] and not hits:
        return "no_match" if monitors else "not_scanning"

    dpath = adapter.path + "/dev_" + str(address).replace(":", "_").upper()
    dev = mockobject.objects.get(dpath)
    if dev is None:
        props = {
            "Address": dbus.String(address),
            "AddressType": dbus.String("random"),
            "Alias": dbus.String(str(address).replace(":", "-")),
            "Paired": dbus.Boolean(False),
            "Bonded": dbus.Boolean(False),
            "Trusted": dbus.Boolean(False),
            "Blocked": dbus.Boolean(False),
            "LegacyPairing": dbus.Boolean(False),
            "Connected": dbus.Boolean(False),
            "UUIDs": dbus.Array(sorted(set(uuids)), signature="s"),
            "Adapter": dbus.ObjectPath(adapter.path),
            "ServicesResolved": dbus.Boolean(False),
            "RSSI": dbus.Int16(int(rssi)),
            "ManufacturerData": _mfr_variant(mfr_new),
        }
        self.AddObject(dpath, DEVICE_IFACE, props, [])
        mockobject.objects[dpath].mfr = mfr_new
        self.EmitSignal(
            OBJECT_MANAGER_IFACE,
            "InterfacesAdded",
            "oa{sa{sv}}",
            [dbus.ObjectPath(dpath), {DEVICE_IFACE: props}],
        )
        outcome = "added"
    else:
        changed = {}
        if int(dev.props[DEVICE_IFACE]["RSSI"]) != int(rssi):
            changed["RSSI"] = dbus.Int16(int(rssi))
        merged = {**dev.mfr, **mfr_new}  # bluetoothd keeps other company ids it saw
        if merged != dev.mfr:
            dev.mfr = merged
            changed["ManufacturerData"] = _mfr_variant(merged)
        known = {str(u) for u in dev.props[DEVICE_IFACE]["UUIDs"]}
        if not known.issuperset(uuids):
            changed["UUIDs"] = dbus.Array(sorted(known.union(uuids)), signature="s")
        for k, v in changed.items():
            dev.props[DEVICE_IFACE][k] = v
        if changed:
            dev.EmitSignal(
                dbus.PROPERTIES_IFACE, "PropertiesChanged", "sa{sv}as", [DEVICE_IFACE, changed, []]
            )
        outcome = "changed" if changed else "unchanged"

    for mpath, mon in hits:
        if dpath in mon["found"]:
            continue
        mon["found"].add(dpath)
        client = next(s for (s, _r), app in adapter.apps.items() if mpath in app)

        def ok() -> None:
            adapter.counters["device_found_ok"] += 1

        def err(_e: Any) -> None:
            adapter.counters["device_found_err"] += 1

        adapter.connection.call_async(
            client, mpath, MONITOR_IFACE, "DeviceFound", "o", (dbus.ObjectPath(dpath),), ok, err
        )
    return outcome
