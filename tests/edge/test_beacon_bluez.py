"""BeaconAdvertiser against the emulated bluetoothd (LEAdvertisingManager1) on a private bus.

The template (firmware_sim/_bluez_template.py) reads the exported LEAdvertisement1 like
bluetoothd does, follows its PropertiesChanged, and fails bad registrations with
bluetoothd's error names; see tests/edge/test_ble_dbusmock.py for the scanner's side.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

import pytest
from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property
from structlog.testing import capture_logs

from busbell import AdvRecord
from busbell._echo import BEACON_SERVICE_UUID, bus_tag, encode_beacon, parse_beacon
from edge._advertiser import AD_PATH, BeaconAdvertiser
from edge._beacon import BeaconParams
from edge._ble import BleakSource, ScannerParams
from tests.factories.bluez import (
    TOKEN,
    TOKEN_CID,
    BlueZMock,
    eventually,
    eventually_async,
    fast_scanner_params,
)

pytestmark = pytest.mark.dbus

TAG = bus_tag("bus-0042")
HEX_CID = str(TOKEN_CID)


def scanner(**kw: Any) -> ScannerParams:
    return fast_scanner_params(**{"mode": "active", **kw})


class Advertising:
    """A BeaconAdvertiser running in a task."""

    def __init__(self, adv: BeaconAdvertiser) -> None:
        self.adv = adv
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Advertising:
        self.task = asyncio.create_task(self.adv.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def registered(self, n: int = 1) -> None:
        await eventually(
            lambda: self.adv.stats.registrations >= n and self.adv.stats.registered,
            what=f"{n} registration(s)",
        )


async def ads(bluez: BlueZMock) -> list[dict[str, Any]]:
    return list((await bluez.ad_state())["advertisements"])


async def test_registers_a_broadcast_beacon_and_updates_its_seq(bluez: BlueZMock) -> None:
    await bluez.add_adapter(monitors=False)
    adv = BeaconAdvertiser(
        BeaconParams(min_interval_ms=100, max_interval_ms=150, tx_power_dbm=4),
        scanner(),
        encode_beacon(TAG, 0),
    )
    with capture_logs() as logs:
        async with Advertising(adv) as run:
            await run.registered()
            st = await bluez.ad_state()
            assert st["active_instances"] == 1
            assert st["supported_instances"] == 4
            [ad] = st["advertisements"]
            assert ad["path"] == AD_PATH
            assert ad["type"] == "broadcast"
            assert ad["mfr"] == {HEX_CID: encode_beacon(TAG, 0).hex()}
            # the protocol's service UUID by default: 18 + 10 bytes as bluetoothd counts them
            assert ad["service_uuids"] == [BEACON_SERVICE_UUID]
            assert ad["adv_len"] == 28
            assert (ad["min_interval_ms"], ad["max_interval_ms"], ad["tx_power"]) == (100, 150, 4)
            assert ad["on_air"] is True
            # a new seq is one PropertiesChanged, which bluetoothd re-reads: no re-registration
            adv.set_payload(encode_beacon(TAG, 1))
            adv.set_payload(encode_beacon(TAG, 1))  # unchanged: nothing sent
            await eventually_async(
                lambda: _mfr_is(bluez, encode_beacon(TAG, 1)), what="seq 1 advertised"
            )
            adv.set_payload(encode_beacon(TAG, 2))
            await eventually_async(
                lambda: _mfr_is(bluez, encode_beacon(TAG, 2)), what="seq 2 advertised"
            )
            [ad] = await ads(bluez)
            assert ad["updates"] == 2
            assert adv.stats.updates == 2
            assert adv.stats.registrations == 1
            assert adv.health()["payload"] == encode_beacon(TAG, 2).hex()
    st = await bluez.ad_state()  # unregistered on cancel
    assert st["advertisements"] == []
    assert st["unregistered"] == 1
    assert st["active_instances"] == 0
    assert adv.stats.errors == {}
    assert adv.stats.registered is False
    events = [e["event"] for e in logs]
    assert events.count("beacon_registered") == 1
    assert "beacon_unregistered" in events


async def _mfr_is(bluez: BlueZMock, payload: bytes) -> bool:
    return [a["mfr"] for a in await ads(bluez)] == [{HEX_CID: payload.hex()}]


async def test_without_tx_power_none_is_sent(bluez: BlueZMock) -> None:
    await bluez.add_adapter(monitors=False)
    adv = BeaconAdvertiser(BeaconParams(), scanner(), encode_beacon(TAG, 5))
    async with Advertising(adv) as run:
        await run.registered()
        [ad] = await ads(bluez)
    assert ad["tx_power"] is None
    assert (ad["min_interval_ms"], ad["max_interval_ms"]) == (100, 150)
    assert ad["mfr"] == {HEX_CID: encode_beacon(TAG, 5).hex()}


@pytest.mark.parametrize(
    ("service_uuid", "listed", "adv_len"),
    [
        ("", [], 10),  # none: the manufacturer data alone
        ("FEAA", ["0000feaa-0000-1000-8000-00805f9b34fb"], 14),  # a 16-bit one: 4 + 10
        ("01234567-89AB-CDEF-0123-456789ABCDEF", ["01234567-89ab-cdef-0123-456789abcdef"], 28),
    ],
)
async def test_the_service_uuid_is_configurable_or_left_out(
    bluez: BlueZMock, service_uuid: str, listed: list[str], adv_len: int
) -> None:
    await bluez.add_adapter(monitors=False)
    adv = BeaconAdvertiser(
        BeaconParams(service_uuid=service_uuid), scanner(), encode_beacon(TAG, 1)
    )
    async with Advertising(adv) as run:
        await run.registered()
        [ad] = await ads(bluez)
    assert (ad["service_uuids"], ad["adv_len"]) == (listed, adv_len)
    assert ad["mfr"] == {HEX_CID: encode_beacon(TAG, 1).hex()}


async def test_an_advertisement_too_long_with_its_uuid_is_refused(bluez: BlueZMock) -> None:
    # 18 bytes of UUID + 4 + 10 of manufacturer data = 32 > 31: bluetoothd refuses it
    await bluez.add_adapter(monitors=False)
    long_payload = encode_beacon(TAG, 0) + bytes(4)
    adv = BeaconAdvertiser(BeaconParams(), scanner(), long_payload)
    async with Advertising(adv):
        await eventually(lambda: adv.stats.errors.get("rejected", 0) >= 2, what="refusals")
        assert adv.stats.registrations == 0
        assert (await bluez.ad_state())["rejected"] >= 2
    # without the UUID the same payload fits (14 bytes)
    adv = BeaconAdvertiser(BeaconParams(service_uuid=""), scanner(), long_payload)
    async with Advertising(adv) as run:
        await run.registered()
        [ad] = await ads(bluez)
    assert ad["adv_len"] == 14


async def test_the_scanner_hears_beacons_that_list_the_service_uuid(bluez: BlueZMock) -> None:
    # passive scan: the or-pattern is on the manufacturer data, the UUID AD is beside it
    await bluez.add_adapter(monitors=True)
    src = BleakSource(scanner(mode="passive"), lambda: 1_700_000_000.0)
    got: list[AdvRecord] = []
    scan = asyncio.create_task(src.run(got.append))
    beacon = encode_beacon(bus_tag("bus-0099"), 4)
    addr = "C0:00:00:00:00:99"
    try:
        await eventually_async(lambda: _monitor_active(bluez), what="monitor activated")
        sent = await bluez.advertise(addr, -70, {TOKEN_CID: beacon}, uuids=[BEACON_SERVICE_UUID])
        assert sent == "added"
        await eventually(lambda: len(got) == 1, what="the beacon heard")
    finally:
        scan.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scan
    assert got[0].mfr == {TOKEN_CID: beacon}
    assert parse_beacon(got[0].mfr[TOKEN_CID]) is not None
    # the device lists the UUID as bluetoothd does (Device1.UUIDs, in full)
    reply = await bluez.bus.call(
        Message(
            destination="org.bluez",
            path="/",
            interface="org.freedesktop.DBus.ObjectManager",
            member="GetManagedObjects",
        )
    )
    assert reply is not None
    dev = reply.body[0]["/org/bluez/hci0/dev_" + addr.replace(":", "_")]["org.bluez.Device1"]
    assert dev["UUIDs"].value == [BEACON_SERVICE_UUID]
    assert src.stats.errors == {}


async def _monitor_active(bluez: BlueZMock) -> bool:
    st = await bluez.state()
    return any(m["active"] for m in st["monitors"])


async def test_a_change_while_registering_is_signalled_again(bluez: BlueZMock) -> None:
    await bluez.add_adapter(monitors=False)
    adv = BeaconAdvertiser(BeaconParams(), scanner(), encode_beacon(TAG, 0))
    task = asyncio.create_task(adv.run())
    try:
        # set before bluetoothd watches the object: it must still end up advertised
        await asyncio.sleep(0)
        adv.set_payload(encode_beacon(TAG, 3))
        await eventually(lambda: adv.stats.registered, what="registered")
        await eventually_async(lambda: _mfr_is(bluez, encode_beacon(TAG, 3)), what="seq 3")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_reregisters_after_power_cycle_removal_and_bluetoothd_restart(
    bluez: BlueZMock,
) -> None:
    await bluez.add_adapter(monitors=False)
    adv = BeaconAdvertiser(BeaconParams(), scanner(), encode_beacon(TAG, 1))
    with capture_logs() as logs:
        async with Advertising(adv) as run:
            await run.registered()
            # power cycle: bluetoothd keeps the advertisement; the advertiser registers it
            # afresh anyway (the kernel then advertises it again at power on)
            await bluez.set_powered(False)
            await run.registered(2)
            [ad] = await ads(bluez)
            assert ad["on_air"] is False
            await bluez.set_powered(True)
            await eventually_async(lambda: _on_air(bluez), what="on air again")
            assert (await bluez.ad_state())["active_instances"] == 1
            # hot-unplug: bluetoothd calls Release(); re-registered once the adapter is back
            await bluez.remove_adapter()
            await eventually(lambda: adv.stats.released == 1, what="Release()")
            await eventually(
                lambda: adv.stats.errors.get("adapter_missing", 0) >= 1, what="adapter missing"
            )
            await bluez.add_adapter(monitors=False)
            await run.registered(3)
            st = await bluez.ad_state()
            assert [a["mfr"] for a in st["advertisements"]] == [
                {HEX_CID: encode_beacon(TAG, 1).hex()}
            ]
            # bluetoothd crashes (no Release) and comes back
            bluez.kill_bluetoothd()
            await eventually(lambda: adv.stats.errors.get("bluez_gone", 0) == 1, what="gone")
            adv.set_payload(encode_beacon(TAG, 2))  # meanwhile the bus moved on
            await bluez.start_bluetoothd()
            await bluez.add_adapter(monitors=False)
            await run.registered(4)
            await eventually_async(lambda: _mfr_is(bluez, encode_beacon(TAG, 2)), what="seq 2")
    assert adv.stats.errors["adapter_powered_off"] == 1
    assert adv.stats.errors["released"] == 1
    assert adv.stats.errors["bluez_gone"] == 1
    events = [e["event"] for e in logs]
    assert events.count("beacon_registered") == 4
    assert "beacon_released" in events
    assert "beacon_interrupted" in events


async def _on_air(bluez: BlueZMock) -> bool:
    return [a["on_air"] for a in await ads(bluez)] == [True]


async def test_registration_failures_are_retried_and_the_scanner_keeps_scanning(
    bluez: BlueZMock,
) -> None:
    await bluez.add_adapter(monitors=False)
    await bluez.fail_next("RegisterAdvertisement", "org.bluez.Error.Failed", 2)
    await bluez.call("SetMaxAdvertisements", "sy", "hci0", 0)
    adv = BeaconAdvertiser(BeaconParams(), scanner(), encode_beacon(TAG, 0))
    src = BleakSource(scanner(), lambda: 1_700_000_000.0)
    got: list[AdvRecord] = []
    scan = asyncio.create_task(src.run(got.append))
    try:
        with capture_logs() as logs:
            async with Advertising(adv) as run:
                await eventually(lambda: src.stats.starts == 1, what="scanner started")
                await eventually(
                    lambda: adv.stats.errors.get("rejected", 0) == 2, what="two failures"
                )
                await eventually(
                    lambda: adv.stats.errors.get("no_instances", 0) >= 1, what="no instance"
                )
                # the scanner goes on meanwhile
                assert await bluez.advertise("C0:00:00:00:00:01", -60, {TOKEN_CID: TOKEN}) == (
                    "added"
                )
                await eventually(lambda: len(got) == 1, what="a token heard")
                assert adv.stats.registered is False
                await bluez.call("SetMaxAdvertisements", "sy", "hci0", 5)
                await run.registered()
        assert src.stats.errors == {}
        assert src.stats.restarts == 0
    finally:
        scan.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scan
    failed = [e for e in logs if e["event"] == "beacon_failed"]
    assert {e["reason"] for e in failed} == {"rejected", "no_instances"}


async def test_an_adapter_missing_or_without_advertising_is_counted(bluez: BlueZMock) -> None:
    adv = BeaconAdvertiser(BeaconParams(), scanner(), encode_beacon(TAG, 0))
    async with Advertising(adv) as run:
        await eventually(lambda: adv.stats.errors.get("adapter_missing", 0) >= 2)
        await bluez.add_adapter(monitors=False)
        await run.registered()
    assert (await bluez.ad_state())["advertisements"] == []


# --- the emulated bluetoothd alone: what it refuses, with bluetoothd's error names ------

_Mfr = Annotated[dict[int, Variant], DBusSignature("a{qv}")]
_Uuids = Annotated[list[str], DBusSignature("as")]


class _Ad(ServiceInterface):
    """A client's advertisement with the properties a test chooses."""

    def __init__(
        self, ad_type: str, mfr: bytes, lo: int, hi: int, uuids: list[str] | None = None
    ) -> None:
        super().__init__("org.bluez.LEAdvertisement1")
        self.ad_type, self.mfr, self.lo, self.hi = ad_type, mfr, lo, hi
        self.uuids = uuids or []

    @dbus_property(PropertyAccess.READ)
    def Type(self) -> DBusStr:
        return self.ad_type

    @dbus_property(PropertyAccess.READ)
    def ManufacturerData(self) -> _Mfr:
        return {TOKEN_CID: Variant("ay", self.mfr)}

    @dbus_property(PropertyAccess.READ)
    def MinInterval(self) -> DBusUInt32:
        return self.lo

    @dbus_property(PropertyAccess.READ)
    def MaxInterval(self) -> DBusUInt32:
        return self.hi

    @dbus_property(PropertyAccess.READ)
    def ServiceUUIDs(self) -> _Uuids:
        return self.uuids


class _DiscoverableAd(_Ad):
    """An advertisement that sets ``Discoverable`` (bluetoothd then adds Flags)."""

    @dbus_property(PropertyAccess.READ)
    def Discoverable(self) -> DBusBool:
        return False


async def _register(bus: MessageBus, path: str, method: str = "RegisterAdvertisement") -> str:
    body: list[Any] = [path, {}] if method == "RegisterAdvertisement" else [path]
    reply = await bus.call(
        Message(
            destination="org.bluez",
            path="/org/bluez/hci0",
            interface="org.bluez.LEAdvertisingManager1",
            member=method,
            signature="oa{sv}" if method == "RegisterAdvertisement" else "o",
            body=body,
        )
    )
    assert reply is not None
    if reply.message_type == MessageType.ERROR:
        return f"{reply.error_name}: {reply.body[0]}"
    return "ok"


async def test_the_emulated_bluetoothd_refuses_like_bluetoothd(bluez: BlueZMock) -> None:
    await bluez.add_adapter(monitors=False)
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        cases = {
            "/ad/good": _Ad("broadcast", bytes(6), 100, 150),
            "/ad/type": _Ad("beacon", bytes(6), 100, 150),
            "/ad/order": _Ad("broadcast", bytes(6), 200, 150),
            "/ad/fast": _Ad("broadcast", bytes(6), 10, 150),
            "/ad/long": _Ad("broadcast", bytes(28), 100, 150),  # 4 + 28 > 31 bytes
        }
        for path, ad in cases.items():
            bus.export(path, ad)
        failed = "org.bluez.Error.Failed: Failed to parse advertisement."
        assert await _register(bus, "/ad/good") == "ok"
        assert await _register(bus, "/ad/good") == ("org.bluez.Error.AlreadyExists: Already Exists")
        for path in ("/ad/type", "/ad/order", "/ad/fast", "/ad/long"):
            assert await _register(bus, path) == failed, path
        assert await _register(bus, "/ad/none", "UnregisterAdvertisement") == (
            "org.bluez.Error.DoesNotExist: Does Not Exist"
        )
        # a bad change is ignored, the advertisement stays as it was
        good = cases["/ad/good"]
        assert isinstance(good, _Ad)
        good.mfr = bytes(28)
        good.emit_properties_changed({"ManufacturerData": {TOKEN_CID: Variant("ay", good.mfr)}})
        good.mfr = bytes(range(6))
        good.emit_properties_changed({"ManufacturerData": {TOKEN_CID: Variant("ay", good.mfr)}})
        await eventually_async(lambda: _mfr_is(bluez, bytes(range(6))), what="good change")
        st = await bluez.ad_state()
        assert st["rejected"] == 4
        assert st["advertisements"][0]["updates"] == 1
        await bluez.call("SetMaxAdvertisements", "sy", "hci0", 1)
        bus.export("/ad/second", _Ad("broadcast", bytes(6), 100, 150))
        assert await _register(bus, "/ad/second") == (
            "org.bluez.Error.NotPermitted: Maximum advertisements reached"
        )
        assert await _register(bus, "/ad/good", "UnregisterAdvertisement") == "ok"
        assert await _register(bus, "/ad/second") == "ok"
    finally:
        bus.disconnect()
    # a client leaving the bus loses its advertisements
    await eventually_async(lambda: _no_ads(bluez), what="advertisements dropped with their client")


async def _no_ads(bluez: BlueZMock) -> bool:
    st = await bluez.ad_state()
    return bool(st["advertisements"] == [] and st["active_instances"] == 0)


async def test_the_emulated_bluetoothd_parses_and_counts_service_uuids(bluez: BlueZMock) -> None:
    await bluez.add_adapter(monitors=False)
    await bluez.call("SetMaxAdvertisements", "sy", "hci0", 10)
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    u128, base16 = BEACON_SERVICE_UUID, "0000FEAA-0000-1000-8000-00805F9B34FB"
    try:
        cases = {  # path: (advertisement, bluetoothd's data length or None when refused)
            "/ad/u128": (_Ad("broadcast", bytes(9), 100, 150, [u128]), 31),  # 18 + 13
            "/ad/u128_long": (_Ad("broadcast", bytes(10), 100, 150, [u128]), None),  # 32
            "/ad/base": (_Ad("broadcast", bytes(23), 100, 150, [base16]), 31),  # 4 + 27
            "/ad/u16_u32": (_Ad("broadcast", bytes(6), 100, 150, ["180d", "0x12345678"]), 20),
            "/ad/bad": (_Ad("broadcast", bytes(6), 100, 150, [u128[:-1] + "g"]), None),
            "/ad/odd": (_Ad("broadcast", bytes(6), 100, 150, ["12345"]), None),
            # a peripheral setting Discoverable carries 3 bytes of Flags: 28 + 3 fits, 29 not
            "/ad/flags": (_DiscoverableAd("peripheral", bytes(6), 100, 150, [u128]), 31),
            "/ad/flags_long": (_DiscoverableAd("peripheral", bytes(7), 100, 150, [u128]), None),
        }
        for path, (ad, _n) in cases.items():
            bus.export(path, ad)
        for path, (_ad, n) in cases.items():
            want = "ok" if n else "org.bluez.Error.Failed: Failed to parse advertisement."
            assert await _register(bus, path) == want, path
        got = {a["path"]: a for a in (await bluez.ad_state())["advertisements"]}
        assert {p: a["adv_len"] for p, a in got.items()} == {
            p: n for p, (_ad, n) in cases.items() if n
        }
        assert got["/ad/base"]["service_uuids"] == [base16.lower()]
        assert got["/ad/u16_u32"]["service_uuids"] == [
            "0000180d-0000-1000-8000-00805f9b34fb",
            "12345678-0000-1000-8000-00805f9b34fb",
        ]
        # a changed list is parsed again; a bad one is ignored, the advertisement stays
        ad, _n = cases["/ad/u128"]
        ad.uuids = ["nope"]
        ad.emit_properties_changed({"ServiceUUIDs": ad.uuids})
        ad.uuids = []
        ad.emit_properties_changed({"ServiceUUIDs": ad.uuids})
        await eventually_async(
            lambda: _uuids_of(bluez, "/ad/u128", []), what="the UUID list emptied"
        )
    finally:
        bus.disconnect()


async def _uuids_of(bluez: BlueZMock, path: str, uuids: list[str]) -> bool:
    st = await bluez.ad_state()
    return any(a["path"] == path and a["service_uuids"] == uuids for a in st["advertisements"])


def test_dbus_error_type_is_what_the_advertiser_classifies() -> None:
    from edge._advertiser import BeaconUnavailable, ad_reason

    assert ad_reason(DBusError("org.bluez.Error.NotPermitted", "x")) == "no_instances"
    assert ad_reason(DBusError("org.bluez.Error.Failed", "x")) == "rejected"
    assert ad_reason(DBusError("org.freedesktop.DBus.Error.UnknownObject", "x")) == (
        "adapter_missing"
    )
    assert ad_reason(DBusError("org.freedesktop.DBus.Error.UnknownMethod", "x")) == (
        "advertising_unsupported"
    )
    assert ad_reason(BeaconUnavailable("advertising_unsupported", "x")) == (
        "advertising_unsupported"
    )
    assert ad_reason(TimeoutError()) == "timeout"
    assert ad_reason(EOFError()) == "bus_unavailable"
    assert ad_reason(ValueError()) == "unexpected"
