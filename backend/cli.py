"""``busbell backend ...``: run the central service, settle offline, enrol riders, fares.

Dispatched from :mod:`busbell.cli` as ``main(argv, prog)``. User-facing output goes to
stdout/stderr here only; the library modules log with structlog.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from busbell._errors import BusbellError

if TYPE_CHECKING:
    import asyncio

    from sqlalchemy.ext.asyncio import AsyncEngine

    from backend._journeys import JourneyPolicy

__all__ = ["main", "run_backend"]

SETTLE_EPILOG = """\
example:
  busbell backend settle EVENTS.jsonl --gtfs gtfs/ --riders RIDERS.csv \\
      --devices DEVICES.csv --out JOURNEYS.jsonl --lost-policy last-stop

Runs the same checks as the online backend (schema, signature against DEVICES.csv,
per-bus hash chain, dedupe by (bus_id, seq) and event_id, rid resolution with the
riders' keys, rtag and tq proof) and writes one JSON object per journey, sorted by
rider, first boarding, bus. Rejected events are counted by reason on stderr.
"""

ENROLL_EPILOG = """\
example:
  busbell backend enroll --riders RIDERS.csv --kind fob
  busbell backend enroll --db sqlite+aiosqlite:///busbell.db --kind app

Issues a new rider with a fresh 16-byte token key, prints the rider id and the token key
ONCE (give it to the fob or app; the backend keeps it to resolve rids), and appends the
rider to RIDERS.csv and/or the database.
"""

EXPLAIN_EPILOG = """\
example:
  busbell backend fares explain '{"rider_id":"r1","legs":[{"bus_id":"b1",
      "route_id":"10","board_stop_id":"S1","board_t":1762500000,
      "alight_stop_id":"S5","alight_t":1762501200}],"fare_krw":1450}' --gtfs gtfs/
  busbell backend fares explain JOURNEYS.jsonl --gtfs gtfs/ --rider r1

Reprices each journey with the fare engine (distances from GTFS, else the leg's
distance_m) and prints the engine's explanation line by line.
"""

OPERATOR_EPILOG = """\
example:
  busbell backend api-token night-desk --scopes riders:read,riders:write

Makes a new operator bearer token for the rider API and prints it ONCE, then the line to
add to the backend config's [api] operators list (it holds only the token's SHA-256).
Scopes: riders:read, riders:write, devices:write.
"""

RUN_EPILOG = """\
example:
  busbell backend run --config backend.toml

Migrates the database, then runs fare ingest, settlement, the rider API (uvicorn) and
the key publisher until interrupted.
"""


FAILURES_EPILOG = """\
examples:
  busbell backend settlement-failures --config backend.toml
  busbell backend settlement-failures --db sqlite+aiosqlite:///busbell-backend.db --json

Read-only. Lists what the settlement worker put aside (docs/backend.md, "Failures"):
rider-days whose recomputation raised (settlement_dirty rows with attempts > 0; the
worker retries them after a backoff, at once when a new segment marks them, and at its
first pass after a restart), events never charged because settling them raised
(unresolved_segments with reason settle_error; retried at a restart's first pass), and
every never-charged event counted by reason. Exit status 0 when nothing failed, 3
otherwise (for a monitoring check).
"""

MISSED_EPILOG = """\
examples:
  busbell backend missed-report --config backend.toml             # the last 7 days
  busbell backend missed-report --db sqlite+aiosqlite:///busbell-backend.db --since=-24h
  busbell backend missed-report --config backend.toml --route 11 --since 2026-12-01 --json

Reads the missed_stops table (the buses' signed `missed` chain records, stored by ingest)
and prints, per route and stop, how many waits were missed, when, by which bus, and each
record's check: verified (hash and Ed25519 signature against the device registry), or
malformed, mismatch, hash_mismatch, unknown_device, bad_signature. Times are in the GTFS
agency's timezone when a feed is given (--gtfs or [files] gtfs), else UTC.
"""


SERVICE_STOP_GRACE_S = 25.0
"""How long `run_backend` lets the service finish after ``stop`` before cancelling it (more
than the service's own grace for ingest's batch in flight, ``backend._service.STOP_GRACE_S``)."""


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _float_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _positive(text: str) -> float:
    value = _float_arg(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    value = _float_arg(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def _above_one(text: str) -> float:
    value = _float_arg(text)
    if value <= 1:
        raise argparse.ArgumentTypeError(f"must be > 1, got {text!r}")
    return value


def _above_one_or_none(text: str) -> float | None:
    return None if text.strip().lower() == "none" else _above_one(text)


def _positive_or_none(text: str) -> float | None:
    return None if text.strip().lower() == "none" else _positive(text)


def _dbm_or_none(text: str) -> float | None:
    return None if text.strip().lower() == "none" else _float_arg(text)


def _build_parser(prog: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog,
        description="busbell central service.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "commands: run, settle, enroll, fares explain, api-token, missed-report, "
            "settlement-failures, public-key (each has --help)"
        ),
    )
    ap.add_argument(
        "--log-level",
        default="info",
        help="log level: debug, info, warning, error (logs go to stderr)",
    )
    sub = ap.add_subparsers(dest="command", required=True)

    st = sub.add_parser(
        "settle",
        help="settle fare events offline into priced journeys",
        description="Settle EVENTS.jsonl offline into JOURNEYS.jsonl.",
        epilog=SETTLE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    st.add_argument("events", nargs="+", type=Path, help="EVENTS.jsonl file(s)")
    st.add_argument("--gtfs", type=Path, required=True, help="GTFS static directory")
    st.add_argument("--riders", type=Path, required=True, help="RIDERS.csv")
    st.add_argument("--devices", type=Path, required=True, help="DEVICES.csv")
    st.add_argument(
        "--out", type=Path, required=True, help="JOURNEYS.jsonl to write (never an existing file)"
    )
    st.add_argument("--force", action="store_true", help="replace --out if it exists")
    st.add_argument("--rules", type=Path, default=None, help="fare rules TOML (default: packaged)")
    st.add_argument("--lost-policy", choices=["last-stop", "penalty"], default="last-stop")
    st.add_argument("--category", default="adult", help="rider category (adult, youth, child)")
    st.add_argument("--default-network", default=None, help="class of routes without a network")
    st.add_argument("--stitch-gap-s", type=_non_negative, default=60.0)
    st.add_argument("--unknown-trip-gap-s", type=_non_negative, default=900.0)
    st.add_argument("--rejoin-stop-s", type=_non_negative, default=300.0)
    st.add_argument("--replay-overlap-s", type=_non_negative, default=60.0)
    st.add_argument(
        "--change-overlap-s",
        type=_non_negative,
        default=180.0,
        help="a change of buses at one stop overlapping longer than this is held as a"
        " suspected replay (s)",
    )
    st.add_argument(
        "--beside-overlap-s",
        type=_non_negative,
        default=360.0,
        help="a change from a bus beside (heard through the windows from a stop where the"
        " two buses stood together) overlapping longer than this is held as a suspected"
        " replay (s)",
    )
    st.add_argument(
        "--overlap-margin-db",
        type=_positive,
        default=10.0,
        help="drop the overlapping leg heard this much weaker (dB) on another bus",
    )
    st.add_argument("--overlap-cover-s", type=_non_negative, default=60.0)
    st.add_argument(
        "--overlap-loser-max-dbm",
        type=_dbm_or_none,
        default=-65.0,
        help="... only if that leg was heard at most this loud (dBm; 'none': no limit)",
    )
    st.add_argument(
        "--overlap-loser-under-riders-db",
        type=_positive_or_none,
        default=10.0,
        help="... or at least this far (dB) below the riders its own bus carried meanwhile"
        " (evidence.riders_lvl), also beyond the winner's ride when that much further below"
        " them than the winner's bus heard the rider ('none': the absolute ceiling alone)",
    )
    st.add_argument(
        "--overlap-rate-margin-db",
        type=_positive,
        default=5.0,
        help="... or this much weaker (dB) when its bus also decoded --overlap-rate-ratio"
        " times fewer of the token's adverts per second",
    )
    st.add_argument("--overlap-rate-ratio", type=_above_one, default=1.5)
    st.add_argument(
        "--overlap-rate-alone-ratio",
        type=_above_one_or_none,
        default=3.0,
        help="... or when its bus decoded this many times as many adverts per second, heard"
        " up to --overlap-rate-margin-db weaker ('none': off)",
    )
    st.add_argument(
        "--tentative-points",
        type=_at_least_one,
        default=4,
        help="charge a rider's tentative pieces of one bus trip as one leg when their"
        " co-movement points add up to this (the buses' classifier.sparse_adverts)",
    )
    st.add_argument(
        "--tentative-spread-db",
        type=_non_negative,
        default=12.0,
        help="... at levels within this many dB (the buses' classifier.sparse_fall_db)",
    )
    st.add_argument(
        "--tentative-gap-s",
        type=_non_negative,
        default=600.0,
        help="... each piece starting at most this long after the previous rid's piece ended",
    )
    st.add_argument(
        "--tentative-carried-m",
        type=_non_negative,
        default=300.0,
        help="charge a rider's tentative pieces alone (their only evidence on that bus trip,"
        " two or more co-movement points, not confirmed on another bus then) to the first"
        " stop at or past where the bus last heard them, when it went this far while"
        " hearing them, the last not ended lost (0: off; docs/backend.md, Carried)",
    )
    st.add_argument(
        "--tentative-carried-under-db",
        type=_non_negative,
        default=30.0,
        help="... their co-movement levels at most this many dB below the bus's riders",
    )
    st.add_argument(
        "--no-overlap-rate",
        action="store_true",
        help="settle overlaps by the RSSI margin alone (not by adverts decoded)",
    )
    st.add_argument(
        "--hold-overlaps",
        action="store_true",
        help="never drop an overlapping leg: hold both for review",
    )
    st.add_argument("--proof-slack-s", type=float, default=None)
    st.add_argument("--stats", type=Path, default=None, help="also write the counts as JSON")
    st.add_argument(
        "--processes",
        type=int,
        default=0,
        help="processes checking events (signatures, rids, proofs); 0: one per CPU",
    )
    st.add_argument(
        "--verify",
        choices=["runs", "every"],
        default="runs",
        help="signatures: one per hash-linked run of a bus's events (runs), "
        "or every event's own (every); the same verdicts but for a record only the bus's "
        "own key could have linked to (docs/backend-ingest.md)",
    )

    en = sub.add_parser(
        "enroll",
        help="enrol a rider: issue a token key (printed once)",
        description="Enrol a rider and issue a token key.",
        epilog=ENROLL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    en.add_argument("--riders", type=Path, default=None, help="RIDERS.csv to append to")
    en.add_argument("--db", default=None, help="database URL (SQLAlchemy async)")
    en.add_argument("--kind", choices=["fob", "app"], default="fob")
    en.add_argument("--rider-id", default=None, help="rider id (default: a random one)")
    en.add_argument(
        "--category",
        choices=["adult", "youth", "child"],
        default="adult",
        help="fare category the rider is priced with (stored with --db)",
    )

    fa = sub.add_parser(
        "fares",
        help="fare tools",
        description="Fare tools.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  busbell backend fares explain JOURNEYS.jsonl --gtfs gtfs/",
    )
    fsub = fa.add_subparsers(dest="fares_command", required=True)
    ex = fsub.add_parser(
        "explain",
        help="explain how a journey's fare is computed",
        description="Explain a journey's fare line by line.",
        epilog=EXPLAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("journey", help="a journey JSON object, or a JOURNEYS.jsonl file")
    ex.add_argument("--gtfs", type=Path, required=True)
    ex.add_argument("--rules", type=Path, default=None)
    ex.add_argument("--category", default=None, help="override the journey's category")
    ex.add_argument("--rider", default=None, help="only this rider's journeys (file input)")

    rn = sub.add_parser(
        "run",
        help="run the central service",
        description="Run ingest, settlement, the rider API and the key publisher.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rn.add_argument("--config", type=Path, default=None, help="backend TOML config")

    at = sub.add_parser(
        "api-token",
        help="make an operator token for the rider API",
        description="Make an operator bearer token and its [api] operators config entry.",
        epilog=OPERATOR_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    at.add_argument("name", help="operator name ([A-Za-z0-9_-]+)")
    at.add_argument(
        "--scopes", required=True, help="comma-separated: riders:read, riders:write, devices:write"
    )

    mr = sub.add_parser(
        "missed-report",
        help="report the stops buses passed while a rider waited (signed records)",
        description="Missed stops per route and stop: how many, when, by which bus; each "
        "bus-signed record checked again (hash, signature against the device registry).",
        epilog=MISSED_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mr.add_argument("--config", type=Path, default=None, help="backend TOML config")
    mr.add_argument("--db", default=None, help="database URL (default: the config's)")
    mr.add_argument(
        "--since",
        type=_when_arg,
        default=None,
        help="from this time: UNIX seconds, ISO date/time (UTC unless it says), or a time "
        "ago written with '=': --since=-24h, --since=-7d, --since=-30m (default: 7 days ago; "
        "ago is on the backend's clock, [api] clock_t when the config sets one)",
    )
    mr.add_argument("--until", type=_when_arg, default=None, help="before this time (same forms)")
    mr.add_argument("--route", default=None, help="only this route")
    mr.add_argument("--stop", default=None, help="only this stop")
    mr.add_argument("--bus", default=None, help="only this bus")
    mr.add_argument("--gtfs", type=Path, default=None, help="GTFS directory, for stop names")
    mr.add_argument("--limit", type=int, default=10_000, help="most records (the newest)")
    mr.add_argument("--json", action="store_true", help="print the report as JSON")

    sf = sub.add_parser(
        "settlement-failures",
        help="list the rider-days and events settlement put aside (what failed and why)",
        description="Rider-days whose recomputation raised and events whose settling "
        "raised (dead letters), with the error; never-charged events by reason.",
        epilog=FAILURES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sf.add_argument("--config", type=Path, default=None, help="backend TOML config")
    sf.add_argument("--db", default=None, help="database URL (default: the config's)")
    sf.add_argument("--limit", type=int, default=1000, help="most rows listed of each kind")
    sf.add_argument("--json", action="store_true", help="print the report as JSON")

    pk = sub.add_parser(
        "public-key",
        help="print the deny-list signing key's public half (for the buses' config)",
        description=(
            "Print the backend's deny-list public key (64 hex characters) for the edge "
            "option denylist_public_key; creates the signing key if it does not exist yet."
        ),
        epilog="example:\n  busbell backend public-key --config backend.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pk.add_argument("--config", type=Path, default=None, help="backend TOML config")
    return ap


@dataclass(frozen=True, slots=True)
class _Ago:
    """A time given as how long ago: resolved on the backend's clock (``[api] clock_t``)."""

    seconds: float


def _when(value: float | _Ago | None, now: float) -> float | None:
    return now - value.seconds if isinstance(value, _Ago) else value


def _when_arg(text: str) -> float | _Ago:
    """A time: UNIX seconds, ISO 8601 (naive means UTC), or ``-Nd``/``-Nh``/``-Nm`` ago."""
    import datetime as dt
    import re

    text = text.strip()
    m = re.fullmatch(r"-(\d+(?:\.\d+)?)([dhm])", text)
    if m:
        unit = {"d": 86400, "h": 3600, "m": 60}[m.group(2)]
        return _Ago(float(m.group(1)) * unit)
    try:
        return _float_arg(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (UNIX seconds, ISO date/time, or -7d/-24h/-30m)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def main(argv: Sequence[str] | None = None, prog: str = "busbell backend") -> int:
    """Run a ``busbell backend`` command; returns the exit status."""
    args = _build_parser(prog).parse_args(list(argv) if argv is not None else None)
    from busbell import configure_logging

    configure_logging(args.log_level)
    # BusbellError and OSError reach the `busbell` entry point, which reports every
    # command's failures in one format (`busbell: error: ...`, exit status 1)
    if args.command == "settle":
        return _settle(args)
    if args.command == "enroll":
        return _enroll(args)
    if args.command == "fares":
        return _explain(args)
    if args.command == "api-token":
        return _api_token(args)
    if args.command == "missed-report":
        return _missed_report(args)
    if args.command == "settlement-failures":
        return _settlement_failures(args)
    if args.command == "public-key":
        return _public_key(args)
    return _run(args)


def _public_key(args: argparse.Namespace) -> int:
    from backend._denylist import load_signing_key, signing_key_path
    from backend.config import BackendConfig
    from busbell._config import load_config

    config = load_config(BackendConfig, args.config)
    path = signing_key_path(config)
    _out(load_signing_key(path).public.hex)
    _err(f"(the key is {path}; set denylist_public_key to this value in each edge.toml)")
    return 0


def _api_token(args: argparse.Namespace) -> int:
    from backend._auth import new_operator_token, operator_entry

    token = new_operator_token()
    try:
        entry = operator_entry(args.name, [s for s in args.scopes.split(",") if s], token)
    except ValueError as exc:
        raise BusbellError(str(exc)) from None
    _out(f"token: {token}")
    _out("shown once; add to the backend config:")
    _out("[api]")
    _out(f'operators = ["{entry}"]')
    return 0


# ---------------------------------------------------------------------------- failures


def _read_ledger(db: Any, read: Callable[[AsyncEngine], Awaitable[Any]], what: str) -> Any:
    """``read`` run on the ledger ``db`` (a URL, or the config's database settings).

    Raises:
        BusbellError: the database cannot be read (``cannot read {what}: ...``).
    """
    import asyncio

    import sqlalchemy as sa

    from backend._db import create_engine, engine_for

    async def run() -> Any:
        engine = create_engine(db) if isinstance(db, str) else engine_for(db)
        try:
            return await read(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except sa.exc.SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or exc
        raise BusbellError(
            f"cannot read {what}: {reason} (a database `busbell backend run` migrated?)"
        ) from None


def _settlement_failures(args: argparse.Namespace) -> int:
    from backend._settlement import settlement_failures
    from backend.config import BackendConfig
    from busbell._config import load_config

    config = load_config(BackendConfig, args.config)
    limit = max(0, args.limit)
    result = _read_ledger(
        args.db or config.database,
        lambda engine: settlement_failures(engine, limit=limit),
        "the settlement tables",
    )
    if args.json:
        _out(json.dumps(result.to_json(), indent=2, sort_keys=True, ensure_ascii=False))
    else:
        for line in result.lines():
            _out(line)
    return 3 if result.rider_days_total or result.dead_letters_total else 0


# ---------------------------------------------------------------------------- missed


def _missed_report(args: argparse.Namespace) -> int:
    import datetime as dt
    from zoneinfo import ZoneInfo

    from backend._missed import format_report, missed_report
    from backend.config import BackendConfig
    from busbell._config import load_config
    from busbell._gtfs import load_gtfs

    config = load_config(BackendConfig, args.config)
    gtfs = args.gtfs or config.files.gtfs
    feed = load_gtfs(gtfs) if gtfs is not None else None
    names = {sid: s.name for sid, s in feed.stops.items() if s.name} if feed else {}
    # "ago" on the backend's clock: the demo's is its buses' (the scenario's date)
    now = config.api.clock()()
    since = _when(args.since, now) if args.since is not None else now - 7 * 86400
    until = _when(args.until, now)

    result = _read_ledger(
        args.db or config.database,
        lambda engine: missed_report(
            engine,
            since=since,
            until=until,
            route_id=args.route,
            stop_id=args.stop,
            bus_id=args.bus,
            limit=args.limit,
            stop_names=names,
        ),
        "missed stops",
    )
    if args.json:
        _out(json.dumps(result.to_json(), indent=2, sort_keys=True, ensure_ascii=False))
    else:
        tz: dt.tzinfo = ZoneInfo(feed.timezone) if feed is not None else dt.UTC
        for line in format_report(result, tz):
            _out(line)
    return 0


# ---------------------------------------------------------------------------- settle


def _settle_policy(args: argparse.Namespace) -> JourneyPolicy:
    """The journey builder's rules that ``backend settle``'s options give."""
    from backend._journeys import JourneyPolicy

    return JourneyPolicy(
        lost_policy=args.lost_policy,
        stitch_gap_s=args.stitch_gap_s,
        unknown_trip_gap_s=args.unknown_trip_gap_s,
        rejoin_stop_s=args.rejoin_stop_s,
        replay_overlap_s=args.replay_overlap_s,
        change_overlap_s=args.change_overlap_s,
        beside_overlap_s=args.beside_overlap_s,
        overlap_margin_db=None if args.hold_overlaps else args.overlap_margin_db,
        overlap_cover_s=args.overlap_cover_s,
        overlap_loser_max_dbm=args.overlap_loser_max_dbm,
        overlap_loser_under_riders_db=args.overlap_loser_under_riders_db,
        overlap_rate_margin_db=None if args.no_overlap_rate else args.overlap_rate_margin_db,
        overlap_rate_ratio=args.overlap_rate_ratio,
        overlap_rate_alone_ratio=args.overlap_rate_alone_ratio,
        category=args.category,
        default_network=args.default_network,
        tentative_points=args.tentative_points,
        tentative_spread_db=args.tentative_spread_db,
        tentative_gap_s=args.tentative_gap_s,
        tentative_carried_m=args.tentative_carried_m,
        tentative_carried_under_db=args.tentative_carried_under_db,
    )


def _settle(args: argparse.Namespace) -> int:
    from backend._fare_engine import FareEngine
    from backend._fare_rules import load_rules
    from backend._journeys import JourneyBuilder
    from backend._resolve import DEFAULT_PROOF_SLACK_S, Resolver, RiderKeyring
    from backend._settle import Settler
    from busbell._cliutil import NothingUseful, Progress, check_output_path, rejection_summary
    from busbell._gtfs import load_gtfs
    from busbell._keyfiles import read_devices, read_riders

    t0 = time.perf_counter()
    inputs = [*args.events, args.gtfs, args.riders, args.devices]
    check_output_path(args.out, [*inputs, *([args.rules] if args.rules else [])], force=args.force)
    feed = load_gtfs(args.gtfs)
    rules = load_rules(args.rules, timezone=feed.timezone)
    devices = read_devices(args.devices)
    ring = RiderKeyring()

    def load_riders() -> None:
        # while the workers check the first events: nothing needs the riders before
        riders = sorted(read_riders(args.riders).items())
        # in bulk: 2.5 times faster than one rider at a time
        ring.extend([rider_id for rider_id, _ in riders], b"".join(key for _, key in riders))

    # Settle resolves every accepted segment at the end, in bulk: the tables of all the
    # day's intervals are built in one pass and kept (12 bytes per rider each), so the
    # cost does not depend on the order of the events.
    resolver = Resolver(
        ring,
        proof_slack_s=DEFAULT_PROOF_SLACK_S if args.proof_slack_s is None else args.proof_slack_s,
    )
    policy = _settle_policy(args)
    builder = JourneyBuilder(FareEngine(rules), feed, policy)
    settler = Settler(devices, resolver, builder, verify=args.verify)
    progress = Progress("reading events", unit="events")
    processes = args.processes if args.processes > 0 else (os.cpu_count() or 1)
    t1 = time.perf_counter()
    settler.feed_files(
        args.events, processes=processes, progress=progress.advance, meanwhile=load_riders
    )
    progress.close()
    t2 = time.perf_counter()
    # journeys are written as they are built, a block of riders at a time (bounded memory)
    n_journeys = charged = review = 0
    tmp = args.out.with_name(args.out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for text, flags in settler.iter_journey_blocks(processes=processes):
            f.write(text)
            n_journeys += len(flags)
            both = flags.count(3)  # flag bytes: bit 0 charged, bit 1 held for review
            charged += flags.count(1) + both
            review += flags.count(2) + both
    tmp.replace(args.out)
    t3 = time.perf_counter()
    stats = settler.stats
    _err(
        f"settled {stats.read} event(s): {stats.accepted} accepted, "
        f"{sum(stats.rejected.values())} rejected, {stats.duplicates} duplicate(s), "
        f"{stats.signatures} signature(s) verified ({args.verify}); "
        f"{n_journeys} journey(s) ({charged} charged, {review} for review) "
        f"-> {args.out} in {time.perf_counter() - t0:.1f} s (checks and chain "
        f"{t2 - t1:.1f} s, rids, proofs and journeys {t3 - t2:.1f} s, {processes} "
        "process(es))"
    )
    for reason, n in sorted(stats.rejected.items()):
        _err(f"  rejected {reason}: {n}")
    for kind, n in sorted(stats.warnings.items()):
        _err(f"  warning {kind}: {n}")
    if args.stats is not None:
        args.stats.write_text(json.dumps(stats.to_json(), indent=2) + "\n", encoding="utf-8")
    if stats.read and not stats.accepted and not stats.duplicates:
        raise NothingUseful(
            "nothing settled: " + rejection_summary(stats.read, stats.rejected, "event")
        )
    return 0


# ---------------------------------------------------------------------------- enroll


def _enroll(args: argparse.Namespace) -> int:
    from busbell._keyfiles import RIDERS_HEADER, append_row, read_riders

    if args.riders is None and args.db is None:
        _err("error: give --riders RIDERS.csv and/or --db URL")
        return 2
    rider_id = args.rider_id or f"r-{secrets.token_hex(12)}"
    token_key = secrets.token_bytes(16)
    riders_exist = args.riders is not None and args.riders.exists()
    if riders_exist and args.riders.stat().st_size and rider_id in read_riders(args.riders):
        _err(f"error: rider {rider_id} is already in {args.riders}")
        return 2
    access_token = ""
    if args.db is not None:
        import asyncio

        from backend._api import enroll_rider

        access_token = asyncio.run(
            enroll_rider(args.db, rider_id, token_key, kind=args.kind, category=args.category)
        )
    if args.riders is not None:
        append_row(args.riders, RIDERS_HEADER, (rider_id, token_key.hex()))
    _out(f"rider_id: {rider_id}")
    _out(f"kind: {args.kind}")
    _out(f"category: {args.category}")
    _out(f"token_key: {token_key.hex()}")
    if args.db is not None:
        _out(f"access_token: {access_token}")
    _err("the token key is shown once: load it into the fob or app now")
    return 0


# ---------------------------------------------------------------------------- explain


def _journeys_from(text: str) -> list[dict[str, Any]]:
    stripped = text.strip()
    if stripped.startswith("{"):
        obj = json.loads(stripped)
        return [obj]
    out: list[dict[str, Any]] = []
    with open(text, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise BusbellError(f"{text}:{lineno}: not JSON") from None
            out.append(obj)
    return out


def _explain(args: argparse.Namespace) -> int:
    from backend._fare_engine import FareEngine
    from backend._fare_rules import load_rules
    from backend._journey_explain import explain_journey
    from backend._journeys import JourneyBuilder
    from busbell._gtfs import load_gtfs

    feed = load_gtfs(args.gtfs)
    rules = load_rules(args.rules, timezone=feed.timezone)
    builder = JourneyBuilder(FareEngine(rules), feed)
    try:
        journeys = _journeys_from(args.journey)
    except ValueError as exc:
        _err(f"error: journey is not valid JSON: {exc}")
        return 2
    if args.rider is not None:
        journeys = [j for j in journeys if j.get("rider_id") == args.rider]
    if not journeys:
        _err("error: no journey to explain")
        return 2
    status = 0
    for n, obj in enumerate(journeys):
        if n:
            _out("")
        lines, mismatch = explain_journey(builder, obj, category=args.category)
        for line in lines:
            _out(line)
        if mismatch:
            status = 1
    return status


# ---------------------------------------------------------------------------- run


STOP_OVERDUE_S = SERVICE_STOP_GRACE_S + 5.0
"""After a stop (a signal, or a task that failed), how long until the process ends anyway."""


async def _stop_watchdog(stop: asyncio.Event) -> None:
    """Once ``stop`` is set, end the process if it has not ended within STOP_OVERDUE_S.

    A task that lost its cancel (Python 3.11's ``wait_for`` under an MQTT publish) kept
    ``busbell backend run`` alive forever after a stop or a failure. Ending it is as safe
    as a SIGKILL: a batch is acked only after its commit. The timer is a thread, so it
    fires even when the event loop is stuck.
    """
    import asyncio
    import os
    import threading

    await stop.wait()
    loop = asyncio.get_running_loop()

    def overdue() -> None:
        from busbell import get_logger

        try:  # what still runs (read from another thread: a best effort, at the very end)
            stuck = sorted(
                f"{t.get_name()} at {f.f_code.co_name}:{f.f_lineno}"
                for t in asyncio.all_tasks(loop)
                for f in t.get_stack(limit=1)
            )
        except RuntimeError:
            stuck = []
        get_logger("backend.cli").error(
            "backend_stop_overdue", waited_s=STOP_OVERDUE_S, tasks=stuck
        )
        os._exit(1)

    timer = threading.Timer(STOP_OVERDUE_S, overdue)
    timer.daemon = True
    timer.start()


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    async def main() -> int:
        # SIGTERM (systemd, docker stop) and SIGINT stop the service the same clean way:
        # ingest finishes the batch in flight (commit, then ack) and acks nothing else
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            if not stop.is_set():
                from busbell import get_logger

                get_logger("backend.cli").info("backend_stopping", signal=sig.name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        watchdog = asyncio.create_task(_stop_watchdog(stop), name="busbell-backend.watchdog")
        try:
            return await run_backend(args.config, stop=stop)
        finally:
            watchdog.cancel()

    try:
        status: int = asyncio.run(main())
    except ExceptionGroup as eg:
        # a task of the service failed (the API port in use, say): report the first error
        # as main() reports any other (clear message, exit status), not as a group
        first: BaseException = eg
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return status


async def run_backend(config_path: Path | None, *, stop: asyncio.Event | None = None) -> int:
    """Run the rider API service (ingest, keys) and, when enabled, the settlement worker.

    Returns:
        The service's exit status.
    """
    import asyncio
    import contextlib

    from backend._service import run_service
    from backend._settlement import run_settlement
    from backend.config import BackendConfig
    from busbell._config import load_config

    config = load_config(BackendConfig, config_path)
    stopper = stop or asyncio.Event()
    if not config.settlement.enabled:
        return await run_service(config_path, stop=stopper)
    status = 0

    async def service() -> None:
        nonlocal status
        inner = asyncio.create_task(run_service(config_path, stop=stopper))
        stopped = asyncio.create_task(stopper.wait())
        try:
            await asyncio.wait({inner, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not inner.done():
                # run_service ends soon after `stop` (its task group is cancelled); should
                # a task hang, give it a moment to finish, then cancel what is left
                await asyncio.wait({inner}, timeout=SERVICE_STOP_GRACE_S)
                inner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                status = await inner
        finally:
            stopped.cancel()
            stopper.set()

    async def settlement() -> None:
        try:
            await run_settlement(config, stop=stopper)
        finally:
            stopper.set()

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(service(), name="busbell-backend.service")
            tg.create_task(settlement(), name="busbell-backend.settlement")
    except ExceptionGroup as eg:
        # report the first failure as main() reports any other (clear message, exit 2)
        raise eg.exceptions[0] from None
    return status
