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
pavements). Not swept: 3,000 tokens in range at once (too slow to simulate per advert;
the classifier's cost with 3,000 tokens is ``benchmarks/edge_classifier.py --crowd``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from firmware_sim._output import GenerateOptions
from firmware_sim._radio import Loss, Placement, RadioParams
from firmware_sim._score import TARGETS, ScenarioScore, score_suite
from firmware_sim._world import TokenEnvelope

__all__ = ["CELLS", "SweepCell", "SweepResult", "parse_cells", "render_sweep", "sweep"]


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
)
"""The grid: the default world, each axis at its ends, and corners."""


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


@dataclass(slots=True)
class SweepResult:
    """The overall score of the suite in one cell for one seed."""

    cell: SweepCell
    seed: int
    overall: ScenarioScore


def sweep(  # noqa: PLR0917 - the suite's and the sweep's arguments
    names: Sequence[str],
    seeds: Sequence[int],
    scale: str,
    base: GenerateOptions,
    cells: Sequence[SweepCell] = CELLS,
    progress: Callable[[SweepResult], None] | None = None,
) -> list[SweepResult]:
    """Score the suite in every cell for every seed (subprocess pipeline, as ``score``)."""
    out: list[SweepResult] = []
    for cell in cells:
        options = cell.options(base)
        for seed in seeds:
            suite = score_suite(names, seed=seed, scale=scale, options=options)
            res = SweepResult(cell, seed, suite.overall)
            out.append(res)
            if progress is not None:
                progress(res)
    return out


def _meets(s: ScenarioScore) -> bool:
    return (
        s.exact_observable_pct >= TARGETS["exact_pct_min"]
        and s.missed_observable_pct <= TARGETS["missed_pct_max"]
        and s.bystanders_per_10k <= TARGETS["bystanders_per_10k_max"]
        and s.double_charged == 0
    )


def render_sweep(results: Sequence[SweepResult], command: str) -> str:
    """The matrix (one row per cell and seed) and the worst cell per target, Markdown."""
    lines = [
        f"- command: `{command}`",
        "",
        "| cell | seed | journeys | exact (observable) | missed (observable legs) "
        "| double | bystanders / passes (per 10k) | targets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.overall
        lines.append(
            f"| {r.cell.name} | {r.seed} | {s.journeys} | "
            f"{s.journeys_observable_exact}/{s.journeys_observable} "
            f"({s.exact_observable_pct:.2f} %) | {s.missed_observable}/{s.legs_observable} "
            f"({s.missed_observable_pct:.2f} %) | {s.double_charged} | "
            f"{s.bystander_charged} / {s.bystander_passes} ({s.bystanders_per_10k:.1f}) | "
            f"{'met' if _meets(s) else '**not met**'} |"
        )
    if results:
        worst_exact = min(results, key=lambda r: r.overall.exact_observable_pct)
        worst_missed = max(results, key=lambda r: r.overall.missed_observable_pct)
        worst_by = max(results, key=lambda r: r.overall.bystanders_per_10k)
        worst_double = max(results, key=lambda r: r.overall.double_charged)
        met = sum(_meets(r.overall) for r in results)
        lines += [
            "",
            f"Worst cell: exact {worst_exact.overall.exact_observable_pct:.2f} % "
            f"({worst_exact.cell.name}, seed {worst_exact.seed}); missed "
            f"{worst_missed.overall.missed_observable_pct:.2f} % ({worst_missed.cell.name}, "
            f"seed {worst_missed.seed}); bystanders {worst_by.overall.bystanders_per_10k:.1f} "
            f"per 10k ({worst_by.cell.name}, seed {worst_by.seed}); double charges "
            f"{worst_double.overall.double_charged} ({worst_double.cell.name}, seed "
            f"{worst_double.seed}). Targets met in {met} of {len(results)} cells x seeds.",
        ]
    return "\n".join(lines) + "\n"
