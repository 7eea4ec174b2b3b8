"""Token firmware model: payloads, rid rotation, clock drift, flags, battery, addresses."""

from __future__ import annotations

import math

import pytest

from busbell import (
    TokenFlags,
    TokenRejected,
    TokenVerifier,
    derive_rider_keys,
    interval_of,
    parse_payload,
    rid_for_interval,
    unwrap_tq,
    verify_rtag,
)
from firmware_sim._tokens import KIND_PROFILES, DeviceKind, TokenDevice

T0 = 1_773_100_000.0  # 2026-03-10, 00:26:40 UTC
DAY = int(T0 // 86400)
FLEET = {d: bytes([d % 256]) * 32 for d in range(DAY - 1, DAY + 3)}
KEY = bytes(range(16))


def token(kind: DeviceKind = DeviceKind.FOB, **kw: object) -> TokenDevice:
    return TokenDevice(
        device_id="tok-1", token_key=KEY, kind=kind, fleet_keys=FLEET, sync_t=T0, **kw
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kind", [DeviceKind.FOB, DeviceKind.PHONE_FOREGROUND, DeviceKind.ANDROID_BACKGROUND]
)
def test_payload_verifies_on_the_bus_and_the_backend(kind: DeviceKind) -> None:
    tok = token(kind)
    verifier = TokenVerifier(FLEET)
    keys = derive_rider_keys(KEY)
    for dt in (0.0, 3.3, 599.0, 601.0, 1234.5):
        raw = tok.payload(T0 + dt)
        acc = verifier.verify(raw, T0 + dt)
        assert verify_rtag(acc.payload, keys.mac_key)
        assert acc.payload.rid == rid_for_interval(keys.rid_key, acc.interval)
        assert abs(acc.token_t - (T0 + dt)) <= KIND_PROFILES[kind].refresh_s + 4.0


def test_fob_rid_rotates_exactly_at_the_interval_boundary() -> None:
    tok = token()
    keys = derive_rider_keys(KEY)
    boundary = (interval_of(T0) + 1) * 600.0
    before = parse_payload(tok.payload(boundary - 0.01)).rid
    after = parse_payload(tok.payload(boundary + 0.01)).rid
    assert before == rid_for_interval(keys.rid_key, interval_of(T0))
    assert after == rid_for_interval(keys.rid_key, interval_of(T0) + 1)


def test_phone_rid_rotates_at_the_first_refresh_after_the_boundary() -> None:
    tok = token(DeviceKind.PHONE_FOREGROUND, phase_s=1.5)
    boundary = (interval_of(T0) + 1) * 600.0
    old = parse_payload(tok.payload(boundary - 1.0)).rid
    # the app refreshes every 4 s at phase 1.5: boundary + 1.5 is the first refresh after
    assert parse_payload(tok.payload(boundary + 1.0)).rid == old
    assert parse_payload(tok.payload(boundary + 1.6)).rid != old


def test_clock_offset_and_drift_show_in_tq() -> None:
    tok = token(clock_offset_s=30.0, drift_ppm=100.0)
    t = T0 + 100_000.0  # drift adds 10 s after 1e5 s
    assert tok.clock(t) == pytest.approx(t + 40.0)
    tq = parse_payload(tok.payload(t)).tq
    assert unwrap_tq(tq, t) == pytest.approx((t + 40.0) // 4 * 4)


def test_clock_minutes_off_is_rejected_as_stale() -> None:
    tok = token(clock_offset_s=180.0)
    with pytest.raises(TokenRejected) as exc:
        TokenVerifier(FLEET).verify(tok.payload(T0 + 10), T0 + 10)
    assert exc.value.reason == "stale"


def test_alight_flag_is_held_for_the_window_only() -> None:
    tok = token()
    tok.add_flag(T0 + 10.0, T0 + 15.0, int(TokenFlags.ALIGHT_REQUEST))
    tok.add_flag(T0, T0 + 100.0, int(TokenFlags.ASSIST))
    assert parse_payload(tok.payload(T0 + 9.9)).flags == TokenFlags.ASSIST
    for t in (10.0, 12.0, 14.9):
        assert parse_payload(tok.payload(T0 + t)).flags == (
            TokenFlags.ALIGHT_REQUEST | TokenFlags.ASSIST
        )
    assert parse_payload(tok.payload(T0 + 15.0)).flags == TokenFlags.ASSIST


def test_flat_battery_and_silent_ios() -> None:
    tok = token(dead_at=T0 + 50.0)
    assert tok.alive(T0 + 49.9)
    assert not tok.alive(T0 + 50.0)
    assert not token(DeviceKind.IOS_BACKGROUND).alive(T0)


def test_addresses_rotate_like_devices() -> None:
    fob = token()
    boundary = (interval_of(T0) + 1) * 600.0
    assert fob.address(boundary - 1) != fob.address(boundary + 1)
    assert fob.address(boundary + 1) == fob.address(boundary + 500)
    assert int(fob.address(T0)[:2], 16) >> 6 == 0b11  # static random
    phone = token(DeviceKind.PHONE_FOREGROUND, phase_s=100.0)
    a = phone.address(T0)
    assert int(a[:2], 16) >> 6 == 0b01  # resolvable private address
    changes = sum(phone.address(T0 + s) != phone.address(T0 + s + 1) for s in range(0, 3600, 1))
    assert changes == 4  # every 15 minutes


def test_payload_cache_is_per_tq_step_and_flags() -> None:
    tok = token()
    a = tok.payload(T0 + 0.1)
    assert tok.payload(T0 + 0.2) is a
    tok.add_flag(T0 + 0.3, T0 + 1.0, int(TokenFlags.WAIT))
    assert tok.payload(T0 + 0.4) != a


def test_address_and_interval_overrides() -> None:
    boundary = (interval_of(T0) + 1) * 600.0
    kept = token(DeviceKind.PHONE_FOREGROUND, addr_rotation_s=math.inf)
    assert len({kept.address(T0 + s) for s in range(0, 3600, 7)}) == 1
    assert int(kept.address(T0)[:2], 16) >> 6 == 0b11  # static random
    with_rid = token(DeviceKind.PHONE_FOREGROUND, addr_rotation_s=0.0)
    assert with_rid.address(boundary - 1) != with_rid.address(boundary + 1)
    assert with_rid.address(boundary + 1) == with_rid.address(boundary + 500)
    assert token().adv_interval_s == KIND_PROFILES[DeviceKind.FOB].interval_s
    assert token(interval_s=2.0).adv_interval_s == 2.0
