"""The signed offline fare store: an append-only, hash-chained event log in SQLite.

Invariants (see ``docs/edge.md``):

* ``seq`` counts up from 1 with no gaps and is never reused, even after pruning or a
  crash: the chain state row (``last_seq``, ``prev``) is advanced in the SAME
  transaction that inserts the event, and an event counts as recorded only once that
  transaction has committed (WAL, ``synchronous=FULL``).
* Acks are cumulative and monotone (``acked_upto``); a stale ack is ignored, an ack
  beyond the last recorded ``seq`` is refused and counted.
* Only acked events are ever pruned, and only once older than the retention.

Every ``sqlite3.Error`` is translated into :class:`busbell.StoreError` by
:func:`_translate`, the one place that knows the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import aiosqlite

from busbell import GENESIS_PREV, StoreError, canonical_bytes, get_logger, sha256_hex
from edge._bells_record import MissedDraft
from edge._events import EventBuilder
from edge._segment import SegmentDraft

__all__ = ["SCHEMA_VERSION", "FareStore", "StoreStats", "StoredEvent"]

SCHEMA_VERSION = 1
DAY_S = 86400.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY,
        event BLOB NOT NULL,
        hash TEXT NOT NULL,
        acked INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS chain (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        last_seq INTEGER NOT NULL,
        prev TEXT NOT NULL,
        acked_upto INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_acked_created ON events (acked, created)",
    """CREATE TABLE IF NOT EXISTS classifier_checkpoint (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        t REAL NOT NULL,
        state BLOB NOT NULL
    )""",
)

_log = get_logger("edge.store")
T = TypeVar("T")


@contextlib.asynccontextmanager
async def _translate(op: str) -> AsyncIterator[None]:
    """Translate driver errors raised inside the block into :class:`StoreError`."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"fare store: {op} failed: {exc}") from exc
    except ValueError as exc:  # aiosqlite: "no active connection"
        raise StoreError(f"fare store: {op} failed: {exc}") from exc


async def _to_completion(aw: Awaitable[T]) -> T:
    """Await a write to its end even when the caller is cancelled meanwhile.

    A cancel landing inside a transaction used to leave it open behind the lock (during
    ``BEGIN``: the next write failed "cannot start a transaction within a transaction"),
    or to leave memory behind the disk (after ``COMMIT``: the caller, told nothing was
    recorded, records the same segments again). The write runs as its own task and the
    caller waits for it whatever happens; a cancel that arrived meanwhile is delivered
    again once the write has ended, so the caller sees the write's own outcome first.
    """
    task = asyncio.ensure_future(aw)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled and (me := asyncio.current_task()) is not None:
        me.cancel()  # raised at the caller's next await
    return task.result()


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One recorded event as the store keeps it.

    Attributes:
        seq: the event's sequence number.
        data: the event's canonical JSON bytes (``sig`` included).
        acked: whether the backend acknowledged it.
        created: wall time the event was recorded.
    """

    seq: int
    data: bytes
    acked: bool
    created: float

    def event(self) -> dict[str, Any]:
        """The decoded event."""
        out: dict[str, Any] = json.loads(self.data)
        return out


@dataclass(slots=True)
class StoreStats:
    """Counters of the store (exported in status and metrics)."""

    events_recorded: int = 0
    acks_stale: int = 0
    acks_beyond_last: int = 0
    events_pruned: int = 0


class FareStore:
    """The edge's durable fare event log (open with :meth:`open`, or ``async with``).

    Args:
        db: an open aiosqlite connection in autocommit mode (``isolation_level=None``).
        builder: makes signed events from drafts.
        clock: wall clock for ``created`` (injected; the replay passes trace time).
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
        builder: EventBuilder,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._builder = builder
        self._clock = clock
        self._lock = asyncio.Lock()
        self.last_seq = 0
        self.prev = GENESIS_PREV
        self.acked_upto = 0
        self.stats = StoreStats()

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        builder: EventBuilder,
        *,
        clock: Callable[[], float] = time.time,
    ) -> FareStore:
        """Open (creating if needed) the store at ``path`` (``":memory:"`` works).

        Raises:
            busbell.StoreError: when the database cannot be opened, has another schema
                version or an inconsistent chain state.
        """
        async with _translate("open"):
            db = await aiosqlite.connect(os.fspath(path), isolation_level=None)
        store = cls(db, builder, clock=clock)
        try:
            await store._init()
        except BaseException:
            await db.close()
            raise
        return store

    async def _init(self) -> None:
        db = self._db
        async with _translate("init"):
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            try:
                await db.execute("BEGIN IMMEDIATE")
                for stmt in _SCHEMA:
                    await db.execute(stmt)
                rows = list(await db.execute_fetchall("SELECT version FROM schema_version"))
                if not rows:
                    await db.execute(
                        "INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,)
                    )
                elif rows[0][0] != SCHEMA_VERSION:
                    raise StoreError(
                        f"fare store: schema version {rows[0][0]} is not {SCHEMA_VERSION}"
                    )
                await db.execute(
                    "INSERT OR IGNORE INTO chain (id, last_seq, prev, acked_upto) "
                    "VALUES (1, 0, ?, 0)",
                    (GENESIS_PREV,),
                )
                await db.execute("COMMIT")
            except BaseException:
                await self._rollback()
                raise
            chain = list(await db.execute_fetchall("SELECT last_seq, prev, acked_upto FROM chain"))
            top = list(await db.execute_fetchall("SELECT MAX(seq) FROM events"))
        self.last_seq, self.prev, self.acked_upto = int(chain[0][0]), chain[0][1], int(chain[0][2])
        max_seq = top[0][0]
        if max_seq is not None and max_seq != self.last_seq:
            raise StoreError(
                f"fare store: chain state says last seq {self.last_seq}, events reach {max_seq}"
            )
        _log.info(
            "fare_store_opened",
            last_seq=self.last_seq,
            acked_upto=self.acked_upto,
            backlog=self.last_seq - self.acked_upto,
        )

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error, ValueError):
            await self._db.execute("ROLLBACK")

    async def close(self) -> None:
        """Close the database (idempotent)."""
        async with _translate("close"):
            await self._db.close()

    async def __aenter__(self) -> FareStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def append(self, draft: SegmentDraft | MissedDraft) -> dict[str, Any]:
        """Number, chain, sign and durably record one segment; returns the event.

        The event and the advanced chain state commit in one transaction; the event
        counts as recorded only once this returns.

        Raises:
            busbell.ContractError: when the draft does not make a valid event.
            busbell.StoreError: when SQLite fails (nothing is recorded then).
        """
        return (await self.append_many([draft]))[0]

    async def save_checkpoint(self, state: bytes, t: float) -> None:
        """Replace the classifier checkpoint (the pipeline's open presences at ``t``).

        Raises:
            busbell.StoreError: when SQLite fails (the previous checkpoint is kept).
        """
        async with self._lock, _translate("checkpoint"):
            await self._db.execute(
                "INSERT OR REPLACE INTO classifier_checkpoint (id, t, state) VALUES (1, ?, ?)",
                (t, state),
            )

    async def load_checkpoint(self) -> tuple[float, bytes] | None:
        """The classifier checkpoint ``(t, state)``, or ``None`` if there is none.

        Raises:
            busbell.StoreError: when SQLite fails.
        """
        async with _translate("checkpoint"):
            rows = list(
                await self._db.execute_fetchall("SELECT t, state FROM classifier_checkpoint")
            )
        return (float(rows[0][0]), bytes(rows[0][1])) if rows else None

    async def append_many(
        self,
        drafts: Iterable[SegmentDraft | MissedDraft],
        *,
        checkpoint: tuple[bytes, float] | None = None,
    ) -> list[dict[str, Any]]:
        """Record several drafts in one transaction (all or none); returns the events.

        Segments and missed-stop records share the chain (``seq``, ``prev``, ``sig``).
        With ``checkpoint=(state, t)`` the classifier checkpoint is replaced in the same
        transaction, so a restart never emits again a segment already recorded.

        Raises:
            busbell.ContractError: when a draft does not make a valid event (nothing
                is recorded then).
            busbell.StoreError: when SQLite fails (nothing is recorded then).
        """
        return await _to_completion(self._append_many(drafts, checkpoint))

    async def _append_many(
        self,
        drafts: Iterable[SegmentDraft | MissedDraft],
        checkpoint: tuple[bytes, float] | None,
    ) -> list[dict[str, Any]]:
        async with self._lock:
            seq, prev = self.last_seq, self.prev
            events: list[dict[str, Any]] = []
            rows: list[tuple[int, bytes, str, float]] = []
            now = self._clock()
            for draft in drafts:
                seq += 1
                event = self._builder.build(draft, seq, prev)
                data = canonical_bytes(event)
                prev = sha256_hex(data)
                events.append(event)
                rows.append((seq, data, prev, now))
            if not rows:
                return []
            db = self._db
            async with _translate("append"):
                try:
                    await db.execute("BEGIN IMMEDIATE")
                    await db.executemany(
                        "INSERT INTO events (seq, event, hash, acked, created) "
                        "VALUES (?, ?, ?, 0, ?)",
                        rows,
                    )
                    await db.execute(
                        "UPDATE chain SET last_seq = ?, prev = ? WHERE id = 1", (seq, prev)
                    )
                    if checkpoint is not None:
                        await db.execute(
                            "INSERT OR REPLACE INTO classifier_checkpoint (id, t, state) "
                            "VALUES (1, ?, ?)",
                            (checkpoint[1], checkpoint[0]),
                        )
                    await db.execute("COMMIT")
                except BaseException:
                    await self._rollback()
                    raise
            self.last_seq, self.prev = seq, prev
            self.stats.events_recorded += len(rows)
        for event in events:
            if event["type"] == "missed":
                _log.info(
                    "missed_stop_recorded",
                    seq=event["seq"],
                    event_id=event["event_id"],
                    request_id=event["request_id"],
                    stop_id=event["stop_id"],
                )
            else:
                _log.info(
                    "fare_event_recorded",
                    seq=event["seq"],
                    event_id=event["event_id"],
                    end_cause=event["end"]["cause"],
                )
        return events

    @staticmethod
    def _rows(rows: Iterable[Sequence[Any]]) -> list[StoredEvent]:
        return [StoredEvent(int(r[0]), bytes(r[1]), bool(r[2]), float(r[3])) for r in rows]

    async def unacked(self, limit: int, *, after_seq: int = 0) -> list[StoredEvent]:
        """Up to ``limit`` unacked events with ``seq > after_seq``, in order.

        Raises:
            busbell.StoreError: when SQLite fails.
        """
        lo = max(after_seq, self.acked_upto)
        async with _translate("unacked"):
            rows = await self._db.execute_fetchall(
                "SELECT seq, event, acked, created FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (lo, limit),
            )
        return self._rows(rows)

    async def range(self, from_seq: int, to_seq: int) -> list[StoredEvent]:
        """The kept events with ``from_seq <= seq <= to_seq`` (acked or not), in order.

        Raises:
            busbell.StoreError: when SQLite fails.
        """
        async with _translate("range"):
            rows = await self._db.execute_fetchall(
                "SELECT seq, event, acked, created FROM events WHERE seq BETWEEN ? AND ? "
                "ORDER BY seq",
                (from_seq, to_seq),
            )
        return self._rows(rows)

    async def first_kept_seq(self) -> int | None:
        """The lowest ``seq`` still kept, or ``None`` when the store holds no event.

        Raises:
            busbell.StoreError: when SQLite fails.
        """
        async with _translate("first_kept_seq"):
            rows = list(await self._db.execute_fetchall("SELECT MIN(seq) FROM events"))
        return None if rows[0][0] is None else int(rows[0][0])

    async def ack(self, upto_seq: int) -> bool:
        """Mark every event with ``seq <= upto_seq`` acked; returns whether it advanced.

        A stale ack (not beyond the current ``acked_upto``) is ignored; an ack beyond the
        last recorded ``seq`` is refused, counted and logged (``fare_ack_beyond_last``).

        Raises:
            busbell.StoreError: when SQLite fails.
        """
        return await _to_completion(self._ack(upto_seq))

    async def _ack(self, upto_seq: int) -> bool:
        async with self._lock:
            if upto_seq <= self.acked_upto:
                self.stats.acks_stale += 1
                _log.debug("fare_ack_stale", upto_seq=upto_seq, acked_upto=self.acked_upto)
                return False
            if upto_seq > self.last_seq:
                self.stats.acks_beyond_last += 1
                _log.warning("fare_ack_beyond_last", upto_seq=upto_seq, last_seq=self.last_seq)
                return False
            db = self._db
            async with _translate("ack"):
                try:
                    await db.execute("BEGIN IMMEDIATE")
                    await db.execute(
                        "UPDATE events SET acked = 1 WHERE seq > ? AND seq <= ?",
                        (self.acked_upto, upto_seq),
                    )
                    await db.execute("UPDATE chain SET acked_upto = ? WHERE id = 1", (upto_seq,))
                    await db.execute("COMMIT")
                except BaseException:
                    await self._rollback()
                    raise
            self.acked_upto = upto_seq
        return True

    async def prune(self, keep_acked_days: float, now: float) -> int:
        """Delete acked events recorded more than ``keep_acked_days`` before ``now``.

        Unacked events are never pruned. The chain state is untouched, so ``seq`` is
        never reused. Returns the number of events deleted.

        Raises:
            busbell.StoreError: when SQLite fails.
        """
        cutoff = now - keep_acked_days * DAY_S
        async with self._lock, _translate("prune"):
            cur = await self._db.execute(
                "DELETE FROM events WHERE acked = 1 AND created < ?", (cutoff,)
            )
            n = max(cur.rowcount, 0)
            await cur.close()
        self.stats.events_pruned += n
        if n:
            _log.info("fare_events_pruned", count=n, keep_acked_days=keep_acked_days)
        return n

    async def backlog(self) -> int:
        """How many recorded events the backend has not acknowledged yet."""
        return self.last_seq - self.acked_upto

    async def oldest_unacked_created(self) -> float | None:
        """When the oldest unacked event was recorded (for the upload-lag metric).

        Raises:
            busbell.StoreError: when SQLite fails.
        """
        if self.last_seq == self.acked_upto:
            return None
        async with _translate("oldest_unacked"):
            rows = list(
                await self._db.execute_fetchall(
                    "SELECT created FROM events WHERE seq = ?", (self.acked_upto + 1,)
                )
            )
        return float(rows[0][0]) if rows else None
