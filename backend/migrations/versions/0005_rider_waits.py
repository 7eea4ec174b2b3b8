"""Riders' boarding-wait requests.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 19:00:00

* ``rider_waits``: one row per wait request made through the rider API, with its
  rider, stop, lifetime and the state buses last reported. The API keeps one live wait
  per rider and counts a rider's recent requests (the rate rule) from it, across
  restarts and API processes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rider_waits",
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("rider_id", sa.String(64), nullable=False),
        sa.Column("route_id", sa.String(128), nullable=False),
        sa.Column("stop_id", sa.String(128), nullable=False),
        sa.Column("assist", sa.Boolean(), nullable=False),
        sa.Column("t", sa.Double(), nullable=False),
        sa.Column("expires_t", sa.Double(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("bus_id", sa.String(64), nullable=True),
        sa.Column("state_t", sa.Double(), nullable=False),
        sa.Column("missed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_rider_waits")),
    )
    op.create_index(
        op.f("ix_rider_waits_rider_id_t"), "rider_waits", ["rider_id", "t"], unique=False
    )
    op.create_index(
        op.f("ix_rider_waits_state_expires_t"),
        "rider_waits",
        ["state", "expires_t"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_rider_waits_state_expires_t"), table_name="rider_waits")
    op.drop_index(op.f("ix_rider_waits_rider_id_t"), table_name="rider_waits")
    op.drop_table("rider_waits")
