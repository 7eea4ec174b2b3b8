"""Rider-days that failed to settle: ``settlement_dirty.attempts``, ``failed_at``, ``error``.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 06:30:00

* ``settlement_dirty.attempts`` (integer, 0), ``failed_at`` (double, nullable) and
  ``error`` (text, nullable): a marked rider-day whose recomputation raised keeps its
  mark with how many times in a row it failed, when it last did and why (the exception's
  type and message). The settlement worker puts it aside (it retries it after a backoff
  doubling up to ``[settlement] retry_max_s``, at once when a new segment marks it again,
  and at a restarted worker's first pass) so one rider-day that always fails cannot
  stall every other rider's (docs/backend.md, "Failures"). Existing marks: 0 attempts.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("settlement_dirty", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("failed_at", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("settlement_dirty", schema=None) as batch_op:
        batch_op.drop_column("error")
        batch_op.drop_column("failed_at")
        batch_op.drop_column("attempts")
