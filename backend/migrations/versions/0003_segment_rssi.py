"""Segment strength: the edge's median RSSI of each resolved segment.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 18:00:00

* ``rider_segments.rssi_med`` (nullable): ``evidence.rssi_med`` of the fare event. The
  journey builder settles two overlapping legs of one rider on different buses in favour
  of the much stronger one (a bus alongside heard the rider through its windows). Rows
  settled before this revision have ``NULL``: their overlaps stay held for review, as
  before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rider_segments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rssi_med", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rider_segments", schema=None) as batch_op:
        batch_op.drop_column("rssi_med")
