"""Missed stops: the buses' signed ``missed`` chain records.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 19:40:00

* ``missed_stops``: one row per verified ``type: "missed"`` record of a bus's fare
  chain (the bus passed a stop without opening its doors while a boarding wait was
  live). Ingest verifies it like every chain record (signature, ``prev``, ``seq``) and
  stores it here, never in ``fare_events``: settlement never treats it as a ride. A
  bus's chain is therefore the union of its ``fare_events`` and ``missed_stops`` rows
  (UNIQUE ``(bus_id, seq)`` and ``event_id`` in each; ingest keeps them disjoint).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "missed_stops",
        sa.Column("id", _BigId, autoincrement=True, nullable=False),
        sa.Column("bus_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_hash", sa.String(64), nullable=False),
        sa.Column("prev", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("route_id", sa.String(128), nullable=False),
        sa.Column("trip_id", sa.String(128), nullable=True),
        sa.Column("stop_id", sa.String(128), nullable=False),
        sa.Column("wait_t", sa.Double(), nullable=False),
        sa.Column("passed_t", sa.Double(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_missed_stops")),
        sa.UniqueConstraint("bus_id", "seq", name=op.f("uq_missed_stops_bus_id_seq")),
        sa.UniqueConstraint("event_id", name=op.f("uq_missed_stops_event_id")),
    )
    op.create_index(
        op.f("ix_missed_stops_route_id_stop_id_passed_t"),
        "missed_stops",
        ["route_id", "stop_id", "passed_t"],
    )
    op.create_index(op.f("ix_missed_stops_request_id"), "missed_stops", ["request_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_missed_stops_request_id"), table_name="missed_stops")
    op.drop_index(op.f("ix_missed_stops_route_id_stop_id_passed_t"), table_name="missed_stops")
    op.drop_table("missed_stops")
