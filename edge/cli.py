"""``busbell edge``: run the onboard daemon live, record or replay a trace, serve the display.

User-facing output goes to standard output/error here only; the library logs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from busbell import (
    BusbellError,
    ContractError,
    DeviceKey,
    TokenVerifier,
    TraceError,
    TraceReader,
    TraceWriter,
    configure_logging,
    load_config,
    load_gtfs,
    parse_record,
    read_fleet_keys,
)
from busbell._cliutil import NothingUseful, check_output_path, rejection_summary
from edge.config import EdgeConfig

__all__ = ["main"]

RUN_EPILOG = """\
example:
  busbell edge run --config /etc/busbell/edge.toml
  BUSBELL_MQTT__HOST=10.0.0.2 BUSBELL_SOURCE=stream busbell edge run --config edge.toml
"""
RECORD_EPILOG = """\
example:
  busbell edge record --config edge.toml --out day.trace.jsonl --duration 3600
"""
TRACE_EPILOG = """\
example:
  busbell edge trace-rider kept/cell-20/seed-3/phone_deep_in_bag --rider r-00011
  busbell edge trace-rider kept/cell-20/seed-3/phone_deep_in_bag --errors --summary
"""
WHY_EPILOG = """\
example:
  busbell edge why-missed kept/cell-10/seed-1/phone_deep_in_bag
  busbell edge why-missed kept/cell-02 kept/cell-10 --summary
"""
DISPLAY_EPILOG = """\
example:
  busbell edge display --config edge.toml --bus bus-0001 --host 0.0.0.0 --port 8470
"""
REPLAY_EPILOG = """\
example:
  busbell edge replay day.trace.jsonl --gtfs gtfs/ --device-key bus.pem \\
      --fleet-keys FLEET.csv --out EVENTS.jsonl
"""


_COMMANDS: dict[str, tuple[str, str, str]] = {
    # command: (help, description, epilog)
    "run": (
        "run the daemon live (source, MQTT, fare store)",
        "Run the edge daemon live. Options come from the TOML config, "
        "overridden by BUSBELL_<SECTION>__<KEY> environment variables "
        "(`busbell config edge` lists them). SIGTERM/SIGINT shut it down gracefully.",
        RUN_EPILOG,
    ),
    "record": (
        "record a trace v1 from the live sources",
        "Write a trace v1 file: advertisements from the configured source and "
        "the vehicle topics (gnss, doors, trip) from MQTT.",
        RECORD_EPILOG,
    ),
    "replay": (
        "replay a trace through the pipeline into EVENTS.jsonl",
        "Feed a trace through the same pipeline, event builder and fare store "
        "(in-memory SQLite) in virtual time, as fast as the CPU allows; write one "
        "canonical-JSON fare event per line. Deterministic: same inputs, same bytes.",
        REPLAY_EPILOG,
    ),
    "trace-rider": (
        "trace a rider's adverts and the classifier's decisions in a kept scenario",
        "Replay one bus of a scenario directory (busbell sim scenario / sim score "
        "--keep) in process and print every advert of a rider's rids, the classifier's state "
        "after it, stop visits and the rider's segments; with --errors, every observable "
        "leg in error of score.json, each with a one-line summary of the evidence.",
        TRACE_EPILOG,
    ),
    "why-missed": (
        "say where the rids of every missed leg of kept scenarios went, by cause",
        "For every observable leg a kept scenario's score.json lists as missed, replay that "
        "bus in process (once per bus) with the classifier's debug events and say where the "
        "rider's rids went: never heard, heard but never a candidate, a candidate dropped "
        "(and by which rule), confirmed but discarded, or sent (a tentative piece or a "
        "segment settlement did not charge); then a table of the causes per cell. Each "
        "argument is a scenario directory or a directory searched for them (kept/cell-10).",
        WHY_EPILOG,
    ),
    "display": (
        "serve the driver display page for one bus",
        "Serve the driver display (docs/driver-display.md) on its own broker "
        "connection: the page follows buses/BUS/display and its ack button publishes "
        "buses/BUS/driver/ack. Uses the [mqtt] and [driver_page] sections of the config "
        "(the daemon serves the same page itself when [driver_page] enabled is true). "
        "SIGTERM/SIGINT stop it.",
        DISPLAY_EPILOG,
    ),
}


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str
) -> argparse.ArgumentParser:
    """The parser of the command `name` of `_COMMANDS`, its epilog (examples) kept as written."""
    help_, description, epilog = _COMMANDS[name]
    return sub.add_parser(
        name,
        help=help_,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="The onboard daemon: run live, record a trace, replay a trace, "
        "trace a rider through the classifier in a kept scenario, say why missed legs were "
        "missed, serve the driver display.",
        epilog=RUN_EPILOG
        + RECORD_EPILOG
        + REPLAY_EPILOG
        + TRACE_EPILOG
        + WHY_EPILOG
        + DISPLAY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--version",
        action="store_true",
        help="print busbell's version and the edge's build (compiled or pure) and exit",
    )
    sub = p.add_subparsers(dest="command")
    run = _command(sub, "run")
    run.add_argument("--config", type=Path, help="TOML config file (defaults + env if absent)")
    rec = _command(sub, "record")
    rec.add_argument("--config", type=Path, help="TOML config file")
    rec.add_argument("--out", type=Path, required=True, help="trace file to write")
    rec.add_argument("--duration", type=float, help="stop after this many seconds")
    rep = _command(sub, "replay")
    rep.add_argument("trace", type=Path, help="trace v1 file (JSON Lines)")
    rep.add_argument("--gtfs", type=Path, required=True, help="GTFS static directory")
    rep.add_argument("--device-key", type=Path, required=True, help="Ed25519 PEM (PKCS#8)")
    rep.add_argument("--fleet-keys", type=Path, required=True, help="FLEET.csv")
    rep.add_argument(
        "--out", type=Path, required=True, help="EVENTS.jsonl to write (never an existing file)"
    )
    rep.add_argument("--force", action="store_true", help="replace --out if it exists")
    rep.add_argument("--config", type=Path, help="TOML config ([classifier] section is used)")
    tr = _command(sub, "trace-rider")
    tr.add_argument("scenario", type=Path, help="scenario directory")
    tr.add_argument("--rider", help="rider id (r-00011)")
    tr.add_argument("--bus", help="bus id (default: every bus of the rider's true legs)")
    tr.add_argument("--errors", action="store_true", help="every leg in error of score.json")
    tr.add_argument("--summary", action="store_true", help="one line per leg, no adverts")
    tr.add_argument("--config", type=Path, help="TOML config ([classifier] section is used)")
    why = _command(sub, "why-missed")
    why.add_argument("dirs", type=Path, nargs="+", help="scenario directories, or their parents")
    why.add_argument("--summary", action="store_true", help="the table only, no line per leg")
    why.add_argument("--config", type=Path, help="TOML config ([classifier] section is used)")
    dis = _command(sub, "display")
    dis.add_argument("--config", type=Path, help="TOML config file (defaults + env if absent)")
    dis.add_argument("--bus", help="the bus whose display to show (default: bus_id of the config)")
    dis.add_argument("--host", help="listen address (default: driver_page.host)")
    dis.add_argument("--port", type=int, help="listen port (default: driver_page.port)")
    return p


def _load(path: Path | None) -> EdgeConfig:
    return load_config(EdgeConfig, path)


def _make_source(config: EdgeConfig, clock: Callable[[], float]) -> Any:
    if config.source == "ble":
        from edge._ble import BleakSource

        return BleakSource(config.scanner, clock)
    if config.source == "stream":
        from edge._stream_source import StreamSource

        return StreamSource(config.stream.host, config.stream.port)
    from edge._trace_source import TraceSource

    if config.trace.path is None:
        raise BusbellError("source 'trace' needs trace.path")
    return TraceSource(config.trace.path, config.trace.speed)


async def _run(config: EdgeConfig) -> int:
    from edge._clock import GnssClock
    from edge._daemon import EdgeDaemon

    clock = GnssClock()  # advertisements are stamped with the bus's GNSS-disciplined time
    daemon = EdgeDaemon(config, _make_source(config, clock), clock)
    # What start-up built (modules, the GTFS feed, keys) lives as long as the process: a
    # full collection walked all of it, 20-75 ms with the event loop stopped (a driver's
    # display waited that long), and a city's feed is far bigger than the sample.
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    await daemon.run()
    return 0


async def _record(config: EdgeConfig, out: Path, duration: float | None) -> int:
    from busbell import AdvRecord, GnssRecord, Topics
    from edge._clock import GnssClock
    from edge._uplink import MqttLink

    topics = Topics(config.mqtt.prefix)
    # trace v1 times are GNSS time: the scanner stamps adverts with the bus's time,
    # disciplined by the fixes recorded below (as `busbell edge run` does)
    clock = GnssClock()
    source = _make_source(config, clock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    counts = {"adv": 0, "vehicle": 0, "bad": 0}
    with out.open("w", encoding="utf-8") as fp:
        writer = TraceWriter(fp, config.bus_id, recorder="busbell edge record")

        def on_adv(rec: AdvRecord) -> None:
            writer.write(rec)
            counts["adv"] += 1

        link = MqttLink(
            config.mqtt, config.bus_id, topics, client_id=f"busbell-record-{config.bus_id}"
        )
        for signal_name, kind in (("gnss", "gnss"), ("doors", "door"), ("trip", "trip")):

            def handler(kind: str) -> Callable[[bytes], Any]:
                async def h(payload: bytes) -> None:
                    from busbell import loads_object
                    from edge._daemon import VEHICLE_LIMITS

                    try:
                        obj = loads_object(payload, VEHICLE_LIMITS)
                        rec = parse_record({**obj, "kind": kind}, 0)
                    except (ContractError, TraceError):
                        counts["bad"] += 1
                        return
                    if type(rec) is GnssRecord:
                        clock.observe(rec.t)
                    writer.write(rec)
                    counts["vehicle"] += 1

                return h

            link.route(topics.vehicle(config.bus_id, signal_name), handler(kind))
        tasks = [asyncio.create_task(link.run()), asyncio.create_task(source.run(on_adv))]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.flush()
    sys.stderr.write(
        f"recorded {counts['adv']} adverts, {counts['vehicle']} vehicle records "
        f"({counts['bad']} malformed vehicle messages skipped) to {out}\n"
    )
    return 0


async def _display(config: EdgeConfig) -> int:
    from edge._driver_page import run_driver_page

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def listening(host: str, port: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        sys.stderr.write(
            f"driver display of {config.bus_id}: http://{shown}:{port}/ "
            f"(broker {config.mqtt.host}:{config.mqtt.port}, prefix {config.mqtt.prefix})\n"
        )

    display = await run_driver_page(
        config.mqtt, config.bus_id, config.driver_page, stop=stop, on_listening=listening
    )
    st = display.stats
    sys.stderr.write(
        f"driver display stopped: {st.displays} models shown, "
        f"{sum(st.displays_rejected.values())} rejected, {st.acks_published} acks\n"
    )
    return 0


async def _replay(a: argparse.Namespace) -> int:
    from edge._daemon import replay_records
    from edge._events import EventBuilder
    from edge._pipeline import EdgePipeline
    from edge._store import FareStore

    check_output_path(
        a.out,
        [a.trace, a.gtfs, a.device_key, a.fleet_keys, *([a.config] if a.config else [])],
        force=a.force,
    )
    config = _load(a.config)
    params = config.classifier
    key = DeviceKey.load(a.device_key)
    fleet = read_fleet_keys(a.fleet_keys)
    feed = load_gtfs(a.gtfs)
    bad: list[TraceError] = []
    try:
        fp = a.trace.open(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise BusbellError(f"cannot read trace {a.trace}: {exc.strerror}") from None
    with fp:
        reader = TraceReader(fp, on_error=bad.append)
        bus_id = reader.meta.bus_id
        pipeline = EdgePipeline(
            bus_id, feed, TokenVerifier(fleet, window_s=params.tq_window_s), params
        )
        last_t = [0.0]

        def clock() -> float:
            return last_t[0]

        store = await FareStore.open(":memory:", EventBuilder(bus_id, key), clock=clock)
        tmp = a.out.with_name(a.out.name + ".tmp")
        try:
            with tmp.open("wb") as out:

                def records() -> Any:
                    for rec in reader:
                        last_t[0] = rec.t
                        yield rec

                n = await replay_records(records(), pipeline, store, out)
            tmp.replace(a.out)
        finally:
            await store.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    for err in bad[:20]:
        sys.stderr.write(f"{a.trace}: {err}\n")
    if len(bad) > 20:
        sys.stderr.write(f"... and {len(bad) - 20} more bad lines\n")
    stats = pipeline.stats
    sys.stderr.write(
        f"replayed {a.trace}: {n} fare events to {a.out}; {len(bad)} bad trace lines skipped; "
        f"{stats.adverts_seen} adverts, "
        + rejection_summary(stats.adverts_seen, stats.rejected, "advert")
        + "\n"
    )
    if n == 0 and stats.adverts_seen and stats.adverts_accepted == 0:
        hint = ""
        if set(stats.rejected) & {"bad_btag", "no_fleet_key"}:
            hint = f" (do the fleet keys in {a.fleet_keys} cover the trace's days?)"
        elif "stale" in stats.rejected:
            hint = " (the tokens' clocks and the trace's GNSS time disagree)"
        a.out.unlink()  # an empty EVENTS file would let a pipeline go on as if all was well
        raise NothingUseful(
            "no fare events: "
            + rejection_summary(stats.adverts_seen, stats.rejected, "advert")
            + hint
        )
    return 0


def _trace_rider(a: argparse.Namespace) -> int:
    from edge._trace_rider import errors_of, format_rows, leg_evidence, trace_rider, true_legs

    params = _load(a.config).classifier
    d: Path = a.scenario
    missing = [n for n in ("truth.json", "RIDERS.csv", "JOURNEYS.jsonl") if not (d / n).is_file()]
    if missing:
        raise BusbellError(
            f"{d} is not a kept scenario directory (no {', '.join(missing)}): "
            "keep one with busbell sim score --keep DIR"
        )
    todo: list[tuple[str, str, dict[str, Any] | None]]
    if a.errors:
        todo = [(e["rider_id"], e["bus_id"], e) for e in errors_of(d)]
    elif a.rider:
        legs = true_legs(d, a.rider)
        buses = [a.bus] if a.bus else sorted({lg["bus_id"] for lg in legs})
        if not buses:
            raise BusbellError(f"{a.rider} rode no bus in {d}: give --bus")
        todo = [(a.rider, b, None) for b in buses]
    else:
        raise BusbellError("give --rider RIDER or --errors")
    for rider, bus, err in todo:
        rows = trace_rider(d, rider, bus, params)
        legs = [lg for lg in true_legs(d, rider) if lg["bus_id"] == bus]
        head = f"== {rider} on {bus}"
        if err is not None:
            got = ", ".join(f"{c['board_stop_id']}->{c['alight_stop_id']}" for c in err["charges"])
            head += f": {err['kind']} (charged {got or 'nothing'})"
        sys.stdout.write(head + "\n")
        t0 = rows[0].t if rows else 0.0
        for lg in legs:
            ev = leg_evidence(rows, float(lg["board_t"]), float(lg["alight_t"]))
            sys.stdout.write(
                f"   true {lg['board_stop_id']} @{float(lg['board_t']) - t0:.1f} -> "
                f"{lg['alight_stop_id']} @{float(lg['alight_t']) - t0:.1f}: {ev.line()}\n"
            )
        if not a.summary:
            sys.stdout.write(format_rows(rows, t0) + "\n")
    return 0


def _why_missed(a: argparse.Namespace) -> int:
    from edge._why_missed import cause_table, missed_legs, scenario_dirs

    params = _load(a.config).classifier
    dirs = scenario_dirs(a.dirs)
    if not dirs:
        raise BusbellError(
            f"no kept scenario (a directory with score.json) at or under "
            f"{', '.join(map(str, a.dirs))}: keep some with busbell sim score --keep DIR"
        )
    legs = []
    for d in dirs:
        got = missed_legs(d, params)
        if not a.summary:
            for lg in got:
                sys.stdout.write(f"{d.parent.parent.name}/{d.parent.name}/{lg.line()}\n")
        legs.extend(got)
    edge = sum(1 for lg in legs if lg.never_emitted)
    sys.stdout.write(
        cause_table(legs)
        + "\n\n"
        + cause_table(legs, heard=True)
        + "\n\n"
        + cause_table(legs, evidence=True)
        + f"\n{len(legs)} missed legs in {len(dirs)} scenarios, {edge} never emitted by the edge\n"
    )
    return 0


def _version() -> str:
    """``busbell VERSION (edge build: BUILD ...)``: the build the daemon would run."""
    from busbell import __version__
    from edge._build import compiled_modules, edge_build

    compiled = compiled_modules()
    build = edge_build(compiled)
    detail = f"; compiled by mypyc: {', '.join(compiled)}" if compiled else ""
    return f"busbell {__version__} (edge build: {build}{detail})"


def main(argv: Sequence[str], prog: str = "busbell edge") -> int:
    """Run ``busbell edge ...``; returns the exit status.

    Raises:
        busbell.BusbellError: on bad configuration, key files, GTFS or trace meta line
            (the ``busbell`` entry point prints it and exits 1).
    """
    p = _parser(prog)
    a = p.parse_args(list(argv))
    if a.version:
        sys.stdout.write(_version() + "\n")
        return 0
    if a.command is None:
        p.print_help()
        return 2
    if a.command == "replay":
        configure_logging("warning")
        return asyncio.run(_replay(a))
    if a.command == "trace-rider":
        configure_logging("warning")
        return _trace_rider(a)
    if a.command == "why-missed":
        configure_logging("warning")
        return _why_missed(a)
    if a.command == "display":
        overrides: dict[str, Any] = {}
        if a.bus is not None:
            overrides["bus_id"] = a.bus
        page = {k: v for k, v in (("host", a.host), ("port", a.port)) if v is not None}
        if page:
            overrides["driver_page"] = page
        config = load_config(EdgeConfig, a.config, overrides=overrides)
        configure_logging(config.log_level)
        return asyncio.run(_display(config))
    config = _load(a.config)
    configure_logging(config.log_level)
    if a.command == "run":
        return asyncio.run(_run(config))
    return asyncio.run(_record(config, a.out, a.duration))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:], "python -m edge.cli"))
