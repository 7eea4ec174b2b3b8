"""Segment advert counts: ``rider_segments.n_adv``, backfilled; held overlaps re-settled.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 10:05:00

* ``rider_segments.n_adv`` (nullable): ``evidence.n_adv`` of the fare event, the adverts
  of the rid its edge decoded over the segment. The journey builder settles two
  overlapping legs of one rider on different buses in favour of the one heard
  ``overlap_rate_margin_db`` stronger whose bus also decoded the token's adverts
  ``overlap_rate_ratio`` times as often (docs/backend.md), where the RSSI margin alone
  (``overlap_margin_db``) held both.
* Rows settled before this revision get the count from their fare event's evidence
  (``fare_events`` are facts and keep it; joined on ``(bus_id, seq)``); events whose
  evidence has no usable count stay ``NULL`` (their overlaps are settled by RSSI alone,
  as before). The rider-days of journeys held as a suspected replay are marked dirty,
  so the settlement worker recomputes them under the current rule on its next pass;
  other rider-days keep their journeys and charges.
"""

from __future__ import annotations

import json
import time

import sqlalchemy as sa
from alembic import op

from backend._db import insert_ignore
from backend._legs import FLAG_SUSPECTED_REPLAY, evidence_count

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_BATCH = 5000

_segments = sa.table(
    "rider_segments",
    sa.column("bus_id", sa.String()),
    sa.column("seq", sa.BigInteger()),
    sa.column("n_adv", sa.Integer()),
)
_events = sa.table(
    "fare_events",
    sa.column("bus_id", sa.String()),
    sa.column("seq", sa.BigInteger()),
    sa.column("evidence", sa.Text()),
)
_journeys = sa.table(
    "journeys",
    sa.column("rider_id", sa.String()),
    sa.column("service_day", sa.String()),
    sa.column("charged", sa.Boolean()),
    sa.column("flags", sa.JSON()),
)
_dirty = sa.table(
    "settlement_dirty",
    sa.column("rider_id", sa.String()),
    sa.column("service_day", sa.String()),
    sa.column("marked_at", sa.Double()),
)


def _count(evidence: str | None) -> int | None:
    if evidence is None:
        return None
    try:
        return evidence_count(json.loads(evidence))
    except ValueError:
        return None


def upgrade() -> None:
    with op.batch_alter_table("rider_segments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("n_adv", sa.Integer(), nullable=True))
    conn = op.get_bind()
    after: tuple[str, int] = ("", -1)
    while True:
        rows = conn.execute(
            sa.select(_segments.c.bus_id, _segments.c.seq, _events.c.evidence)
            .join(
                _events,
                sa.and_(_events.c.bus_id == _segments.c.bus_id, _events.c.seq == _segments.c.seq),
            )
            .where(sa.tuple_(_segments.c.bus_id, _segments.c.seq) > sa.tuple_(*after))
            .order_by(_segments.c.bus_id, _segments.c.seq)
            .limit(_BATCH)
        ).all()
        if not rows:
            break
        after = (rows[-1].bus_id, rows[-1].seq)
        values = [
            {"b": r.bus_id, "s": r.seq, "n": n}
            for r in rows
            if (n := _count(r.evidence)) is not None
        ]
        if values:
            conn.execute(
                _segments.update()
                .where(_segments.c.bus_id == sa.bindparam("b"), _segments.c.seq == sa.bindparam("s"))
                .values(n_adv=sa.bindparam("n")),
                values,
            )
    held = conn.execute(
        sa.select(_journeys.c.rider_id, _journeys.c.service_day, _journeys.c.flags).where(
            _journeys.c.charged.is_(False)
        )
    ).all()
    days = sorted(
        {(r.rider_id, r.service_day) for r in held if FLAG_SUSPECTED_REPLAY in (r.flags or ())}
    )
    if days:
        now = time.time()
        conn.execute(
            insert_ignore(_dirty, conn.dialect.name),
            [{"rider_id": rider, "service_day": day, "marked_at": now} for rider, day in days],
        )


def downgrade() -> None:
    with op.batch_alter_table("rider_segments", schema=None) as batch_op:
        batch_op.drop_column("n_adv")
