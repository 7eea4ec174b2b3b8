"""The bell state of one bus (sans-I/O): boarding waits, stop requests, the driver display.

:class:`BellCore` is a plain synchronous class fed timestamped inputs (bus time, seconds):

* :meth:`BellCore.on_wait` -- a message on ``routes/{route}/stops/{stop}/waits/{id}``
  (a Bells v1 wait, or an empty payload that cancels it);
* :meth:`BellCore.on_status` -- a message on ``requests/{id}/status`` of a tracked wait
  (another bus's status, or this bus's own retained one after a restart);
* :meth:`BellCore.on_ack` -- the driver terminal's ``driver/ack``;
* :meth:`BellCore.on_vehicle` -- the :class:`~edge._vehicle.VehicleContext` after each
  vehicle record (trip, map-matched progress, position, doors, stop visits);
* :meth:`BellCore.on_flags` -- an accepted advertisement's flags, with whether the
  classifier holds that rid on board (a bystander's ALIGHT rings nothing);
* :meth:`BellCore.tick` -- the passing of time (expiry, the status grace).

Each returns a list of outputs: :class:`StatusOut` (publish on ``requests/{id}/status``)
and :class:`~edge._bells_record.MissedDraft` (sign and record in the fare chain). The
driver display model v1 is :meth:`BellCore.display`; :attr:`BellCore.version` changes
whenever the model (apart from its ``t``) may have changed. The request lifecycle is the
table in :mod:`edge._bells_table`. Bad input is rejected, counted by ``kind:reason`` in
:attr:`BellCore.rejected` and logged (``bell_input_rejected``); it never raises.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from busbell import (
    MAX_ACK_IDS,
    MAX_BELL_PAYLOAD_BYTES,
    ContractError,
    Feed,
    JsonLimits,
    JsonRejected,
    RejectLog,
    get_logger,
    haversine_m,
    loads_object,
    option,
    validate_driver_ack,
    validate_request_status,
    validate_wait,
)
from edge._bells_record import MissedDraft, PassedStop
from edge._bells_table import LIVE, ReqEvent, ReqState, next_state

__all__ = [
    "FLAG_ALIGHT",
    "FLAG_ASSIST",
    "BellCore",
    "BellOutput",
    "BellParams",
    "StatusOut",
    "VehicleView",
]

log = get_logger("edge.bells")

FLAG_ALIGHT = 0b001
"""Token header flag: ALIGHT_REQUEST (the stop bell)."""
FLAG_ASSIST = 0b010
"""Token header flag: ASSIST (ramp / visual aid)."""
_TOMBSTONE_MAX = 20000
_WAIT_LIMITS = JsonLimits(max_bytes=MAX_BELL_PAYLOAD_BYTES, max_depth=1)
_STATUS_LIMITS = JsonLimits(max_bytes=MAX_BELL_PAYLOAD_BYTES, max_depth=2)
_ACK_LIMITS = JsonLimits(max_bytes=MAX_ACK_IDS * 140 + 64, max_depth=2)
_JSON_REASONS = {"too_large": "oversized", "not_object": "invalid"}
_APPROACH_AHEAD = 3
"""Closest approach is tracked for this many stops from the next one."""


@dataclass(frozen=True, slots=True)
class BellParams:
    """Bell thresholds and timings (the ``[bells]`` config section)."""

    enabled: bool = option(True, doc="Run the bell relay (waits, stop requests, display).")
    horizon_stops: int = option(
        5, doc="Show waits at most this many stops ahead (the next stop always counts)."
    )
    horizon_minutes: float = option(
        10.0, doc="... and only stops the bus reaches within this many minutes (see eta)."
    )
    eta_speed_mps: float = option(
        6.0, doc="Average speed (m/s) for the minutes horizon: distance ahead / this."
    )
    pass_margin_m: float = option(
        80.0,
        doc="A stop counts as passed once the map-matched progress is this far beyond it"
        " and the bus moves with its doors closed.",
    )
    pass_speed_mps: float = option(
        2.0, doc="Least speed (m/s) for a stop to count as passed (a bus still rolling in is not)."
    )
    pass_max_distance_m: float = option(
        150.0,
        doc="A passed stop whose closest approach was farther than this (detour, relocalised"
        " GNSS) is not a missed stop: its waits go back to pending.",
    )
    min_notice_s: float = option(
        20.0,
        doc="A wait shown to the driver less than this long before the closest approach"
        " is not missed when passed (no time to react): it goes back to pending.",
    )
    status_grace_s: float = option(
        1.0,
        doc="A new wait is announced 'seen' once its status arrived or after this long (so a"
        " restarted bus does not overwrite its own 'acknowledged', and the rider API's"
        " 'pending' does not overwrite 'seen').",
    )
    max_waits: int = option(
        5000, doc="Most live waits tracked; further ones are rejected and counted (too_many)."
    )
    coalesce_ms: float = option(
        10.0,
        doc="Display changes within this window after a publish are coalesced into one"
        " (the first change after a quiet window is published at once); at most 100 (the"
        " Bells v1 contract).",
    )
    heartbeat_s: float = option(
        30.0, doc="Republish the display at least this often even when nothing changed."
    )
    tick_s: float = option(0.25, doc="How often expiry and the status grace are evaluated.")

    def __post_init__(self) -> None:
        if self.horizon_stops < 1 or self.horizon_minutes <= 0 or self.eta_speed_mps <= 0:
            raise ValueError("bells: horizon_stops >= 1, horizon_minutes > 0, eta_speed_mps > 0")
        if self.pass_margin_m < 0 or self.pass_max_distance_m <= 0 or self.min_notice_s < 0:
            raise ValueError("bells: pass_margin_m, min_notice_s >= 0, pass_max_distance_m > 0")
        if self.status_grace_s < 0 or self.max_waits < 1:
            raise ValueError("bells: status_grace_s >= 0, max_waits >= 1")
        if not 0 <= self.coalesce_ms <= 100 or not 0 < self.heartbeat_s <= 30:
            raise ValueError("bells: coalesce_ms within [0, 100], heartbeat_s within (0, 30]")
        if self.tick_s <= 0:
            raise ValueError("bells: tick_s > 0")


class _Visit(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def stop_id(self) -> str | None: ...
    @property
    def open_t(self) -> float: ...
    @property
    def stop_index(self) -> int | None: ...


class VehicleView(Protocol):
    """What the bell core reads of :class:`edge._vehicle.VehicleContext`."""

    @property
    def route_id(self) -> str | None: ...
    @property
    def direction_id(self) -> int | None: ...
    @property
    def trip_id(self) -> str | None: ...
    @property
    def stop_ids(self) -> tuple[str, ...]: ...
    @property
    def stop_dist_m(self) -> tuple[float, ...]: ...
    @property
    def progress_m(self) -> float | None: ...
    @property
    def lat(self) -> float | None: ...
    @property
    def lon(self) -> float | None: ...
    @property
    def speed_mps(self) -> float: ...
    @property
    def doors_open(self) -> bool: ...
    @property
    def current_visit(self) -> _Visit | None: ...
    @property
    def visits(self) -> Sequence[_Visit]: ...


@dataclass(frozen=True, slots=True)
class StatusOut:
    """Publish ``{"request_id","state","bus_id","t"}`` on ``requests/{id}/status``."""

    request_id: str
    state: str
    t: float


BellOutput = StatusOut | MissedDraft


@dataclass(slots=True)
class _Req:
    request_id: str
    stop_id: str
    wait: dict[str, Any]
    received_t: float
    state: ReqState = ReqState.PENDING
    status_known: bool = False
    seen_t: float | None = None
    g_state: str | None = None
    """The latest status on the wire (ours or another publisher's)."""
    g_bus: str | None = None


class BellCore:
    """One bus's bell state.

    Args:
        bus_id: this bus (in statuses; its own retained statuses restore state).
        feed: the GTFS static feed (stop names and positions).
        params: thresholds.
    """

    def __init__(self, bus_id: str, feed: Feed, params: BellParams | None = None) -> None:
        self.bus_id = bus_id
        self.feed = feed
        self.params = params or BellParams()
        self.version = 0
        self.tracked_version = 0
        """Changes whenever the set of tracked request ids changes."""
        self._rejects = RejectLog(log, "bell_input_rejected", clock=lambda: self._t)
        self.rejected: dict[str, int] = self._rejects.counts
        """Rejected inputs by ``kind:reason`` (``wait:oversized``, ``ack:unknown_request``)."""
        self.counts: dict[str, int] = {}
        self.route_id: str | None = None
        self.direction_id: int | None = None
        self.trip_id: str | None = None
        self.on_board = 0
        self._stop_ids: tuple[str, ...] = ()
        self._dist: tuple[float, ...] = ()
        self._next = 0
        self._horizon: tuple[int, ...] = ()
        self._reqs: dict[str, _Req] = {}
        self._by_stop: dict[str, set[str]] = {}
        self._expiry: list[tuple[float, str]] = []
        self._ended: dict[str, float] = {}
        self._stop_req: dict[int, set[bytes]] = {}
        self._assist_req: dict[int, set[bytes]] = {}
        self._approach: dict[int, PassedStop] = {}
        self._visit_seq = 0
        self._trip_key: tuple[Any, ...] | None = None
        self._at_stop = False
        self._t = 0.0
        self.clock_synced = True
        """``False`` while the times fed in are the system clock's before the bus's first GNSS
        fix (set by the adapter): a wait that looks expired on that clock is tracked, not
        rejected (counted ``waits_held_unsynced``), and nothing expires until it is ``True``
        again; a clock running fast at boot would otherwise drop waits that are live."""

    # -- bookkeeping ----------------------------------------------------------------------

    def _reject(self, kind: str, reason: str, **kw: Any) -> list[BellOutput]:
        self._rejects.reject(f"{kind}:{reason}", kind=kind, **kw)
        return []

    def _loads(
        self, kind: str, payload: bytes, limits: JsonLimits, **kw: Any
    ) -> dict[str, Any] | None:
        """The bounded parse of an input; ``None`` when rejected (and counted)."""
        try:
            return loads_object(payload, limits)
        except JsonRejected as exc:
            reason = _JSON_REASONS.get(exc.reason, "malformed_json")
            self._reject(kind, reason, json=exc.reason, size=len(payload), **kw)
            return None

    def _count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def _changed(self) -> None:
        self.version += 1

    def tracked(self) -> set[str]:
        """Request ids of the waits tracked now (their status topics are followed)."""
        return set(self._reqs)

    def wait_of(self, request_id: str) -> dict[str, Any] | None:
        """The wait payload of a tracked request, or ``None``."""
        r = self._reqs.get(request_id)
        return None if r is None else r.wait

    def state_of(self, request_id: str) -> ReqState | None:
        """The local state of a tracked wait, or ``None``."""
        r = self._reqs.get(request_id)
        return None if r is None else r.state

    def stop_requested(self) -> dict[str, int]:
        """On-board stop requests and assist requests per stop id (for status)."""
        return {self._stop_ids[i]: len(rids) for i, rids in sorted(self._stop_req.items())}

    def clock_stepped(self, step_s: float) -> None:
        """The bus's clock stepped by ``step_s`` (its first GNSS fix, a confirmed correction).

        The times this core took from that clock (when each wait arrived and was shown,
        each stop's closest approach so far) move with it, so a wait shown before the step
        and a stop passed after it are compared on one time line: the notice a driver had
        stays what it was, whichever way the clock moved.
        """
        if step_s == 0.0:
            return
        for r in self._reqs.values():
            r.received_t += step_s
            if r.seen_t is not None:
                r.seen_t += step_s
        for idx, a in self._approach.items():
            self._approach[idx] = dataclasses.replace(a, t=a.t + step_s)
        self._t += step_s
        self._count("clock_steps")
        log.info("bell_clock_stepped", step_s=round(step_s, 3), requests=len(self._reqs))

    # -- transitions ------------------------------------------------------------------------

    def _move(self, r: _Req, event: ReqEvent, t: float, out: list[BellOutput]) -> ReqState:
        old = r.state
        new = next_state(old, event)
        if new is old:
            return new
        r.state = new
        if new is ReqState.SEEN:
            r.seen_t = t
        log.info(
            "bell_request_moved",
            request_id=r.request_id,
            stop_id=r.stop_id,
            old=old.value,
            new=new.value,
            cause=event.value,
        )
        self._count(new.value)
        if self._may_publish(r, new):
            out.append(StatusOut(r.request_id, new.value, t))
            r.g_state, r.g_bus = new.value, self.bus_id
        if new in (ReqState.SERVED, ReqState.EXPIRED, ReqState.CANCELLED):
            self._forget(r)
        elif (old in LIVE) != (new in LIVE) and self._stop_shown(r.stop_id):
            self._changed()  # shown or not (a state within LIVE does not change the display)
        return new

    def _may_publish(self, r: _Req, new: ReqState) -> bool:
        """Whether this bus's transition goes on the wire without hiding a newer status.

        ``acknowledged``/``served`` are this bus's facts and go out unless the request
        already ended (served, expired, cancelled by someone). ``seen`` and ``missed`` go
        out over nothing, ``pending`` or ``missed`` (or our own status); ``pending``,
        ``expired`` and ``cancelled`` only replace this bus's own live status.
        """
        g, mine = r.g_state, r.g_bus == self.bus_id
        if g in ("served", "expired", "cancelled"):
            return False
        if new in (ReqState.ACKNOWLEDGED, ReqState.SERVED):
            return True
        if new in (ReqState.SEEN, ReqState.MISSED):
            return mine or g in (None, "pending", "missed")
        return mine and g not in (None, "pending")

    def _untrack(self, r: _Req) -> None:
        del self._reqs[r.request_id]
        self.tracked_version += 1
        at = self._by_stop[r.stop_id]
        at.discard(r.request_id)
        if not at:
            del self._by_stop[r.stop_id]
        self._changed()

    def _forget(self, r: _Req) -> None:
        """Untrack an ended request and remember it ended (a re-delivery stays ended)."""
        self._untrack(r)
        if len(self._ended) >= _TOMBSTONE_MAX:
            self._ended.pop(next(iter(self._ended)))
        self._ended[r.request_id] = float(r.wait["expires_t"])

    def _stop_shown(self, stop_id: str) -> bool:
        return any(self._stop_ids[i] == stop_id for i in self._horizon)

    # -- waits ------------------------------------------------------------------------------

    def on_wait(
        self, t: float, route_id: str, stop_id: str, request_id: str, payload: bytes
    ) -> list[BellOutput]:
        """A message on ``routes/{route_id}/stops/{stop_id}/waits/{request_id}``."""
        self._t = max(self._t, t)
        out: list[BellOutput] = []
        if not payload:
            r = self._reqs.get(request_id)
            if r is not None and r.stop_id == stop_id:
                self._move(r, ReqEvent.CANCEL, t, out)
            return out
        w = self._parse_wait(t, route_id, stop_id, request_id, payload)
        if w is None:
            return out
        if request_id in self._ended:
            self._count("wait_ended_again")
            return out
        old = self._reqs.get(request_id)
        if old is not None:
            if old.wait == w:
                return out
            if old.stop_id == stop_id:
                old.wait = w
                heapq.heappush(self._expiry, (float(w["expires_t"]), request_id))
                if self._stop_shown(stop_id):
                    self._changed()
                return out
            # moved to another stop (a rider holds one live wait): start afresh there
            self._untrack(old)
        elif len(self._reqs) >= self.params.max_waits:
            return self._reject("wait", "too_many", request_id=request_id)
        r = _Req(request_id, stop_id, w, t)
        self._reqs[request_id] = r
        self.tracked_version += 1
        self._by_stop.setdefault(stop_id, set()).add(request_id)
        heapq.heappush(self._expiry, (float(w["expires_t"]), request_id))
        self._count("waits_tracked")
        log.info("bell_wait_tracked", request_id=request_id, stop_id=stop_id, source=w["source"])
        if self._stop_shown(stop_id):
            self._changed()
            self._maybe_show(r, t, out)
        elif self._at_stop_index(stop_id) and self._at_stop:
            # the bus stands at the stop with its doors open: the rider boards now
            self._move(r, ReqEvent.DOORS_OPENED, t, out)
        return out

    def _parse_wait(
        self, t: float, route_id: str, stop_id: str, request_id: str, payload: bytes
    ) -> dict[str, Any] | None:
        """The checked wait, or ``None`` (rejected and counted, or another route's)."""
        obj = self._loads("wait", payload, _WAIT_LIMITS, request_id=request_id)
        if obj is None:
            return None
        try:
            w = validate_wait(obj)
        except ContractError as exc:
            self._reject("wait", "invalid", request_id=request_id, error=str(exc)[:200])
            return None
        if (w["route_id"], w["stop_id"], w["request_id"]) != (route_id, stop_id, request_id):
            self._reject("wait", "topic_mismatch", request_id=request_id)
            return None
        if route_id != self.route_id:
            self._count("wait_other_route")
            return None
        if w["expires_t"] <= t:
            if not self.clock_synced:
                self._count("waits_held_unsynced")
                return w
            self._reject("wait", "expired", request_id=request_id)
            return None
        if stop_id not in self.feed.stops:
            self._reject("wait", "unknown_stop", request_id=request_id, stop_id=stop_id)
            return None
        return w

    def _at_stop_index(self, stop_id: str) -> bool:
        i = self._next - 1
        return 0 <= i < len(self._stop_ids) and self._stop_ids[i] == stop_id

    def _maybe_show(self, r: _Req, t: float, out: list[BellOutput]) -> None:
        if r.state is ReqState.PENDING and (
            r.status_known or t - r.received_t >= self.params.status_grace_s
        ):
            self._move(r, ReqEvent.SHOWN, t, out)

    # -- statuses ---------------------------------------------------------------------------

    def on_status(self, t: float, request_id: str, payload: bytes) -> list[BellOutput]:
        """A message on ``requests/{request_id}/status`` (followed for tracked waits)."""
        self._t = max(self._t, t)
        out: list[BellOutput] = []
        r = self._reqs.get(request_id)
        if r is None or not payload:
            return out
        obj = self._loads("status", payload, _STATUS_LIMITS, request_id=request_id)
        if obj is None:
            return out
        try:
            s = validate_request_status(obj)
        except ContractError as exc:
            return self._reject("status", "invalid", request_id=request_id, error=str(exc)[:200])
        if s["request_id"] != request_id:
            return self._reject("status", "topic_mismatch", request_id=request_id)
        state, bus = s["state"], s.get("bus_id")
        first = not r.status_known
        r.status_known = True
        r.g_state, r.g_bus = state, bus
        mine = bus == self.bus_id
        if state in ("served", "expired", "cancelled"):
            if mine:
                # our own end, seen again (echo, or retained after a restart)
                self._forget(r)
            else:
                self._move(r, ReqEvent.CANCEL, t, out)
            return out
        if mine and first and r.state is ReqState.PENDING:
            # restart: take back this bus's own state from its retained status
            restored = {"seen": ReqState.SEEN, "acknowledged": ReqState.ACKNOWLEDGED}
            if state in restored:
                r.state = restored[state]
                r.seen_t = r.received_t
                log.info("bell_request_restored", request_id=request_id, state=state)
                return out
            if state == "missed":
                r.state = ReqState.MISSED
                log.info("bell_request_restored", request_id=request_id, state=state)
                self._changed()
                return out
        if self._stop_shown(r.stop_id):
            self._maybe_show(r, t, out)
        return out

    # -- driver ack -------------------------------------------------------------------------

    def on_ack(self, t: float, payload: bytes) -> list[BellOutput]:
        """The driver terminal's ``{"t","request_ids":[...]}``."""
        self._t = max(self._t, t)
        out: list[BellOutput] = []
        obj = self._loads("ack", payload, _ACK_LIMITS)
        if obj is None:
            return out
        try:
            ack = validate_driver_ack(obj)
        except ContractError as exc:
            return self._reject("ack", "invalid", error=str(exc)[:200])
        for rid in dict.fromkeys(ack["request_ids"]):
            r = self._reqs.get(rid)
            if r is None:
                self._reject("ack", "unknown_request", request_id=rid)
            elif r.state not in LIVE:
                self._reject("ack", "not_live", request_id=rid, state=r.state.value)
            elif not self._stop_shown(r.stop_id):
                self._reject("ack", "not_shown", request_id=rid)
            else:
                self._move(r, ReqEvent.ACK, t, out)
        return out

    # -- stop requests on board ----------------------------------------------------------------

    def on_flags(self, t: float, rid: bytes, flags: int, on_board: bool) -> list[BellOutput]:
        """An accepted advertisement's flags; ``on_board``: the classifier holds the rid."""
        self._t = max(self._t, t)
        want = flags & (FLAG_ALIGHT | FLAG_ASSIST)
        if not want:
            return []
        if not on_board:
            self._count("flags_not_on_board")
            return []
        if self._at_stop:
            self._count("flags_at_stop")
            return []
        if self._next >= len(self._stop_ids):
            self._count("flags_no_next_stop")
            return []
        changed = False
        for bit, table in ((FLAG_ALIGHT, self._stop_req), (FLAG_ASSIST, self._assist_req)):
            if want & bit:
                rids = table.setdefault(self._next, set())
                if rid not in rids:
                    if not rids:
                        changed = True
                        log.info(
                            "stop_requested" if bit == FLAG_ALIGHT else "assist_requested",
                            stop_id=self._stop_ids[self._next],
                            t=t,
                        )
                    rids.add(rid)
        if changed:
            self._changed()
        return []

    def set_on_board(self, n: int) -> None:
        """Riders on board now (from the classifier)."""
        if n != self.on_board:
            self.on_board = n
            self._changed()

    # -- vehicle ----------------------------------------------------------------------------

    def on_vehicle(self, t: float, v: VehicleView) -> list[BellOutput]:
        """The vehicle context after a vehicle record (or an advance of time)."""
        self._t = max(self._t, t)
        out: list[BellOutput] = []
        key = (v.route_id, v.direction_id, v.trip_id, v.stop_ids)
        if key != self._trip_key:
            self._trip_changed(t, v, out)
        for visit in self._new_visits(v.visits):
            idx = self._visit_index(visit)
            if idx is not None:
                self._visited(idx, visit.open_t, v, out)
        at_stop = v.current_visit is not None or v.doors_open
        if at_stop != self._at_stop:
            self._at_stop = at_stop
        self._track_approach(t, v)
        prog = v.progress_m
        if prog is not None and not at_stop and v.speed_mps >= self.params.pass_speed_mps:
            margin = self.params.pass_margin_m
            while self._next < len(self._dist) and prog >= self._dist[self._next] + margin:
                self._passed(self._next, t, v, out)
                self._next += 1
        self._refresh(t, prog, out)
        return out

    def _trip_changed(self, t: float, v: VehicleView, out: list[BellOutput]) -> None:
        old_route = self.route_id
        self._trip_key = (v.route_id, v.direction_id, v.trip_id, v.stop_ids)
        self.route_id, self.direction_id, self.trip_id = v.route_id, v.direction_id, v.trip_id
        self._stop_ids, self._dist = v.stop_ids, v.stop_dist_m
        self._stop_req.clear()
        self._assist_req.clear()
        self._approach.clear()
        self._horizon = ()
        prog = v.progress_m
        self._next = 0
        if prog is not None:
            margin = self.params.pass_margin_m
            while self._next < len(self._dist) and prog >= self._dist[self._next] + margin:
                self._next += 1
        # visits before the sign-on are not this trip's
        if v.visits:
            self._visit_seq = max(self._visit_seq, v.visits[-1].seq)
        if v.current_visit is not None:
            idx = self._visit_index(v.current_visit)
            if idx is not None:
                self._next = max(self._next, idx + 1)
        if old_route != v.route_id:
            for r in list(self._reqs.values()):
                self._untrack(r)
        else:
            for r in list(self._reqs.values()):
                self._move(r, ReqEvent.TRIP_CHANGED, t, out)
        log.info(
            "bell_trip_changed",
            route_id=v.route_id,
            direction_id=v.direction_id,
            trip_id=v.trip_id,
            stops=len(v.stop_ids),
            next_index=self._next,
        )
        self._changed()

    def _new_visits(self, visits: Sequence[_Visit]) -> list[_Visit]:
        new: list[_Visit] = []
        for visit in reversed(visits):
            if visit.seq <= self._visit_seq:
                break
            new.append(visit)
        if new:
            self._visit_seq = new[0].seq
        new.reverse()
        return new

    def _visit_index(self, visit: _Visit) -> int | None:
        """The visit's index in this trip's stops (``None``: no stop of the trip)."""
        ids = self._stop_ids
        i = visit.stop_index
        if i is not None and 0 <= i < len(ids) and ids[i] == visit.stop_id:
            return i
        return None

    def _visited(self, idx: int, t: float, v: VehicleView, out: list[BellOutput]) -> None:
        """A stop visit (doors opened, or a dwell) at stop ``idx``: served."""
        while self._next < idx:
            self._passed(self._next, t, v, out)
            self._next += 1
        stop_id = self._stop_ids[idx]
        for rid in sorted(self._by_stop.get(stop_id, ())):
            self._move(self._reqs[rid], ReqEvent.DOORS_OPENED, t, out)
        if self._stop_req.pop(idx, None):
            log.info("stop_request_served", stop_id=stop_id, t=t)
        self._assist_req.pop(idx, None)
        self._approach.pop(idx, None)
        self._next = max(self._next, idx + 1)
        self._changed()

    def _track_approach(self, t: float, v: VehicleView) -> None:
        lat, lon = v.lat, v.lon
        if lat is None or lon is None:
            return
        stops = self.feed.stops
        for i in range(self._next, min(len(self._stop_ids), self._next + _APPROACH_AHEAD)):
            s = stops[self._stop_ids[i]]
            d = haversine_m(lat, lon, s.lat, s.lon)
            best = self._approach.get(i)
            if best is None or d < best.distance_m:
                self._approach[i] = PassedStop(t, lat, lon, max(0.0, v.speed_mps), d)

    def _passed(self, idx: int, t: float, v: VehicleView, out: list[BellOutput]) -> None:
        """The bus went past stop ``idx`` without a stop visit there."""
        stop_id = self._stop_ids[idx]
        if self._stop_req.pop(idx, None):
            self._count("stop_requests_passed")
            log.warning("stop_request_passed", stop_id=stop_id, t=t)
        self._assist_req.pop(idx, None)
        approach = self._approach.pop(idx, None)
        if approach is None:  # no fix came near it (passed on dead reckoning)
            s = self.feed.stops[stop_id]
            lat = s.lat if v.lat is None else v.lat
            lon = s.lon if v.lon is None else v.lon
            d = haversine_m(lat, lon, s.lat, s.lon)
            approach = PassedStop(t, lat, lon, max(0.0, v.speed_mps), d)
        for rid in sorted(self._by_stop.get(stop_id, ())):
            r = self._reqs[rid]
            if r.state not in (ReqState.SEEN, ReqState.ACKNOWLEDGED):
                continue
            if approach.t >= r.wait["expires_t"]:
                self._move(r, ReqEvent.EXPIRE, t, out)
                continue
            notice = approach.t - (r.seen_t if r.seen_t is not None else approach.t)
            if approach.distance_m > self.params.pass_max_distance_m:
                self._count("missed_suppressed_far")
                log.info("missed_suppressed", request_id=rid, reason="far", stop_id=stop_id)
                self._move(r, ReqEvent.HIDDEN, t, out)
                continue
            if notice < self.params.min_notice_s:
                self._count("missed_suppressed_short_notice")
                log.info("missed_suppressed", request_id=rid, reason="notice", stop_id=stop_id)
                self._move(r, ReqEvent.HIDDEN, t, out)
                continue
            self._move(r, ReqEvent.PASSED, t, out)
            out.append(
                MissedDraft(
                    request_id=rid,
                    route_id=str(self.route_id),
                    trip_id=self.trip_id,
                    stop_id=stop_id,
                    wait=dict(r.wait),
                    passed=approach,
                )
            )
            log.warning("stop_missed", request_id=rid, stop_id=stop_id, t=approach.t)
        self._changed()

    # -- time -------------------------------------------------------------------------------

    def tick(self, t: float) -> list[BellOutput]:
        """Let time pass: expire waits, end the status grace of new ones."""
        self._t = max(self._t, t)
        out: list[BellOutput] = []
        exp = self._expiry
        while exp and exp[0][0] <= t and self.clock_synced:
            expires_t, rid = heapq.heappop(exp)
            r = self._reqs.get(rid)
            if r is not None and r.wait["expires_t"] == expires_t:
                self._move(r, ReqEvent.EXPIRE, t, out)
        if self._ended and len(self._ended) > _TOMBSTONE_MAX // 2:
            for rid in [k for k, e in self._ended.items() if e <= t]:
                del self._ended[rid]
        for r in self._shown_reqs():
            self._maybe_show(r, t, out)
        return out

    def _shown_reqs(self) -> list[_Req]:
        out: list[_Req] = []
        seen_stops: set[str] = set()
        for i in self._horizon:
            sid = self._stop_ids[i]
            if sid in seen_stops:
                continue
            seen_stops.add(sid)
            out.extend(self._reqs[rid] for rid in sorted(self._by_stop.get(sid, ())))
        return out

    def _refresh(self, t: float, prog: float | None, out: list[BellOutput]) -> None:
        """Recompute the stops within the horizon; show waits that came into it."""
        p = self.params
        n = len(self._stop_ids)
        horizon: list[int] = []
        if self._next < n:
            base = prog if prog is not None else self._dist[self._next]
            limit = p.horizon_minutes * 60.0 * p.eta_speed_mps
            for i in range(self._next, min(n, self._next + p.horizon_stops)):
                if horizon and self._dist[i] - base > limit:
                    break
                horizon.append(i)
        new = tuple(horizon)
        if new != self._horizon:
            # stops leave the horizon only by being served or passed (handled there)
            self._horizon = new
            self._changed()
            for r in self._shown_reqs():
                self._maybe_show(r, t, out)

    # -- display ----------------------------------------------------------------------------

    def _stop_model(self, i: int) -> dict[str, Any]:
        sid = self._stop_ids[i]
        stop = self.feed.stops.get(sid)
        ids = sorted(rid for rid in self._by_stop.get(sid, ()) if self._reqs[rid].state in LIVE)
        assist = bool(self._assist_req.get(i)) or any(self._reqs[rid].wait["assist"] for rid in ids)
        return {
            "stop_id": sid,
            "name": stop.name if stop is not None else sid,
            "seq": i + 1,
            "waits": len(ids),
            "assist": assist,
            "stop_requested": bool(self._stop_req.get(i)),
            "request_ids": ids,
        }

    def display(self, t: float, *, online: bool) -> dict[str, Any]:
        """The display model v1 now (``docs/protocol.md``)."""
        stops: list[dict[str, Any]] = []
        shown: set[str] = set()
        for i in self._horizon:
            model = self._stop_model(i)
            if self._stop_ids[i] in shown:
                # a loop route shows a stop twice: its waits count at the first
                model.update(waits=0, request_ids=[], assist=bool(self._assist_req.get(i)))
            shown.add(self._stop_ids[i])
            stops.append(model)
        return {
            "v": 1,
            "bus_id": self.bus_id,
            "t": round(t, 3),
            "route_id": self.route_id,
            "trip_id": self.trip_id,
            "online": online,
            "on_board": self.on_board,
            "next_stop": stops[0] if stops else None,
            "stops": stops,
        }

    def live_waits(self) -> int:
        """Waits tracked in a live state."""
        return sum(1 for r in self._reqs.values() if r.state in LIVE)

    def shown_request_ids(self) -> Iterable[str]:
        """The request ids on the display now."""
        return [r.request_id for r in self._shown_reqs() if r.state in LIVE]
