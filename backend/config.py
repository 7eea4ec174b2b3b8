"""Configuration of the central backend (``busbell backend ...``).

:class:`BackendConfig` is the root: TOML sections ``[database]``, ``[mqtt]``,
``[ingest]``, ``[settlement]``, ``[keys]``, ``[files]``, ``[api]`` and ``[waits]``, each
overridable from the environment as ``BUSBELL_<SECTION>__<KEY>`` (e.g. ``BUSBELL_DATABASE__URL``).
``busbell config backend`` lists every option with its documentation.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from busbell import SHARED_GROUP, option
from busbell._mqtt import MqttSettings

if TYPE_CHECKING:
    from backend._journeys import JourneyPolicy
    from backend._waits import WaitRules

__all__ = [
    "CONFIG_CLASS",
    "ApiSettings",
    "BackendConfig",
    "DatabaseSettings",
    "FilesSettings",
    "IngestSettings",
    "KeysSettings",
    "SettlementSettings",
    "WaitsSettings",
]


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """The ledger database (``[database]``): SQLite by default, PostgreSQL in production."""

    url: str = option(
        "sqlite+aiosqlite:///busbell-backend.db",
        doc=(
            "SQLAlchemy async URL: sqlite+aiosqlite:///PATH (embedded, single writer) or "
            "postgresql+asyncpg://USER@HOST:PORT/DB (production, several workers)."
        ),
    )
    pool_size: int = option(5, doc="Connections kept open per process (PostgreSQL only).")
    max_overflow: int = option(
        5, doc="Extra connections allowed above pool_size under load (PostgreSQL only)."
    )
    migrate_on_start: bool = option(
        True, doc="Run the Alembic migrations to head when a backend command starts."
    )
    sqlite_busy_timeout_ms: int = option(
        30000, doc="How long an SQLite writer waits for the write lock before failing."
    )


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """Verified fare ingest (``[ingest]``)."""

    worker_id: str = option(
        "",
        doc=(
            "This worker's name, used in its MQTT client id and stored with each event; "
            "empty means host name and process id."
        ),
    )
    shared_subscription: bool = option(
        False,
        doc=(
            "Subscribe with $share/<group>/... so several workers split the buses' fare "
            "batches (needs PostgreSQL, or one SQLite file on one host)."
        ),
    )
    group: str = option(SHARED_GROUP, doc="Shared-subscription group name.")
    batch_commit_size: int = option(
        1000, doc="Most events verified and committed in one database transaction."
    )
    batch_wait_s: float = option(
        0.02, doc="How long to wait for more messages before committing a partial batch."
    )
    verify: str = option(
        "runs",
        doc=(
            "How signatures are verified: runs (one Ed25519 verification per hash-linked "
            "run of a bus's records in a transaction, as busbell backend settle --verify "
            "runs; a record is authentic when its own signature verifies or a later "
            "authentic record of its bus names its hash as prev) or every (each record's "
            "own signature)."
        ),
    )
    max_held_per_bus: int = option(
        2000,
        doc=(
            "Out-of-order (future) events held in memory per bus while the gap is "
            "re-requested; beyond it the highest are dropped (the edge re-sends them)."
        ),
    )
    resend_after_s: float = option(
        1.0,
        doc=(
            "How long a gap (recorded in the database) must persist before the bus is "
            "asked to re-send it on fares/resend, and then until every live ingest worker "
            "has committed what it received before the gap opened; later requests for "
            "the same gap back off (doubling, up to resend_max_s)."
        ),
    )
    resend_max_s: float = option(
        60.0,
        doc=(
            "Re-send requests for one gap back off (resend_after_s doubling) up to this "
            "many seconds apart."
        ),
    )
    resend_max_attempts: int = option(
        8,
        doc=(
            "Re-send requests for one gap before it is reported (fare_gap_unfilled, "
            "busbell_fare_gaps_unfilled_total) and no longer re-asked."
        ),
    )
    device_refresh_s: float = option(
        30.0, doc="How often the device registry (keys, revocations) is re-read."
    )
    max_payload_bytes: int = option(
        4 * 1024 * 1024, doc="Larger MQTT payloads are rejected as malformed."
    )
    max_nesting: int = option(
        32,
        doc="Payloads nesting arrays/objects deeper are rejected before they are parsed.",
    )
    max_events_per_message: int = option(
        2000, doc="Messages carrying more events are rejected whole (too_many_events)."
    )
    quarantine_per_message: int = option(
        10,
        doc=(
            "Most rejected items of one message stored in the quarantine table (the rest "
            "are counted and logged, not stored)."
        ),
    )
    quarantine_per_bus_per_minute: int = option(
        120,
        doc=(
            "Most quarantine rows stored per bus (fares topic) per minute; beyond it "
            "rejections are counted and logged, not stored."
        ),
    )
    ignore_retained: bool = option(
        True,
        doc=(
            "Ignore fare batches the broker delivers as retained messages (a bus never "
            "publishes fares retained; a retained batch would be replayed on every restart)."
        ),
    )
    metrics_port: int = option(
        0, doc="Serve Prometheus metrics on this port (0: do not serve; the API may)."
    )


@dataclass(frozen=True, slots=True)
class SettlementSettings:
    """Online settlement of stored fare events into journeys and charges (``[settlement]``)."""

    enabled: bool = option(
        True, doc="Run the settlement worker in `busbell backend run` (one per database)."
    )
    interval_s: float = option(
        5.0, doc="Seconds between settlement passes (new events -> segments -> rider-days)."
    )
    gap_grace_s: float = option(
        60.0,
        doc=(
            "Events after a hole in a bus's stored seqs wait this long (by received_at) "
            "before they are settled anyway."
        ),
    )
    lost_policy: str = option(
        "last-stop",
        doc=(
            "Legs whose rider was not seen alighting: last-stop (charge to the last "
            "confirmed stop) or penalty (the route's maximum distance)."
        ),
    )
    default_category: str = option(
        "adult", doc="Fare category of riders enrolled without one (adult, youth, child)."
    )
    rules: Path | None = option(None, doc="Fare rules TOML (empty: the packaged rules).")
    batch_events: int = option(
        5000, doc="Most fare events of one bus turned into segments in one transaction."
    )
    stitch_gap_s: float = option(
        60.0,
        doc="Segments of one rider on one bus and trip this close in time (or overlapping)"
        " are one leg, whatever their causes say.",
    )
    unknown_trip_gap_s: float = option(
        900.0,
        doc="With no trip id: a segment that did not end alighted and the rider's next one"
        " on the same bus and route at most this much later are one leg (a quiet stretch).",
    )
    rejoin_stop_s: float = option(
        300.0,
        doc="A segment boarding at the stop where the rider's previous one on the same bus"
        " trip alighted, at most this much later, continues it (one ride).",
    )
    replay_overlap_s: float = option(
        60.0,
        doc=(
            "Overlap of two legs on different buses above which they conflict (one is dropped"
            " by the overlap rule below, or both are held for review)."
        ),
    )
    change_overlap_s: float = option(
        180.0,
        doc=(
            "A rider seen alighting from one bus at the stop where another bus was seen"
            " boarding them is a transfer when the legs overlap by at most this (the later"
            " bus stood there holding for the change); longer, both are held as a"
            " suspected replay (a cloned token boarding at the rider's stop)."
        ),
    )
    beside_overlap_s: float = option(
        360.0,
        doc=(
            "A change from a bus beside (the later bus heard the rider through the windows"
            " from a stop where it stood with the earlier one, and carried them on from the"
            " stop where the earlier let them off) is placed only when the legs overlap by"
            " at most this; longer, both are held as a suspected replay (a copy of the token"
            " riding a bus beside the rider's)."
        ),
    )
    overlap_settle: bool = option(
        True,
        doc=(
            "Settle a conflict in favour of the leg heard overlap_margin_db stronger that"
            " covers the other in time (a bus alongside heard the rider through its windows);"
            " false: hold both for review."
        ),
    )
    overlap_margin_db: float = option(
        10.0, doc="Median-RSSI margin (dB) by which the kept leg must be the stronger."
    )
    overlap_cover_s: float = option(
        60.0, doc="Slack (s) at either end when the kept leg must cover the dropped one."
    )
    overlap_loser_max_dbm: float | None = option(
        -65.0,
        doc=(
            "Loudest median RSSI (dBm) the dropped leg may have: a weaker leg heard louder"
            " sounds like a rider on board (or a relay louder than the rider), so both legs"
            " are held; 0 (or an empty environment variable): no limit."
        ),
    )
    overlap_loser_under_riders_db: float | None = option(
        10.0,
        doc=(
            "... unless its bus heard it at least this many dB below the riders it carried"
            " meanwhile (the events' evidence.riders_lvl): the same ceiling relative to that"
            " bus's riders, at any token power; or, the stronger leg overlap_margin_db"
            " stronger and heard at most this many dB over its own riders, this much further"
            " below its riders than the stronger bus below its own and at least half this"
            " below them; 0 (or an empty"
            " environment variable): the absolute ceiling alone."
        ),
    )

    overlap_by_rate: bool = option(
        True,
        doc=(
            "Also settle a conflict in favour of a leg heard overlap_rate_margin_db stronger"
            " whose bus decoded the token's adverts overlap_rate_ratio times as often over"
            " the common time (false: the RSSI margin alone)."
        ),
    )
    overlap_rate_margin_db: float = option(
        5.0, doc="Median-RSSI margin (dB) the kept leg needs with the advert-rate evidence."
    )
    overlap_rate_ratio: float = option(
        1.5,
        doc="Adverts decoded per second by the kept leg's bus over the other's (> 1).",
    )
    overlap_rate_alone_ratio: float | None = option(
        3.0,
        doc=(
            "A leg whose bus decoded the token's adverts this many times as often per second"
            " over the common time is kept on that alone, heard less than"
            " overlap_rate_margin_db stronger or even up to that much weaker (near the"
            " scanners' floor the far bus decodes only the strongest packets: its median"
            " RSSI says little); > 1; 0 (or an empty environment variable): off."
        ),
    )
    tentative_points: int = option(
        4,
        doc=(
            "Tentative pieces of one rider on one bus trip (rids the edge never confirmed"
            " alone) with no confirmed segment beside them are charged as one leg when their"
            " co-movement points add up to this (>= 1; keep it at the buses'"
            " classifier.sparse_adverts) ..."
        ),
    )
    tentative_spread_db: float = option(
        12.0,
        doc="... at levels within this many dB (the buses' classifier.sparse_fall_db).",
    )
    tentative_gap_s: float = option(
        600.0,
        doc="Longest wait (s) from one rid's tentative piece to the next rid's piece summed.",
    )
    tentative_carried_m: float = option(
        300.0,
        doc=(
            "Tentative pieces alone, the rider's only evidence on that bus trip, at two or"
            " more co-movement points and no confirmed segment of the rider on another bus"
            " then, the last not ended lost (heard until its rid rotated, or fading as doors"
            " opened), are charged to the first stop at or past where the bus last heard"
            " them when it went this many metres while hearing them (docs/backend.md,"
            " Carried); 0: off ..."
        ),
    )
    tentative_carried_under_db: float = option(
        30.0,
        doc="... their co-movement levels at most this many dB below the bus's riders.",
    )
    retry_max_s: float = option(
        300.0,
        doc=(
            "Longest wait before a failed settlement pass, a bus whose events raised or a"
            " rider-day that raised is tried again (the wait doubles from interval_s with"
            " each failure in a row)."
        ),
    )
    tentative_link_days: float = option(
        35.0,
        doc=(
            "Days after a dropped tentative piece (charged to nobody) ended when its"
            " rider_segments row, the link of its rid to the rider, is deleted (the fare"
            " events, holding only rids, are kept); 0: kept."
        ),
    )

    def __post_init__(self) -> None:
        try:
            self.journey_policy()
        except ValueError as exc:
            raise ValueError(f"settlement.{exc}") from None
        if not 0.0 <= self.tentative_link_days < math.inf:
            raise ValueError(
                "settlement.tentative_link_days must be 0 (kept) or a positive number of days,"
                f" got {self.tentative_link_days}"
            )
        if not 0.0 < self.retry_max_s < math.inf:
            raise ValueError(
                "settlement.retry_max_s must be a positive number of seconds,"
                f" got {self.retry_max_s}"
            )

    def journey_policy(self) -> JourneyPolicy:
        """The journey builder's rules these options give (it checks their values).

        Raises:
            ValueError: a value the journey builder rejects.
        """
        from backend._journeys import JourneyPolicy

        return JourneyPolicy(
            lost_policy="penalty" if self.lost_policy == "penalty" else "last-stop",
            stitch_gap_s=self.stitch_gap_s,
            unknown_trip_gap_s=self.unknown_trip_gap_s,
            rejoin_stop_s=self.rejoin_stop_s,
            replay_overlap_s=self.replay_overlap_s,
            change_overlap_s=self.change_overlap_s,
            beside_overlap_s=self.beside_overlap_s,
            overlap_margin_db=self.overlap_margin_db if self.overlap_settle else None,
            overlap_cover_s=self.overlap_cover_s,
            overlap_loser_max_dbm=self.overlap_loser_max_dbm,
            overlap_loser_under_riders_db=self.overlap_loser_under_riders_db or None,
            overlap_rate_margin_db=self.overlap_rate_margin_db if self.overlap_by_rate else None,
            overlap_rate_ratio=self.overlap_rate_ratio,
            overlap_rate_alone_ratio=self.overlap_rate_alone_ratio or None,
            category=self.default_category,
            tentative_points=self.tentative_points,
            tentative_spread_db=self.tentative_spread_db,
            tentative_gap_s=self.tentative_gap_s,
            tentative_carried_m=self.tentative_carried_m,
            tentative_carried_under_db=self.tentative_carried_under_db,
        )


@dataclass(frozen=True, slots=True)
class KeysSettings:
    """Fleet day keys and their distribution (``[keys]``)."""

    fleet_keys_file: Path | None = option(
        None,
        doc=(
            "FLEET.csv (day,fleet_key) imported at start when set; keys already in the "
            "database are kept."
        ),
    )
    days_ahead: int = option(
        7, doc="Fleet day keys generated and delivered to each bus ahead of today."
    )
    rider_days_ahead: int = option(
        7, doc="Longest time ahead, in days, that a rider's app or fob is given bk values."
    )
    denylist_hours: float = option(
        48.0,
        doc=(
            "Hours ahead for which the deny list carries each revoked rider's rids "
            "(re-issued as the window slides)."
        ),
    )
    publish_interval_s: float = option(
        3600.0,
        doc=(
            "How often keys are rotated (new days generated) and each bus's retained key "
            "bundle and the deny list are re-published (a revocation publishes at once)."
        ),
    )
    signing_key: Path | None = option(
        None,
        doc=(
            "The backend's Ed25519 key (PEM, PKCS#8) that signs the deny list; created "
            "(mode 0600) on first start if missing. Default: busbell-backend-signing.pem "
            "beside the SQLite database file; for PostgreSQL (or in-memory SQLite) in the "
            "state directory: $STATE_DIRECTORY (systemd StateDirectory=, /var/lib/busbell "
            "in the shipped unit), else $XDG_STATE_HOME/busbell, else "
            "~/.local/state/busbell; never the working directory. Give every backend of one "
            "fleet the same file. Buses need its public half: "
            "busbell backend public-key --config FILE prints it."
        ),
    )


@dataclass(frozen=True, slots=True)
class FilesSettings:
    """Registry and reference files (``[files]``)."""

    devices: Path | None = option(
        None,
        doc="DEVICES.csv (bus_id,public_key) imported into the device registry at start.",
    )
    riders: Path | None = option(
        None, doc="RIDERS.csv (rider_id,token_key) imported into the rider registry at start."
    )
    gtfs: Path | None = option(None, doc="GTFS static directory (stops, routes, trips).")


def _simulated_time(t: float, at_unix: float, speed: float) -> float:
    return t + (time.time() - at_unix) * speed


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """The rider/ops HTTP API (``[api]``)."""

    host: str = option("127.0.0.1", doc="Address the HTTP API listens on.")
    port: int = option(8080, doc="TCP port of the HTTP API.")
    operators: tuple[str, ...] = option(
        (),
        doc=(
            "Operator credentials, each 'NAME|SCOPE,SCOPE|SHA256HEX' (the SHA-256 of the "
            "operator's bearer token, never the token); scopes riders:read, riders:write, "
            "devices:write. Make one with: busbell backend api-token NAME --scopes SCOPES."
        ),
    )
    open_enrolment: bool = option(
        True,
        doc=(
            "Anyone may enrol (POST /riders without credentials: random rider id, adult "
            "fare category); false: only an operator with riders:write may enrol."
        ),
    )
    max_body_bytes: int = option(
        16384, doc="Largest request body; a bigger one is refused with 413 before it is read."
    )
    rate_per_s: float = option(
        5.0, doc="Requests per second a rider may make (token bucket refill)."
    )
    rate_burst: int = option(30, doc="Requests a rider may make at once (bucket size).")
    operator_rate_per_s: float = option(
        200.0, doc="Requests per second an operator credential may make."
    )
    operator_rate_burst: int = option(1000, doc="Requests an operator may make at once.")
    anonymous_rate_per_s: float = option(
        5.0,
        doc=(
            "Requests per second per client address without valid credentials (public "
            "endpoints, enrolment, failed authentication)."
        ),
    )
    anonymous_rate_burst: int = option(
        50, doc="Requests per client address without valid credentials at once."
    )
    enrol_per_hour: float = option(
        20.0, doc="Enrolments per hour per client address without operator credentials."
    )
    clock_t: float | None = option(
        None,
        doc=(
            "A simulated clock for the API (busbell demo, whose buses run on their "
            "scenario's date at --speed): at UNIX time clock_at_unix it reads clock_t (UNIX "
            "seconds) and it runs clock_speed times as fast. It stamps the riders' waits "
            "and their lifetimes, ages the buses' positions and dates GTFS-Realtime, so "
            "that they share the buses' clock. Empty: the wall clock."
        ),
    )
    clock_at_unix: float | None = option(
        None, doc="The UNIX time at which the simulated clock reads clock_t."
    )
    clock_speed: float = option(
        1.0, doc="How many seconds the simulated clock runs per second (with clock_t)."
    )

    def clock(self) -> Callable[[], float]:
        """The API's clock: the wall clock, or the simulated one of ``clock_t``."""
        if self.clock_t is None or self.clock_at_unix is None:
            return time.time
        return functools.partial(
            _simulated_time, self.clock_t, self.clock_at_unix, self.clock_speed
        )

    def __post_init__(self) -> None:
        from backend._auth import OperatorRegistry

        if (self.clock_t is None) != (self.clock_at_unix is None):
            raise ValueError("api.clock_t and api.clock_at_unix go together")
        if not (math.isfinite(self.clock_speed) and self.clock_speed > 0):
            raise ValueError("api.clock_speed must be positive")

        OperatorRegistry(self.operators)  # a clear error for a malformed entry
        if self.max_body_bytes < 1024:
            raise ValueError("api.max_body_bytes must be at least 1024")
        rates = (self.rate_per_s, self.operator_rate_per_s, self.anonymous_rate_per_s)
        bursts = (self.rate_burst, self.operator_rate_burst, self.anonymous_rate_burst)
        if min(rates) <= 0 or min(bursts) < 1 or self.enrol_per_hour <= 0:
            raise ValueError("api rates must be positive and bursts at least 1")


@dataclass(frozen=True, slots=True)
class WaitsSettings:
    """Riders' boarding-wait requests (``[waits]``): the rules of Gyeonggi's 승차벨."""

    default_lifetime_s: int = option(
        900, doc="Lifetime of a wait (its MQTT message expiry) when the rider gives none."
    )
    min_lifetime_s: int = option(60, doc="Shortest lifetime a rider may ask for.")
    max_lifetime_s: int = option(3600, doc="Longest lifetime a rider may ask for.")
    cutoff_stops: int = option(
        2,
        doc=(
            "A wait is accepted only while the next bus of the route (from the buses' "
            "retained display models) has not passed the stop this many stops before the "
            "rider's stop; 0: no such rule."
        ),
    )
    position_max_age_s: float = option(
        120.0,
        doc="A bus's display model older than this (or an offline bus) gives no position.",
    )
    rate_max: int = option(10, doc="Most wait requests one rider may make per rate_window_s.")
    rate_window_s: float = option(3600.0, doc="The window of the per-rider rate rule.")
    status_retain_s: int = option(
        3600, doc="MQTT message expiry of a final request status (served, expired, cancelled)."
    )
    max_live_waits: int = option(
        100_000, doc="Most live waits the backend tracks in memory (beyond: refused, counted)."
    )
    tick_s: float = option(1.0, doc="How often waits past their lifetime are expired.")

    def __post_init__(self) -> None:
        if self.tick_s <= 0:
            raise ValueError("waits.tick_s must be positive")
        self.rules()

    def rules(self) -> WaitRules:
        """The wait rules these options give (they check their values).

        Raises:
            ValueError: an inconsistent value.
        """
        from backend._waits import WaitRules

        return WaitRules(
            default_lifetime_s=self.default_lifetime_s,
            min_lifetime_s=self.min_lifetime_s,
            max_lifetime_s=self.max_lifetime_s,
            cutoff_stops=self.cutoff_stops,
            position_max_age_s=self.position_max_age_s,
            rate_max=self.rate_max,
            rate_window_s=self.rate_window_s,
            status_retain_s=self.status_retain_s,
            max_live_waits=self.max_live_waits,
        )


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """Root configuration of the backend."""

    database: DatabaseSettings = option(factory=DatabaseSettings, doc="Ledger database.")
    mqtt: MqttSettings = option(factory=MqttSettings, doc="Central MQTT broker.")
    ingest: IngestSettings = option(factory=IngestSettings, doc="Fare ingest.")
    settlement: SettlementSettings = option(
        factory=SettlementSettings, doc="Online settlement (journeys, charges)."
    )
    keys: KeysSettings = option(factory=KeysSettings, doc="Fleet keys and distribution.")
    files: FilesSettings = option(factory=FilesSettings, doc="Registry and GTFS files.")
    api: ApiSettings = option(factory=ApiSettings, doc="HTTP API.")
    waits: WaitsSettings = option(factory=WaitsSettings, doc="Boarding-wait requests.")


CONFIG_CLASS = BackendConfig
