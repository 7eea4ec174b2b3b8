r"""Rider token v1: key derivation, advertisement payload encode/decode and checks.

The 24-byte payload rides in BLE Manufacturer Specific Data (AD type 0xFF)::

    0      hdr   version << 5 | flags     (version 1; flags bit0 ALIGHT, bit1 ASSIST, bit2 WAIT)
    1-2    tq    floor(t / 4) mod 65536, big-endian
    3-14   rid   AES-128-ECB(rid_key, b"BBRID" + 7 zero bytes + i (4 bytes BE))[:12],
                 i = floor(t / 600)
    15-18  btag  HMAC-SHA256(bk, payload[0:15])[:4],
                 bk = HMAC-SHA256(fleet_key(day), b"BBBK" + rid)[:16]
    19-22  rtag  HMAC-SHA256(mac_key, payload[0:19]) [:4]
    23     echo  the bus-beacon echo (busbell._echo): 0 = none; outside btag and rtag

Everything here is pure and synchronous. :func:`parse_payload` and :class:`TokenVerifier`
raise only :class:`~busbell._errors.TokenRejected` for any input bytes.
"""

from __future__ import annotations

import enum
import hmac
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from busbell._errors import TokenRejected

__all__ = [
    "DEFAULT_COMPANY_ID",
    "DEFAULT_TQ_WINDOW_S",
    "INTERVAL_S",
    "PAYLOAD_LEN",
    "TOKEN_VERSION",
    "AcceptedToken",
    "RiderKeys",
    "TokenFlags",
    "TokenPayload",
    "TokenVerifier",
    "day_of",
    "derive_bk",
    "derive_rider_keys",
    "encode_payload",
    "interval_of",
    "parse_payload",
    "rid_for_interval",
    "tq_of",
    "unwrap_tq",
    "verify_rtag",
]

TOKEN_VERSION = 1
PAYLOAD_LEN = 24
INTERVAL_S = 600
DAY_S = 86400
TQ_STEP_S = 4
TQ_MOD = 65536
DEFAULT_COMPANY_ID = 0xFFFF
DEFAULT_TQ_WINDOW_S = 60.0

_RID_PREFIX = b"BBRID" + bytes(7)
_BK_PREFIX = b"BBBK"
_RESERVED_FLAG_BITS = 0b11000
_HDR_CHECKED = 0b11111000
_HDR_OK = TOKEN_VERSION << 5
"""A structurally valid header: version 1, reserved flag bits clear."""
_SHA256 = "sha256"


class TokenFlags(enum.IntFlag):
    """Header flag bits of a token advertisement."""

    NONE = 0
    ALIGHT_REQUEST = 1
    """Stop bell: the rider wants to get off at the next stop."""
    ASSIST = 2
    """Wheelchair or visual aid: the driver should allow extra time."""
    WAIT = 4
    """A rider at a stop wants this bus to stop."""


@dataclass(frozen=True, slots=True)
class RiderKeys:
    """The keys a rider's ``token_key`` derives, per token v1."""

    rid_key: bytes
    mac_key: bytes


@dataclass(frozen=True, slots=True)
class TokenPayload:
    """A structurally valid v1 payload (nothing verified yet)."""

    flags: TokenFlags
    tq: int
    rid: bytes
    btag: bytes
    rtag: bytes
    echo: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class AcceptedToken:
    """An advertisement the bus accepted: structure, time window and ``btag`` all good.

    Attributes:
        payload: the parsed payload.
        token_t: the token's time reconstructed from ``tq`` (start of its 4-s step).
        interval: the rid interval ``floor(token_t / 600)``.
        day: the UTC day whose fleet key verified ``btag``.
    """

    payload: TokenPayload
    token_t: float
    interval: int
    day: int


def _hkdf(token_key: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(token_key)


def derive_rider_keys(token_key: bytes) -> RiderKeys:
    """Derive ``rid_key`` and ``mac_key`` from a rider's 16-byte ``token_key``.

    Raises:
        ValueError: if ``token_key`` is not 16 bytes.
    """
    if len(token_key) != 16:
        raise ValueError(f"token_key must be 16 bytes, got {len(token_key)}")
    return RiderKeys(
        rid_key=_hkdf(token_key, b"busbell-rid-v1", 16),
        mac_key=_hkdf(token_key, b"busbell-mac-v1", 32),
    )


def interval_of(t: float) -> int:
    """The rid interval number of UNIX time ``t``."""
    return math.floor(t / INTERVAL_S)


def day_of(t: float) -> int:
    """The UTC day number of UNIX time ``t``."""
    return math.floor(t / DAY_S)


def tq_of(t: float) -> int:
    """The 16-bit coarse time ``floor(t / 4) mod 65536``."""
    return math.floor(t / TQ_STEP_S) % TQ_MOD


MAX_BUS_TIME = 2.0**40
"""Bus times at or beyond this (year ~36,800) are not usable (``stale``)."""


def unwrap_tq(tq: int, ref_t: float) -> float:
    """Reconstruct the token's time from ``tq`` as the 4-s step nearest ``ref_t``.

    Returns:
        The UNIX time of the start of the token's 4-second step.
    """
    ref_q = math.floor(ref_t / TQ_STEP_S)
    delta = (tq - ref_q) % TQ_MOD
    if delta >= TQ_MOD // 2:
        delta -= TQ_MOD
    return float((ref_q + delta) * TQ_STEP_S)


def rid_for_interval(rid_key: bytes, interval: int) -> bytes:
    """The 12-byte rid a rider broadcasts during ``interval``."""
    block = _RID_PREFIX + (interval & 0xFFFFFFFF).to_bytes(4, "big")
    enc = Cipher(algorithms.AES(rid_key), modes.ECB()).encryptor()  # noqa: S305 - one block, by contract
    return (enc.update(block) + enc.finalize())[:12]


def derive_bk(fleet_key: bytes, rid: bytes) -> bytes:
    """The 16-byte per-rid bus key ``bk`` under one day's fleet key."""
    return hmac.digest(fleet_key, _BK_PREFIX + rid, _SHA256)[:16]


def encode_payload(
    keys: RiderKeys,
    t: float,
    *,
    fleet_key: bytes | None = None,
    bk: bytes | None = None,
    flags: int = 0,
    echo: int = 0,
) -> bytes:
    """Build the 24-byte advertisement payload a token sends at time ``t``.

    Either ``fleet_key`` (the fleet key of ``day_of(t)``; tests, simulators) or ``bk``
    (what a real token holds, delivered by the backend) must be given.

    Raises:
        ValueError: on flags outside bits 0-2, an echo outside 0-255, or when neither
            key is given.
    """
    if flags & ~0b111 or flags < 0:
        raise ValueError(f"flags must use bits 0-2 only, got {flags:#x}")
    if not 0 <= echo <= 0xFF:
        raise ValueError(f"echo must be one byte, got {echo}")
    rid = rid_for_interval(keys.rid_key, interval_of(t))
    if bk is None:
        if fleet_key is None:
            raise ValueError("encode_payload needs fleet_key or bk")
        bk = derive_bk(fleet_key, rid)
    head = bytes([(TOKEN_VERSION << 5) | flags]) + tq_of(t).to_bytes(2, "big") + rid
    body = head + hmac.digest(bk, head, _SHA256)[:4]
    return body + hmac.digest(keys.mac_key, body, _SHA256)[:4] + bytes((echo,))


def parse_payload(data: object) -> TokenPayload:
    """Check the structure of a payload and split it into fields.

    Raises:
        TokenRejected: ``malformed`` (not 24 bytes, reserved flag bits set) or
            ``wrong_version``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TokenRejected("malformed", f"payload must be bytes, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) != PAYLOAD_LEN:
        raise TokenRejected("malformed", f"payload is {len(raw)} bytes, expected {PAYLOAD_LEN}")
    hdr = raw[0]
    if hdr >> 5 != TOKEN_VERSION:
        raise TokenRejected("wrong_version", f"version {hdr >> 5}")
    if hdr & _RESERVED_FLAG_BITS:
        raise TokenRejected("malformed", "reserved flag bits set")
    return TokenPayload(
        flags=TokenFlags(hdr & 0b111),
        tq=int.from_bytes(raw[1:3], "big"),
        rid=raw[3:15],
        btag=raw[15:19],
        rtag=raw[19:23],
        echo=raw[23],
        raw=raw,
    )


def verify_rtag(payload: TokenPayload | bytes, mac_key: bytes) -> bool:
    """Backend check: does ``rtag`` verify under this rider's ``mac_key``?"""
    raw = payload.raw if isinstance(payload, TokenPayload) else bytes(payload)
    if len(raw) != PAYLOAD_LEN:
        return False
    expected = hmac.digest(mac_key, raw[:19], _SHA256)[:4]
    return hmac.compare_digest(expected, raw[19:23])


class TokenVerifier:
    """The bus's offline acceptance check for token advertisements.

    Args:
        fleet_keys: a mapping from UTC day number to that day's 32-byte fleet key, or a
            callable returning the key or ``None``.
        window_s: accept only when the token's time is within this many seconds of the
            bus's GNSS time.
        bk_cache_size: how many derived ``bk`` values to memoise.
    """

    def __init__(
        self,
        fleet_keys: Mapping[int, bytes] | Callable[[int], bytes | None],
        *,
        window_s: float = DEFAULT_TQ_WINDOW_S,
        bk_cache_size: int = 8192,
    ) -> None:
        if callable(fleet_keys):
            self._key_for: Callable[[int], bytes | None] = fleet_keys
        else:
            self._key_for = fleet_keys.get
        self.window_s = window_s
        self._bk_cache: dict[tuple[int, bytes], bytes] = {}
        self._bk_cache_size = bk_cache_size

    def _bk(self, day: int, rid: bytes) -> bytes | None:
        """Derive and memoise ``rid``'s ``bk`` under ``day``'s fleet key (a cache miss)."""
        fleet_key = self._key_for(day)
        if fleet_key is None:
            return None
        if len(self._bk_cache) >= self._bk_cache_size:
            self._bk_cache.clear()
        bk = self._bk_cache[day, rid] = derive_bk(fleet_key, rid)
        return bk

    def forget_days(self, days: Iterable[int]) -> None:
        """Drop the ``bk`` values derived from these days' fleet keys.

        A key bundle replaced them: without this a rid already seen kept verifying under
        the old key for as long as its ``bk`` stayed memoised.
        """
        gone = set(days)
        for k in [k for k in self._bk_cache if k[0] in gone]:
            del self._bk_cache[k]

    def accept(self, data: object, gnss_t: float) -> tuple[bytes, int, float, int, int]:
        """:meth:`verify` without building its objects: the hot path of the edge pipeline.

        The same checks in the same order, with the same rejections; an accepted payload
        gives ``(rid, interval, token_t, flags, day)`` as :meth:`verify`'s
        :class:`AcceptedToken` would (``flags`` as an int).

        Raises:
            TokenRejected: with the reason, exactly as :meth:`verify`.
        """
        raw = data if type(data) is bytes else parse_payload(data).raw
        hdr = raw[0] if len(raw) == PAYLOAD_LEN else -1
        if hdr & _HDR_CHECKED != _HDR_OK:  # (-1: any length but 24)
            parse_payload(raw)  # raises the reason (malformed, wrong_version)
        if not (math.isfinite(gnss_t) and 0.0 <= gnss_t < MAX_BUS_TIME):
            # found by tests/fuzz: a NaN, infinite or absurd bus time raised ValueError /
            # OverflowError here; no token can be in the window of such a clock
            raise TokenRejected("stale", "bus time is not a usable UNIX time")
        token_t = unwrap_tq((raw[1] << 8) | raw[2], gnss_t)
        if abs(token_t + TQ_STEP_S / 2 - gnss_t) > self.window_s + TQ_STEP_S / 2:
            raise TokenRejected("stale", f"token time {token_t:.0f} vs bus time {gnss_t:.0f}")
        day = math.floor(token_t / DAY_S)
        into_day = token_t - day * DAY_S
        if into_day < self.window_s:
            days: tuple[int, ...] = (day, day - 1)
        elif DAY_S - into_day <= self.window_s + TQ_STEP_S:
            days = (day, day + 1)
        else:
            days = (day,)
        rid = raw[3:15]
        head, btag = raw[:15], raw[15:19]
        cache = self._bk_cache
        any_key = False
        for d in days:
            bk = cache.get((d, rid)) or self._bk(d, rid)
            if bk is None:
                continue
            any_key = True
            if hmac.compare_digest(hmac.digest(bk, head, _SHA256)[:4], btag):
                return rid, math.floor(token_t / INTERVAL_S), token_t, hdr & 0b111, d
        if not any_key:
            raise TokenRejected("no_fleet_key", f"no fleet key for day {day}")
        raise TokenRejected("bad_btag")

    def verify(self, data: object, gnss_t: float) -> AcceptedToken:
        """Accept or reject one advertisement payload at bus time ``gnss_t``.

        Raises:
            TokenRejected: with the reason (``malformed``, ``wrong_version``, ``stale``,
                ``bad_btag``, ``no_fleet_key``).
        """
        _, interval, token_t, _, day = self.accept(data, gnss_t)
        return AcceptedToken(
            payload=parse_payload(data), token_t=token_t, interval=interval, day=day
        )
