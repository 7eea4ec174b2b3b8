"""Bus beacon v1 and the token's echo (busbell._echo)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from busbell._echo import (
    Beacon,
    EchoTracker,
    bus_tag,
    decode_echo,
    echo_code,
    encode_beacon,
    encode_echo,
    parse_beacon,
    seq_of,
)
from busbell._token import derive_rider_keys, encode_payload, parse_payload

TAG_A = bus_tag("bus-55-01")
TAG_B = bus_tag("bus-55-02")


def test_tag_is_the_sha256_prefix_of_the_vehicle_id() -> None:
    assert hashlib.sha256(b"BBBTbus-55-01").digest()[:4] == TAG_A
    assert TAG_A != TAG_B


def test_beacon_round_trip_and_rejections() -> None:
    data = encode_beacon(TAG_A, 5)
    assert data == b"\xb1" + TAG_A + b"\x05"
    assert parse_beacon(data) == Beacon(tag=TAG_A, seq=5)
    assert parse_beacon(data[:-1]) is None
    assert parse_beacon(b"\x20" + data[1:]) is None
    assert parse_beacon(data[:-1] + b"\x08") is None
    with pytest.raises(ValueError, match="tag"):
        encode_beacon(b"abc", 0)
    with pytest.raises(ValueError, match="seq"):
        encode_beacon(TAG_A, 8)


def test_seq_wraps_at_eight() -> None:
    assert [seq_of(i) for i in (0, 7, 8, 17)] == [0, 7, 0, 1]


@given(st.binary(min_size=4, max_size=4), st.binary(min_size=12, max_size=12))
def test_code_is_1_to_31_and_never_makes_a_zero_echo(tag: bytes, rid: bytes) -> None:
    code = echo_code(tag, rid)
    assert 1 <= code <= 31
    for seq in range(8):
        echo = encode_echo(code, seq)
        assert 0 < echo <= 0xFF
        assert decode_echo(echo) == (code, seq)


def test_codes_depend_on_the_rid() -> None:
    rids = [i.to_bytes(12, "big") for i in range(400)]
    collide = [r for r in rids if echo_code(TAG_A, r) == echo_code(TAG_B, r)]
    # 1 in 31 expected (~13 of 400); never all, never none
    assert 3 <= len(collide) <= 30


def test_zero_is_no_echo_and_bad_values_raise() -> None:
    assert decode_echo(0) is None
    with pytest.raises(ValueError, match="code"):
        encode_echo(0, 0)
    with pytest.raises(ValueError, match="code"):
        encode_echo(32, 0)
    with pytest.raises(ValueError, match="seq"):
        encode_echo(1, 8)


def test_payload_carries_the_echo_outside_its_tags() -> None:
    keys = derive_rider_keys(bytes(16))
    fleet = bytes(32)
    plain = encode_payload(keys, 1_800_000_000.0, fleet_key=fleet)
    echoed = encode_payload(keys, 1_800_000_000.0, fleet_key=fleet, echo=0x2B)
    assert plain[:23] == echoed[:23]
    assert plain[23] == 0
    assert parse_payload(echoed).echo == 0x2B
    with pytest.raises(ValueError, match="echo"):
        encode_payload(keys, 1_800_000_000.0, fleet_key=fleet, echo=256)


def test_tracker_echoes_the_bus_heard_longest_with_the_seq_of_its_start() -> None:
    tr = EchoTracker(min_dbm=-80.0, gap_s=10.0)
    rid = bytes(12)
    assert tr.echo(0.0, rid) == 0
    tr.heard(0.0, Beacon(TAG_A, 3), -60.0)
    tr.heard(5.0, Beacon(TAG_A, 4), -60.0)  # the bus left stop 3: its seq moved on
    tr.heard(6.0, Beacon(TAG_B, 1), -55.0)  # a bus beside, stronger but heard later
    assert tr.echo(6.0, rid) == encode_echo(echo_code(TAG_A, rid), 3)
    assert tr.current(6.0) == (TAG_A, 3, 0.0)


def test_tracker_ignores_weak_beacons_and_restarts_after_a_gap() -> None:
    tr = EchoTracker(min_dbm=-80.0, gap_s=10.0)
    rid = bytes(12)
    tr.heard(0.0, Beacon(TAG_A, 2), -81.0)
    assert tr.echo(0.0, rid) == 0
    tr.heard(1.0, Beacon(TAG_A, 2), -70.0)
    tr.heard(11.0, Beacon(TAG_A, 3), -70.0)  # exactly the gap: still the same stretch
    assert tr.current(11.0) == (TAG_A, 2, 1.0)
    assert tr.echo(21.5, rid) == 0  # not heard for 10.5 s: gone
    tr.heard(22.0, Beacon(TAG_A, 5), -70.0)
    assert tr.current(22.0) == (TAG_A, 5, 22.0)


def test_tracker_rejects_a_non_positive_gap() -> None:
    with pytest.raises(ValueError, match="gap_s"):
        EchoTracker(min_dbm=-80.0, gap_s=0.0)


def test_tracker_keeps_its_latest_time_when_a_beacon_comes_out_of_order() -> None:
    tr = EchoTracker(min_dbm=-80.0, gap_s=10.0)
    tr.heard(0.0, Beacon(TAG_A, 1), -70.0)
    tr.heard(9.0, Beacon(TAG_A, 1), -70.0)
    tr.heard(4.0, Beacon(TAG_A, 1), -70.0)  # a late report: does not pull `last` back
    assert tr.current(18.5) == (TAG_A, 1, 0.0)
