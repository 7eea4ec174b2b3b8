"""``busbell sim``: generate scenarios, list them, score busbell against them, play live."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from busbell import configure_logging, load_config
from firmware_sim.config import SimConfig

if TYPE_CHECKING:
    from firmware_sim._sweep import SweepCell

__all__ = ["main"]

_RAW = argparse.RawDescriptionHelpFormatter


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Simulated rider tokens, stops and buses: scenarios with ground truth, "
        "scoring of the edge + backend pipeline, live play to a running edge.",
        formatter_class=_RAW,
        epilog="examples:\n"
        f"  {prog} list\n"
        f"  {prog} scenario --name quiet_route --seed 1 --out /tmp/quiet\n"
        f"  {prog} score --scale small\n"
        f"  {prog} run --broker 127.0.0.1:1883 --bus bus-55-01 --scenario quiet_route "
        "--adv-target tcp://127.0.0.1:7300",
    )
    p.add_argument("--config", type=Path, default=None, help="sim TOML config")
    p.add_argument("--log-level", default="warning", help="log level (default warning)")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    sc = sub.add_parser(
        "scenario",
        help="generate a named scenario into a directory",
        formatter_class=_RAW,
        epilog=f"example:\n  {prog} scenario --name rush_hour_crowd --seed 7 --out /tmp/rush "
        "--scale full",
    )
    sc.add_argument("--name", required=True, help="scenario name (see `list`)")
    sc.add_argument("--seed", type=int, default=None, help="seed (default: config, 1)")
    sc.add_argument("--out", type=Path, required=True, help="output directory")
    sc.add_argument("--scale", choices=["small", "full"], default=None)
    sc.add_argument(
        "--skip-stop",
        metavar="BUS",
        default=None,
        help="this bus drives past a stop nobody uses without halting (see truth.json "
        "skipped_stops); give the same to `run`",
    )

    sub.add_parser(
        "list",
        help="list the scenarios with a one-line description",
        formatter_class=_RAW,
        epilog=f"example:\n  {prog} list",
    )

    so = sub.add_parser(
        "score",
        help="generate, replay (edge), settle (backend) and compare with the truth",
        formatter_class=_RAW,
        epilog=f"examples:\n  {prog} score --scale small\n"
        f"  {prog} score --scale full --seed 1 --write-docs docs/accuracy.md\n"
        f"  {prog} score --scenarios quiet_route,gnss_tunnel --keep /tmp/score\n"
        f"  {prog} score --sweep --scale small --seeds 5,6\n"
        f"  {prog} score --sweep --scale small --seeds 5 --cells 12-20\n"
        f"  {prog} score --sweep --scale small --seeds 5-12 --jobs 2 --write-docs "
        "docs/accuracy.md\n"
        f"  {prog} score --sweep --seeds 5-12 --cells 1-10 --save-runs runs.jsonl\n"
        f"  {prog} score --sweep --from-runs runs.jsonl --write-docs docs/accuracy.md\n"
        f"  {prog} score --sweep --scale small --seeds 1 --cells 10 --keep kept\n"
        f"  {prog} score --sweep --rescore kept --scenarios quiet_route\n\n"
        "--write-docs rewrites only its own section of the file, between the markers\n"
        "<!-- generated: NAME ... --> and <!-- end generated: NAME --> (NAME: --section;\n"
        "default full-scale / small-scale, or sweep); the rest of the file is kept as it\n"
        "is; a file without that section gets it appended.",
    )
    so.add_argument("--scale", choices=["small", "full"], default=None)
    so.add_argument("--seed", type=int, default=None)
    so.add_argument("--scenarios", default=None, help="comma-separated names (default: all)")
    so.add_argument(
        "--write-docs",
        type=Path,
        default=None,
        help="write the Markdown report into its section of this file (the rest is kept)",
    )
    so.add_argument(
        "--section",
        default=None,
        help="with --write-docs: the generated section's name (default: SCALE-scale, or"
        " sweep with --sweep)",
    )
    so.add_argument("--keep", type=Path, default=None, help="keep the scenario dirs here")
    so.add_argument("--json", action="store_true", help="print JSON instead of a table")
    so.add_argument(
        "--sweep",
        action="store_true",
        help="score the suite in every cell of the radio envelope (firmware_sim/_sweep.py)"
        " and print the matrix with its worst cell (--write-docs writes it)",
    )
    so.add_argument(
        "--seeds",
        default=None,
        help="with --sweep: seeds, e.g. 5,6 or 5-12 (default: --seed); each cell's seeds are"
        " summed, so more seeds resolve the 99.5 %% target finer",
    )
    so.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="with --sweep: runs (cell x seed) scored at once, one process each (default:"
        " 2, or 1 on a one-core machine); each run also starts edge/backend subprocesses",
    )
    so.add_argument(
        "--cells",
        default=None,
        help="with --sweep: the cells to run by number, e.g. 1,3,10-14 (default: all;"
        " --list-cells prints them)",
    )
    so.add_argument(
        "--list-cells", action="store_true", help="print the sweep's numbered cells and exit"
    )
    so.add_argument(
        "--rescore",
        type=Path,
        default=None,
        metavar="ROOT",
        help="with --sweep: generate nothing; replay, settle and score again with this"
        " code the runs kept under ROOT by an earlier --sweep --keep ROOT (its"
        " cell-NN/seed-S directories; --cells, --seeds, --scenarios narrow them; ROOT is"
        " only read, --keep takes the new outputs), then list the errors fixed and new"
        " against the kept scores: a paired A/B on identical adverts",
    )
    so.add_argument(
        "--save-runs",
        type=Path,
        default=None,
        help="with --sweep: append each run (cell x seed) to this JSON Lines file as it"
        " finishes, so a long sweep can be run in chunks (--cells) and rendered at once",
    )
    so.add_argument(
        "--from-runs",
        default=None,
        metavar="FILE[,FILE...]",
        help="with --sweep: run nothing; render (and --write-docs) the runs saved in these"
        " files by --save-runs",
    )

    rn = sub.add_parser(
        "run",
        help="play one bus of a scenario live: MQTT vehicle signals + adverts (TCP or BlueZ)",
        formatter_class=_RAW,
        epilog=f"examples:\n  {prog} run --broker 127.0.0.1:1883 --bus bus-55-01 "
        "--scenario quiet_route --speed 2 --adv-target tcp://127.0.0.1:7300 --out /tmp/live\n"
        f"  {prog} run --broker 127.0.0.1:1883 --bus bus-55-01 --scenario quiet_route "
        "--adv-target bluez --out /tmp/live\n"
        "      (prints DBUS_SYSTEM_BUS_ADDRESS=... for `busbell edge run`, waits for its scan)",
    )
    rn.add_argument("--broker", required=True, help="HOST:PORT of the MQTT broker")
    rn.add_argument("--bus", required=True, help="bus id of the scenario (see its truth.json)")
    rn.add_argument("--scenario", required=True, help="scenario name")
    rn.add_argument("--seed", type=int, default=None)
    rn.add_argument("--scale", choices=["small", "full"], default=None)
    rn.add_argument("--speed", type=float, default=None, help="time factor (default 1)")
    rn.add_argument(
        "--adv-target",
        default=None,
        help="tcp://HOST:PORT of the edge stream; bluez (start an emulated bluetoothd on a "
        "private D-Bus) or bluez:DBUS_ADDRESS (one already running the template)",
    )
    rn.add_argument(
        "--wait-scanner",
        type=float,
        default=60.0,
        help="BlueZ: seconds to wait for the edge to scan before playing (default 60, 0: no)",
    )
    rn.add_argument("--prefix", default=None, help="topic prefix (default busbell/v1)")
    rn.add_argument("--out", type=Path, default=None, help="also write keys and truth here")
    rn.add_argument(
        "--scenario-time",
        action="store_true",
        help="keep the scenario's own date instead of starting now",
    )
    rn.add_argument(
        "--skip-stop",
        metavar="BUS",
        default=None,
        help="as `scenario --skip-stop`: that bus drives past a stop nobody uses; when it "
        "is --bus, a rider app asks it to stop there (a missed stop)",
    )
    rn.add_argument(
        "--waits-api",
        metavar="URL",
        default=None,
        help="post the riders' app waits to this rider API (POST /riders/{id}/waits) "
        "instead of publishing them on MQTT",
    )
    rn.add_argument(
        "--api-token",
        default=None,
        help="bearer token for --waits-api (an operator token with riders:write)",
    )
    rn.add_argument(
        "--start-unix",
        type=float,
        default=None,
        metavar="UNIX",
        help="play the scenario's start (truth.json t_start) at this UNIX time: buses played "
        "with the same value share one clock (default: this bus's first record plays as it "
        "starts)",
    )
    return p


def main(argv: Sequence[str] | None = None, prog: str = "busbell sim") -> int:
    """Run ``busbell sim``; returns the exit status."""
    a = _parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv))
    configure_logging(a.log_level)
    cfg = load_config(SimConfig, a.config)
    if a.cmd == "list":
        from firmware_sim._scenarios import SCENARIOS

        for info in SCENARIOS.values():
            _out(f"{info.name:30} {info.summary}")
        return 0
    if a.cmd == "scenario":
        return _scenario(a, cfg)
    if a.cmd == "score":
        return _score(a, cfg, prog)
    return _run(a, cfg)


def _scenario(a: argparse.Namespace, cfg: SimConfig) -> int:
    from dataclasses import replace

    from firmware_sim._output import generate
    from firmware_sim._scenarios import SCENARIOS

    if a.name not in SCENARIOS:
        sys.stderr.write(f"unknown scenario {a.name!r}; try `list`\n")
        return 2
    seed = a.seed if a.seed is not None else cfg.scenario.seed
    scale = a.scale or cfg.scenario.scale
    started = time.perf_counter()
    options = replace(cfg.generate_options(), skip_stop_bus=a.skip_stop)
    try:
        truth = generate(a.name, seed, a.out, scale, options)
    except ValueError as exc:
        sys.stderr.write(f"busbell sim scenario: {exc}\n")
        return 2
    took = time.perf_counter() - started
    _out(
        f"{a.name}: {len(truth['buses'])} bus(es), {truth['journeys']} journeys, "
        f"{truth['legs']} legs, {truth['bystander_passes']['total']} bystander passes, "
        f"{truth['stats']['adv_records']} adverts in {took:.2f} s -> {a.out}"
    )
    return 0


def _score(a: argparse.Namespace, cfg: SimConfig, prog: str) -> int:
    from firmware_sim._report import render_report, render_table
    from firmware_sim._scenarios import SCENARIOS, scenario_names
    from firmware_sim._score import ScenarioScore, score_suite

    if a.list_cells:
        from firmware_sim._sweep import CELLS

        for i, cell in enumerate(CELLS, start=1):
            _out(f"{i:3}  {cell.name}")
        return 0
    seed = a.seed if a.seed is not None else cfg.scenario.seed
    scale = a.scale or cfg.scenario.scale
    names = scenario_names() if a.scenarios is None else [n.strip() for n in a.scenarios.split(",")]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        sys.stderr.write(f"unknown scenario(s) {unknown}; try `list`\n")
        return 2

    if a.sweep:
        return _sweep(a, cfg, names, seed, scale)

    from busbell._cliutil import Progress

    bar = Progress("scored", total=len(names), unit="scenarios")

    def progress(s: ScenarioScore) -> None:
        bar.clear()
        if not a.json:
            _out(
                f"{s.scenario:30} exact {s.journeys_exact}/{s.journeys} "
                f"missed {s.missed}/{s.legs} bystanders {s.bystander_charged}/"
                f"{s.bystander_passes} ({s.elapsed_s:.1f} s)"
            )
            sys.stdout.flush()
        bar.advance()

    try:
        suite = score_suite(
            names,
            seed=seed,
            scale=scale,
            options=cfg.generate_options(),
            keep_dir=a.keep,
            progress=progress,
        )
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        sys.stderr.write(f"busbell: error: {prog} score: the pipeline failed: {exc}\n")
        return 1
    bar.close()
    if a.json:
        _out(
            json.dumps(
                {
                    "scale": scale,
                    "seed": seed,
                    "scenarios": [s.as_dict() for s in suite.scenarios],
                    "overall": suite.overall.as_dict(),
                }
            )
        )
    else:
        _out("")
        _out(render_table(suite))
    if a.write_docs is not None:
        parts = ["busbell sim score", f"--scale {scale}", f"--seed {seed}"]
        if a.scenarios is not None:
            parts.append(f"--scenarios {shlex.quote(a.scenarios)}")
        parts.append(f"--write-docs {a.write_docs}")
        if a.section is not None:
            parts.append(f"--section {shlex.quote(a.section)}")
        return _write_docs(
            a.write_docs, a.section or f"{scale}-scale", render_report(suite, " ".join(parts))
        )
    return 0


def _write_docs(path: Path, section: str, body: str) -> int:
    from firmware_sim._report import write_section

    try:
        how = write_section(path, section, body)
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"busbell sim score --write-docs: {exc}\n")
        return 2
    _out(f"section {section!r} of {path}: {how}")
    return 0


def _sweep_grid(a: argparse.Namespace, seed: int) -> tuple[list[SweepCell], list[int], int] | int:
    """The cells and seeds of a sweep and its number of runs, or an exit status.

    With ``--rescore``, cells and seeds default to the kept runs', and only the runs
    kept there count.
    """
    from firmware_sim._rescore import KeptRun, find_kept_runs
    from firmware_sim._sweep import CELLS, cell_number, parse_cells, parse_seeds

    kept_runs: list[KeptRun] = []
    if a.rescore is not None:
        try:
            kept_runs = find_kept_runs(a.rescore)
        except ValueError as exc:
            sys.stderr.write(f"--rescore: {exc}\n")
            return 2
    try:
        if a.seeds:
            seeds = parse_seeds(a.seeds)
        elif kept_runs:
            seeds = sorted({r.seed for r in kept_runs})
        else:
            seeds = [seed]
    except ValueError as exc:
        sys.stderr.write(f"--seeds: {exc}\n")
        return 2
    try:
        if a.cells:
            cells = parse_cells(a.cells)
        elif kept_runs:
            cells = [CELLS[n - 1] for n in sorted({r.cell for r in kept_runs}) if n <= len(CELLS)]
        else:
            cells = list(CELLS)
    except ValueError as exc:
        sys.stderr.write(f"--cells: {exc}\n")
        return 2
    total = len(cells) * len(seeds)
    if kept_runs:
        held = {(r.cell, r.seed) for r in kept_runs}
        total = sum((cell_number(c), s) in held for c in cells for s in seeds)
        if not total:
            sys.stderr.write(f"--rescore: {a.rescore} holds none of those cells and seeds\n")
            return 2
    return cells, seeds, total


def _sweep(a: argparse.Namespace, cfg: SimConfig, names: list[str], seed: int, scale: str) -> int:
    import os
    from datetime import UTC, datetime

    from firmware_sim._report import git_commit
    from firmware_sim._rescore import render_changes
    from firmware_sim._sweep import (
        SweepResult,
        cell_number,
        render_sweep,
        run_dir,
        run_line,
        sweep,
    )

    if a.from_runs:
        return _sweep_from_runs(a)
    grid = _sweep_grid(a, seed)
    if isinstance(grid, int):
        return grid
    cells, seeds, total = grid
    jobs = a.jobs if a.jobs is not None else min(2, os.cpu_count() or 1)
    if jobs < 1:
        sys.stderr.write("--jobs must be 1 or more\n")
        return 2
    done = [0]
    if a.rescore is not None:
        parts = ["busbell sim score --sweep", f"--rescore {a.rescore}"]
        if a.seeds:
            parts.append(f"--seeds {a.seeds}")
    else:
        parts = ["busbell sim score --sweep", f"--scale {scale}", f"--seeds {a.seeds or seed}"]
    if a.cells:
        parts.append(f"--cells {a.cells}")
    if a.scenarios is not None:
        parts.append(f"--scenarios {shlex.quote(a.scenarios)}")
    parts.append(f"--jobs {jobs}")
    if a.save_runs is not None:
        parts.append(f"--save-runs {a.save_runs}")
    if a.write_docs is not None:
        parts.append(f"--write-docs {a.write_docs}")
    if a.section is not None:
        parts.append(f"--section {shlex.quote(a.section)}")
    commit = git_commit()

    def progress(r: SweepResult) -> None:
        s = r.overall
        done[0] += 1
        if a.save_runs is not None:
            with a.save_runs.open("a", encoding="utf-8") as f:
                f.write(run_line(r, command=" ".join(parts), commit=commit) + "\n")
        if not a.json:
            _out(
                f"[{done[0]}/{total}] {r.cell.name:45} seed {r.seed}: exact "
                f"{s.journeys_observable_exact}/{s.journeys_observable} missed "
                f"{s.missed_observable}/{s.legs_observable} double {s.double_charged} "
                f"bystanders {s.bystander_charged}/{s.bystander_passes}"
            )
            sys.stdout.flush()

    started = time.perf_counter()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        results = sweep(
            names,
            seeds,
            scale,
            cfg.generate_options(),
            cells,
            progress,
            jobs=jobs,
            keep_dir=a.keep,
            log_level=a.log_level,
            rescore=a.rescore,
        )
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        sys.stderr.write(f"busbell: error: sim score --sweep: the pipeline failed: {exc}\n")
        return 1
    took = time.perf_counter() - started
    if a.json:
        _out(
            json.dumps(
                {
                    "scale": scale,
                    "command": " ".join(parts),
                    "results": [
                        {"cell": r.cell.name, "seed": r.seed, "overall": r.overall.as_dict()}
                        for r in results
                    ],
                }
            )
        )
    info = [
        f"date: {when}",
        f"commit: `{commit}`",
        f"time: {took:.0f} s for {total} runs, {jobs} at once",
    ]
    doc = render_sweep(results, " ".join(parts), run_info=info)
    if not a.json:
        _out("")
        _out(doc)
        if a.rescore is not None:
            root = a.rescore
            _out(
                render_changes(
                    (
                        (
                            f"cell {cell_number(r.cell)} ({r.cell.name})",
                            r.seed,
                            r.overall,
                            run_dir(root, r.cell, r.seed),
                        )
                        for r in results
                    ),
                    names,
                )
            )
    if a.write_docs is not None:
        return _write_docs(a.write_docs, a.section or "sweep", doc)
    return 0


def _sweep_from_runs(a: argparse.Namespace) -> int:
    from firmware_sim._sweep import load_runs, render_sweep

    files = [Path(x) for x in a.from_runs.split(",")]
    meta: dict[str, set[str]] = {}
    try:
        results = load_runs(files, meta)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"--from-runs: {exc}\n")
        return 2
    parts = ["busbell sim score --sweep", f"--from-runs {a.from_runs}"]
    if a.write_docs is not None:
        parts.append(f"--write-docs {a.write_docs}")
    if a.section is not None:
        parts.append(f"--section {shlex.quote(a.section)}")
    info = [f"measured by: `{c}`" for c in sorted(meta.get("command", ()))]
    info += [f"commit: `{c}`" for c in sorted(meta.get("commit", ()))]
    doc = render_sweep(results, " ".join(parts), run_info=info)
    _out(doc)
    if a.write_docs is not None:
        return _write_docs(a.write_docs, a.section or "sweep", doc)
    return 0


def _run(a: argparse.Namespace, cfg: SimConfig) -> int:
    from dataclasses import replace

    from firmware_sim._live import LiveRun, run_live

    host, sep, port = a.broker.rpartition(":")
    if not sep or not port.isdigit():
        sys.stderr.write("--broker must be HOST:PORT\n")
        return 2
    mqtt = replace(cfg.mqtt, host=host, port=int(port))
    if a.prefix is not None:
        mqtt = replace(mqtt, prefix=a.prefix)

    def ready(stats: LiveRun) -> None:
        if stats.bluez_address:
            _out(f"DBUS_SYSTEM_BUS_ADDRESS={stats.bluez_address}")
            _out("waiting for a scanner (busbell edge run with source = ble) ...")
            sys.stdout.flush()

    def start(stats: LiveRun) -> None:
        _out(f"playing: scenario time {stats.t_first:.3f} at unix {stats.wall_start:.3f}")
        sys.stdout.flush()

    try:
        stats = asyncio.run(
            run_live(
                a.scenario,
                a.seed if a.seed is not None else cfg.scenario.seed,
                a.bus,
                mqtt=mqtt,
                speed=a.speed if a.speed is not None else cfg.live.speed,
                adv_target=a.adv_target or cfg.live.adv_target or None,
                scale=a.scale or cfg.scenario.scale,
                now=cfg.live.now and not a.scenario_time,
                out_dir=a.out,
                options=replace(cfg.generate_options(), skip_stop_bus=a.skip_stop),
                wait_scanner_s=a.wait_scanner,
                on_ready=ready,
                on_start=start,
                waits_api=a.waits_api,
                api_token=a.api_token,
                start_unix=a.start_unix,
            )
        )
    except (RuntimeError, ValueError, OSError) as exc:
        sys.stderr.write(f"busbell sim run: {exc}\n")
        return 1
    _out(
        f"played {a.scenario}/{a.bus}: {stats.gnss} gnss, {stats.doors} doors, "
        f"{stats.trips} trip, {stats.adverts} adverts, {stats.waits} waits"
        + (f" ({stats.waits_failed} not taken by the rider API)" if stats.waits_failed else "")
        + (f"; bluez {dict(sorted(stats.bluez.items()))}" if stats.bluez else "")
    )
    return 0
