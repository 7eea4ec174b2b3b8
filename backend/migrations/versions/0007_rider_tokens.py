"""Riders' API bearer tokens.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 19:10:00

* ``rider_tokens``: the SHA-256 of each bearer token the rider API issued (at enrolment
  or on request), its rider, and when a newer token revoked it. Riders enrolled before
  this revision have no token: an operator issues one
  (``POST /riders/{id}/token``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rider_tokens",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("rider_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("revoked_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_rider_tokens")),
    )
    op.create_index(
        op.f("ix_rider_tokens_rider_id"), "rider_tokens", ["rider_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_rider_tokens_rider_id"), table_name="rider_tokens")
    op.drop_table("rider_tokens")
