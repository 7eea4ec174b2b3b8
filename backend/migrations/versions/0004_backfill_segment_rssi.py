"""Backfill ``rider_segments.rssi_med`` from the events' evidence; re-settle held overlaps.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 14:00:00

Rows settled before 0003 have ``rssi_med`` ``NULL`` although their fare event's
``evidence.rssi_med`` says it (``fare_events`` are facts and keep it): so their overlaps
stayed held for review even when the overlap rule could settle them. This fills the
column from the evidence (events whose evidence has no usable number stay ``NULL``) and
marks the rider-days of journeys held as a suspected replay dirty, so the settlement
worker recomputes them under the current rule on its next pass. Nothing else is
touched: other rider-days keep their journeys and charges.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

from backend._db import insert_ignore
from backend._legs import FLAG_SUSPECTED_REPLAY, evidence_rssi

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BATCH = 5000

_segments = sa.table(
    "rider_segments",
    sa.column("event_id", sa.String()),
    sa.column("rssi_med", sa.Double()),
)
_events = sa.table(
    "fare_events",
    sa.column("event_id", sa.String()),
    sa.column("evidence", sa.JSON()),
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


def upgrade() -> None:
    conn = op.get_bind()
    after = ""
    while True:
        rows = conn.execute(
            sa.select(_segments.c.event_id, _events.c.evidence)
            .join(_events, _events.c.event_id == _segments.c.event_id)
            .where(_segments.c.rssi_med.is_(None), _segments.c.event_id > after)
            .order_by(_segments.c.event_id)
            .limit(_BATCH)
        ).all()
        if not rows:
            break
        after = rows[-1].event_id
        values = [
            {"eid": r.event_id, "rssi": rssi}
            for r in rows
            if (rssi := evidence_rssi(r.evidence)) is not None
        ]
        if values:
            conn.execute(
                _segments.update()
                .where(_segments.c.event_id == sa.bindparam("eid"))
                .values(rssi_med=sa.bindparam("rssi")),
                values,
            )
    held = conn.execute(
        sa.select(_journeys.c.rider_id, _journeys.c.service_day, _journeys.c.flags)
        .where(_journeys.c.charged.is_(False))
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
    # the backfilled values are derived from fare_events and harmless under 0003
    pass
