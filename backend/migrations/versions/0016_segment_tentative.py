"""Tentative segments' co-movement evidence: ``rider_segments.co_n``, ``co_lo``, ``co_hi``.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 21:40:00

* ``rider_segments.co_n`` (nullable integer), ``co_lo``, ``co_hi`` (nullable doubles):
  ``evidence.co_n``, ``co_lo``, ``co_hi`` of a ``tentative`` fare event (a rid never
  confirmed aboard on its own evidence, alive across a rid rotation). The journey builder
  sums the tentative pieces of one rider on one bus trip that adjoin across the rotation
  and keeps them as one leg only if together they meet the edge's confirmation
  (docs/backend.md, "Tentative segments"). ``NULL`` for every other segment. No backfill:
  no event before this revision was tentative.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rider_segments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("co_n", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("co_lo", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("co_hi", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rider_segments", schema=None) as batch_op:
        batch_op.drop_column("co_hi")
        batch_op.drop_column("co_lo")
        batch_op.drop_column("co_n")
