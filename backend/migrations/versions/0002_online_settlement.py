"""Online settlement: rider kind and category, derived segments, watermarks, review flags.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 15:30:00

* ``riders``: ``kind`` (fob|app) and ``category`` (adult|youth|child, priced per rider).
* ``journeys``: ``service_day`` (the rider-day recomputed as a unit), ``charged`` and
  ``flags`` (review flags: lost, suspected_replay, ...); ``charges``: ``service_day``;
  ``legs``: ``distance_source`` and ``flags``.
* ``rider_segments`` (resolved, proof-checked segments), ``unresolved_segments`` (never
  charged, with the reason), ``settlement_watermarks`` (per bus, the last settled seq)
  and ``settlement_dirty`` (rider-days to recompute). All derived from ``fare_events``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("riders", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=8), nullable=False, server_default="fob")
        )
        batch_op.add_column(
            sa.Column("category", sa.String(length=16), nullable=False, server_default="adult")
        )
    with op.batch_alter_table("journeys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("service_day", sa.String(length=10), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("charged", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch_op.add_column(sa.Column("flags", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.create_index(
            batch_op.f("ix_journeys_rider_id_service_day"), ["rider_id", "service_day"]
        )
    with op.batch_alter_table("legs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "distance_source", sa.String(length=16), nullable=False, server_default="events"
            )
        )
        batch_op.add_column(sa.Column("flags", sa.JSON(), nullable=False, server_default="[]"))
    with op.batch_alter_table("charges", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("service_day", sa.String(length=10), nullable=False, server_default="")
        )
        batch_op.create_index(
            batch_op.f("ix_charges_rider_id_service_day"), ["rider_id", "service_day"]
        )

    op.create_table(
        "rider_segments",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("rider_id", sa.String(length=64), nullable=False),
        sa.Column("bus_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("interval", sa.BigInteger(), nullable=False),
        sa.Column("route_id", sa.String(length=128), nullable=True),
        sa.Column("trip_id", sa.String(length=128), nullable=True),
        sa.Column("start_t", sa.Double(), nullable=False),
        sa.Column("start_stop_id", sa.String(length=128), nullable=True),
        sa.Column("start_cause", sa.String(length=16), nullable=False),
        sa.Column("end_t", sa.Double(), nullable=False),
        sa.Column("end_stop_id", sa.String(length=128), nullable=True),
        sa.Column("end_cause", sa.String(length=16), nullable=False),
        sa.Column("distance_m", sa.Double(), nullable=False),
        sa.Column("settled_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_rider_segments")),
    )
    with op.batch_alter_table("rider_segments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_rider_segments_rider_id_start_t"), ["rider_id", "start_t"]
        )

    op.create_table(
        "unresolved_segments",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("bus_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("rid", sa.String(length=24), nullable=False),
        sa.Column("interval", sa.BigInteger(), nullable=False),
        sa.Column("start_t", sa.Double(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("rider_id", sa.String(length=64), nullable=True),
        sa.Column("recorded_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_unresolved_segments")),
    )
    with op.batch_alter_table("unresolved_segments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_unresolved_segments_reason"), ["reason"])

    op.create_table(
        "settlement_watermarks",
        sa.Column("bus_id", sa.String(length=64), nullable=False),
        sa.Column("settled_seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("bus_id", name=op.f("pk_settlement_watermarks")),
    )
    op.create_table(
        "settlement_dirty",
        sa.Column("rider_id", sa.String(length=64), nullable=False),
        sa.Column("service_day", sa.String(length=10), nullable=False),
        sa.Column("marked_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("rider_id", "service_day", name=op.f("pk_settlement_dirty")),
    )


def downgrade() -> None:
    op.drop_table("settlement_dirty")
    op.drop_table("settlement_watermarks")
    with op.batch_alter_table("unresolved_segments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_unresolved_segments_reason"))
    op.drop_table("unresolved_segments")
    with op.batch_alter_table("rider_segments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rider_segments_rider_id_start_t"))
    op.drop_table("rider_segments")
    with op.batch_alter_table("charges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_charges_rider_id_service_day"))
        batch_op.drop_column("service_day")
    with op.batch_alter_table("legs", schema=None) as batch_op:
        batch_op.drop_column("flags")
        batch_op.drop_column("distance_source")
    with op.batch_alter_table("journeys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_journeys_rider_id_service_day"))
        batch_op.drop_column("flags")
        batch_op.drop_column("charged")
        batch_op.drop_column("service_day")
    with op.batch_alter_table("riders", schema=None) as batch_op:
        batch_op.drop_column("category")
        batch_op.drop_column("kind")
