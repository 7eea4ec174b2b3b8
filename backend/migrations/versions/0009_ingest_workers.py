"""Ingest workers' progress, so a gap is re-requested only once every worker caught up.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 22:35:00

* ``ingest_workers``: per live ingest worker, ``caught_up_to`` (wall time: every message
  it received before then is committed) and ``seen_at`` (its last report).
* ``chain_state.resend_last``: when the gap's last re-send request went out.

A gap's missing records may still sit in some worker's queue (a burst, a slow commit);
asking the bus for them again then only makes duplicates. A gap is acted on once its
grace (or backoff) has passed *and* every worker seen lately has committed everything
it received before the gap opened (or before the last request).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingest_workers",
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("caught_up_to", sa.Double(), nullable=False),
        sa.Column("seen_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("worker_id", name=op.f("pk_ingest_workers")),
    )
    with op.batch_alter_table("chain_state") as batch:
        batch.add_column(sa.Column("resend_last", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("chain_state") as batch:
        batch.drop_column("resend_last")
    op.drop_table("ingest_workers")
