"""Presence classifier: accepted advertisements + stop visits -> closed rid segments.

Sans-I/O and deterministic. One record per rid follows the state machine in
:data:`TRANSITIONS` (the only place transitions are written down)::

    NEW --adv at stop--> CANDIDATE --confirm--> ONBOARD --fade/finish--> GONE
    NEW --adv moving---> OUTSIDE --adv at stop / visit opens--> CANDIDATE
    NEW --adv moving, rid's interval just began--> ROTATING --confirm--> ONBOARD
    ROTATING --adv at stop / visit opens--> CANDIDATE
    CANDIDATE, ROTATING --reject/fade/finish--> GONE --adv at a newer stop--> CANDIDATE

A boarding is confirmed only after the bus has left the stop and moved on with the rid
still heard at in-bus strength; a confirmed rid that fades is closed as ``alighted`` at
the stop whose doors opened as it faded, ``rotated`` when its 600-s interval ended, or
``lost``. ``docs/classifier.md`` gives the exact rules.
"""

from __future__ import annotations

import bisect
import enum
import heapq
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from busbell import INTERVAL_S, TokenFlags, get_logger
from busbell._echo import SEQ_MOD, echo_code
from edge._params import ClassifierParams
from edge._segment import SegmentDraft, SegmentEnd
from edge._vehicle import StopVisit

__all__ = ["TRANSITIONS", "Event", "PresenceClassifier", "State", "next_state"]

log = get_logger("edge.classifier")


class State(enum.IntEnum):
    """Where a rid stands."""

    NEW = 0
    """Never heard (a virtual state: the rid has no record yet)."""
    OUTSIDE = 1
    """Heard while the bus was not at a stop: someone outside, not a rider (yet)."""
    CANDIDATE = 2
    """Heard at a stop visit: may have boarded; waiting for confirmation."""
    ROTATING = 3
    """Appeared, bus not at a stop, at the very start of its interval: a rider's new rid?"""
    ONBOARD = 4
    """A confirmed rider: a segment is open."""
    GONE = 5
    """Segment closed, or candidacy dropped; kept as a tombstone until forgotten."""


class Event(enum.IntEnum):
    """What can happen to a rid."""

    ADV_STOP = 0
    """An accepted advertisement while the bus is at a stop (doors open, or just closed)."""
    ADV_MOVING = 1
    """An accepted advertisement while the bus is not at a stop."""
    ADV_ROTATION = 2
    """First advertisement of a rid, bus not at a stop, its interval just began."""
    VISIT_OPEN = 3
    """A stop visit opened and the rid was heard just before."""
    CONFIRM = 4
    """The boarding (or rotation) rules are met."""
    REJECT = 5
    """Candidacy failed: the bus moved on without the rid, or no rotated rid to continue."""
    FADE = 6
    """No in-bus advertisement for ``fade_timeout_s``."""
    FINISH = 7
    """End of replay or shutdown."""


S, E = State, Event
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.NEW, E.ADV_STOP): S.CANDIDATE,
    (S.NEW, E.ADV_MOVING): S.OUTSIDE,
    (S.NEW, E.ADV_ROTATION): S.ROTATING,
    (S.OUTSIDE, E.ADV_STOP): S.CANDIDATE,
    (S.OUTSIDE, E.ADV_MOVING): S.OUTSIDE,
    (S.OUTSIDE, E.VISIT_OPEN): S.CANDIDATE,
    (S.OUTSIDE, E.FADE): S.GONE,
    (S.OUTSIDE, E.FINISH): S.GONE,
    (S.CANDIDATE, E.ADV_STOP): S.CANDIDATE,
    (S.CANDIDATE, E.ADV_MOVING): S.CANDIDATE,
    (S.CANDIDATE, E.VISIT_OPEN): S.CANDIDATE,
    (S.CANDIDATE, E.CONFIRM): S.ONBOARD,
    (S.CANDIDATE, E.REJECT): S.GONE,
    (S.CANDIDATE, E.FADE): S.GONE,
    (S.CANDIDATE, E.FINISH): S.GONE,
    (S.ROTATING, E.ADV_STOP): S.CANDIDATE,
    (S.ROTATING, E.ADV_MOVING): S.ROTATING,
    (S.ROTATING, E.VISIT_OPEN): S.CANDIDATE,
    (S.ROTATING, E.CONFIRM): S.ONBOARD,
    (S.ROTATING, E.REJECT): S.GONE,
    (S.ROTATING, E.FADE): S.GONE,
    (S.ROTATING, E.FINISH): S.GONE,
    (S.ONBOARD, E.ADV_STOP): S.ONBOARD,
    (S.ONBOARD, E.ADV_MOVING): S.ONBOARD,
    (S.ONBOARD, E.VISIT_OPEN): S.ONBOARD,
    (S.ONBOARD, E.FADE): S.GONE,
    (S.ONBOARD, E.FINISH): S.GONE,
    (S.GONE, E.ADV_STOP): S.CANDIDATE,
    (S.GONE, E.ADV_MOVING): S.GONE,
    (S.GONE, E.VISIT_OPEN): S.GONE,
    (S.GONE, E.FADE): S.GONE,
    (S.GONE, E.FINISH): S.GONE,
}
"""Every allowed transition; a pair not listed is a bug (:func:`next_state` raises)."""
del S, E


def next_state(state: State, event: Event) -> State:
    """The state after ``event``.

    Raises:
        KeyError: the transition is not allowed.
    """
    return TRANSITIONS[(state, event)]


# the advert hot path avoids enum attribute lookups
# (Final: compiled by mypyc, the constants of this module are C constants, not looked up)
_OUTSIDE: Final = int(State.OUTSIDE)
_CANDIDATE: Final = int(State.CANDIDATE)
_ROTATING: Final = int(State.ROTATING)
_ONBOARD: Final = int(State.ONBOARD)
_GONE: Final = int(State.GONE)
_MIN_PERIOD_S: Final = 0.05
"""Inter-advert gaps shorter than this are duplicates, not the advertising interval."""
_REASSIGN_S: Final = 2.0
"""The joint rotation pairing is re-run at least this often (clock offsets converge)..."""
_DIRTY_S: Final = 1.0
"""... and at most this often when rids joined or left it (a burst brings hundreds)."""
_START_S: Final = 3.0
"""A rid's RSSI level "as it appeared" is its smoothed RSSI over its first seconds."""
_ADV_DELAY_MEAN_S: Final = 0.005
"""Mean of the 0-10 ms random advDelay the link layer adds to every advertising event."""
_PRED_NONE: Final = 0
_PRED_ONBOARD: Final = 1
_PRED_CANDIDATE: Final = 2
"""What a new rid at its interval's start was paired with: nothing, a rotated rider, or a
candidate whose rid rotated before confirmation (it hands over its boarding stop)."""
_ALIGHT: Final = int(TokenFlags.ALIGHT_REQUEST)
_ASSIST: Final = int(TokenFlags.ASSIST)
_WAIT: Final = int(TokenFlags.WAIT)


_LEVEL_MIN_RIDERS: Final = 3
_CARRY_CO: Final = 2
"""Co-movement points (heard at its own level, 100 m apart, 150 m or more from its stop)
after which a candidate heard at a later stop is still its first stop's: it rode from
there (a person waiting at the later stop was not heard along the way)."""
"""Riders aboard needed before the in-bus threshold follows their level."""
_PAIR_K: Final = 8
"""Candidate pairs kept per old rid (the cheapest; clock offset dominates the cost)."""
_GAP_W: Final = 0.2
"""Weight of each new gap in a rid's mean gap between in-bus adverts."""
_ENDED_S: Final = 30.0
"""A closed rid is forgotten this long after its interval ended by its token's clock."""
_ADDR_IV_SLACK: Final = 16
"""``_addr_iv`` is pruned when it holds more than twice as many addresses as there are
rids known, and this many more (:meth:`PresenceClassifier._prune_addr_iv`)."""
_REFRESH_S: Final = 10.0
"""A token's old rid may still be sent this long after its interval ended (phones refresh
the payload every 4-8 s; the rid changes at the first refresh after the boundary)."""
_REFRESH_MAX_S: Final = 8.0
"""The longest payload refresh period of a token (an Android app advertising in the
background refreshes every 8 s; fobs compute the payload at every advert)."""
_THROUGH_HOPS: Final = 3
"""Hops a rid not on board must be heard in, moving with the bus at its level, to have been
carried through the two stops between (:meth:`PresenceClassifier._carried_through`)."""
_PAIR_SCAN: Final = 24
"""New rids in an old rid's time window visited per slot, nearest clock offset first."""
_RSSI_NA: Final = -127
"""The RSSI of an advert whose RSSI was not reported (bleak's value for a BlueZ device
without one; HCI's lowest): never the bus's receiver floor (``_floor``)."""
_FLOOR_RANK: Final = 8
"""The bus's receiver floor is the weakest RSSI but this many minus one it has decoded: a
few spurious weak readings (a glitch, a reflection) do not set it for the bus's life
(:attr:`PresenceClassifier._floor`); at the floor a token that loses most of its packets
is still heard every few seconds, so the eighth weakest is there within a minute."""
_ABSENT_FAR_DB: Final = 20.0
"""How far below the riders' level (their median baseline) a late joiner silent at the open
doors (``absent``) and heard near the bus's receiver floor is heard to be a vehicle, not
someone who boarded last (:meth:`PresenceClassifier._barred`; one heard well above the
floor is barred ``sparse_fall_db`` below), and a candidate that lost the bus after its stop
one (:meth:`PresenceClassifier._caught_up`). Measured on tuning seeds only: cars arriving as
the doors close, through two shells, 23-35 dB below; riders who boarded in the last
seconds of the dwell, in the bus's shell, 9-21 dB below (a sigma-6 dB device spread and
bags put a quarter of a bus's riders 8 dB or more below their median)."""


_NEVER: Final = 1 << 62
"""A count no rid reaches (the echo points asked for with the echo off), a stop index none."""
_ECHO_DEFAULTS: Final[dict[str, Any]] = {
    "ec": 0,
    "eo_k": -1,
    "eo_late": -1,
    "eo_n": 0,
    "eo_odo0": 0.0,
    "eo_pt_odo": -math.inf,
    "eo_pt_t": -math.inf,
    "eo_pts": 0,
    "eo_seq": -1,
    "eo_sum": 0.0,
    "eo_t0": 0.0,
    "eo_t1": 0.0,
    "eo_vseq": 0,
    "ex_run": 0,
}
"""A rid's echo evidence (:meth:`PresenceClassifier._echo_heard`) before any echo: also what
a checkpoint written before the echo was read restores them to (it has no such slots).

``ec``: this bus's echo code for the rid (0: not computed yet; memoised, a rid lives
600 s); ``eo_seq``: the seq of the latest stretch its echoes named this bus with (-1:
none); ``eo_t0``, ``eo_odo0``: the first advert of that stretch the bus heard; ``eo_t1``:
its latest (0.0: none, or a checkpoint written before it was kept); ``eo_vseq``:
the latest stop visit (seq) then; ``eo_k``: the trip's stop index the stretch began at
(-1: unknown); ``eo_n``: adverts of that stretch; ``eo_pts``, ``eo_sum``, ``eo_pt_odo``:
its echo points (count, RSSI sum, odometer and time of the latest); ``eo_late``: the
latest stop visit (seq) past whose doors, or in the bus standing there ``stay_s`` after
they opened, the stretch was heard; ``ex_run``: echoes in a row
naming another bus since the last naming this one."""

_LATER_DEFAULTS: Final[dict[str, Any]] = {"pool_lvl": -math.inf, "eo_amb": False}
"""Rid fields added after the echo's, with the value a checkpoint written before each was
kept restores (it has no such slot): ``pool_lvl`` (:meth:`PresenceClassifier._keep_for_pairing`),
``eo_amb`` (:meth:`PresenceClassifier._echo_old`)."""


def _median(hist: dict[int, int]) -> int | None:
    """The upper median of the RSSI values counted in ``hist`` (``None`` if empty)."""
    half = sum(hist.values()) // 2
    seen = 0
    for level in sorted(hist):
        seen += hist[level]
        if seen > half:
            return level
    return None


def _may_change_with_rid(addr: str) -> bool:
    """Whether a BLE random address may be drawn afresh with each rid (a fob's, say).

    The top two bits of a random device address name its kind (Core Spec Vol 6 Part B
    1.3.2): ``11`` a static address, ``00`` a non-resolvable private one: a token may draw
    either anew whenever its payload changes, and a busbell fob draws a static one with
    every rid (docs/simulator.md), so its next rid comes from another address. ``01`` a
    resolvable private address, which the host re-draws on its own privacy timer (15 min
    on Android), not with the payload: a phone still in hearing keeps it across a rotation
    but for the seconds of its timer that fall in the gap. Anything else (no address, not
    hex, ``10``, reserved) is not known to change with the rid.
    """
    if len(addr) < 2:
        return False
    try:
        top = int(addr[:2], 16) >> 6
    except ValueError:
        return False
    return top in {0, 3}


def _clock_gap(old: _Rid, new: _Rid) -> float:
    """How far two rids' clock offsets differ beyond what their adverts leave open (s, >= 0).

    Each ``d_min`` is an upper bound of its token's clock offset that comes down as more
    adverts are heard (:func:`_offset_slack`): only the gap beyond both bounds counts, and
    beyond ``skew_tolerance_s`` the two are not one token's clock.
    """
    skew = new.d_min - old.d_min
    return max(skew - _offset_slack(new), -skew - _offset_slack(old), 0.0)


def _offset_slack(r: _Rid) -> float:
    """How far above its token's clock offset a rid's ``d_min`` may still be (95 %).

    ``t - token_t`` is the offset plus the time since the token last refreshed its payload
    (up to ``_REFRESH_MAX_S``) plus a constant phase; the rid's least value comes down
    to the offset plus that phase as adverts at random times after a refresh are heard.
    After ``n`` adverts the excess is below ``_REFRESH_MAX_S * (1 - 0.05 ** (1 / n))`` with
    95 % probability: 7.6 s after one advert, 4.2 s after four, under 0.5 s after sixty.
    A weak token's new rid is paired after only a few adverts: with a fixed tolerance on
    the difference of the two least values (2 s) its first advert, heard 3-6 s after the
    refresh, ruled out its own rotation (tuning seeds of the weak cells).
    """
    n = r.n_adv
    return _REFRESH_MAX_S * (1.0 - 0.05 ** (1.0 / n)) if n > 0 else _REFRESH_MAX_S


def _debug_enabled() -> bool:
    """Whether debug events are logged (checked once per tick: building them is not free)."""
    return bool(log.bind().is_enabled_for(logging.DEBUG))


@dataclass(frozen=True, slots=True)
class _NewsIndex:
    """Rot rids that may continue a rotated one (:meth:`PresenceClassifier._news_index`)."""

    tick: int
    slots: dict[tuple[int, int], list[tuple[float, bytes]]]
    addrs: dict[tuple[int, str], bytes]
    shared: frozenset[tuple[int, str]]
    """``(interval, BLE address)`` keys sent by two rot rids or more: an address collision
    (two devices, one address) links no rid to its successor by the address
    (:meth:`PresenceClassifier._addr_pairs`)."""


# (the fields an advert or a tick reads or writes of most rids first, in the order
# advert reaches them: they share a few cache lines; the rest alphabetical. A
# checkpoint stores the names with the values: any order restores). A name, not the class's
# __slots__: a class compiled by mypyc has no __slots__ (docs/edge.md, compiled build)
_RID_SLOTS: Final = (
    "state",
    "last_t",
    "ewma",
    "per",
    "base",
    "mv_odo",
    "mv_ewma",
    "first_t",
    "last_token_t",
    "d_min",
    "addr",
    "last_raw",
    "n_adv",
    "hist",
    "rssi_max",
    "last_flags",
    "flags_or",
    "lvl",
    "dp_visit",
    "last_in_t",
    "gap",
    "n_in",
    "last_in_odo",
    "last_in_raw",
    "interval",
    "visit",
    "tk_n",
    "tk_odo",
    "dp_pt",
    "n_far",
    "run_odo",
    "ewma0",
    "start",
    "rid",
    # (the rest)
    "absent",
    "addr_after",
    "co_hi",
    "co_lo",
    "co_n",
    "co_odo",
    "co_odo0",
    "co_only",
    "co_sent",
    "co_sum",
    "co_t",
    "confirm_t",
    "convoy",
    "door_t",
    "dp_at",
    "dp_n",
    "dp_odo",
    "dp_sum",
    "dp_t",
    "drift",
    "ec",
    "ended_t",
    "eo_amb",
    "eo_k",
    "eo_late",
    "eo_n",
    "eo_odo0",
    "eo_pt_odo",
    "eo_pt_t",
    "eo_pts",
    "eo_seq",
    "eo_sum",
    "eo_t0",
    "eo_t1",
    "eo_vseq",
    "ex_run",
    "far_sum",
    "fell",
    "first_odo",
    "first_raw",
    "first_token_t",
    "gone_apart",
    "gone_visit_seq",
    "held_m",
    "lost_ride",
    "lv_hist",
    "lv_n",
    "lvl_out",
    "pool_lvl",
    "pred",
    "pred_visit",
    "rode_t",
    "rot",
    "route_id",
    "sent_t",
    "span_odo",
    "span_t",
    "start_odo",
    "tk_apart",
    "tk_door",
    "tk_hops",
    "tk_lvl",
    "tk_odo0",
    "tk_seq",
    "tk_stay",
    "tk_stood",
    "tk_sum",
    "tk_t",
    "tk_visit",
    "trip_id",
)


class _Rid:
    """Everything known about one rid (mutable, slotted: the hot path updates it)."""

    __slots__ = _RID_SLOTS

    def __init__(self, rid: bytes, interval: int, token_t: float) -> None:
        self.rid = rid
        self.interval = interval
        self.state = _OUTSIDE
        self.first_token_t = token_t
        self.last_token_t = token_t
        self.gone_visit_seq = 0
        self.gone_apart = False
        """Closed on board after a door dwell it was not heard in the bus at all, longer
        than its fade time by its rhythm (:meth:`PresenceClassifier._missed_doors`)."""
        self.rot = False
        self.pred = _PRED_NONE
        self.pred_visit: StopVisit | None = None
        self.eo_amb = False
        """Its echo stretch may be no rider's (:attr:`PresenceClassifier.echo_ambiguous`):
        its seq is also what a bus of another stop pattern serving the stop the bus was at
        or coming to, as it first heard the stretch, sends there (a code collision with
        that bus), or the echo's stop lies within ``echo_reach_m`` of where the bus first
        heard it (someone standing there), or the bus has no feed to tell; so one echo point
        does not board an old stretch (:meth:`PresenceClassifier._echo_old`)."""
        self.pool_lvl = -math.inf
        """The riders' level as it joined the rotation pool (-inf: none, taken from fewer than
        ``_LEVEL_MIN_RIDERS`` riders, or never pooled): a candidate's next rid is boarded only
        near it (:meth:`PresenceClassifier._heir_near`)."""
        self.visit: StopVisit | None = None
        self.convoy: float | None = None
        self.run_odo = 0.0
        self.start: SegmentEnd | None = None
        self.start_odo = 0.0
        self.ended_t = -math.inf
        """The end of its latest closed segment: a later segment of this rid starts there
        at the earliest (:meth:`PresenceClassifier._confirm`)."""
        self.sent_t = -math.inf
        """The end of the latest tentative piece that sent its co-movement points (its own,
        or the predecessor's whose candidacy it took over): its own piece starts there at
        the earliest (:meth:`PresenceClassifier._tentative`)."""
        self.rode_t = -math.inf
        """The end of its latest ride (a closed segment that is not a tentative piece): a
        later segment starting there revives that ride (:meth:`PresenceClassifier._rode`)."""
        self.lost_ride: tuple[SegmentEnd, float, float] | None = None
        """A boarded ride dropped as a short ride lost while moving, heard again aboard
        (:meth:`PresenceClassifier._revive`): its start, start odometer and the travel not
        heard on (``held_m`` and the silence); the revived candidacy boards from there."""
        self.confirm_t = 0.0
        self.lvl_out: tuple[float, int | None] | None = None
        """The riders' level and ``_riders_key`` when it last left the bus's riders (closed on
        board; ``None`` while on board): the level its ride, if not discarded, leaves
        behind (:meth:`PresenceClassifier._unride`)."""
        self.route_id: str | None = None
        self.trip_id: str | None = None
        self.addr = ""
        self.addr_after = -1
        """The interval of the latest rid its BLE address was heard under before it (an
        earlier one), as it took that address, or -1: that rid was its token's (phones
        keep their address across a rid rotation), so no old rid from another address is
        its predecessor (:meth:`PresenceClassifier._assign`)."""
        self.d_min = math.inf
        self.per = math.inf
        self.mv_odo = -1.0
        self.mv_ewma = -127.0
        self.tk_visit: StopVisit | None = None
        """Its track (never reset by a new candidacy, :meth:`PresenceClassifier._track`):
        the stop before its first co-movement point at its track level."""
        self.tk_seq = -1
        """The visit seq of the hop of its latest track point."""
        self.tk_hops = 0
        """Hops (stop to stop) with track points."""
        self.tk_n = 0
        self.tk_sum = 0.0
        self.tk_odo = -math.inf
        self.tk_odo0 = -math.inf
        """The odometer at its track's first point."""
        self.tk_lvl = 0.0
        """Its level as its track began: as the bus left the stop, if it was that stop's
        candidate, else its smoothed RSSI at the first point."""
        self.tk_t = 0.0
        self.tk_stood = -1
        """The latest stop visit (seq) at whose open doors it was heard at its track level."""
        self.tk_apart = -1
        """The latest hop (seq of the stop it began at) in which, a candidate whose rhythm
        was known (``fade_gaps`` in-bus adverts or more), it fell silent past its fade time
        as the bus moved: apart from the bus (:meth:`PresenceClassifier._carried_and_stood`)."""
        self.tk_stay = -1
        """The latest stop visit (seq) at whose open doors it was heard at its track level
        ``stay_s`` or more after they opened (:meth:`PresenceClassifier._carried_and_stood`)."""
        self.tk_door = False
        """Its track began as the candidate of the stop it left, heard in the bus standing
        there ``stay_s`` or more after the doors opened, at its track's level: it stood in
        the bus at its track's first stop (:meth:`PresenceClassifier._track`)."""
        self.dp_visit: StopVisit | None = None
        """The stop visit at whose open doors it was first heard (``None``: first heard
        elsewhere): where it may have boarded (:meth:`PresenceClassifier._door_to_door`)."""
        self.dp_n = 0
        self.dp_sum = 0.0
        """Its adverts at ``dp_visit``'s open doors (count, RSSI sum): its level there."""
        self.dp_pt = False
        """Heard at that level ``confirm_distance_m`` or more past that stop, before the next."""
        self.dp_at = -1
        """The visit seq of the next stop at whose open doors it was heard at that level."""
        self.dp_t = 0.0
        self.dp_odo = 0.0
        """Time and odometer of that hearing."""
        self.no_echo()
        self.reset(0.0, 0.0, b"", -127)

    def no_echo(self) -> None:
        """No echo heard yet (:data:`_ECHO_DEFAULTS`, :meth:`PresenceClassifier._echo_heard`)."""
        self.ec = 0
        self.eo_k = -1
        self.eo_late = -1
        self.eo_n = 0
        self.eo_odo0 = 0.0
        self.eo_pt_odo = -math.inf
        self.eo_pt_t = -math.inf
        self.eo_pts = 0
        self.eo_seq = -1
        self.eo_sum = 0.0
        self.eo_t0 = 0.0
        self.eo_t1 = 0.0
        self.eo_vseq = 0
        self.ex_run = 0

    def reset(self, t: float, odo: float, raw: bytes, rssi: int) -> None:
        """Start a fresh candidacy (its evidence and proof start here)."""
        self.first_t = self.last_t = self.last_in_t = t
        self.first_odo = self.last_in_odo = odo
        self.first_raw = self.last_raw = self.last_in_raw = raw
        self.ewma = self.base = self.ewma0 = float(rssi)
        self.hist: dict[int, int] = {}
        """RSSI (dBm) -> adverts heard at it: the median in O(distinct levels), compact."""
        self.lv_hist: dict[int, int] = {}
        """The riders' level (:attr:`PresenceClassifier._riders_key`, dBm) -> adverts counted
        in ``hist`` heard while it was that: what ``rssi_med`` is measured against. Counted
        when the level changes, not per advert (:meth:`PresenceClassifier._lv_flush`): the
        adverts since ``lv_n`` were all heard at the current level."""
        self.lv_n = 0
        """``n_adv`` when ``lv_hist`` last counted its adverts (or was emptied)."""
        self.rssi_max = -127
        self.n_adv = self.n_in = self.n_far = 0
        self.held_m = 0.0
        """Travel of the bus while this rider was held on board through silences longer
        than its fade time (:meth:`PresenceClassifier._held`): not evidence that it rode."""
        self.far_sum = 0.0
        self.span_odo = odo
        self.span_t = t
        self.flags_or = self.last_flags = 0
        self.gap = 0.0
        """Mean time between its in-bus adverts (EWMA): how often this token is heard."""
        self.lvl: float | None = None
        """A candidate's median RSSI as the bus left its stop (co-movement is judged by it)."""
        self.co_n = 0
        self.co_sent = 0
        """Of its ``co_n`` points, those a tentative piece already sent (its own, or its
        predecessor's whose candidacy it took over): a piece sends each point once."""
        self.drift = False
        """Heard, after the bus left its stop, ``sparse_fall_db`` below its level there: it
        may still ride (a rider walking to the back), but not on sparse evidence alone."""
        self.absent = False
        """A late joiner silent at the open doors for longer than its own fade time
        (:meth:`PresenceClassifier._absent`): it boards on co-movement only if heard near
        the riders' level (:meth:`PresenceClassifier._barred`)."""
        self.fell = False
        """Heard, after the bus left its stop, well below its level there: it fell away
        (left at the stop, or a car that fell behind); it gets no grace for silences."""
        """Adverts heard, at a level near ``lvl``, while the bus was ``confirm_distance_m``
        or more past the candidate's stop: sparse co-movement evidence."""
        self.co_odo0 = self.co_odo = odo
        self.co_sum = 0.0
        self.co_lo = self.co_hi = 0.0
        """The lowest and highest smoothed RSSI at its co-movement points (since ``co_n``
        was last 0): a token aboard keeps its level along the way."""
        self.co_only = False
        """Kept through a silence past its fade time: it boards on co-movement only."""
        self.co_t = t
        self.door_t = -math.inf
        """The latest advert of it as a candidate heard while its stop's doors stood open
        (:meth:`PresenceClassifier._stood_and_carried`)."""

    def level_from_here(self) -> None:
        """Measure its level from here: empty ``hist`` and ``lv_hist`` (nothing uncounted)."""
        self.hist = {}
        self.lv_hist = {}
        self.lv_n = self.n_adv

    def outside_again(self) -> None:
        """Forget a late joiner's candidacy, keep what was heard: as if it had been outside.

        A rid first heard far past its stop that is heard from afar as the bus comes to
        the next one (someone waiting there) is that stop's candidate, judged from what
        was heard as the bus approached, exactly as a rid heard only outside.
        """
        self.lvl = None
        self.co_n = self.co_sent = 0
        self.co_sum = 0.0
        self.co_odo0 = self.co_odo = self.span_odo = self.first_odo
        self.co_t = self.span_t = self.first_t
        self.drift = self.fell = self.co_only = self.absent = False
        self.door_t = -math.inf
        self.n_far = 0
        self.far_sum = 0.0


class PresenceClassifier:
    """Turns accepted advertisements and stop visits into closed :class:`SegmentDraft`.

    Feed it, in time order: :meth:`on_trip`, :meth:`on_visit` (a visit opened or closed),
    :meth:`advert` (accepted advertisements) and :meth:`tick` (time passes; evaluates
    confirmations and fades, returns closed segments). :meth:`finish` closes everything.

    Args:
        params: thresholds.
        tag: this bus's beacon tag (:func:`busbell._echo.bus_tag` of its vehicle id): the
            tokens' echoes are read against it (``None``: no echo names this bus).
    """

    def __init__(self, params: ClassifierParams | None = None, tag: bytes | None = None) -> None:  # noqa: PLR0915 - one documented attribute per field
        p = self.params = params or ClassifierParams()
        self._rids: dict[bytes, _Rid] = {}
        self._visits: deque[StopVisit] = deque(maxlen=256)
        self._visit: StopVisit | None = None
        self._pending: dict[bytes, _Rid] = {}
        """New rid -> the rotated old rid whose segment waits for the new one to resolve."""
        self._dirty = False
        """The rotation pairing may have changed since :meth:`_assign` last ran: an old rid
        joined the pool, a new rid joined while an old one still looks for its pairs, or
        a rid of a pooled interval entered or left the live states (its BLE address is
        claimed). A resolved pair or an unpaired rid leaving changes nothing (below)."""
        self._assigned_t = float("-inf")
        self._open_until = float("-inf")
        """Until then some pooled old rid still recomputes its candidate pairs (new rids
        may still appear in its time window, clock offsets converge)."""
        self._pool_ivs: dict[int, int] = {}
        """Interval -> old rids of it in the pool."""
        self._edges_tick: dict[bytes, int] = {}
        """Old rid -> the tick its candidate pairs were computed at."""
        self._match: dict[bytes, bytes] = {}
        """New rid -> the old rid it is paired with (either kind)."""
        self._olds: dict[bytes, tuple[_Rid, int, StopVisit | None]] = {}
        """Rids that stopped at their interval's end, not yet resolved: old rid -> (the rid,
        what it was (``_PRED_ONBOARD`` or ``_PRED_CANDIDATE``), the boarding visit it hands
        over). They are paired with new rids jointly (:meth:`_assign`) on every tick."""
        self._edges: dict[bytes, list[tuple[float, bytes]]] = {}
        """Old rid -> its candidate pairs ``(cost, new rid)``, cheapest first."""
        self._index: _NewsIndex | None = None
        """The rotation pairing's index of new rids, of one tick's state (:meth:`_news_index`):
        a cache, in :attr:`STATE_CACHES`."""
        self._heirs: dict[tuple[int, str], tuple[bytes, StopVisit]] = {}
        """``(interval, BLE address)`` -> a candidate of the interval before, sent from that
        address, whose rid ended before it could board, and the boarding visit it hands
        over: the new rid sent from the same address takes over its candidacy, whenever it
        is first heard (:meth:`_inherit`)."""
        self._echo_heirs: dict[tuple[int, int], bytes] = {}
        """``(interval, the trip's stop index)`` -> a candidate of the interval before,
        dropped unconfirmed and not in the rotation pool (or let go by the pool unpaired,
        :meth:`_settle`), whose echo named this bus since
        that stop, heard with the bus past it (``b""``: two such, neither): the first rid
        of that interval whose echo names this bus since the same stop goes on with its
        stretch (:meth:`_echo_link`)."""
        self._echo_riders: dict[tuple[int, int], list[bytes]] = {}
        """``(interval, the trip's stop index)`` -> the confirmed rids (riders) of the
        interval before whose echo has named this bus since that stop: a rid of that
        interval, unconfirmed, whose echo goes on with one of their stretches (the same
        stop and seq, the same clock) is that rider's token (:meth:`_echo_rider_on`)."""
        self._echo_gone: dict[bytes, tuple[int, int, float, float, float]] = {}
        """Such a rider's rid once forgotten (its interval over): its echo's stop, its seq,
        when it was last heard, its ``d_min`` and that bound's slack (:func:`_offset_slack`):
        its token's next rid is often heard again only after it (:meth:`_echo_rider_on`)."""
        self._addr_iv: dict[str, int] = {}
        """BLE address -> the latest rid interval heard from it (while a rid of that
        interval is known): a rid whose token is heard under a later rid from its address
        has ended (:meth:`_near_end`)."""
        self._ticks = 0
        self._slot_s = p.rotation_gap_s + 4.0
        self._route_id: str | None = None
        self._trip_id: str | None = None
        self._t = float("-inf")
        self._next_tick = float("-inf")
        self.closed: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        """Contained failures of per-rid steps, by stage (see :meth:`_failed`)."""
        self.confirmed = 0
        self.discarded = 0
        self.rejected = 0
        self.tentative = 0
        """Tentative segments sent (:meth:`_tentative`)."""
        # hot-path constants
        self._tau = p.rssi_tau_s
        self._thr = p.in_bus_rssi_dbm
        self._gap = p.in_bus_gap_s
        self._base_tau = p.baseline_tau_s
        self._fade_drop = p.fade_drop_db
        self._far = p.confirm_far_m
        self._span_gap = p.confirm_gap_s
        self._fade_timeout = p.fade_timeout_s
        self._fade_gaps = p.fade_gaps
        self._co_d = p.confirm_distance_m
        self._co_step = p.sparse_step_m
        self._sparse_fall = p.sparse_fall_db
        self._run_gap = p.outside_run_gap_s
        self._grace = p.board_grace_s
        self._stay = p.stay_s
        self._rot_slack = p.rotation_slack_s
        self._rot_end = float(INTERVAL_S) - p.rotation_slack_s
        # (whether adverts' echoes are read, :meth:`_echo_heard`; off, an echo costs a test)
        self._tag, self._echo_on = tag, p.echo_evidence and tag is not None
        self.stop_index_now: Callable[[], int | None] | None = None
        """A hook (set by the pipeline: :func:`edge._beacon.beacon_stop_index` of its vehicle):
        the trip's stop index this bus's beacon sends now, stops passed without stopping
        counted; without it, the echo's stop is reckoned from the stop visits alone."""
        self.echo_ambiguous: Callable[[int, int], bool] | None = None
        """A hook (set by the pipeline from its GTFS feed, :class:`edge._beacon.EchoSeqs`):
        whether an echo of this seq first heard at or coming to the stop at this index of
        the current trip may be no rider's: a bus of another stop pattern serving that stop
        sends the seq there (its own index of it, mod 8: a code collision with such a bus,
        1 rid in 31), or the echo's stop lies within ``echo_reach_m`` of where the bus
        hears it (someone standing there may have heard the bus since). Without it (no
        feed) the bus cannot tell: every stretch is, and one echo point boards none."""
        self._echo_pts, self._ex_bar = (
            p.echo_points,
            p.echo_other_adverts if p.echo_evidence else 0,
        )
        self._floor = math.inf
        """The ``_FLOOR_RANK``-th weakest RSSI of the adverts this bus has decoded (+inf
        until it has decoded that many): its receiver's floor, as measured (a packet weaker
        than the receiver's sensitivity is not decoded), whatever the tokens' power
        (:meth:`_barred`). Not the weakest: one spurious reading would set that for the
        bus's life. An advert without an RSSI (``_RSSI_NA``) is not counted."""
        self._lows: list[float] = []
        """The ``_FLOOR_RANK`` weakest RSSIs decoded, negated (a heap: ``-_lows[0]`` is the
        highest of them, ``_floor`` once there are that many)."""
        self._riders_lvl = math.inf
        """The median baseline RSSI of the riders aboard, or, with none aboard now, of the
        riders when some were last aboard: the level at which this bus hears its riders
        (+inf until it has carried any)."""
        self._n_lvl = 0
        """How many riders' baselines the riders' level was last taken from (this tick's,
        :meth:`_follow_riders`; 0: none aboard, the level as when riders were last aboard)."""
        self._unridden = False
        """A ride was discarded as never ridden since the last tick (:meth:`_unride`)."""
        self._rode_lvl: tuple[float, float, int | None] = (-math.inf, math.inf, None)
        """The end, ``_riders_lvl`` and ``_riders_key`` of the latest ride that was not
        discarded, as its rid left the riders (:attr:`_Rid.lvl_out`; +inf and ``None``: none
        yet): what the level goes back to when the rides discarded as never ridden were all
        that was aboard (:meth:`_unride`)."""
        self._riders_key: int | None = None
        """``_riders_lvl`` to a dB (``None`` while +inf): counted in each rid's ``lv_hist``."""
        self._open_lvls: dict[int, float] = {}
        """Stop visit (seq) -> ``_riders_lvl`` as its doors first opened, for the visits kept
        in ``_visits``: the riders the bus brought to the stop, before those alighting there
        sank the level as they walked off (:meth:`_drew_up`'s level at the doors)."""
        self._resume_t = float("-inf")
        """Fades count from here at the earliest (set by :meth:`resume` after a restart)."""
        self._down: tuple[float, float] | None = None
        """The last restart's downtime: the latest time restored, the first time after."""
        self._debug = _debug_enabled()
        """Debug events are built only when they are logged (refreshed on every tick)."""

    DERIVED: ClassVar[frozenset[str]] = frozenset(
        {
            "_tau",
            "_thr",
            "_gap",
            "_base_tau",
            "_fade_drop",
            "_far",
            "_span_gap",
            "_co_d",
            "_co_step",
            "_sparse_fall",
            "_run_gap",
            "_grace",
            "_stay",
            "_rot_slack",
            "_rot_end",
            "_slot_s",
            "_debug",
            "_tag",
            "_echo_on",
            "_echo_pts",
            "_ex_bar",
        }
    )
    """Attributes derived from the parameters (not part of a checkpoint). The last
    restart's ``_down`` and ``_resume_t`` are state, checkpointed: a checkpoint taken after
    a restart and restored without a gap must go on judging as that restart did."""

    STATE_CACHES: ClassVar[frozenset[str]] = frozenset({"_index"})
    """Caches of the state, rebuilt from it on demand (each ``None`` until built): never
    checkpointed, and dropped by :meth:`drop_caches` when a restore replaces the state
    they were built from. A new cache of the state goes here (a test compares a restored
    used classifier with a restored fresh one, attribute by attribute)."""

    def drop_caches(self) -> None:
        """Drop every cache of the state (:attr:`STATE_CACHES`): its state was replaced.

        Kept, a used pipeline restored to an earlier tick would, for instance, pair
        rotated rids at that tick from another state's new rids (the index is keyed by
        tick only).
        """
        for name in self.STATE_CACHES:
            setattr(self, name, None)

    def resume(self, t: float) -> None:
        """The pipeline was restored from a checkpoint and runs again from ``t``.

        While it was down nothing was heard: riders on board, candidates and rotated
        rids waiting for a pair get their full timeouts from ``t`` instead of fading at
        once (a restart is not an alighting). Unless ``t`` is within ``resume_gap_s`` of
        the last time the classifier saw: then nothing was missed that a pipeline running
        on would have heard (records that close together come in any normal trace), and it
        goes on exactly as if it had not stopped (no grace: a replay restored at every
        record emits the same events as without a restore).
        """
        if t - self._t <= self.params.resume_gap_s:
            return
        self._resume_t = t
        self._down = (self._t, t)
        self._next_tick = float("-inf")
        self._dirty = True

    def _rot_gap(self, old: _Rid) -> float:
        """How long after an old rid's last advert its successor may first be heard.

        ``rotation_gap_s``, or ``rotation_gaps`` times the old rid's own mean gap between
        in-bus adverts if longer (at most ``rotation_settle_s``): a token heard every
        1.5-2 s through a lossy scanner misses the next 4-5 adverts around its payload
        change often enough that a fixed 5 s breaks its rides in two.
        """
        p = self.params
        # (its advertising interval, if longer: a rid heard only a few times has no mean gap
        # yet, and a 2-s advertiser's next advert is 2 s away at best)
        g = p.rotation_gaps * (old.gap if old.gap >= old.per or old.per == math.inf else old.per)
        if g <= p.rotation_gap_s:
            return p.rotation_gap_s
        return g if g < p.rotation_settle_s else p.rotation_settle_s

    def _windows(self, last_t: float) -> tuple[float, ...]:
        """The times a rid's successor may first be heard from.

        Its last advert, and the restart if it stopped before the pipeline went down
        (the successor could not be heard meanwhile).
        """
        down = self._down
        if down is not None and last_t <= down[0]:
            return (last_t, down[1])
        return (last_t,)

    # -- inputs -----------------------------------------------------------------------

    def on_trip(self, route_id: str | None, trip_id: str | None) -> None:
        """The driver signed on to a trip; new candidates are tagged with it."""
        self._route_id, self._trip_id = route_id, trip_id

    def on_visit(self, kind: str, visit: StopVisit, t: float) -> None:
        """A stop visit opened (``open``, also on re-opening) or closed (``close``)."""
        if kind != "open":
            return
        if not self._visits or self._visits[-1] is not visit:
            self._visits.append(visit)
        lvls = self._open_lvls
        if visit.seq not in lvls:  # (not on a re-opening)
            lvls[visit.seq] = self._riders_lvl
            oldest = self._visits[0].seq
            for seq in [s for s in lvls if s < oldest]:
                del lvls[seq]
        self._visit = visit
        since = visit.open_t - self.params.candidate_lookback_s
        for r in self._rids.values():
            if r.last_t < since:
                continue
            if r.state == _ROTATING and self._unpaired_rides(r, approach=True):
                # a rider's new rid the pairing could not link, heard riding with the bus
                # since its rid began: aboard before these doors opened, not a waiter
                # here; it stays what it is until it shows it stays with the bus
                continue
            if r.state in (_OUTSIDE, _ROTATING):
                r.convoy = self._convoy_level(r, visit.open_odo_m) if r.state == _OUTSIDE else None
                r.level_from_here()
                self._proof_from_here(r)
                self._become_candidate(r, visit, fresh=False)
            elif (
                (r.state == _CANDIDATE or (r.state == _GONE and r.start is None))
                and r.visit is not None
                and r.visit is not visit
                and self._far_joiner(r, r.visit)
                and (r.state == _GONE or self._rejoins(r))
            ):
                # first heard far past the stop before and not carried through this one:
                # someone waiting here, heard from afar as the bus came (as if outside)
                r.outside_again()
                r.convoy = self._convoy_level(r, visit.open_odo_m)
                r.level_from_here()
                self._proof_from_here(r)
                self._become_candidate(r, visit, fresh=r.state == _GONE)

    @staticmethod
    def _proof_from_here(r: _Rid) -> None:
        """A rid made a candidate as the doors open starts its proof with its last payload.

        Its segment starts when these doors opened (``start.t``: the candidacy begins at
        this stop), so the first payload of its proof is the one heard last, within
        ``candidate_lookback_s`` before, not the first ever heard: the backend rejects a
        segment whose proof's token time lies more than its slack (120 s) outside
        ``[start.t, end.t]`` (``tq_mismatch``). Someone waiting at the stop heard from
        afar for two minutes lost the boarding segment that way (full scale, tuning seed
        3, ``transfer_two_buses`` r-00075 and r-00081: first heard 115-120 s before the
        doors of BD005 opened, charged from BD003 by the distance of the continued
        segments after their rids rotated).
        """
        r.first_raw = r.last_raw

    def _convoy_level(self, r: _Rid, odo: float) -> float | None:
        """The slow RSSI average of a rid heard all along the way to the stop, or ``None``.

        A token heard at a steady level while the bus travelled ``convoy_m`` or more
        before the doors opened was moving with the bus outside it (a bus or car in
        convoy), or is a rider the classifier missed. Boarding must then show a clear
        change of signal. One whose smoothed RSSI as the bus last moved (before it stood
        at the stop, when a bus behind may pull up) had risen ``convoy_gain_db`` above its
        slow average was approached by the bus: someone waiting at the stop heard from
        afar, not a convoy. Not so a candidate kept through a silence (``co_only``) with
        ``_CARRY_CO`` co-movement points or more over ``convoy_m`` or more (read before
        its candidacy begins afresh here): it moved with the bus at its level, so a bus
        behind or alongside that pulled up beside this one at the stop, not someone
        waiting there (:meth:`_moved_with`).
        """
        p = self.params
        if odo - r.run_odo < p.convoy_m or (
            r.mv_ewma >= r.base + p.convoy_gain_db and not self._moved_with(r)
        ):
            return None
        return r.base

    def _moved_with(self, r: _Rid) -> bool:
        """Whether a kept candidate moved with the bus, heard at one level over ``convoy_m``.

        A candidate kept through a silence (``co_only``) with ``_CARRY_CO`` co-movement
        points or more spread over ``convoy_m`` or more of travel: it kept up with the bus
        at its level between stops, which nobody waiting at a stop does. Heard far louder
        as the bus came to the next stop (:meth:`_convoy_level`'s approach), it is in a
        vehicle that drew up beside this bus there: full scale, tuning seed 4, cell 11,
        ``shared_stop_three_routes``, r-00184 and r-00220 (aboard the 17 from BD003), heard
        by the 55 behind at about -77 dBm over 500 m (co_n 3), then at -42 to -54 dBm at
        BD004 with the 17 standing beside it: made BD004's candidate with no convoy level
        and boarded 433 m on by the unbroken stretch; settlement, seeing each rider on two
        buses at once, charged neither (``suspected_replay``).
        """
        return (
            r.state == _CANDIDATE
            and r.co_only
            and r.co_n >= _CARRY_CO
            and r.co_odo - r.co_odo0 >= self.params.convoy_m
        )

    def _convoy_ok(self, r: _Rid) -> bool:
        """A convoy candidate boards only if it rode along and got clearly stronger.

        Its unbroken in-bus stretch must span a later stop visit of this bus (doors open,
        closed, and ``confirm_far_m`` on) or ``convoy_span_m`` of travel: a bus of another
        route serving the same stops is heard well between two of them but leaves at its
        own time. Then the mean RSSI of its in-bus evidence after the bus left the stop
        must be clearly above its level before (or strong).
        """
        if r.convoy is None:
            return True
        p = self.params
        if r.last_in_odo - r.span_odo < p.convoy_span_m and not self._rode_through(r):
            return False
        mean = r.far_sum / max(1, r.n_far)  # since the bus left the stop: not inflated by a
        # neighbouring bus at the same stop
        return mean >= r.convoy + p.convoy_gain_db or mean >= p.convoy_strong_dbm

    def _rode_through(self, r: _Rid) -> bool:
        """Whether the rid's unbroken in-bus stretch spans a whole later stop visit."""
        v = r.visit
        assert v is not None
        w = None
        for x in self._visits:
            if x.seq > v.seq and x.close_odo_m is not None:
                w = x
                break
        return (
            w is not None
            and w.close_odo_m is not None
            and r.span_odo <= w.open_odo_m
            and r.last_in_odo >= w.close_odo_m + self.params.confirm_far_m
        )

    def advert(  # noqa: PLR0912, PLR0915, PLR0917 - the hot path: inline, positional args
        self,
        t: float,
        rid: bytes,
        interval: int,
        token_t: float,
        rssi: int,
        flags: int,
        raw: bytes,
        odo: float,
        addr: str = "",
        echo: int = 0,
    ) -> None:
        """One accepted advertisement.

        Args:
            t: GNSS time of reception.
            rid: the 12-byte rid.
            interval: the rid's interval (from the token's time).
            token_t: the token's time reconstructed from ``tq``.
            rssi: dBm.
            flags: header flag bits.
            raw: the 24-byte payload (kept for the proof).
            odo: the bus odometer (m) now.
            addr: the BLE address it came from (helps pair a rider's rotating rids).
            echo: byte 23 of the payload, the token's echo of the bus it has heard
                longest (0: none; :meth:`_echo_heard`).
        """
        r = self._rids.get(rid)
        if rssi < self._floor and rssi > _RSSI_NA:
            self._note_low(float(rssi))
        v = self._visit
        at_stop = v is not None and (v.close_t is None or t - v.close_t <= self._grace)
        dt = 0.0
        late = False
        if r is None:
            was = float(rssi)  # its smoothed level before this advert
            # first heard once the bus left its last stop, before the next one: a weak token
            # of someone who boarded there, not heard while the doors stood open (nobody
            # boards between stops), or someone outside; it is judged as that stop's late
            # joiner, and one first heard confirm_far_m or more away must also ride on
            # with the bus through a later stop's doors (:meth:`_moved_on`)
            late = (
                not at_stop
                and v is not None
                and v.close_odo_m is not None
                and token_t - interval * INTERVAL_S >= self._rot_slack
            )
            r = self._new(t, rid, interval, token_t, rssi, raw, odo, at_stop or late)
            if at_stop or late:
                r.state = int(State.NEW)
            if v is not None and v.close_odo_m is None and not r.rot:
                r.dp_visit = v  # first heard with the doors open (:meth:`_door_to_door`)
        elif t > r.last_t:
            dt = t - r.last_t
            if dt < r.per and dt > _MIN_PERIOD_S:  # (the first test is false for most adverts)
                r.per = dt  # the token's advertising interval (shortest gap heard)
            # (locals: the same float operations in the same order as r.ewma += ...)
            was = ewma = r.ewma
            r.ewma = ewma = ewma + dt / (self._tau + dt) * (rssi - ewma)
            if odo != r.mv_odo:  # the bus moved: its level as the bus last moved
                r.mv_odo = odo
                r.mv_ewma = ewma
            base = r.base
            if rssi >= base - self._fade_drop or r.state != _ONBOARD:
                # (a rider's baseline does not follow adverts far below it: someone who
                # alighted, heard 30 dB down as the bus leaves, is not in-bus evidence)
                r.base = base + dt / (self._base_tau + dt) * (rssi - base)
            if dt > self._run_gap:
                r.run_odo = odo  # heard again after a silence: a new run
            if t - r.first_t <= _START_S:
                r.ewma0 = ewma  # its level as it appeared (pairs a rotation)
            r.last_t = t
        else:
            was = r.ewma
        state = r.state
        if state == _GONE and not at_stop and r.start is not None and self._revives(r, odo):
            assert v is not None
            self._revive(r, v, t, odo, raw, rssi)
            state = _CANDIDATE
        if (at_stop or late) and (
            state <= _OUTSIDE
            or (state == _ROTATING and not (at_stop and self._unpaired_rides(r, approach=True)))
            or (state == _GONE and v is not None and v.seq > r.gone_visit_seq)
            or (state == _CANDIDATE and r.co_only and v is not r.visit and self._rejoins(r))
        ):
            assert v is not None
            convoy = self._convoy_level(r, odo)
            if state != _ROTATING:
                r.reset(t, odo, raw, rssi)
            r.convoy = convoy
            self._become_candidate(r, v, fresh=True)
            state = _CANDIDATE
            if late or (v.close_t is not None and not r.rot):
                # first heard once the doors had closed (a late joiner): nobody boards
                # through closed doors, so it was aboard unheard or is a vehicle arriving
                # as the bus leaves; it boards on co-movement only
                r.co_only = True
        if token_t > r.last_token_t:  # noqa: PLR1730 - cheaper than max() on the hot path
            r.last_token_t = token_t
        offset = t - token_t
        if offset < r.d_min:  # noqa: PLR1730 - cheaper than min()
            r.d_min = offset
        if addr != r.addr:
            r.addr = addr
            if addr:
                before = self._addr_iv.get(addr, -1)
                if before < interval:
                    self._addr_iv[addr] = interval
                    r.addr_after = before
            if self._pool_ivs:
                self._claim_changed(r)
        r.last_raw = raw
        r.n_adv += 1
        hist = r.hist
        hist[rssi] = hist.get(rssi, 0) + 1
        # (its lv_hist counts this advert when the riders' level next changes: _lv_flush)
        if rssi > r.rssi_max:  # noqa: PLR1730 - cheaper than max()
            r.rssi_max = rssi
        r.last_flags = flags
        r.flags_or |= flags
        lvl = r.lvl
        if state == _CANDIDATE and lvl is not None:
            cv = r.visit
            if (
                cv is not None
                and cv.close_odo_m is not None
                and odo > cv.close_odo_m
                # (only when :meth:`_co_move` has something to do: most adverts of a
                # dense candidate come before the first or within one sparse step, and
                # at its level)
                and (
                    r.ewma < lvl - self._sparse_fall
                    or r.ewma < lvl - self._fade_drop
                    or (
                        odo >= cv.close_odo_m + self._co_d
                        and (r.co_n == 0 or odo >= r.co_odo + self._co_step)
                    )
                )
            ):
                self._co_move(r, t, rssi, odo, was)
        if v is not None and v.close_odo_m is None:  # the bus stands at a stop, doors open
            dv = r.dp_visit
            if dv is not None and state != _ONBOARD:
                if dv is v:
                    r.dp_n += 1
                    r.dp_sum += rssi
                elif (
                    r.dp_pt
                    and v.seq == dv.seq + 1
                    and t >= v.open_t + self._stay
                    and abs(rssi - r.dp_sum / r.dp_n) <= self._sparse_fall
                ):
                    # heard at its level at the next stop's doors, stay_s after they opened
                    r.dp_at = v.seq
                    r.dp_t = t
                    r.dp_odo = odo
            if state == _CANDIDATE and r.visit is v:
                r.door_t = t  # (:meth:`_stood_and_carried`)
            if state == _ONBOARD:
                if t >= v.open_t + self._stay and rssi >= r.base - self._fade_drop:
                    r.tk_stood = v.seq  # a rider staying aboard through a stop (:meth:`_rode`)
            elif r.tk_n and state != _ROTATING:
                mean = r.tk_sum / r.tk_n
                if r.ewma > mean + self._sparse_fall:
                    # louder at the stop than on the way: someone waiting there, heard from
                    # afar as the bus came (their track, if any, starts at this stop)
                    r.tk_n = r.tk_hops = 0
                    r.tk_sum = 0.0
                    r.tk_stood = r.tk_stay = -1
                elif abs(rssi - mean) <= self._sparse_fall:
                    r.tk_stood = v.seq  # heard at its track's level in the standing bus
                    if t >= v.open_t + self._stay:
                        r.tk_stay = v.seq  # ... and still there well after the doors opened
            elif state == _CANDIDATE and r.visit is v and t >= v.open_t + self._stay:
                # no track yet: a candidate heard in the bus standing here well after the
                # doors opened (a vehicle beside the bus drives on as it halts); a track it
                # begins on the next hop at its level here began in the bus (:meth:`_track`)
                r.tk_stay = v.seq
        elif (
            v is not None
            and not at_stop
            # (a rotating rid too: a token whose rid began between stops was aboard
            # before, and a fob's new rid unpaired is heard moving with the bus from the
            # rotation on: its track, like any, begins in the hop from the stop it left)
            and state != _ONBOARD
            and v.close_odo_m is not None
            and odo >= v.close_odo_m + self._co_d
            and odo >= r.tk_odo + self._co_step
        ):
            self._track(r, v, t, rssi, odo)  # moving with the bus, past the stop it left
        if (
            v is not None
            and r.dp_visit is v
            and not r.dp_pt
            and not at_stop
            and state != _ONBOARD
            and r.dp_n
            and v.close_odo_m is not None
            and odo >= v.close_odo_m + self._co_d
            and abs(rssi - r.dp_sum / r.dp_n) <= self._sparse_fall
            # (and near the riders aboard: a car beside the bus is heard through two shells)
            and rssi >= self._riders_lvl - self.params.in_bus_margin_db
        ):
            r.dp_pt = True  # carried from the stop at its level there (:meth:`_door_to_door`)
        thr = self._thr
        if state >= _CANDIDATE and state <= _ONBOARD:
            below = r.base - self._fade_drop
            if below > thr:  # noqa: PLR1730 - cheaper than max()
                thr = below
        if r.ewma >= thr and (
            dt <= self._gap
            # a rider heard only now and then (weak, deep in a bag): in the bus if at its
            # usual level (median of the ride); one who left is heard only far below it
            or (state == _ONBOARD and rssi >= (_median(hist) or rssi) - self._fade_drop)
        ):
            if state == _CANDIDATE or state == _ROTATING:  # noqa: PLR1714, SIM109 - hot path
                if r.n_far and t - r.last_in_t > self._span_gap:
                    # a silence ends the stretch wherever the bus is: heard again near the
                    # stop (inside confirm_far_m), it must not bridge the silence
                    r.n_far = 0
                cv = r.visit
                c_odo = cv.close_odo_m if cv is not None else None
                if state == _ROTATING or (c_odo is not None and odo >= c_odo + self._far):
                    # evidence away from the stop; a gap restarts the stretch
                    if r.n_far == 0 or t - r.last_in_t > self._span_gap:
                        r.n_far = 0
                        r.far_sum = 0.0
                        r.span_odo = odo
                        r.span_t = t
                    r.n_far += 1
                    r.far_sum += rssi
            if state == _ONBOARD and t - r.last_in_t > self._fade_timeout:
                silent = t - max(r.last_in_t, self._resume_t)
                mean_gap = (t - r.first_t) / (r.n_adv - 1) if r.n_adv > 1 else 0.0
                if silent > self._fade_s(r) and silent > self._fade_gaps * mean_gap:
                    # heard again after a silence it was held on board through (nobody
                    # leaves a moving bus), longer than its fade time and than fade_gaps of
                    # its mean gap since first heard (a sparse token's rhythm, which its
                    # fade time has not learnt yet on its first adverts aboard): the way it
                    # was not heard is no evidence that it rode. A car that drove ahead
                    # after a red light and is caught up with at the next one is heard in
                    # clusters kilometres apart (:meth:`_rode`)
                    r.held_m += odo - r.last_in_odo
            if r.n_in:
                r.gap += _GAP_W * (t - r.last_in_t - r.gap)
            r.last_in_t = t
            r.last_in_odo = odo
            r.last_in_raw = raw
            r.n_in += 1
        if echo and self._echo_on:
            self._echo_heard(r, t, echo, rssi, odo, v)
        if t > self._t:  # noqa: PLR1730 - cheaper than max()
            self._t = t

    def _track(self, r: _Rid, v: StopVisit, t: float, rssi: int, odo: float) -> None:
        """A co-movement point of a rid's track.

        Heard ``confirm_distance_m`` or more past the stop the bus left (``v``),
        ``sparse_step_m`` or more past its previous point. The track is kept whatever
        the rid's candidacies (a new candidacy at each stop resets those), a rotating
        rid's too (the new rid of a fob, whose address changes with it, that nothing
        paired): the hops (stop to stop) in which it was heard moving with the bus at one
        level (within ``sparse_fall_db`` of the mean of its points), from the stop before
        its first point on. A point off that level starts the track afresh there
        (someone waiting at a stop, heard faintly from afar, then loud aboard, boarded at
        that stop).
        """
        if r.tk_n and abs(rssi - r.tk_sum / r.tk_n) > self._sparse_fall:
            r.tk_n = r.tk_hops = 0
            r.tk_sum = 0.0
            r.tk_stood = r.tk_stay = -1
        if r.tk_n == 0:
            r.tk_visit = v
            r.tk_seq = -1
            r.tk_odo0 = odo
            r.tk_lvl = r.lvl if r.lvl is not None and r.visit is v else r.ewma
            # its candidacy there was heard in the bus standing at that stop ``stay_s`` or
            # more after the doors opened, at the level it is now carried at: it stood in
            # the bus there (someone left at the stop is heard, if at all, far below their
            # level there 150 m on; a car beside the bus drives on as it halts)
            r.tk_door = (
                r.visit is v
                and r.tk_stay == v.seq
                and r.lvl is not None
                and abs(rssi - r.lvl) <= self._sparse_fall
            )
        if v.seq != r.tk_seq:
            r.tk_seq = v.seq
            r.tk_hops += 1
        r.tk_n += 1
        r.tk_sum += rssi
        r.tk_odo = odo
        r.tk_t = t

    # -- the token's echo of the bus (token v1 byte 23) ----------------------------------

    def _echo_heard(  # noqa: PLR0917 - called from the hot path
        self, r: _Rid, t: float, echo: int, rssi: int, odo: float, v: StopVisit | None
    ) -> None:
        """An advert of ``r`` whose echo is not 0 (``echo_evidence`` on; docs/protocol.md).

        Its code is this bus's for the rid (``ec``, computed once per rid) or another
        bus's: another's counts in ``ex_run`` (echoes in a row naming another bus; one
        naming this bus resets it). An echo naming this bus with a ``seq`` other than the
        last one's starts its stretch's record: the trip's stop it began at (``eo_k``) is
        the stop with that residue mod 8 at or before the stop the bus was at or coming to
        as it first heard the stretch (the token heard the bus without a gap since then,
        so it began no later); a stop index the bus does not know gives none. Each advert
        of the stretch heard ``confirm_distance_m`` or more past the stop the bus left
        last, that stop at or after ``eo_k`` (the bus has left the echo's stop), and
        ``sparse_step_m`` or more past the previous such point, is a point (``eo_pts``,
        RSSI summed in ``eo_sum``): the bus's own hearing of a token that says it has
        been with it since that stop (:meth:`_echo_from`).
        """
        code = r.ec
        if not code:
            assert self._tag is not None
            r.ec = code = echo_code(self._tag, r.rid)
        if echo >> 3 != code:
            r.ex_run += 1
            return
        r.ex_run = 0
        seq = echo & (SEQ_MOD - 1)
        if seq != r.eo_seq:
            r.eo_seq = seq
            r.eo_t0 = t
            r.eo_odo0 = odo
            r.eo_n = r.eo_pts = 0
            r.eo_late = -1
            r.eo_sum = 0.0
            r.eo_pt_odo = r.eo_pt_t = -math.inf
            r.eo_vseq = 0 if v is None else v.seq
            now = self.stop_index_now
            if now is not None:
                i = now()
                cur = -1 if i is None else i
            elif v is None:
                cur = 0  # (before the trip's first stop: seq 0)
            elif v.stop_index is None:
                cur = -1
            else:  # the stop served, or next once the doors closed
                cur = v.stop_index if v.close_t is None else v.stop_index + 1
            k = cur - (cur - seq) % SEQ_MOD
            r.eo_k = k if cur >= 0 and k >= 0 else -1
            amb = self.echo_ambiguous
            r.eo_amb = amb is None or (cur >= 0 and amb(cur, seq))
            if r.start is not None:
                self._echo_rider(r)  # (a rider's stretch begun afresh)
        r.eo_n += 1
        r.eo_t1 = t
        if (
            v is not None
            and v.seq > r.eo_late
            and (v.close_t is not None or t >= v.open_t + self._stay)
        ):
            r.eo_late = v.seq  # heard past v's doors, or in the bus standing there stay_s on
        k = r.eo_k
        if (
            k >= 0
            and v is not None
            and v.close_odo_m is not None
            and v.stop_index is not None
            and v.stop_index >= k
            and odo >= v.close_odo_m + self._co_d
            and odo >= r.eo_pt_odo + self._co_step
        ):
            r.eo_pts += 1
            r.eo_sum += rssi
            r.eo_pt_odo = odo
            r.eo_pt_t = t
            if r.eo_pts == 1 and r.state == _GONE:
                self._echo_bequeath(r)  # (a candidate dropped before its first point)

    def _echo_bequeath(self, r: _Rid) -> None:
        """A dropped candidate with echo points: its next rid may go on with its stretch.

        Not one in the rotation pool (it pairs its own), confirmed once, or whose latest
        echo named another bus (:meth:`_echo_link`).
        """
        if r.ex_run == 0 and r.eo_k >= 0 and r.start is None and r.rid not in self._olds:
            key = (r.interval + 1, r.eo_k)
            got = self._echo_heirs.get(key)
            self._echo_heirs[key] = r.rid if got is None or got == r.rid else b""

    def _echo_link(self, r: _Rid) -> bool:
        """Whether ``r`` now goes on with a dropped candidate's echo stretch (its token's).

        A token's echo stretch outlives its rid (:meth:`_echo_continues`). A candidate
        dropped long before its rid ended (silent past its fade time: a weak token deep in
        a bag) is not in the rotation pool, and nothing pairs its next rid with it. A
        candidate of the next interval, not paired by the rotation pairing, whose echo
        names this bus since the same stop of the trip (``eo_k``), first heard after the
        dropped one's last advert, with the same clock (``skew_tolerance_s``), goes on
        with its stretch (:attr:`_echo_heirs`): the token has heard this bus without a
        gap since that stop, under both rids. If the dropped rid's BLE address has been
        heard under a later rid (a phone keeps its address), only a rid from that address
        is its token's. Asked when the echo rule judges ``r`` (not at its first echo: the
        riders aboard from that stop echo it too, and the first of their new rids would
        take it). Full scale, tuning seed 1, cell 23, ``bus_alongside_red_light``
        r-00115 (BD003 -> BD006, the bus serving no stop between): 4 echo points under
        its first rid, dropped 80 s after BD003's doors; its stretch heard at BD006's
        doors only under its next rid: missed.

        Across a stop the bus served between the dropped rid's last advert and ``r``'s
        first (by its token's clock), the dropped rid must have ``echo_points`` points of
        its own (twenty-fifth pass): the interval, stop, seq and clock that join the two
        are shared by everyone who has heard the bus since that stop (waiters at the
        stops served since, passers-by: a beacon carries farther than a token; phones'
        clocks agree), and the echo rule never boards on one point. A passer-by's one
        point and a waiter's one point as the bus drew near a later stop made two: full
        scale, tuning seed 3, cell 22, ``shared_stop_three_routes`` r-00313 (at BD009,
        never past its doors) went on with r-00284's dropped rid (1.5 s mid-hop before
        BD008, one point; BD008 served between) and was charged BD006 -> BD009. Within
        one hop a one-point rid still hands its stretch on: the next rid of a token
        rotating on the hop (full scale, tuning seeds 1-2, cell 24,
        ``bus_alongside_red_light`` r-00103, r-00113, ``phone_deep_in_bag`` r-00088).
        """
        if r.eo_k < 0 or r.ex_run or r.start is not None:
            return False
        if r.pred == _PRED_CANDIDATE:
            return self._echo_paired(r)
        if r.pred != _PRED_NONE or not self._echo_heirs:
            return False
        key = (r.interval, r.eo_k)
        o = self._echo_heirs.get(key)
        old = self._rids.get(o) if o else None
        if (
            old is None
            or old.state != _GONE
            or old.start is not None
            or (old.eo_pts < self._echo_pts and self._served_since(old.last_t, r))
            or old.eo_seq != r.eo_seq
            or old.last_t > r.first_t
            or _clock_gap(old, r) > self.params.skew_tolerance_s
            or (
                old.addr
                and old.addr != r.addr
                and self._addr_iv.get(old.addr, old.interval) > old.interval
            )
        ):
            return False
        del self._echo_heirs[key]
        self._echo_continues(r, old)
        if self._debug:
            log.debug("rid_echo_linked", rid=r.rid.hex(), old=old.rid.hex(), eo_k=r.eo_k)
        return True

    def _served_since(self, t: float, r: _Rid) -> bool:
        """Whether the bus served a stop after ``t`` and before ``r`` was first heard.

        Its doors opened after ``t`` and closed before ``r``'s first advert by its token's
        clock (``first_token_t + d_min``, a lower bound of when; a candidacy begun afresh
        moves ``first_t`` on).
        """
        w = self._visit_after(t)  # (visits follow one another: the first closes first)
        return w is not None and w.close_t is not None and w.close_t < r.first_token_t + r.d_min

    def _echo_rider_on(self, r: _Rid) -> StopVisit | None:
        """The stop a rider's next rid rides on from, by its echo, or ``None``.

        ``r``, unconfirmed and unpaired, whose own echo stretch does not board it
        (:meth:`_echo_from`), goes on with a rider's: a confirmed rid of the interval
        before whose echo names this bus since the same stop with the same seq, last heard
        before ``r`` was first heard, with the same clock (``skew_tolerance_s``), exactly
        one such (riders who boarded at one stop in one interval share the stop and the
        seq; where clocks agree, none is told apart and nothing is linked). ``r`` must show
        it rides as that rider would: ``echo_points`` points of its own, their mean within
        ``in_bus_margin_db`` of the riders' level and ``sparse_fall_db`` of its own level,
        not barred, fallen away or a convoy, and heard past the doors of a stop after
        the one the bus served last before it first heard the stretch under ``r`` (or in
        the bus standing there ``stay_s`` after they opened: ``eo_late``), as a rider
        rides through a stop and a car beside the bus drives on. It is boarded from that
        stop (the rider was aboard when the bus left it): the backend joins it with the
        rider's earlier segments of the trip.

        A sparse token's next rid, first heard far from the rotation (the pairing never
        saw it) and a few times a minute, had no rule to board it while its old rid was
        held aboard through the silence and closed ``alighted`` at the next door: the
        ride was cut there. Full scale, tuning seed 2, cell 24 (BLE addresses rotate with
        the rid, clocks +-55 s), ``transfer_bunched`` r-00055 (BD005 -> SE002, charged to
        SE001: its next rid first heard 14 km past BD009, 3 echo points since BD005, at
        SE002's doors, never boarded); ``long_ride_many_intervals`` r-00038 and r-00042,
        ``transfer_two_buses`` r-00097 likewise.
        """
        p = self.params
        n = r.eo_pts
        if (
            n < self._echo_pts
            or n == 0
            or r.start is not None
            or r.eo_k < 0
            or r.ex_run
            or r.fell
            or r.convoy is not None
        ):
            return None
        mean = r.eo_sum / n
        if mean < self._riders_lvl - p.in_bus_margin_db or (
            r.lvl is not None and mean < r.lvl - self._sparse_fall
        ):
            return None
        rids = self._echo_riders.get((r.interval, r.eo_k))
        if not rids or self._barred(r):
            return None
        w = self._visit_at(r.eo_t0)  # (the stop served before its stretch was first heard)
        if w is None or w.close_t is None or w.close_odo_m is None or r.eo_late <= w.seq:
            return None
        tol = p.skew_tolerance_s
        slack = _offset_slack(r)
        found = b""
        for o in rids:
            old = self._rids.get(o)
            if old is not None:
                if (
                    old.start is None
                    or old.ex_run
                    or old.eo_k != r.eo_k
                    or old.eo_seq != r.eo_seq
                    or old.last_t > r.first_t
                    or o in self._olds
                    or _clock_gap(old, r) > tol
                ):
                    continue
            else:
                g = self._echo_gone.get(o)
                if g is None:
                    continue
                k, seq, last_t, d_min, old_slack = g
                skew = r.d_min - d_min
                if (
                    k != r.eo_k
                    or seq != r.eo_seq
                    or last_t > r.first_t
                    or max(skew - slack, -skew - old_slack) > tol
                ):
                    continue
            if found:
                return None  # two riders whose stretch it may go on with: neither
            found = o
        if not found:
            return None
        rids.remove(found)
        self._echo_gone.pop(found, None)
        if self._debug:
            log.debug("rid_echo_rider", rid=r.rid.hex(), old=found.hex(), stop_id=w.stop_id)
        return w

    def _echo_succeeded(self, old: _Rid) -> None:
        """A rider's rid whose next rid the rotation pairing found: no other rid goes on with it."""
        got = self._echo_riders.get((old.interval + 1, old.eo_k))
        if got is not None and old.rid in got:
            got.remove(old.rid)
            if not got:
                del self._echo_riders[(old.interval + 1, old.eo_k)]

    def _echo_rider(self, r: _Rid) -> None:
        """Note a confirmed rid's echo stretch for its token's next rid (:meth:`_echo_rider_on`)."""
        if r.eo_k >= 0:
            key = (r.interval + 1, r.eo_k)
            got = self._echo_riders.get(key)
            if got is None:
                self._echo_riders[key] = [r.rid]
            elif r.rid not in got:
                got.append(r.rid)

    def _echo_paired(self, r: _Rid) -> bool:
        """Whether ``r`` now goes on with the echo stretch of the candidate it is paired with.

        The rotation pairing paired ``r`` with a candidate's old rid (``pred`` a candidate:
        it hands its boarding visit over) whose echo names this bus since the same stop:
        the token's stretch, heard under both rids (:meth:`_echo_continues`; the old rid's
        points go over once). Full scale, tuning seed 1, cell 23,
        ``rider_jumps_off_last_moment`` r-00061 (BD008 -> BD009): two echo points on the
        hop under its first rid, its next rid heard in the bus standing at BD009 only, its
        own candidacy there; each rid too thin alone: missed.
        """
        got = self._matched_old(r)
        if got is None:
            return False
        old = got[0]
        if not old.eo_pts or old.ex_run or old.eo_seq != r.eo_seq or old.eo_k != r.eo_k:
            return False
        self._echo_continues(r, old)
        old.eo_pts, old.eo_sum = 0, 0.0  # (its points count once)
        if self._debug:
            log.debug("rid_echo_linked", rid=r.rid.hex(), old=old.rid.hex(), eo_k=r.eo_k)
        return True

    def _echo_visit(self, r: _Rid) -> StopVisit | None:
        """The closed stop visit of the trip's stop ``eo_k`` (the echo's stop), or ``None``.

        Looked for among the visits up to ``SEQ_MOD`` before the one the bus was at or
        past as it first heard the stretch (``eo_vseq``) and the one after, with no trip
        boundary between (going back, the stops' indices fall visit by visit): a stop
        passed without stopping, or not served yet, names none.
        """
        k, vs = r.eo_k, r.eo_vseq
        if k < 0:
            return None
        after = _NEVER  # (the stop index of the visit after, going back: an int, compiled)
        for x in reversed(self._visits):
            if x.seq > vs + 1:
                continue
            if x.seq < vs - SEQ_MOD:
                return None
            i = x.stop_index
            if i is None:
                continue
            if i >= after:
                return None  # a trip boundary between
            if i == k:
                return x if x.close_t is not None else None
            if i < k:
                return None
            after = i
        return None

    def _echo_from(self, r: _Rid, v: StopVisit, *, thin: bool = False) -> StopVisit | None:
        """The stop a candidate of ``v`` has been aboard since by its echo, or ``None``.

        Its latest echo names this bus (``ex_run`` 0) with a stretch that began at a stop
        the bus served (:meth:`_echo_visit`), ``v`` or one before it, and the bus heard
        the stretch at ``echo_points`` points or more since it left that stop
        (:meth:`_echo_heard`), their mean within ``in_bus_margin_db`` of the riders' level
        and, once it has one, within ``sparse_fall_db`` of its level at its stop (one left
        there hears the bus a while longer, and is heard falling away); not barred from
        co-movement (:meth:`_barred`), fallen away or a convoy. The bus's own hearing,
        never the echo alone: a code collides with another bus's for 1 rid in 31, and a
        token of a rider of a bus beside this one is heard through two shells. And the
        stretch heard past a later stop's doors, or in the bus standing there ``stay_s``
        after they opened (``eo_late``): it stayed with the bus through a stop. Whoever is
        near the bus at a stop hears its beacon and echoes it with that stop's seq
        (waiters, pedestrians, cars); a car beside the bus drives on as it halts (small
        scale, tuning seed 2, cell 22, ``rush_hour_crowd`` r-00072: a car heard at BD003's
        doors, at a red light and on to 665 m, gone before BD004, was boarded on two echo
        points without it and charged BD003 -> BD004). A stop
        before ``v`` counts only if the bus heard that stretch at its doors or in the hop
        after it (:meth:`_echo_near`): someone waiting at ``v`` who heard the bus serve a
        stop before (a beacon carries farther than a token) is heard only near ``v``.
        """
        p = self.params
        n = r.eo_pts
        if (
            n == 0
            or (n < self._echo_pts and not (thin and self._echo_old(r)))
            or r.ex_run
            or r.fell
            or r.convoy is not None
        ):
            return None
        mean = r.eo_sum / n
        if mean < self._riders_lvl - p.in_bus_margin_db or (
            r.lvl is not None and mean < r.lvl - self._sparse_fall
        ):
            return None
        w = self._echo_visit(r)
        if w is None or w.seq > v.seq or self._barred(r):
            return None
        if r.eo_late <= w.seq and not self._echo_alights(r, w):
            return None
        if w is not v and not self._echo_near(r, w, v if thin else None):
            return None
        return w

    def _echo_judge(
        self, r: _Rid, v: StopVisit, ok: bool, *, riders: bool = True
    ) -> StopVisit | None:
        """The stop ``r``, a candidate of ``v`` (or one dropped), boards from by its echo.

        :meth:`_echo_from` on its own stretch if it has ``echo_points`` points; else, or
        if its own stretch does not board it, on the stretch it goes on with from its
        token's previous rid (:meth:`_echo_link`: the rotation pairing's candidate, or a
        dropped candidate of the same stop, seq and clock). ``ok``: the candidacy may be
        judged now (``confirm_min_s`` after its stop's doors closed); the link is made
        before then if the rid has too few points of its own (as before this pass).
        ``riders``: a rid whose stretch does not board it may still go on with a rider's
        (:meth:`_echo_rider_on`; not when dating a boarding another rule made, where a
        waiter heard near its stop would be dated back to the stop before), and a stretch
        first heard as the bus drew near a stop counts (:meth:`_echo_near`'s ``thin``).

        A new rid with points of its own whose stretch alone does not board it (first
        heard within ``confirm_distance_m`` of the next stop's doors, :meth:`_echo_near`,
        or too few points since a later stop) was judged on them alone, and its token's
        earlier rid's stretch, heard from its stop's doors, was never joined to it: full
        scale, tuning seed 1, cell 24 (BLE addresses rotate with the rid),
        ``rush_hour_crowd`` r-00036 (BD008 -> BD009: 10 adverts at BD008's doors and 2
        echo points on the hop under one rid, 28 s of silence around the rotation, its next
        rid first heard 642 m on, 2 echo points, 120 m before BD009's doors): missed.
        """
        own = r.eo_pts >= self._echo_pts
        if own or (ok and riders and self._echo_old(r)):
            if not ok:
                return None
            w = self._echo_from(r, v, thin=riders)
            if w is not None:
                return w
            if own and riders and self._echo_riders and r.pred == _PRED_NONE:
                w = self._echo_rider_on(r)
                if w is not None:
                    return w
        if (self._echo_heirs or r.pred == _PRED_CANDIDATE) and self._echo_link(r):
            return self._echo_from(r, v, thin=riders) if ok else None
        return None

    def _echo_old(self, r: _Rid) -> bool:
        """Whether ``r``'s stretch is old: one echo point is then enough to board it.

        It has at least one echo point, and the bus served a stop after the echo's stop
        ``w`` (:meth:`_echo_visit`), its doors opened and closed, before it first heard
        the stretch: the token heard this bus without a gap from ``w`` on, through a whole
        stop served, before the bus ever heard the token. Nobody waiting at a stop does
        that (a waiter at a stop names that stop, or the one before when it heard the bus
        coming), nor anyone left at ``w``; the bus's own hearing (the point: moving with
        it, ``confirm_distance_m`` past the stop it left last, at the riders' level) says
        it is still with the bus. Not when the seq may be another bus's (``eo_amb``): a
        code collides for 1 rid in 31, and a bus of another pattern serving the stop where
        this bus first heard the stretch sends its own index of that stop, which this bus
        reads as a stop served long before (thirty-fifth pass: all four people on no bus
        that one point boarded, full cells 23 and 22, were such collisions with a G6000
        run; thirty-eighth pass), nor when the echo's stop lies within ``echo_reach_m`` of
        where the bus first heard the stretch: someone standing near a route looping back
        past that stop may have heard the bus since it served it, and is heard once as the
        bus draws near (forty-first pass); nor without the feed that says either.
        """
        if r.eo_pts < 1 or r.eo_k < 0 or r.eo_amb:
            return False
        w = self._echo_visit(r)
        if w is None:
            return False
        for x in reversed(self._visits):
            if x.seq <= w.seq:
                return False
            if x.close_t is not None and x.close_t < r.eo_t0:
                return True
        return False

    def _echo_alights(self, r: _Rid, w: StopVisit) -> bool:
        """Whether ``r`` was last heard at the open doors of the first stop served after ``w``.

        Its stretch not heard past a later stop's doors (``eo_late``), but it was there as
        they opened, its latest echo naming this bus: a one-hop rider walking out (small
        number of adverts, heard between the stops at ``echo_points`` points). Full
        scale, tuning seed 1, cell 23, ``shared_stop_three_routes`` r-00240 (BD003 ->
        BD005, the bus serving no stop between): two echo points on the hop, heard twice
        in the first seconds at BD005's doors: missed.
        """
        x = self._visits[-1] if self._visits else None
        return (
            x is not None
            and x.seq == w.seq + 1
            and r.last_t >= x.open_t
            and (x.close_t is None or r.last_t <= x.close_t)
        )

    def _echo_near(self, r: _Rid, w: StopVisit, thin: StopVisit | None = None) -> bool:
        """Whether the bus first heard ``r``'s stretch where no one waiting at a later stop is.

        At ``w``'s doors (at or before their closing, ``board_grace_s`` after included), or
        between two stops since: ``confirm_distance_m`` or more past the stop the bus left
        last and as far before the next one's doors (the hop after ``w`` or any later one;
        never at a later stop's doors). Someone waiting at a later stop is heard by the bus
        near that stop only: a waiter at BD005 had heard bus-17 since it served BD003, 1.4
        km of its route back (a loop brings them near; small scale, tuning seed 3, cell 22,
        ``shared_stop_three_routes`` r-00007: charged from BD003 when a stop two stops or
        300 m of travel back counted without the bus's hearing). A weak token is often
        first heard far along its ride: full scale, tuning seed 2, cell 22,
        ``rush_hour_crowd`` r-00191 (BD004 -> BD010, echo since BD004), first heard 675 m
        past BD009, five stops on, was missed when only the hop after ``w`` counted.

        ``thin``: the candidate's stop, when the echo rule itself would board it (not when
        it dates another rule's boarding, :meth:`_confirm_new`). Then a stretch first heard
        as the bus drew near a stop ``x`` (within ``confirm_distance_m`` of its doors) also
        counts once the bus has heard it ``confirm_distance_m`` or more past ``x`` (its
        latest point), if it was not heard at ``x``'s open doors (``x`` after the
        candidate's stop, or the candidate's own stop unheard at its doors: ``door_t``):
        it rode on through ``x``, and was not waiting there. Full scale, tuning seed 1,
        cell 22, ``shared_stop_three_routes`` r-00239 (BD003 -> BD008, echo since BD003):
        first heard 4.5 s before BD006's doors opened, silent there, dropped, heard again
        751-779 m past BD006 and at BD008's doors: missed. A waiter at ``x`` who boards is
        heard at its doors (a dense rider so is boarded at ``x`` by the dense rules, and its
        echo does not move that boarding); one who does not is not heard past them. And,
        on the echo rule's own boarding only, a stretch first heard just past a later
        stop's doors (within ``confirm_distance_m``, after they closed) counts once the bus
        has heard it ``confirm_distance_m`` or more past the next stop served
        (:meth:`_echo_through`, thirty-first pass).
        """
        assert w.close_t is not None
        assert w.close_odo_m is not None
        if r.eo_t0 <= w.close_t + self._grace:
            return True
        if r.eo_t0 - r.d_min < r.interval * INTERVAL_S:
            # (a stretch that began before the rid's interval, by its token's clock: taken
            # over from an earlier rid, :meth:`_echo_continues`; only the hop after w, as
            # before: another token's dropped rid may have handed it on)
            if r.eo_odo0 < w.close_odo_m + self._co_d:
                return False
            for x in self._visits:
                if x.seq == w.seq + 1:
                    return r.eo_t0 < x.open_t and r.eo_odo0 <= x.open_odo_m - self._co_d
            return True
        later: list[StopVisit] = []
        for x in reversed(self._visits):
            if x.seq <= w.seq:
                break
            later.append(x)
        u_odo = w.close_odo_m  # (the stop the bus left last before it first heard it)
        first = True  # (in the hop after w: just past its doors is as at them)
        for x in reversed(later):
            if r.eo_t0 < x.open_t:
                if r.eo_odo0 < u_odo + self._co_d and not first:
                    # just past a later stop: someone left, or who boarded, there; on the
                    # echo rule's own boarding, one the bus then heard past the next stop's
                    # doors rode on through it (:meth:`_echo_through`)
                    return thin is not None and self._echo_through(r, x)
                if r.eo_odo0 <= x.open_odo_m - self._co_d:
                    return True
                # first heard as the bus drew near x: on the echo rule's own boarding, a
                # point of the stretch past x's doors says it rode on through x
                return (
                    thin is not None
                    # (not heard at x's open doors: then it would be x's candidate and heard
                    # there as one; a candidate of a later stop may have been)
                    and (x.seq > thin.seq or (x is thin and r.door_t < x.open_t))
                    and x.close_odo_m is not None
                    and r.eo_pt_odo >= x.close_odo_m + self._co_d
                )
            if x.close_odo_m is None or x.close_t is None or r.eo_t0 <= x.close_t + self._grace:
                return False  # first heard at a later stop's doors: someone waiting there
            u_odo = x.close_odo_m
            first = False
        return first or r.eo_odo0 >= u_odo + self._co_d

    def _echo_through(self, r: _Rid, x: StopVisit) -> bool:
        """Whether the bus heard ``r``'s stretch ``confirm_distance_m`` or more past ``x``.

        ``x``: the next stop served after the one whose doors the stretch was first heard
        just past (after they closed, within ``confirm_distance_m``). Its latest echo point
        lies past ``x``'s doors: it rode on with the bus through ``x``. Someone who left
        the bus at the stop before is not heard a stop on; someone who boarded there
        echoes that stop (the riders' echo names their own boarding stop: full scale,
        tuning seeds 1-2, cells 23 and 25, 1 rider's stretch of 3,322 named another, with
        no echo point). Full scale, tuning seed 2, cells 23 and 25, ``quiet_route``
        r-00038 (BD004 -> BD010, echo since BD004): its first rid heard once 238 m past
        BD005 (one point), its next rid first heard 53 m past BD006, then at four points
        past BD009 and at BD010's doors: missed.
        """
        return x.close_odo_m is not None and r.eo_pt_odo >= x.close_odo_m + self._co_d

    def _echo_elsewhere(self, r: _Rid) -> bool:
        """Whether ``r``'s last ``echo_other_adverts`` echoes or more named another bus.

        It has heard another bus longer than this one: a rider of a bus beside this one, of
        a bus bunched with it, of another route at a shared stop. Evidence against
        boarding it on thin evidence (co-movement, track, door to door, tentative pieces);
        never against the dense rules' (a rider of this bus echoes the bus it heard first
        until that one is out of hearing).
        """
        return 0 < self._ex_bar <= r.ex_run

    @staticmethod
    def _echo_later(r: _Rid, v: StopVisit | None) -> bool:
        """Whether ``r``'s echo says it began to hear this bus after the bus left ``v``.

        Its latest echo names this bus (``ex_run`` 0) with a stretch that began at a stop
        of the trip (``eo_k``) after ``v``: a rider who boarded at ``v`` heard the bus's
        beacon there (its echo names ``v``'s stop, or an earlier one if it heard the bus
        coming); a car or a pedestrian that first heard the bus after it left ``v`` names
        the stop it came to next. Evidence against boarding it at ``v`` on thin evidence
        (small scale, tuning seed 3, cell 24, ``rush_hour_crowd`` r-00070 and r-00071:
        car occupants first heard 40-75 m past BD009, echoing the bus since BD010, were
        charged BD009 -> BD010 by co-movement and a tentative piece). Not against the
        dense rules: a rider whose phone lost the beacon for ``gap_s`` (a bag, a body)
        starts its stretch afresh at a later stop.
        """
        k = r.eo_k
        return (
            k >= 0
            and r.ex_run == 0
            and v is not None
            and v.stop_index is not None
            and k > v.stop_index
        )

    def _echo_board(self, r: _Rid, t: float, w: StopVisit, out: list[SegmentDraft]) -> None:
        """Board ``r`` from ``w``, the stop its echo names (:meth:`_echo_from`)."""
        if r.state != _CANDIDATE:
            self._become_candidate(r, w, fresh=True)
        r.visit = w
        if r.eo_pt_t > r.last_in_t:  # (its latest point: heard with the bus there)
            r.last_in_t = r.eo_pt_t
            r.last_in_odo = r.eo_pt_odo
            r.last_in_raw = r.last_raw
        self._confirm_new(r, t, w, out)
        if self._debug:
            log.debug(
                "rid_echo_boarded",
                rid=r.rid.hex(),
                stop_id=w.stop_id,
                t=t,
                eo_pts=r.eo_pts,
                eo_mean=round(r.eo_sum / r.eo_pts, 1),
            )

    def _carried_through(self, r: _Rid) -> bool:
        """Whether a rid not on board rode with the bus through two stops from its track's.

        Heard moving with the bus at one level (:meth:`_track`) in three hops or more, at
        ``sparse_adverts`` points or more, heard at that level at the open doors of a stop
        between its first hop and its last, its mean within ``in_bus_margin_db`` of the
        riders' level: someone carried from stop to stop and through the doors of the
        stops between, at the level at which they were heard between stops, was aboard
        from the first (nobody boards between stops). A weak token deep in a bag, heard
        a few times a hop, is made a new candidate at every stop and never gathers
        enough co-movement in one candidacy (tuning seed 1, full scale, -25 dBm,
        ``phone_deep_in_bag`` r-00090: missed, 40 adverts over 4.5 km at -94 dBm with
        the riders at -84; ``rider_jumps_off_last_moment`` r-00076: charged from two
        stops late). A car does not wait out the bus's dwell at two stops and drive on
        with it at one level; a person at a stop is not heard 100 m on at their level
        there; riders of another bus running with this one are heard through two
        shells, far below this bus's riders, and settlement keeps their stronger leg.
        """
        a = r.tk_visit
        return (
            a is not None
            and r.start is None  # (a ride closed once is for the revive rule)
            and r.pred == _PRED_NONE
            and r.tk_hops >= _THROUGH_HOPS
            and r.tk_n >= self.params.sparse_adverts
            # heard at its level at the open doors of a stop between, or of its first
            and (a.seq < r.tk_stood <= r.tk_seq or r.tk_door)
            and r.tk_sum / r.tk_n >= self._riders_lvl - self.params.in_bus_margin_db
            and r.rid not in self._olds
            and not self._echo_elsewhere(r)
            and not self._echo_later(r, a)
        )

    def _carried_and_stood(self, r: _Rid) -> bool:
        """Whether a rid not on board rode the hop to this stop with the bus and stood in it.

        Its track (:meth:`_track`) began in the middle of the hop(s) before this stop: heard
        moving with the bus at one level at points (``sparse_step_m`` apart,
        ``confirm_distance_m`` or more past the stop it left) spanning as much of the way as
        the co-movement rule's ``sparse_adverts`` points (300 m), the first
        ``confirm_distance_m`` or more before this stop's doors, its mean within
        ``in_bus_margin_db`` of the riders' level; then heard at that level in the bus
        standing here, ``stay_s`` or more after the doors opened, its smoothed level within
        ``sparse_fall_db`` of its level as the track began. Nobody boards between stops: it
        was aboard since the stop before its track (a weak token deep in a bag, heard a few
        times a hop, whose candidacy was dropped on the way, or that was first heard
        mid-hop). Someone left at that stop is not heard at places 300 m apart 150 m on; a
        pedestrian or a waiter passed is heard at one place (at the scanner's floor the
        level says nothing of distance: three such bystanders, heard in one cluster
        100-180 m before the stop and at its doors, were charged with one point; so was a
        strong token waiting near the stop, heard from 190 m as the bus came, with two
        points 100 m apart: small scale, tuning seed 1, default world,
        ``rider_jumps_off_last_moment`` r-00033); someone waiting at this stop is much
        louder at the doors than along the way and starts a track of their own here; a car
        beside the bus drives on as the bus halts (gone ``stay_s`` after the doors opened).
        Not a candidate that was apart from the bus on the way (``tk_apart``: silent past
        its fade time as the bus moved, its rhythm known: a rider of a bus alongside, heard
        while both stood at the stop). Full scale, tuning seed 1, weak radio corner,
        ``rush_hour_crowd`` r-00059 (BD006 -> BD008): first heard as the bus left BD006,
        three points at -91..-94 dBm over 765 m (one short of ``sparse_adverts``), then 13 s
        in the bus standing at BD008: missed.
        """
        a = r.tk_visit
        w = self._visits[-1] if self._visits else None
        return (
            a is not None
            and w is not None
            and r.tk_stay == w.seq == r.tk_seq + 1
            # one hop: a track begun on the approach to the stop before (someone waiting
            # there, heard from afar) and carried through it starts no ride before it;
            # two when it stood in the bus at the open doors of its track's first stop
            # at its track's level (:meth:`_track`): a rider from there
            and (r.tk_hops == 1 or (r.tk_hops == 2 and r.tk_door))
            # heard at places as far apart as the co-movement rule's points (a static
            # person near a stop, heard from 150 m or more, is heard over less)
            and r.tk_odo - r.tk_odo0 >= (self.params.sparse_adverts - 1) * self._co_step
            and r.start is None  # (a ride closed once is for the revive rule)
            and r.pred == _PRED_NONE
            and r.tk_apart < a.seq
            and w.open_odo_m - r.tk_odo0 >= self._co_d
            and r.tk_lvl - self._sparse_fall <= r.ewma <= r.tk_lvl + self._sparse_fall
            and r.tk_sum / r.tk_n >= self._riders_lvl - self.params.in_bus_margin_db
            and r.rid not in self._olds
            and not self._echo_elsewhere(r)
            and not self._echo_later(r, a)
        )

    def _tracked_on(self, r: _Rid) -> bool:
        """Whether a rid not on board rode on with the bus by its track (from its first stop)."""
        return (r.tk_hops >= _THROUGH_HOPS and self._carried_through(r)) or (
            r.tk_stay > r.tk_seq >= 0 and self._carried_and_stood(r)
        )

    def _board_through(self, r: _Rid, t: float, out: list[SegmentDraft]) -> None:
        """Board a rid carried on with the bus from its track's first stop (:meth:`_tracked_on`).

        Or, if its track does not show that, from the stop at whose doors it was first
        heard (:meth:`_door_to_door`).
        """
        a, last_t, last_odo = r.tk_visit, r.tk_t, r.tk_odo
        if r.dp_at >= 0 and not self._tracked_on(r):
            a, last_t, last_odo = r.dp_visit, r.dp_t, r.dp_odo
        assert a is not None
        if r.state != _CANDIDATE:
            self._become_candidate(r, a, fresh=True)
        r.visit = a
        if last_t > r.last_in_t:
            r.last_in_t = last_t
            r.last_in_odo = last_odo
            r.last_in_raw = r.last_raw
        self._confirm_new(r, t, a, out)
        if self._debug:
            log.debug("rid_carried_through", rid=r.rid.hex(), stop_id=a.stop_id, t=t)

    def _door_to_door(self, r: _Rid) -> bool:
        """Whether a rid not on board was carried from one stop's open doors to the next's.

        First heard with the doors of a stop open (``dp_visit``: not heard before, as the
        bus came, nor moving); heard ``confirm_distance_m`` or more past that stop at its
        level there (within ``sparse_fall_db`` of its mean at those doors) and within
        ``in_bus_margin_db`` of the riders' level; never apart from the bus on the way
        (``tk_apart``: silent past its own rhythm's fade time as the bus moved); heard at
        that level at the next stop's open doors ``stay_s`` or more after they opened;
        its level at the first doors within ``in_bus_margin_db`` of the riders' level.
        Nobody boards between stops, and of the people at a stop only those who boarded
        are carried 150 m on at their level and are at the next stop's open doors:
        someone waiting or walking by is heard at one stop only (a bus drives from stop
        to stop in a minute or two); a car halts at red lights only, so one beside the
        bus drives on as it halts (gone ``stay_s`` after the doors open), and one beside
        it is heard through two shells, more than ``in_bus_margin_db`` below the riders; a
        rider of a bus standing beside this one at both stops is heard the same way only
        if its bus keeps beside this one all the hop (settlement keeps the stronger of
        that rider's legs, or holds both for review when neither bus heard them clearly
        better: two such riders in the tuning runs). Weak riders deep in a bag at -25 dBm are
        heard once or twice at the doors where they board, a few times on the way and at
        the next stop's doors as they walk out: with fewer than ``sparse_adverts``
        co-movement points, heard under ``stay_s`` at the first doors and not 300 m
        apart on the way, no other rule boards them (full scale, tuning seed 2, weak
        radio corner, ``phone_deep_in_bag`` r-00086 and ``rider_by_door_stays`` r-00038:
        missed; docs/classifier.md, "Fifteenth pass").
        """
        a = r.dp_visit
        w = self._visits[-1] if self._visits else None
        return (
            a is not None
            and w is not None
            and r.dp_at == w.seq == a.seq + 1
            and r.dp_pt
            and r.tk_apart < a.seq
            and r.start is None
            and r.pred == _PRED_NONE
            and not r.rot
            # near the riders, at the first doors and now
            and r.dp_sum / r.dp_n >= self._riders_lvl - self.params.in_bus_margin_db
            and r.rid not in self._olds
            and not self._echo_elsewhere(r)
            and not self._echo_later(r, a)
        )

    def _revives(self, r: _Rid, odo: float) -> bool:
        """Whether a rider closed at the stop the bus just left is heard aboard again.

        Its ride ended when it fell silent at (or just past) that stop, as an alighting
        (:meth:`_fade_end`); no door has opened since, the bus is ``confirm_distance_m``
        or more past the stop, and it is heard again at its ride's level (smoothed RSSI
        within ``fade_drop_db`` of the median of the ride). Someone who alighted there
        is out of hearing by then, or heard far below their ride's level (path loss,
        20-30 dB a decade of distance); nobody boards between stops: it never left (a
        weak token silent as the bus pulled away). Not a rid whose interval ended (the
        rotation pairing has it), nor one not heard in the bus at all while the stop's
        doors stood open for longer than its own fade time by its rhythm (``gone_apart``,
        :meth:`_missed_doors`): a token aboard is heard at the open doors at its rhythm; a
        car that kept pace with the bus for a hop, drove on as it halted and is caught up
        with on the next hop was not in the bus there (full scale, tuning seed 4, cell 11,
        ``rush_hour_crowd`` r-03271: heard every second beside the bus for 760 m, silent
        through the 20-s dwell at BD008, heard again 270 m on; its ride, dropped as a
        short ride lost while moving, was revived from BD006 and charged BD006 -> BD009).
        """
        v = self._visit
        if (
            v is None
            or v.close_odo_m is None
            or v.seq != r.gone_visit_seq
            or odo - v.close_odo_m < self._co_d
            or r.rid in self._olds
            or r.gone_apart
        ):
            return False
        med = _median(r.hist)
        return med is not None and r.ewma >= med - self._fade_drop

    def _missed_doors(self, r: _Rid, v: StopVisit) -> bool:
        """Whether ``v``'s doors stood open longer than ``r``'s fade time by its rhythm.

        ``fade_timeout_s`` and ``fade_gaps`` of its mean gap between in-bus adverts, its
        rhythm known (``fade_gaps`` in-bus adverts or more): its last in-bus advert before
        they opened, silent all that while, it was not in the bus standing there (not
        judged across a restart during the dwell: the edge did not listen).
        """
        p = self.params
        assert v.close_t is not None
        down = self._down
        if down is not None and down[1] > v.open_t and down[0] < v.close_t:
            return False  # the edge did not listen all that while
        dwell = v.close_t - v.open_t
        return r.n_in >= p.fade_gaps and dwell > p.fade_timeout_s and dwell > p.fade_gaps * r.gap

    def _revive(  # noqa: PLR0917 - called from the hot path
        self, r: _Rid, v: StopVisit, t: float, odo: float, raw: bytes, rssi: int
    ) -> None:
        """Make a rider closed at ``v`` and heard aboard again a candidate of ``v``.

        It is judged as any candidate of ``v`` from its new first advert on (its level
        that of the ride; it may board on co-movement, or on the short-hop rule if heard
        at its own rhythm from then on), so a segment from ``v`` on is emitted;
        settlement joins it with the ride closed at ``v`` (one rider, one bus trip: one
        leg). Its first hearing stays that of the
        ride (it was aboard at ``v``'s doors: not a late joiner).
        """
        lvl = float(_median(r.hist) or r.ewma)
        first_t, first_odo = r.first_t, r.first_odo
        lost = r.lost_ride
        r.lost_ride = None
        if lost is not None and r.trip_id == self._trip_id:
            # its ride was dropped as a short ride lost while moving; heard aboard again,
            # it never left (:meth:`_confirm_new` boards it from that ride's stop); the
            # silence counts as held, not ridden (:meth:`_ridden_m`)
            r.lost_ride = (lost[0], lost[1], lost[2] + odo)
        r.reset(t, odo, raw, rssi)
        r.first_t, r.first_odo = first_t, first_odo
        r.lvl = lvl
        r.convoy = None
        self._become_candidate(r, v, fresh=True)
        if self._debug:
            log.debug("rid_revived", rid=r.rid.hex(), stop_id=v.stop_id, t=t)

    def _rejoins(self, r: _Rid) -> bool:
        """Whether a candidate kept through a silence, heard at a later stop, is that stop's.

        It is, unless it rode there from its own stop (:meth:`_carried`); a candidate first
        heard far past its stop that grew loud or faint on the way (``drift``: a vehicle
        drawing alongside, someone waiting at this stop heard from afar) did not.
        """
        v = r.visit
        if v is not None and r.drift and self._far_joiner(r, v):
            return True
        return not self._carried(r)

    def _carried(self, r: _Rid) -> bool:
        """Whether a candidate kept through a silence, heard at a later stop, rode from its own.

        A candidate heard moving with the bus (``_CARRY_CO`` co-movement points) and heard
        at the later stop at its level along the way is aboard since its own stop (it keeps
        that stop); one clearly louder at the later stop (``sparse_fall_db`` above its
        co-movement level) is someone waiting there, heard from afar before: it becomes
        that stop's candidate. So is one ``sparse_fall_db`` or more louder there than its
        level ``lvl`` (as first heard, for a late joiner; as the bus left its stop, else):
        co-movement points taken as the bus drew near someone waiting at the later stop
        rise with the approach, so their mean is no level to compare with (tuning seed 3,
        cell 11, ``rush_hour_crowd`` r-00009: heard at -86 dBm 120 m before the stop, at
        -58 dBm 4 m before it, -64 dBm at the doors, kept as the stop before's candidate).
        """
        lvl = r.lvl
        return (
            r.co_n >= _CARRY_CO
            and r.ewma <= r.co_sum / r.co_n + self._sparse_fall
            and (lvl is None or r.ewma <= lvl + self._sparse_fall)
        )

    def _co_move(self, r: _Rid, t: float, rssi: int, odo: float, was: float) -> None:
        """Co-movement evidence of a candidate whose bus left its stop.

        Heard at its own level (within ``fade_drop_db`` of its median as the bus left)
        while the bus is ``confirm_distance_m`` or more past the stop: evidence that it
        moves with the bus, however sparse. Its smoothed level falling that far below
        means the bus is driving away from it (someone left at the stop, a car falling
        behind): it *fell*, and gets no grace for silences any more.

        A fall (or rise) is judged on the smoothed level before *and* after this advert
        (``was``, ``r.ewma``): a level that moved, not one deep fade. A token advertising
        every 2 s weighs each advert by half in its average (``rssi_tau_s`` 2 s), so one
        packet 35 dB down (a body in the way) pulled a rider 17 dB below its level at the
        stop, and it was never boarded (tuning seed 2, 2-s adverts, r-00006).
        """
        cv = r.visit
        if cv is None or cv.close_odo_m is None or odo <= cv.close_odo_m:
            return
        assert r.lvl is not None
        floor = r.lvl - self._fade_drop
        high = r.ewma if r.ewma > was else was  # (below only if below at two adverts in a row)
        low = was if r.ewma > was else r.ewma
        if high < r.lvl - self._sparse_fall or (
            # a late joiner (first heard after the doors closed) that grows loud: a vehicle
            # drawing alongside, not a weak token of someone who boarded last
            low > r.lvl + self._sparse_fall and cv.close_t is not None and r.first_t > cv.close_t
        ):
            r.drift = True
        if high < floor:
            r.fell = True
            r.co_n = r.co_sent = 0
            r.co_sum = 0.0
        elif (
            rssi >= floor  # (not one deep fade)
            and odo >= cv.close_odo_m + self._co_d
            and (r.co_n == 0 or odo >= r.co_odo + self._co_step)
        ):
            # spread over the way: a bus alongside now and then gives clusters, not this
            if r.co_n == 0:
                r.co_odo0 = odo
                r.co_lo = r.co_hi = r.ewma
            elif r.ewma < r.co_lo:
                r.co_lo = r.ewma
            elif r.ewma > r.co_hi:
                r.co_hi = r.ewma
            r.co_n += 1
            r.co_sum += rssi
            r.co_odo = odo
            r.co_t = t

    def _new(  # noqa: PLR0917 - called from the hot path
        self,
        t: float,
        rid: bytes,
        interval: int,
        token_t: float,
        rssi: int,
        raw: bytes,
        odo: float,
        at_stop: bool,
    ) -> _Rid:
        r = _Rid(rid, interval, token_t)
        r.reset(t, odo, raw, rssi)
        r.run_odo = odo
        into = token_t - interval * INTERVAL_S
        r.rot = into < self._rot_slack
        down = self._down
        if not r.rot and down is not None and t - down[1] < self._rot_slack:
            # first heard just after a restart: its interval may have begun while down
            r.rot = into < self._rot_slack + (t - down[0])
        self._rids[rid] = r
        if r.rot and t <= self._open_until:
            self._dirty = True  # an old rid looking for its pairs may take it
        if at_stop:
            return r  # the caller makes it a candidate of the visit
        if r.rot:
            r.state = int(next_state(State.NEW, Event.ADV_ROTATION))
            r.route_id, r.trip_id = self._route_id, self._trip_id
            r.visit = None
        else:
            r.state = int(next_state(State.NEW, Event.ADV_MOVING))
        return r

    def _become_candidate(self, r: _Rid, visit: StopVisit, *, fresh: bool) -> None:
        ev = Event.ADV_STOP if fresh else Event.VISIT_OPEN
        was = r.state
        r.state = int(next_state(State(r.state), ev))
        if was != r.state and self._pool_ivs:
            self._claim_changed(r)
        r.visit = visit
        r.route_id, r.trip_id = self._route_id, self._trip_id

    # -- time -------------------------------------------------------------------------

    def tick(self, t: float, odo: float) -> list[SegmentDraft]:  # noqa: PLR0912 - loops inline
        """Evaluate confirmations, rejections and fades at time ``t``.

        Returns:
            The segments closed, sorted by end time then rid.
        """
        if t < self._next_tick:
            return []
        self._next_tick = t + self.params.tick_s
        self._ticks += 1
        self._debug = _debug_enabled()
        self._t = max(self._t, t)
        p = self.params
        out: list[SegmentDraft] = []
        later: list[_Rid] = []
        forget: list[bytes] = []
        # riders whose rid rotated and who wait in the rotation pool for their next rid
        # are still aboard: their levels count, or at a rid boundary the riders' level
        # is the median of whichever rids rotated last (docs/classifier.md, r-03280)
        levels = [o.base for o, kind, _ in self._olds.values() if kind == _PRED_ONBOARD]
        # (locals: this loop visits every rid known, every tick)
        fade_timeout, outside_forget = p.fade_timeout_s, p.outside_forget_s
        echo_pts = self._echo_pts if self._echo_on else _NEVER
        add_level = levels.append
        for r in self._rids.values():
            st = r.state
            if st == _ONBOARD:
                silent = t - r.last_in_t
                if (
                    (
                        # (its fade time is never below fade_timeout_s: most riders end here)
                        silent > fade_timeout
                        and silent > self._fade_s(r)
                        and self._silent_s(r, t) > self._fade_s(r)
                    )
                    or (
                        # its interval is over by its token's clock (t - d_min is a lower
                        # bound of the token's time) and it was heard to the end: it can
                        # never be heard again, so it goes to the rotation pairing now, not
                        # after a sparse token's long fade time (its new rid, heard a few
                        # times, would fade first and never pair)
                        t - r.d_min > (r.interval + 1) * INTERVAL_S + _REFRESH_S
                        and self._near_end(r)
                    )
                ) and self._fade_unridden(r, t, out):
                    continue  # never ridden: nobody's level (:meth:`_unride`)
                add_level(r.base)
            elif st == _CANDIDATE or st == _ROTATING:  # noqa: PLR1714, SIM109 - no tuple per rid
                later.append(r)
            elif st == _OUTSIDE:
                if t - r.last_t > outside_forget:
                    forget.append(r.rid)
            elif (
                self._tracked_on(r)
                # (dropped on the way, heard at the next stop's open doors at its level)
                or (r.dp_at >= 0 and self._door_to_door(r))
            ):
                try:  # a candidate dropped at a stop, carried on with the bus all the same
                    self._board_through(r, t, out)
                except Exception as exc:
                    self._failed("tick", r, exc)
            elif (
                (
                    r.eo_pts >= echo_pts
                    or (r.eo_pts and self._echo_old(r))
                    # (not a rotation-paired one: its pairing's stretch is not boarded here)
                    or (r.pred == _PRED_NONE and self._echo_heirs and self._echo_link(r))
                )
                and r.start is None  # (a ride closed once is for the revive rule)
                and r.visit is not None
                and r.pred == _PRED_NONE
                and r.rid not in self._olds
                and (w := self._echo_judge(r, r.visit, ok=True)) is not None
            ):
                try:  # a candidate dropped on the way, its echo heard with the bus since
                    self._echo_board(r, t, w, out)
                except Exception as exc:
                    self._failed("tick", r, exc)
            elif (
                t - r.last_t > p.forget_s
                # a closed rid whose interval is over by its token's clock: never heard
                # again (with thousands of tokens in range these tombstones would double
                # what every tick and every checkpoint goes through)
                or t - r.d_min > (r.interval + 1) * INTERVAL_S + _ENDED_S
            ) and (
                r.rid not in self._olds
                # (a candidate whose new rid may still take over its candidacy is kept)
                and not (self._heirs and self._heir_of(r, t))
                and not (self._echo_heirs and self._echo_heir_of(r, t))
            ):
                forget.append(r.rid)
        if self._unridden:
            self._unride(levels)
        self._follow_riders(levels)
        if (
            self._olds
            and (self._dirty or t <= self._open_until + _REASSIGN_S)
            and t >= self._assigned_t + (_DIRTY_S if self._dirty else _REASSIGN_S)
        ):
            try:
                self._assign(later)
            except Exception as exc:
                self._failed("tick", None, exc)
            self._dirty = False
            self._assigned_t = t
        for r in later:
            try:  # one tick of a candidate's or rotating rid's rules (inline: every tick)
                if self._heirs and r.addr and (r.interval, r.addr) in self._heirs:
                    self._inherit(r)
                if r.state == _CANDIDATE:
                    self._check_candidate(r, t, odo, out)
                else:
                    self._check_rotating(r, t, out)
            except Exception as exc:
                self._failed("tick", r, exc)
        if self._olds:
            try:
                self._settle(t, out)
            except Exception as exc:
                self._failed("tick", None, exc)
        for rid in forget:
            # (a forgotten rid hears no more adverts, but the rotation pool may still
            # close it: its adverts are counted at the level they were heard at)
            gone = self._rids.pop(rid)
            self._lv_flush(gone, self._riders_key)
            if self._echo_riders and gone.start is not None and gone.eo_k >= 0 and not gone.ex_run:
                got = self._echo_riders.get((gone.interval + 1, gone.eo_k))
                if got is not None and rid in got:
                    self._echo_gone[rid] = (
                        gone.eo_k,
                        gone.eo_seq,
                        gone.last_t,
                        gone.d_min,
                        _offset_slack(gone),
                    )
            if gone.addr and self._addr_iv.get(gone.addr) == gone.interval:
                del self._addr_iv[gone.addr]
        if forget and len(self._addr_iv) > 2 * (len(self._rids) + len(self._olds)) + _ADDR_IV_SLACK:
            self._prune_addr_iv()
        if forget and self._echo_heirs:
            self._prune_echo_heirs()
        if forget and self._echo_riders:
            self._prune_echo_riders()
        out.sort(key=lambda d: (d.end.t, d.rid))
        return out

    def _fade_unridden(self, r: _Rid, t: float, out: list[SegmentDraft]) -> bool:
        """Fade an on-board rid in a tick: whether its ride was discarded as never ridden."""
        n = self.discarded
        try:
            self._fade(r, t, out)
        except Exception as exc:
            self._failed("tick", r, exc)
        return self.discarded != n

    def _prune_echo_heirs(self) -> None:
        """Drop the echo heirs no rid can take up (:meth:`_echo_link`).

        One whose dropped rid was forgotten (its stretch changed and it left under another
        stop's key, or it ended): :meth:`_echo_link` finds no record. A key two dropped rids
        shared (``b""``) once no known rid has an interval below the key's: no rid of the
        droppers' interval is left to make it one again. Else they stay for as long as the
        daemon runs, in every checkpoint.
        """
        ivs = [r.interval for r in self._rids.values()]
        ivs.extend(o.interval for o, _, _ in self._olds.values())
        ivs.extend(o.interval for o in self._pending.values())
        low = min(ivs, default=None)
        for key, rid in list(self._echo_heirs.items()):
            if (rid and rid not in self._rids) or (not rid and (low is None or low >= key[0])):
                del self._echo_heirs[key]

    def _prune_echo_riders(self) -> None:
        """Drop the riders' stretches no rid can go on with (:meth:`_echo_rider_on`).

        A forgotten rid's unless kept (:attr:`_echo_gone`); every one of a key once no
        known rid is of the key's interval or an earlier one (the riders' tokens have gone
        on to a later rid).
        """
        rids, gone = self._rids, self._echo_gone
        ivs = [r.interval for r in rids.values()]
        low = min(ivs, default=None)
        for key, got in list(self._echo_riders.items()):
            late = low is None or low > key[0]
            kept = [] if late else [o for o in got if o in rids or o in gone]
            if not kept:
                del self._echo_riders[key]
                for o in got:
                    gone.pop(o, None)
            elif len(kept) < len(got):
                self._echo_riders[key] = kept
        if gone:
            for o in [o for o in gone if o in rids]:
                del gone[o]

    def _prune_addr_iv(self) -> None:
        """Drop the addresses no known rid can be told has ended by (:meth:`_near_end`).

        An address's entry is dropped as the rid of its interval is forgotten, unless that
        rid moved on to another address (a phone rotating its address out of step with its
        rid): such entries would stay for as long as the daemon runs, in every checkpoint.
        An entry says something only of a rid of an earlier interval; a token's intervals
        only grow, so once no known rid (the rid table, the rotation pool, the rotated rids
        waiting for theirs) has an interval below it, none ever will: dropping it changes
        no judgement (a rid forgotten and heard again sets its entry again).
        """
        ivs = [r.interval for r in self._rids.values()]
        ivs.extend(o.interval for o, _, _ in self._olds.values())
        ivs.extend(o.interval for o in self._pending.values())
        if not ivs:
            self._addr_iv = {}
            return
        lo = min(ivs)
        self._addr_iv = {a: iv for a, iv in self._addr_iv.items() if iv > lo}

    def _unride(self, levels: list[float]) -> None:
        """A ride discarded as never ridden leaves no riders' level behind.

        A ride discarded (:meth:`_emit`: a short ride lost while moving, an "alighting" at
        the visit it boarded at: a vehicle alongside, a pedestrian) was nobody's: its
        baseline is not in this tick's ``levels`` (the tick leaves it out as it fades). If
        nobody else is aboard (``levels`` empty), the riders' level, and the level the rids'
        adverts are counted at (``_riders_key``, the events' ``evidence.riders_lvl``), go
        back to what they were as the rid of the latest ride (by its end) that was not
        discarded left the riders (+inf and none if the bus has carried nobody yet): the
        level when riders were last aboard. With others aboard the level follows them, as
        before. Without this, a pedestrian confirmed alone on an empty bus and dropped 200 m
        on left their level as "the riders' level when some were last aboard", and a waiter
        at the next stop was boarded on co-movement against it (full scale, tuning seed 2,
        shell 5 dB, ``transfer_two_buses`` r-03684, charged BD003 -> BD005 by ``cf69420``;
        docs/classifier.md). (It went back to the level when the first ride discarded in the
        tick was confirmed: a second non-rider confirmed while the first was aboard alone,
        and dropped in a later tick, brought the first's level back.)
        """
        self._unridden = False
        if not levels:
            _, self._riders_lvl, key = self._rode_lvl
            self._count_at(key)

    def _follow_riders(self, levels: list[float]) -> None:
        """The riders' level and the in-bus threshold from the riders aboard's baselines."""
        p = self.params
        levels.sort()
        self._n_lvl = len(levels)
        if levels:  # else: as when riders were last aboard (the bus's shell is the same)
            self._riders_lvl = levels[len(levels) // 2]
            # the upper quartile for the events' evidence: the bus's own riders, even with
            # riders of a bus alongside (heard through two windows, weaker) among them
            self._count_at(round(levels[3 * len(levels) // 4]))
        if p.in_bus_margin_db > 0.0 and len(levels) >= _LEVEL_MIN_RIDERS:
            # the in-bus threshold follows the riders aboard (token power is not known)
            self._thr = min(p.in_bus_rssi_dbm, self._riders_lvl - p.in_bus_margin_db)
        else:
            self._thr = p.in_bus_rssi_dbm

    def _count_at(self, key: int | None) -> None:
        """Count the rids' adverts at the riders' level ``key`` (dB) from now on."""
        if key != self._riders_key:
            old, flush = self._riders_key, self._lv_flush
            for r in self._rids.values():
                if r.n_adv != r.lv_n:  # (no call for a rid not heard since)
                    flush(r, old)
            self._riders_key = key

    @staticmethod
    def _lv_flush(r: _Rid, key: int | None) -> None:
        """Count a rid's adverts since ``lv_n`` in its ``lv_hist`` at the riders' level ``key``.

        Called for every live rid when the level changes (on a tick, at most once per
        tick) and for a rid as it is forgotten: between two calls all its adverts were
        heard at one level, so counting their number then is the same as counting each
        advert as it came (an advert with no level yet, ``None``, is not counted).
        """
        n = r.n_adv - r.lv_n
        if n and key is not None:
            h = r.lv_hist
            h[key] = h.get(key, 0) + n
        r.lv_n = r.n_adv

    def _lv_counts(self, r: _Rid) -> dict[int, int]:
        """A rid's ``lv_hist`` with its adverts not counted yet (heard at the level now).

        (A rid no longer live has none: it was counted as it was forgotten.)
        """
        k, n = self._riders_key, r.n_adv - r.lv_n
        if k is None or n == 0:
            return r.lv_hist
        h = dict(r.lv_hist)
        h[k] = h.get(k, 0) + n
        return h

    def _silent_s(self, r: _Rid, t: float) -> float:
        """How long the rid has been silent in a way that can mean it left, at ``t``.

        Counted from its last in-bus advert, or from the restart, or, if it was last
        heard while the doors stood open at a stop, from the moment they closed: whether
        someone heard at a stop stayed aboard shows only once the bus drives on (a weak
        token silent for 20 s during a long dwell has not alighted; one that alighted
        fades as the bus leaves without it).
        """
        since = max(r.last_in_t, self._resume_t)
        v = self._visit_at(r.last_in_t + self.params.alight_pre_s)
        if v is not None:
            if v.close_t is None:
                return 0.0
            if r.last_in_t <= v.close_t + self._grace and v.close_t > since:
                since = v.close_t
        return t - since

    def _fade_s(self, r: _Rid) -> float:
        """How long a silence in in-bus evidence means the rid has left.

        ``fade_timeout_s``, or ``fade_gaps`` times the rid's own mean gap between in-bus
        adverts if longer: a weak token (low power, deep in a bag, a lossy scanner) is
        heard every few seconds at best, so its silences are judged against its own rate,
        not against a strong token's.
        """
        g = self.params.fade_gaps * r.gap
        return g if g > self.params.fade_timeout_s else self.params.fade_timeout_s

    def _failed(self, stage: str, r: _Rid | None, exc: Exception) -> None:
        """Count and log a contained failure of one rid's step (a bug, never fatal).

        The segments already closed in the same tick are kept; the rid stays as it was
        and is evaluated again on the next tick.
        """
        n = self.errors[stage] = self.errors.get(stage, 0) + 1
        if n <= 10 or n % 1000 == 0:
            log.error(
                "classifier_step_failed",
                stage=stage,
                rid=None if r is None else r.rid.hex(),
                state=None if r is None else State(r.state).name,
                count=n,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )

    def _check_candidate(self, r: _Rid, t: float, odo: float, out: list[SegmentDraft]) -> None:
        v = r.visit
        assert v is not None
        if (r.tk_stay > r.tk_seq >= 0 and self._carried_and_stood(r)) or (
            # (a candidate of the next stop now, carried there from its doors)
            r.dp_at >= 0 and self._door_to_door(r)
        ):
            # (a candidate of this stop, or of the stop before, standing in the bus here)
            self._board_through(r, t, out)
            return
        if v.close_t is None or v.close_odo_m is None:
            return
        p = self.params
        if r.lvl is None:
            r.lvl = float(_median(r.hist) or r.ewma)  # its level as the bus left the stop
        if r.tk_hops >= _THROUGH_HOPS and self._carried_through(r):
            self._board_through(r, t, out)
            return
        if r.co_only and not r.absent and r.first_t > v.close_t and self._absent(r, t, v):
            r.absent = True  # not aboard while the doors stood open: boarded last, or a car
        # (co_n first: both rules below need _CARRY_CO points, most candidates have none)
        if (
            r.co_n >= _CARRY_CO
            and self._stood_and_carried(r, v)
            and t - v.close_t >= p.confirm_min_s
        ):
            self._confirm_new(r, t, v, out)
            return
        fade_s = self._fade_s(r)
        last = r.last_in_t if r.last_in_t > self._resume_t else self._resume_t
        recent = t - last <= fade_s or self._silent_s(r, t) <= fade_s
        if not recent and r.n_in >= p.fade_gaps:
            r.tk_apart = v.seq  # silent past its own rhythm's fade time as the bus moved
        if (
            (r.co_n >= p.sparse_adverts or (r.co_n >= _CARRY_CO and self._carried_and_stayed(r, v)))
            and r.convoy is None
            and not self._barred(r)
            and r.co_sum / r.co_n >= self._riders_lvl - p.in_bus_margin_db
            and r.co_hi - r.co_lo <= self._sparse_fall
            and t - v.close_t >= p.confirm_min_s
            and self._moved_on(r, v)
            and not self._echo_elsewhere(r)
            and not self._echo_later(r, v)
            and not self._drew_up(r, v)
        ):
            # co-movement: heard again and again, at its own level, while the bus carried
            # it far from the stop, however sparsely (a weak token deep in a bag)
            if r.co_t > r.last_in_t:
                r.last_in_t = r.co_t
                r.last_in_odo = r.co_odo
                r.last_in_raw = r.last_raw
            self._confirm_new(r, t, v, out)
            return
        away = (
            r.n_far >= p.confirm_adverts
            and r.last_in_odo - v.close_odo_m >= p.confirm_distance_m
            and r.last_in_odo - r.span_odo >= p.confirm_span_m
        )
        if (
            recent
            and away
            and not r.co_only
            and not r.fell
            and r.last_in_t - r.span_t >= p.confirm_stretch_s
            and not self._drew_up(r, v)
            and t - v.close_t >= p.confirm_min_s
            and self._convoy_ok(r)
        ):
            if r.rot and r.pred == _PRED_NONE and t - r.first_t < p.rotation_confirm_s:
                return  # let a rotated rid fade first and pair with this one
            self._confirm_new(r, t, v, out)
        elif not recent and (
            (
                away
                and r.convoy is None
                and not r.co_only
                and not r.fell
                and not self._drew_up(r, v)
                and self._short_hop(r, v)
            )
            or self._revived_out(r, v)
        ):
            # rode one short hop, in the bus from its stop until the doors opened again (not
            # one that fell away from its level at the stop: left behind, then caught up);
            # or revived past its stop and last heard standing in the bus at the next
            # stop's open doors: it walked out there (fortieth pass)
            self._confirm_new(r, t, v, out)
            self._close(r, Event.FADE, out)
        elif self._echo_on and (w := self._echo_judge(r, v, t - v.close_t >= p.confirm_min_s)):
            # its echo says it has been with this bus since w, and the bus heard it so
            # after leaving w, however thin its candidacy (twentieth pass)
            self._echo_board(r, t, w, out)
        elif (
            # its interval is over by its token's clock, refresh included (t - d_min is a
            # lower bound of the token's time): the rid can never be heard again
            t - r.d_min > (r.interval + 1) * INTERVAL_S + _REFRESH_S and self._near_end(r)
        ):
            # its rid is over and it was heard to the end: no need to wait out a sparse
            # token's long fade time, a new rid of it may take over its boarding now
            self._drop(r, Event.FADE, out, "rid_ended")
        elif recent and odo - v.close_odo_m < p.reject_distance_m:
            return  # (heard of late and near its stop: neither branch below applies yet)
        elif (
            (r.co_n or not recent)  # (cheapest first: a dense candidate ends here)
            and r.convoy is None
            and not self._barred(r)
            and odo - (r.co_odo if r.co_odo > v.close_odo_m else v.close_odo_m)
            < p.reject_distance_m
            and not self._near_end(r)  # its rid rotated: hand it to the rotation pairing
        ):
            if not recent:
                r.co_only = True
            return  # co-movement evidence may still come (sparse), or is coming
        elif (not recent or r.last_in_t < self._resume_t) and (
            self._rider_held(r, t) or self._successor_held(r, t)
        ):
            # a rotated rider's new rid, silent while the bus moves: held as the rider (also
            # while a restart's grace makes it recent: silent since before the restart, it
            # is no waiter the bus just left behind, for the rejection below)
            return
        elif not recent:
            self._drop(r, Event.FADE, out, "silent")
        elif (
            odo - v.close_odo_m >= p.reject_distance_m
            and r.last_in_odo - v.close_odo_m < p.confirm_distance_m
        ):
            self._drop(r, Event.REJECT, out, "left_behind")

    def _revived_out(self, r: _Rid, v: StopVisit) -> bool:
        """Whether a revived rider, silent since, walked out at the first stop after ``v``.

        ``r`` is a ride closed at ``v`` as it fell silent there and revived past it
        (:meth:`_revive`: heard aboard again at its ride's level, no door opened between;
        its ride's start kept, its candidacy that of ``v``), now silent past its fade time.
        It was last heard in the bus standing at the next stop ``w`` (``stay_s`` or more
        after its doors opened, before they closed: :meth:`_stood_at`) at its ride's level
        (within ``sparse_fall_db`` of it either way, as :meth:`_carried_and_stayed` asks),
        and ``w`` is the latest stop: nobody leaves a moving bus, and a rider standing in
        the bus at the doors and never heard after walked out there. Its revived stretch
        alone is too short for any boarding rule (it began far past ``v``: not a short
        hop) and the candidacy was dropped, the ride charged a stop early (full scale,
        cell 24, tuning seed 1, ``shared_stop_three_routes`` r-00167, BD003 -> BD010:
        closed at BD009 169 m past it, revived 837 m on, heard at BD010's doors 1.5 and
        5.5 s after they opened, never again; charged BD003 -> BD009). A vehicle beside
        the bus that drove on as it halted is not heard ``stay_s`` into the dwell, nor,
        waiting there, at its ride's level; neither is revived past a dwell it was not
        heard through (``gone_apart``). Not a rid in the rotation pairing, nor a convoy.
        """
        if r.start is None or v.seq != r.gone_visit_seq or r.pred != _PRED_NONE:
            return False
        if r.convoy is not None or r.lvl is None or not self._visits:
            return False
        w = self._visits[-1]
        if w.seq <= v.seq or w.close_t is None or self._visit_after(v.open_t) is not w:
            return False
        return self._stood_at(r, w) and abs(r.ewma - r.lvl) <= self._sparse_fall

    def _absent(self, r: _Rid, t: float, v: StopVisit) -> bool:
        """Whether a late joiner's own rhythm shows it was out of range at the open doors.

        A rid first heard after the doors of ``v`` closed was silent all the while they
        stood open. Judged like a fade, by its own rate as it appeared (the mean gap of
        its first ``fade_gaps`` to twice that many adverts, whenever they come): a silence
        at the open doors longer than ``fade_timeout_s`` and than ``fade_gaps`` of its
        gaps means it was not in the bus at the stop: a vehicle arriving as the bus
        leaves. A token aboard whose packets were lost (deep in a bag, a stop jammed by a
        crowd) is as sparse as the bus pulls away as it was at the stop, so its gaps are
        long too. After a restart during the dwell only the time the edge listened
        counts as silence (before, nobody was judged at a dwell with a restart in it,
        and a car first heard after the doors closed boarded on co-movement). (Judged
        within ``fade_timeout_s`` of its first advert only, a car heard 7 times in its
        first 15 s, then every second, was never judged: full-scale tuning seed 1,
        ``rush_hour_crowd`` r-03280.)
        """
        p = self.params
        if r.rot or not p.fade_gaps <= r.n_adv <= 2 * p.fade_gaps:
            return False
        return self._silent_at_doors(r, v)

    def _silent_at_doors(self, r: _Rid, v: StopVisit) -> bool:
        """Whether ``r``, first heard after ``v``'s doors opened, was silent that long.

        Longer than its own fade time: ``fade_timeout_s`` and ``fade_gaps`` of its mean gap.
        """
        p = self.params
        silent = r.first_t - v.open_t
        down = self._down
        if down is not None and down[1] > v.open_t:
            # nothing was heard while the edge was down: only the time it listened counts
            silent -= max(0.0, min(down[1], r.first_t) - max(down[0], v.open_t))
        gap = (r.last_t - r.first_t) / (r.n_adv - 1)
        return silent > p.fade_timeout_s and silent > p.fade_gaps * gap

    def _drew_up(self, r: _Rid, v: StopVisit) -> bool:
        """Whether a candidate first heard at ``v``'s open doors drew up outside as they closed.

        First heard while they stood open, but long after they opened: silent there for
        longer than its own fade time (:meth:`_silent_at_doors`, the rhythm rule of the
        late joiners, :meth:`_absent`, here over all its adverts), so it was not at the
        doors when the bus arrived; and its in-bus evidence away from the stop
        (``far_sum``) ``in_bus_margin_db`` or more below the riders' level, what the
        co-movement rule refuses of any candidate: a vehicle beside the bus is heard
        through two shells, 20-30 dB below the riders. It boards on neither the
        unbroken-stretch nor the short-hop rule (which look at no level); someone who ran
        up and boarded last is heard in the same shell as the riders, and a weak token
        heard only once aboard, boarding late in a long dwell (-25 dBm, tuning seeds 1-2,
        seven riders 14 dB or so below the riders) is not that far below them. Full scale,
        tuning seed 4, +3 dBm, ``rush_hour_crowd`` r-03271: a car first heard 2.6 s before
        the doors closed after a 40-s dwell, then beside the bus every second 30 dB below
        the riders for 765 m, was charged BD006 -> BD009 on the unbroken-stretch rule.
        Never with ``in_bus_margin_db`` 0 (off): no margin then says "far below".

        Or its adverts at those open doors (``dp_sum``, the level it was heard at there)
        that far below the riders, however loud on the way (thirty-seventh pass): whoever
        boards last walks through the open doors, in the doorway or in the shell, and is
        heard there near the riders' level; a car that draws up as the doors close is
        heard there from tens of metres behind the bus, at the edge of hearing, and only
        then beside it, 9-25 dB below the riders in the default world (scratch worlds of
        ``rush_hour_crowd`` with five times the cars, tuning seed 3: r-03603 and r-03746,
        heard at the doors at -90 dBm 31-35 dB below the riders, on the way 21-25 dB
        below, charged one stop each). The doors' level is judged against the riders the
        bus brought to the stop (``_open_lvls``: the level as its doors opened), if higher
        than now: riders alighting there are heard walking off and sink the level before
        they fade (``bus_alongside_red_light``, where every tracked rider of the 55
        alights at BD006: -56 dBm as the doors opened, -70 when a car heard there at -92
        was judged, and charged BD006 -> BD010).
        """
        lvl, margin = self._riders_lvl, self.params.in_bus_margin_db
        if not (
            margin > 0.0  # (0: off, no margin that says "far below the riders")
            and not r.rot
            and r.n_adv > 1
            and r.first_t > v.open_t
            and (v.close_t is None or r.first_t <= v.close_t)
            and math.isfinite(lvl)
        ):
            return False
        far = r.n_far > 0 and r.far_sum / r.n_far < lvl - margin
        if not far and r.dp_visit is v and r.dp_n > 0:
            # at the doors, against the riders the bus brought there (those alighting sink
            # the level as they walk off) if higher, or the riders now
            came = self._open_lvls.get(v.seq, math.inf)
            far = r.dp_sum / r.dp_n < (came if lvl < came < math.inf else lvl) - margin
        return far and self._silent_at_doors(r, v)

    def _stood_and_carried(self, r: _Rid, v: StopVisit) -> bool:
        """Whether a candidate of ``v`` stood in the bus at ``v`` and rode it to the next stop.

        Doors-synchronised at both ends of one hop: heard at ``v``'s open doors over
        ``stay_s`` or more (``door_t`` minus its first advert there), carried at one level
        through the hop (``_CARRY_CO`` co-movement points or more spanning as much of the
        way as the co-movement rule's ``sparse_adverts`` points, 300 m; spread within
        ``sparse_fall_db``, their mean within ``in_bus_margin_db`` of the riders), never
        apart from the bus on the way (``tk_apart``: silent past its own rhythm's fade
        time as the bus moved, a rider of another bus standing beside this one at the
        stop) and heard as the next stop's doors opened (within ``alight_pre_s`` before,
        or while they stand open, within ``stop_radius_m``), no louder than along the way
        (:meth:`_carried`). Nobody boards between stops and nobody leaves a moving bus: it
        rode from ``v`` (the fade rules then close it where it falls silent). A person
        at the stop is not heard at places 300 m apart on the hop; a car beside the bus
        passes the standing bus in a second or two or drives away ahead from a red light
        there (heard at the doors for 10 s, then pulling away: not heard at the next
        stop's doors); a car that catches up on the way was not at the doors. Full scale,
        tuning seed 2, -25 dBm, ``rush_hour_crowd`` r-00184 (BD009 -> BD010): heard 22 s
        at BD009's doors, three points 392-828 m on (one short of ``sparse_adverts``),
        last heard 1.4 s after BD010's doors opened: missed.
        """
        p = self.params
        w = self._visits[-1] if self._visits else None
        if w is None or w.seq != v.seq + 1 or r.co_n < _CARRY_CO:
            return False
        return (
            r.door_t - max(r.first_t, v.open_t) >= self._stay
            and r.start is None
            and r.pred == _PRED_NONE
            and r.convoy is None
            and not r.fell
            and r.tk_apart < v.seq
            and self._carried(r)
            and not self._barred(r)
            and r.co_odo - r.co_odo0 >= (p.sparse_adverts - 1) * self._co_step
            and r.co_sum / r.co_n >= self._riders_lvl - p.in_bus_margin_db
            and r.co_hi - r.co_lo <= self._sparse_fall
            and r.last_in_t >= w.open_t - p.alight_pre_s
            and r.last_in_odo - w.open_odo_m <= p.stop_radius_m
            and r.rid not in self._olds
            and not self._echo_elsewhere(r)
            and not self._echo_later(r, v)
        )

    def _note_low(self, rssi: float) -> None:
        """Count an advert decoded under the floor (or before it is known) in ``_lows``."""
        lows = self._lows
        if len(lows) < _FLOOR_RANK:
            heapq.heappush(lows, -rssi)
            if len(lows) < _FLOOR_RANK:
                return
        else:
            heapq.heapreplace(lows, -rssi)
        self._floor = -lows[0]

    def _barred(self, r: _Rid) -> bool:
        """Whether a candidate may not board on co-movement.

        One that drifted (``drift``), or a late joiner silent at the open doors (``absent``)
        heard more than ``sparse_fall_db`` (12 dB) below the riders' level (its co-movement
        evidence, else its level as the bus left): a car that arrived as the doors closed is
        heard through two shells, 23-35 dB below the riders; someone who walked up and
        boarded last was not at the doors while they stood open either, but in the same
        shell is heard within the riders' own spread (tuning seed 2, -21 dBm, r-00012: 9 dB
        below them). Unless heard within ``sparse_fall_db`` of the bus's receiver floor
        (``_floor``, about the weakest advert it has decoded): then only more than
        ``_ABSENT_FAR_DB`` (20 dB) below bars it (each bound is lenient). A token that weak
        in the bus loses most of its packets and walking up outside was under the floor, so
        its silence at the doors says little (full scale, tuning seed 1, weak radio corner,
        r-00117, r-00099, r-00041: 12-19 dB below the riders at -90..-93 dBm, 2-5 dB above
        the floor, missed with the 12-dB bar). One heard well above the floor would have
        been heard walking up to the doors: silent there, it was not at them, wherever it is
        heard against the riders (strong radio, +3 dBm, shell 5 dB: people passed on the
        pavement, absent at the doors, 12-20 dB below the riders at -60..-77 dBm, 18-35 dB
        above the floor, shared_stop_three_routes tuning seeds 1-2; one such was charged
        with the 20-dB bar alone on an unseen seed). With no riders' level yet it is not
        barred: nobody boards on co-movement then anyway, and barred it was dropped at its
        first silence (a weak rider alone on the bus, tuning seed 4, weak token corner,
        r-00003).
        """
        if r.drift:
            return True
        if not r.absent or self._riders_lvl == math.inf:
            # (with nobody aboard yet there is nothing to compare with: it is judged once
            # riders are aboard, and boards on co-movement only then anyway; barred now,
            # it was dropped at its first silence, a weak rider with it)
            return False
        level = r.co_sum / r.co_n if r.co_n else r.lvl
        if level is None or level < self._riders_lvl - _ABSENT_FAR_DB:
            return True
        # 12-20 dB below the riders: barred unless at the receiver's floor, where its
        # silence at the doors says little (:meth:`_unheard_aboard`)
        return level < self._riders_lvl - self._sparse_fall and (
            level > self._floor + self._sparse_fall or not self._unheard_aboard(r)
        )

    def _unheard_aboard(self, r: _Rid) -> bool:
        """Whether an absent candidate at the receiver's floor may have been aboard unheard.

        The floor's leniency in :meth:`_barred`: someone who boarded last walked up outside,
        under the floor, and is first heard as the bus pulls away (not ``confirm_far_m``
        past the stop: :meth:`_far_joiner`); or its token loses most of its packets (its
        mean gap between adverts more than twice its advertising interval, ``per``, the
        shortest gap heard), so a long silence is its rhythm. A token first heard
        hundreds of metres past the stop and heard at most of its packets since would
        have been heard over the way before had it been in the bus: it was outside (strong
        radio, +3 dBm, shell 5 dB, sigma 6 dB: a pedestrian first heard 898 m past BD005,
        100 m before BD006, at -83..-95 dBm every second or two (mean gap 1.78 s at a 1-s
        interval), 15 dB below a nearly empty bus's riders and 7 dB above the floor,
        boarded from BD005 on co-movement as the bus passed them again past BD006 and
        charged BD005 -> BD008: full scale, tuning seed 1, ``transfer_two_buses``
        r-02209).
        """
        v = r.visit
        if v is None or not self._far_joiner(r, v) or r.per == math.inf:
            return True
        return r.last_t - r.first_t > 2.0 * r.per * (r.n_adv - 1)

    def _moved_on(self, r: _Rid, v: StopVisit) -> bool:
        """Whether a candidate's co-movement evidence goes on past every later stop served.

        A candidate of ``v`` still unconfirmed when the doors opened at a later stop boards
        on co-movement only once heard again at its level ``confirm_distance_m`` past that
        stop's departure, or in the standing bus at its level ``stay_s`` or more after the
        doors opened there: a rider carried to the stop rides on with the bus or stays
        aboard until walking out; a car that drove beside the bus to the stop drives on
        when the bus halts, and fades there, which would otherwise read as a one-stop ride
        alighting at that stop. One first heard far past ``v`` (:meth:`_far_joiner`), or
        one that lost the bus after ``v`` and caught up far below the riders
        (:meth:`_caught_up`), must have reached a later stop so.
        """
        w = self._visits[-1] if self._visits else None
        if w is None or w.seq <= v.seq:
            return not self._far_joiner(r, v) and not self._caught_up(r, v)
        if w.close_odo_m is not None and r.co_odo >= w.close_odo_m + self._co_d:
            return True
        # or it stood with the bus at that stop, heard at its level well after the doors
        # opened: a car that drove beside the bus is gone by then (it alighted there, or
        # rides on)
        return self._stayed(r, v)

    def _caught_up(self, r: _Rid, v: StopVisit) -> bool:
        """Whether a candidate of ``v`` lost the bus after ``v`` and is heard far below the riders.

        Silent past its own rhythm's fade time as the bus moved on from ``v``
        (``tk_apart``) and its co-movement evidence more than ``_ABSENT_FAR_DB`` (20 dB)
        below the riders' level (exactly 20 dB is lenient, as in :meth:`_barred`): a car
        left at the stop that caught up with the bus, or a rider of a bus alongside, heard
        through two shells. Such a candidate boards on
        co-movement only once it has gone on with the bus past a later stop
        (:meth:`_moved_on`), not on the few points one hop gives: a car beside the bus
        for one hop drives on as the bus halts; a rider rides on, or stands in the bus
        at the doors. Full scale, tuning seed 1, all in pockets, ``rush_hour_crowd``
        r-03286: a car heard at BD008's doors as it drew up, silent 28 s as the bus
        left, heard again 271 m on at four co-movement points (the fewest the rule
        takes) 24 dB below the riders, 8 dB above the receiver's floor, last heard
        2.8 s after BD009's doors opened: charged BD008 -> BD009.
        """
        return (
            r.tk_apart >= v.seq
            and r.co_n > 0
            and math.isfinite(self._riders_lvl)
            and r.co_sum / r.co_n < self._riders_lvl - _ABSENT_FAR_DB
        )

    def _carried_and_stayed(self, r: _Rid, v: StopVisit) -> bool:
        """Whether a candidate with a few co-movement points rode one hop with the bus.

        Heard at its own rhythm since its stop (never silent past its fade time:
        ``co_only`` unset; a rider of a bus running beside this one is heard in clusters
        where the two meet, at the stops, and is silent between: tuning seed 4, -21 dBm,
        `shared_stop_three_routes` r-00019 on the route-55 bus, silent for 60 s on the
        way), heard at its level at ``_CARRY_CO`` (2) points 100 m apart on the way
        (:meth:`_carried`, fewer than ``sparse_adverts``: a short hop) and standing with
        the bus at the next stop (:meth:`_stayed`), heard there within
        ``sparse_fall_db`` of its level as the bus left its stop, neither fallen nor
        risen: a rider keeps its level in the standing bus; a rider of a bus standing
        beside this one at the stop, or someone waiting there, is heard much louder at
        the doors than on the way (tuning seed 4, default world, bus_alongside_red_light
        r-00028: 17 dB).
        """
        return (
            r.lvl is not None
            # (a revived rider, ``start`` set, was this bus's rider before its silence: its
            # silences say nothing of a bus alongside)
            and (not r.co_only or r.start is not None)
            and self._carried(r)
            and r.lvl - self._sparse_fall <= r.ewma <= r.lvl + self._sparse_fall
            and self._stayed(r, v)
        )

    def _stayed(self, r: _Rid, v: StopVisit) -> bool:
        """Whether a candidate of ``v`` stood with the bus at a later stop, at its level.

        Heard in the standing bus at its level (smoothed RSSI within ``fade_drop_db`` of
        its level as the bus left ``v``) ``stay_s`` or more after the doors opened at the
        latest stop visit, before they closed: the bus carried it there from ``v``'s
        departure (someone left at ``v`` is out of hearing, or far below their level,
        a stop away), and a vehicle that drove beside the bus drives on as the bus halts.
        """
        w = self._visits[-1] if self._visits else None
        if w is None or w.seq <= v.seq:
            return False
        return self._stood_at(r, w) and r.lvl is not None and r.ewma >= r.lvl - self._fade_drop

    def _stood_at(self, r: _Rid, w: StopVisit, grace: float = 0.0) -> bool:
        """Whether ``r`` was last heard in the bus standing at ``w`` after ``stay_s``.

        ``stay_s`` or more after its doors opened, before they closed (give or take
        ``grace``), within ``stop_radius_m`` of where they opened.
        """
        p = self.params
        return (
            r.last_in_t >= w.open_t + p.stay_s
            and (w.close_t is None or r.last_in_t <= w.close_t + grace)
            and r.last_in_odo - w.open_odo_m <= p.stop_radius_m
        )

    def _far_joiner(self, r: _Rid, v: StopVisit) -> bool:
        """Whether a candidate of ``v`` was first heard ``confirm_far_m`` or more past it.

        Nobody boards between stops, so it boarded at ``v`` unheard (a weak token deep in
        a bag), or it is outside: a car alongside, a pedestrian passed. A rider stays with
        the bus through the next stop's doors and moves on with it; a vehicle alongside
        does not wait out the bus's dwell.
        """
        return (
            v.close_t is not None
            and v.close_odo_m is not None
            and r.first_t > v.close_t
            and not r.rot
            and r.first_odo - v.close_odo_m >= self._far
        )

    def _short_hop(self, r: _Rid, v: StopVisit) -> bool:
        """Whether an unconfirmed candidate faded at a later stop after riding from ``v``.

        Its in-bus evidence must be unbroken from just after its stop, and it must fade
        as the doors opened at a later stop (an alighting, not a pass-by).
        """
        p = self.params
        assert v.close_odo_m is not None
        if r.span_odo - v.close_odo_m > p.confirm_far_m + 40.0 or r.pred != _PRED_NONE:
            return False
        w = self._visit_at(r.last_in_t + p.alight_pre_s)
        return (
            w is not None
            and w.seq > v.seq
            and (w.close_odo_m is None or r.last_in_odo - w.close_odo_m <= p.lost_after_m)
        )

    def _unpair(self, r: _Rid) -> tuple[_Rid | None, StopVisit | None]:
        """Take ``r`` (a new rid) out of the rotation pairing.

        Returns:
            The rotated rider's old rid it continues (or ``None``) and the boarding visit
            a rotated candidate handed over (or ``None``). The pairing itself
            (``_match``/``_pending``) is the one source of truth: ``r.pred`` only mirrors
            it and is cleared here, so a rid that leaves the pool (dropped, confirmed)
            and becomes a candidate again later starts unpaired.
        """
        prior = self._match.pop(r.rid, None)
        if prior is not None:
            self._forget_old(prior)
        old = self._pending.pop(r.rid, None)
        visit = r.pred_visit if prior is not None and r.pred == _PRED_CANDIDATE else None
        r.pred = _PRED_NONE
        r.pred_visit = None
        return old, visit

    def _confirm_new(self, r: _Rid, t: float, v: StopVisit | None, out: list[SegmentDraft]) -> None:
        got = self._matched_old(r)
        old, handed = self._unpair(r)
        if handed is not None and got is not None and self._approached(r, got[0], handed, v):
            handed = None  # (someone waiting at this stop, not the old candidate's token)
        if old is not None:
            if self._echo_riders and old.eo_k >= 0:
                self._echo_succeeded(old)
            out.append(self._rotated(old))
            stop = v.stop_id if v is not None else None
            self._confirm(r, t, "continued", r.first_t, stop, r.first_odo)
            return
        a = r.tk_visit
        if handed is not None:
            v = handed
        elif a is not None and v is not None and a.seq < v.seq and self._tracked_from(r, v):
            v = a  # carried to its stop from the track's (a closed visit before it)
        elif self._echo_on and v is not None:
            w = self._echo_judge(r, v, ok=True, riders=False)
            if w is not None and w.seq < v.seq:
                v = w  # its echo: with this bus since an earlier stop, heard so after it
        assert v is not None
        assert v.close_t is not None
        assert v.close_odo_m is not None
        lost = r.lost_ride
        if lost is not None and handed is None and v.seq == r.gone_visit_seq:
            # a rider whose short ride was dropped when it fell silent, heard aboard again
            # past the stop it was dropped at: nobody leaves a bus and boards the same trip
            # again, it rode from its first boarding
            self._confirm(r, t, "boarded", lost[0].t, lost[0].stop_id, lost[1])
            r.held_m = lost[2]
            return
        start_t = min(max(v.open_t, r.first_t), v.close_t)
        self._confirm(r, t, "boarded", start_t, v.stop_id, v.close_odo_m)

    def _approached(self, r: _Rid, old: _Rid, handed: StopVisit, v: StopVisit | None) -> bool:
        """Whether a candidate's heir, a candidate of a later stop, was approached there.

        The rotation pairing gave ``r`` (a new rid) the boarding of a candidate whose rid
        ended (``old``, of the stop visit ``handed``), by timing and clock, before the doors
        of a later stop ``v`` opened; the new rid, heard there, became that stop's
        candidate and is confirmed now. Heard at ``v`` ``sparse_fall_db`` or more louder
        (``lvl``, its median there as the bus left) than the old candidate was at its own
        stop, it is someone waiting at ``v``, heard from afar as the bus came, and boards
        there (what :meth:`_carried` asks of any candidate heard at a later stop): a
        token aboard since the old stop keeps its level. Scratch worlds of
        ``rush_hour_crowd`` (five times the cars and waiters, tuning seed 4): a car that
        drew up at BD008 and kept beside the bus was BD008's candidate at -87 dBm; its rid
        ended as the bus neared BD009 and the pairing gave its boarding to the new rids of
        two riders waiting at BD009 (-93 dBm 100 m off, -50 at the doors), who were
        charged BD008 -> BD010 for BD009 -> BD010 (unseen seed 52's r-00212 shape).
        """
        return (
            v is not None
            and v.seq > handed.seq
            and r.visit is v
            and r.lvl is not None
            and old.lvl is not None
            and r.lvl >= old.lvl + self._sparse_fall
        )

    def _tracked_from(self, r: _Rid, v: StopVisit) -> bool:
        """Whether a candidate of ``v`` boarding now was carried to ``v`` from its track's stop.

        Its track (:meth:`_track`: co-movement points at one level, whatever its
        candidacies) began on a hop before ``v``, ``confirm_distance_m`` or more before
        ``v``'s doors, with ``sparse_adverts`` points or more, goes on past ``v``'s
        departure, and it was heard at that level at the open doors of ``v`` or a later
        stop (not ``sparse_fall_db`` louder there, which starts a track afresh); never on
        board before (a ride closed once has its own segment). Someone waiting at ``v``
        heard from afar on the approach is some 30 dB louder at its doors than 150 m
        before them (path loss, 21 dB a decade of distance outside), which restarts its
        track there; a rider keeps its level wherever the bus is. A weak token heard a
        few times a hop, silent at the stop it boarded at, was made the next stop's
        candidate there and charged from it (full scale, tuning seeds 1-2: weak radio
        corner ``rider_jumps_off_last_moment`` r-00041, ``transfer_two_buses`` r-00058,
        ``gnss_tunnel`` r-00052, weak token corner ``quiet_route`` r-00021,
        ``rush_hour_crowd`` r-00281). (With 60 m, a waiter at the next stop first heard
        73 m before its doors at -90 dBm, at -81 dBm there, was boarded a stop early:
        -25 dBm, seed 2, ``transfer_two_buses`` r-00094.)
        """
        p = self.params
        return (
            r.start is None  # (never on board: a ride closed once has its own segment)
            and r.pred == _PRED_NONE
            and r.tk_n >= p.sparse_adverts
            and r.tk_seq >= v.seq
            and r.tk_stood >= v.seq
            and v.open_odo_m - r.tk_odo0 >= self._co_d
            and r.tk_sum / r.tk_n >= self._riders_lvl - p.in_bus_margin_db
        )

    def _check_rotating(self, r: _Rid, t: float, out: list[SegmentDraft]) -> None:
        p = self.params
        if self._silent_s(r, t) > self._fade_s(r):
            if self._take_over(r) or self._rides_on(r, t):
                return
            rides = self._unpaired_rides(r)
            if rides and self._stayed_through(r):
                self._confirm_unpaired(r, t)  # then judged as a rider (alighted there)
            else:
                if rides:
                    self._unlinked_piece(r, out)
                self._drop(r, Event.FADE, out, "rotating_silent")
            return
        if (
            t - r.first_t < p.rotation_confirm_s
            or r.n_far < p.confirm_adverts
            or r.last_in_odo - r.span_odo < p.confirm_span_m
        ):
            if r.pred == _PRED_NONE and t - r.first_t > p.rotation_wait_s:
                self._drop(r, Event.REJECT, out, "rotating_unpaired_thin")
            return
        if r.pred != _PRED_NONE:
            if r.pred == _PRED_CANDIDATE and not self._heir_near(r):
                return  # heard through two shells: not the candidate's token (yet)
            self._confirm_new(r, t, None, out)
        elif t - r.first_t > p.rotation_wait_s:
            if not self._unpaired_rides(r):
                self._drop(r, Event.REJECT, out, "rotating_unpaired_not_rider")
            elif self._stayed_through(r):
                self._confirm_unpaired(r, t)
            # (else it waits for the next stop's doors: a car alongside drives on there)

    def _heir_near(self, r: _Rid) -> bool:
        """Whether a candidate's next rid (``_PRED_CANDIDATE``) is heard near the riders' level.

        The pairing gives a pooled candidate's old rid a new rid by clock, timing and
        level as each rid appeared; the new rid then boards from the stop the candidate
        handed over on in-bus evidence alone (:meth:`_check_rotating`), which looks at no
        level. Its in-bus mean (``far_sum``) must be within ``in_bus_margin_db`` of the
        riders' level, now or as the old rid joined the pool (``pool_lvl``), whichever is
        louder: a rider of a bus alongside is heard through two shells, 25-40 dB below
        this bus's riders, and heirs of that bus confirmed one after another pull the
        riders' level down with them. Full scale, tuning seed 4, cell 11,
        ``transfer_bunched``: the 17 and G6000 bunched from BD003 to BD005, the 17's
        riders heard aboard the G6000 at about -85 dBm against its riders' -47; the
        heirs of pooled candidates were confirmed there (r-00032 among them), and
        settlement, seeing one rider on two buses, charged neither leg (``suspected_replay``).
        A level counts only if taken from ``_LEVEL_MIN_RIDERS`` riders or more (as the
        in-bus threshold follows it, :meth:`_follow_riders`): one loud phone alone is no
        level of the bus, and weak tokens aboard 25-30 dB below it are riders all the same.
        With no such level or ``in_bus_margin_db`` 0 (off), no test.
        """
        margin = self.params.in_bus_margin_db
        if margin <= 0.0 or r.n_far <= 0:
            return True
        lvl = self._counted_level()
        got = self._matched_old(r)
        if got is not None:
            lvl = max(lvl, got[0].pool_lvl)  # (-inf: none)
        return not math.isfinite(lvl) or r.far_sum / r.n_far >= lvl - margin

    def _matched_old(self, r: _Rid) -> tuple[_Rid, int, StopVisit | None] | None:
        """The pooled old rid the rotation pairing gave ``r`` to: ``(old, kind, visit)``."""
        o = self._match.get(r.rid)
        return self._olds.get(o) if o is not None else None

    def _counted_level(self) -> float:
        """The riders' level, if taken this tick from ``_LEVEL_MIN_RIDERS`` riders or more.

        Else -inf (none): one loud phone is no level of the bus.
        """
        return self._riders_lvl if self._n_lvl >= _LEVEL_MIN_RIDERS else -math.inf

    def _unpaired_rides(self, r: _Rid, *, approach: bool = False) -> bool:
        """Whether a new rid no rotated rid paired with is a rider's all the same.

        Fare correctness must not hang on the edge linking a token's rids: the backend
        knows whose they are and joins a rider's segments of one bus trip into one leg.
        A rid that began (its token's interval just began) while the bus drove between
        stops was not boarding: it is a token that was there before under another rid
        (heard or not). It is a rider's if it rode with the bus since: in-bus evidence
        over an unbroken stretch (``confirm_adverts`` adverts, ``confirm_span_m`` of
        travel, ``confirm_stretch_s``, as a boarding needs) at a level like the riders
        aboard (its mean in-bus RSSI within ``sparse_fall_db`` of the riders' level): a car
        or a bus alongside is heard through two shells, 20-30 dB below this bus's riders,
        and someone walking outside does not keep up with the bus for 100 m. With no
        riders' level (nobody carried yet) or no stop served yet (no trip under way)
        nothing says so. ``approach``: checked as doors open, the rid must not have grown
        ``convoy_gain_db`` louder as the bus came to the stop (someone waiting there,
        heard from afar: that stop's candidate). Such a rid is kept (not made the next
        stop's candidate, not dropped) until it shows it stayed with the bus through that
        stop's doors (:meth:`_stayed_through`), then confirmed (:meth:`_confirm_unpaired`).
        """
        if r.pred != _PRED_NONE or not r.rot or not self._visits or r.n_far <= 0:
            return False
        p = self.params
        lvl = self._riders_lvl
        if not math.isfinite(lvl):
            return False
        if approach and r.mv_ewma >= r.base + p.convoy_gain_db:
            return False
        return (
            r.n_far >= p.confirm_adverts
            and r.last_in_odo - r.span_odo >= p.confirm_span_m
            and r.last_in_t - r.span_t >= p.confirm_stretch_s
            and r.far_sum / r.n_far >= lvl - self._sparse_fall
        )

    def _stayed_through(self, r: _Rid) -> bool:
        """Whether a rid that began between stops stayed with the bus through a stop's doors.

        Heard at its level ``confirm_distance_m`` past the departure from the first stop
        whose doors opened after its first advert, or in the bus standing there
        ``stay_s`` or more after they opened (as :meth:`_moved_on` asks of a candidate
        first heard far past its stop). A car beside the bus for a hop, at a level where
        weak riders are heard too (a weak token corner: tuning seed 2, cell 20,
        ``rush_hour_crowd`` r-00072, a non-rider charged BD003 -> BD004 without this),
        drives on as the bus halts; a rider is still aboard when the doors open, and
        rides on or walks out.
        """
        w = self._visit_after(r.first_t)
        if w is None:
            return False
        if w.close_odo_m is not None and r.last_in_odo >= w.close_odo_m + self._co_d:
            return True
        return self._stood_at(r, w, self._grace)

    def _confirm_unpaired(self, r: _Rid, t: float) -> None:
        """A rider's new rid that no old rid paired with: its segment starts ``continued``.

        It began at a rotation while the rider rode (:meth:`_unpaired_rides`), so it
        starts at its first advert, and is a rider from then on (held through silences
        while moving, alighted at a door). Its start names the last stop whose doors
        opened before that advert: nobody boards between stops, so the rider was aboard
        when the bus left it (the stop it boarded at, or a later one they rode through).
        The backend joins it with the rider's other segments of the trip (the old rid's,
        ended by the fade rules) into one leg, boarded at the earliest stop named; alone,
        it is a ``partial`` leg boarded at that stop (``docs/backend.md``), never later
        than the rider boarded and never by an odometer that drifts over a long hop.
        """
        self._unpair(r)
        v = self._visit_at(r.first_t)
        self._confirm(r, t, "continued", r.first_t, v.stop_id if v else None, r.first_odo)
        if self._debug:
            log.debug("rid_continued_unpaired", rid=r.rid.hex(), t=t, first_t=r.first_t)

    def _rides_on(self, r: _Rid, t: float) -> bool:
        """Whether a silent new rid paired with a rotated rider is kept, as the rider would be.

        The same token is as sparse after its payload changed as before: its silences are
        judged against the old rid's rate too (:meth:`_fade_s`). And nobody leaves a moving
        bus: silent while the bus moves with no door opening since, it is held like the
        rider (:meth:`_moving_silence`), then judged at the next door.
        """
        old = self._pending.get(r.rid)
        if old is None:
            return False
        return self._silent_s(r, t) <= self._fade_s(old) or self._moving_silence(r, t)

    def _rider_held(self, r: _Rid, t: float) -> bool:
        """Whether a candidate paired with a rotated rider's old rid is held through a silence.

        The pairing linked it to a rider aboard (``_PRED_ONBOARD``); made the candidate of
        the stop whose doors opened while it was still rotating, it would be dropped as a
        candidate silent for ``reject_distance_m``, and its old rid's ride ended where the
        new rid was last heard: at that stop if within ``lost_after_m`` of it. A rider is
        not dropped for a silence while the bus moves (:meth:`_moving_silence`), nor is
        the new rid while it is rotating (:meth:`_rides_on`): it is held until the next
        door opening has closed and ``fade_timeout_s`` passed (at most ``lost_wait_s``).
        Where it ends is unchanged (the old rid's end by the fade rules at the new rid's
        last in-bus advert), unless it is heard aboard again meanwhile: then the ride
        went on (full scale, tuning seed 2, -25 dBm, ``shared_stop_three_routes``
        r-00070: heard 35 m past BD006, silent for 600 m, heard again approaching BD007
        and at its doors; charged BD003 -> BD006 for BD003 -> BD007).
        """
        p = self.params
        if r.pred != _PRED_ONBOARD or r.rid not in self._pending:
            return False
        last = max(r.last_in_t, self._resume_t)
        if p.lost_wait_s <= 0.0 or t - last > p.lost_wait_s:
            return False
        w = self._visit_after(r.last_in_t + p.alight_pre_s)
        return w is None or w.close_t is None or t - w.close_t <= p.fade_timeout_s

    def _successor_held(self, r: _Rid, t: float, *, after_doors: bool = True) -> bool:
        """Whether an unpaired candidate that began at a rotation is held through a silence.

        ``after_doors=False`` leaves out "first heard after its doors closed" (what
        ``benchmarks.edge_held_census`` counts that clause deciding); the classifier
        always asks with it.

        First heard between stops (after its stop's doors closed), at most
        ``tentative_window_s`` (token time) into its interval, while a rider's rid of the
        interval before waits unpaired in the rotation pool (held through its own moving
        silence) with a clock offset within ``skew_tolerance_s`` and a level within
        ``sparse_fall_db`` of this rid's first: the rider's new rid, most likely, first
        heard past the pairing's window (a weak token's payload change lost with the
        adverts around it). Nobody boards between stops, and a rider is not dropped for a
        silence while the bus moves: it is held until the next door opening has closed
        and ``fade_timeout_s`` passed (at most ``lost_wait_s``), and the candidate rules
        board it if it goes on moving with the bus (full scale, tuning seed 2, weak radio
        corner, ``transfer_two_buses`` r-00067: its new rid first heard 34 s after the old
        rid's last advert on the highway hop to SE001, dropped 600 m into a silence, then
        heard moving with the bus 60 times more, never judged again; charged to SE001 for
        SE002). The pairing is not changed: the old rid's ride is closed by the fade rules
        as before, and settlement joins the two rides of the bus trip into one leg.
        """
        p = self.params
        v = r.visit
        if (
            r.pred != _PRED_NONE
            or r.start is not None
            or v is None
            or v.close_t is None
            or (after_doors and r.first_t <= v.close_t)
            or r.first_token_t - r.interval * INTERVAL_S > p.tentative_window_s
            or p.lost_wait_s <= 0.0
            or t - max(r.last_in_t, self._resume_t) > p.lost_wait_s
        ):
            return False
        w = self._visit_after(r.last_in_t + p.alight_pre_s)
        if not (w is None or w.close_t is None or t - w.close_t <= p.fade_timeout_s):
            return False
        taken = set(self._match.values())
        return any(
            kind == _PRED_ONBOARD
            and o.interval == r.interval - 1
            and o.rid not in taken
            and o.last_t < r.first_t
            and _clock_gap(o, r) <= p.skew_tolerance_s
            and abs(r.ewma0 - o.ewma) <= self._sparse_fall
            for o, kind, _ in self._olds.values()
        )

    def _take_over(self, r: _Rid) -> bool:
        """A silent new rid paired with a candidate's old rid becomes that candidate.

        The same token, heard as sparsely as before its rid changed: it inherits the old
        rid's boarding visit and its co-movement evidence, and is judged by the candidate
        rules (a sparse candidate is kept through silences and boards on co-movement)
        instead of being dropped at a strong token's fade time. Returns whether it did.
        """
        got = self._matched_old(r) if r.pred == _PRED_CANDIDATE else None
        if got is None or got[2] is None or got[2].close_odo_m is None:
            return False
        old, visit = got[0], got[2]
        self._take_evidence(r, old, visit)
        r.co_only = True
        return True

    def _take_evidence(self, r: _Rid, old: _Rid, visit: StopVisit) -> None:
        """A new rid becomes its token's old rid's candidate of ``visit``.

        The old rid's trip, level, bars and co-movement evidence are its own.
        """
        self._become_candidate(r, visit, fresh=False)
        r.route_id, r.trip_id = old.route_id, old.trip_id
        r.lvl, r.convoy, r.drift, r.fell = old.lvl, old.convoy, old.drift, old.fell
        r.absent = old.absent
        r.co_n, r.co_sum, r.co_t = old.co_n, old.co_sum, old.co_t
        r.co_sent, r.sent_t = old.co_sent, old.sent_t  # (what its pieces already sent)
        r.co_lo, r.co_hi = old.co_lo, old.co_hi
        r.co_odo, r.co_odo0 = old.co_odo, old.co_odo0
        if old.eo_seq >= 0 and r.eo_seq in (-1, old.eo_seq) and r.eo_k in (-1, old.eo_k):
            # the token's echo stretch outlives its rid (a free rotation link): the new
            # rid goes on with the old one's stretch (:meth:`_echo_heard`)
            self._echo_continues(r, old)

    @staticmethod
    def _echo_continues(r: _Rid, old: _Rid) -> None:
        """``r``, its token's rid after ``old``, goes on with ``old``'s echo stretch."""
        if r.eo_seq < 0:
            r.eo_pts = r.eo_n = 0
            r.eo_sum = 0.0
            r.eo_t0, r.eo_odo0 = old.eo_t0, old.eo_odo0
            r.eo_pt_odo, r.eo_pt_t = old.eo_pt_odo, old.eo_pt_t
        else:
            r.eo_t0, r.eo_odo0 = min(r.eo_t0, old.eo_t0), min(r.eo_odo0, old.eo_odo0)
        # (either stretch first heard where another pattern's bus sends its seq: ambiguous)
        r.eo_amb = old.eo_amb or (r.eo_seq >= 0 and r.eo_amb)
        r.eo_seq, r.eo_k, r.eo_vseq = old.eo_seq, old.eo_k, old.eo_vseq
        r.eo_t1 = max(r.eo_t1, old.eo_t1)
        r.eo_pts += old.eo_pts
        r.eo_sum += old.eo_sum
        r.eo_n += old.eo_n
        r.eo_late = max(r.eo_late, old.eo_late)

    def _confirm(  # noqa: PLR0917 - internal
        self, r: _Rid, t: float, cause: str, start_t: float, stop_id: str | None, odo: float
    ) -> None:
        was = r.state
        r.state = int(next_state(State(r.state), Event.CONFIRM))
        if was == _ROTATING and self._pool_ivs:
            self._claim_changed(r)
        # never before its last segment's end: a rider closed as alighted at a stop when it
        # fell silent as the bus left, heard again riding on, is that stop's candidate
        # again, whose boarding would date from the doors' opening; segments of one rid
        # never overlap (settlement joins the two touching ones into one ride)
        start_t = max(start_t, r.ended_t)
        r.start = SegmentEnd(start_t, stop_id, cause)
        r.start_odo = odo
        r.lost_ride = None
        r.confirm_t = t
        r.lvl_out = None
        self.confirmed += 1
        if r.eo_k >= 0 and self._echo_on:
            self._echo_rider(r)
        if self._debug:
            log.debug("rid_confirmed", rid=r.rid.hex(), cause=cause, stop_id=stop_id, t=t)

    def _drop(self, r: _Rid, ev: Event, out: list[SegmentDraft], why: str) -> None:
        """Candidacy failed. A rotated rider paired with it gets its end by the fade rules.

        ``why`` names the rule that dropped it, for the debug event ``rid_dropped``
        (``busbell edge why-missed`` reads it): ``silent`` (a candidate silent past its
        fade time and not kept for co-movement: farther than ``reject_distance_m`` from
        its last point, barred, a convoy, or its rid over), ``left_behind`` (heard lately
        but never ``confirm_distance_m`` past its stop, the bus ``reject_distance_m``
        on), ``rid_ended`` (its interval over, heard to the end: left to the rotation
        pairing), ``rotating_silent``, ``rotating_unpaired_thin`` and
        ``rotating_unpaired_not_rider`` (a rid that began between stops: silent, or
        unpaired after ``rotation_wait_s`` with too little in-bus evidence, or not
        riding like the riders).
        """
        if self._debug:
            self._log_drop(r, why)
        if (
            self._near_end(r)
            and r.visit is not None
            and not (r.co_only and self._barred(r))
            and not self._far_joiner(r, r.visit)
        ):
            # its rid rotated before it could be confirmed: a new rid may take over (not
            # from a candidate barred from boarding, nor from one first heard far past its
            # stop, not yet carried through a later one: they have no boarding to hand over)
            handed = r.pred_visit or r.visit
            if self._keep_for_pairing(r, _PRED_CANDIDATE, handed) and r.addr:
                self._heirs[(r.interval + 1, r.addr)] = (r.rid, handed)
        if r.eo_pts and self._echo_on:
            self._echo_bequeath(r)
        was = r.state
        if was == _CANDIDATE and self._tentative_ok(r):
            self._tentative(r, out)
        r.state = int(next_state(State(r.state), ev))
        if was == _CANDIDATE and self._pool_ivs:
            self._claim_changed(r)
        r.gone_visit_seq = self._visits[-1].seq if self._visits else 0
        r.gone_apart = False
        r.lost_ride = None
        self.rejected += 1
        old, _ = self._unpair(r)
        if old is not None:
            # the rider's new rid did not stay: the old segment ends where the rider left
            end, end_odo = self._fade_end(old, r.last_in_t, r.last_in_odo)
            end = SegmentEnd(min(end.t, old.last_t), end.stop_id, end.cause)
            self._emit(old, end, end_odo, out)

    def _log_drop(self, r: _Rid, why: str) -> None:
        """The debug event of a drop: the rule and what the candidacy had gathered."""
        v = r.pred_visit or r.visit
        log.debug(
            "rid_dropped",
            rid=r.rid.hex(),
            why=why,
            state=State(r.state).name,
            t=self._t,
            stop_id=None if v is None else v.stop_id,
            co_n=r.co_n,
            co_mean=round(r.co_sum / r.co_n, 1) if r.co_n else None,
            riders_lvl=self._riders_lvl if math.isfinite(self._riders_lvl) else None,
            barred=self._barred(r) if r.state == _CANDIDATE else None,
            convoy=r.convoy is not None,
            co_only=r.co_only,
            absent=r.absent,
            fell=r.fell,
            rot=r.rot,
            paired=r.pred != _PRED_NONE,
        )

    def _tentative_ok(self, r: _Rid) -> bool:
        """Whether a candidate dropped unconfirmed is a piece of a ride split by a rotation.

        It moved with the bus (``tentative_points`` co-movement points or more, at the
        riders' level, within ``sparse_fall_db`` of one another, not a convoy, not barred
        from boarding on co-movement: what the sparse rule asks but the count) and its
        rid was alive across a rotation: it was still a candidate when its interval ended
        (or stopped at its end), or began at most ``tentative_window_s`` (token time)
        before it was first heard. Each rid alone is
        too thin to board; the backend knows whose rids they are and sums the pieces.
        """
        p = self.params
        n = r.co_n
        return (
            p.tentative_points > 0
            and n >= p.tentative_points
            and n > r.co_sent  # (points no piece has sent yet)
            and r.visit is not None
            and r.convoy is None
            and not self._barred(r)
            and r.co_hi - r.co_lo <= self._sparse_fall
            and r.co_sum / n >= self._riders_lvl - p.in_bus_margin_db
            and not self._echo_elsewhere(r)
            and not self._echo_later(r, r.pred_visit or r.visit)
            and not self._drew_up(r, r.visit)
            and (
                r.first_token_t - r.interval * INTERVAL_S <= p.tentative_window_s
                # still a candidate when its interval ended by its token's clock (t - d_min
                # is a lower bound of the token's time), or stopped at its end
                or self._t - r.d_min >= (r.interval + 1) * INTERVAL_S
                or self._near_end(r)
            )
        )

    def _tentative(self, r: _Rid, out: list[SegmentDraft]) -> None:
        """Send a dropped candidate's evidence as a ``tentative`` segment (never a ride alone).

        It names its stop (where it would have boarded) and starts at its first advert,
        ends where a rider last heard then would (``rotated`` if its interval ended, else
        by the fade rules) and carries its co-movement points (``co_n``, ``co_lo``,
        ``co_hi``) for the backend to sum. Each point is sent once: a rid that took over
        its predecessor's candidacy (:meth:`_take_evidence`) after the predecessor's own
        piece sent its points sends only the points added since (``co_sent``), from where
        that piece ended (``sent_t``); with none added it sends no piece.
        """
        v = r.pred_visit or r.visit
        assert v is not None
        if r.co_t > r.last_in_t:
            r.last_in_t, r.last_in_odo, r.last_in_raw = r.co_t, r.co_odo, r.last_raw
        # from its first advert (not its stop's doors, as a boarding: a new rid first heard
        # past its stop must not seem to start before the old rid ended)
        # nor before the piece that sent the points it took over from its predecessor
        # ended: each point counts once towards the backend's sum
        start_t = min(max(r.first_t, r.ended_t, r.sent_t), r.last_in_t)
        draft = self._piece(r, SegmentEnd(start_t, v.stop_id, "tentative"), aboard=False)
        draft.evidence["co_n"] = r.co_n - r.co_sent
        draft.evidence["co_lo"] = round(r.co_lo, 1)
        draft.evidence["co_hi"] = round(r.co_hi, 1)
        r.co_sent, r.sent_t = r.co_n, draft.end.t
        self.tentative += 1
        out.append(draft)

    def _unlinked_piece(self, r: _Rid, out: list[SegmentDraft]) -> None:
        """Send an unpaired new rid that rode like a rider as a piece only its rider's ride takes.

        A rid that began between stops (``ROTATING``, paired with no old rid) and rode with
        the bus at the riders' level (:meth:`_unpaired_rides`) but was never confirmed (it
        fell silent, or the trace ended, before it stayed through a stop's doors) is the
        next rid of someone aboard whose old rid the pairing did not link: a token whose
        address changes with its rid, silent past the pairing's window (docs/classifier.md,
        "Thirty-sixth pass": full scale, cell 24, tuning seed 4, ``door_sensor_stuck``
        r-00064, BD002 -> BD007, its ride closed ``alighted`` at BD006 as its rid faded,
        its next rid first heard 311 m on and to BD007's doors, never sent: charged
        BD002 -> BD006). The backend knows whose rids they are and joins a rider's pieces
        to their confirmed segment of the same bus trip on the adjoining rid
        (``backend/_tentative.py``). The piece names no stop and carries one co-movement
        point at its in-bus mean: no rule charges a piece alone on fewer than two points
        (door to door, carried) or four summed, so a stranger's piece, joining nothing,
        charges nobody. Off with the other tentative pieces (``tentative_points`` 0).
        """
        if self.params.tentative_points <= 0:
            return
        draft = self._piece(r, SegmentEnd(r.first_t, None, "tentative"))
        lvl = round(r.far_sum / r.n_far, 1)
        draft.evidence["co_n"] = 1
        draft.evidence["co_lo"] = lvl
        draft.evidence["co_hi"] = lvl
        self.tentative += 1
        out.append(draft)

    def _piece(self, r: _Rid, start: SegmentEnd, *, aboard: bool = True) -> SegmentDraft:
        """A tentative piece of ``r`` from ``start`` to its fade or its rotation.

        The piece starts at ``r``'s first odometer reading; a ride ``r`` closed before keeps
        its own start (restored once the piece is drafted). ``aboard`` ``False``: a
        candidate's piece, never known aboard, ends by :meth:`_fade_end` as one
        (``aboard``).
        """
        was, was_odo = r.start, r.start_odo
        r.start, r.start_odo = start, r.first_odo
        if self._near_end(r):
            draft = self._rotated(r)
        else:
            end, end_odo = self._fade_end(r, r.last_in_t, r.last_in_odo, aboard=aboard)
            draft = self._draft(r, end, end_odo)
        r.start, r.start_odo = was, was_odo
        return draft

    def _heir_of(self, r: _Rid, t: float) -> bool:
        """Whether a dropped candidate still waits for its new rid (kept until then).

        Until the new rid's own interval is over by the token's clock; then it is
        forgotten, and so is the wait.
        """
        key = (r.interval + 1, r.addr)
        got = self._heirs.get(key)
        if got is None or got[0] != r.rid:
            return False
        if t - r.d_min <= (r.interval + 2) * INTERVAL_S + _ENDED_S:
            return True
        del self._heirs[key]
        return False

    def _echo_heir_of(self, r: _Rid, t: float) -> bool:
        """Whether a dropped candidate still waits for its next rid's echo (kept until then).

        Until that rid's own interval is over by the token's clock (:meth:`_echo_link`).
        """
        key = (r.interval + 1, r.eo_k)
        if self._echo_heirs.get(key) != r.rid:
            return False
        if t - r.d_min <= (r.interval + 2) * INTERVAL_S + _ENDED_S:
            return True
        del self._echo_heirs[key]
        return False

    def _inherit(self, r: _Rid) -> None:
        """A new rid sent from the BLE address of a candidate whose rid ended takes it over.

        Phones keep their BLE address across a rid rotation (a fob changes both), and two
        devices do not share a random 48-bit address: a rid of the next interval sent from
        the address of a candidate whose rid ended before it boarded is that candidate's
        token, however long after its last advert it is first heard. A weak token (deep in
        a bag, low power, a crowd) is heard a few times a minute, so its new rid is often
        first heard 20-50 s into its interval, after the rotation pairing's window (its
        old rid's rhythm, at most ``rotation_settle_s``) and too late to be taken for a
        rotation at all (``rotation_slack_s``); each rid alone then had two or three
        co-movement points, too few to board on, and the ride was missed (full scale,
        tuning seeds 1-2, weak cells). It takes over the candidacy as
        :meth:`_take_over` does (its stop, its level there, its co-movement evidence, its
        track, its first hearing), adding its own co-movement points heard at that level,
        and is judged by the sparse-candidate rules: it boards from the old rid's stop
        only if heard moving with the bus, at one level, at ``sparse_adverts`` points in
        all, past every stop served since (:meth:`_moved_on`). Not a rid the rotation
        pairing has paired or can pair (a rot rid in its window: it pairs the same
        address first and hands the boarding over, and the new rid may then board on
        its own evidence too), nor one confirmed, nor one heard at the doors of that stop
        (or an earlier one) itself and judged by the full boarding rules there (not
        ``co_only``): its own candidacy stands, as without the rule (taken over, it would
        board on co-movement only: tuning seed 3, small, -21 dBm, ``door_sensor_stuck``
        r-00009, 30 dB below the riders, whose rid rotated during its boarding dwell, was
        missed so); a new rid of another address that the
        pairing had given the old candidate's boarding to is unpaired (the same address
        wins any pairing, :meth:`_candidates`).
        """
        key = (r.interval, r.addr)
        o, visit = self._heirs[key]
        old = self._rids.get(o)
        if (
            old is None
            or old.state != _GONE
            or old.start is not None
            or old.lvl is None
            or visit.close_odo_m is None
        ):
            del self._heirs[key]
            return
        if (
            r.start is not None
            or r.pred != _PRED_NONE
            or r.rid in self._match
            or (r.rot and self._pair_cost(old, r) is not None)
        ):
            return  # the rotation pairing has it, or can take it (the same address wins)
        del self._heirs[key]
        if (
            r.state == _CANDIDATE
            and not r.co_only
            and r.visit is not None
            and r.visit.seq <= visit.seq
        ):
            return  # a candidate of that stop (or an earlier one) on its own: it stays one
        for n in [n for n, x in self._match.items() if x == o]:
            # the rotation pairing gave its boarding to another token's new rid (a guess
            # from timing, clock offset and level): the same address is the token's own
            other = self._rids.get(n)
            if other is not None:
                self._unpair(other)
        if o in self._olds:
            self._forget_old(o)
        self._dirty = True
        own = (r.co_n, r.co_sum, r.co_lo, r.co_hi, r.co_odo, r.co_t)
        same_level = r.lvl is not None and abs(r.lvl - old.lvl) <= self._sparse_fall
        self._take_evidence(r, old, visit)
        r.first_t, r.first_odo = old.first_t, old.first_odo
        if own[0] and same_level:
            own_n, total, lo, hi, odo, t_co = own
            if r.co_n == 0:
                r.co_lo, r.co_hi, r.co_odo0 = lo, hi, odo
            r.co_n += own_n
            r.co_sum += total
            r.co_lo = min(r.co_lo, lo)
            r.co_hi = max(r.co_hi, hi)
            if odo > r.co_odo:
                r.co_odo, r.co_t = odo, t_co
        r.co_only = True
        r.gap = max(r.gap, old.gap)  # the same token: its silences are judged by its rhythm
        if old.tk_n and (
            not r.tk_n or abs(r.tk_sum / r.tk_n - old.tk_sum / old.tk_n) <= self._sparse_fall
        ):
            if r.tk_n:
                r.tk_hops = max(old.tk_hops + r.tk_hops - 1, old.tk_hops, r.tk_hops)
                r.tk_stood = max(r.tk_stood, old.tk_stood)
            else:
                r.tk_hops, r.tk_seq, r.tk_stood = old.tk_hops, old.tk_seq, old.tk_stood
                r.tk_odo, r.tk_t = old.tk_odo, old.tk_t
                # and its first point (without it the new rid's was -inf, and every "began
                # far enough before the stop" test passed: a waiter at BD005 first heard 20
                # m before its doors was boarded at BD004 after a rotation, tuning seed 1,
                # full scale, -25 dBm, shared_stop_three_routes r-00195 on the route-17 bus)
                r.tk_odo0 = old.tk_odo0
            r.tk_visit = old.tk_visit
            r.tk_n += old.tk_n
            r.tk_sum += old.tk_sum
        if self._debug:
            log.debug("rid_inherited", rid=r.rid.hex(), old=o.hex(), stop_id=visit.stop_id)

    def _near_end(self, r: _Rid) -> bool:
        """Whether the rid stopped because its interval ended (it may have rotated).

        It was last heard (token time) within ``rotation_slack_s`` of its interval's end,
        or within its own rotation window (:meth:`_rot_gap`) if longer: a token heard once
        in 20 s may well have been silent for the last 20 s of its rid. Or, however long
        before its end it was last heard, its token has been heard since under a later rid
        from the same BLE address (phones keep theirs across a rotation; two devices do not
        share a random 48-bit address): its silence ran into its rotation, and nobody
        leaves a moving bus (full scale, tuning seed 2, -25 dBm, ``quiet_route`` r-00038:
        boarded BD004, last heard 489 m past BD005, 47 s before its new rid was first heard
        within ``rotation_slack_s`` of the next interval, so 30 s or more before its own
        ended; the ride, 1.2 km heard, was dropped as a short one lost while moving and the
        rider charged from BD006, where the new rid boarded).
        """
        if r.last_token_t >= r.interval * INTERVAL_S + self._rot_end:
            return True
        if r.addr and self._addr_iv.get(r.addr, r.interval) > r.interval:
            return True  # its token is heard under a later rid from the same address
        if r.gap * self.params.rotation_gaps > self._rot_slack and (
            r.last_token_t >= (r.interval + 1) * INTERVAL_S - self._rot_gap(r)
        ):
            return True
        down = self._down  # its interval ended while the pipeline was down
        return (
            down is not None
            and r.last_t <= down[0]
            and down[1] - r.d_min >= (r.interval + 1) * INTERVAL_S - self._rot_slack
        )

    def _keep_for_pairing(self, old: _Rid, kind: int, visit: StopVisit | None) -> bool:
        """Keep a rid that stopped at its interval's end for the joint rotation pairing."""
        if old.ewma < old.base - self.params.rotation_drop_db:
            return False  # it faded before it stopped: it left, it did not rotate
        if old.rid not in self._olds:
            self._pool_ivs[old.interval] = self._pool_ivs.get(old.interval, 0) + 1
            # (its heir is judged against it, if taken from riders enough: _heir_near)
            old.pool_lvl = self._counted_level()
        self._olds[old.rid] = (old, kind, visit)
        self._pairs_of(old)
        self._dirty = True
        return True

    def _pair_cost(self, old: _Rid, new: _Rid) -> float | None:
        """How unlike one token's consecutive rids ``old`` and ``new`` look, or ``None``.

        Lower is likelier; ``None`` means they cannot be one token's. Terms: the clock
        offsets (min GNSS time - token time, which tends to the token's clock offset plus
        a constant bias from its payload-refresh phase: the same for both rids of one
        device), the RSSI level (the old rid's as it stopped, the new rid's as it appeared:
        both frozen, so the pairing does not drift as a rider walks away later), the time
        gap in seconds, and the advertising phase: a token's advertising events keep their
        rhythm (interval + 0-10 ms advDelay) through the payload change, so the new rid's
        first advert falls a whole number of intervals after the old rid's last one. The
        same BLE address (phones keep theirs) wins.
        """
        p = self.params
        window = self._rot_gap(old)
        if window > p.rotation_gap_s and self._walked_off(old):
            window = p.rotation_gap_s  # a silence that may be a walk: no token's rhythm
        for start in self._windows(old.last_t):
            dt = new.first_t - start
            if -4.0 <= dt <= window:
                break
        else:
            return None
        gap = _clock_gap(old, new)
        if gap > p.skew_tolerance_s:
            return None  # not the same clock: not the same token
        if self._echo_on and self._echo_apart(old, new):
            return None  # two phones' stretches: not the same token
        cost = (
            p.rotation_skew_weight * gap
            + p.rotation_rssi_weight * abs(new.ewma0 - old.ewma)
            + abs(dt)
        )
        per = old.per + _ADV_DELAY_MEAN_S
        if per < p.rotation_phase_max_period_s:
            # one advertising train never goes back in time: dt <= 0 misses by half a period
            miss = per / 2.0 if dt <= 0.0 else abs(dt - max(1, round(dt / per)) * per)
            cost += p.rotation_phase_weight * miss
        if old.addr and new.addr == old.addr:
            cost -= 1000.0
        return cost

    def _walked_off(self, old: _Rid) -> bool:
        """Whether an old rid of the rotation pool may have stopped because its token walked off.

        A rider's (``old.start`` set): heard well above the receiver's floor (its ride's
        median more than ``sparse_fall_db`` above ``_floor``: at the floor a silence is
        lost packets as well as a walk, as :meth:`_barred` judges), its fade reads as an
        alighting (:meth:`_fade_end`): last heard at a stop's open doors or at most
        ``lost_after_m`` past its departure, and not at its ride's level
        ``confirm_distance_m`` or more past it (:meth:`_rotated_away`). A candidate's:
        never heard ``confirm_far_m`` past its stop's departure (the doors open, or the bus
        drawing away): it may have stayed at the stop. Either may have rotated aboard too;
        its successor then is heard at its own rhythm, but the silence of someone who
        walked off has no length. So the rotation pairing gives such an old rid no more
        than ``rotation_gap_s`` after its last advert (:meth:`_pair_cost`): the longer
        window of a token heard through a lossy channel (:meth:`_rot_gap`) is for a token
        heard aboard, moving with the bus, as its rid ended. Its own next rid, sent from
        its address, is paired at any gap (:meth:`_addr_pairs`; a candidate's by
        :meth:`_inherit` too). Full scale, tuning seeds (docs/classifier.md, "Thirty-fourth
        pass"): cell 1 seed 3 ``phone_deep_in_bag`` r-00082 rode BD005 -> BD008 at -80 dBm
        (mean gap 1.84 s), heard at BD008's doors and 1-39 m past them at -84..-94 as it
        walked off; a passer-by's new rid first heard 130 m on, 8.8 s after its last advert
        (within 6 of its gaps, 11 s), was paired with it, confirmed ``continued`` and
        charged BD008 -> BD009 (r-01197). ``shared_stop_three_routes`` r-02794, a passer-by
        at BD009 heard on the approach and at the doors, last at -94 dBm as they closed, was
        BD009's candidate; a passer-by's new rid first heard 96 m on, 14.0 s later (within
        6 of its gaps, 21 s), took over its boarding and was charged from BD009 (r-03012).
        Without the floor's clause cell 24 seed 1 ``transfer_bunched`` lost r-00059's ride
        past BD006 (at -88 dBm, 6 dB above the floor, last heard 23 m past BD006, its next
        rid from a new address 6 s later).

        Never for a token whose address may change with its rid (:func:`_may_change_with_rid`:
        a static or non-resolvable random address): its next rid is known by no address,
        only by the clock, the level and the time gap, and the lossy window is the only
        link a weak token still aboard has (both passers-by above were phones, whose
        resolvable private address outlives a rid). Full scale, cell 24 (every token's
        address changes with its rid), unseen seed 52 ``rush_hour_crowd``: a one-stop
        rider missed with the rule, charged without it (docs/classifier.md, "Thirty-sixth
        pass").
        """
        if _may_change_with_rid(old.addr):
            return False  # (its own next rid has another address: the window is its link)
        if old.start is None:
            v = old.visit
            return v is not None and (
                v.close_odo_m is None or old.last_in_odo < v.close_odo_m + self._far
            )
        med = _median(old.hist)
        if med is None or med <= self._floor + self._sparse_fall:
            return False  # at the receiver's floor a silence says little (:meth:`_barred`)
        v = self._visit_at(old.last_in_t + self.params.alight_pre_s)
        return v is not None and self._faded_at(old, v, old.last_in_t, old.last_in_odo)

    def _echo_apart(self, old: _Rid, new: _Rid) -> bool:
        """Whether the echo says ``old`` and ``new`` are two phones' rids, not one token's.

        A phone echoes one stretch of this bus at a time, and its stretch outlives its rid
        (:meth:`_echo_heard`): its next rid echoes the same seq, or a stretch begun afresh
        after it lost the beacon (``gap_s``), which names the stop the beacon sent then.
        ``new``'s stretch began while the beacon sent its stop (``eo_k``); if ``old`` was
        still heard echoing another stretch after the bus had left that stop (the beacon
        sending a later one), the phone would have gone back to a stretch it had left:
        two phones. Full scale, tuning seed 2, cell 24, ``long_ride_many_intervals``:
        r-00042 (aboard since BD003, echo since BD003) and r-00053 (heard at BD005's doors,
        echo since BD005) rotated together 146 m past BD005 with clocks alike; the pairing
        (riders' rids first) gave r-00053's next rid to r-00042's old one, r-00053's
        candidacy was dropped and its 19-km ride held with no boarding stop. Unknown stops
        (``eo_k`` -1, a visit without a stop index) and a trip's end between the two
        hearings (the stop index going back) bar nothing.
        """
        if old.eo_seq < 0 or new.eo_seq < 0 or old.eo_seq == new.eo_seq or new.eo_k < 0:
            return False
        vo = self._visit_at(old.eo_t1)
        vn = self._visit_at(new.eo_t0)
        if vo is None or vn is None or vo.stop_index is None or vn.stop_index is None:
            return False
        if (vo.seq < vn.seq and vo.stop_index > vn.stop_index) or (
            vo.seq > vn.seq and vo.stop_index < vn.stop_index
        ):
            return False  # (a new trip between them: its stop indices start again)
        left = vo.close_t is not None and vo.close_t <= old.eo_t1
        return vo.stop_index + left > new.eo_k

    def _news_index(self) -> _NewsIndex:
        """The rids that may be a rotated token's new rid, indexed for pairing.

        Rot rids (first heard just after their interval began) that are candidates or
        rotating, by ``(interval, floor(first_t / slot))`` in lists sorted by clock
        offset, and by ``(interval, BLE address)``. Built at most once per tick, and only
        when an old rid joins the pool (a burst brings hundreds in one tick): O(n log n).
        """
        idx = self._index
        if idx is not None and idx.tick == self._ticks:
            return idx
        slot = self._slot_s
        slots: dict[tuple[int, int], list[tuple[float, bytes]]] = {}
        addrs: dict[tuple[int, str], bytes] = {}
        shared: set[tuple[int, str]] = set()
        for r in self._rids.values():
            if r.rot and (r.state == _CANDIDATE or r.state == _ROTATING):  # noqa: PLR1714
                slots.setdefault((r.interval, math.floor(r.first_t / slot)), []).append(
                    (r.d_min, r.rid)
                )
                if r.addr:
                    key = (r.interval, r.addr)
                    if key in addrs:
                        shared.add(key)
                    addrs[key] = r.rid
        for lst in slots.values():
            lst.sort()
        idx = self._index = _NewsIndex(self._ticks, slots, addrs, frozenset(shared))
        return idx

    def _candidates(self, old: _Rid) -> list[tuple[float, bytes]]:
        """The likeliest new rids of an old one, cheapest first (at most ``_PAIR_K``).

        The same BLE address is looked up directly (phones keep theirs; it wins any
        pairing). Otherwise a sweep: only new rids of the next interval first heard in the
        old rid's time window (two index slots) whose clock offset lies within
        ``skew_tolerance_s``, visited nearest offset first. O(log n + k) per old rid, so a
        burst of n rotations costs O(n log n), not O(n^2).
        """
        p = self.params
        idx = self._news_index()
        nxt = old.interval + 1
        tol = p.skew_tolerance_s
        found: dict[bytes, float] = {}
        if old.addr:
            n = idx.addrs.get((nxt, old.addr))
            new = self._rids.get(n) if n is not None else None
            if new is not None and new.addr == old.addr:
                cost = self._pair_cost(old, new)
                if cost is not None:
                    return [(cost, new.rid)]  # the same address wins any pairing
        d0 = old.d_min
        slack_old = _offset_slack(old)
        window = self._rot_gap(old)
        keys = {
            k
            for start in self._windows(old.last_t)
            for k in range(
                math.floor((start - 4.0) / self._slot_s),
                math.floor((start + window) / self._slot_s) + 1,
            )
        }
        for k in sorted(keys):
            lst = idx.slots.get((nxt, k))
            if not lst:
                continue
            i = bisect.bisect_left(lst, (d0, b""))
            j = i - 1
            seen = 0
            while seen < _PAIR_SCAN:
                right = lst[i][0] - d0 if i < len(lst) else math.inf
                left = d0 - lst[j][0] if j >= 0 else math.inf
                r_ok = right <= tol + _REFRESH_MAX_S  # (a new rid's d_min comes down)
                l_ok = left <= tol + slack_old
                if not (r_ok or l_ok):
                    break
                if r_ok and (right <= left or not l_ok):
                    n = lst[i][1]
                    i += 1
                else:
                    n = lst[j][1]
                    j -= 1
                new = self._rids.get(n)
                if new is None or n in found:
                    continue
                cost = self._pair_cost(old, new)  # None outside its time windows
                seen += 1
                if cost is not None:
                    found[n] = cost
        best = sorted((c, n) for n, c in found.items())
        return best[:_PAIR_K]

    def _assign(self, later: list[_Rid]) -> None:
        """Pair the rids that stopped at their interval's end with rids that just began.

        Jointly, not one at a time: the candidate pairs of every old rid (found once, when
        it joined the pool, by :meth:`_candidates`) are taken cheapest first, riders' rids
        (``_PRED_ONBOARD``) before candidates' (whose new rid would take over their
        boarding stop). Re-run while any old rid waits (at most every ``_DIRTY_S`` when
        rids joined or left), so a pairing can change until its new rid is confirmed;
        each run is O(E log E) over at most ``_PAIR_K`` pairs per old rid.
        """
        news = {r.rid: r for r in later if r.rot}
        for r in news.values():
            r.pred = _PRED_NONE
            r.pred_visit = None
        self._pending.clear()
        self._match.clear()
        if not news:
            return
        taken: set[bytes] = set()
        done: set[bytes] = set()
        # a token's own next rid, sent from its address, before any guess from timing
        # (either kind): it must not go to another token's old rid first
        for o, n in self._addr_pairs(news):
            done.add(o)
            taken.add(n)
            self._pair(o, news[n])
        if len(done) == len(self._olds):
            return  # (every pooled rid paired by its address: a crowd of phones)
        # a new rid sent from the BLE address of another live rid of the old interval is
        # that rid's successor (phones keep their address across a rid rotation)
        claimed = {
            (r.interval, r.addr)
            for r in self._rids.values()
            if r.addr and (r.state == _CANDIDATE or r.state == _ONBOARD)  # noqa: PLR1714
        }
        for kind in (_PRED_ONBOARD, _PRED_CANDIDATE):
            edges: list[tuple[float, bytes, bytes]] = []
            for o, (old, k, _) in self._olds.items():
                if k != kind or o in done:
                    continue
                cand = self._edges.get(o)
                if cand is None or (
                    self._edges_tick.get(o) != self._ticks
                    and self._t <= self._windows(old.last_t)[-1] + self._rot_gap(old) + _START_S
                ):
                    cand = self._pairs_of(old)
                for cost, n in cand:
                    new = news.get(n)
                    if new is None or n in taken:
                        continue
                    if new.addr != old.addr and (
                        (old.interval, new.addr) in claimed
                        # its address was an earlier rid's, whatever became of that rid:
                        # its token's (a candidate whose rid ended by the address rule
                        # let go of its claim as it was dropped, and another token's old
                        # rid took its next rid: r-00330, :meth:`_addr_pairs`)
                        or new.addr_after >= 0
                    ):
                        continue
                    edges.append((cost, o, n))
            edges.sort()
            for _, o, n in edges:
                if o in done or n in taken:
                    continue
                done.add(o)
                taken.add(n)
                self._pair(o, news[n])

    def _pair(self, o: bytes, new: _Rid) -> None:
        """Pair the pooled old rid ``o`` with ``new`` (its successor, until re-run)."""
        old, kind, visit = self._olds[o]
        new.pred = kind
        new.pred_visit = visit
        self._match[new.rid] = o
        if kind == _PRED_ONBOARD:
            self._pending[new.rid] = old

    def _addr_pairs(self, news: dict[bytes, _Rid]) -> list[tuple[bytes, bytes]]:
        """The pooled old rids whose own next rid is known by its BLE address: ``(old, new)``.

        A phone keeps its address across a rid rotation, so a rid of the next interval
        sent from an old rid's address is that token's next rid (the rule by which the old
        rid ended, :meth:`_near_end`), however long the token was silent before its rid
        changed: beyond the pairing's time window (:meth:`_rot_gap`) the cost-based pairing
        finds no pair for it, and the old rid was closed by the fade rules while its next
        rid boarded again (full scale, tuning seed 2, -25 dBm, ``quiet_route`` r-00038), or
        another token's old rid took the new rid (r-00330, :meth:`_assign`). Paired first,
        whatever kind. Not when the address may be two devices': two rids of one interval
        known from it (old or new, while both are known), or clock offsets that differ by
        more than ``skew_tolerance_s`` beyond what their adverts leave open (as
        :meth:`_pair_cost`). A fob that changes its address with its rid sends no such
        pair; a phone whose address changed mid-rid is looked up by the old rid's latest
        address.
        """
        idx = self._news_index()
        tol = self.params.skew_tolerance_s
        found: list[tuple[_Rid, _Rid]] = []
        for old, _, _ in self._olds.values():
            a = old.addr
            key = (old.interval + 1, a)
            n = idx.addrs.get(key) if a else None
            new = news.get(n) if n is not None else None
            if new is None or new.addr != a or key in idx.shared:
                continue
            if _clock_gap(old, new) > tol:
                continue  # not the same clock
            found.append((old, new))
        if not found:
            return []
        # (interval, address) of each pair's old rid -> rids known from it, the pool's too:
        # two of one interval are two devices (a pooled rid is also in the rid table unless
        # forgotten)
        known = {(o.interval, o.addr): 0 for o, _ in found}
        ivs = {o.interval for o, _ in found}
        rids = self._rids
        for r in itertools.chain(
            rids.values(), (o for o, _, _ in self._olds.values() if rids.get(o.rid) is not o)
        ):
            if r.interval in ivs:  # (the new rids, of the next interval, are most of the rest)
                k = (r.interval, r.addr)
                if k in known:
                    known[k] += 1
        return [(o.rid, n.rid) for o, n in found if known[(o.interval, o.addr)] == 1]

    def _pairs_of(self, old: _Rid) -> list[tuple[float, bytes]]:
        """Compute (and keep) an old rid's candidate pairs; extends the open window."""
        cand = self._edges[old.rid] = self._candidates(old)
        self._edges_tick[old.rid] = self._ticks
        until = self._windows(old.last_t)[-1] + self._rot_gap(old) + _START_S
        if until > self._open_until:  # noqa: PLR1730
            self._open_until = until
        return cand

    def _forget_old(self, o: bytes) -> None:
        """Take an old rid out of the pool (and its candidate pairs).

        The pool needs no new pairing for it: the pairing is greedy over the pairs sorted
        by cost, so taking out a paired old rid with its new rid, or an unpaired rid,
        leaves every other pair as it was.
        """
        got = self._olds.pop(o, None)
        self._edges.pop(o, None)
        self._edges_tick.pop(o, None)
        if got is not None:
            iv = got[0].interval
            n = self._pool_ivs[iv] - 1
            if n:
                self._pool_ivs[iv] = n
            else:
                del self._pool_ivs[iv]

    def _claim_changed(self, r: _Rid) -> None:
        """``r`` entered or left the live states, or changed its BLE address.

        Pairs whose new rid comes from the address of a live rid of the old interval are
        not allowed (:meth:`_assign`), so the pairing must be re-run when that changes; and
        a new rid sent from a pooled old rid's address is its successor
        (:meth:`_addr_pairs`), however long after the pairing's time window it was heard.
        """
        if r.interval in self._pool_ivs or (r.rot and r.interval - 1 in self._pool_ivs):
            self._dirty = True

    def _settle(self, t: float, out: list[SegmentDraft]) -> None:
        """Close the old rids that no new rid took within ``rotation_settle_s``."""
        settle_s = self.params.rotation_settle_s
        done = [
            o
            for o, (old, _, _) in self._olds.items()
            if t - max(old.last_t, self._resume_t) > settle_s
        ]
        if not done:
            return
        paired = set(self._match.values())
        for o in sorted(done):
            if o in paired:
                continue
            old, kind, _ = self._olds[o]
            if kind == _PRED_ONBOARD and self._moving_silence(old, t):
                continue  # nobody leaves a moving bus: judged at the next door opening
            self._forget_old(o)
            if kind == _PRED_ONBOARD:
                end, end_odo = self._fade_end(old, old.last_in_t, old.last_in_odo)
                self._emit(old, end, end_odo, out)
            elif old.eo_pts and self._echo_on and old.state == _GONE:
                # a candidate's old rid no new rid took: its next rid may go on with its
                # echo stretch as a dropped candidate's does (:meth:`_echo_link`)
                self._echo_bequeath(old)

    # -- closing ----------------------------------------------------------------------

    def _visit_at(self, t: float) -> StopVisit | None:
        for v in reversed(self._visits):
            if v.open_t <= t:
                return v
        return None

    def _close(self, r: _Rid, ev: Event, out: list[SegmentDraft]) -> None:
        """Close an ONBOARD rid: rotated (deferred until its new rid resolves) or faded."""
        r.state = int(next_state(State(r.state), ev))
        r.lvl_out = (self._riders_lvl, self._riders_key)
        if self._pool_ivs:
            self._claim_changed(r)
        r.gone_visit_seq = self._visits[-1].seq if self._visits else 0
        w = self._visit_after(r.last_in_t)
        r.gone_apart = w is not None and w.close_t is not None and self._missed_doors(r, w)
        if self._near_end(r) and self._keep_for_pairing(r, _PRED_ONBOARD, None):
            return  # resolved when its new rid is confirmed or dropped, or after a while
        end, end_odo = self._fade_end(r, r.last_in_t, r.last_in_odo)
        self._emit(r, end, end_odo, out)

    def _emit(self, r: _Rid, end: SegmentEnd, end_odo: float, out: list[SegmentDraft]) -> None:
        """Emit a faded segment, unless it is a short boarding that vanished while moving.

        A rid that boarded, rode less than ``lost_min_m`` and vanished with no door
        opening is far likelier someone in a vehicle travelling alongside for a while
        (two buses leaving a shared stop together) than a rider whose token died, unless
        its rid stopped at its interval's end: then it rotated and no new rid paired, and
        a rotation never drops a boarding (settlement joins it with the next one). A rid
        that "alighted" at the very stop visit it boarded at never rode.
        """
        assert r.start is not None
        if (
            end.cause == "lost"
            and r.start.cause == "boarded"
            and self._ridden_m(r, end_odo) < self.params.lost_min_m
            and not self._near_end(r)  # its rid's interval ended: a rotation, not a car
        ) or (
            end.cause == "alighted"
            and r.start.cause == "boarded"
            and end_odo <= r.start_odo  # "alighted" at the visit it boarded at
        ):
            self.discarded += 1
            self._unridden = True
            if self._debug:
                log.debug(
                    "segment_discarded",
                    rid=r.rid.hex(),
                    distance_m=end_odo - r.start_odo,
                    t=self._t,
                )
            if end.cause == "lost":
                # (if heard aboard again on this trip, it never left: :meth:`_revive`)
                r.lost_ride = (r.start, r.start_odo, r.held_m - r.last_in_odo)
            return
        out.append(self._draft(r, end, end_odo))

    def _rotated(self, r: _Rid) -> SegmentDraft:
        """The segment of a rid that rotated while its rider stayed on board."""
        last_t = r.last_in_t
        v = self._visit_at(last_t + self.params.alight_pre_s)
        here = (
            v.stop_id
            if v is not None
            and (
                v.close_t is None
                or v.close_t + self._grace >= last_t
                # the doors closed, but the bus has not left the stop yet
                or (
                    v.close_odo_m is not None
                    and r.last_in_odo - v.close_odo_m <= self.params.stop_radius_m
                )
            )
            else None
        )
        return self._draft(r, SegmentEnd(last_t, here, "rotated"), r.last_in_odo)

    def _fade_end(
        self, r: _Rid, last_t: float, last_odo: float, *, aboard: bool = True
    ) -> tuple[SegmentEnd, float]:
        """Alighted at the stop whose doors opened as the rider faded, or lost.

        A rider who went silent while the bus was moving, after riding ``lost_min_m`` or
        more (or across a rid rotation: :meth:`_rode`), left at the first stop whose
        doors opened after that (nobody leaves a
        moving bus), if there is one; otherwise lost.

        Not a candidate that was never confirmed (``aboard`` ``False``: its tentative
        piece, :meth:`_tentative`): that it went far with the bus says nothing a car
        beside it would not, and a car beside the bus to a stop fades before the bus halts
        there (what the co-movement rule's :meth:`_moved_on` refuses it for). Silent while
        the bus moved, it is lost there unless it stood with the bus through a later stop
        or its own rhythm says it was still aboard when the doors opened (below). Full
        scale, cell 11, tuning seed 3, ``bus_alongside_red_light`` r-01935 (docs/classifier.md,
        "Thirty-ninth pass"): a car beside ``bus-55-01-r2`` from BD006 for 2.4 km, silent
        the last 38 s (43 of its gaps) before BD010's doors opened; its piece closed
        ``alighted`` at BD010 and charged door to door.
        """
        p = self.params
        assert r.start is not None
        v = self._visit_at(last_t + p.alight_pre_s)
        if v is not None and self._faded_at(r, v, last_t, last_odo):
            end_t = max(v.open_t, min(last_t, v.close_t if v.close_t is not None else last_t))
            return SegmentEnd(end_t, v.stop_id, "alighted"), v.open_odo_m
        w = self._visit_after(last_t + p.alight_pre_s)
        if w is not None and (
            (
                p.lost_wait_s > 0.0
                and (
                    self._rode(r, last_odo)
                    if aboard
                    else r.visit is not None and r.tk_stood > r.visit.seq
                )
            )
            # silent for less than its own mean gap between in-bus adverts when the doors
            # opened (its rhythm known): by its rhythm it was still aboard then (full
            # scale, tuning seed 2, weak radio corner, phone_deep_in_bag r-00007: heard
            # every 1.9 s on average, last heard 1.3 s before the doors opened as the bus
            # pulled in, a one-hop ride dropped as lost while moving); a vehicle beside the
            # bus is heard every second or less and gone several of its gaps before the
            # bus halts (cell 11, tuning seed 2, rush_hour_crowd r-03335: 2.5 s)
            or (last_t == r.last_in_t and r.n_in >= p.fade_gaps and w.open_t - last_t <= r.gap)
        ):
            return SegmentEnd(w.open_t, w.stop_id, "alighted"), w.open_odo_m
        stop = v.stop_id if v is not None else r.start.stop_id
        return SegmentEnd(last_t, stop, "lost"), last_odo

    def _rode(self, r: _Rid, last_odo: float) -> bool:
        """Whether a rider silent while the bus moved is a rider, not a vehicle alongside.

        It rode ``lost_min_m`` or more in this segment, or the segment continues an
        earlier one of the same rider across a rid rotation (its ride began before the
        rotation: a rid that rotated 1 km before the rider's stop must not make a weak
        rider's fade there ``lost`` at the stop before), or its rid ended (a rotation
        explains the silence), or it stayed in the bus standing at a stop after its own
        (``stay_s`` after the doors opened): a vehicle beside the bus for a hop drives on
        as the bus halts, a rider heard through a stop's dwell is a rider (full scale,
        tuning seed 3, -25 dBm, ``phone_deep_in_bag`` r-00075: boarded BD004, heard
        standing at BD005, last heard 1.9 s before the doors opened at BD006 as the bus
        pulled in, 1.75 km ridden: dropped as a short ride lost while moving), or it
        continues this rid's previous segment (it starts where that one ended: a rider
        closed at a stop as it fell silent there and revived past it; full scale, tuning
        seed 2, -25 dBm, ``gnss_tunnel`` r-00061: closed at SE001 after 12.9 km, revived
        189 m on, confirmed again, silent 556 m on and never heard again before SE002:
        the revived part was dropped as a short ride lost while moving, charged to SE001).
        """
        assert r.start is not None
        return (
            r.start.cause == "continued"
            or self._ridden_m(r, last_odo) >= self.params.lost_min_m
            # its rid ended while the bus moved: the rotation, not a vehicle drifting off,
            # explains the silence (no new rid paired with it)
            or self._near_end(r)
            # it stayed aboard through a stop after its own, heard in the standing bus
            # ``stay_s`` after the doors opened: a vehicle alongside drives on as the bus
            # halts
            or (r.visit is not None and r.tk_stood > r.visit.seq)
            # it begins where this rid's previous segment ended (revived: closed at a stop
            # as it fell silent there, heard aboard again past it, :meth:`_revive`): one
            # ride with the segment already emitted, which settlement joins to it, not a
            # vehicle's short ride (a tentative piece is no ride: a vehicle's rid that sent
            # one is not revived by it)
            or r.start.t <= r.rode_t
            # its echo names this bus since a stop it boarded at or before, heard so at
            # echo_points points after the bus left that stop (:meth:`_echo_from`): it has
            # been with this bus all that while, by its own hearing and the bus's
            or self._echo_rode(r)
        )

    def _echo_rode(self, r: _Rid) -> bool:
        """Whether ``r``'s echo says it has been with this bus since its boarding stop."""
        if not self._echo_on or r.eo_pts < self._echo_pts or r.ex_run or r.visit is None:
            return False
        w = self._echo_visit(r)
        return w is not None and w.seq <= r.visit.seq and r.eo_late > w.seq

    def _faded_at(self, r: _Rid, v: StopVisit, last_t: float, last_odo: float) -> bool:
        """Whether a rider last heard at ``last_t``/``last_odo`` faded at stop visit ``v``.

        Still standing there, or no more than ``lost_after_m`` past its departure, and
        its silence not its rid's end (:meth:`_rotated_away`): an alighting at ``v``.
        """
        return (
            v.close_odo_m is None or last_odo - v.close_odo_m <= self.params.lost_after_m
        ) and not self._rotated_away(r, v, last_t)

    def _rotated_away(self, r: _Rid, v: StopVisit, last_t: float) -> bool:
        """Whether a rider last heard just past ``v`` fell silent because its rid ended.

        ``lost_after_m`` past a stop's departure a silence reads as an alighting there
        (someone walking off, heard faintly as the bus leaves). Not when the rid was last
        heard ``confirm_distance_m`` or more past the departure at its ride's level
        (smoothed RSSI no more than ``sparse_fall_db`` below its median: someone who walked off is
        out of hearing or far below it by then, as :meth:`_revives` judges) and stopped at
        its interval's end: it was aboard when the bus left ``v`` and its rid rotated;
        nobody leaves a moving bus, so it alights at a later door (full scale, tuning
        seed 1, -25 dBm, ``transfer_two_buses`` r-00058: last heard 192 m past BD008 at
        its level, its new rid unpaired 15 s later; charged to BD008, rode to BD009; and
        not seed 2's r-00029, heard walking off 31 m past BD005 as its rid ended, 12 dB
        below its ride). Only for the rid's own last advert (``last_t``), not a dropped
        successor's.
        """
        if (
            last_t != r.last_in_t
            or v.close_odo_m is None
            or r.last_in_odo - v.close_odo_m < self._co_d
            or not self._near_end(r)
        ):
            return False
        med = _median(r.hist)
        return med is not None and r.ewma >= med - self._sparse_fall

    @staticmethod
    def _ridden_m(r: _Rid, last_odo: float) -> float:
        """How far the bus carried ``r`` from its start to ``last_odo``, heard on the way.

        The travel during silences it was held on board through (``held_m``) does not
        count: a rider aboard is heard at its own rhythm while the bus moves; a car
        that kept pace with the bus only from one red light to the next is heard in
        clusters at the lights and not between them (bus_alongside_red_light: a car heard
        by the bus at a light 300 m past its stop, again at one 1.9 km on, held aboard
        between them, "rode" 2 km and was charged to the next stop).
        """
        return last_odo - r.start_odo - r.held_m

    def _visit_after(self, t: float) -> StopVisit | None:
        """The first stop visit whose doors opened after ``t``."""
        w = None
        for x in reversed(self._visits):
            if x.open_t <= t:
                break
            w = x
        return w

    def _fade(self, r: _Rid, t: float, out: list[SegmentDraft]) -> None:
        """A rider's in-bus evidence stopped: close the segment, unless held on board."""
        if not self._held(r, t):
            self._close(r, Event.FADE, out)

    def _held(self, r: _Rid, t: float) -> bool:
        """Whether a silent rider is kept on board: silent while the bus moves, no door since.

        A rider who rode ``lost_min_m`` or more and went silent between stops (a weak token
        behind a crowd, deep in a bag) cannot have left before the doors open: they are
        held until the first door opening after the silence has closed and
        ``fade_timeout_s`` passed with still nothing heard (then they alighted there, or
        ride on if heard again), for at most ``lost_wait_s``. A rid whose interval ended
        is not held (it may have rotated).
        """
        return not self._near_end(r) and self._moving_silence(r, t)

    def _moving_silence(self, r: _Rid, t: float) -> bool:
        """Whether ``r`` went silent while the bus moved and no door has opened and closed since.

        Nobody leaves a moving bus: such a silence is not an alighting until the next door
        opening has closed and ``fade_timeout_s`` passed (at most ``lost_wait_s``).
        """
        p = self.params
        last = max(r.last_in_t, self._resume_t)
        if p.lost_wait_s <= 0.0 or t - last > p.lost_wait_s:
            return False
        v = self._visit_at(r.last_in_t + p.alight_pre_s)
        if v is not None and self._faded_at(r, v, r.last_in_t, r.last_in_odo):
            return False  # it faded at a stop: an alighting
        w = self._visit_after(r.last_in_t + p.alight_pre_s)
        if w is None:
            return True
        return w.close_t is None or t - w.close_t <= p.fade_timeout_s

    def _draft(self, r: _Rid, end: SegmentEnd, end_odo: float) -> SegmentDraft:
        assert r.start is not None
        evidence: dict[str, Any] = {
            "n_adv": r.n_adv,
            "n_in": r.n_in,
            "n_far": r.n_far,
            "rssi_max": r.rssi_max,
            "rssi_med": _median(r.hist),
            "confirm_t": round(r.confirm_t, 3),
            "flags": r.flags_or,
        }
        lv_hist = self._lv_counts(r)
        if lv_hist:
            # the riders' level while it was heard (the median: not moved by the seconds
            # after a rid boundary when the riders' new rids are not yet aboard): how far
            # below its riders this bus heard it (settlement of a rider claimed by two
            # buses, docs/backend.md)
            evidence["riders_lvl"] = _median(lv_hist)
        # tentative pieces counted apart: the end causes count rides
        if r.start.cause == "tentative":
            cause = "tentative"
        else:
            cause = end.cause
            # a ride (not discarded: :meth:`_emit`) ended: the level when riders were
            # last aboard, for :meth:`_unride` (as its rid left them: a rotated rid's
            # segment may be drafted long after, another level standing by then)
            if end.t >= self._rode_lvl[0]:
                lvl, key = r.lvl_out or (self._riders_lvl, self._riders_key)
                self._rode_lvl = (end.t, lvl, key)
        self.closed[cause] = self.closed.get(cause, 0) + 1
        if self._debug:
            log.debug(
                "segment_closed",
                rid=r.rid.hex(),
                start=r.start.cause,
                end=end.cause,
                start_stop=r.start.stop_id,
                end_stop=end.stop_id,
            )
        end = SegmentEnd(max(end.t, r.start.t), end.stop_id, end.cause)
        r.ended_t = end.t
        if r.start.cause != "tentative":
            r.rode_t = end.t
        return SegmentDraft(
            rid=r.rid.hex(),
            interval=r.interval,
            route_id=r.route_id,
            trip_id=r.trip_id,
            start=r.start,
            end=end,
            distance_m=max(0.0, end_odo - r.start_odo),
            proof_first=r.first_raw.hex(),
            proof_last=r.last_in_raw.hex(),
            evidence=evidence,
        )

    def finish(self, t: float, odo: float) -> list[SegmentDraft]:
        """Close every open segment and drop every candidate (end of replay, shutdown).

        A rid on board when the bus is at a stop is ``alighted`` there; otherwise the
        fade rules decide, as if it had faded now (``lost`` at the last stop it was seen
        on board after, unless it faded at a stop or its rid rotated).
        """
        self._t = max(self._t, t)
        self._ticks += 1
        self._debug = _debug_enabled()
        out: list[SegmentDraft] = []
        v = self._visit
        here = v if v is not None and v.close_t is None else None
        pre = self.params.alight_pre_s

        def end_of(seg: _Rid, last_t: float, last_odo: float) -> None:
            try:
                if here is not None and last_t >= here.open_t - pre:
                    assert seg.start is not None
                    end = SegmentEnd(max(here.open_t, seg.start.t), here.stop_id, "alighted")
                    out.append(self._draft(seg, end, here.open_odo_m))
                else:
                    fade_end, end_odo = self._fade_end(seg, last_t, last_odo)
                    if t - last_t > self._fade_s(seg):
                        # held on board through a silence: judged as if it had faded
                        self._emit(seg, fade_end, end_odo, out)
                    else:
                        out.append(self._draft(seg, fade_end, end_odo))
            except Exception as exc:
                self._failed("finish", seg, exc)

        if self._olds:
            self._assign([r for r in self._rids.values() if r.state in (_CANDIDATE, _ROTATING)])
        paired = {prior.rid for prior in self._pending.values()}
        # a rotated rider whose new rid is still heard in the bus is aboard: continue it
        for new_rid, prior in sorted(self._pending.items()):
            new = self._rids[new_rid]
            if (
                t - new.last_in_t <= self.params.fade_timeout_s
                and new.n_far >= self.params.confirm_adverts
            ):
                del self._pending[new_rid]
                out.append(self._rotated(prior))
                nv = new.visit if new.state == _CANDIDATE else None
                stop = nv.stop_id if nv is not None else None
                self._confirm(new, t, "continued", new.first_t, stop, new.first_odo)
        for r in self._rids.values():
            if r.state == _GONE:
                continue
            was = r.state
            if (
                was == _CANDIDATE
                and self._echo_on
                and (r.eo_pts >= self._echo_pts or self._echo_old(r))
            ):
                try:  # its echo and the bus's hearing say it rode: board it, then close it
                    assert r.visit is not None
                    w = self._echo_from(r, r.visit, thin=True)
                    if w is not None:
                        self._echo_board(r, t, w, out)
                        was = r.state
                except Exception as exc:
                    self._failed("finish", r, exc)
            if was == _CANDIDATE:
                try:
                    if self._tentative_ok(r):
                        self._tentative(r, out)
                except Exception as exc:  # (contained like end_of: the others still close)
                    self._failed("finish", r, exc)
            elif was == _ROTATING and r.rid not in self._pending:
                try:
                    if self._unpaired_rides(r):
                        self._unlinked_piece(r, out)
                except Exception as exc:
                    self._failed("finish", r, exc)
            r.state = int(next_state(State(r.state), Event.FINISH))
            if was == _ONBOARD:
                end_of(r, r.last_in_t, r.last_in_odo)
            else:
                old = self._pending.pop(r.rid, None)
                if old is not None:
                    end_of(old, r.last_in_t, r.last_in_odo)
        # riders whose rid stopped at its interval's end and no new rid took over
        for o, (old, kind, _) in sorted(self._olds.items()):
            if kind == _PRED_ONBOARD and o not in paired:
                end_of(old, old.last_in_t, old.last_in_odo)
        self._pending.clear()
        self._match.clear()
        self._olds.clear()
        self._edges.clear()
        self._edges_tick.clear()
        self._pool_ivs.clear()
        out.sort(key=lambda d: (d.end.t, d.rid))
        return out

    # -- read-only state --------------------------------------------------------------

    def on_board(self) -> int:
        """Riders currently confirmed on board."""
        return sum(1 for r in self._rids.values() if r.state == _ONBOARD)

    def tokens_in_range(self, t: float | None = None) -> int:
        """Distinct rids heard within ``fade_timeout_s`` of ``t`` (default: latest time)."""
        since = (self._t if t is None else t) - self.params.fade_timeout_s
        return sum(1 for r in self._rids.values() if r.last_t >= since)

    def active_flags(self, t: float | None = None) -> dict[str, int]:
        """Flags heard within ``flag_ttl_s``: on board ALIGHT_REQUEST/ASSIST, outside WAIT."""
        since = (self._t if t is None else t) - self.params.flag_ttl_s
        out = {"alight_request": 0, "assist": 0, "wait": 0}
        for r in self._rids.values():
            if r.last_t < since or not r.last_flags:
                continue
            inside = r.state == _ONBOARD or (
                r.state in (_CANDIDATE, _ROTATING)
                and r.last_in_t >= since
                # (first heard past its stop: outside until it rides through a later one,
                # as likely someone waiting at the next stop, heard from afar)
                and not (r.visit is not None and self._far_joiner(r, r.visit))
            )
            if inside:
                if r.last_flags & _ALIGHT:
                    out["alight_request"] += 1
                if r.last_flags & _ASSIST:
                    out["assist"] += 1
            elif r.last_flags & _WAIT:
                out["wait"] += 1
        return out

    def state_of(self, rid: bytes) -> State:
        """The state of a rid (``NEW`` if unknown or forgotten)."""
        r = self._rids.get(rid)
        return State.NEW if r is None else State(r.state)
