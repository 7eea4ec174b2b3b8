"""The riders' level of a segment's bus: ``rider_segments.riders_lvl``.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 00:30:00

* ``rider_segments.riders_lvl`` (nullable double): ``evidence.riders_lvl`` of the fare
  event, the level (dBm) at which its bus heard the riders aboard while it heard the
  rid. The journey builder settles two overlapping legs of one rider on different buses
  in favour of the much stronger one when the weaker was heard well below the riders its
  own bus carried (``overlap_loser_under_riders_db``, docs/backend.md): a rider heard
  through that bus's windows, at any token power. ``NULL`` for events that do not carry
  it (every event before this revision: no backfill; their overlaps are settled as
  before).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rider_segments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("riders_lvl", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rider_segments", schema=None) as batch_op:
        batch_op.drop_column("riders_lvl")
