"""The compiled build of the edge (``setup.py``, ``BUSBELL_MYPYC=1``) changes no output.

Slow (``-m slow``): mypyc compiles ``edge/_classifier.py`` and ``edge/_pipeline.py`` to C
and gcc builds them, a minute or more of CPU. The modules are built in place in a copy of
the sources, exactly as ``setup.py`` builds them for ``pip install``; then
``benchmarks/edge_replay_digest.py`` replays simulated scenarios (with rid rotations, a
crowd, three routes at a shared stop) and the crowd benchmark's stream (a rid boundary
crossed by 300 tokens) through the pure code and through the compiled one: every segment
with its floats exact, each trace's counters and a digest of the state a checkpoint
holds must be byte-identical.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = (
    "quiet_route",
    "long_ride_many_intervals",
    "rush_hour_crowd",
    "shared_stop_three_routes",
)


def _run(args: list[str], cwd: Path, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(cwd), **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def _copy_sources(dst: Path) -> None:
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "build")
    for name in ("busbell", "edge", "backend", "firmware_sim", "benchmarks", "tests"):
        shutil.copytree(ROOT / name, dst / name, ignore=skip)
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, dst / name)


def test_the_compiled_edge_replays_byte_identical_to_the_pure_code(tmp_path: Path) -> None:
    scen = tmp_path / "scenarios"
    for name in SCENARIOS:
        _run(
            ["-c", "import sys; from busbell.cli import run; sys.exit(run())", "sim", "scenario",
             "--name", name, "--seed", "1", "--out", str(scen / name)],
            ROOT,
        )  # fmt: skip
    built = tmp_path / "compiled"
    _copy_sources(built)
    _run(["setup.py", "build_ext", "--inplace"], built, BUSBELL_MYPYC="1")
    for mod in ("_classifier", "_pipeline"):
        assert list((built / "edge").glob(f"{mod}.*.so")), f"edge/{mod} not compiled"
    outs = {}
    for label, tree in (("pure", ROOT), ("compiled", built)):
        out = tmp_path / f"{label}.jsonl"
        said = _run(
            ["-m", "benchmarks.edge_replay_digest", str(scen), "--crowd", "300", "60000",
             "--out", str(out)],
            tree,
        )  # fmt: skip
        assert ("compiled by mypyc (edge._classifier, edge._pipeline" in said) == (
            label == "compiled"
        ), said
        outs[label] = out.read_bytes()
    lines = outs["pure"].splitlines()
    traces = [line for line in lines if b'"state": ' in line]  # (a trace's counters, state)
    assert len(traces) > len(SCENARIOS)  # (every scenario's traces and the crowd's)
    assert len(lines) - len(traces) > 50  # (segments)
    assert outs["compiled"] == outs["pure"]
