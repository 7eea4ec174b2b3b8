r"""Bus beacon v1 and a token's echo of it (token v1 byte 23).

A bus advertises a short **beacon** (BLE Manufacturer Specific Data, the fleet's company id)::

    0      hdr   0xB1                     (bus beacon, version 1; never a token v1 header)
    1-4    tag   SHA-256(b"BBBT" + vehicle id, UTF-8)[:4]
    5      seq   index in its trip of the stop the bus is serving (doors open) or comes to
                 next, mod 8: 0 before its first stop; k + 1 once it leaves stop k (doors
                 closed, or passed without stopping)

The advertisement also lists :data:`BEACON_SERVICE_UUID` (AD type 0x07, complete list of
128-bit service UUIDs): an iOS app scanning in the background finds only advertisements
carrying a service UUID it names, and cannot filter on manufacturer data; Android's
``ScanFilter`` takes either, the UUID is the filter both take. It says what kind of
advertisement this is; the 6 bytes above stay the beacon. The advertising data bluetoothd
builds, 28 of a legacy advertisement's 31 bytes (docs/ble-host.md; a kernel may put a
3-byte Flags AD before them)::

    11 07 <BEACON_SERVICE_UUID, 16 bytes, little-endian>     service UUIDs, 18 bytes
    09 ff <company id, 2 bytes LE> b1 <tag, 4 bytes> <seq>   manufacturer data, 10 bytes

A token that can listen (a phone app; a fob need not) keeps, for each beacon ``tag`` it
hears at or above a level, since when it has heard that bus without a gap and the ``seq``
the bus sent then. In every advertisement it sends it echoes the bus it has heard the
longest, in byte 23 of the token payload::

    echo = code << 3 | seq_at_start      code = 1 + SHA-256(b"BBEC" + tag + rid)[0] mod 31

``echo = 0`` means "no echo" (a token that does not listen, or hears no bus): token v1
tokens sent 0 from the start, so old tokens remain valid. The code depends on the rid,
so two buses whose codes collide for one rider (1 in 31) do not collide for the next
rid or the next rider. Byte 23 is outside ``btag`` and ``rtag``: a receiver treats it as
evidence, never as proof.

Everything here is pure and synchronous: the simulator and a token's firmware or app run
:class:`EchoTracker`; the bus decodes with :func:`decode_echo` and compares the code
with :func:`echo_code` of its own tag.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = [
    "BEACON_HDR",
    "BEACON_LEN",
    "BEACON_SERVICE_UUID",
    "SEQ_MOD",
    "Beacon",
    "EchoTracker",
    "bus_tag",
    "decode_echo",
    "echo_code",
    "encode_beacon",
    "encode_echo",
    "parse_beacon",
    "seq_of",
]

BEACON_HDR = 0xB1
BEACON_LEN = 6
BEACON_SERVICE_UUID = "5da9b88e-9f28-42a5-b69d-b749ded59a08"
"""The 128-bit service UUID a bus beacon advertises (random, drawn once for busbell)."""
SEQ_MOD = 8
_CODES = 31
_TAG_PREFIX = b"BBBT"
_CODE_PREFIX = b"BBEC"


@dataclass(frozen=True, slots=True)
class Beacon:
    """A parsed bus beacon."""

    tag: bytes
    seq: int


def bus_tag(vehicle_id: str) -> bytes:
    """The 4-byte beacon tag of a vehicle id (public: a bus is no secret)."""
    return hashlib.sha256(_TAG_PREFIX + vehicle_id.encode("utf-8")).digest()[:4]


def seq_of(stop_index: int) -> int:
    """The beacon ``seq`` of a stop index in the trip (0-based)."""
    return stop_index % SEQ_MOD


def encode_beacon(tag: bytes, seq: int) -> bytes:
    """The 6-byte beacon payload.

    Raises:
        ValueError: on a tag that is not 4 bytes or a seq outside 0-7.
    """
    if len(tag) != 4:
        raise ValueError(f"beacon tag must be 4 bytes, got {len(tag)}")
    if not 0 <= seq < SEQ_MOD:
        raise ValueError(f"beacon seq must be 0-{SEQ_MOD - 1}, got {seq}")
    return bytes((BEACON_HDR,)) + tag + bytes((seq,))


def parse_beacon(data: bytes) -> Beacon | None:
    """The beacon in ``data``, or None when ``data`` is not a v1 bus beacon."""
    if len(data) != BEACON_LEN or data[0] != BEACON_HDR or data[5] >= SEQ_MOD:
        return None
    return Beacon(tag=bytes(data[1:5]), seq=data[5])


def echo_code(tag: bytes, rid: bytes) -> int:
    """The 5-bit echo code (1-31) of bus ``tag`` for a token broadcasting ``rid``."""
    return 1 + hashlib.sha256(_CODE_PREFIX + tag + rid).digest()[0] % _CODES


def encode_echo(code: int, seq: int) -> int:
    """Byte 23 for an echo of ``code`` (1-31) with the ``seq`` heard at its start.

    Raises:
        ValueError: on a code outside 1-31 or a seq outside 0-7.
    """
    if not 1 <= code <= _CODES:
        raise ValueError(f"echo code must be 1-{_CODES}, got {code}")
    if not 0 <= seq < SEQ_MOD:
        raise ValueError(f"echo seq must be 0-{SEQ_MOD - 1}, got {seq}")
    return code << 3 | seq


def decode_echo(echo: int) -> tuple[int, int] | None:
    """``(code, seq)`` of byte 23, or None for 0 (no echo)."""
    if echo == 0:
        return None
    return echo >> 3, echo & (SEQ_MOD - 1)


@dataclass(slots=True)
class _Heard:
    since: float
    last: float
    seq_at_start: int


class EchoTracker:
    """What a listening token keeps of the bus beacons it hears (sans-I/O).

    Feed every beacon heard with :meth:`heard`; ask :meth:`echo` for byte 23 when sending.

    Args:
        min_dbm: beacons heard weaker than this are ignored.
        gap_s: a bus not heard (at ``min_dbm`` or more) for longer than this starts afresh.
    """

    def __init__(self, *, min_dbm: float, gap_s: float) -> None:
        if gap_s <= 0:
            raise ValueError(f"gap_s must be positive, got {gap_s}")
        self._min_dbm = min_dbm
        self._gap_s = gap_s
        self._heard: dict[bytes, _Heard] = {}

    def heard(self, t: float, beacon: Beacon, rssi_dbm: float) -> None:
        """A beacon received at time ``t`` (the token's clock) at ``rssi_dbm``."""
        if rssi_dbm < self._min_dbm:
            return
        h = self._heard.get(beacon.tag)
        if h is None or t - h.last > self._gap_s:
            self._heard[beacon.tag] = _Heard(since=t, last=t, seq_at_start=beacon.seq)
        elif t > h.last:
            h.last = t

    def current(self, t: float) -> tuple[bytes, int, float] | None:
        """``(tag, seq_at_start, since)`` of the bus heard longest without a gap at ``t``."""
        for tag in [tag for tag, h in self._heard.items() if t - h.last > self._gap_s]:
            del self._heard[tag]
        if not self._heard:
            return None
        tag, h = min(self._heard.items(), key=lambda kv: (kv[1].since, kv[0]))
        return tag, h.seq_at_start, h.since

    def echo(self, t: float, rid: bytes) -> int:
        """Byte 23 of an advertisement sent at ``t`` with ``rid``: 0 when no bus is heard."""
        cur = self.current(t)
        if cur is None:
            return 0
        tag, seq, _since = cur
        return encode_echo(echo_code(tag, rid), seq)
