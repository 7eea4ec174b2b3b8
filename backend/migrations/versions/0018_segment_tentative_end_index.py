"""Tentative pieces by end time: ``ix_rider_segments_tentative_end_t``.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 03:30:00

* A partial index of ``rider_segments.end_t`` over tentative pieces only
  (``start_cause = 'tentative'``): the settlement worker's link retention
  (``[settlement] tentative_link_days``, docs/backend.md) reads, each pass, the pieces
  that ended since its last run, and deletes the rows (a rid's link to its rider) of
  those settlement dropped. Confirmed segments, nearly all rows, are not in it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_WHERE = sa.text("start_cause = 'tentative'")


def upgrade() -> None:
    op.create_index(
        "ix_rider_segments_tentative_end_t",
        "rider_segments",
        ["end_t"],
        postgresql_where=_WHERE,
        sqlite_where=_WHERE,
    )


def downgrade() -> None:
    op.drop_index("ix_rider_segments_tentative_end_t", table_name="rider_segments")
