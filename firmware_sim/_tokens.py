"""Rider token firmware model (token v1): fobs and phone apps as they really advertise.

A token advertises a v1 payload (:func:`busbell.encode_payload`) in BLE Manufacturer
Specific Data. What differs between devices, and is modelled here:

- **Advertising interval** per device kind: a fob every 500 ms; the phone app in the
  foreground at Android's ``ADVERTISE_MODE_BALANCED`` (250 ms); an Android app in the
  background at ``ADVERTISE_MODE_LOW_POWER`` (1000 ms). Every advertising event is
  delayed by the link layer's random advDelay, uniform 0-10 ms (Core Spec Vol 6 Part B
  4.4.2.2), so tokens never stay in phase with each other or with the scanner.
- **An iPhone app in the background cannot advertise custom data** (Core Bluetooth puts
  a backgrounded app's service UUIDs in an Apple-only overflow area and drops its local
  name; Manufacturer Specific Data is not accepted by ``CBPeripheralManager`` even in the
  foreground), so a rider whose iPhone app is in the background is *silent*:
  :data:`DeviceKind.IOS_BACKGROUND` sends nothing busbell can use. Such riders pay by
  card; the simulator still counts their phone as a BLE advertiser for collisions.
  :data:`DeviceKind.PHONE_FOREGROUND` models an Android app in the foreground.
- **Payload refresh**: a fob computes the payload at every event; a phone app
  refreshes the advertising data on a timer (4 s in the foreground, 8 s in the
  background), so ``tq`` and the rid lag the token's clock by up to that period, and
  the rid changes at the first refresh after the 600-s interval boundary.
- **Clock**: token time = true time + offset + drift (ppm) x time since the last sync.
  Phones sync to the network (offset ~ tens of ms); fobs drift (tens of ppm).
- **Random BLE addresses** that rotate like real devices: phones use a resolvable
  private address re-drawn every ~15 min (Android's default private-address timeout,
  with a random phase, not aligned with the rid); fobs draw a new static random
  address with every rid interval.
- **Flags**: ALIGHT_REQUEST when the rider presses the stop-bell button, held for a few
  seconds; ASSIST for riders who need it; WAIT while waiting at a stop with the app
  open.
- **Battery**: a token can go flat at a given time and then sends nothing.
- **Echo** (byte 23): a phone app that listens to the bus beacons sends, from each
  payload refresh on, the echo its :class:`busbell._echo.EchoTracker` gave at that
  refresh (``TokenDevice.echoes``, filled by :mod:`firmware_sim._beacon`); 0 otherwise.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import math
from dataclasses import dataclass, field

from busbell import RiderKeys, derive_rider_keys, encode_payload

__all__ = ["KIND_PROFILES", "DeviceKind", "KindProfile", "TokenDevice"]


class DeviceKind(enum.Enum):
    """What kind of token a rider carries."""

    FOB = "fob"
    PHONE_FOREGROUND = "phone_fg"
    ANDROID_BACKGROUND = "android_bg"
    IOS_BACKGROUND = "ios_bg"
    """Silent: iOS cannot advertise custom data in the background."""


@dataclass(frozen=True, slots=True)
class KindProfile:
    """Advertising behaviour of a device kind.

    Attributes:
        interval_s: nominal advertising interval.
        refresh_s: how often the payload is recomputed (0: every event).
        addr_rotation_s: address rotation period (0: with every rid interval).
        advertises: whether busbell payloads are sent at all.
    """

    interval_s: float
    refresh_s: float
    addr_rotation_s: float
    advertises: bool


KIND_PROFILES: dict[DeviceKind, KindProfile] = {
    DeviceKind.FOB: KindProfile(0.5, 0.0, 0.0, True),
    DeviceKind.PHONE_FOREGROUND: KindProfile(0.25, 4.0, 900.0, True),
    DeviceKind.ANDROID_BACKGROUND: KindProfile(1.0, 8.0, 900.0, True),
    DeviceKind.IOS_BACKGROUND: KindProfile(1.0, 0.0, 900.0, False),
}

ADV_DELAY_MAX_S = 0.010


def _h(*parts: object) -> bytes:
    return hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=32).digest()


@dataclass(slots=True)
class TokenDevice:
    """One rider token.

    Attributes:
        device_id: stable id (radio links, deterministic draws).
        token_key: the rider's 16-byte secret.
        kind: device kind.
        fleet_keys: UTC day -> fleet key (the simulator derives each rid's ``bk`` from
            these, exactly as the backend would hand it to the token).
        clock_offset_s: token clock minus true time at ``sync_t``.
        drift_ppm: clock rate error.
        sync_t: when the clock was last synced.
        dead_at: true time the battery goes flat (``None``: never).
        flags: sorted ``(t0, t1, flag bits)`` windows in true time (ORed together).
        phase_s: random phase of the refresh and address timers.
        company_id: manufacturer id of the advertisement.
        interval_s: advertising interval instead of the kind's (``None``: the kind's).
        addr_rotation_s: address rotation instead of the kind's: ``0`` a new static
            random address with every rid interval (a privacy-respecting fob or app),
            ``math.inf`` one address for good (``None``: the kind's).
        echoes: payload refresh index (:meth:`refresh_index`) -> byte 23 of the payloads
            of that refresh (a token that listens to bus beacons; missing: 0).
    """

    device_id: str
    token_key: bytes
    kind: DeviceKind
    fleet_keys: dict[int, bytes]
    clock_offset_s: float = 0.0
    drift_ppm: float = 0.0
    sync_t: float = 0.0
    dead_at: float | None = None
    flags: list[tuple[float, float, int]] = field(default_factory=list)
    phase_s: float = 0.0
    company_id: int = 0xFFFF
    interval_s: float | None = None
    addr_rotation_s: float | None = None
    echoes: dict[int, int] = field(default_factory=dict)
    _keys: RiderKeys | None = None
    _cache_key: tuple[int, int, int] = (-1, -1, -1)
    _cache_payload: bytes = b""
    _addr_epoch: int = -(2**62)
    _addr: str = ""
    _flag_t0: list[float] = field(default_factory=list)

    @property
    def adv_interval_s(self) -> float:
        """The nominal advertising interval (the kind's unless overridden)."""
        return self.interval_s if self.interval_s is not None else self.profile.interval_s

    @property
    def profile(self) -> KindProfile:
        """The kind's advertising behaviour."""
        return KIND_PROFILES[self.kind]

    @property
    def keys(self) -> RiderKeys:
        """The derived rid and mac keys."""
        if self._keys is None:
            self._keys = derive_rider_keys(self.token_key)
        return self._keys

    def clock(self, t: float) -> float:
        """The token's own clock at true time ``t``."""
        return t + self.clock_offset_s + self.drift_ppm * 1e-6 * (t - self.sync_t)

    def add_flag(self, t0: float, t1: float, bits: int) -> None:
        """Set flag ``bits`` over the true-time window ``[t0, t1)``."""
        self.flags.append((t0, t1, bits))
        self.flags.sort()
        self._flag_t0 = [f[0] for f in self.flags]

    def flags_at(self, t: float) -> int:
        """The flag bits in effect at true time ``t``."""
        out = 0
        n = bisect.bisect_right(self._flag_t0, t)
        for i in range(n):
            t0, t1, bits = self.flags[i]
            if t0 <= t < t1:
                out |= bits
        return out

    def alive(self, t: float) -> bool:
        """Whether the token sends at true time ``t``."""
        return self.profile.advertises and (self.dead_at is None or t < self.dead_at)

    def refresh_index(self, t: float) -> int:
        """The index of the payload refresh in effect at true time ``t`` (refreshing kinds)."""
        return math.floor((t - self.phase_s) / KIND_PROFILES[self.kind].refresh_s)

    def refresh_time(self, j: int) -> float:
        """The true time of payload refresh ``j`` (refreshing kinds)."""
        return j * KIND_PROFILES[self.kind].refresh_s + self.phase_s

    def _payload_t(self, t: float) -> float:
        """The token time the payload on air at true time ``t`` was computed for."""
        prof = KIND_PROFILES[self.kind]
        if prof.refresh_s > 0.0:
            k = math.floor((t - self.phase_s) / prof.refresh_s)
            return self.clock(k * prof.refresh_s + self.phase_s)
        return self.clock(t)

    def payload(self, t: float) -> bytes:
        """The 24-byte payload on air at true time ``t``."""
        prof = KIND_PROFILES[self.kind]
        echo = 0
        if prof.refresh_s > 0.0:  # as _payload_t, and the refresh's echo
            j = math.floor((t - self.phase_s) / prof.refresh_s)
            tt = self.clock(j * prof.refresh_s + self.phase_s)
            if self.echoes:
                echo = self.echoes.get(j, 0)
        else:
            tt = self.clock(t)
        flags = self.flags_at(t) if self.flags else 0
        key = (math.floor(tt / 4.0), flags, echo)
        if key != self._cache_key:
            day = math.floor(tt / 86400.0)
            self._cache_payload = encode_payload(
                self.keys, tt, fleet_key=self.fleet_keys[day], flags=flags, echo=echo
            )
            self._cache_key = key
        return self._cache_payload

    def address(self, t: float) -> str:
        """The random BLE address in use at true time ``t``."""
        rot = self.addr_rotation_s
        if rot is None:
            rot = KIND_PROFILES[self.kind].addr_rotation_s
        if math.isinf(rot):
            epoch = 0
        elif rot > 0.0:
            epoch = math.floor((t - self.phase_s) / rot)
        else:  # with the rid: the address changes with the payload on air
            epoch = math.floor(self._payload_t(t) / 600.0)
        if epoch != self._addr_epoch:
            raw = bytearray(_h("addr", self.device_id, epoch)[:6])
            # resolvable private address: top bits 01; static random: 11
            static = rot == 0.0 or math.isinf(rot)
            raw[0] = (raw[0] & 0x3F) | (0xC0 if static else 0x40)
            self._addr = ":".join(f"{b:02X}" for b in raw)
            self._addr_epoch = epoch
        return self._addr
