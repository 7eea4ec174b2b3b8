"""The simulator as a radio envelope, not a point: the scenario suite over a grid of cells.

``busbell sim score --sweep`` scores the suite in every cell of :data:`CELLS` (the
default world, then one radio condition moved at a time to the ends of the envelope a
deployment meets, and two corners) for each seed, and reports every cell's figures and
the **worst cell** per target. Tune on seeds 1-4 only; report the others.

Radio axes: token radiated power (``tx_eirp_dbm``, -25 to +3 dBm), bus shell loss (5 to
20 dB), per-device power offset spread (3 to 6 dB) and extra packet loss (a duty-cycled
scanner: a 70 % scan window loses 30 % of the packets). Token axes
(:class:`~firmware_sim._world.TokenEnvelope`, applied to every token of the run, riders
and bystanders alike): the advertising interval (0.1 and 2 s), placement mixes (all deep
in bags; all in pockets), clock offsets uniform in +-55 s, BLE addresses kept for good or
rotated with every rid, and crowds of bystanders (x10 the people at halts and on the
pavements), and 3,000 more people standing around one halt of the run's first bus (a
stadium letting out: ``TokenEnvelope.halt_crowd``, cell 21; slower, ~5x the
adverts of a default run). Cells 22-25 are weak cells whose phones listen to the bus
beacons and echo them (``TokenEnvelope.echo_share``, ``firmware_sim/_beacon.py``).
The classifier's CPU cost with 3,000 tokens is ``benchmarks/edge_classifier.py --crowd``,
its checkpoint ``benchmarks/edge_checkpoint.py``.

Resolution: a small-scale suite has ~125 observable journeys, so one error is 0.8 % and a
99.5 % target cannot be resolved by one seed. Cells are therefore scored over several
seeds (``--seeds 5-12``) and summed per cell (:func:`summarize`): eight seeds give ~1,000
observable journeys per cell, one journey 0.1 %. Runs (cell x seed) are independent and
spread over a process pool (``jobs``); each run itself is sequential (generation, then
``edge replay`` and ``backend settle`` subprocesses).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from firmware_sim._output import GenerateOptions
from firmware_sim._radio import Loss, Placement, RadioParams
from firmware_sim._rescore import rescore_suite
from firmware_sim._score import TARGETS, ScenarioScore, score_suite
from firmware_sim._world import TokenEnvelope

__all__ = [
    "CELLS",
    "CellSummary",
    "SweepCell",
    "SweepResult",
    "cell_number",
    "load_runs",
    "parse_cells",
    "parse_seeds",
    "render_sweep",
    "run_dir",
    "run_line",
    "summarize",
    "sweep",
]


@dataclass(frozen=True, slots=True)
class SweepCell:
    """One radio world: a name and the changes to the default radio parameters."""

    name: str
    tx_eirp_dbm: float | None = None
    shell_loss_db: float | None = None
    device_offset_std_db: float | None = None
    packet_loss: float | None = None
    """Extra packet loss, as a duty-cycled scanner (scan window = 1 - loss of interval)."""
    tokens: TokenEnvelope = field(default_factory=TokenEnvelope)
    """How every token departs from the scenario."""

    def options(self, base: GenerateOptions) -> GenerateOptions:
        """The generation options of this cell."""
        return replace(base, radio=self.radio(base.radio), envelope=self.tokens)

    def radio(self, base: RadioParams) -> RadioParams:
        """The radio parameters of this cell."""
        r = base
        if self.tx_eirp_dbm is not None:
            r = replace(r, tx_eirp_dbm=self.tx_eirp_dbm)
        if self.shell_loss_db is not None:
            r = replace(r, shell_loss=Loss(self.shell_loss_db, r.shell_loss.std_db))
        if self.device_offset_std_db is not None:
            r = replace(r, device_offset_std_db=self.device_offset_std_db)
        if self.packet_loss is not None:
            r = replace(r, scan_window_s=r.scan_interval_s * (1.0 - self.packet_loss))
        return r


CELLS: tuple[SweepCell, ...] = (
    SweepCell("default (-5 dBm, shell 9 dB, sigma 3 dB)"),
    SweepCell("EIRP -25 dBm", tx_eirp_dbm=-25.0),
    SweepCell("EIRP -21 dBm", tx_eirp_dbm=-21.0),
    SweepCell("EIRP -15 dBm", tx_eirp_dbm=-15.0),
    SweepCell("EIRP +3 dBm", tx_eirp_dbm=3.0),
    SweepCell("shell 5 dB", shell_loss_db=5.0),
    SweepCell("shell 20 dB", shell_loss_db=20.0),
    SweepCell("device sigma 6 dB", device_offset_std_db=6.0),
    SweepCell("extra loss 30 %", packet_loss=0.3),
    SweepCell("EIRP -25, shell 20, sigma 6, loss 30 %", -25.0, 20.0, 6.0, 0.3),
    SweepCell("EIRP +3, shell 5, sigma 6", 3.0, 5.0, 6.0),
    SweepCell("adv interval 0.1 s", tokens=TokenEnvelope(adv_interval_s=0.1)),
    SweepCell("adv interval 2 s", tokens=TokenEnvelope(adv_interval_s=2.0)),
    SweepCell("all deep in bags", tokens=TokenEnvelope(placements=((Placement.BAG_DEEP, 1.0),))),
    SweepCell("all in pockets", tokens=TokenEnvelope(placements=((Placement.POCKET, 1.0),))),
    SweepCell("clocks +-55 s", tokens=TokenEnvelope(clock_offset_s=55.0)),
    SweepCell("addresses kept", tokens=TokenEnvelope(addr_rotation_s=math.inf)),
    SweepCell("addresses rotate with rid", tokens=TokenEnvelope(addr_rotation_s=0.0)),
    SweepCell("crowd x10", tokens=TokenEnvelope(crowd=10.0)),
    SweepCell(
        "EIRP -21, 2 s, bags, rid addresses, clocks +-55 s",
        tx_eirp_dbm=-21.0,
        tokens=TokenEnvelope(
            adv_interval_s=2.0,
            placements=((Placement.BAG_DEEP, 1.0),),
            clock_offset_s=55.0,
            addr_rotation_s=0.0,
        ),
    ),
    SweepCell("3,000 waiting at a halt", tokens=TokenEnvelope(halt_crowd=3000)),
    SweepCell("EIRP -25 dBm, echo", tx_eirp_dbm=-25.0, tokens=TokenEnvelope(echo_share=1.0)),
    SweepCell(
        "EIRP -25, shell 20, sigma 6, loss 30 %, echo",
        -25.0,
        20.0,
        6.0,
        0.3,
        tokens=TokenEnvelope(echo_share=1.0),
    ),
    SweepCell(
        "EIRP -21, 2 s, bags, rid addresses, clocks +-55 s, echo",
        tx_eirp_dbm=-21.0,
        tokens=TokenEnvelope(
            adv_interval_s=2.0,
            placements=((Placement.BAG_DEEP, 1.0),),
            clock_offset_s=55.0,
            addr_rotation_s=0.0,
            echo_share=1.0,
        ),
    ),
    SweepCell(
        "EIRP -25, shell 20, sigma 6, loss 30 %, echo 50 %",
        -25.0,
        20.0,
        6.0,
        0.3,
        tokens=TokenEnvelope(echo_share=0.5),
    ),
)
"""The grid: the default world, each axis at its ends, and corners; then (22-25) the
weak cells again with phones that listen to the bus beacons and echo them in byte 23
(``TokenEnvelope.echo_share``: every phone, or half of them in 25). Their adverts are
those of cells 2, 10 and 20 except byte 23 (same seed, same draws)."""


def parse_cells(spec: str) -> list[SweepCell]:
    """Cells by their 1-based numbers in :data:`CELLS`: ``"1,3,5-8"``.

    Raises:
        ValueError: not numbers or ranges, or a number outside the grid.
    """
    out: list[SweepCell] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        a, b = int(lo), int(hi or lo)
        if not 1 <= a <= b <= len(CELLS):
            raise ValueError(f"cells are numbered 1-{len(CELLS)}, got {part!r}")
        out.extend(CELLS[a - 1 : b])
    return out


def parse_seeds(spec: str) -> list[int]:
    """Seeds as ``"5,6"`` or ``"5-12"`` (or both: ``"1,5-8"``), in the order given.

    Raises:
        ValueError: not integers or ranges, a range going down, or a seed twice.
    """
    out: list[int] = []
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        a = int(lo)
        b = int(hi) if sep else a
        if b < a:
            raise ValueError(f"seed range {part!r} goes down")
        out.extend(range(a, b + 1))
    if len(set(out)) != len(out):
        raise ValueError(f"a seed is given twice in {spec!r}")
    return out


@dataclass(slots=True)
class SweepResult:
    """The overall score of the suite in one cell for one seed.

    ``overall.details`` lists the run's observable errors and bystander charges, each
    with its ``scenario``.
    """

    cell: SweepCell
    seed: int
    overall: ScenarioScore


@dataclass(slots=True)
class CellSummary:
    """One cell over all its seeds: the summed counts and each seed's own."""

    cell: SweepCell
    runs: list[SweepResult]
    total: ScenarioScore

    @property
    def seeds(self) -> list[int]:
        """The cell's seeds, in the order run."""
        return [r.seed for r in self.runs]


def summarize(results: Sequence[SweepResult]) -> list[CellSummary]:
    """Group results by cell (first-seen order) and sum each cell's seeds."""
    by: dict[str, CellSummary] = {}
    for r in results:
        c = by.get(r.cell.name)
        if c is None:
            c = by[r.cell.name] = CellSummary(r.cell, [], ScenarioScore("overall"))
        c.runs.append(r)
        c.total.add(r.overall)
        c.total.details.extend({**d, "seed": r.seed} for d in r.overall.details)
    return list(by.values())


def _score_run(  # noqa: PLR0917 - one picklable task of the pool
    names: Sequence[str],
    seed: int,
    scale: str,
    options: GenerateOptions,
    keep_dir: Path | None,
    log_level: str | None,
    kept: Path | None = None,
) -> ScenarioScore:
    """Score the suite once (in a worker process of the pool, or in this one).

    With ``kept`` (a kept run's directory), nothing is generated: its scenarios are
    replayed, settled and scored again (:func:`~firmware_sim._rescore.rescore_suite`),
    their outputs written under ``keep_dir`` or a temporary directory.
    """
    if log_level is not None:
        from busbell import configure_logging

        configure_logging(log_level)
    if kept is None:
        suite = score_suite(names, seed=seed, scale=scale, options=options, keep_dir=keep_dir)
    elif keep_dir is not None:
        suite = rescore_suite(names, kept, keep_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="busbell-rescore-") as tmp:
            suite = rescore_suite(names, kept, Path(tmp))
    overall = suite.overall
    for s in suite.scenarios:
        overall.details.extend(
            {"scenario": s.scenario, **d}
            for d in s.details
            if d["kind"] == "bystander_charged" or d.get("observable")
        )
    return overall


def sweep(  # noqa: PLR0917 - the suite's and the sweep's arguments
    names: Sequence[str],
    seeds: Sequence[int],
    scale: str,
    base: GenerateOptions,
    cells: Sequence[SweepCell] = CELLS,
    progress: Callable[[SweepResult], None] | None = None,
    *,
    jobs: int = 1,
    keep_dir: Path | None = None,
    log_level: str = "warning",
    rescore: Path | None = None,
) -> list[SweepResult]:
    """Score the suite in every cell for every seed (subprocess pipeline, as ``score``).

    Args:
        names: the scenarios of the suite.
        seeds: the seeds of every cell.
        scale: ``small`` or ``full``.
        base: the generation options the cells change.
        cells: the cells (default: the whole grid).
        progress: called with each result as it finishes.
        jobs: runs (cell x seed) scored at once, each in its own process; 1 scores them
            one after another in this process.
        keep_dir: keep every run's scenario directories under
            ``keep_dir/cell-NN/seed-S`` (NN: the cell's number in :data:`CELLS`).
        log_level: the workers' log level (``jobs`` > 1).
        rescore: generate nothing: score again the runs kept under this directory by an
            earlier ``keep_dir`` (:mod:`firmware_sim._rescore`); a cell and seed it does
            not hold is skipped, and ``keep_dir`` receives the new outputs.

    Returns:
        One result per cell and seed, cells in the order given, seeds within each cell
        in the order given (whatever order the pool finished them in); ``progress`` is
        called as each finishes.
    """

    def keep(cell: SweepCell, seed: int) -> Path | None:
        return None if keep_dir is None else run_dir(keep_dir, cell, seed)

    def kept(cell: SweepCell, seed: int) -> Path | None:
        return None if rescore is None else run_dir(rescore, cell, seed)

    tasks = [
        (cell, seed)
        for cell in cells
        for seed in seeds
        if rescore is None or run_dir(rescore, cell, seed).is_dir()
    ]

    out: list[SweepResult | None] = [None] * len(tasks)
    if jobs <= 1:
        for i, (cell, seed) in enumerate(tasks):
            overall = _score_run(
                names, seed, scale, cell.options(base), keep(cell, seed), None, kept(cell, seed)
            )
            res = out[i] = SweepResult(cell, seed, overall)
            if progress is not None:
                progress(res)
    else:
        ctx = multiprocessing.get_context("spawn")  # no forked copy of this process's state
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futs = {
                pool.submit(
                    _score_run,
                    list(names),
                    seed,
                    scale,
                    _picklable(cell.options(base)),
                    keep(cell, seed),
                    log_level,
                    kept(cell, seed),
                ): i
                for i, (cell, seed) in enumerate(tasks)
            }
            for fut in as_completed(futs):
                i = futs[fut]
                cell, seed = tasks[i]
                res = out[i] = SweepResult(cell, seed, fut.result())
                if progress is not None:
                    progress(res)
    return [r for r in out if r is not None]


def _picklable(options: GenerateOptions) -> GenerateOptions:
    """The same options, sendable to a worker process.

    The radio's read-only placement table becomes a plain dict (a ``MappingProxyType``
    cannot be pickled); nothing writes to it.
    """
    r = options.radio
    return replace(options, radio=replace(r, placement_loss=dict(r.placement_loss)))


def run_line(r: SweepResult, **meta: str) -> str:
    """One run as a JSON line (``--save-runs``).

    Its cell's number and name, the seed, the counts, the observable errors, and
    ``meta`` (the command and commit that measured it).
    """
    return json.dumps(
        {
            **meta,
            "cell": cell_number(r.cell),
            "name": r.cell.name,
            "seed": r.seed,
            "overall": {**r.overall.as_dict(), "details": r.overall.details},
        },
        sort_keys=True,
    )


def load_runs(paths: Sequence[Path], meta: dict[str, set[str]] | None = None) -> list[SweepResult]:
    """Runs saved by ``--save-runs`` (several files: chunks of one sweep), in grid order.

    Args:
        paths: the files.
        meta: if given, collects the values of each line's ``command`` and ``commit``.

    Raises:
        ValueError: a line is not a run of a cell of :data:`CELLS`, or a (cell, seed)
            appears twice.
    """
    got: dict[tuple[int, int], SweepResult] = {}
    for path in paths:
        for n, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                k, seed = int(d["cell"]), int(d["seed"])
                if not 1 <= k <= len(CELLS) or CELLS[k - 1].name != d["name"]:
                    raise ValueError(f"cell {k} {d['name']!r} is not in this grid")
                if (k, seed) in got:
                    raise ValueError(f"cell {k} seed {seed} twice")
                got[(k, seed)] = SweepResult(
                    CELLS[k - 1], seed, ScenarioScore.from_dict(d["overall"])
                )
                if meta is not None:
                    for key in ("command", "commit"):
                        if isinstance(d.get(key), str):
                            meta.setdefault(key, set()).add(d[key])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{n}: {exc}") from None
    return [got[key] for key in sorted(got)]


def run_dir(root: Path, cell: SweepCell, seed: int) -> Path:
    """Where a run (cell x seed) is kept under ``root``: ``cell-NN/seed-S``."""
    return root / f"cell-{cell_number(cell) or 0:02d}" / f"seed-{seed}"


def cell_number(cell: SweepCell) -> int | None:
    """The cell's 1-based number in :data:`CELLS` (``None``: not one of the grid's)."""
    for i, c in enumerate(CELLS, start=1):
        if c == cell:
            return i
    return None


def _meets(s: ScenarioScore) -> bool:
    return (
        s.exact_observable_pct >= TARGETS["exact_pct_min"]
        and s.missed_observable_pct <= TARGETS["missed_pct_max"]
        and s.bystanders_per_10k <= TARGETS["bystanders_per_10k_max"]
        and s.double_charged == 0
    )


def _span(values: Sequence[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return (
        fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"
    )


def render_sweep(
    results: Sequence[SweepResult],
    command: str,
    *,
    run_info: Sequence[str] = (),
) -> str:
    """The envelope in Markdown, one row per cell with its seeds summed.

    Then the resolution, the worst cell per target, and the observable errors of the
    cells that miss a target.

    Args:
        results: the sweep's results (:func:`sweep`).
        command: the command line that produced them.
        run_info: extra ``- key: value`` lines (date, commit, time, jobs).
    """
    cells = summarize(results)
    lines = [f"- command: `{command}`", *(f"- {x}" for x in run_info)]
    if not cells:
        return "\n".join([*lines, "", "No cells were run."]) + "\n"
    n_seeds = sorted({len(c.runs) for c in cells})
    jn = [c.total.journeys_observable for c in cells]
    ln = [c.total.legs_observable for c in cells]
    pn = [c.total.bystander_passes for c in cells]
    allowed = [math.floor(n * (100.0 - TARGETS["exact_pct_min"]) / 100.0 + 1e-9) for n in jn]
    lines += [
        "",
        f"Resolution: each cell sums {_span(n_seeds, '{:.0f}')} seed(s) of the suite: "
        f"{_span(jn, '{:.0f}')} observable journeys (one journey "
        f"{_span([100.0 / max(n, 1) for n in jn], '{:.2f}')} %; the "
        f"{TARGETS['exact_pct_min']} % target allows {_span(allowed, '{:.0f}')} "
        f"{'journey' if max(allowed) == 1 else 'journeys'} not exact), "
        f"{_span(ln, '{:.0f}')} observable legs (one leg "
        f"{_span([100.0 / max(n, 1) for n in ln], '{:.2f}')} %), "
        f"{_span(pn, '{:.0f}')} bystander passes (one charge "
        f"{_span([1e4 / max(n, 1) for n in pn], '{:.1f}')} per 10,000).",
        "",
        "| # | cell | seeds | journeys | exact (observable) | missed (observable legs) "
        "| double | bystanders / passes (per 10k) | not exact per seed | targets |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        s = c.total
        per_seed = " ".join(
            f"{r.seed}:{r.overall.journeys_observable - r.overall.journeys_observable_exact}"
            for r in c.runs
        )
        lines.append(
            f"| {cell_number(c.cell) or '-'} | {c.cell.name} | {_seeds_text(c.seeds)} | "
            f"{s.journeys} | {s.journeys_observable_exact}/{s.journeys_observable} "
            f"({s.exact_observable_pct:.2f} %) | {s.missed_observable}/{s.legs_observable} "
            f"({s.missed_observable_pct:.2f} %) | {s.double_charged} | "
            f"{s.bystander_charged} / {s.bystander_passes} ({s.bystanders_per_10k:.1f}) | "
            f"{per_seed} | {'met' if _meets(s) else '**not met**'} |"
        )
    worst_exact = min(cells, key=lambda c: c.total.exact_observable_pct)
    worst_missed = max(cells, key=lambda c: c.total.missed_observable_pct)
    worst_by = max(cells, key=lambda c: c.total.bystanders_per_10k)
    worst_double = max(cells, key=lambda c: c.total.double_charged)
    worst_run = min(results, key=lambda r: r.overall.exact_observable_pct)
    met = sum(_meets(c.total) for c in cells)
    lines += [
        "",
        f"**Worst cell** (all its seeds together): exact "
        f"{worst_exact.total.exact_observable_pct:.2f} % ({worst_exact.cell.name}); missed "
        f"{worst_missed.total.missed_observable_pct:.2f} % ({worst_missed.cell.name}); "
        f"bystanders {worst_by.total.bystanders_per_10k:.1f} per 10k ({worst_by.cell.name}); "
        f"double charges {worst_double.total.double_charged} ({worst_double.cell.name}). "
        f"Targets met in {met} of {len(cells)} cells. Worst single run: exact "
        f"{worst_run.overall.exact_observable_pct:.2f} % ({worst_run.cell.name}, seed "
        f"{worst_run.seed}).",
    ]
    errors = _error_rows([c for c in cells if not _meets(c.total)])
    if errors:
        lines += [
            "",
            "Observable errors in the cells that miss a target:",
            "",
            "| cell | seed | scenario | error | rider | bus | truth | charged |",
            "|---|---|---|---|---|---|---|---|",
            *errors,
        ]
    return "\n".join(lines) + "\n"


def _seeds_text(seeds: Sequence[int]) -> str:
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def _stops(leg: dict[str, Any]) -> str:
    return f"{leg['board_stop_id']} -> {leg['alight_stop_id']}"


def _error_rows(cells: Sequence[CellSummary], limit: int = 60) -> list[str]:
    rows: list[str] = []
    for c in cells:
        for d in c.total.details:
            if d["kind"] == "bystander_charged":
                ch = d["charge"]
                what = ("bystander charged", ch["rider_id"], ch["bus_id"], "-", _stops(ch))
            else:
                leg = d["leg"]
                charged = "; ".join(_stops(x) for x in d.get("charges", [])) or "nothing"
                what = (d["kind"], leg["rider_id"], leg["bus_id"], _stops(leg), charged)
            n = cell_number(c.cell)
            rows.append(
                f"| {n or c.cell.name} | {d['seed']} | {d['scenario']} | " + " | ".join(what) + " |"
            )
    if len(rows) > limit:
        rows = [*rows[:limit], f"| ... | | | {len(rows) - limit} more | | | | |"]
    return rows
