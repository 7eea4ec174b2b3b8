"""The chain decisions of fare ingest, online and offline: one sans-I/O core.

A bus's fare events form a hash chain (``seq`` 1, 2, ...; each ``prev`` the SHA-256 of
the record before). Whatever order and batching they arrive in, :class:`ChainPlanner`
decides for each verified record, one by one in arrival order, what it is:

* below the chain head (``seq < next_seq``): a duplicate when its hash equals the
  stored record's (an acked no-op), else ``prev_mismatch`` (it does not link to the
  record before) or ``chain_conflict`` (it links, but another record is stored there);
* at the head: stored when its ``prev`` is the head's hash (else ``prev_mismatch``); a
  rejected record leaves the head where it is, so the genuine one may still come. The
  held records it unblocks follow, each candidate of a seq in arrival order, as if it
  arrived then;
* above the head: held until the gap fills (a copy of a held record is a duplicate),
  at most ``max_held`` per bus (the lowest seqs kept).

Event ids take no decision here: every record's ``event_id`` was checked to be the one
derived from its ``(bus_id, seq)`` and content (:mod:`backend._record_check`,
``event_id_mismatch``), so one record per ``(bus_id, seq)`` is one per event id.

Online ingest (:mod:`backend._ingest`) runs a planner per transaction over the rows it
read under the buses' locks (chain head, stored hashes, held records, open gap) and
writes the plans back; offline ``busbell backend settle``
(:mod:`backend._settle`) runs one per chunk of checked events over an in-memory store.
Only the store differs, so both give the same ledger and the same rejections
(``tests/backend/test_ingest_equivalence.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from busbell._fare_event import GENESIS_PREV

__all__ = [
    "BusPlan",
    "ChainPlanner",
    "ChainPosition",
    "ChainRecord",
    "Gap",
    "Held",
    "Rejection",
    "StoredHashes",
    "past_seqs",
]


class ChainRecord(Protocol):
    """What the chain decisions read of a verified record."""

    @property
    def bus_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def hash(self) -> str:
        """Hex SHA-256 of its canonical bytes with ``sig`` (the next record's ``prev``)."""

    @property
    def prev(self) -> str: ...
    @property
    def event_id(self) -> str: ...
    @property
    def signed(self) -> bool:
        """Whether its signature was verified (``False``: put off, see ``verify``)."""

    @property
    def raw(self) -> str:
        """Its text, for the rejection (may be empty)."""


E = TypeVar("E", bound=ChainRecord)


class StoredHashes(Protocol):
    """A bus's stored records: ``seq -> event_hash`` (a ``dict`` will do)."""

    def get(self, seq: int, /) -> str | None:
        """The hash of the record stored at ``seq``, or ``None``."""


Held = dict[int, dict[str, E]]
"""Records above a bus's chain head: seq -> event hash -> record, in arrival order."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """Something quarantined, with the reason (one of ``REJECTION_REASONS``)."""

    reason: str
    detail: str
    raw: str
    bus_id: str | None = None
    seq: int | None = None
    event_id: str | None = None
    store: bool = True
    """Whether to store it in ``quarantine`` (``False``: over the budget, counted only)."""


@dataclass(frozen=True, slots=True)
class ChainPosition:
    """A bus's committed chain position: the next expected ``seq`` and ``prev``."""

    next_seq: int = 1
    prev: str = GENESIS_PREV


@dataclass(frozen=True, slots=True)
class Gap:
    """A bus's open chain gap and its re-send bookkeeping (a ``chain_state`` row).

    Attributes:
        start: the first missing seq (the chain head).
        end: the last missing seq (before the lowest held record).
        since: when it opened (wall time).
        attempts: re-send requests made for it.
        due: when the next request (or the report) is due; ``None`` once reported.
        reported: given up on and reported to operators.
        last: when the last re-send request went out (``None``: none yet).
    """

    start: int
    end: int
    since: float
    attempts: int = 0
    due: float | None = None
    reported: bool = False
    last: float | None = None


@dataclass(slots=True)
class BusPlan(Generic[E]):
    """What to do for one bus in one transaction (from :class:`ChainPlanner`).

    Attributes:
        bus_id: the bus.
        store: records to store, in seq order (they extend the chain).
        duplicates: records already stored (or held) with the same hash (no-ops, acked).
        rejected: conflicts to quarantine.
        position: the chain position after storing ``store``.
        ack_upto: the cumulative ack to publish after commit (``None``: nothing yet).
        held: the records now held above the head.
        dropped: held records dropped over the bound.
        gap: the open gap after this step (``None``: no gap, or gaps not tracked).
    """

    bus_id: str
    store: list[E] = field(default_factory=list)
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    position: ChainPosition = field(default_factory=ChainPosition)
    ack_upto: int | None = None
    held: Held[E] = field(default_factory=dict)
    dropped: int = 0
    gap: Gap | None = None

    @property
    def held_count(self) -> int:
        """Records held for this bus after the step."""
        return sum(len(c) for c in self.held.values())


def past_seqs(
    position: ChainPosition, events: Iterable[ChainRecord], held: Iterable[int] = ()
) -> list[int]:
    """Stored seqs a planner needs the hash of (the store reads them before planning).

    Each seq below ``position`` among ``events`` and the ``held`` seqs (to tell
    duplicates from conflicts) and the seq before it (the ``prev`` at that position, to
    tell a ``prev_mismatch`` from a ``chain_conflict``).
    """
    nxt = position.next_seq
    seqs = {e.seq for e in events if e.seq < nxt}
    seqs.update(s for s in held if s < nxt)
    seqs.update([s - 1 for s in seqs if s > 1])
    return sorted(seqs)


class _Bus(Generic[E]):
    """One bus's step: its position as planned so far and what the step decided."""

    __slots__ = (
        "bus_id",
        "committed",
        "held",
        "new",
        "next_seq",
        "plan",
        "prev",
        "store",
        "stored",
    )

    def __init__(
        self,
        bus_id: str,
        position: ChainPosition,
        stored: StoredHashes,
        held: Held[E],
    ) -> None:
        self.bus_id = bus_id
        self.committed = position
        self.next_seq = position.next_seq
        self.prev = position.prev
        self.stored = stored
        self.new: dict[int, str] = {}
        self.held = held
        self.plan: BusPlan[E] = BusPlan(bus_id, held=held)
        self.store = self.plan.store

    def stored_at(self, seq: int) -> str:
        h = self.new.get(seq) or self.stored.get(seq)
        if h is None:
            raise ValueError(f"bus {self.plan.bus_id}: stored hash of seq {seq} not given")
        return h

    def prev_at(self, seq: int) -> str | None:
        """The hash a record at ``seq`` must name as ``prev`` (``None``: unknown)."""
        if seq == 1:
            return GENESIS_PREV
        if seq == self.committed.next_seq:  # the committed head
            return self.committed.prev
        return self.new.get(seq - 1) or self.stored.get(seq - 1)


class ChainPlanner(Generic[E]):
    """The chain decisions of one transaction over the buses it touches (no I/O).

    Open each bus with what the store holds (:meth:`open`), then :meth:`take` the new
    records in arrival order (any bus), then :meth:`finish`. The planner keeps nothing
    afterwards: the store writes the plans (or, if its transaction fails, drops them).

    Args:
        verify: checks the signature of a record whose check was put off
            (``signed`` false); returns its rejection if bad (and marks it signed).
        max_held: bound on held records per bus (``None``: no bound; offline settle,
            where no edge can re-send what is dropped).
        resend_after_s: the grace before a new gap's first re-send request (``None``:
            gaps are not tracked; offline settle).
        now: wall time (when a new gap opens).
    """

    def __init__(
        self,
        *,
        verify: Callable[[E], Rejection | None],
        max_held: int | None = 2000,
        resend_after_s: float | None = 1.0,
        now: float = 0.0,
    ) -> None:
        self._verify = verify
        self.max_held = max_held
        self.resend_after_s = resend_after_s
        self.now = now
        self._buses: dict[str, _Bus[E]] = {}

    def open(
        self,
        bus_id: str,
        position: ChainPosition,
        stored: StoredHashes,
        *,
        held: Held[E] | None = None,
        gap: Gap | None = None,
        held_above_head: bool = False,
    ) -> BusPlan[E]:
        """Start planning ``bus_id`` from what the store holds for it.

        Held records whose seq the chain passed (another worker filled it) are settled
        first, and those the head now reaches are linked.

        Args:
            bus_id: the bus.
            position: its committed chain position.
            stored: ``{seq: event_hash}`` of stored records: at least those
                :func:`past_seqs` names (``get`` is all that is used).
            held: its held records; taken over (changed in place, the plan's ``held``).
            gap: its open gap, if any.
            held_above_head: the store knows every held seq is above ``position`` (an
                in-memory store whose held records only this core changes): they are
                not looked through.
        """
        bus = _Bus(bus_id, position, stored, {} if held is None else held)
        bus.plan.gap = gap
        self._buses[bus_id] = bus
        hold = bus.held
        if hold:
            if not held_above_head:
                for seq in sorted(s for s in hold if s < bus.next_seq):
                    for e in hold.pop(seq).values():
                        self._below(bus, e)
            self._drain(bus)
        return bus.plan

    def take(self, e: E) -> None:
        """Decide one new record (its bus opened), in arrival order."""
        bus = self._buses[e.bus_id]
        seq = e.seq
        nxt = bus.next_seq
        if not e.signed and seq >= nxt and (bad := self._verify(e)):
            # put off as a copy, yet not below the head (the hint was stale)
            bus.plan.rejected.append(bad)
            return
        if seq == nxt:
            if self._link(bus, e) and bus.held:
                self._drain(bus)
        elif seq < nxt:
            self._below(bus, e)
        else:
            cands = bus.held.get(seq)
            if cands is None:
                bus.held[seq] = {e.hash: e}
            elif e.hash in cands:
                bus.plan.duplicates += 1
            else:
                cands[e.hash] = e

    def take_all(self, events: Iterable[E]) -> None:
        """:meth:`take` each record, in order.

        The common case inline (a verified record that extends its chain): the same
        decision :meth:`take` and :meth:`_link` make, without their two calls (~0.05 us
        less per event).
        """
        take, buses = self.take, self._buses
        for e in events:
            bus = buses[e.bus_id]
            seq = e.seq
            if seq == bus.next_seq and e.signed and e.prev == bus.prev:
                bus.store.append(e)
                bus.new[seq] = bus.prev = e.hash
                bus.next_seq = seq + 1
                if bus.held:
                    self._drain(bus)
                continue
            take(e)

    def skip_gap(self, bus_id: str) -> int:
        """Give up on the gap below ``bus_id``'s lowest held seq: link from there.

        Offline settle's end of input (no edge can re-send): the lowest held seq's
        first candidate (in arrival order) is taken as linked, as a chain that starts
        there, and what follows it is drained as usual.

        Returns:
            How many seqs were skipped (0: nothing held).
        """
        bus = self._buses[bus_id]
        if not bus.held:
            return 0
        first = min(bus.held)
        skipped = first - bus.next_seq
        bus.next_seq = first
        bus.prev = next(iter(bus.held[first].values())).prev
        self._drain(bus)
        return skipped

    def finish(self) -> list[BusPlan[E]]:
        """The plans of the buses opened, in the order they were opened."""
        plans = []
        for bus in self._buses.values():
            plan = bus.plan
            if self.max_held is not None:
                self._bound(plan)
            plan.position = ChainPosition(bus.next_seq, bus.prev)
            plan.ack_upto = bus.next_seq - 1 if bus.next_seq > 1 else None
            if self.resend_after_s is not None:
                plan.gap = self._gap(plan, bus.next_seq)
            plans.append(plan)
        return plans

    # -- the decisions ----------------------------------------------------------------

    def _link(self, bus: _Bus[E], e: E) -> bool:
        """Store ``e`` at the head if it links."""
        if e.prev != bus.prev:
            bus.plan.rejected.append(_reject(e, "prev_mismatch", f"prev != {bus.prev}"))
            return False
        bus.store.append(e)
        bus.new[e.seq] = bus.prev = e.hash
        bus.next_seq = e.seq + 1
        return True

    def _below(self, bus: _Bus[E], e: E) -> None:
        stored = bus.stored_at(e.seq)
        if e.hash == stored:
            bus.plan.duplicates += 1  # byte-identical to a verified record: no check needed
            return
        bad = self._verify(e) if not e.signed else None
        bus.plan.rejected.append(bad or _conflict(e, e.seq, stored, bus.prev_at(e.seq)))

    def _drain(self, bus: _Bus[E]) -> None:
        """Link what is held at the head, candidates of a seq in arrival order."""
        held = bus.held
        while bus.next_seq in held:
            cands = held.pop(bus.next_seq)
            for e in cands.values():
                if e.seq < bus.next_seq:  # one before it linked
                    self._below(bus, e)
                else:
                    self._link(bus, e)

    def _bound(self, plan: BusPlan[E]) -> None:
        """Keep the lowest seqs (they fill the gap first) up to ``max_held``."""
        held = plan.held
        limit = self.max_held
        assert limit is not None
        if sum(len(c) for c in held.values()) <= limit:
            return
        n = 0
        for seq in sorted(held):
            if n + len(held[seq]) > limit:
                plan.dropped += len(held.pop(seq))
            else:
                n += len(held[seq])

    def _gap(self, plan: BusPlan[E], next_seq: int) -> Gap | None:
        if not plan.held:
            return None
        assert self.resend_after_s is not None
        end = min(plan.held) - 1
        gap = plan.gap
        if gap is not None and gap.start == next_seq:
            return dataclasses.replace(gap, end=end)
        # a new gap, or it moved (part of it arrived): it starts over
        return Gap(next_seq, end, self.now, due=self.now + self.resend_after_s)


def _conflict(e: ChainRecord, seq: int, stored: str, here: str | None) -> Rejection:
    """Another record than the stored one at ``seq``: which of the two reasons.

    ``prev_mismatch`` when it does not even link to the record before (``here``), else
    ``chain_conflict`` (it links, but differs from what is stored).
    """
    if here is not None and e.prev != here:
        return _reject(e, "prev_mismatch", f"seq {seq}: prev != {here}")
    return _reject(e, "chain_conflict", f"seq {seq} is stored with hash {stored}")


def _reject(e: ChainRecord, reason: str, detail: str) -> Rejection:
    return Rejection(reason, detail, e.raw, e.bus_id, e.seq, e.event_id)
