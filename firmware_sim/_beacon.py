"""Bus beacons in the radio world, and tokens that listen to them and echo them.

Every simulated bus advertises a bus beacon v1 (:func:`busbell._echo.encode_beacon`: the
tag of its vehicle id and ``seq``, the pattern index of the stop it is serving or comes
to next, mod 8, taken from its planned stop service). A token that listens (a phone
app; ``TokenEnvelope.echo_share`` of the phones) runs the token side,
:class:`busbell._echo.EchoTracker`, and puts its echo in byte 23 of each payload it
computes: phones refresh their payload every ``refresh_s``, so the echo moves only at a
refresh, as a real app's would.

What a token hears of a bus comes from the radio model of the scanner's side
(:meth:`firmware_sim._radio.RadioChannel.beacon_mean_dbm`): the same link run backwards,
the bus's EIRP in place of the token's, the same path loss, placement, shell (outside)
and device offset, plus a shadowing process of its own and the best fading draw of the
beacons the phone's duty-cycled scan catches in one refresh period. It is computed once
per refresh per bus in range, not per 100-ms beacon. Its random numbers come from a
generator of their own: the adverts of a run are the same with and without listening
tokens except byte 23. Parameters: :class:`EchoParams` (``docs/radio.md``).
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from typing import Any

from busbell._echo import Beacon, EchoTracker, bus_tag, echo_code, seq_of
from busbell._token import interval_of, rid_for_interval
from firmware_sim._radio import Placement, RadioChannel
from firmware_sim._tokens import TokenDevice
from firmware_sim._vehicle import BusPlan

__all__ = ["EchoAudit", "EchoModel", "EchoParams", "bus_seq_at", "seq_breaks"]


@dataclass(frozen=True, slots=True)
class EchoParams:
    """The bus beacon and the listening phone (``docs/radio.md``, "Bus beacons").

    Attributes:
        beacon_eirp_dbm: the bus unit's radiated power (mains powered: a class-2
            radio at +4 dBm, no battery to save).
        beacon_interval_s: the beacon's advertising interval.
        scan_duty: the share of beacons a listening phone's scanner catches: Android's
            ``SCAN_MODE_LOW_POWER`` for an app in the background listens 512 ms of every
            5,120 ms (0.1).
        min_dbm: the app ignores beacons weaker than this (``EchoTracker.min_dbm``): a
            phone receiver decodes down to about -95 dBm; 5 dB of margin.
        gap_s: a bus not heard for longer than this starts afresh
            (``EchoTracker.gap_s``): three 8-s refreshes of a background app missed in a
            row (a body or a bag in the way) do not end a ride's echo; a bus that has
            left a stop is out of earshot of the people there well within it.
    """

    beacon_eirp_dbm: float = 4.0
    beacon_interval_s: float = 0.1
    scan_duty: float = 0.1
    min_dbm: float = -90.0
    gap_s: float = 30.0

    def __post_init__(self) -> None:
        """Validate.

        Raises:
            ValueError: a parameter outside its domain.
        """
        if self.beacon_interval_s <= 0.0 or self.gap_s <= 0.0:
            raise ValueError("beacon_interval_s and gap_s must be positive")
        if not 0.0 < self.scan_duty <= 1.0:
            raise ValueError("scan_duty must be in (0, 1]")


def seq_breaks(plan: BusPlan) -> tuple[list[float], list[int]]:
    """When a bus's beacon ``seq`` changes: ``(times, stop indices from then on)``.

    The bus leaves stop ``k`` when its doors close there, or when it passes it without
    stopping; from then on it comes to ``k + 1`` next. Before the first change it comes
    to the first stop of its run.
    """
    calls = {c.idx: c for c in plan.calls}
    first, last = plan.calls[0].idx, plan.calls[-1].idx
    times: list[float] = []
    idxs: list[int] = [first]
    t_prev = plan.t_start
    for i in range(first, last + 1):
        call = calls.get(i)
        t = call.t_close if call is not None else plan.motion.time_at_s(plan.path.stop_s[i], t_prev)
        t_prev = max(t, t_prev)
        times.append(t_prev)
        idxs.append(i + 1)
    return times, idxs


def bus_seq_at(breaks: tuple[list[float], list[int]], t: float) -> int:
    """The stop index a bus's beacon names at ``t`` (before the mod 8)."""
    times, idxs = breaks
    return idxs[bisect.bisect_right(times, t)]


class EchoAudit:
    """Counts of what the buses received of listening tokens' echoes (truth.json ``stats``).

    Per role (``rider_aboard``: a rider on that bus during that leg; ``rider_elsewhere``:
    a rider before boarding, after alighting or on another bus; ``waiter``,
    ``pedestrian``, ``car``): ``adverts`` received by a bus, ``echo`` carrying any echo,
    ``echo_bus`` whose code is the receiving bus's for that rid (1 in 31 by chance for
    any other bus), ``echo_bus_earlier``: naming the bus with a seq other than the one
    the bus sends at that moment (heard since before the bus's current stop: what a rider
    past its boarding stop echoes), and for riders aboard ``echo_bus_seq``: the bus and
    the leg's boarding stop's seq. ``legs``: per rider leg, adverts and ``echo_bus_seq``.
    """

    def __init__(self) -> None:
        """Start empty."""
        self.by_role: dict[str, list[int]] = {}
        self.legs: dict[tuple[str, str, float], list[int]] = {}
        self._codes: dict[tuple[bytes, str], int] = {}
        self.listening = 0

    def count(
        self, role: str, bus_id: str, payload: bytes, bus_seq: int, board_seq: int | None
    ) -> bool:
        """Count one received advert; True when its echo names ``bus_id`` with ``board_seq``.

        ``bus_seq`` is the seq the bus sends in the second it receives the advert.
        """
        row = self.by_role.setdefault(role, [0, 0, 0, 0, 0])
        row[0] += 1
        echo = payload[23]
        if echo == 0:
            return False
        row[1] += 1
        rid = payload[3:15]
        key = (rid, bus_id)
        code = self._codes.get(key)
        if code is None:
            code = self._codes[key] = echo_code(bus_tag(bus_id), rid)
        if echo >> 3 != code:
            return False
        row[2] += 1
        if echo & 7 != bus_seq:
            row[4] += 1
        if board_seq is not None and echo & 7 == board_seq:
            row[3] += 1
            return True
        return False

    def as_dict(self) -> dict[str, Any]:
        """The counts, for ``stats["echo"]``."""
        names = ("adverts", "echo", "echo_bus", "echo_bus_seq", "echo_bus_earlier")
        return {
            "listening_tokens": self.listening,
            "by_role": {
                role: dict(zip(names, row, strict=True))
                for role, row in sorted(self.by_role.items())
            },
            "legs": [
                {
                    "rider_id": rider,
                    "bus_id": bus,
                    "board_t": board_t,
                    "adverts": n,
                    "echo_bus_seq": ok,
                }
                for (rider, bus, board_t), (n, ok) in sorted(self.legs.items())
            ],
        }


@dataclass(slots=True)
class _Shadow:
    t: float
    d: float
    inside: bool
    z: float


class EchoModel:
    """The beacons of the buses of a run and what the listening tokens make of them.

    Args:
        params: the beacon and the listening phone.
        radio: the run's radio channel (its link draws and laws; no random draw).
        plans: the buses.
        extra_shell_db: the extra loss of a token inside another vehicle (its shell).
        rng: the generator of the echo's own draws (shadowing, fading).
    """

    def __init__(
        self,
        params: EchoParams,
        radio: RadioChannel,
        plans: dict[str, BusPlan],
        extra_shell_db: float,
        rng: random.Random,
    ) -> None:
        """Precompute each bus's tag and seq changes."""
        self.params = params
        self._radio = radio
        self._rng = rng
        self._extra_shell_db = extra_shell_db
        self._tags = {b: bus_tag(b) for b in plans}
        self._breaks = {b: seq_breaks(pl) for b, pl in plans.items()}
        self._trackers: dict[str, EchoTracker] = {}
        self._next: dict[str, int] = {}
        self._shadow: dict[tuple[str, str], _Shadow] = {}
        self._rids: dict[tuple[str, int], bytes] = {}

    def seq(self, bus_id: str, t: float) -> int:
        """The ``seq`` a bus's beacon sends at true time ``t``."""
        return seq_of(bus_seq_at(self._breaks[bus_id], t))

    def _heard_dbm(  # noqa: PLR0917 - one link's coordinates
        self,
        dev: str,
        bus_id: str,
        t: float,
        d: float,
        where: int,
        placement: Placement,
        door_open: bool,
        period_s: float,
    ) -> float:
        """The strongest level of the beacons a phone caught in one refresh period."""
        inside = where == 1
        level = self._radio.beacon_mean_dbm(
            dev, bus_id, self.params.beacon_eirp_dbm, d, inside, placement, door_open=door_open
        )
        if where == 2:
            level -= self._extra_shell_db
        sigma, inv_tau, inv_dcorr = self._radio.shadowing(inside)
        rng = self._rng
        sh = self._shadow.get((dev, bus_id))
        if sh is None or sh.inside is not inside:
            z = rng.gauss(0.0, 1.0)
            self._shadow[(dev, bus_id)] = _Shadow(t, d, inside, z)
        else:
            rho = math.exp(-abs(t - sh.t) * inv_tau - abs(d - sh.d) * inv_dcorr)
            z = rho * sh.z + math.sqrt(1.0 - rho * rho) * rng.gauss(0.0, 1.0)
            sh.t, sh.d, sh.z = t, d, z
        caught = period_s / self.params.beacon_interval_s * self.params.scan_duty
        n = max(1, round(caught))
        # the best of n i.i.d. fading draws: its CDF is F^n, so the quantile u^(1/n)
        u = rng.random() ** (1.0 / n)
        return level + sigma * z + self._radio.fading_quantile_db(inside, u)

    def refresh(  # noqa: PLR0917 - called from the world's hot loop
        self,
        tok: TokenDevice,
        placement: Placement,
        k: int,
        near: list[tuple[str, float, int]],
        door_open: dict[str, bool],
        span: dict[str, tuple[float, float]],
    ) -> float:
        """The token's payload refreshes in tick ``[k, k + 1)``, near the buses ``near``.

        Refreshes since the token was last near a bus hear nothing; each refresh sets
        ``tok.echoes`` for its index. Returns the true time of the token's next refresh
        (nothing to do before it).
        """
        dev = tok.device_id
        period = tok.profile.refresh_s
        tracker = self._trackers.get(dev)
        if tracker is None:
            tracker = self._trackers[dev] = EchoTracker(
                min_dbm=self.params.min_dbm, gap_s=self.params.gap_s
            )
        j = max(self._next.get(dev, -(2**62)), tok.refresh_index(float(k)))
        while True:
            r = tok.refresh_time(j)
            if r >= k + 1:
                break
            tt = tok.clock(r)
            if r >= k:
                for b, d, where in near:
                    w0, w1 = span[b]
                    if r < w0 or r > w1:
                        continue
                    lvl = self._heard_dbm(dev, b, r, d, where, placement, door_open[b], period)
                    tracker.heard(tt, Beacon(self._tags[b], self.seq(b, r)), lvl)
            interval = interval_of(tt)
            rid = self._rids.get((dev, interval))
            if rid is None:
                rid = self._rids[(dev, interval)] = rid_for_interval(tok.keys.rid_key, interval)
            tok.echoes[j] = tracker.echo(tt, rid)
            j += 1
        self._next[dev] = j
        return r
