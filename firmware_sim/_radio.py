"""BLE radio model: what a bus's scanner would report for one rider-token advertisement.

The model is statistical, synchronous and deterministic: every random number comes from
the injected :class:`random.Random` (per-sample draws) or from a keyed hash of a salt
drawn from it (per-device and per-link static draws, so they do not depend on the order
in which links are first used). The same seed and the same calls give the same numbers.

Received power of one advertising packet on the channel the scanner listens to::

    P = EIRP + G_rx - PL(1 m) - 10 n log10(d) + S(t) - L_place - [L_shell] + F + O_dev + O_scan

``n`` and the shadowing ``S`` (a first-order Gauss-Markov process per link, in dB) depend
on whether the transmitter is inside the bus; ``L_place`` is the loss of the carrier's
placement (hand, pocket, bag, ...), ``L_shell`` the bus body's penetration loss (outside
only), ``F`` the small-scale fading (Rician inside, Rayleigh outside, i.i.d. per packet),
``O_dev``/``O_scan`` static per-device and per-scanner calibration offsets. A packet is
reported, as an integer dBm, when the scanner listens at that time (scan window), it did
not collide with another advertiser's packet (unslotted ALOHA per advertising channel),
or did but was ``capture_db`` stronger than the packets it overlapped (capture), and
``P`` is at or above the scanner's sensitivity. Parameters and their sources are in
``docs/radio.md``.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import math
import random
import statistics
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "BLE_1M_ADV_AIRTIME_S",
    "DEFAULT_PARAMS",
    "IN_BUS",
    "OUTSIDE",
    "LinkState",
    "Loss",
    "Placement",
    "PropagationEnv",
    "RadioChannel",
    "RadioParams",
    "RadioStats",
    "collision_probability",
    "expected_rssi",
    "fading_moments_db",
    "reference_path_loss_db",
]

_MAX_OVERLAPS = 64
"""Overlapping packets counted at most (their number has mean ``2 G``, a few at most)."""

BLE_1M_ADV_AIRTIME_S = 376e-6
"""Air time of a legacy advertising packet with 31 bytes of AdvData on the LE 1M PHY.

Preamble 1 + access address 4 + PDU header 2 + AdvA 6 + AdvData 31 + CRC 3 = 47 bytes
= 376 bits = 376 us (Bluetooth Core Specification v5.x, Vol 6, Part B, 2.1 and 2.3).
"""

_TABLE_SIZE = 8192
"""Entries of the inverse-CDF tables used to draw normal and fading variates."""

_HCI_RSSI_MIN = -127
_HCI_RSSI_MAX = 20


class Placement(enum.Enum):
    """Where the rider carries the token; selects a body/bag loss distribution."""

    FREE = "free"
    """No body nearby (a fob lying on a seat, a test rig): no placement loss."""
    IN_HAND = "in_hand"
    """Phone held in the hand (hand grip loss, sometimes the rider's own body)."""
    FOB_ON_LANYARD = "fob_on_lanyard"
    """Fob or card worn on the chest: the body shadows it for about half the bearings."""
    POCKET = "pocket"
    """Phone or fob in a trouser or jacket pocket, against the body."""
    BAG_DEEP = "bag_deep"
    """Phone deep in a bag or backpack, among its contents, next to the body."""


@dataclass(frozen=True, slots=True)
class Loss:
    """A normally distributed loss in dB, drawn once per link (a static geometry).

    Attributes:
        mean_db: Mean loss in dB (positive weakens the signal).
        std_db: Standard deviation in dB across links.
    """

    mean_db: float
    std_db: float


@dataclass(frozen=True, slots=True)
class PropagationEnv:
    """Large- and small-scale propagation parameters of one environment.

    Attributes:
        path_loss_exponent: ``n`` of the log-distance law beyond 1 m.
        shadowing_std_db: Standard deviation of the log-normal shadowing ``S`` in dB.
        rician_k_db: Rician K-factor of the small-scale fading in dB; ``None`` is
            Rayleigh fading (no dominant path).
        decorrelation_distance_m: Distance over which the shadowing correlation falls to
            1/e (Gudmundson's exponential model).
        decorrelation_time_s: Time over which the shadowing correlation falls to 1/e
            when nothing moves the distance: bodies moving around the rider, the rider
            turning, the bus filling.
    """

    path_loss_exponent: float
    shadowing_std_db: float
    rician_k_db: float | None
    decorrelation_distance_m: float
    decorrelation_time_s: float


IN_BUS = PropagationEnv(
    path_loss_exponent=1.73,
    shadowing_std_db=3.0,
    rician_k_db=7.0,
    decorrelation_distance_m=10.0,
    decorrelation_time_s=5.0,
)
"""Token inside the bus, scanner inside: line of sight in a reflective metal cabin.

3GPP TR 38.901 InH-Office LOS: PL slope 17.3 dB/decade, sigma_SF 3 dB, K 7 dB, shadow
correlation distance 10 m. See ``docs/radio.md``.
"""

OUTSIDE = PropagationEnv(
    path_loss_exponent=2.1,
    shadowing_std_db=4.0,
    rician_k_db=None,
    decorrelation_distance_m=10.0,
    decorrelation_time_s=5.0,
)
"""Token outside the bus (at a stop, on the pavement), scanner inside.

3GPP TR 38.901 UMi-Street Canyon LOS: PL slope 21 dB/decade, sigma_SF 4 dB; Rayleigh
fading because the signal reaches the scanner through windows, doors and the shell with
no dominant path. The shell's loss is :attr:`RadioParams.shell_loss`.
"""


def _default_placement_loss() -> Mapping[Placement, Loss]:
    return MappingProxyType(
        {
            Placement.FREE: Loss(0.0, 0.0),
            Placement.IN_HAND: Loss(4.0, 3.0),
            Placement.FOB_ON_LANYARD: Loss(6.0, 4.0),
            Placement.POCKET: Loss(10.0, 5.0),
            Placement.BAG_DEEP: Loss(15.0, 6.0),
        }
    )


@dataclass(frozen=True)
class RadioParams:
    """All parameters of the radio model, with defaults from published figures.

    Every default is justified in ``docs/radio.md``.

    Attributes:
        tx_eirp_dbm: Nominal radiated power of a token (phone at Android
            ``TX_POWER_HIGH`` = +1 dBm conducted, about -6 dB handset antenna
            efficiency).
        rx_antenna_gain_dbi: Scanner antenna gain minus cable/enclosure loss.
        frequency_hz: Carrier used for the 1 m reference loss (middle of the band).
        inside: Propagation for a token inside the bus.
        outside: Propagation for a token outside the bus.
        shell_loss: Bus-body penetration loss for a token outside, doors closed.
        shell_loss_door_open: Penetration loss for a token outside while a passenger
            door is open (an aperture in the shell; engineering estimate).
        placement_loss: Loss distribution per :class:`Placement`.
        device_offset_std_db: Spread of the static per-token radiated-power offset
            (phone models and fobs differ by several dB).
        scanner_offset_std_db: Spread of the static per-scanner RSSI offset (0: the
            scanners are calibrated at installation).
        sensitivity_dbm: Weakest packet the scanner decodes; packets below are lost.
        scan_interval_s: Scanner's scan interval (it changes channel every interval).
        scan_window_s: Time per interval the scanner listens (<= the interval).
        packet_airtime_s: Air time of one advertising packet.
        adv_delay_mean_s: Mean of the random 0-10 ms advDelay added to every
            advertising interval by the link layer.
        min_distance_m: Distances below this are clamped (near field, no meaning).
        capture_db: Co-channel rejection of the scanner's receiver (capture): a packet
            that overlaps others is still decoded when its power is at least this far
            above the sum of theirs (datasheets: 8.7-9 dB typical; the Core
            Specification requires 21 dB or better). ``math.inf``: no capture, any
            overlap loses the packet. Applies where the world tells the scanner the
            levels of the advertisers around it (:meth:`RadioChannel.set_crowd`).
    """

    tx_eirp_dbm: float = -5.0
    rx_antenna_gain_dbi: float = 0.0
    frequency_hz: float = 2.44e9
    inside: PropagationEnv = IN_BUS
    outside: PropagationEnv = OUTSIDE
    shell_loss: Loss = Loss(9.0, 5.0)
    shell_loss_door_open: Loss = Loss(3.0, 3.0)
    placement_loss: Mapping[Placement, Loss] = field(default_factory=_default_placement_loss)
    device_offset_std_db: float = 3.0
    scanner_offset_std_db: float = 0.0
    sensitivity_dbm: float = -95.0
    scan_interval_s: float = 0.01125
    scan_window_s: float = 0.01125
    packet_airtime_s: float = BLE_1M_ADV_AIRTIME_S
    adv_delay_mean_s: float = 0.005
    min_distance_m: float = 0.5
    capture_db: float = 9.0

    def __post_init__(self) -> None:
        """Validate the parameters.

        Raises:
            ValueError: A parameter is out of its domain.
        """
        if not 0.0 < self.scan_window_s <= self.scan_interval_s:
            raise ValueError("need 0 < scan_window_s <= scan_interval_s")
        if self.min_distance_m <= 0.0 or self.frequency_hz <= 0.0:
            raise ValueError("min_distance_m and frequency_hz must be positive")
        if self.packet_airtime_s <= 0.0 or self.adv_delay_mean_s < 0.0:
            raise ValueError("packet_airtime_s must be positive, adv_delay_mean_s >= 0")
        if not self.capture_db >= 0.0:
            raise ValueError("capture_db must be >= 0 (math.inf: no capture)")
        for env in (self.inside, self.outside):
            if env.decorrelation_distance_m <= 0.0 or env.decorrelation_time_s <= 0.0:
                raise ValueError("decorrelation distance and time must be positive")
        missing = set(Placement) - set(self.placement_loss)
        if missing:
            raise ValueError(f"placement_loss lacks {sorted(p.value for p in missing)}")

    def expected_rssi(
        self,
        distance_m: float,
        inside_bus: bool,
        placement: Placement,
        *,
        door_open: bool = False,
    ) -> float:
        """Mean RSSI in dBm that a nominal token and scanner would report.

        The mean is over shadowing, fading, placement, shell and device offsets (all
        zero-mean except the losses and the fading's log-mean), before the sensitivity
        floor truncates the distribution; integer rounding adds no bias.

        Args:
            distance_m: Token-to-scanner distance in metres.
            inside_bus: Whether the token is inside the bus.
            placement: Where the rider carries the token.
            door_open: Whether a passenger door is open (matters only outside).

        Returns:
            The mean reported RSSI in dBm.
        """
        env = self.inside if inside_bus else self.outside
        d = max(distance_m, self.min_distance_m)
        mean = (
            self.tx_eirp_dbm
            + self.rx_antenna_gain_dbi
            - reference_path_loss_db(self.frequency_hz)
            - 10.0 * env.path_loss_exponent * math.log10(d)
            - self.placement_loss[placement].mean_db
            + fading_moments_db(env.rician_k_db)[0]
        )
        if not inside_bus:
            mean -= (self.shell_loss_door_open if door_open else self.shell_loss).mean_db
        return mean


DEFAULT_PARAMS = RadioParams()
"""The cited defaults."""


def reference_path_loss_db(frequency_hz: float) -> float:
    """Path loss at 1 m, 3GPP TR 38.901 style: ``32.4 + 20 log10(f / 1 GHz)``.

    Args:
        frequency_hz: Carrier frequency in Hz.

    Returns:
        The loss in dB (40.15 dB at 2.44 GHz, the free-space value).
    """
    return 32.4 + 20.0 * math.log10(frequency_hz / 1e9)


def expected_rssi(
    distance_m: float,
    inside_bus: bool,
    placement: Placement,
    *,
    door_open: bool = False,
    params: RadioParams = DEFAULT_PARAMS,
) -> float:
    """Mean reported RSSI in dBm; see :meth:`RadioParams.expected_rssi`.

    Args:
        distance_m: Token-to-scanner distance in metres.
        inside_bus: Whether the token is inside the bus.
        placement: Where the rider carries the token.
        door_open: Whether a passenger door is open (matters only outside).
        params: The model's parameters.

    Returns:
        The mean reported RSSI in dBm.
    """
    return params.expected_rssi(distance_m, inside_bus, placement, door_open=door_open)


def collision_probability(
    n_advertisers: int,
    mean_interval_s: float,
    packet_airtime_s: float = BLE_1M_ADV_AIRTIME_S,
) -> float:
    """Probability that one advertising packet collides, unslotted ALOHA per channel.

    Every advertiser sends one packet on each of the three advertising channels per
    advertising event, at random phases (advDelay), so on the channel the scanner
    listens to, the ``n - 1`` others offer a load ``G = (n - 1) T / T_adv`` and a packet
    survives when no other starts within its vulnerable period ``2 T``:
    ``P_success = exp(-2 G)``. Capture of the stronger packet is not modelled (a
    conservative choice).

    Args:
        n_advertisers: Advertisers in range of the scanner, the wanted one included.
        mean_interval_s: Their mean advertising interval, advDelay included.
        packet_airtime_s: Air time of one packet.

    Returns:
        The probability that the packet is lost to a collision, in [0, 1).

    Raises:
        ValueError: ``mean_interval_s`` is not positive or ``n_advertisers`` negative.
    """
    if mean_interval_s <= 0.0 or n_advertisers < 0:
        raise ValueError("need mean_interval_s > 0 and n_advertisers >= 0")
    others = max(n_advertisers - 1, 0)
    return 1.0 - math.exp(-2.0 * others * packet_airtime_s / mean_interval_s)


def _log_i0(z: float) -> float:
    """Natural log of the modified Bessel function I0."""
    if z < 25.0:
        term = 1.0
        total = 1.0
        q = 0.25 * z * z
        k = 1
        while term > 1e-17 * total:
            term *= q / (k * k)
            total += term
            k += 1
        return math.log(total)
    inv = 1.0 / (8.0 * z)
    series = 1.0 + inv + 4.5 * inv * inv + 37.5 * inv**3
    return z - 0.5 * math.log(2.0 * math.pi * z) + math.log(series)


@functools.lru_cache(maxsize=16)
def _fading_table_db(rician_k_db: float | None) -> tuple[float, ...]:
    """Midpoint quantiles, in dB, of the fading power gain ``|h|^2`` (``E|h|^2 = 1``).

    Rayleigh has a closed-form inverse CDF; Rician is integrated numerically from its
    density in the dB domain.
    """
    n = _TABLE_SIZE
    if rician_k_db is None:
        return tuple(10.0 * math.log10(-math.log1p(-(i + 0.5) / n)) for i in range(n))
    k = 10.0 ** (rician_k_db / 10.0)
    step = 0.005
    lo, hi = -60.0, 20.0
    ys = [lo + step * i for i in range(int((hi - lo) / step) + 1)]
    c = math.log(10.0) / 10.0
    dens = []
    for y in ys:
        x = 10.0 ** (y / 10.0)
        log_pdf = (
            math.log(k + 1.0) - k - (k + 1.0) * x + _log_i0(2.0 * math.sqrt(k * (k + 1.0) * x))
        )
        dens.append(math.exp(log_pdf) * x * c)
    cdf = [0.0]
    for i in range(1, len(ys)):
        cdf.append(cdf[-1] + 0.5 * (dens[i] + dens[i - 1]) * step)
    total = cdf[-1]
    table = []
    j = 1
    for i in range(n):
        u = (i + 0.5) / n * total
        while cdf[j] < u:
            j += 1
        frac = (u - cdf[j - 1]) / (cdf[j] - cdf[j - 1])
        table.append(ys[j - 1] + frac * step)
    return tuple(table)


@functools.lru_cache(maxsize=16)
def fading_moments_db(rician_k_db: float | None) -> tuple[float, float]:
    """Mean and standard deviation, in dB, of the fading the model draws.

    Args:
        rician_k_db: Rician K-factor in dB, ``None`` for Rayleigh.

    Returns:
        ``(mean_db, std_db)`` of ``10 log10 |h|^2`` with ``E|h|^2 = 1`` (Rayleigh:
        about -2.51 dB and 5.57 dB).
    """
    table = _fading_table_db(rician_k_db)
    return statistics.fmean(table), statistics.pstdev(table)


@functools.lru_cache(maxsize=1)
def _normal_table() -> tuple[float, ...]:
    """Midpoint quantiles of the standard normal, rescaled to unit variance."""
    nd = statistics.NormalDist()
    raw = [nd.inv_cdf((i + 0.5) / _TABLE_SIZE) for i in range(_TABLE_SIZE)]
    scale = 1.0 / statistics.pstdev(raw)
    return tuple(v * scale for v in raw)


_NORMAL = statistics.NormalDist()


def _keyed_normals(salt: bytes, *key: str) -> tuple[float, float, float, float]:
    """Four independent standard normals derived from ``salt`` and ``key`` only."""
    digest = hashlib.blake2b("\x1f".join(key).encode(), key=salt, digest_size=32).digest()
    words = struct.unpack(">4Q", digest)
    inv = _NORMAL.inv_cdf
    a, b, c, d = ((w + 0.5) / 2.0**64 for w in words)
    return inv(a), inv(b), inv(c), inv(d)


class RadioStats:
    """Counters of what became of the packets offered to :meth:`RadioChannel.sample`.

    Attributes:
        offered: Packets offered.
        out_of_window: Lost because the scanner was not listening.
        collided: Lost to a collision with another advertiser.
        captured: Overlapped by other advertisers' packets but decoded (capture: it was
            ``capture_db`` stronger than their sum); counted in ``received`` or
            ``below_sensitivity`` as well.
        below_sensitivity: Lost because the received power was below sensitivity.
        received: Reported to the scanner.
    """

    __slots__ = (
        "below_sensitivity",
        "captured",
        "collided",
        "offered",
        "out_of_window",
        "received",
    )

    def __init__(self) -> None:
        """Start all counters at zero."""
        self.offered = 0
        self.out_of_window = 0
        self.collided = 0
        self.captured = 0
        self.below_sensitivity = 0
        self.received = 0


class _Scanner:
    __slots__ = ("interferers_mw", "offset_db", "overlaps", "p_collision", "phase_s", "scanner_id")

    def __init__(self, scanner_id: str, phase_s: float, offset_db: float) -> None:
        self.scanner_id = scanner_id
        self.phase_s = phase_s
        self.offset_db = offset_db
        self.p_collision = 0.0
        self.overlaps = 0.0
        """Mean number of other packets overlapping one (``2 G``)."""
        self.interferers_mw: tuple[float, ...] = ()
        """Mean received power (mW) of each advertiser around the scanner (capture)."""


class LinkState:
    """State of one token-to-scanner link (static draws and the shadowing process).

    Obtain with :meth:`RadioChannel.link`; do not construct directly.

    Attributes:
        tx_id: The token's identifier (a stable device id, not the rotating address).
        scanner_id: The scanner's identifier.
        offset_db: Static device + scanner calibration offset in dB.
        shadow_db: Current shadowing in dB (0 before the first sample).
        t_last: Time of the last shadowing update, or ``None`` before the first.
    """

    __slots__ = (
        "_d_last",
        "_inside_last",
        "_scanner",
        "_z",
        "_z_fresh",
        "_z_place",
        "_z_shell",
        "offset_db",
        "scanner_id",
        "shadow_db",
        "t_last",
        "tx_id",
    )

    def __init__(
        self,
        tx_id: str,
        scanner: _Scanner,
        offset_db: float,
        *,
        z_place: float,
        z_shell: float,
        z_fresh: float,
    ) -> None:
        """Create a link; use :meth:`RadioChannel.link` instead."""
        self.tx_id = tx_id
        self.scanner_id = scanner.scanner_id
        self.offset_db = offset_db
        self.shadow_db = 0.0
        self.t_last: float | None = None
        self._scanner = scanner
        self._z = z_fresh
        self._d_last = 0.0
        self._inside_last = True
        self._z_place = z_place
        self._z_shell = z_shell
        self._z_fresh = z_fresh


class RadioChannel:
    """Samples what scanners report for tokens' advertising packets.

    Args:
        params: The model's parameters.
        rng: The only source of randomness.
    """

    def __init__(self, params: RadioParams, rng: random.Random) -> None:
        """Precompute the per-environment constants."""
        self.params = params
        self.stats = RadioStats()
        self._rng = rng
        self._salt = rng.getrandbits(128).to_bytes(16, "big")
        self._links: dict[tuple[str, str], LinkState] = {}
        self._scanners: dict[str, _Scanner] = {}
        self._tx_offsets: dict[str, float] = {}
        self._reverse: dict[tuple[str, str], tuple[float, float]] = {}
        self._normal = _normal_table()
        base = params.tx_eirp_dbm + params.rx_antenna_gain_dbi
        base -= reference_path_loss_db(params.frequency_hz)
        self._env: dict[bool, tuple[float, float, float, float, float, tuple[float, ...]]] = {}
        for inside, env in ((True, params.inside), (False, params.outside)):
            self._env[inside] = (
                base,
                10.0 * env.path_loss_exponent,
                env.shadowing_std_db,
                1.0 / env.decorrelation_time_s,
                1.0 / env.decorrelation_distance_m,
                _fading_table_db(env.rician_k_db),
            )
        self._place = {p: (v.mean_db, v.std_db) for p, v in params.placement_loss.items()}
        self._shell = {
            False: (params.shell_loss.mean_db, params.shell_loss.std_db),
            True: (params.shell_loss_door_open.mean_db, params.shell_loss_door_open.std_db),
        }
        self._full_duty = params.scan_window_s >= params.scan_interval_s
        self._fade_mean = {
            inside: fading_moments_db(env.rician_k_db)[0]
            for inside, env in ((True, params.inside), (False, params.outside))
        }

    def _scanner(self, scanner_id: str) -> _Scanner:
        sc = self._scanners.get(scanner_id)
        if sc is None:
            z_off, z_phase, _, _ = _keyed_normals(self._salt, "scanner", scanner_id)
            phase = _NORMAL.cdf(z_phase) * self.params.scan_interval_s
            sc = _Scanner(scanner_id, phase, z_off * self.params.scanner_offset_std_db)
            self._scanners[scanner_id] = sc
        return sc

    def set_tx_offset(self, tx_id: str, offset_db: float) -> None:
        """Fix a token's radiated-power offset instead of drawing it.

        Call before the token's first :meth:`link`.

        Args:
            tx_id: The token's identifier.
            offset_db: Offset from :attr:`RadioParams.tx_eirp_dbm` in dB.
        """
        self._tx_offsets[tx_id] = offset_db

    def tx_offset_db(self, tx_id: str) -> float:
        """The token's static radiated-power offset in dB (drawn on first use).

        Args:
            tx_id: The token's identifier.

        Returns:
            The offset in dB.
        """
        off = self._tx_offsets.get(tx_id)
        if off is None:
            z, _, _, _ = _keyed_normals(self._salt, "tx", tx_id)
            off = z * self.params.device_offset_std_db
            self._tx_offsets[tx_id] = off
        return off

    def mean_level_dbm(
        self,
        tx_id: str,
        distance_m: float,
        inside_bus: bool,
        placement: Placement,
        *,
        door_open: bool = False,
    ) -> float:
        """A token's mean received power at a scanner (dBm): its level as an interferer.

        :meth:`RadioParams.expected_rssi` plus the token's static power offset, without
        the sensitivity floor (a packet too weak to decode still interferes).
        """
        base, slope, _, _, _, _ = self._env[inside_bus]
        d = distance_m if distance_m > self.params.min_distance_m else self.params.min_distance_m
        level = (
            base
            - slope * math.log10(d)
            - self._place[placement][0]
            + self._fade_mean[inside_bus]
            + self.tx_offset_db(tx_id)
        )
        if not inside_bus:
            level -= self._shell[door_open][0]
        return level

    def beacon_mean_dbm(  # noqa: PLR0917 - the link's coordinates, as in sample
        self,
        tx_id: str,
        scanner_id: str,
        eirp_dbm: float,
        distance_m: float,
        inside_bus: bool,
        placement: Placement,
        *,
        door_open: bool = False,
    ) -> float:
        """The mean level (dBm) at which a token's device hears the bus unit's own packets.

        The link from ``tx_id`` to ``scanner_id`` run backwards (reciprocity): the bus's
        unit sends at ``eirp_dbm`` through the same path, placement and shell (the link's
        static draws) and the token's device offset applies to its receiver as it does to
        its transmitter. Shadowing and fading are not included (see
        :meth:`fading_quantile_db`); no random number is drawn.
        """
        key = (tx_id, scanner_id)
        zs = self._reverse.get(key)
        if zs is None:
            z_place, z_shell, _, _ = _keyed_normals(self._salt, "link", tx_id, scanner_id)
            zs = self._reverse[key] = (z_place, z_shell)
        _, slope, _, _, _, _ = self._env[inside_bus]
        d = distance_m if distance_m > self.params.min_distance_m else self.params.min_distance_m
        p_mean, p_std = self._place[placement]
        level = (
            eirp_dbm
            + self.params.rx_antenna_gain_dbi
            - reference_path_loss_db(self.params.frequency_hz)
            - slope * math.log10(d)
            - p_mean
            - p_std * zs[0]
            + self.tx_offset_db(tx_id)
        )
        if not inside_bus:
            s_mean, s_std = self._shell[door_open]
            level -= s_mean + s_std * zs[1]
        return level

    def fading_quantile_db(self, inside_bus: bool, u: float) -> float:
        """The small-scale fading (dB) at quantile ``u`` in [0, 1) of the environment's law."""
        table = self._env[inside_bus][5]
        return table[min(int(u * _TABLE_SIZE), _TABLE_SIZE - 1)]

    def shadowing(self, inside_bus: bool) -> tuple[float, float, float]:
        """``(sigma_db, 1 / decorrelation time, 1 / decorrelation distance)`` of an environment."""
        _, _, sigma, inv_tau, inv_dcorr, _ = self._env[inside_bus]
        return sigma, inv_tau, inv_dcorr

    def set_crowd(
        self,
        scanner_id: str,
        n_advertisers: int,
        mean_interval_s: float,
        levels_dbm: Sequence[float] = (),
    ) -> None:
        """Set how many advertisers a scanner hears, for the collision model.

        Args:
            scanner_id: The scanner.
            n_advertisers: Advertisers in its range (riders' tokens and any other BLE
                advertisers: earbuds, watches), the wanted one included.
            mean_interval_s: Their mean advertising interval without advDelay.
            levels_dbm: The mean received power of each of them at the scanner (dBm),
                for capture (:attr:`RadioParams.capture_db`): a packet overlapping
                others survives when it is that much stronger than their sum. Empty:
                any overlap loses the packet.
        """
        sc = self._scanner(scanner_id)
        interval = mean_interval_s + self.params.adv_delay_mean_s
        sc.p_collision = collision_probability(
            n_advertisers, interval, self.params.packet_airtime_s
        )
        sc.overlaps = -math.log1p(-sc.p_collision) if sc.p_collision < 1.0 else math.inf
        sc.interferers_mw = tuple(10.0 ** (x / 10.0) for x in levels_dbm)

    def _interference_dbm(self, sc: _Scanner) -> float:
        """The summed power (dBm) of the packets overlapping one that overlaps some.

        Their number is Poisson with mean ``2 G`` given at least one (pure ALOHA); each
        is an advertiser around the scanner drawn uniformly, its power its mean level
        times an exponential (Rayleigh) fading draw. One uniform draw for the number,
        two per packet.
        """
        rnd = self._rng.random
        m = sc.overlaps
        target = rnd() * -math.expm1(-m)
        p_k = math.exp(-m) * m
        cum = p_k
        k = 1
        while cum < target and k < _MAX_OVERLAPS:
            k += 1
            p_k *= m / k
            cum += p_k
        levels = sc.interferers_mw
        n = len(levels)
        total = 0.0
        for _ in range(k):
            total -= levels[int(rnd() * n)] * math.log(1.0 - rnd())
        return 10.0 * math.log10(total) if total > 0.0 else -math.inf

    def collision_probability(self, scanner_id: str) -> float:
        """The collision probability last set by :meth:`set_crowd` (0 if never).

        Args:
            scanner_id: The scanner.

        Returns:
            The probability that a packet is lost to a collision.
        """
        return self._scanner(scanner_id).p_collision

    def link(self, tx_id: str, scanner_id: str) -> LinkState:
        """The link from a token to a scanner, created on first use.

        Args:
            tx_id: A stable identifier of the token device.
            scanner_id: The scanner's identifier.

        Returns:
            The link's state, to pass to :meth:`sample`.
        """
        key = (tx_id, scanner_id)
        state = self._links.get(key)
        if state is None:
            sc = self._scanner(scanner_id)
            z_place, z_shell, z_fresh, _ = _keyed_normals(self._salt, "link", tx_id, scanner_id)
            state = LinkState(
                tx_id,
                sc,
                self.tx_offset_db(tx_id) + sc.offset_db,
                z_place=z_place,
                z_shell=z_shell,
                z_fresh=z_fresh,
            )
            self._links[key] = state
        return state

    def in_scan_window(self, scanner_id: str, t: float) -> bool:
        """Whether the scanner listens at time ``t``.

        Args:
            scanner_id: The scanner.
            t: Time in seconds.

        Returns:
            True when ``t`` falls in a scan window.
        """
        if self._full_duty:
            return True
        p = self.params
        return (t + self._scanner(scanner_id).phase_s) % p.scan_interval_s < p.scan_window_s

    def sample(
        self,
        link: LinkState,
        distance_m: float,
        inside_bus: bool,
        placement: Placement,
        t: float,
        *,
        door_open: bool = False,
    ) -> int | None:
        """The RSSI the scanner reports for one advertising event, or ``None``.

        Args:
            link: From :meth:`link`.
            distance_m: Token-to-scanner distance in metres.
            inside_bus: Whether the token is inside the bus.
            placement: Where the rider carries the token.
            t: Time of the advertising event in seconds (any monotonic origin).
            door_open: Whether a passenger door is open (matters only outside).

        Returns:
            The RSSI in integer dBm, or ``None`` when the packet is not received (the
            scanner was not listening, a collision, or below sensitivity).
        """
        stats = self.stats
        stats.offered += 1
        sc = link._scanner
        params = self.params
        if (
            not self._full_duty
            and (t + sc.phase_s) % params.scan_interval_s >= params.scan_window_s
        ):
            stats.out_of_window += 1
            return None
        rnd = self._rng.random
        overlapped = False
        if sc.p_collision > 0.0 and rnd() < sc.p_collision:
            if not sc.interferers_mw or params.capture_db == math.inf:
                stats.collided += 1
                return None
            overlapped = True  # lost unless it captures the receiver (below)
        base, slope, sigma_sh, inv_tau, inv_dcorr, fading = self._env[inside_bus]
        d = distance_m if distance_m > params.min_distance_m else params.min_distance_m
        # Shadowing: first-order Gauss-Markov in time and (radial) displacement.
        t_last = link.t_last
        if t_last is None or inside_bus is not link._inside_last:
            z = link._z_fresh if t_last is None else self._normal[int(rnd() * _TABLE_SIZE)]
        else:
            rho = math.exp(-abs(t - t_last) * inv_tau - abs(d - link._d_last) * inv_dcorr)
            z = rho * link._z + math.sqrt(1.0 - rho * rho) * self._normal[int(rnd() * _TABLE_SIZE)]
        link._z = z
        link.t_last = t
        link._d_last = d
        link._inside_last = inside_bus
        shadow = sigma_sh * z
        link.shadow_db = shadow
        p_mean, p_std = self._place[placement]
        power = (
            base
            - slope * math.log10(d)
            + shadow
            - p_mean
            - p_std * link._z_place
            + fading[int(rnd() * _TABLE_SIZE)]
            + link.offset_db
        )
        if not inside_bus:
            s_mean, s_std = self._shell[door_open]
            power -= s_mean + s_std * link._z_shell
        if overlapped:
            if power - self._interference_dbm(sc) < params.capture_db:
                stats.collided += 1
                return None
            stats.captured += 1
        if power < params.sensitivity_dbm:
            stats.below_sensitivity += 1
            return None
        stats.received += 1
        rssi = round(power)
        if rssi > _HCI_RSSI_MAX:
            return _HCI_RSSI_MAX
        return rssi if rssi >= _HCI_RSSI_MIN else _HCI_RSSI_MIN
