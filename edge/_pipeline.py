"""The edge pipeline: trace records in, closed rid segments out (sans-I/O, deterministic).

``EdgePipeline.feed`` takes every :data:`busbell.TraceRecord` in time order, live or in
replay: advertisements are checked with the :class:`busbell.TokenVerifier` at the record's
GNSS time and handed to the :class:`~edge._classifier.PresenceClassifier`; GNSS, door and
trip records drive the :class:`~edge._vehicle.VehicleContext`, whose stop visits feed the
classifier. Rejected advertisements are counted by reason and never raise. Bus beacons
(:mod:`busbell._echo`: 6 bytes under the same company id, this bus's own and other buses')
are no tokens: counted in ``beacons_heard`` (``own``/``other``), never rejected, never fed
to the classifier. An
exception inside the classifier or the vehicle context (a bug) is contained to the record
that raised it: counted in ``PipelineStats.errors`` by stage, logged
(``pipeline_record_failed``), and the pipeline goes on with the next record, so one bad
advert never takes the daemon and every ride in progress down with it.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from typing import Any, Final, cast

from busbell import (
    AdvRecord,
    Feed,
    TokenRejected,
    TokenVerifier,
    TraceRecord,
    TripRecord,
    get_logger,
)
from busbell._echo import BEACON_LEN, bus_tag, parse_beacon
from edge._beacon import EchoSeqs, beacon_stop_index
from edge._checkpoint_pickle import CheckpointError, _Unpickler
from edge._classifier import _ECHO_DEFAULTS, _LATER_DEFAULTS, PresenceClassifier, State
from edge._params import ClassifierParams
from edge._segment import SegmentDraft, SegmentEnd
from edge._vehicle import VehicleContext, VehicleEvent

__all__ = ["CheckpointError", "EdgePipeline", "PipelineStats"]

log = get_logger("edge.pipeline")

_TQ_HALF_STEP: Final = 2.0
_BELL_FLAGS: Final = 0b011
"""ALIGHT_REQUEST | ASSIST: the flags the bell relay hears (with whether the rid is on board)."""

FlagListener = Callable[[float, bytes, int, bool], None]


_CHECKPOINT_FORMAT: Final = 3
"""2: candidates carry co-movement evidence (issue 11, sparse tokens); 3: rid records
stored as tuples (:func:`_rid_tuples`)."""
_NOT_SAVED = frozenset({"params", "feed", "verifier", "vehicle", "_grid", "_cache"})
"""Configuration, the GTFS feed and caches of them (the vehicle's stop grid, the payload
memo): rebuilt, never checkpointed, kept by a restore (the same feed and keys). The
classifier's caches of its state are :attr:`PresenceClassifier.STATE_CACHES`: not
checkpointed either, and dropped by a restore."""


_PIPELINE_SAVED = (
    "adverts_seen",
    "adverts_accepted",
    "no_company_id",
    "rejected",
    "beacons_heard",
    "errors",
    "_next_tick",
    "_t",
    "_stopped_t",
)


def _attrs(obj: object) -> dict[str, Any]:
    """An object's instance attributes.

    ``vars``; of a class compiled by mypyc, which has no ``__dict__``, the attributes it
    declares that are set.
    """
    try:
        return vars(obj)
    except TypeError:
        names: tuple[str, ...] = getattr(type(obj), "__mypyc_attrs__", ())
        if not names:
            raise
        return {k: getattr(obj, k) for k in names if hasattr(obj, k)}


def _set_attrs(obj: object, values: dict[str, Any]) -> None:
    """Set attributes by name.

    What ``vars(obj).update(values)`` does, for a class compiled by mypyc too (which checks
    each value's type: a ``TypeError`` for a wrong one).
    """
    for k, v in values.items():
        setattr(obj, k, v)


def _state(obj: object, derived: frozenset[str] = frozenset()) -> dict[str, Any]:
    """An object's data attributes, without configuration, caches and hooks (callables)."""
    return {
        k: v
        for k, v in _attrs(obj).items()
        if k not in _NOT_SAVED and k not in derived and not callable(v)
    }


def _rid_tuples(rows: list[Any], slots: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """The rids' records as plain tuples of their slots (one C call per rid).

    Pickling a tuple costs about half of pickling the slotted object (no slot names, no
    per-object state dict); a segment start (a frozen dataclass, whose pickling runs
    Python code) is stored as its field tuple.
    """
    get = attrgetter(*slots)
    i_start = slots.index("start")
    out: list[tuple[Any, ...]] = list(map(get, rows))
    for i, row in enumerate(out):
        st = row[i_start]
        if st is not None:
            cells = list(row)
            cells[i_start] = (st.t, st.stop_id, st.cause)
            out[i] = tuple(cells)
    return out


def _rid_objects(tuples: Any, cls: Any, slots: tuple[str, ...]) -> list[Any]:
    """Rebuild the rid records of :func:`_rid_tuples` (``slots``: the checkpoint's order).

    The values are set by name, so a checkpoint written with the slots in another order
    (before `_Rid`'s hot fields came first, they were alphabetical) restores the same. A
    checkpoint written before the echo was read has none of its slots: they get the
    values of a rid that has heard no echo (:data:`edge._classifier._ECHO_DEFAULTS`); one
    written before a later field was kept, that field's default
    (:data:`edge._classifier._LATER_DEFAULTS`).
    """
    i_start = slots.index("start")
    missing = [(k, v) for k, v in (_ECHO_DEFAULTS | _LATER_DEFAULTS).items() if k not in slots]
    rows = []
    # (a slotted class: an empty record, not initialised; a class compiled by mypyc has no
    # __slots__ and its __new__ runs __init__: a record initialised, then overwritten)
    bare = "__slots__" in vars(cls)
    for row in tuples:
        if len(row) != len(slots):
            raise ValueError("rid record length")
        r = cls.__new__(cls) if bare else cls(b"", 0, 0.0)
        for name, v in zip(slots, row, strict=True):
            setattr(r, name, v)
        for name, v in missing:
            setattr(r, name, v)
        st = row[i_start]
        if st is not None:
            r.start = SegmentEnd(*st)
        rows.append(r)
    return rows


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """A snapshot of the pipeline's counters.

    Attributes:
        adverts_seen: advertisement records fed.
        adverts_accepted: advertisements that passed the token check.
        rejected: rejected advertisements per :class:`busbell.TokenRejected` reason.
        no_company_id: advertisements without manufacturer data of our company id.
        tokens_in_range: distinct rids heard within the classifier's fade timeout.
        on_board: riders confirmed on board.
        segments: closed segments per end cause.
        errors: records (or per-rid tick steps) whose processing raised, per stage
            (``advert``, ``vehicle``, ``tick``, ``finish``); contained, logged, skipped.
        beacons_heard: bus beacons heard, ``own`` (this bus's tag) and ``other``; never
            counted as rejects, never fed to the classifier.
    """

    adverts_seen: int
    adverts_accepted: int
    rejected: dict[str, int]
    no_company_id: int
    tokens_in_range: int
    on_board: int
    segments: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    beacons_heard: dict[str, int] = field(default_factory=dict)


class EdgePipeline:
    """One bus's pipeline from trace records to :class:`~edge._segment.SegmentDraft`.

    Args:
        bus_id: the bus: for logs, and its beacon tag (:func:`busbell._echo.bus_tag`), which
            tokens' echoes (payload byte 23) are read against.
        feed: the GTFS static feed.
        verifier: the bus's offline token check (holds the fleet keys and tq window).
        params: classifier and vehicle thresholds.
    """

    def __init__(
        self,
        bus_id: str,
        feed: Feed,
        verifier: TokenVerifier,
        params: ClassifierParams | None = None,
    ) -> None:
        self.bus_id = bus_id
        self.params = p = params or ClassifierParams()
        self.verifier = verifier
        self.vehicle = VehicleContext(feed, p)
        self._own_tag = bus_tag(bus_id)
        self.classifier = PresenceClassifier(p, self._own_tag)
        self.classifier.stop_index_now = partial(beacon_stop_index, self.vehicle)
        self.classifier.echo_ambiguous = EchoSeqs(feed, self.vehicle, reach_m=p.echo_reach_m)
        self.adverts_seen = 0
        self.adverts_accepted = 0
        self.no_company_id = 0
        self.rejected: dict[str, int] = {}
        self.beacons_heard = {"own": 0, "other": 0}
        self.errors: dict[str, int] = {}
        self._cid = p.company_id
        self._cache: dict[bytes, tuple[bytes, int, float, int, int]] = {}
        """Accepted payloads: :meth:`busbell.TokenVerifier.accept`'s result by raw bytes."""
        self._cache_size = p.verify_cache_size
        self._next_tick = float("-inf")
        self._tick_s = p.tick_s
        self._t = float("-inf")
        self._finished = False
        self._resume_pending = False
        self._resume_first = False
        self._stopped_t: float | None = None
        """When a clean stop mid-trip left the open presences in the checkpoint (the last
        record's time); ``None``: no such stop, or its restart decided already."""
        self.flag_listener: FlagListener | None = None
        """Called ``(t, rid, flags, on_board)`` for each accepted advert with ALIGHT/ASSIST."""

    @property
    def t(self) -> float:
        """The time of the latest record fed (``-inf`` before the first)."""
        return self._t

    # -- checkpoint ---------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The pipeline's state (open presences, vehicle context, counters) as bytes.

        What the daemon stores so that a restart (a crash, a power cut) loses no ride
        under way: restore it into a pipeline built with the same feed and parameters.
        Configuration, the GTFS feed and caches are not included.

        It runs on the daemon's event loop (a snapshot is recorded in the same
        transaction as the segments a tick closed, so it must be of that very state), so
        it is built for speed: each rid's record is stored as a plain tuple
        (:func:`_rid_tuples`), not as a pickled slotted object, which halves its cost
        with thousands of tokens in range (``benchmarks/edge_checkpoint.py``).
        """
        from edge._classifier import _RID_SLOTS  # the slots signature guards against old code

        cls = self.classifier
        rows = list(cls._rids.values())
        index = {id(r): i for i, r in enumerate(rows)}
        for r in [o for o, _, _ in cls._olds.values()] + list(cls._pending.values()):
            if id(r) not in index:  # held by the rotation pool only (forgotten meanwhile)
                index[id(r)] = len(rows)
                rows.append(r)
        saved = _state(cls, cls.DERIVED | cls.STATE_CACHES)
        saved["_rids"] = len(cls._rids)  # the first rows, in order
        saved["_olds"] = {o: (index[id(r)], k, v) for o, (r, k, v) in cls._olds.items()}
        saved["_pending"] = {n: index[id(r)] for n, r in cls._pending.items()}
        state = {
            "format": _CHECKPOINT_FORMAT,
            "rid_slots": list(_RID_SLOTS),
            "pipeline": {k: getattr(self, k) for k in _PIPELINE_SAVED},
            "vehicle": _state(self.vehicle),
            "classifier": saved,
            "rid_records": _rid_tuples(rows, _RID_SLOTS),
        }
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, blob: bytes) -> None:
        """Resume from :meth:`snapshot` bytes (of this code version).

        Riders on board stay on board: the time the pipeline was down does not count
        towards their fade (the first record after the restore starts a grace period of
        ``fade_timeout_s``, if it comes more than ``resume_gap_s`` after the last record
        the checkpoint saw; within that, nothing was missed, and the pipeline goes on
        exactly as if it had not stopped). A checkpoint saved by a clean stop mid-trip
        (:meth:`stop_mid_trip`) is judged by the first record after the stop: more than
        ``stop_resume_max_s`` later, its open presences are closed as of the stop
        (:meth:`_close_stopped`).

        Raises:
            CheckpointError: a checkpoint of another format or code version, or corrupt;
                the pipeline is left as it was.
        """
        from edge._classifier import _RID_SLOTS, _Rid

        try:
            state = _Unpickler(io.BytesIO(blob)).load()
        except CheckpointError:
            raise
        except Exception as exc:  # any unpickling failure: not restorable
            raise CheckpointError(f"checkpoint unreadable: {type(exc).__name__}: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
            raise CheckpointError("checkpoint of another format")
        saved_slots = state.get("rid_slots")
        if not (
            isinstance(saved_slots, list)
            and all(type(name) is str for name in saved_slots)
            and sorted(saved_slots)
            in [
                sorted(set(_RID_SLOTS) - echo - later)
                # (before the echo; before the stretch's latest advert)
                for echo in (set[str](), _ECHO_DEFAULTS.keys(), {"eo_t1"})
                # (before the rotation pool's level; before the echo's collision guard: each
                # later field is newer than the one before it)
                for later in (
                    set(list(_LATER_DEFAULTS)[i:]) for i in range(len(_LATER_DEFAULTS) + 1)
                )
            ]
        ):  # (the same fields in any order: their values are set by name)
            raise CheckpointError("checkpoint of another classifier version")
        pipe, veh, cls = state.get("pipeline"), state.get("vehicle"), state.get("classifier")
        if not (isinstance(pipe, dict) and isinstance(veh, dict) and isinstance(cls, dict)):
            raise CheckpointError("checkpoint incomplete")
        try:
            rows = _rid_objects(state["rid_records"], _Rid, tuple(saved_slots))
            n_live = cls["_rids"]
            cls["_rids"] = {r.rid: r for r in rows[:n_live]}
            cls["_olds"] = {o: (rows[i], k, v) for o, (i, k, v) in cls["_olds"].items()}
            cls["_pending"] = {n: rows[i] for n, i in cls["_pending"].items()}
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint rids unreadable: {type(exc).__name__}") from None
        try:  # (compiled by mypyc, the classifier checks each value's type: on a blank one first)
            _set_attrs(type(self.classifier)(self.classifier.params), cls)
        except (TypeError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint state unreadable: {type(exc).__name__}") from None
        _set_attrs(self.vehicle, veh)
        _set_attrs(self.classifier, cls)
        self.classifier.drop_caches()  # (of the state before)
        self._stopped_t = None  # (a checkpoint from before it was saved: no clean stop)
        _set_attrs(self, {k: v for k, v in pipe.items() if k in _PIPELINE_SAVED})
        self._finished = False
        self._resume_pending = self._resume_first = True

    # -- read-only state --------------------------------------------------------------

    @property
    def stats(self) -> PipelineStats:
        """The counters, as a snapshot."""
        return PipelineStats(
            adverts_seen=self.adverts_seen,
            adverts_accepted=self.adverts_accepted,
            rejected=dict(sorted(self.rejected.items())),
            no_company_id=self.no_company_id,
            tokens_in_range=self.classifier.tokens_in_range(),
            on_board=self.classifier.on_board(),
            segments=dict(sorted(self.classifier.closed.items())),
            errors=self._errors(),
            beacons_heard=dict(self.beacons_heard),
        )

    def _errors(self) -> dict[str, int]:
        out = dict(self.errors)
        for stage, n in self.classifier.errors.items():
            out[stage] = out.get(stage, 0) + n
        return dict(sorted(out.items()))

    def _failed(self, stage: str, rec: TraceRecord | None, exc: Exception) -> None:
        """Count and log a contained failure (every one of the first 10, then 1 in 1000)."""
        n = self.errors[stage] = self.errors.get(stage, 0) + 1
        if n <= 10 or n % 1000 == 0:
            log.error(
                "pipeline_record_failed",
                bus_id=self.bus_id,
                stage=stage,
                t=None if rec is None else rec.t,
                kind=None if rec is None else type(rec).__name__,
                count=n,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )

    def fleet_keys_changed(self, days: Iterable[int]) -> None:
        """These days' fleet keys were replaced (a key bundle): forget what the old ones made.

        The verifier's derived ``bk`` values and the payload memo's entries of those days
        go, so that from the next advert on only the new keys verify.
        """
        gone = set(days)
        if not gone:
            return
        self.verifier.forget_days(gone)
        for payload in [p for p, hit in self._cache.items() if hit[4] in gone]:
            del self._cache[payload]

    def on_board(self) -> int:
        """Riders currently confirmed on board."""
        return self.classifier.on_board()

    @property
    def stopped_t(self) -> float | None:
        """When a clean stop mid-trip kept the open presences, until the restart decides."""
        return self._stopped_t

    def stop_mid_trip(self) -> None:
        """A clean stop mid-trip: the open presences are kept for the restart.

        The checkpoint saved next says so (:meth:`restore`, ``stop_resume_max_s``).
        """
        self._stopped_t = self._t

    @property
    def mid_trip(self) -> bool:
        """Whether a trip is under way: its stops known, its last stop not served yet."""
        v = self.vehicle
        return bool(v.stop_ids) and v.last_served_index < len(v.stop_ids) - 1

    def active_flags(self) -> dict[str, int]:
        """Riders signalling now: ``alight_request`` and ``assist`` on board, ``wait`` outside."""
        return self.classifier.active_flags()

    # -- input ------------------------------------------------------------------------

    def feed(self, rec: TraceRecord) -> list[SegmentDraft]:
        """Process one record; returns the segments it closed (usually none)."""
        t = rec.t
        if self._resume_pending:  # after a restore: its first record; a clean stop's restart
            closed = self._resuming(t)
            if closed:
                closed.extend(self.feed(rec))
                return closed
        if t > self._t:  # noqa: PLR1730 - cheaper than max() on the hot path
            self._t = t
        if type(rec) is AdvRecord:
            self.adverts_seen += 1
            # (the values read as objects, Any: a bytearray payload is taken as bytes below,
            # also when compiled by mypyc, which checked a value read from a dict[int, bytes]
            # and raised TypeError for a bytearray before this line)
            payload: Any = cast("dict[int, object]", rec.mfr).get(self._cid)
            if payload is None:
                self.no_company_id += 1
            else:
                try:  # zero-cost unless it raises
                    # (inline, not a method: this runs for every advert)
                    if type(payload) is not bytes:
                        payload = bytes(payload)
                    hit = self._cache.get(payload)
                    # ("not within", so that a NaN time misses the memo as verify rejects it)
                    if hit is None or not (
                        abs(hit[2] + _TQ_HALF_STEP - t) <= self.verifier.window_s + _TQ_HALF_STEP
                    ):
                        hit = self._verify(payload, t)
                    if hit is not None:
                        self.adverts_accepted += 1
                        rid, interval, token_t, flags, _ = hit
                        self.classifier.advert(
                            t, rid, interval, token_t, rec.rssi, flags, payload,
                            self.vehicle.odometer_m, rec.addr, payload[23],
                        )  # fmt: skip
                        if flags & _BELL_FLAGS and self.flag_listener is not None:
                            on = self.classifier.state_of(rid) is State.ONBOARD
                            self.flag_listener(t, rid, flags, on)
                except Exception as exc:
                    self._failed("advert", rec, exc)
            if t >= self._next_tick:
                return self._tick(t)
            return []
        try:
            events = self.vehicle.feed_record(rec)  # type: ignore[arg-type]
            if type(rec) is TripRecord:  # (the vehicle's: a repeated message changes nothing)
                self.classifier.on_trip(self.vehicle.route_id, self.vehicle.trip_id)
            self._apply(events)
        except Exception as exc:
            self._failed("vehicle", rec, exc)
        return self._tick(t)

    def _resuming(self, t: float) -> list[SegmentDraft]:
        """A record at ``t`` after a restore: the resume; after a clean stop, the decision.

        The first record later than the checkpoint's last starts the classifier's resume
        (:meth:`restore`; a retained message delivered again at the restart carries its
        old time: before, it started the resume at that time, so a restart after minutes
        down gave the riders aboard no grace and they faded at once). After a clean
        stop mid-trip, the first record later than the stop (a retained trip message
        redelivered at the restart carries its old time) decides: within
        ``stop_resume_max_s`` of the stop, the open presences go on (logged
        ``stopped_trip_resumed``); later, they are closed as of the stop
        (:meth:`_close_stopped`, logged ``stopped_trip_closed``), returned.
        """
        stopped = self._stopped_t
        out: list[SegmentDraft] = []
        if stopped is not None and t > stopped:
            self._stopped_t = None
            down = t - stopped
            if down > self.params.stop_resume_max_s:
                out = self._close_stopped(stopped, down)
            else:
                log.info(
                    "stopped_trip_resumed",
                    bus_id=self.bus_id,
                    stopped_t=stopped,
                    t=t,
                    down_s=round(down, 3),
                    on_board=self.classifier.on_board(),
                    trip_id=self.vehicle.trip_id,
                )
        if self._resume_first and t > self._t:
            self._resume_first = False
            self.classifier.resume(t)
        self._resume_pending = self._resume_first or self._stopped_t is not None
        return out

    def _close_stopped(self, stopped: float, down: float) -> list[SegmentDraft]:
        """Close every open presence as of a clean stop mid-trip; end the trip.

        Restarted ``down`` s after the stop, past ``stop_resume_max_s``: the bus was
        switched off or its driver signed off, and the riders aboard then left it where it
        stood. They are closed as :meth:`PresenceClassifier.finish` closes them at the
        stop's time: a rid heard aboard at the stop whose doors stood open then alighted
        there; a stop's doors just closed, the bus not moved, is where the fade rules end
        them too; between stops, the fade rules decide (``lost`` at the last stop seen, but
        a rider who faded at a stop). Each carries ``evidence.end_by`` ``stopped``. The trip
        ends (:meth:`VehicleContext.end_trip`): nothing is mid-trip until the next sign-on.
        """
        v = self.vehicle
        stood = v.current_visit
        on_board = self.classifier.on_board()
        trip_id = v.trip_id
        out: list[SegmentDraft] = []
        try:
            out = self.classifier.finish(stopped, v.odometer_m)
        except Exception as exc:
            self._failed("finish", None, exc)
        for d in out:
            d.evidence["end_by"] = "stopped"
        try:
            self._apply(v.end_trip(stopped))
        except Exception as exc:
            self._failed("vehicle", None, exc)
        self.classifier.on_trip(None, None)
        log.info(
            "stopped_trip_closed",
            bus_id=self.bus_id,
            stopped_t=stopped,
            down_s=round(down, 3),
            on_board=on_board,
            segments=len(out),
            stop_id=None if stood is None else stood.stop_id,
            trip_id=trip_id,
        )
        return out

    def _verify(self, payload: bytes, t: float) -> tuple[bytes, int, float, int, int] | None:
        """A payload the memo does not hold (or holds for another time): check and memoise.

        A bus beacon (never memoised) is counted in ``beacons_heard``, not rejected.
        """
        if len(payload) == BEACON_LEN:  # (a token is 24 bytes)
            beacon = parse_beacon(payload)
            if beacon is not None:
                self.beacons_heard["own" if beacon.tag == self._own_tag else "other"] += 1
                return None
        try:
            hit = self.verifier.accept(payload, t)
        except TokenRejected as exc:
            self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
            return None
        if self._cache_size:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[payload] = hit
        return hit

    def _apply(self, events: list[VehicleEvent]) -> None:
        for ev in events:
            self.classifier.on_visit(ev.kind, ev.visit, self._t)

    def _tick(self, t: float) -> list[SegmentDraft]:
        if t < self._next_tick:
            return []
        self._next_tick = t + self._tick_s
        try:
            self._apply(self.vehicle.advance(t))
        except Exception as exc:
            self._failed("vehicle", None, exc)
        try:
            return self.classifier.tick(t, self.vehicle.odometer_m)
        except Exception as exc:
            # inside the classifier; this is what is left: the pairing pass)
            self._failed("tick", None, exc)
            return []

    def finish(self, t: float) -> list[SegmentDraft]:
        """Close everything at the end of a replay or on shutdown.

        Pending fades and confirmations are evaluated at ``t`` first; then every rid still
        on board is closed: ``alighted`` at the current stop if the bus stands at one with
        its doors open, otherwise by the fade rules (``lost`` at the last stop it was seen
        on board after, ``alighted`` if it had faded at a stop). Unconfirmed candidates
        are dropped. Further calls return nothing.
        """
        if self._finished:
            return []
        self._finished = True
        t = max(t, self._t)
        self._next_tick = float("-inf")
        out = self._tick(t)
        try:
            out.extend(self.classifier.finish(t, self.vehicle.odometer_m))
        except Exception as exc:
            self._failed("finish", None, exc)
        log.info(
            "edge_pipeline_finished",
            bus_id=self.bus_id,
            adverts=self.adverts_seen,
            accepted=self.adverts_accepted,
            segments=len(out),
        )
        return out
