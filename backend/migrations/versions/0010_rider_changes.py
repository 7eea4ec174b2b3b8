"""A change feed of the rider registry: ``riders.changed_seq``.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 00:40:00

The settlement worker keeps every enrolled rider's keys in memory. It used to read the
whole ``riders`` table on every pass (10 million rows: impossible); now it reads only the
rows changed since its last pass, ``WHERE (changed_seq, rider_id) > (seen_seq,
seen_id)``.

* ``riders.changed_seq``: stamped by triggers on every INSERT and UPDATE of a rider, from
  the one-row counter ``rider_change_seq`` (rows there before this revision: 0). Writers
  need not know: the rider API, ``backend enroll``, a revocation, an operator's SQL are
  all seen.
* No change is missed although transactions commit in any order: a change takes the
  counter's row lock (PostgreSQL: once per statement, before the statement locks any
  rider row, so two writers cannot deadlock on it; SQLite: one writer at a time anyway)
  and holds it until commit, so the changes commit in counter order. A reader that sees
  one change sees every change with a lower number.
* One PostgreSQL statement stamps all its rows with one number (a bulk import does not
  bump the counter per row), hence the ``(changed_seq, rider_id)`` index and key.

Riders are never deleted (revoked instead); a deleted row would not be seen.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_PG_UP = [
    """
    CREATE FUNCTION busbell_rider_change_statement() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE rider_change_seq SET seq = seq + 1 WHERE id = 1;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION busbell_rider_change_row() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        NEW.changed_seq := (SELECT seq FROM rider_change_seq WHERE id = 1);
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER riders_change_statement BEFORE INSERT OR UPDATE ON riders
    FOR EACH STATEMENT EXECUTE FUNCTION busbell_rider_change_statement()
    """,
    """
    CREATE TRIGGER riders_change_row BEFORE INSERT OR UPDATE ON riders
    FOR EACH ROW EXECUTE FUNCTION busbell_rider_change_row()
    """,
]
_PG_DOWN = [
    "DROP TRIGGER riders_change_row ON riders",
    "DROP TRIGGER riders_change_statement ON riders",
    "DROP FUNCTION busbell_rider_change_row()",
    "DROP FUNCTION busbell_rider_change_statement()",
]
_STAMP = """
    UPDATE rider_change_seq SET seq = seq + 1 WHERE id = 1;
    UPDATE riders SET changed_seq = (SELECT seq FROM rider_change_seq WHERE id = 1)
    WHERE rowid = NEW.rowid;
"""
# the UPDATE trigger names every column but changed_seq: its own stamp does not fire it
_SQLITE_UP = [
    f"CREATE TRIGGER riders_change_insert AFTER INSERT ON riders BEGIN {_STAMP} END",
    "CREATE TRIGGER riders_change_update AFTER UPDATE OF rider_id, token_key, status, "
    f"enrolled_at, revoked_at, kind, category ON riders BEGIN {_STAMP} END",
]
_SQLITE_DOWN = [
    "DROP TRIGGER riders_change_update",
    "DROP TRIGGER riders_change_insert",
]


def upgrade() -> None:
    op.create_table(
        "rider_change_seq",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rider_change_seq")),
    )
    op.execute("INSERT INTO rider_change_seq (id, seq) VALUES (1, 0)")
    with op.batch_alter_table("riders") as batch:
        batch.add_column(
            sa.Column("changed_seq", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.create_index(op.f("ix_riders_changed_seq_rider_id"), "riders", ["changed_seq", "rider_id"])
    postgres = op.get_bind().dialect.name == "postgresql"
    for stmt in _PG_UP if postgres else _SQLITE_UP:
        op.execute(stmt)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for stmt in _PG_DOWN if postgres else _SQLITE_DOWN:
        op.execute(stmt)
    op.drop_index(op.f("ix_riders_changed_seq_rider_id"), table_name="riders")
    with op.batch_alter_table("riders") as batch:
        batch.drop_column("changed_seq")
    op.drop_table("rider_change_seq")
