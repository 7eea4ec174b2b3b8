"""The ledger database: SQLAlchemy 2 async Core tables, engine set-up and migrations.

One code path for SQLite (aiosqlite, the embedded default) and PostgreSQL (asyncpg, the
production target). Facts are immutable: ``fare_events`` rows are only ever inserted
(idempotently, ``INSERT ... ON CONFLICT DO NOTHING``); rejected input goes to
``quarantine``. ``charges``, ``journeys``, ``legs`` and ``adjustments`` are derived
and can be recomputed from the facts. The schema is created and upgraded only by the
Alembic migrations in ``backend/migrations`` (:func:`migrate`); :data:`metadata`
mirrors it for queries, and a test checks both agree on SQLite and PostgreSQL.

Times are UNIX seconds (double precision) as everywhere in the contract.

SQLite transactions start with ``BEGIN IMMEDIATE`` (the write lock is taken up front,
so a read-then-write transaction never fails half-way on a lock upgrade) and the file
uses WAL. On PostgreSQL a bus's chain state is read ``FOR UPDATE`` by ingest, see
:mod:`backend._ingest`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import pathlib
import sqlite3
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from busbell import StoreError

__all__ = [
    "DB_ERRORS",
    "MIGRATIONS_DIR",
    "SQLITE_PAGE_SIZE",
    "adjustments",
    "chain_state",
    "charges",
    "create_engine",
    "current_revision",
    "denylist_versions",
    "devices",
    "engine_for",
    "fare_events",
    "fare_pending",
    "fleet_keys",
    "head_revision",
    "ingest_workers",
    "insert_ignore",
    "is_postgres",
    "journeys",
    "legs",
    "metadata",
    "migrate",
    "missed_stops",
    "quarantine",
    "rid_lookup",
    "rider_segments",
    "rider_tokens",
    "rider_waits",
    "riders",
    "settlement_dirty",
    "settlement_watermarks",
    "unresolved_segments",
]

MIGRATIONS_DIR = pathlib.Path(__file__).with_name("migrations")


def _driver_errors() -> tuple[type[Exception], ...]:
    """The error bases of asyncpg, when the ``postgres`` extra is installed."""
    try:
        asyncpg: Any = importlib.import_module("asyncpg")
    except ImportError:  # pragma: no cover - SQLite-only installation
        return ()
    return (asyncpg.PostgresError, asyncpg.InterfaceError)


DB_ERRORS: Final[tuple[type[Exception], ...]] = (
    OSError,
    sa.exc.SQLAlchemyError,
    sqlite3.Error,
    *_driver_errors(),
)
"""What a failing database raises, through SQLAlchemy or straight from the driver.

Statements on the hot path go to the driver's own connection (asyncpg's binary ``COPY``
and ``executemany``, aiosqlite's ``executemany``, inside the transaction SQLAlchemy
began); their errors are the driver's, not SQLAlchemy's (``asyncpg.PostgresError``,
``asyncpg.InterfaceError`` (client side, e.g. a value ``COPY`` cannot encode),
``sqlite3.Error``). Every place that turns a database failure into
:class:`~busbell.StoreError` catches this tuple."""

_NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = sa.MetaData(naming_convention=_NAMING)


class JsonText(sa.TypeDecorator[Any]):
    """A JSON value kept as its text (``TEXT`` on both databases; read back parsed).

    PostgreSQL's ``json`` type parses every value on input to check it; ``evidence``
    arrives already checked and serialised (the typed record's canonical JSON), and no
    statement looks inside it, so its column is plain text (migration 0013).
    """

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        if value is None:
            return None
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        return None if value is None else json.loads(value)


# Autoincrementing surrogate keys: BIGINT on PostgreSQL, INTEGER (the rowid) on SQLite.
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Time: sa.Double[float] = sa.Double()

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("bus_id", sa.String(64), primary_key=True),
    sa.Column("public_key", sa.String(64), nullable=False, doc="Ed25519, hex of 32 bytes"),
    sa.Column(
        "kex_public_key",
        sa.String(64),
        nullable=True,
        doc="X25519 key for fleet-key delivery, hex; NULL: derived from public_key",
    ),
    sa.Column("registered_at", _Time, nullable=False),
    sa.Column("revoked_at", _Time, nullable=True),
)

fare_events = sa.Table(
    "fare_events",
    metadata,
    sa.Column("bus_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("event_hash", sa.String(64), nullable=False),
    sa.Column("prev", sa.String(64), nullable=False),
    sa.Column("rid", sa.String(24), nullable=False),
    sa.Column("interval", sa.BigInteger(), nullable=False),
    sa.Column("route_id", sa.String(128), nullable=True),
    sa.Column("trip_id", sa.String(128), nullable=True),
    sa.Column("start_t", _Time, nullable=False),
    sa.Column("start_stop_id", sa.String(128), nullable=True),
    sa.Column("start_cause", sa.String(16), nullable=False),
    sa.Column("end_t", _Time, nullable=False),
    sa.Column("end_stop_id", sa.String(128), nullable=True),
    sa.Column("end_cause", sa.String(16), nullable=False),
    sa.Column("distance_m", sa.Double(), nullable=False),
    sa.Column("proof_first", sa.String(48), nullable=False),
    sa.Column("proof_last", sa.String(48), nullable=False),
    sa.Column("evidence", JsonText(), nullable=False, doc="JSON object, as text"),
    sa.Column("raw", sa.Text(), nullable=False, doc="canonical JSON of the event, sig included"),
    sa.Column("received_at", _Time, nullable=False),
    sa.Column("worker_id", sa.String(128), nullable=False),
    # (bus_id, seq) is the primary key and no surrogate id (migration 0013); no
    # (interval, rid) index: no query reads rows that way (migration 0012); no event_id
    # index: ingest checks every id is derived from (bus_id, seq) and the record, and no
    # query reads rows by it (migration 0014)
)

chain_state = sa.Table(
    "chain_state",
    metadata,
    sa.Column("bus_id", sa.String(64), primary_key=True),
    sa.Column("next_seq", sa.BigInteger(), nullable=False),
    sa.Column("prev", sa.String(64), nullable=False),
    sa.Column("acked_upto", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", _Time, nullable=False),
    sa.Column("pending", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("gap_from", sa.BigInteger(), nullable=True, doc="first missing seq"),
    sa.Column("gap_to", sa.BigInteger(), nullable=True, doc="last missing seq"),
    sa.Column("gap_since", _Time, nullable=True, doc="when the gap opened (wall time)"),
    sa.Column("resend_attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("resend_due", _Time, nullable=True, doc="next re-send request or report"),
    sa.Column("gap_reported", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("resend_last", _Time, nullable=True, doc="last re-send request (migration 0009)"),
    sa.Index(None, "resend_due"),
)
"""Each bus's chain head and its open gap (migration 0008), the one place workers meet."""

fare_pending = sa.Table(
    "fare_pending",
    metadata,
    sa.Column("bus_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.BigInteger(), primary_key=True),
    sa.Column("event_hash", sa.String(64), primary_key=True),
    sa.Column("raw", sa.Text(), nullable=False, doc="canonical JSON, sig included (verified)"),
    sa.Column("received_at", _Time, nullable=False),
    sa.Column("arrival", sa.BigInteger(), nullable=False, doc="order of arrival per bus"),
)
"""Verified chain records above their bus's chain head, held until the gap fills."""

ingest_workers = sa.Table(
    "ingest_workers",
    metadata,
    sa.Column("worker_id", sa.String(128), primary_key=True),
    sa.Column(
        "caught_up_to", _Time, nullable=False, doc="every message received before is committed"
    ),
    sa.Column("seen_at", _Time, nullable=False),
)
"""Ingest workers' progress (migration 0009): gaps wait for every live worker."""

quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("bus_id", sa.String(128), nullable=True),
    sa.Column("seq", sa.BigInteger(), nullable=True),
    sa.Column("event_id", sa.String(128), nullable=True),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text(), nullable=False),
    sa.Column("raw", sa.Text(), nullable=False),
    sa.Column("raw_hash", sa.String(64), nullable=False),
    sa.Column("received_at", _Time, nullable=False),
    sa.Column("worker_id", sa.String(128), nullable=False),
    sa.UniqueConstraint("raw_hash", "reason"),
    sa.Index(None, "bus_id", "seq"),
)

missed_stops = sa.Table(
    "missed_stops",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("bus_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("event_hash", sa.String(64), nullable=False),
    sa.Column("prev", sa.String(64), nullable=False),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("route_id", sa.String(128), nullable=False),
    sa.Column("trip_id", sa.String(128), nullable=True),
    sa.Column("stop_id", sa.String(128), nullable=False),
    sa.Column("wait_t", _Time, nullable=False, doc="the wait's t (when it was made)"),
    sa.Column("passed_t", _Time, nullable=False, doc="the bus's closest approach"),
    sa.Column(
        "record", sa.Text(), nullable=False, doc="canonical JSON of the record, sig included"
    ),
    sa.Column("received_at", _Time, nullable=False),
    sa.Column("worker_id", sa.String(128), nullable=False),
    sa.UniqueConstraint("bus_id", "seq"),
    sa.UniqueConstraint("event_id"),
    sa.Index(None, "route_id", "stop_id", "passed_t"),
    sa.Index(None, "request_id"),
)

riders = sa.Table(
    "riders",
    metadata,
    sa.Column("rider_id", sa.String(64), primary_key=True),
    sa.Column("token_key", sa.String(32), nullable=False, doc="16-byte token key, hex"),
    sa.Column("status", sa.String(16), nullable=False, doc="active or revoked"),
    sa.Column("enrolled_at", _Time, nullable=False),
    sa.Column("revoked_at", _Time, nullable=True),
    sa.Column("kind", sa.String(8), nullable=False, server_default="fob", doc="fob or app"),
    sa.Column(
        "category",
        sa.String(16),
        nullable=False,
        server_default="adult",
        doc="fare category: adult, youth or child",
    ),
    sa.Column(
        "changed_seq",
        sa.BigInteger(),
        nullable=False,
        server_default="0",
        doc="stamped by triggers on every insert and update (migration 0010): the change feed",
    ),
    sa.Index(None, "changed_seq", "rider_id"),
)

rider_change_seq = sa.Table(
    "rider_change_seq",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger(), nullable=False, doc="the last changed_seq handed out"),
)

rider_tokens = sa.Table(
    "rider_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True, doc="SHA-256 of the token, hex"),
    sa.Column("rider_id", sa.String(64), nullable=False),
    sa.Column("created_at", _Time, nullable=False),
    sa.Column("revoked_at", _Time, nullable=True, doc="set when a newer token replaced it"),
    sa.Index(None, "rider_id"),
)
"""Riders' API bearer tokens (:mod:`backend._auth`): only their hashes are stored."""

rid_lookup = sa.Table(
    "rid_lookup",
    metadata,
    sa.Column("interval", sa.BigInteger(), primary_key=True),
    sa.Column("rid", sa.String(24), primary_key=True),
    sa.Column("rider_id", sa.String(64), nullable=False),
    sa.Index(None, "rider_id"),
)

journeys = sa.Table(
    "journeys",
    metadata,
    sa.Column("journey_id", sa.String(64), primary_key=True),
    sa.Column("rider_id", sa.String(64), nullable=False),
    sa.Column("first_board_t", _Time, nullable=False),
    sa.Column("last_alight_t", _Time, nullable=False),
    sa.Column("fare_krw", sa.Integer(), nullable=False),
    sa.Column("category", sa.String(32), nullable=False),
    sa.Column("ruleset_id", sa.String(64), nullable=False),
    sa.Column("explain", sa.JSON(), nullable=False),
    sa.Column("computed_at", _Time, nullable=False),
    sa.Column(
        "service_day", sa.String(10), nullable=False, server_default="", doc="YYYY-MM-DD, local"
    ),
    sa.Column(
        "charged",
        sa.Boolean(),
        nullable=False,
        server_default=sa.true(),
        doc="false: held for review (suspected replay), fare 0, no charge row",
    ),
    sa.Column("flags", sa.JSON(), nullable=False, server_default="[]", doc="review flags"),
    sa.Index(None, "rider_id", "first_board_t"),
    sa.Index(None, "rider_id", "service_day"),
)

legs = sa.Table(
    "legs",
    metadata,
    sa.Column("journey_id", sa.String(64), primary_key=True),
    sa.Column("leg_no", sa.Integer(), primary_key=True),
    sa.Column("bus_id", sa.String(64), nullable=True),
    sa.Column("route_id", sa.String(128), nullable=False),
    sa.Column("trip_id", sa.String(128), nullable=True),
    sa.Column("network_id", sa.String(64), nullable=False),
    sa.Column("board_stop_id", sa.String(128), nullable=True),
    sa.Column("board_t", _Time, nullable=False),
    sa.Column("alight_stop_id", sa.String(128), nullable=True),
    sa.Column("alight_t", _Time, nullable=False),
    sa.Column("distance_m", sa.Double(), nullable=False),
    sa.Column("event_ids", sa.JSON(), nullable=False, doc="fare_events.event_id of its segments"),
    sa.Column(
        "distance_source",
        sa.String(16),
        nullable=False,
        server_default="events",
        doc="gtfs, events or penalty",
    ),
    sa.Column("flags", sa.JSON(), nullable=False, server_default="[]", doc="review flags"),
)

charges = sa.Table(
    "charges",
    metadata,
    sa.Column("charge_id", sa.String(64), primary_key=True),
    sa.Column("rider_id", sa.String(64), nullable=False),
    sa.Column("journey_id", sa.String(64), nullable=False),
    sa.Column("t", _Time, nullable=False, doc="first boarding of the journey"),
    sa.Column("fare_krw", sa.Integer(), nullable=False),
    sa.Column("category", sa.String(32), nullable=False),
    sa.Column("created_at", _Time, nullable=False),
    sa.Column(
        "service_day", sa.String(10), nullable=False, server_default="", doc="YYYY-MM-DD, local"
    ),
    sa.Index(None, "rider_id", "t"),
    sa.Index(None, "rider_id", "service_day"),
)

adjustments = sa.Table(
    "adjustments",
    metadata,
    sa.Column("adjustment_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False, doc="daily_cap or monthly_refund"),
    sa.Column("rider_id", sa.String(64), nullable=False),
    sa.Column("category", sa.String(32), nullable=False),
    sa.Column("period", sa.String(16), nullable=False, doc="YYYY-MM-DD or YYYY-MM"),
    sa.Column("amount_krw", sa.Integer(), nullable=False),
    sa.Column("paid_krw", sa.Integer(), nullable=False),
    sa.Column("limit_krw", sa.Integer(), nullable=False),
    sa.Column("charge_ids", sa.JSON(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("created_at", _Time, nullable=False),
    sa.UniqueConstraint("kind", "rider_id", "category", "period"),
)

rider_segments = sa.Table(
    "rider_segments",
    metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("rider_id", sa.String(64), nullable=False),
    sa.Column("bus_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("interval", sa.BigInteger(), nullable=False),
    sa.Column("route_id", sa.String(128), nullable=True),
    sa.Column("trip_id", sa.String(128), nullable=True),
    sa.Column("start_t", _Time, nullable=False),
    sa.Column("start_stop_id", sa.String(128), nullable=True),
    sa.Column("start_cause", sa.String(16), nullable=False),
    sa.Column("end_t", _Time, nullable=False),
    sa.Column("end_stop_id", sa.String(128), nullable=True),
    sa.Column("end_cause", sa.String(16), nullable=False),
    sa.Column("distance_m", sa.Double(), nullable=False),
    sa.Column("rssi_med", sa.Double(), nullable=True),
    sa.Column("settled_at", _Time, nullable=False),
    sa.Column("n_adv", sa.Integer(), nullable=True),
    sa.Column("co_n", sa.Integer(), nullable=True, doc="tentative segments only"),
    sa.Column("co_lo", sa.Double(), nullable=True, doc="tentative segments only"),
    sa.Column("co_hi", sa.Double(), nullable=True, doc="tentative segments only"),
    sa.Column("riders_lvl", sa.Double(), nullable=True),
    sa.Index(None, "rider_id", "start_t"),
    # tentative pieces by end: the link retention (migration 0018)
    sa.Index(
        "ix_rider_segments_tentative_end_t",
        "end_t",
        postgresql_where=sa.text("start_cause = 'tentative'"),
        sqlite_where=sa.text("start_cause = 'tentative'"),
    ),
)
"""Derived: one row per fare event whose rid resolved and whose proof holds."""

unresolved_segments = sa.Table(
    "unresolved_segments",
    metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("bus_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("rid", sa.String(24), nullable=False),
    sa.Column("interval", sa.BigInteger(), nullable=False),
    sa.Column("start_t", _Time, nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text(), nullable=False),
    sa.Column("rider_id", sa.String(64), nullable=True, doc="when the rid resolved"),
    sa.Column("recorded_at", _Time, nullable=False),
    sa.Index(None, "reason"),
)
"""Derived: fare events never charged (rid not resolved, proof failed, rider revoked)."""

settlement_watermarks = sa.Table(
    "settlement_watermarks",
    metadata,
    sa.Column("bus_id", sa.String(64), primary_key=True),
    sa.Column("settled_seq", sa.BigInteger(), nullable=False, doc="events <= it are settled"),
    sa.Column("updated_at", _Time, nullable=False),
)

settlement_dirty = sa.Table(
    "settlement_dirty",
    metadata,
    sa.Column("rider_id", sa.String(64), primary_key=True),
    sa.Column("service_day", sa.String(10), primary_key=True),
    sa.Column("marked_at", _Time, nullable=False),
    sa.Column(
        "attempts",
        sa.Integer(),
        nullable=False,
        server_default="0",
        doc="recomputations in a row that raised (0: never failed)",
    ),
    sa.Column("failed_at", _Time, nullable=True, doc="when it last failed"),
    sa.Column("error", sa.Text(), nullable=True, doc="why: the exception's type and message"),
)
"""Rider-days whose derived rows must be recomputed (new or late segments); one that
failed keeps its mark with the failure (migration 0019), retried after a backoff."""

fleet_keys = sa.Table(
    "fleet_keys",
    metadata,
    sa.Column("day", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("fleet_key", sa.String(64), nullable=False, doc="32 bytes, hex"),
    sa.Column("created_at", _Time, nullable=False),
)

denylist_versions = sa.Table(
    "denylist_versions",
    metadata,
    sa.Column("version", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("issued_at", _Time, nullable=False),
    sa.Column("payload", sa.Text(), nullable=False, doc="the published JSON"),
)

rider_waits = sa.Table(
    "rider_waits",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("rider_id", sa.String(64), nullable=False),
    sa.Column("route_id", sa.String(128), nullable=False),
    sa.Column("stop_id", sa.String(128), nullable=False),
    sa.Column("assist", sa.Boolean(), nullable=False),
    sa.Column("t", _Time, nullable=False, doc="when the rider asked"),
    sa.Column("expires_t", _Time, nullable=False),
    sa.Column(
        "state",
        sa.String(16),
        nullable=False,
        doc="pending, seen, acknowledged, served, missed, expired or cancelled",
    ),
    sa.Column("bus_id", sa.String(64), nullable=True, doc="the bus of the last state"),
    sa.Column("state_t", _Time, nullable=False),
    sa.Column("missed", sa.Integer(), nullable=False, doc="buses that passed it by"),
    sa.Index(None, "rider_id", "t"),
    sa.Index(None, "state", "expires_t"),
)
"""Riders' boarding-wait requests (rider API): one live wait per rider, and the rate rule."""


def is_postgres(engine: AsyncEngine | AsyncConnection) -> bool:
    """Whether ``engine`` talks to PostgreSQL (else SQLite)."""
    return engine.dialect.name == "postgresql"


def insert_ignore(table: sa.TableClause, dialect_name: str) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for ``table`` on either dialect.

    Args:
        table: the table.
        dialect_name: ``postgresql`` or ``sqlite`` (``conn.dialect.name``).
    """
    ins = postgresql.insert(table) if dialect_name == "postgresql" else sqlite.insert(table)
    return ins.on_conflict_do_nothing()


SQLITE_PAGE_SIZE = 16384
"""Page size of a new SQLite ledger (set before its first table; fixed after)."""


def _sqlite_setup(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE itself.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # A new file gets 16 KiB pages (a no-op on an existing one): ledger rows are
        # ~1 KB (the raw event beside its columns), and with the default 4 KiB pages
        # inserting them cost ~40 % more CPU (page splits, WAL frames).
        cur.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
        # Switching a fresh file to WAL needs an exclusive lock: with a short timeout a
        # connection that races another one's write transaction gives up (the mode is
        # persistent; the winner sets it) instead of deadlocking it.
        cur.execute("PRAGMA busy_timeout = 200")
        with contextlib.suppress(sqlite3.OperationalError):
            cur.execute("PRAGMA journal_mode = WAL")
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 5,
    sqlite_busy_timeout_ms: int = 30000,
) -> AsyncEngine:
    """An async engine for ``url`` with busbell's SQLite/PostgreSQL settings.

    Raises:
        StoreError: when the URL is not an SQLite (aiosqlite) or PostgreSQL (asyncpg) URL.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise StoreError(f"invalid database url: {exc}") from None
    if parsed.drivername == "sqlite+aiosqlite":
        engine = create_async_engine(parsed)
        _sqlite_setup(engine, sqlite_busy_timeout_ms)
        return engine
    if parsed.drivername == "postgresql+asyncpg":
        return create_async_engine(
            parsed, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True
        )
    raise StoreError(
        f"unsupported database url {parsed.drivername!r}: "
        "use sqlite+aiosqlite:///PATH or postgresql+asyncpg://..."
    )


def engine_for(db: Any) -> AsyncEngine:
    """The engine of a ``[database]`` config section (``backend.config.DatabaseSettings``)."""
    return create_engine(
        db.url,
        pool_size=db.pool_size,
        max_overflow=db.max_overflow,
        sqlite_busy_timeout_ms=db.sqlite_busy_timeout_ms,
    )


def _alembic_config(connection: sa.Connection) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: sa.Connection, revision: str) -> None:
    from alembic import command

    command.upgrade(_alembic_config(connection), revision)


def _current(connection: sa.Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def migrate(url: str | AsyncEngine, revision: str = "head") -> None:
    """Create or upgrade the schema to ``revision`` (idempotent, safe from several workers).

    On PostgreSQL an advisory lock serialises concurrent starts; on SQLite the
    ``BEGIN IMMEDIATE`` write lock does.

    Args:
        url: a database URL or an engine from :func:`create_engine`.
        revision: the Alembic revision (``head`` by default).

    Raises:
        StoreError: when the database cannot be reached or migrated.
    """
    engine = create_engine(url) if isinstance(url, str) else url
    try:
        async with engine.begin() as conn:
            if is_postgres(conn):
                await conn.execute(sa.text("SELECT pg_advisory_xact_lock(7424011)"))
            await conn.run_sync(_upgrade, revision)
    except DB_ERRORS as exc:
        raise StoreError(f"cannot migrate the database: {exc}") from exc
    finally:
        if isinstance(url, str):
            await engine.dispose()


def head_revision() -> str:
    """The newest Alembic revision of the packaged migrations (what ``migrate`` reaches)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    """The database's Alembic revision (``None`` before the first migration)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)
