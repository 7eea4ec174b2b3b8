"""PostgreSQL: one change number per transaction, not per statement.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 01:45:00

0010's statement trigger bumped ``rider_change_seq`` at every statement. A transaction
that writes riders in many statements (an ``executemany`` import: one statement per
row) then updated that one row thousands of times, and each update and each row
trigger's read walked the row's growing chain of versions: enrolling 200,000 riders in
four transactions took minutes of PostgreSQL CPU. Now a transaction bumps the counter
once (its first rider statement; later ones see the row's ``xmin`` is their own
transaction and skip the update) and all its rows share the number. The guarantees are
unchanged: the counter's row lock is taken before any rider row and held to commit, so
changes commit in counter order; rows of one transaction commit together, and the feed
reads by ``(changed_seq, rider_id)``. SQLite is unchanged (no row versions there).
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_ONCE = """
    CREATE OR REPLACE FUNCTION busbell_rider_change_statement() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE rider_change_seq SET seq = seq + 1
        WHERE id = 1 AND xmin <> pg_current_xact_id()::xid;
        RETURN NULL;
    END $$
"""
_EACH = """
    CREATE OR REPLACE FUNCTION busbell_rider_change_statement() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE rider_change_seq SET seq = seq + 1 WHERE id = 1;
        RETURN NULL;
    END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_ONCE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_EACH)
