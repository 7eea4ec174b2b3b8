"""Boarding-wait requests in the backend: the rules and the lifecycle (sans-I/O core).

A rider at a stop asks the next bus of a route to stop (Bells v1 in
``docs/protocol.md``): the backend publishes the retained wait
``routes/{route}/stops/{stop}/waits/{request_id}`` (MQTT message expiry = its lifetime)
and its retained status ``requests/{request_id}/status``; buses move the status on.
This module is the synchronous core the rider API and its MQTT link drive
(:mod:`backend._waits_api`); it reads no clock and does no I/O: every input carries its
time, every output is a :class:`Publish` or a :class:`StateChange` for the adapter.

* :class:`WaitRules` - the rules riders know from Gyeonggi's 승차벨, from ``[waits]``.
* :func:`check_request` - whether a new wait is accepted (stop of the route, the next bus
  not closer than ``cutoff_stops``, lifetime limits, per-rider rate), or why not.
* :class:`FleetPositions` - where each bus is, from the retained display models
  (``buses/{bus}/display``: ``trip_id``, ``next_stop``, ``stops``) and ``status``.
* :class:`WaitBook` - every live wait known (published here or retained on the broker)
  and its state, walked by the statuses buses publish through :data:`TRANSITIONS`;
  a ``missed`` wait goes back to ``pending`` for the next bus; expiry.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from busbell._bells import validate_wait
from busbell._canonical import canonical_bytes
from busbell._errors import ContractError
from busbell._gtfs import Feed
from busbell._safejson import JsonLimits, JsonRejected, loads_object
from busbell._topics import Topics, check_topic_id

__all__ = [
    "BUS_STATES",
    "FINAL_STATES",
    "LIVE_STATES",
    "REJECT_REASONS",
    "STATES",
    "STATUS_REJECT_REASONS",
    "TRANSITIONS",
    "BusPosition",
    "FleetPositions",
    "LiveWait",
    "Publish",
    "StateChange",
    "WaitBook",
    "WaitRejected",
    "WaitRules",
    "check_request",
    "status_payload",
    "wait_payload",
]

STATES = (
    "pending",
    "seen",
    "acknowledged",
    "served",
    "missed",
    "expired",
    "cancelled",
)
"""Every state of a wait (``requests/{id}/status``)."""
FINAL_STATES = frozenset({"served", "expired", "cancelled"})
"""States a wait never leaves."""
LIVE_STATES = frozenset(STATES) - FINAL_STATES
"""States of a live wait (one per rider)."""
BUS_STATES = frozenset({"seen", "acknowledged", "served", "missed", "expired"})
"""States a bus publishes (``pending`` and ``cancelled`` are the backend's)."""

TRANSITIONS: Mapping[str, frozenset[str]] = {
    # a bus of the route shows it / the driver acked it / doors opened / passed it
    "pending": frozenset({"seen", "acknowledged", "served", "missed", "expired", "cancelled"}),
    # another bus may see it too (the one behind); the one that stops serves it
    "seen": frozenset({"seen", "acknowledged", "served", "missed", "expired", "cancelled"}),
    "acknowledged": frozenset({"served", "missed", "expired", "cancelled"}),
    # the backend puts a missed wait back to pending; the next bus may be quicker
    "missed": frozenset({"pending", "seen", "acknowledged", "served", "expired", "cancelled"}),
    "served": frozenset(),
    "expired": frozenset(),
    "cancelled": frozenset(),
}
"""The lifecycle: from a state, the states a status message may move a wait to.

A status that names the wait's current state again from the same bus is a repeat (no
change); any other move outside the table is stale (a late or reordered message) and is
counted, never applied.
"""

REJECT_REASONS = (
    "bad_id",
    "unknown_route",
    "unknown_stop",
    "stop_not_on_route",
    "lifetime_too_short",
    "lifetime_too_long",
    "bus_too_close",
    "rate_limited",
    "too_many_waits",
    "rider_inactive",
    "not_live",
)
"""Why a wait request (API) is refused; each is counted."""

STATUS_REJECT_REASONS = (
    "oversized",
    "bad_json",
    "not_object",
    "request_id_mismatch",
    "bad_state",
    "bad_bus_id",
    "bad_time",
    "stale",
)
"""Why a status message on ``requests/{id}/status`` is not applied; each is counted."""

_MAX_STATUS_BYTES = 2048
_MAX_WAIT_BYTES = 4096
_MAX_DISPLAY_BYTES = 256 * 1024


class WaitRejected(ContractError):
    """A wait request the rules refuse.

    Attributes:
        reason: one of :data:`REJECT_REASONS`.
        http_status: the HTTP status the API answers with.
    """

    def __init__(self, reason: str, message: str, http_status: int = 422) -> None:
        super().__init__(message, field="wait", reason=reason)
        self.http_status = http_status


@dataclass(frozen=True, slots=True)
class WaitRules:
    """The rules a wait request must meet (``[waits]`` in the backend config).

    Attributes:
        default_lifetime_s: lifetime of a wait when the rider does not say.
        min_lifetime_s: shortest lifetime a rider may ask for.
        max_lifetime_s: longest lifetime a rider may ask for.
        cutoff_stops: a wait is accepted only while the next bus of the route has not
            passed the stop this many stops before it (0: no such rule).
        position_max_age_s: a bus's display model older than this is not a position.
        rate_max: most wait requests one rider may make per ``rate_window_s``.
        rate_window_s: the window of the rate rule.
        status_retain_s: message expiry of a final status (served, expired, cancelled).
        max_live_waits: most live waits the backend tracks (its memory bound).
    """

    default_lifetime_s: int = 900
    min_lifetime_s: int = 60
    max_lifetime_s: int = 3600
    cutoff_stops: int = 2
    position_max_age_s: float = 120.0
    rate_max: int = 10
    rate_window_s: float = 3600.0
    status_retain_s: int = 3600
    max_live_waits: int = 100_000

    def __post_init__(self) -> None:
        if not 0 < self.min_lifetime_s <= self.default_lifetime_s <= self.max_lifetime_s:
            raise ValueError("need 0 < min_lifetime_s <= default_lifetime_s <= max_lifetime_s")
        if self.cutoff_stops < 0 or self.rate_max < 1 or self.rate_window_s <= 0:
            raise ValueError("need cutoff_stops >= 0, rate_max >= 1, rate_window_s > 0")
        if self.position_max_age_s <= 0 or self.status_retain_s <= 0 or self.max_live_waits < 1:
            raise ValueError("need position_max_age_s, status_retain_s, max_live_waits > 0")


@dataclass(frozen=True, slots=True)
class Publish:
    """A message for the adapter to publish (QoS 1)."""

    topic: str
    payload: bytes
    retain: bool = True
    expiry_s: int | None = None


@dataclass(frozen=True, slots=True)
class StateChange:
    """A wait changed state (the adapter mirrors it in ``rider_waits``)."""

    request_id: str
    state: str
    bus_id: str | None
    t: float
    missed: bool = False
    """The change is a ``missed`` from a bus (counted per wait)."""


@dataclass(slots=True)
class LiveWait:
    """A live wait the backend knows: its own (``app``) or retained on the broker."""

    request_id: str
    route_id: str
    stop_id: str
    t: float
    expires_t: float
    source: str = "app"
    assist: bool = False
    state: str = "pending"
    bus_id: str | None = None
    state_t: float = 0.0
    missed: int = 0


@dataclass(frozen=True, slots=True)
class BusPosition:
    """Where a bus is, from its display model.

    Attributes:
        bus_id: the bus.
        route_id: the route it serves (``None``: no trip).
        t: time of the display model.
        ahead: stop ids still ahead of the bus in order, the next stop first (from the
            trip's GTFS stop times when the feed has the trip, else the model's ``stops``).
        complete: ``ahead`` runs to the end of the trip (from GTFS), not a horizon.
    """

    bus_id: str
    route_id: str | None
    t: float
    ahead: tuple[str, ...]
    complete: bool


def wait_payload(w: LiveWait) -> bytes:
    """The retained wait message (Bells v1) of ``w``."""
    return canonical_bytes(
        {
            "request_id": w.request_id,
            "route_id": w.route_id,
            "stop_id": w.stop_id,
            "t": w.t,
            "expires_t": w.expires_t,
            "source": w.source,
            "assist": w.assist,
        }
    )


def status_payload(request_id: str, state: str, t: float, bus_id: str | None = None) -> bytes:
    """A ``requests/{id}/status`` message."""
    return canonical_bytes({"request_id": request_id, "state": state, "bus_id": bus_id, "t": t})


def _number(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


_MAX_DEPTH = 4
"""A display model is the deepest message read here: ``stops[].request_ids[]`` is depth 3."""

_REASON_OF = {"too_large": "oversized", "not_object": "not_object"}
"""Bounded-parse reasons kept under this module's counter names; the rest are ``bad_json``."""


def _object(payload: bytes, limit: int) -> dict[str, Any] | str:
    """The JSON object in ``payload``, or the reason it is not one.

    Parsed by :func:`busbell.loads_object` within ``limit`` bytes and depth
    :data:`_MAX_DEPTH`: a ``NaN``/``Infinity`` literal, an integer beyond BIGINT, invalid
    UTF-8, a lone surrogate escape or deep nesting is ``bad_json`` before any field is
    looked at.
    """
    try:
        return loads_object(payload, JsonLimits(max_bytes=limit, max_depth=_MAX_DEPTH))
    except JsonRejected as exc:
        return _REASON_OF.get(exc.reason, "bad_json")


# ---------------------------------------------------------------------------- positions


class FleetPositions:
    """Bus positions from the retained display models and statuses the edges publish.

    The display model (``buses/{bus}/display``) carries the bus's ``route_id``,
    ``trip_id``, ``next_stop`` and the ``stops`` ahead within its horizon; it is
    republished on every change and at least every 30 s, so a model older than
    ``max_age_s`` means the bus is gone. A bus whose status says ``offline`` has no
    position.
    """

    def __init__(
        self,
        feed: Feed | None = None,
        *,
        max_age_s: float = 120.0,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self.feed = feed
        self.max_age_s = max_age_s
        self._buses: dict[str, BusPosition] = {}
        self._offline: set[str] = set()
        self.rejected: Counter[str] = Counter()
        """Display models not used, by reason."""
        self._on_reject = on_reject

    def _reject(self, reason: str) -> None:
        self.rejected[reason] += 1
        if self._on_reject is not None:
            self._on_reject(reason)

    def __len__(self) -> int:
        return len(self._buses)

    def on_display(self, bus_id: str, payload: bytes) -> BusPosition | None:
        """Take a display model; returns the position, ``None`` if cleared or rejected."""
        if not payload:
            self._buses.pop(bus_id, None)
            return None
        obj = _object(payload, _MAX_DISPLAY_BYTES)
        if isinstance(obj, str):
            self._reject(obj)
            return None
        pos = self._position(bus_id, obj)
        if pos is None:
            self._buses.pop(bus_id, None)
            return None
        self._buses[bus_id] = pos
        return pos

    def _position(self, bus_id: str, obj: dict[str, Any]) -> BusPosition | None:
        t = _number(obj.get("t"))
        if t is None:
            self._reject("bad_time")
            return None
        if obj.get("bus_id", bus_id) != bus_id:
            self._reject("bus_id_mismatch")
            return None
        route_id, trip_id = obj.get("route_id"), obj.get("trip_id")
        stops = obj.get("stops")
        if not isinstance(stops, list):
            stops = []
        ahead: list[str] = []
        for stop in stops:
            sid = stop.get("stop_id") if isinstance(stop, dict) else None
            if not isinstance(sid, str):
                self._reject("bad_stops")
                return None
            ahead.append(sid)
        nxt = obj.get("next_stop")
        next_id = nxt.get("stop_id") if isinstance(nxt, dict) else None
        if isinstance(next_id, str) and (not ahead or ahead[0] != next_id):
            ahead.insert(0, next_id)
        if not isinstance(route_id, str) or not ahead:
            route = route_id if isinstance(route_id, str) else None
            return BusPosition(bus_id, route, t, (), False)
        trip = self.feed.trips.get(trip_id) if self.feed and isinstance(trip_id, str) else None
        if trip is not None and trip.route_id == route_id and ahead[0] in trip.stop_ids:
            seq = nxt.get("seq") if isinstance(nxt, dict) else None
            idx = trip.stop_ids.index(ahead[0])
            # a loop visits a stop twice: the model's seq (a GTFS stop_sequence position or
            # index) tells which visit when it names this stop
            if isinstance(seq, int) and 0 <= seq < len(trip.stop_ids):
                if trip.stop_ids[seq] == ahead[0]:
                    idx = seq
                elif seq >= 1 and trip.stop_ids[seq - 1] == ahead[0]:
                    idx = seq - 1
            return BusPosition(bus_id, route_id, t, trip.stop_ids[idx:], True)
        return BusPosition(bus_id, route_id, t, tuple(ahead), False)

    def on_status(self, bus_id: str, payload: bytes) -> None:
        """Take a bus status: ``offline`` (its last will) removes its position."""
        obj = _object(payload, _MAX_STATUS_BYTES) if payload else "cleared"
        if isinstance(obj, dict) and obj.get("state") == "online":
            self._offline.discard(bus_id)
        else:
            self._offline.add(bus_id)

    def next_bus(self, route_id: str, stop_id: str, now: float) -> tuple[str, int] | None:
        """The bus of ``route_id`` nearest before ``stop_id``: ``(bus_id, stops to go)``.

        Stops to go is 0 when the stop is the bus's next stop. Only fresh positions of
        online buses count; a bus whose horizon does not reach the stop is not known to
        be approaching it.
        """
        best: tuple[int, str] | None = None
        for pos in self._buses.values():
            if pos.route_id != route_id or pos.bus_id in self._offline:
                continue
            if now - pos.t > self.max_age_s or stop_id not in pos.ahead:
                continue
            cand = (pos.ahead.index(stop_id), pos.bus_id)
            if best is None or cand < best:
                best = cand
        return None if best is None else (best[1], best[0])

    def get(self, bus_id: str) -> BusPosition | None:
        """The position of a bus, if known."""
        return self._buses.get(bus_id)


# ---------------------------------------------------------------------------- admission


def check_request(
    rules: WaitRules,
    *,
    route_id: str,
    stop_id: str,
    lifetime_s: int | None,
    recent_requests: int,
    now: float,
    feed: Feed | None = None,
    positions: FleetPositions | None = None,
) -> int:
    """Check a new wait request against the rules; returns its lifetime in seconds.

    Args:
        rules: the rules.
        route_id: the route the rider waits for.
        stop_id: the stop the rider waits at.
        lifetime_s: the lifetime the rider asks for (``None``: the default).
        recent_requests: the rider's wait requests within ``rules.rate_window_s``.
        now: the time of the request.
        feed: GTFS static; without it routes and stops are not checked.
        positions: bus positions; without them the cutoff rule is not applied.

    Raises:
        WaitRejected: the reason (one of :data:`REJECT_REASONS`) and a message.
    """
    for value, what in ((route_id, "route_id"), (stop_id, "stop_id")):
        try:
            check_topic_id(value, what)
        except ContractError as exc:
            raise WaitRejected("bad_id", str(exc)) from None
    if feed is not None:
        if route_id not in feed.routes:
            raise WaitRejected("unknown_route", f"unknown route {route_id!r}", 404)
        if stop_id not in feed.stops:
            raise WaitRejected("unknown_stop", f"unknown stop {stop_id!r}", 404)
        if not any(
            p.route_id == route_id and stop_id in p.stop_ids for p in feed.patterns.values()
        ):
            raise WaitRejected(
                "stop_not_on_route", f"route {route_id!r} does not serve stop {stop_id!r}"
            )
    lifetime = rules.default_lifetime_s if lifetime_s is None else lifetime_s
    if lifetime < rules.min_lifetime_s:
        raise WaitRejected(
            "lifetime_too_short", f"expires_in_s must be at least {rules.min_lifetime_s}"
        )
    if lifetime > rules.max_lifetime_s:
        raise WaitRejected(
            "lifetime_too_long", f"expires_in_s must be at most {rules.max_lifetime_s}"
        )
    if recent_requests >= rules.rate_max:
        raise WaitRejected(
            "rate_limited",
            f"at most {rules.rate_max} wait requests per {rules.rate_window_s:g} s",
            429,
        )
    if positions is not None and rules.cutoff_stops > 0:
        nearest = positions.next_bus(route_id, stop_id, now)
        if nearest is not None and nearest[1] < rules.cutoff_stops:
            bus_id, to_go = nearest
            raise WaitRejected(
                "bus_too_close",
                f"the next bus of route {route_id} ({bus_id}) is {to_go} stop(s) from "
                f"{stop_id}: a wait must be made before it passes the stop "
                f"{rules.cutoff_stops} stops before",
                409,
            )
    return lifetime


# ---------------------------------------------------------------------------- lifecycle


@dataclass
class WaitBook:
    """Every live wait the backend knows and its state; the lifecycle rules.

    Waits enter from the API (:meth:`add`) or from the broker (:meth:`on_wait`, for
    waits of stop call units and those retained before a restart); buses move them on
    (:meth:`on_status`); :meth:`tick` expires them. Every method returns what to publish
    and what changed; nothing here does I/O.
    """

    topics: Topics
    rules: WaitRules = field(default_factory=WaitRules)
    waits: dict[str, LiveWait] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)
    """Status messages not applied, by reason (:data:`STATUS_REJECT_REASONS`)."""
    wait_rejected: Counter[str] = field(default_factory=Counter)
    """Wait messages seen on the broker and not tracked, by reason."""
    on_reject: Callable[[str, str], None] | None = None
    """Called with ``("status" | "wait", reason)`` for every message not applied."""
    _final: dict[str, str] = field(default_factory=dict)
    """Recently finished waits (request id -> final state): a late status is stale."""

    def _reject(self, what: str, reason: str) -> None:
        (self.rejected if what == "status" else self.wait_rejected)[reason] += 1
        if self.on_reject is not None:
            self.on_reject(what, reason)

    def add(self, w: LiveWait) -> list[Publish]:
        """A new wait from the API: its retained wait and ``pending`` status."""
        self.waits[w.request_id] = w
        w.state, w.state_t = "pending", w.t
        lifetime = max(1, math.ceil(w.expires_t - w.t))
        return [
            Publish(
                self.topics.wait(w.route_id, w.stop_id, w.request_id),
                wait_payload(w),
                expiry_s=lifetime,
            ),
            Publish(
                self.topics.request_status(w.request_id),
                status_payload(w.request_id, "pending", w.t),
                expiry_s=lifetime + self.rules.status_retain_s,
            ),
        ]

    def restore(self, w: LiveWait) -> None:
        """Track a wait stored before a restart (its state as stored)."""
        self.waits[w.request_id] = w

    def cancel(self, request_id: str, now: float) -> tuple[list[Publish], list[StateChange]]:
        """Cancel a live wait: an empty retained wait and the status ``cancelled``.

        Raises:
            WaitRejected: ``not_live`` when the wait is not live.
        """
        w = self.waits.get(request_id)
        if w is None:
            raise WaitRejected("not_live", f"wait {request_id!r} is not live", 409)
        return self._finish(w, "cancelled", now, clear=True)

    def _finish(
        self, w: LiveWait, state: str, now: float, *, clear: bool
    ) -> tuple[list[Publish], list[StateChange]]:
        self.waits.pop(w.request_id, None)
        self._remember(w.request_id, state)
        out: list[Publish] = []
        if clear:
            out.append(Publish(self.topics.wait(w.route_id, w.stop_id, w.request_id), b""))
        out.append(
            Publish(
                self.topics.request_status(w.request_id),
                status_payload(w.request_id, state, now),
                expiry_s=self.rules.status_retain_s,
            )
        )
        return out, [StateChange(w.request_id, state, None, now)]

    def _remember(self, request_id: str, state: str) -> None:
        self._final[request_id] = state
        while len(self._final) > self.rules.max_live_waits:
            del self._final[next(iter(self._final))]

    def on_wait(
        self, route_id: str, stop_id: str, request_id: str, payload: bytes, now: float
    ) -> LiveWait | None:
        """A message on a wait topic: track a retained wait, or forget a cleared one."""
        if not payload:
            w = self.waits.get(request_id)
            if w is not None and w.source != "app":
                del self.waits[request_id]  # a stop unit took its wait back
            return None
        if request_id in self.waits or request_id in self._final:
            return None
        obj = _object(payload, _MAX_WAIT_BYTES)
        if isinstance(obj, str):
            self._reject("wait", obj)
            return None
        try:
            validate_wait(obj)  # the edges' own check (busbell._bells): what they accept
        except ContractError:
            self._reject("wait", "invalid")
            return None
        if (
            obj.get("request_id") != request_id
            or obj.get("route_id", route_id) != route_id
            or obj.get("stop_id", stop_id) != stop_id
        ):
            self._reject("wait", "id_mismatch")
            return None
        t, expires = float(obj["t"]), float(obj["expires_t"])
        if expires <= now:
            self._reject("wait", "expired")
            return None
        if len(self.waits) >= self.rules.max_live_waits:
            self._reject("wait", "too_many_waits")
            return None
        w = LiveWait(
            request_id, route_id, stop_id, t, expires, obj["source"], obj["assist"], state_t=t
        )
        self.waits[request_id] = w
        return w

    def _parse_status(
        self, request_id: str, payload: bytes
    ) -> tuple[str, str | None, float] | None:
        """A status message's state, bus and time, or ``None`` (rejected, counted)."""
        obj = _object(payload, _MAX_STATUS_BYTES)
        if isinstance(obj, str):
            self._reject("status", obj)
            return None
        state, bus_id, t = obj.get("state"), obj.get("bus_id"), _number(obj.get("t"))
        if obj.get("request_id") != request_id:
            reason = "request_id_mismatch"
        elif not isinstance(state, str) or state not in TRANSITIONS:
            reason = "bad_state"
        elif bus_id is not None and not (isinstance(bus_id, str) and 0 < len(bus_id) <= 64):
            reason = "bad_bus_id"
        elif t is None:
            reason = "bad_time"
        else:
            return state, bus_id, t
        self._reject("status", reason)
        return None

    def on_status(
        self, request_id: str, payload: bytes, now: float
    ) -> tuple[list[Publish], list[StateChange]]:
        """A status message on ``requests/{request_id}/status``.

        Applies a move the lifecycle allows; a ``missed`` goes back to ``pending`` for
        the next bus (published here). A status of a request the backend does not track
        (a stop request on board) is ignored; a bad or stale one is counted.
        """
        if not payload:
            return [], []
        w = self.waits.get(request_id)
        if w is None:
            if request_id in self._final:
                obj = _object(payload, _MAX_STATUS_BYTES)
                if isinstance(obj, dict) and obj.get("state") != self._final[request_id]:
                    self._reject("status", "stale")
            return [], []
        parsed = self._parse_status(request_id, payload)
        if parsed is None:
            return [], []
        state, bus_id, t = parsed
        if state == w.state and (bus_id == w.bus_id or state == "pending"):
            return [], []  # a repeat, or our own message back
        if state not in BUS_STATES:
            if state == "pending" and bus_id is None:
                # our own "pending" (after a missed) came back after a bus had moved the
                # wait on: the retained status must say what the bus said, not pending
                return [
                    Publish(
                        self.topics.request_status(request_id),
                        status_payload(request_id, w.state, w.state_t, w.bus_id),
                        expiry_s=max(1, math.ceil(w.expires_t - now)) + self.rules.status_retain_s,
                    )
                ], []
            self._reject("status", "bad_state")  # only the backend cancels or re-opens a wait
            return [], []
        if bus_id is None or state not in TRANSITIONS[w.state]:
            # a bus names itself; a move the lifecycle does not allow is a late message
            self._reject("status", "bad_bus_id" if bus_id is None else "stale")
            return [], []
        if state in FINAL_STATES:
            # served or expired by a bus: the wait is over (the bus clears nothing: the
            # retained wait is the backend's or the stop unit's; ours is cleared here)
            pubs, changes = self._finish(w, state, now, clear=w.source == "app")
            # keep the bus's own status message (with its bus_id) retained: republish it
            pubs = [p for p in pubs if not p.topic.endswith("/status")]
            return pubs, [StateChange(request_id, state, bus_id, t)]
        w.state, w.bus_id, w.state_t = state, bus_id, t
        changes = [StateChange(request_id, state, bus_id, t, missed=state == "missed")]
        if state != "missed":
            return [], changes
        w.missed += 1
        # back to pending for the next bus (Bells v1)
        w.state, w.bus_id, w.state_t = "pending", None, now
        changes.append(StateChange(request_id, "pending", None, now))
        pub = Publish(
            self.topics.request_status(request_id),
            status_payload(request_id, "pending", now),
            expiry_s=max(1, math.ceil(w.expires_t - now)) + self.rules.status_retain_s,
        )
        return [pub], changes

    def tick(self, now: float) -> tuple[list[Publish], list[StateChange]]:
        """Expire the waits whose lifetime is over (status ``expired``)."""
        pubs: list[Publish] = []
        changes: list[StateChange] = []
        for w in [w for w in self.waits.values() if w.expires_t <= now]:
            p, c = self._finish(w, "expired", w.expires_t, clear=w.source == "app")
            pubs += p
            changes += c
        return pubs, changes

    def live_at(self, route_id: str, stop_id: str) -> Iterable[LiveWait]:
        """The live waits at a stop of a route."""
        return (w for w in self.waits.values() if w.route_id == route_id and w.stop_id == stop_id)
