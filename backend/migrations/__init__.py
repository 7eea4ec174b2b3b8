"""Alembic migrations of the backend ledger (run by ``backend._db.migrate``)."""
