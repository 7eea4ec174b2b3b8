"""``fare_events``: ``(bus_id, seq)`` is the primary key, no surrogate ``id``; text evidence.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 07:10:00

No statement reads ``fare_events.id``: rows are found by ``(bus_id, seq)`` (ingest,
settlement) or ``event_id`` (re-resolution, the careful ingest pass). Yet every insert
paid for it: on PostgreSQL a ``nextval`` of its sequence and one more B-tree insert per
row (the ``id`` primary key beside the two unique indexes), in the server's CPU, which
shares the machine with the ingest workers. ``(bus_id, seq)``, unique and never null
already, becomes the primary key in place of its unique constraint, so the table keeps
two indexes: ``(bus_id, seq)`` and ``event_id``.

``evidence`` becomes ``TEXT`` (it was ``JSON``): PostgreSQL's ``json`` type parses every
value it is given to check it, but ingest writes the typed record's canonical JSON, and no
statement looks inside the column (settlement reads it whole and parses it in Python;
:class:`backend._db.JsonText` does that for SQLAlchemy reads). SQLite stored it as text
already.

On SQLite the table is rebuilt (Alembic's batch mode: a copy of every row); there
``id`` was the rowid, which the table keeps implicitly, so SQLite's cost per row does
not change. On PostgreSQL the primary key's index is built anew from the table (the old
unique index cannot be taken over while its constraint owns it): minutes on a ledger of
hundreds of millions of rows, with writes to ``fare_events`` blocked meanwhile.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("fare_events", recreate="auto") as batch:
        batch.drop_constraint("uq_fare_events_bus_id_seq", type_="unique")
        batch.drop_constraint("pk_fare_events", type_="primary")
        batch.drop_column("id")
        batch.create_primary_key("pk_fare_events", ["bus_id", "seq"])
        batch.alter_column(
            "evidence",
            type_=sa.Text(),
            existing_type=sa.JSON(),
            existing_nullable=False,
            postgresql_using="evidence::text",
        )


def downgrade() -> None:
    # ``id`` comes back numbered in (bus_id, seq) order, not in the original insert order
    # (which no statement read).
    with op.batch_alter_table("fare_events", recreate="auto") as batch:
        batch.alter_column(
            "evidence",
            type_=sa.JSON(),
            existing_type=sa.Text(),
            existing_nullable=False,
            postgresql_using="evidence::json",
        )
        batch.drop_constraint("pk_fare_events", type_="primary")
        batch.create_unique_constraint("uq_fare_events_bus_id_seq", ["bus_id", "seq"])
    if op.get_bind().dialect.name == "postgresql":
        op.add_column("fare_events", sa.Column("id", sa.BigInteger(), nullable=True))
        op.execute("CREATE SEQUENCE fare_events_id_seq OWNED BY fare_events.id")
        op.execute(
            "UPDATE fare_events SET id = n.id FROM (SELECT bus_id, seq, nextval("
            "'fare_events_id_seq') AS id FROM fare_events ORDER BY bus_id, seq) AS n "
            "WHERE fare_events.bus_id = n.bus_id AND fare_events.seq = n.seq"
        )
        op.execute(
            "ALTER TABLE fare_events ALTER COLUMN id SET DEFAULT nextval('fare_events_id_seq'), "
            "ALTER COLUMN id SET NOT NULL, ADD CONSTRAINT pk_fare_events PRIMARY KEY (id)"
        )
    else:
        with op.batch_alter_table("fare_events", recreate="always") as batch:
            batch.add_column(sa.Column("id", _BigId, nullable=True))
        op.execute("UPDATE fare_events SET id = rowid")
        with op.batch_alter_table("fare_events", recreate="always") as batch:
            batch.alter_column("id", existing_type=_BigId, nullable=False)
            batch.create_primary_key("pk_fare_events", ["id"])
