"""The rider registry as the settlement worker needs it, kept current from a change feed.

``riders.changed_seq`` (migration 0010) is stamped by triggers on every insert and update
of a rider, and changes commit in its order. :class:`RiderFeed` remembers the last
``(changed_seq, rider_id)`` it read and on each :meth:`RiderFeed.refresh` reads only the
rows after it, in pages: the first refresh loads every rider (in bulk: their ``rid_key``
derived in the table builder's worker processes), later ones the few enrolled, revoked,
re-keyed or re-categorised since. What it keeps:

* the keys, in the resolver's :class:`~backend._resolve.RiderKeyring` (a new rider is
  added; a rider whose ``token_key`` changed is re-keyed: the old key's rids stop
  resolving);
* per rider index, the fare category (one byte) and, for revoked riders only, the
  revocation time (a dict: revocations are few). Segments that start at or after it are
  never charged (``revoked_rider``); a rider revoked without a time: all of them.

No per-rider Python object: 10 million riders cost 1 byte each here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from backend._db import riders
from backend._resolve import RiderKeyring, TableBuilder
from busbell import get_logger

__all__ = ["FeedPass", "RiderFeed"]

PAGE_ROWS = 100_000
"""Rows read per query (bounded memory however many riders changed)."""


def _log() -> Any:
    return get_logger("backend.rider_feed")


@dataclass(slots=True)
class FeedPass:
    """What one :meth:`RiderFeed.refresh` read.

    Attributes:
        rows: changed rider rows read.
        added: riders added to the keyring.
        rekeyed: riders whose ``token_key`` changed.
        invalid: rows skipped for an invalid ``token_key`` (logged).
    """

    rows: int = 0
    added: int = 0
    rekeyed: int = 0
    invalid: int = 0


class RiderFeed:
    """Keeps a keyring, riders' categories and revocations current (see the module docs).

    Args:
        keyring: the resolver's keyring (riders are added to it).
        categories: the fare categories the rules know; others get ``default_category``.
        default_category: the category of riders with an unknown one.
        builder: derives new riders' ``rid_key`` values (worker processes for bulk).
        page_rows: rows per query.
    """

    def __init__(
        self,
        keyring: RiderKeyring,
        categories: Sequence[str],
        default_category: str,
        *,
        builder: TableBuilder | None = None,
        page_rows: int = PAGE_ROWS,
    ) -> None:
        self.keyring = keyring
        self.default_category = default_category
        self._names = [default_category, *sorted(set(categories) - {default_category})]
        self._codes = {c: k for k, c in enumerate(self._names)}
        self._category = bytearray()  # per keyring index; 0 = the default
        self._revoked_at: dict[int, float] = {}
        self.builder = builder
        self.page_rows = max(1, page_rows)
        self._seen: tuple[int, str] = (-1, "")

    @property
    def seen(self) -> tuple[int, str]:
        """The ``(changed_seq, rider_id)`` of the last row read."""
        return self._seen

    def category(self, rider_id: str) -> str:
        """A rider's fare category (the default for an unknown rider)."""
        idx = self.keyring.index_of(rider_id)
        if idx is None or idx >= len(self._category):
            return self.default_category
        return self._names[self._category[idx]]

    def revoked_at(self, idx: int) -> float | None:
        """When the rider at keyring index ``idx`` was revoked (``-inf``: no time), or ``None``."""
        return self._revoked_at.get(idx)

    async def refresh(self, engine: AsyncEngine) -> FeedPass:
        """Read the riders changed since the last refresh (all of them the first time)."""
        done = FeedPass()
        r = riders.c
        cols = (r.rider_id, r.token_key, r.status, r.revoked_at, r.category, r.changed_seq)
        while True:
            seq, rid = self._seen
            q = (
                sa.select(*cols)
                .where(sa.tuple_(r.changed_seq, r.rider_id) > sa.tuple_(seq, rid))
                .order_by(r.changed_seq, r.rider_id)
                .limit(self.page_rows)
            )
            async with engine.connect() as conn:
                rows = (await conn.execute(q)).all()
            if not rows:
                break
            self._apply(rows, done)
            last = rows[-1]
            self._seen = (int(last.changed_seq), last.rider_id)
            if len(rows) < self.page_rows:
                break
        if done.rows:
            _log().info(
                "rider_changes_read",
                rows=done.rows,
                added=done.added,
                rekeyed=done.rekeyed,
                invalid=done.invalid,
                seen_seq=self._seen[0],
            )
        return done

    def _apply(self, rows: Sequence[Any], done: FeedPass) -> None:
        ring = self.keyring
        done.rows += len(rows)
        known = ring.index_of_many([row.rider_id for row in rows])
        new_ids: list[str] = []
        new_keys: list[bytes] = []
        new_rows: list[Any] = []
        for row, idx in zip(rows, known, strict=True):
            key = _token_key(row)
            if key is None:
                done.invalid += 1
                continue
            if idx is None:
                new_ids.append(row.rider_id)
                new_keys.append(key)
                new_rows.append(row)
                continue
            if ring.token_key(idx) != key:
                self._revoked_at.pop(idx, None)
                self._set(ring.rekey(row.rider_id, key), row)
                done.rekeyed += 1
                _log().info("rider_rekeyed", rider_id=row.rider_id)
            else:
                self._set(idx, row)
        if new_ids:
            first = ring.extend(new_ids, b"".join(new_keys), builder=self.builder)
            done.added += len(new_ids)
            codes = self._codes
            if first == len(self._category):  # the usual case: appended in order
                self._category += bytes([codes.get(row.category, 0) for row in new_rows])
                for k, row in enumerate(new_rows):
                    if row.status == "revoked":
                        self._set_revoked(first + k, row)
            else:
                for k, row in enumerate(new_rows):
                    self._set(first + k, row)

    def _set(self, idx: int, row: Any) -> None:
        if idx >= len(self._category):
            self._category.extend(bytes(len(self.keyring) - len(self._category)))
        self._category[idx] = self._codes.get(row.category, 0)
        self._set_revoked(idx, row)

    def _set_revoked(self, idx: int, row: Any) -> None:
        if row.status == "revoked":
            self._revoked_at[idx] = (
                float(row.revoked_at) if row.revoked_at is not None else float("-inf")
            )
        else:
            self._revoked_at.pop(idx, None)


def _token_key(row: Any) -> bytes | None:
    try:
        key = bytes.fromhex(row.token_key)
    except (TypeError, ValueError):
        key = b""
    if len(key) != 16:
        _log().warning("rider_key_invalid", rider_id=row.rider_id)
        return None
    return key
