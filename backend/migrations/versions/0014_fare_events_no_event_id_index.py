"""``fare_events``: drop the unique ``event_id`` index (ids are derived, not chosen).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 09:40:00

Ingest now refuses a record whose ``event_id`` is not the one derived from it
(``event_id_mismatch``: ``busbell.derive_event_id(bus_id, seq, rid, start.t)``, for a
``missed`` record ``derive_missed_event_id(bus_id, seq, request_id, passed.t)`` with its
type tag), so the primary key ``(bus_id, seq)`` fixes the id: two rows share one only if
SHA-256 collides in its first 128 bits. The index enforced nothing more, and no
statement reads ``fare_events`` by ``event_id`` (re-resolution joins
``unresolved_segments`` on ``(bus_id, seq)``), yet every insert paid for it: a B-tree
insert at a random place (ids are hashes). Into a 200,000-row SQLite ledger that was
34.4 us of CPU and 25.4 KiB written per row against 10.8 us / 5.5 KiB without it
(docs/benchmarks.md); on PostgreSQL one more index entry, WAL record and dirtied page
per row.

``missed_stops`` keeps its unique ``event_id`` index: the operators' API looks records up
by it (``GET /ops/missed-stops/{event_id}``), and the table is small.

Rows stored before keep the ids they came with (edges have always derived them). On
PostgreSQL the upgrade only drops the index (a moment's exclusive lock); on SQLite the
table is rebuilt (Alembic's batch mode: a copy of every row), as for 0013. The downgrade
builds the unique index again from the table (PostgreSQL: writes to ``fare_events``
blocked meanwhile; SQLite: another copy), and fails if two rows share an id.
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fare_events", recreate="auto") as batch:
        batch.drop_constraint("uq_fare_events_event_id", type_="unique")


def downgrade() -> None:
    with op.batch_alter_table("fare_events", recreate="auto") as batch:
        batch.create_unique_constraint("uq_fare_events_event_id", ["event_id"])
