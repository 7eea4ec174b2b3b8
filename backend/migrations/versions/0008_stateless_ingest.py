"""Stateless ingest workers: out-of-order events and chain gaps live in the database.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 22:45:00

* ``fare_pending``: verified chain records above their bus's chain head (a gap before
  them), held until the gap fills. Any ingest worker links them once the head reaches
  them, so no worker keeps a bus's chain in memory. ``arrival`` orders a bus's held
  records as they came (two records at one seq: the first that links is taken).
* ``chain_state`` gains the bus's open gap, decided from committed rows: ``pending``
  (rows held), ``gap_from``/``gap_to`` (the missing seqs), ``gap_since`` (when it
  opened, wall time), ``resend_attempts``, ``resend_due`` (when the next re-send request
  or the report is due) and ``gap_reported`` (given up on and reported to operators).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fare_pending",
        sa.Column("bus_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("event_hash", sa.String(64), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.Column("arrival", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("bus_id", "seq", "event_hash", name=op.f("pk_fare_pending")),
    )
    with op.batch_alter_table("chain_state") as batch:
        batch.add_column(sa.Column("pending", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("gap_from", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("gap_to", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("gap_since", sa.Double(), nullable=True))
        batch.add_column(
            sa.Column("resend_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("resend_due", sa.Double(), nullable=True))
        batch.add_column(
            sa.Column("gap_reported", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_index(op.f("ix_chain_state_resend_due"), "chain_state", ["resend_due"])


def downgrade() -> None:
    op.drop_index(op.f("ix_chain_state_resend_due"), table_name="chain_state")
    with op.batch_alter_table("chain_state") as batch:
        for col in (
            "gap_reported",
            "resend_due",
            "resend_attempts",
            "gap_since",
            "gap_to",
            "gap_from",
            "pending",
        ):
            batch.drop_column(col)
    op.drop_table("fare_pending")
