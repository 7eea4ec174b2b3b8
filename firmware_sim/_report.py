"""Text and Markdown renderings of a suite score (``busbell sim score``)."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from firmware_sim._score import TARGETS, ScenarioScore, SuiteScore

__all__ = [
    "PAGE_HEAD",
    "git_commit",
    "render_failures",
    "render_markdown",
    "render_report",
    "render_table",
    "section_markers",
    "write_section",
]

_HEAD = (
    "| scenario | journeys | exact | exact (observable) | board-stop err | alight-stop err "
    "| missed | double | held | bystanders charged / passes | per 10k |"
)


def _row(s: ScenarioScore) -> str:
    return (
        f"| {s.scenario} | {s.journeys} | {s.journeys_exact} ({s.exact_pct:.1f} %) "
        f"| {s.journeys_observable_exact}/{s.journeys_observable} "
        f"({s.exact_observable_pct:.1f} %) | {s.board_stop_errors} | {s.alight_stop_errors} "
        f"| {s.missed}/{s.legs} ({s.missed_pct:.2f} %; observable "
        f"{s.missed_observable_pct:.2f} %) | {s.double_charged} | {s.held_legs} "
        f"| {s.bystander_charged} / {s.bystander_passes} | {s.bystanders_per_10k:.1f} |"
    )


def render_table(suite: SuiteScore) -> str:
    """A Markdown table of every scenario and the overall line."""
    lines = [_HEAD, "|" + "---|" * 11]
    lines += [_row(s) for s in suite.scenarios]
    overall = suite.overall
    lines.append(_row(overall).replace("| overall |", "| **overall** |", 1))
    return "\n".join(lines)


def _stops(leg: dict[str, Any]) -> str:
    return f"{leg['board_stop_id']} -> {leg['alight_stop_id']}"


def render_failures(suite: SuiteScore, limit: int = 40) -> str:
    """A Markdown table of the observable errors (wrong legs, misses, bystander charges)."""
    rows = []
    for s in suite.scenarios:
        for d in s.details:
            if d["kind"] == "bystander_charged":
                c = d["charge"]
                rows.append(
                    (s.scenario, "bystander charged", c["rider_id"], c["bus_id"], "-", _stops(c))
                )
            elif d.get("observable"):
                leg = d["leg"]
                charged = "; ".join(_stops(c) for c in d.get("charges", [])) or "nothing"
                rows.append(
                    (s.scenario, d["kind"], leg["rider_id"], leg["bus_id"], _stops(leg), charged)
                )
    if not rows:
        return "None."
    out = ["| scenario | error | rider | bus | truth | charged |", "|---|---|---|---|---|---|"]
    out += ["| " + " | ".join(r) + " |" for r in rows[:limit]]
    if len(rows) > limit:
        out.append(f"\n({len(rows) - limit} more in each scenario's `score.json` with `--keep`.)")
    return "\n".join(out)


def _share(n: int, total: int) -> str:
    return f"{100.0 * n / total:.2f}" if total else "-"


def _per10k(passes: int) -> str:
    return f"{1e4 / passes:.2f}" if passes else "-"


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def git_commit(cwd: Path | None = None) -> str:
    """The checkout's HEAD commit (with ``-dirty`` if files changed), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],  # noqa: S607 - git from PATH
            capture_output=True,
            text=True,
            check=True,
            cwd=cwd,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head


PAGE_HEAD = """# Accuracy of busbell on the simulated scenario suite

Measured end to end: `busbell sim` generates each scenario (traces of every bus, keys,
GTFS, ground truth), then `busbell edge replay` turns every bus's trace into signed fare
events and `busbell backend settle` turns all events into journeys, both run as
subprocesses exactly as a field engineer would; the charged journeys are compared with
the simulator's truth. What each scenario models is in [simulator.md](simulator.md); the
radio model in [radio.md](radio.md).
"""
"""The title and introduction of a new accuracy page (hand-edited afterwards)."""


def section_markers(name: str) -> tuple[str, str]:
    """The comment lines that open and close the generated section ``name``."""
    return (
        f"<!-- generated: {name} (busbell sim score --write-docs rewrites only what lies "
        "between these markers) -->",
        f"<!-- end generated: {name} -->",
    )


def write_section(path: Path, name: str, body: str, head: str = PAGE_HEAD) -> str:
    """Write ``body`` as the generated section ``name`` of the Markdown file ``path``.

    Only the text between the section's markers (:func:`section_markers`) is replaced;
    everything else in the file (hand-written analysis, other sections) is kept byte for
    byte. A file without the section gets it appended at its end; a missing file is
    created with ``head`` before the section.

    Returns:
        ``"replaced"``, ``"appended"`` or ``"created"``.

    Raises:
        ValueError: the file has the section's opening marker without its closing one
            (or either twice); the file is left as it was.
    """
    begin, end = section_markers(name)
    block = f"{begin}\n\n{body.strip()}\n\n{end}\n"
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        path.write_text(f"{head.rstrip()}\n\n{block}", "utf-8")
        return "created"
    # match the opening marker by its prefix: the explanation after the name may change
    opener = begin.split(" (", 1)[0]
    n_open = sum(line.startswith(opener + " ") or line == opener for line in text.splitlines())
    n_end = text.count(end)
    if n_open == 0 and n_end == 0:
        sep = "" if text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        path.write_text(f"{text}{sep}{block}", "utf-8")
        return "appended"
    if n_open != 1 or n_end != 1:
        raise ValueError(
            f"{path}: section {name!r} has {n_open} opening and {n_end} closing markers"
            " (want one of each); not written"
        )
    a = text.index(opener)
    a = text.rfind("\n", 0, a) + 1  # the start of the marker's line
    b = text.index(end)
    if b < a:
        raise ValueError(f"{path}: section {name!r} closes before it opens; not written")
    b += len(end)
    if text[b : b + 1] == "\n":
        b += 1
    path.write_text(text[:a] + block + text[b:], "utf-8")
    return "replaced"


def render_report(suite: SuiteScore, command: str, *, commit: str | None = None) -> str:
    """The generated part of the accuracy page: run, targets, scenarios, errors."""
    o = suite.overall
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    t = TARGETS
    return f"""- command: `{command}`
- date: {when}
- commit: `{commit or git_commit()}`
- scale: {suite.scale}, seed {suite.seed}
- time: generation {suite.generation_s:.1f} s, replay + settle {suite.pipeline_s:.1f} s

## Against the targets

| target | value | |
|---|---|---|
| exactly right journeys >= {t["exact_pct_min"]} % | {o.exact_pct:.2f} % of all, \
{o.exact_observable_pct:.2f} % of observable | \
{_verdict(o.exact_observable_pct >= t["exact_pct_min"])} (observable) |
| bystanders charged <= {t["bystanders_per_10k_max"]} per 10,000 passes | \
{o.bystanders_per_10k:.2f} ({o.bystander_charged} / {o.bystander_passes}) | \
{_verdict(o.bystanders_per_10k <= t["bystanders_per_10k_max"])} |
| riders missed <= {t["missed_pct_max"]} % | {o.missed_pct:.2f} % of all legs, \
{o.missed_observable_pct:.2f} % of observable legs | \
{_verdict(o.missed_observable_pct <= t["missed_pct_max"])} (observable) |

Resolution of this run: one journey is {_share(1, o.journeys)} % of the journeys, one leg
{_share(1, o.legs)} % of the legs, one bystander charge {_per10k(o.bystander_passes)} per
10,000 passes. The observable figures are the ones the targets are about: a leg no bus
could hear cannot be charged by any classifier.

## Per scenario

{render_table(suite)}

Definitions (see `firmware_sim/_score.py`): a journey is *exact* when every leg is charged
exactly once with the right bus, boarding stop and alighting stop. A charge matches a true
leg of the same rider on the same bus overlapping it in time (+-120 s). *Missed*: a true
leg with no charge. *Double*: a true leg charged more than once. *Held*: legs the backend
did not charge (held for review as a suspected replay, or dropped because another bus
heard the rider much more strongly at the time); they charge nobody, so a true leg that
was only held counts as missed. *Bystander charged*: a charge matching no true leg; a
*bystander pass* is a token that came within 30 m of a bus it was not riding (counted
once per pass). *Observable* excludes legs no bus could see: riders whose iPhone app is
in the background (iOS cannot advertise custom data there), tokens whose battery went
flat during the ride, and token clocks outside the edge's tq window (the
`token_clock_drift` scenario has some on purpose).

## What went wrong (observable legs)

{render_failures(suite)}

`wrong` lists every charge matched to the true leg ("A -> B; C -> D" is a ride split in
two charges). Rerun with `--keep DIR` to get each scenario's traces, events, settled
journeys and `score.json`.
"""


def render_markdown(suite: SuiteScore, command: str, *, commit: str | None = None) -> str:
    """A whole accuracy page: :data:`PAGE_HEAD` and :func:`render_report`."""
    return f"{PAGE_HEAD}\n{render_report(suite, command, commit=commit)}"
