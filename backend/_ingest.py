"""Verified fare ingest: decode, verify, chain-check, store idempotently, then ack.

Three layers:

* :class:`IngestCore` (no I/O): decodes one MQTT payload (a batch
  ``{"bus_id": ..., "events": [...]}``, a bare event object, or a JSON array of events)
  into verified events and rejections (schema, bus mismatch, unknown/revoked device,
  bad signature), plans the chain steps of a batch's buses from their committed chain
  positions, held records and gaps (:meth:`IngestCore.planner`, the one chain core of
  :mod:`backend._chain`, which offline ``busbell backend settle`` drives too): which
  events to store, which are duplicates, which conflict, which are held (out of order,
  bounded), and times a gap's re-send requests and report
  (:meth:`IngestCore.gap_step`). It keeps no per-bus state between calls.
* :class:`Ingestor`: the core plus the ledger (SQLAlchemy async). One transaction per
  batch of messages: the buses' chain rows are read ``FOR UPDATE`` (PostgreSQL; SQLite
  takes the write lock with ``BEGIN IMMEDIATE``) with their held records
  (``fare_pending``) and open gap, so any worker can take any batch: acks, held
  records and re-send requests are decided from committed rows, never from one
  worker's memory. Events are inserted with ``ON CONFLICT DO NOTHING``; due gaps are
  claimed by whichever worker sweeps first (:meth:`Ingestor.tick`).
* :class:`IngestWorker`: the MQTT adapter (subscribe, batch, publish the cumulative
  ``fares/ack`` only after commit, ``fares/resend`` for gaps, reconnect with backoff).
  :func:`run_ingest` runs it from a :class:`~backend.config.BackendConfig`.

The invariants are described in ``docs/backend-ingest.md``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import gc
import hashlib
import os
import socket
import time
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from backend._chain import BusPlan, ChainPlanner, ChainPosition, Gap, Rejection, past_seqs
from backend._db import (
    DB_ERRORS,
    chain_state,
    engine_for,
    fare_events,
    fare_pending,
    ingest_workers,
    insert_ignore,
    is_postgres,
    migrate,
    missed_stops,
    quarantine,
)
from backend._errors import REJECTION_REASONS, MalformedMessage
from backend._ingest_bounds import LogBudget, QuarantineBudget
from backend._keys import DeviceInfo, import_devices, load_devices
from backend._record_check import RecordFault, Verify, check_record, decide_runs, signature_fault
from backend.config import BackendConfig
from busbell import (
    BIGINT_MAX,
    GENESIS_PREV,
    BusbellError,
    ConfigError,
    ContractError,
    JsonLimits,
    JsonRejected,
    StoreError,
    Topics,
    UplinkError,
    canonical_bytes,
    get_logger,
    loads_bounded,
    sha256_hex,
)
from busbell._fare_types import (
    MISSED_COLUMNS,
    SEGMENT_COLUMNS,
    FareEvent,
    MissedRecord,
    convert_event,
    decode_batch,
    decode_event,
)
from busbell._mqtt import MqttSession, ReconnectLoop, SessionChange

__all__ = [
    "QUARANTINE_REASONS",
    "BatchResult",
    "BusPlan",
    "ChainPosition",
    "Gap",
    "GapAction",
    "IngestCore",
    "IngestWorker",
    "Ingestor",
    "Prepared",
    "Rejection",
    "VerifiedEvent",
    "run_ingest",
]


def _log() -> Any:
    # Looked up per use: busbell.get_logger binds at call time, so a module-level
    # logger would miss configure_logging() and structlog.testing.capture_logs().
    return get_logger("backend.ingest")


QUARANTINE_REASONS = REJECTION_REASONS
"""Why an event (or payload) went to the ``quarantine`` table."""

EVENTS_STORED = Counter("busbell_fare_events_stored", "Fare events verified and committed")
EVENTS_DUPLICATE = Counter(
    "busbell_fare_events_duplicate", "Fare events received again (idempotent no-ops, acked)"
)
EVENTS_QUARANTINED = Counter(
    "busbell_fare_events_quarantined", "Fare events or payloads quarantined", ["reason"]
)
EVENTS_HELD_DROPPED = Counter(
    "busbell_fare_events_held_dropped", "Out-of-order events dropped over the per-bus bound"
)
MESSAGES_RECEIVED = Counter("busbell_fare_messages", "MQTT messages on fares topics")
MESSAGES_MALFORMED = Counter(
    "busbell_fare_messages_malformed", "Unusable MQTT payloads on fares topics", ["reason"]
)
ACKS_PUBLISHED = Counter("busbell_fare_acks_published", "fares/ack messages published")
RESENDS_REQUESTED = Counter("busbell_fare_resends_requested", "fares/resend requests published")
QUARANTINE_NOT_STORED = Counter(
    "busbell_fare_quarantine_not_stored",
    "Rejections counted but not stored (over the per-message or per-bus budget)",
    ["reason"],
)
QUARANTINE_STORE_ERRORS = Counter(
    "busbell_fare_quarantine_store_errors", "Failed quarantine transactions (rows lost)"
)
MESSAGES_IGNORED = Counter(
    "busbell_fare_messages_ignored", "MQTT messages on fares topics ignored", ["reason"]
)
GAPS_UNFILLED = Counter(
    "busbell_fare_gaps_unfilled",
    "Chain gaps given up on after the last re-send request (operators must look)",
)
STORE_ERRORS = Counter("busbell_fare_store_errors", "Failed ingest transactions (retried by edges)")
SIGNATURES_PUT_OFF = Counter(
    "busbell_fare_signatures_put_off",
    "Events below their bus's chain head on arrival, signature check put off (re-sent copies)",
)
SIGNATURES_VERIFIED = Counter(
    "busbell_fare_signatures_verified",
    "Ed25519 signatures verified (with [ingest] verify = runs, about one per hash-linked run)",
)
VERIFY_MODES: tuple[Verify, ...] = ("runs", "every")

_MAX_RAW = 65536


@dataclass(slots=True)
class VerifiedEvent:  # not frozen: one is made per event, and frozen __init__ is slow
    """A chain record whose schema and signature verified (chain not checked yet).

    Attributes:
        bus_id: the bus.
        seq: its sequence number.
        record: the typed record (:data:`busbell._fare_types.FareEvent`).
        raw: its canonical JSON, ``sig`` included (what is stored).
        hash: hex SHA-256 of ``raw`` (the next event's ``prev``).
    """

    bus_id: str
    seq: int
    record: FareEvent
    raw: str
    hash: str
    arrival: int = 0
    """Its order of arrival among its bus's held records (``fare_pending.arrival``)."""
    signed: bool = True
    """Whether its signature was verified. ``False``: below its bus's committed chain
    head when it arrived (a re-sent copy, most likely), so the check was put off: a copy
    whose hash equals the stored record's is byte-identical to a record verified when it
    was committed; anything else is verified before it is judged
    (:meth:`IngestCore.check_signature`)."""

    @property
    def missed(self) -> bool:
        """Whether it is a ``missed`` record (stored in ``missed_stops``, never a ride)."""
        return self.record.missed

    @property
    def prev(self) -> str:
        """Its ``prev``."""
        return self.record.prev

    @property
    def event_id(self) -> str:
        """Its ``event_id``."""
        return self.record.event_id


Held = dict[int, dict[str, VerifiedEvent]]
"""Records above a bus's chain head: seq -> event hash -> record."""


@dataclass(frozen=True, slots=True)
class GapAction:
    """What :meth:`IngestCore.gap_step` decided for a gap that is due.

    Attributes:
        gap: the gap's new bookkeeping.
        resend: ``(from_seq, to_seq)`` to request on ``fares/resend``, or ``None``.
        report: the gap is given up on: report it once (``fare_gap_unfilled``).
    """

    gap: Gap
    resend: tuple[int, int] | None = None
    report: bool = False


def _raw_text(payload: bytes) -> str:
    return payload[:_MAX_RAW].decode("utf-8", errors="replace")


class IngestCore:
    """Sans-I/O ingest logic: decoding, verification, per-bus chain planning, gap timing.

    Stateless between calls (apart from the device registry): a bus's chain position,
    held records and gap come in from the committed rows and go back out in the plan,
    so any worker can take any batch.

    Args:
        devices: the device registry (``bus_id -> DeviceInfo``); see :meth:`set_devices`.
        max_held_per_bus: bound on out-of-order records held per bus.
        resend_after_s: how long a gap must persist before a re-send is requested
            (the grace), and the first backoff step.
        max_payload_bytes: larger payloads are malformed (``too_large``).
        max_nesting: payloads nesting arrays/objects deeper are malformed
            (``too_deep``), checked before parsing.
        max_events_per_message: messages with more events are malformed
            (``too_many_events``).
        resend_max_s: the longest wait between two re-send requests for one gap.
        resend_max_attempts: re-send requests for one gap before it is reported
            (:attr:`GapAction.report`) and no longer re-asked.
        verify: ``runs`` (the default): the signatures of a transaction's records are
            decided one per hash-linked run (:meth:`verify_runs`, the decision offline
            settle makes); ``every``: each record's own (:meth:`verify_each`, or in
            :meth:`decode` when it is given no list to put them off to).
    """

    def __init__(
        self,
        devices: Mapping[str, DeviceInfo] | None = None,
        *,
        max_held_per_bus: int = 2000,
        resend_after_s: float = 1.0,
        max_payload_bytes: int = 4 * 1024 * 1024,
        max_nesting: int = 32,
        max_events_per_message: int = 2000,
        resend_max_s: float = 60.0,
        resend_max_attempts: int = 8,
        verify: Verify = "runs",
    ) -> None:
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be runs or every, got {verify!r}")
        self.verify: Verify = verify
        self._devices: Mapping[str, DeviceInfo] = dict(devices or {})
        self.max_held_per_bus = max_held_per_bus
        self.resend_after_s = resend_after_s
        self.max_payload_bytes = max_payload_bytes
        self.max_nesting = max_nesting
        self._limits = JsonLimits(max_bytes=max_payload_bytes, max_depth=max_nesting)
        self.max_events_per_message = max_events_per_message
        self.resend_max_s = resend_max_s
        self.resend_max_attempts = resend_max_attempts

    def set_devices(self, devices: Mapping[str, DeviceInfo]) -> None:
        """Replace the device registry (after a refresh or a revocation)."""
        self._devices = dict(devices)

    # -- decoding ---------------------------------------------------------------------

    def decode(
        self,
        bus_id: str,
        payload: bytes,
        *,
        below: int = 0,
        put_off: list[VerifiedEvent] | None = None,
    ) -> tuple[list[VerifiedEvent], list[Rejection]]:
        """Decode and verify one payload received on ``buses/{bus_id}/fares``.

        Records with a seq under ``below`` (the bus's committed chain head as last seen:
        re-sent copies) are checked in full except for the Ed25519 signature, which is put
        off (:attr:`VerifiedEvent.signed`): the plan verifies them only when they turn out
        not to be byte-identical to the stored record.

        With ``put_off`` (a list), the signature of every other record is put off too,
        and the record appended to it: :meth:`verify_put_off` decides them together
        once the transaction's messages are decoded, one signature per hash-linked run
        (``verify = "runs"``) or each record's own (``every``). Without it each one's own
        signature is verified here.

        A batch or array whose records all check is parsed straight into the typed
        records (:func:`busbell._fare_types.decode_batch`); anything else takes the
        general path (bounded parse, then each item on its own), which decides every
        rejection and its reason.

        Returns:
            The verified events and the rejected ones.

        Raises:
            MalformedMessage: when the payload as a whole is unusable (not JSON, not a
                batch/event/array, too large, or a batch naming another bus).
        """
        fast = (
            decode_batch(payload)
            if len(payload) <= self.max_payload_bytes and self.max_nesting >= _FAST_DEPTH
            else None
        )
        if fast is not None:
            batch_bus, records = fast
            if batch_bus is not None and batch_bus != bus_id:
                raise MalformedMessage(
                    f"batch bus_id {batch_bus!r} on the topic of {bus_id!r}",
                    field="bus_id",
                    reason="bus_mismatch",
                )
            self._check_count(len(records))
            ok: list[VerifiedEvent] = []
            bad: list[Rejection] = []
            dev = self._devices.get(bus_id)
            every = put_off is None
            for rec in records:
                copy = rec.seq < below
                result = self._verify(bus_id, rec, dev, every and not copy, copy)
                if isinstance(result, VerifiedEvent):
                    ok.append(result)
                    if put_off is not None and not copy:
                        put_off.append(result)
                else:
                    bad.append(result)
            if every:
                _count_verified(ok, bad)
            return ok, bad
        return self._decode_general(bus_id, payload, below, put_off)

    def _check_count(self, n: int) -> None:
        if n > self.max_events_per_message:
            raise MalformedMessage(
                f"{n} events in one message, over {self.max_events_per_message}",
                reason="too_many_events",
            )

    def _decode_general(
        self, bus_id: str, payload: bytes, below: int, put_off: list[VerifiedEvent] | None
    ) -> tuple[list[VerifiedEvent], list[Rejection]]:
        try:
            obj = loads_bounded(payload, self._limits)
        except JsonRejected as exc:
            raise MalformedMessage(str(exc), reason=exc.reason) from None
        items: list[object]
        if isinstance(obj, list):
            items = obj
        elif isinstance(obj, dict) and "events" in obj:
            if obj.get("bus_id", bus_id) != bus_id:
                raise MalformedMessage(
                    f"batch bus_id {obj.get('bus_id')!r} on the topic of {bus_id!r}",
                    field="bus_id",
                    reason="bus_mismatch",
                )
            if not isinstance(obj["events"], list):
                raise MalformedMessage("batch events must be an array", reason="bad_batch")
            items = obj["events"]
        elif isinstance(obj, dict):
            items = [obj]
        else:
            raise MalformedMessage(
                "payload must be a batch object, an event or an array", reason="not_an_object"
            )
        self._check_count(len(items))
        ok: list[VerifiedEvent] = []
        bad: list[Rejection] = []
        for item in items:
            try:
                rec = convert_event(item)
            except ContractError as exc:
                got = item if isinstance(item, dict) else {}
                bad.append(
                    Rejection(
                        "schema",
                        str(exc),
                        _raw_json(item),
                        bus_id,
                        _int_or_none(got.get("seq")),
                        _str_or_none(got.get("event_id")),
                    )
                )
                continue
            copy = rec.seq < below
            dev = self._devices.get(bus_id)
            result = self._verify(bus_id, rec, dev, put_off is None and not copy, copy)
            if isinstance(result, Rejection):
                bad.append(result)
            else:
                ok.append(result)
                if put_off is not None and not copy:
                    put_off.append(result)
        if put_off is None:
            _count_verified(ok, bad)
        return ok, bad

    @staticmethod
    def _verify(
        bus_id: str, rec: FareEvent, dev: DeviceInfo | None, sign: bool = True, copy: bool = False
    ) -> VerifiedEvent | Rejection:
        """Check one typed record against its topic's bus and ``dev`` (its registry entry).

        :func:`backend._record_check.check_record` (the checks offline settle runs too),
        with online's topic and revocation; ``sign=False``: all but the signature (see
        :meth:`decode`'s ``below`` and ``runs``; ``copy``: put off as a re-sent copy).
        """
        full = check_record(
            rec,
            None if dev is None else dev.public,
            topic_bus=bus_id,
            revoked=dev is not None and dev.revoked,
            verify=sign,
        )
        if isinstance(full, RecordFault):
            if full.full is None:  # not encodable
                return Rejection(full.reason, full.detail, repr(rec)[:_MAX_RAW], bus_id)
            raw = full.full.decode("utf-8")
            return Rejection(full.reason, full.detail, raw, bus_id, rec.seq, rec.event_id)
        digest = hashlib.sha256(full).hexdigest()
        if copy:
            SIGNATURES_PUT_OFF.inc()
        return VerifiedEvent(bus_id, rec.seq, rec, full.decode("utf-8"), digest, signed=sign)

    def check_signature(self, e: VerifiedEvent) -> Rejection | None:
        """Verify the signature of an event whose check was put off; its rejection if bad.

        Marks it signed when it verifies.
        """
        if e.signed:
            return None
        dev = self._devices.get(e.bus_id)
        if dev is None:  # pragma: no cover - checked when decoded; a refresh since
            detail = f"bus {e.bus_id!r} is not registered"
            return Rejection("bad_signature", detail, e.raw, e.bus_id, e.seq, e.event_id)
        SIGNATURES_VERIFIED.inc()
        bad = signature_fault(e.record, e.raw.encode("utf-8"), dev.public)
        if bad is not None:
            return Rejection(bad.reason, bad.detail, e.raw, e.bus_id, e.seq, e.event_id)
        e.signed = True
        return None

    def _signature_fault(self, e: VerifiedEvent) -> RecordFault | None:
        """Why the signature of ``e`` (put off when decoded) is not its bus's, or None."""
        dev = self._devices.get(e.bus_id)
        if dev is None:  # pragma: no cover - checked when decoded
            return RecordFault("bad_signature", f"bus {e.bus_id!r} is not registered")
        return signature_fault(e.record, e.raw.encode("utf-8"), dev.public)

    def verify_runs(self, events: Sequence[VerifiedEvent]) -> tuple[list[Rejection], int]:
        """Decide the signatures :meth:`decode` put off for their runs, one per run.

        :func:`backend._record_check.decide_runs`, the decision offline settle makes
        (``docs/backend-ingest.md``, "One signature per hash-linked run"), over
        ``events`` (a transaction's records, any buses, any order): a record is authentic
        when its own signature verifies or an authentic record of its bus at the next seq
        names its hash as ``prev``; byte-identical copies are one record. The authentic
        ones are marked signed; the others are ``bad_signature``, each copy rejected as
        :meth:`decode` would have rejected it.

        Returns:
            The rejections (in the order of ``events``) and how many signatures were
            verified.
        """
        first: dict[str, VerifiedEvent] = {}
        for e in events:
            first.setdefault(e.hash, e)
        faults: dict[str, RecordFault] = {}

        def verify(hashes: list[str]) -> set[str]:
            failed = set()
            for h in hashes:
                fault = self._signature_fault(first[h])
                if fault is not None:
                    faults[h] = fault
                    failed.add(h)
            return failed

        nodes = {h: (e.bus_id, e.seq, e.prev) for h, e in first.items()}
        bad, verified = decide_runs(nodes, verify)
        SIGNATURES_VERIFIED.inc(verified)
        rejected: list[Rejection] = []
        for e in events:
            if e.hash in bad:
                f = faults[e.hash]
                rejected.append(Rejection(f.reason, f.detail, e.raw, e.bus_id, e.seq, e.event_id))
            else:
                e.signed = True
        return rejected, verified

    def verify_put_off(self, events: Sequence[VerifiedEvent]) -> tuple[list[Rejection], int]:
        """Decide the signatures :meth:`decode` put off to its ``put_off`` list, per mode.

        :meth:`verify_runs` with ``verify = "runs"``, :meth:`verify_each` with ``every``.
        """
        if self.verify == "runs":
            return self.verify_runs(events)
        return self.verify_each(events)

    def verify_each(self, events: Sequence[VerifiedEvent]) -> tuple[list[Rejection], int]:
        """Verify each record's own signature (``verify = "every"``), in one pass.

        The decision :meth:`decode` makes per record when it is given no list, taken
        after a transaction's messages are all decoded: the verifications run one after
        another, not each between a record's parsing and serialising (measured on
        SQLite, ~3-4 us less CPU per event: the verification's code and tables stay in
        the caches). The ones that verify are marked signed; the others are
        ``bad_signature``.

        Returns:
            The rejections (in the order of ``events``) and how many signatures were
            verified.
        """
        rejected: list[Rejection] = []
        for e in events:
            fault = self._signature_fault(e)
            if fault is None:
                e.signed = True
            else:
                rejected.append(
                    Rejection(fault.reason, fault.detail, e.raw, e.bus_id, e.seq, e.event_id)
                )
        SIGNATURES_VERIFIED.inc(len(events))
        return rejected, len(events)

    @staticmethod
    def held_from_rows(bus_id: str, rows: Iterable[tuple[int, str, str, int]]) -> Held:
        """Held records from ``fare_pending`` rows ``(seq, event_hash, raw, arrival)``.

        Rows come in arrival order (the order :meth:`plan` tries candidates of one seq
        in). They were verified before they were written, so they are only parsed.
        """
        held: Held = {}
        for seq, digest, raw, arrival in rows:
            rec = decode_event(raw.encode("utf-8"))
            ev = VerifiedEvent(bus_id, int(seq), rec, raw, digest, arrival)
            held.setdefault(int(seq), {})[digest] = ev
        return held

    # -- chain planning ---------------------------------------------------------------

    def past_seqs(
        self,
        position: ChainPosition,
        events: Iterable[VerifiedEvent],
        held: Mapping[int, Mapping[str, VerifiedEvent]] | None = None,
    ) -> list[int]:
        """Stored seqs :meth:`plan` needs the hash of (:func:`backend._chain.past_seqs`)."""
        return past_seqs(position, events, held or ())

    def planner(self, *, now: float = 0.0) -> ChainPlanner[VerifiedEvent]:
        """A :class:`~backend._chain.ChainPlanner` for one transaction.

        With this core's bounds, gap grace and put-off signature check.

        Args:
            now: wall time (when a new gap opens).
        """
        return ChainPlanner(
            verify=self.check_signature,
            max_held=self.max_held_per_bus,
            resend_after_s=self.resend_after_s,
            now=now,
        )

    def plan(
        self,
        bus_id: str,
        position: ChainPosition,
        events: Iterable[VerifiedEvent],
        stored_hashes: Mapping[int, str],
        *,
        held: Mapping[int, Mapping[str, VerifiedEvent]] | None = None,
        gap: Gap | None = None,
        now: float = 0.0,
    ) -> BusPlan[VerifiedEvent]:
        """Plan one bus's chain step from its committed ``position``, ``held`` and ``gap``.

        A :meth:`planner` over one bus (the decisions are described in
        :mod:`backend._chain`); ``held`` is copied, not changed. The plan's ``held`` and
        ``gap`` replace the committed ones.

        Args:
            bus_id: the bus.
            position: its committed chain position (read under the row lock).
            events: newly verified events of this bus, in arrival order.
            stored_hashes: ``{seq: event_hash}`` of stored events for
                :meth:`past_seqs`.
            held: the records committed as held for this bus (``fare_pending``).
            gap: the bus's committed open gap, if any.
            now: wall time (when a new gap opens).

        Raises:
            ValueError: when a needed stored hash is missing from ``stored_hashes``.
        """
        planner = self.planner(now=now)
        mine: Held = {s: dict(c) for s, c in (held or {}).items()}
        planner.open(bus_id, position, stored_hashes, held=mine, gap=gap)
        planner.take_all(events)
        (plan,) = planner.finish()
        return plan

    def gap_step(self, gap: Gap, now: float, caught_up: float | None = None) -> GapAction:
        """Decide what a gap that is due (``gap.due <= now``) gets: a re-send or a report.

        The first request goes ``resend_after_s`` after the gap opened, the k-th
        ``min(resend_max_s, resend_after_s * 2**k)`` after the one before; once
        ``resend_max_attempts`` requests went unanswered, the next due time reports it
        (once) and it is no longer re-asked (the edge still re-sends everything unacked
        after its own ack timeout, and a late re-send still fills it).

        Args:
            gap: the gap.
            now: wall time.
            caught_up: the time before which every live worker has committed all it
                received (``None``: unknown). Until it passes the gap's opening (or
                its last request), the missing records may still be queued in a worker:
                nothing is asked or reported yet.
        """
        if gap.reported or gap.due is None or now < gap.due:
            return GapAction(gap)
        if caught_up is not None and caught_up < (gap.last if gap.last is not None else gap.since):
            return GapAction(gap)
        if gap.attempts >= self.resend_max_attempts:
            return GapAction(dataclasses.replace(gap, reported=True, due=None), report=True)
        wait = min(self.resend_max_s, self.resend_after_s * 2 ** (gap.attempts + 1))
        return GapAction(
            dataclasses.replace(gap, attempts=gap.attempts + 1, due=now + wait, last=now),
            resend=(gap.start, gap.end),
        )


_ROW_COLUMNS = (*SEGMENT_COLUMNS, "event_hash", "raw", "received_at", "worker_id")
_COLS = ", ".join(_ROW_COLUMNS)
# built from constant names only (no input reaches the SQL text)
_SQLITE_INSERT = " ".join(
    [
        "INSERT INTO fare_events (",
        _COLS,
        ") VALUES (",
        ", ".join("?" * len(_ROW_COLUMNS)),
        ")",
        "ON CONFLICT DO NOTHING",
    ]
)
# The chain_state statements of every transaction as SQL text (SQLAlchemy's statement
# compilation and parameter handling cost ~1 ms per transaction, more than the round
# trips); built from the table's column names only.
_GAP_COLUMNS = (
    "gap_from",
    "gap_to",
    "gap_since",
    "resend_attempts",
    "resend_due",
    "gap_reported",
    "resend_last",
)
_CHAIN_COLUMNS = ("bus_id", "next_seq", "prev", "pending", *_GAP_COLUMNS)
_CHAIN_SELECT = " ".join(["SELECT", ", ".join(_CHAIN_COLUMNS), "FROM", chain_state.name])
_CHAIN_LOCK_PG = " ".join(
    [_CHAIN_SELECT, "WHERE bus_id = ANY($1::varchar[]) ORDER BY bus_id FOR UPDATE"]
)
_CHAIN_SET = ("next_seq", "prev", "updated_at", "pending", *_GAP_COLUMNS)


def _chain_update(mark: str) -> str:
    """The ``chain_state`` update, bus id first: ``$n`` (asyncpg) or ``?n`` (sqlite3)."""
    sets = ", ".join(f"{c} = {mark}{i}" for i, c in enumerate(_CHAIN_SET, start=2))
    return " ".join(["UPDATE", chain_state.name, "SET", sets, f"WHERE bus_id = {mark}1"])


_CHAIN_UPDATE_PG = _chain_update("$")
_CHAIN_UPDATE_SQLITE = _chain_update("?")
_FAST_DEPTH = 4
"""Nesting of a batch of typed records (batch, events, record, start/wait): the fast
path is taken only when ``max_nesting`` allows it."""


async def _driver(conn: AsyncConnection) -> Any:
    """The driver's connection (asyncpg or aiosqlite) in the transaction ``conn`` began."""
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    in_txn = driver.is_in_transaction() if is_postgres(conn) else driver.in_transaction
    assert in_txn, "a driver-level statement outside the transaction"
    return driver


def _count_verified(ok: list[VerifiedEvent], bad: list[Rejection]) -> None:
    """Count the signatures :meth:`IngestCore.decode` verified (one per record)."""
    n = sum(1 for e in ok if e.signed) + sum(1 for r in bad if r.reason == "bad_signature")
    if n:
        SIGNATURES_VERIFIED.inc(n)


def _raw_json(item: object) -> str:
    try:
        return canonical_bytes(item).decode("utf-8")[:_MAX_RAW]
    except (TypeError, ValueError, RecursionError):
        return repr(item)[:_MAX_RAW]


def _clean_text(text: str) -> str:
    """Text any database accepts: valid UTF-8 (lone surrogates replaced), no NUL."""
    return text.encode("utf-8", errors="replace").decode("utf-8").replace("\x00", "\ufffd")


def _int_or_none(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and abs(v) <= BIGINT_MAX else None


def _str_or_none(v: object) -> str | None:
    return _clean_text(v[:128]) if isinstance(v, str) else None


# --- the ledger side ---------------------------------------------------------------------


@dataclass(slots=True)
class BatchResult:
    """What one :meth:`Ingestor.ingest` call did.

    Attributes:
        acks: ``{bus_id: upto_seq}`` to publish (the transaction is committed).
        resends: ``{bus_id: (from_seq, to_seq)}`` to request.
        stored: events stored.
        duplicates: duplicate events.
        quarantined: rejections (stored in ``quarantine`` or, over the budget, only
            counted).
        malformed: unusable payloads.
        rejected: the rejections by reason (one of :data:`QUARANTINE_REASONS`).
        gaps_unfilled: ``{bus_id: (from_seq, to_seq)}`` of gaps given up on (logged
            ``fare_gap_unfilled`` and counted, for operators).
    """

    acks: dict[str, int] = field(default_factory=dict)
    resends: dict[str, tuple[int, int]] = field(default_factory=dict)
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    malformed: int = 0
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    gaps_unfilled: dict[str, tuple[int, int]] = field(default_factory=dict)


class _RowsRefused(StoreError):
    """The ledger took fewer rows than planned (nothing is committed)."""


_TRANSACTION_ERRORS: tuple[type[Exception], ...] = (*DB_ERRORS, _RowsRefused)
_QUARANTINE_ERRORS: tuple[type[Exception], ...] = (*DB_ERRORS, ValueError)


def _without(
    order: list[VerifiedEvent],
    groups: dict[str, list[VerifiedEvent]],
    gone: Container[int],
) -> tuple[list[VerifiedEvent], dict[str, list[VerifiedEvent]]]:
    """``order`` and ``groups`` without the events whose ``id()`` is in ``gone``."""
    return (
        [e for e in order if id(e) not in gone],
        {b: [e for e in es if id(e) not in gone] for b, es in groups.items()},
    )


@dataclass(slots=True)
class Prepared:
    """A batch decoded and verified, not committed yet (:meth:`Ingestor.prepare`)."""

    groups: dict[str, list[VerifiedEvent]] = field(default_factory=dict)
    order: list[VerifiedEvent] = field(default_factory=list)
    """Every bus's events in arrival order (the order the plan takes them in)."""
    rejections: list[Rejection] = field(default_factory=list)
    result: BatchResult = field(default_factory=BatchResult)
    put_off: list[VerifiedEvent] = field(default_factory=list)
    """Events whose signature is put off until the batch is decoded, until
    :meth:`Ingestor.verify_put_off` decides them (per run with ``verify = "runs"``, each
    record's own with ``every``)."""
    sources: list[list[VerifiedEvent]] = field(default_factory=list)
    """Per message of the batch (by index), the events it brought (as decoded)."""
    stored: list[int] = field(default_factory=list)
    """Per message of the batch (by index), its rejections admitted to ``quarantine``."""

    def message_of(self) -> dict[int, int]:
        """The message each decoded event came in: ``{id(event.raw): index}``.

        Every later rejection of an event (run decision, ``event_id_taken``, chain plan)
        carries the event's own ``raw`` object, so its identity names the event; a
        record held from an earlier transaction (read back from ``fare_pending``) is not
        in it. Built when rejections need it (not per event while decoding).
        """
        return {id(e.raw): m for m, events in enumerate(self.sources) for e in events}


@dataclass(slots=True)
class _BusRow:
    """A bus's locked ``chain_state`` row."""

    position: ChainPosition
    pending: int
    gap: Gap | None


class Ingestor:
    """:class:`IngestCore` plus the ledger: one transaction per call to :meth:`ingest`.

    Every decision comes from committed rows read under the bus's row lock (chain
    head, held records in ``fare_pending``, the open gap), so several workers, each
    with its own Ingestor, can share one subscription.

    Args:
        engine: the ledger engine (migrated).
        core: the core (its device registry is filled by :meth:`refresh_devices`).
        worker_id: stored with each event and quarantine row.
        clock: monotonic clock (quarantine and log budgets).
        wall: wall clock (``received_at``, gap timing shared by all workers).
        quarantine_budget: how many rejections are stored (per message, per bus per
            minute); the rest are counted and logged only.
        log_budget: rate limit of the warning logs per (event, reason, bus).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        core: IngestCore | None = None,
        *,
        worker_id: str = "ingest",
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        quarantine_budget: QuarantineBudget | None = None,
        log_budget: LogBudget | None = None,
    ) -> None:
        self.engine = engine
        self.core = core or IngestCore()
        self.worker_id = worker_id
        self._clock = clock
        self._wall = wall
        self.quarantine_budget = quarantine_budget or QuarantineBudget()
        self.log_budget = log_budget or LogBudget()
        self._dialect = engine.dialect.name
        self._pg = self._dialect == "postgresql"
        self.worker_stale_s = 10.0
        """Workers whose progress is older than this are taken as gone (ignored)."""
        self._known_buses: set[str] = set()
        self._acks_unrecorded: dict[str, int] = {}
        self._heads: dict[str, int] = {}
        """Each bus's committed chain head (next seq) as this worker last committed it: a
        hint (heads only move up), used to put off verifying copies of stored records."""
        """Acks published since the last :meth:`tick` (written by it)."""
        """Buses whose ``chain_state`` row this worker saw committed."""

    async def refresh_devices(self) -> int:
        """Re-read the device registry into the core; returns how many devices."""
        try:
            async with self.engine.connect() as conn:
                devs = await load_devices(conn)
        except DB_ERRORS as exc:
            raise StoreError(f"cannot read the device registry: {exc}") from exc
        self.core.set_devices(devs)
        return len(devs)

    async def ingest(self, messages: Sequence[tuple[str, bytes]]) -> BatchResult:
        """Decode, verify and commit a batch of ``(bus_id, payload)`` messages.

        Returns:
            What to publish now that the transaction is committed.

        Raises:
            StoreError: when the transaction failed (nothing was committed; the edges
                re-send what was not acked).
        """
        return await self.commit(self.prepare(messages))

    def prepare(self, messages: Sequence[tuple[str, bytes]]) -> Prepared:
        """Decode and verify a batch (CPU only, no I/O): the first half of :meth:`ingest`.

        A worker prepares the next batch while the previous one's transaction is in
        flight; :meth:`commit` then takes them in order.
        """
        prepared = Prepared()
        for bus_id, payload in messages:
            self.prepare_one(prepared, bus_id, payload)
        self.verify_put_off(prepared)
        return prepared

    def prepare_one(self, prepared: Prepared, bus_id: str, payload: bytes) -> None:
        """Decode and verify one message into ``prepared``."""
        result = prepared.result
        MESSAGES_RECEIVED.inc()
        try:
            ok, bad = self.core.decode(
                bus_id, payload, below=self._heads.get(bus_id, 0), put_off=prepared.put_off
            )
        except MalformedMessage as exc:
            result.malformed += 1
            MESSAGES_MALFORMED.labels(exc.reason).inc()
            self._warn("fare_message_malformed", exc.reason, bus_id, error=str(exc)[:200])
            bad = [
                Rejection("malformed_payload", f"{exc.reason}: {exc}", _raw_text(payload), bus_id)
            ]
            ok = []
        except Exception as exc:  # no payload may stop the worker
            result.malformed += 1
            MESSAGES_MALFORMED.labels("internal_error").inc()
            _log().exception("fare_message_failed", bus_id=bus_id, error=repr(exc)[:200])
            bad = [
                Rejection(
                    "malformed_payload", f"internal_error: {exc!r}", _raw_text(payload), bus_id
                )
            ]
            ok = []
        prepared.groups.setdefault(bus_id, []).extend(ok)
        prepared.order.extend(ok)
        prepared.sources.append(ok)
        admitted = self._budget(bus_id, bad)
        prepared.stored.append(sum(r.store for r in admitted))
        prepared.rejections.extend(admitted)

    def verify_put_off(self, prepared: Prepared) -> None:
        """Decide the signatures put off in ``prepared`` (CPU only).

        One per hash-linked run of the batch's records (:meth:`IngestCore.verify_runs`),
        or with ``verify = "every"`` each record's own in one pass
        (:meth:`IngestCore.verify_each`); a record that is not authentic leaves the
        batch as ``bad_signature`` (charged to the quarantine budget of the message it
        came in). The end of :meth:`prepare` (after :meth:`prepare_one` for each
        message); :meth:`commit` does it if it was not done. (Named ``verify_runs``
        until ``every`` mode was decided here too.)
        """
        put_off, prepared.put_off = prepared.put_off, []
        if not put_off:
            return
        rejected, _ = self.core.verify_put_off(put_off)
        if not rejected:
            return
        gone = {id(e) for e in put_off if not e.signed}
        prepared.order, prepared.groups = _without(prepared.order, prepared.groups, gone)
        self._charge(prepared, rejected)

    async def commit(self, prepared: Prepared) -> BatchResult:
        """Commit a batch from :meth:`prepare`: one transaction, then the quarantine rows.

        Raises:
            StoreError: when the transaction failed (nothing was committed).
        """
        self.verify_put_off(prepared)
        return await self._commit(prepared)

    def _charge(self, prepared: Prepared, bad: list[Rejection]) -> None:
        """Admit rejections decided after decoding into ``prepared.rejections``.

        Every such rejection (the run decision's, ``event_id_taken``, the chain plan's)
        is charged to the quarantine budget of the message its record came in, after
        what that message had admitted before (its decode's rejections, then each
        later step's), as if decided when it was decoded: ``quarantine_per_message``
        stores the same rows whichever step rejects a record. A record held from an
        earlier transaction (its message's budget is gone) is charged with the others of
        its bus so held, as one message.
        """
        if not bad:
            return
        source = prepared.message_of()
        groups: dict[tuple[int, str], list[Rejection]] = {}
        for r in bad:
            groups.setdefault((source.get(id(r.raw), -1), r.bus_id or ""), []).append(r)
        for (message, bus_id), mine in groups.items():
            if message < 0:
                prepared.rejections.extend(self._budget(bus_id, mine))
                continue
            admitted = self._budget(bus_id, mine, stored=prepared.stored[message])
            prepared.stored[message] += sum(r.store for r in admitted)
            prepared.rejections.extend(admitted)

    def _budget(self, bus_id: str, bad: list[Rejection], *, stored: int = 0) -> list[Rejection]:
        """Mark the rejections of one message over the quarantine budget as not stored.

        ``stored``: rows of the same message admitted before (see
        :meth:`QuarantineBudget.admit`).
        """
        if not bad:
            return bad
        take = self.quarantine_budget.admit(bus_id, len(bad), self._clock(), stored=stored)
        if take == len(bad):
            return bad
        return bad[:take] + [dataclasses.replace(r, store=False) for r in bad[take:]]

    def _warn(self, event: str, reason: str, bus_id: str | None, **kw: Any) -> None:
        """A warning log, rate-limited per (event, reason, bus)."""
        suppressed = self.log_budget.allow((event, reason, bus_id or ""), self._clock())
        if suppressed is None:
            return
        if suppressed:
            kw["suppressed"] = suppressed
        _log().warning(event, bus_id=bus_id, reason=reason, **kw)

    async def tick(self, caught_up_to: float | None = None) -> BatchResult:
        """Claim the gaps that are due, from committed rows: re-send requests and reports.

        Whichever worker runs it first claims a due gap (row lock; on PostgreSQL rows
        another worker holds are skipped), so each request is made once, whatever the
        number of workers. The acks noted since the last sweep (:meth:`note_acks`) are
        recorded in the same transaction.

        Args:
            caught_up_to: this worker's progress (wall time before which everything it
                received is committed), recorded in ``ingest_workers``; a gap waits
                until every worker reported lately is past its opening (or its last
                request). ``None``: not a worker (no progress recorded).
        """
        result = BatchResult()
        now = self._wall()
        cs = chain_state
        acks, self._acks_unrecorded = self._acks_unrecorded, {}
        try:
            async with self.engine.begin() as conn:
                await self._write_acks(conn, acks)
                floor = await self._caught_up(conn, caught_up_to, now)
                q = (
                    sa.select(
                        cs.c.bus_id,
                        cs.c.gap_from,
                        cs.c.gap_to,
                        cs.c.gap_since,
                        cs.c.resend_attempts,
                        cs.c.resend_due,
                        cs.c.resend_last,
                    )
                    .where(cs.c.resend_due <= now, cs.c.pending > 0)
                    .order_by(cs.c.bus_id)
                )
                if self._pg:
                    q = q.with_for_update(skip_locked=True)
                changed = []
                for bus_id, start, end, since, attempts, due, last in await conn.execute(q):
                    gap = Gap(int(start), int(end), float(since), int(attempts), float(due))
                    gap = dataclasses.replace(gap, last=last)
                    act = self.core.gap_step(gap, now, floor)
                    if act.gap == gap:
                        continue
                    if act.resend is not None:
                        result.resends[bus_id] = act.resend
                    if act.report:
                        result.gaps_unfilled[bus_id] = (gap.start, gap.end)
                    changed.append(
                        {
                            "b_bus": bus_id,
                            "b_attempts": act.gap.attempts,
                            "b_due": act.gap.due,
                            "b_reported": act.gap.reported,
                            "b_last": act.gap.last,
                        }
                    )
                if changed:
                    await conn.execute(
                        cs.update()
                        .where(cs.c.bus_id == sa.bindparam("b_bus"))
                        .values(
                            resend_attempts=sa.bindparam("b_attempts"),
                            resend_due=sa.bindparam("b_due"),
                            gap_reported=sa.bindparam("b_reported"),
                            resend_last=sa.bindparam("b_last"),
                        ),
                        changed,
                    )
        except DB_ERRORS as exc:
            self.note_acks(acks)  # not recorded: the next sweep tries again
            STORE_ERRORS.inc()
            raise StoreError(f"gap sweep failed: {exc}") from exc
        for bus_id, (a, b) in sorted(result.gaps_unfilled.items()):
            GAPS_UNFILLED.inc()
            _log().error(
                "fare_gap_unfilled",
                bus_id=bus_id,
                from_seq=a,
                to_seq=b,
                attempts=self.core.resend_max_attempts,
            )
        return result

    async def _caught_up(
        self, conn: AsyncConnection, mine: float | None, now: float
    ) -> float | None:
        """Record this worker's progress; the least progress of the live workers."""
        iw = ingest_workers
        # workers gone for a day (restarts get new ids): forget them
        await conn.execute(iw.delete().where(iw.c.seen_at < now - 86400.0))
        if mine is not None:
            ins = (postgresql.insert if self._pg else sqlite.insert)(iw).values(
                worker_id=self.worker_id, caught_up_to=mine, seen_at=now
            )
            await conn.execute(
                ins.on_conflict_do_update(
                    index_elements=[iw.c.worker_id],
                    set_={"caught_up_to": mine, "seen_at": now},
                )
            )
        floor = (
            await conn.execute(
                sa.select(sa.func.min(iw.c.caught_up_to)).where(
                    iw.c.seen_at >= now - self.worker_stale_s
                )
            )
        ).scalar()
        return None if floor is None else float(floor)

    async def open_gaps(self) -> list[dict[str, Any]]:
        """Every bus's open chain gap, for operators (``busbell backend gaps``)."""
        cs = chain_state
        try:
            async with self.engine.connect() as conn:
                rows = await conn.execute(
                    sa.select(
                        cs.c.bus_id,
                        cs.c.gap_from,
                        cs.c.gap_to,
                        cs.c.gap_since,
                        cs.c.pending,
                        cs.c.resend_attempts,
                        cs.c.gap_reported,
                    )
                    .where(cs.c.pending > 0)
                    .order_by(cs.c.bus_id)
                )
                return [dict(r._mapping) for r in rows]
        except DB_ERRORS as exc:
            raise StoreError(f"cannot read the chain gaps: {exc}") from exc

    async def _commit(self, prepared: Prepared) -> BatchResult:
        rejections, result = prepared.rejections, prepared.result
        try:
            plans, taken = await self._transaction(prepared.groups, prepared.order)
        except _TRANSACTION_ERRORS as exc:
            STORE_ERRORS.inc()
            raise StoreError(f"ingest transaction failed: {exc}") from exc
        self._charge(prepared, [*taken, *(r for plan in plans for r in plan.rejected)])
        for plan in plans:
            if plan.store:
                result.stored += len(plan.store)
                EVENTS_STORED.inc(len(plan.store))
                _log().debug(
                    "fare_event_stored",
                    bus_id=plan.bus_id,
                    from_seq=plan.store[0].seq,
                    to_seq=plan.store[-1].seq,
                    count=len(plan.store),
                )
            if plan.duplicates:
                result.duplicates += plan.duplicates
                EVENTS_DUPLICATE.inc(plan.duplicates)
            if plan.dropped:
                EVENTS_HELD_DROPPED.inc(plan.dropped)
            if plan.ack_upto is not None:
                result.acks[plan.bus_id] = plan.ack_upto
        for r in rejections:
            EVENTS_QUARANTINED.labels(r.reason).inc()
            if not r.store:
                QUARANTINE_NOT_STORED.labels(r.reason).inc()
            self._warn(
                "fare_event_quarantined",
                r.reason,
                r.bus_id,
                seq=r.seq,
                event_id=r.event_id,
                detail=r.detail[:200],
                stored=r.store,
            )
        result.quarantined += len(rejections)
        result.rejected.update(r.reason for r in rejections)
        # The events are committed (and may be acked) whatever happens here: the
        # quarantine rows go in a transaction of their own, so no rejected input can
        # roll back someone else's valid events.
        await self._store_quarantine([r for r in rejections if r.store])
        return result

    async def _store_quarantine(self, rejections: list[Rejection]) -> None:
        if not rejections:
            return
        now = self._wall()
        rows = [self._qrow(r, now) for r in rejections]
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert_ignore(quarantine, self._dialect), rows)
        except _QUARANTINE_ERRORS as exc:
            QUARANTINE_STORE_ERRORS.inc()
            _log().error("fare_quarantine_store_failed", rows=len(rows), error=str(exc)[:300])

    async def _transaction(
        self,
        groups: dict[str, list[VerifiedEvent]],
        order: list[VerifiedEvent],
    ) -> tuple[list[BusPlan[VerifiedEvent]], list[Rejection]]:
        """Plan and write one batch under its buses' row locks.

        Returns:
            The buses' plans, and the missed records left out because their event id is
            already stored for another record (:meth:`_ids_taken`), in arrival order.
        """
        now = self._wall()
        buses = sorted(groups)
        if not buses:
            return [], []
        async with self.engine.begin() as conn:
            rows = await self._lock_rows(conn, buses, now)
            taken = await self._ids_taken(conn, order)
            if taken:  # left out before the plan: their bus's chain waits there
                order, groups = _without(order, groups, taken.keys())
            held_rows = await self._held_rows(conn, [b for b in buses if rows[b].pending])
            planner = self.core.planner(now=now)
            for bus_id in buses:
                row = rows[bus_id]
                # the plan changes what it is given: held_rows stay as read (for _write)
                held: Held = {s: dict(c) for s, c in held_rows.get(bus_id, {}).items()}
                past = past_seqs(row.position, groups[bus_id], held)
                hashes = await self._stored_hashes(conn, bus_id, past) if past else {}
                planner.open(bus_id, row.position, hashes, held=held, gap=row.gap)
            planner.take_all(order)  # every bus's events in arrival order
            plans = planner.finish()
            await self._write(conn, plans, held_rows, rows, now)
        self._known_buses.update(buses)  # committed
        heads = self._heads
        for p in plans:
            if p.position.next_seq > heads.get(p.bus_id, 0):
                heads[p.bus_id] = p.position.next_seq
        return plans, list(taken.values())

    async def _ids_taken(
        self, conn: AsyncConnection, order: list[VerifiedEvent]
    ) -> dict[int, Rejection]:
        """The missed records of ``order`` whose event id another record holds, by ``id()``.

        ``missed_stops`` keeps a unique ``event_id`` index (the operators' API looks
        records up by it). A derived id (``event_id_mismatch`` checked it) is held by
        another ``(bus_id, seq)`` only if a row stored before ids were derived carries
        it, or SHA-256 collides; inserting such a record would fail the whole
        transaction, so it is left out and quarantined (``event_id_taken``, logged
        ``fare_event_id_taken``). One indexed lookup per transaction that carries
        missed records; segments are not looked up (``fare_events`` has no id index).
        """
        wanted: dict[str, list[VerifiedEvent]] = {}
        for e in order:
            if type(e.record) is MissedRecord:
                wanted.setdefault(e.event_id, []).append(e)
        if not wanted:
            return {}
        ms = missed_stops
        rows = await conn.execute(
            sa.select(ms.c.event_id, ms.c.bus_id, ms.c.seq).where(ms.c.event_id.in_(list(wanted)))
        )
        out: dict[int, Rejection] = {}
        for event_id, bus_id, seq in rows:
            for e in wanted[event_id]:
                if (e.bus_id, e.seq) == (bus_id, int(seq)):
                    continue  # the record itself, stored before: the plan's duplicate
                out[id(e)] = Rejection(
                    "event_id_taken",
                    f"event_id {event_id!r} is already stored for bus {bus_id!r} seq "
                    f"{int(seq)} in missed_stops (a row from before ids were derived, or "
                    "a SHA-256 collision)",
                    e.raw,
                    e.bus_id,
                    e.seq,
                    event_id,
                )
                self._warn(
                    "fare_event_id_taken",
                    "event_id_taken",
                    e.bus_id,
                    seq=e.seq,
                    event_id=event_id,
                    holder_bus_id=bus_id,
                    holder_seq=int(seq),
                )
        return out

    async def _write(
        self,
        conn: AsyncConnection,
        plans: list[BusPlan[VerifiedEvent]],
        held_rows: dict[str, Held],
        rows: dict[str, _BusRow],
        now: float,
    ) -> None:
        segs: list[VerifiedEvent] = []
        missed: list[VerifiedEvent] = []
        for p in plans:
            for e in p.store:
                (missed if type(e.record) is MissedRecord else segs).append(e)
        if segs:
            n = await self._insert_events(conn, segs, now)
            if n != len(segs):  # pragma: no cover - a row above the head, written behind our back
                raise _RowsRefused(f"fare_events took {n} of {len(segs)} rows")
        if missed:
            stmt = insert_ignore(missed_stops, self._dialect).returning(missed_stops.c.seq)
            res = await conn.execute(stmt, [self._missed_row(e, now) for e in missed])
            if (n := len(res.all())) != len(missed):  # pragma: no cover - as above
                raise _RowsRefused(f"missed_stops took {n} of {len(missed)} rows")
        gone: list[dict[str, Any]] = []
        new: list[dict[str, Any]] = []
        for p in plans:
            before = held_rows.get(p.bus_id, {})
            old = {(s, h) for s, c in before.items() for h in c}
            arrival = max((e.arrival for c in before.values() for e in c.values()), default=0)
            # dicts keep insertion order: old records first (as read), then the new ones
            # in arrival order
            now_held = {(s, h): e for s, c in p.held.items() for h, e in c.items()}
            gone.extend(
                {"b_bus": p.bus_id, "b_seq": s, "b_hash": h} for s, h in old - now_held.keys()
            )
            new.extend(
                {
                    "bus_id": p.bus_id,
                    "seq": s,
                    "event_hash": h,
                    "raw": now_held[(s, h)].raw,
                    "received_at": now,
                    "arrival": arrival + 1 + i,
                }
                for i, (s, h) in enumerate(k for k in now_held if k not in old)
            )
        fp = fare_pending
        if gone:
            await conn.execute(
                fp.delete().where(
                    fp.c.bus_id == sa.bindparam("b_bus"),
                    fp.c.seq == sa.bindparam("b_seq"),
                    fp.c.event_hash == sa.bindparam("b_hash"),
                ),
                gone,
            )
        if new:
            await conn.execute(insert_ignore(fp, self._dialect), new)
        changed = []
        for p in plans:
            row = rows[p.bus_id]
            if not p.store and p.gap == row.gap and p.held_count == row.pending:
                continue
            gap = p.gap
            changed.append(
                (
                    p.bus_id,
                    p.position.next_seq,
                    p.position.prev,
                    now,
                    p.held_count,
                    gap.start if gap else None,
                    gap.end if gap else None,
                    gap.since if gap else None,
                    gap.attempts if gap else 0,
                    gap.due if gap else None,
                    gap.reported if gap else False,
                    gap.last if gap else None,
                )
            )
        if changed:
            driver = await _driver(conn)
            update = _CHAIN_UPDATE_PG if self._pg else _CHAIN_UPDATE_SQLITE
            await driver.executemany(update, changed)

    async def _insert_events(
        self, conn: AsyncConnection, events: list[VerifiedEvent], now: float
    ) -> int:
        """Insert segment rows; returns how many went in.

        The rows go through the driver inside the transaction SQLAlchemy began, per row
        only the typed record's column tuple: on PostgreSQL a binary ``COPY`` straight
        into ``fare_events``, on SQLite ``executemany``. Nothing can conflict: the one
        key is ``(bus_id, seq)``, above the chain heads locked by this transaction, and
        event ids, derived from it (``event_id_mismatch``), need no index (migration
        0014).
        """
        extra = (now, self.worker_id)
        rows = [(*e.record.ledger_row(), e.hash, e.raw, *extra) for e in events]
        driver = await _driver(conn)
        if self._pg:
            status = await driver.copy_records_to_table(
                "fare_events", records=rows, columns=_ROW_COLUMNS
            )
            return int(status.rsplit(" ", 1)[-1])  # "COPY n"
        cursor = await driver.executemany(_SQLITE_INSERT, rows)
        n = int(cursor.rowcount)
        await cursor.close()
        return n

    async def _lock_rows(
        self, conn: AsyncConnection, buses: list[str], now: float
    ) -> dict[str, _BusRow]:
        """The buses' ``chain_state`` rows, locked (made first for buses never seen).

        A bus's row is inserted (``ON CONFLICT DO NOTHING``) before any row is locked,
        only for buses this worker has not seen committed yet: in the steady state one
        ``SELECT ... FOR UPDATE`` per transaction. Rows are never deleted; should one be
        missing all the same, it is made and locked after the others.
        """
        new = [b for b in buses if b not in self._known_buses]
        if new:
            await self._insert_chain_rows(conn, new, now)
        out = await self._select_rows(conn, buses)
        missing = [b for b in buses if b not in out]
        if missing:  # pragma: no cover - a chain_state row deleted behind our back
            await self._insert_chain_rows(conn, missing, now)
            out.update(await self._select_rows(conn, missing))
        return out

    async def _insert_chain_rows(self, conn: AsyncConnection, buses: list[str], now: float) -> None:
        await conn.execute(
            insert_ignore(chain_state, self._dialect),
            [
                {
                    "bus_id": b,
                    "next_seq": 1,
                    "prev": GENESIS_PREV,
                    "acked_upto": 0,
                    "updated_at": now,
                }
                for b in buses
            ],
        )

    async def _select_rows(self, conn: AsyncConnection, buses: list[str]) -> dict[str, _BusRow]:
        # Through SQLAlchemy's cursor, not the driver's: the first statement of the
        # transaction must begin it (SQLAlchemy's asyncpg adapter begins lazily), so the
        # driver-level statements after it run inside.
        if self._pg:
            result = await conn.exec_driver_sql(_CHAIN_LOCK_PG, (buses,))
        else:
            marks = ", ".join("?" * len(buses))
            result = await conn.exec_driver_sql(
                f"{_CHAIN_SELECT} WHERE bus_id IN ({marks})", tuple(buses)
            )
        out: dict[str, _BusRow] = {}
        rows: list[Any] = list(result.all())
        for b, n, p, pending, g0, g1, since, attempts, due, reported, last in rows:
            gap = (
                Gap(int(g0), int(g1), float(since), int(attempts), due, bool(reported), last)
                if g0 is not None
                else None
            )
            out[b] = _BusRow(ChainPosition(int(n), p), int(pending), gap)
        return out

    async def _held_rows(self, conn: AsyncConnection, buses: list[str]) -> dict[str, Held]:
        if not buses:
            return {}
        fp = fare_pending
        rows = await conn.execute(
            sa.select(fp.c.bus_id, fp.c.seq, fp.c.event_hash, fp.c.raw, fp.c.arrival)
            .where(fp.c.bus_id.in_(buses))
            .order_by(fp.c.bus_id, fp.c.arrival)
        )
        by_bus: dict[str, list[tuple[int, str, str, int]]] = {}
        for b, s, h, raw, arrival in rows:
            by_bus.setdefault(b, []).append((int(s), h, raw, int(arrival)))
        return {b: IngestCore.held_from_rows(b, r) for b, r in by_bus.items()}

    async def _stored_hashes(
        self, conn: AsyncConnection, bus_id: str, seqs: list[int]
    ) -> dict[int, str]:
        out: dict[int, str] = {}
        for table in (fare_events, missed_stops):  # a bus's chain is both
            rows = await conn.execute(
                sa.select(table.c.seq, table.c.event_hash).where(
                    table.c.bus_id == bus_id, table.c.seq.in_(seqs)
                )
            )
            out.update((int(s), h) for s, h in rows)
        return out

    def _missed_row(self, e: VerifiedEvent, now: float) -> dict[str, Any]:
        rec = e.record
        assert isinstance(rec, MissedRecord)
        row = dict(zip(MISSED_COLUMNS, rec.ledger_row(), strict=True))
        row.update(event_hash=e.hash, record=e.raw, received_at=now, worker_id=self.worker_id)
        return row

    def _qrow(self, r: Rejection, now: float) -> dict[str, Any]:
        raw = _clean_text(r.raw)
        return {
            "bus_id": _clean_text(r.bus_id[:128]) if r.bus_id else None,
            "seq": _int_or_none(r.seq),
            "event_id": _str_or_none(r.event_id),
            "reason": r.reason,
            "detail": _clean_text(r.detail[:4000]),
            "raw": raw,
            "raw_hash": sha256_hex(raw.encode("utf-8")),
            "received_at": now,
            "worker_id": self.worker_id,
        }

    def note_acks(self, acks: Mapping[str, int]) -> None:
        """Note published acks; :meth:`tick` records them (``chain_state.acked_upto``).

        Bookkeeping for operators, not a decision input (acks are decided from the
        committed chain head): written by the next gap sweep in its transaction instead of
        a transaction of its own after every batch.
        """
        pending = self._acks_unrecorded
        for bus_id, upto in acks.items():
            if upto > pending.get(bus_id, 0):
                pending[bus_id] = upto

    async def record_acks(self, acks: Mapping[str, int] | None = None) -> None:
        """Record the noted acks (and ``acks``) in ``chain_state.acked_upto`` now (monotonic)."""
        if acks:
            self.note_acks(acks)
        taken, self._acks_unrecorded = self._acks_unrecorded, {}
        try:
            async with self.engine.begin() as conn:
                await self._write_acks(conn, taken)
        except DB_ERRORS as exc:
            self.note_acks(taken)
            raise StoreError(f"cannot record acks: {exc}") from exc

    @staticmethod
    async def _write_acks(conn: AsyncConnection, acks: Mapping[str, int]) -> None:
        if acks:
            await conn.execute(
                chain_state.update()
                .where(
                    chain_state.c.bus_id == sa.bindparam("b_bus"),
                    chain_state.c.acked_upto < sa.bindparam("b_upto"),
                )
                .values(acked_upto=sa.bindparam("b_upto")),
                [{"b_bus": b, "b_upto": n} for b, n in sorted(acks.items())],
            )


# --- the MQTT adapter --------------------------------------------------------------------


def default_worker_id() -> str:
    """Host name and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


class IngestWorker:
    """Subscribes to the fares topics, ingests in batches, acks after commit.

    Args:
        config: the backend configuration.
        engine: the ledger engine (migrated).
        clock: monotonic clock.
    """

    def __init__(
        self,
        config: BackendConfig,
        engine: AsyncEngine,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        ing = config.ingest
        self.config = config
        self.worker_id = ing.worker_id or default_worker_id()
        self.topics = Topics(config.mqtt.prefix)
        self.ingestor = Ingestor(
            engine,
            IngestCore(
                max_held_per_bus=ing.max_held_per_bus,
                resend_after_s=ing.resend_after_s,
                max_payload_bytes=ing.max_payload_bytes,
                max_nesting=ing.max_nesting,
                max_events_per_message=ing.max_events_per_message,
                resend_max_s=ing.resend_max_s,
                resend_max_attempts=ing.resend_max_attempts,
                verify=_verify_mode(ing.verify),
            ),
            worker_id=self.worker_id,
            clock=clock,
            quarantine_budget=QuarantineBudget(
                per_message=ing.quarantine_per_message,
                per_bus=ing.quarantine_per_bus_per_minute,
            ),
        )
        self._clock = clock
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=100_000)
        # wall time each queued message arrived, in queue order (the worker's progress)
        self._arrived: collections.deque[float] = collections.deque()
        # set by the reader after each message it queues (see _arrives_before)
        self._arrival = asyncio.Event()
        self._wall = time.time
        self.connected = asyncio.Event()

    def _session(self) -> MqttSession:
        settings = self.config.mqtt
        client_id = settings.client_id or f"busbell-backend-ingest-{self.worker_id}"
        if self.config.ingest.shared_subscription:
            # every member needs its own id, even with [mqtt] client_id set for the backend
            client_id = f"{settings.client_id or 'busbell-backend'}-ingest-{self.worker_id}"
            # A dead member's persistent session would keep receiving its share of the
            # fares; with a clean, non-persistent session the broker gives it to the
            # live members and the edges re-send whatever was not acked.
            return MqttSession(
                dataclasses.replace(settings, session_expiry_s=0), client_id, clean_start=True
            )
        return MqttSession(settings, client_id)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or forever), reconnecting with backoff."""
        stop = stop or asyncio.Event()
        await self.ingestor.refresh_devices()
        _log().info(
            "fare_ingest_started",
            worker_id=self.worker_id,
            shared=self.config.ingest.shared_subscription,
        )
        loop: ReconnectLoop[MqttSession] = ReconnectLoop(
            self._session,
            initial_s=self.config.mqtt.backoff_initial_s,
            max_s=self.config.mqtt.backoff_max_s,
            retry_on=(UplinkError, StoreError),
            on_change=self._changed,
        )
        await loop.run(functools.partial(self._run_connected, loop, stop=stop), stop=stop)
        with contextlib.suppress(StoreError):  # bookkeeping only: the acks went out
            await self.ingestor.record_acks()
        _log().info("fare_ingest_stopped", worker_id=self.worker_id)

    def _changed(self, change: SessionChange) -> None:
        if change.state != "up":
            self.connected.clear()
        for exc in change.errors:
            _log().warning("fare_ingest_disconnected", error=str(exc))

    async def _run_connected(
        self, loop: ReconnectLoop[MqttSession], session: MqttSession, *, stop: asyncio.Event
    ) -> None:
        ing = self.config.ingest
        topic = (
            self.topics.shared_fares(ing.group)
            if ing.shared_subscription
            else self.topics.all_fares()
        )
        await session.subscribe([topic], qos=1)
        loop.up()
        self.connected.set()
        _log().info("fare_ingest_subscribed", topic=topic, worker_id=self.worker_id)
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(
                self._reader(session), name=f"busbell-ingest[{self.worker_id}].reader"
            )
            await tg.create_task(
                self._processor(session, stop), name=f"busbell-ingest[{self.worker_id}].processor"
            )
            reader.cancel()

    async def _reader(self, session: MqttSession) -> None:
        ignore_retained = self.config.ingest.ignore_retained
        async for msg in session.messages():
            parsed = self.topics.parse(msg.topic)
            if parsed is None or parsed.kind != "fares":
                MESSAGES_MALFORMED.labels("bad_topic").inc()
                self.ingestor._warn("fare_message_malformed", "bad_topic", None, topic=msg.topic)
                continue
            if msg.retain and ignore_retained:
                # A bus publishes fares with retain off; a retained batch is either a
                # mistake or an attack, and would be replayed at every (re)subscribe.
                MESSAGES_IGNORED.labels("retained").inc()
                self.ingestor._warn(
                    "fare_message_ignored", "retained", parsed.ids["bus"], bytes=len(msg.payload)
                )
                continue
            await self._queue.put((parsed.ids["bus"], msg.payload))
            self._arrived.append(self._wall())
            self._arrival.set()
        raise UplinkError("message stream ended")

    async def _processor(self, session: MqttSession, stop: asyncio.Event) -> None:
        ing = self.config.ingest
        tick_every = max(0.05, ing.resend_after_s / 2)
        next_tick = self._clock() + tick_every
        next_refresh = self._clock() + ing.device_refresh_s
        # The batch before this one, committing while this one is decoded and verified:
        # the transaction's round trips overlap the CPU work (transactions stay in order).
        inflight: asyncio.Task[BatchResult] | None = None
        inflight_n = 0
        try:
            while not stop.is_set():
                if inflight is not None and not await self._arrives_before(inflight, tick_every):
                    # nothing to prepare beside the commit: its acks go out as soon as
                    # it is done, not when the next message (or the sweep) comes
                    batch = []
                else:
                    batch = await self._next_batch(
                        ing.batch_commit_size, ing.batch_wait_s, tick_every
                    )
                try:
                    prepared = await self._prepare(batch) if batch else None
                    if inflight is not None:
                        task, inflight = inflight, None
                        await self._publish(session, await task)
                    if prepared is not None:
                        inflight = asyncio.create_task(
                            self.ingestor.commit(prepared),
                            name=f"busbell-ingest[{self.worker_id}].commit",
                        )
                        inflight_n = len(batch)
                    now = self._clock()
                    if now >= next_tick:
                        next_tick = now + tick_every
                        # everything that arrived before the oldest queued message is
                        # committed (or in the transaction in flight, which the sweep waits for)
                        if inflight is not None:
                            task, inflight = inflight, None
                            await self._publish(session, await task)
                        caught_up = self._arrived[0] if self._arrived else self._wall()
                        await self._publish(session, await self.ingestor.tick(caught_up))
                    if now >= next_refresh:
                        next_refresh = now + ing.device_refresh_s
                        await self.ingestor.refresh_devices()
                except StoreError as exc:
                    _log().error("fare_ingest_store_failed", error=str(exc), messages=inflight_n)
                    await asyncio.sleep(0.5)
            if inflight is not None:  # stopping: the batch in flight is committed and acked
                task, inflight = inflight, None
                await self._publish(session, await task)
        finally:
            if inflight is not None:
                inflight.cancel()
                with contextlib.suppress(asyncio.CancelledError, StoreError):
                    await inflight

    async def _prepare(self, batch: list[tuple[str, bytes]]) -> Prepared:
        """Decode and verify ``batch``; the transaction in flight runs between messages."""
        prepared = Prepared()
        for bus_id, payload in batch:
            self.ingestor.prepare_one(prepared, bus_id, payload)
            await asyncio.sleep(0)
        self.ingestor.verify_put_off(prepared)
        return prepared

    async def _arrives_before(self, task: asyncio.Task[BatchResult], wait_s: float) -> bool:
        """Whether a message is queued, or comes before ``task`` ends (within ``wait_s``).

        Takes nothing from the queue (a cancel loses no message).
        """
        if not self._queue.empty():
            return True
        self._arrival.clear()
        arrival = asyncio.create_task(self._arrival.wait())
        try:
            await asyncio.wait({arrival, task}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            arrival.cancel()
        return not self._queue.empty()

    async def _next_batch(
        self, max_events: int, wait_s: float, idle_s: float
    ) -> list[tuple[str, bytes]]:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that arrives
        # as the item does (the worker would not stop); a timed-out get leaves the item queued
        try:
            async with asyncio.timeout(idle_s):
                first = await self._queue.get()
        except TimeoutError:
            return []
        self._took()
        batch = [first]
        size = _estimate_events(first[1])
        deadline = self._clock() + wait_s
        while size < max_events:
            if self._queue.empty():
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        item = await self._queue.get()
                except TimeoutError:
                    break
            else:
                item = self._queue.get_nowait()
            self._took()
            batch.append(item)
            size += _estimate_events(item[1])
        return batch

    def _took(self) -> None:
        if self._arrived:  # the reader appends right after its put
            self._arrived.popleft()

    async def _publish(self, session: MqttSession, res: BatchResult) -> None:
        # one QoS-1 round trip for all of them, not one after another per bus
        sends = [
            session.publish(
                self.topics.fares_ack(bus_id),
                canonical_bytes({"upto_seq": upto}),
                qos=1,
                retain=True,
            )
            for bus_id, upto in sorted(res.acks.items())
        ]
        sends += [
            session.publish(
                self.topics.fares_resend(bus_id),
                canonical_bytes({"from_seq": a, "to_seq": b}),
                qos=1,
            )
            for bus_id, (a, b) in sorted(res.resends.items())
        ]
        await asyncio.gather(*sends)
        for bus_id, upto in sorted(res.acks.items()):
            ACKS_PUBLISHED.inc()
            _log().debug("fare_ack_published", bus_id=bus_id, upto_seq=upto)
        for bus_id, (a, b) in sorted(res.resends.items()):
            RESENDS_REQUESTED.inc()
            _log().info("fare_resend_requested", bus_id=bus_id, from_seq=a, to_seq=b)
        self.ingestor.note_acks(res.acks)


def _verify_mode(value: str) -> Verify:
    """``[ingest] verify`` checked: ``runs`` or ``every``."""
    for mode in VERIFY_MODES:
        if value == mode:
            return mode
    raise ConfigError(f"[ingest] verify must be runs or every, got {value!r}")


def _estimate_events(payload: bytes) -> int:
    # A signed event is ~700-900 bytes of JSON; good enough to size transactions.
    return max(1, len(payload) // 800)


GC_YOUNG_THRESHOLD = 7000
"""Allocations between two young-generation collections in an ingest process (Python's
default is 700)."""


def _tune_gc() -> None:
    """Make the cyclic garbage collector cheap for ingest (no cycle is made per event).

    What start-up built (modules, the engine, the schema's metadata) lives as long as the
    process: frozen out of the collector, a full collection no longer walks it (as the
    edge daemon does). And a batch's events, rows and plans (~5 tracked objects per
    event) all live until its commit: with the default threshold every young collection
    scanned and promoted a few hundred of them, to scan them again in the older
    generations. Measured in a scale-out worker (50,000 events, one worker): the
    collector's CPU went from 2.3 to 0.65 us per event.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def run_ingest(config: BackendConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run fare ingest until ``stop`` is set: the entry point of ``busbell backend run``.

    Migrates the database (``[database] migrate_on_start``), imports DEVICES.csv
    (``[files] devices``) when configured, then runs an :class:`IngestWorker`.

    Raises:
        StoreError: when the database cannot be reached or migrated at start.
        KeyFileError: when the configured DEVICES.csv is invalid.
    """
    db = config.database
    engine = engine_for(db)
    try:
        if db.migrate_on_start:
            await migrate(engine)
        if config.files.devices is not None:
            await import_devices(engine, config.files.devices)
        if config.ingest.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(config.ingest.metrics_port)
        _tune_gc()
        await IngestWorker(config, engine).run(stop)
    except BusbellError:
        raise
    finally:
        await engine.dispose()
