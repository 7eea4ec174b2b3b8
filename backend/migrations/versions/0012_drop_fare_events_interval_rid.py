"""``fare_events``: drop the ``(interval, rid)`` index no query uses.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 03:55:00

Every ledger row paid for it on insert (a B-tree insert at a random place: rids are
random), and no statement reads ``fare_events`` by interval and rid: settlement reads a
bus's rows by ``(bus_id, seq)``, re-resolution joins on ``event_id``, and rid resolution
has its own ``rid_lookup``. Dropping it cut the SQLite ledger's page writes by ~7 % in
``benchmarks.backend_ingest`` (20,000 events; the index's pages are dirtied by nearly
every commit), and PostgreSQL's index maintenance likewise. An operator who wants to look
rows up by rid can create it again (``CREATE INDEX ... ON fare_events (interval, rid)``).
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_fare_events_interval_rid", table_name="fare_events")


def downgrade() -> None:
    op.create_index("ix_fare_events_interval_rid", "fare_events", ["interval", "rid"])
