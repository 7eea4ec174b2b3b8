"""The compiled build of the edge (``setup.py``, ``BUSBELL_MYPYC=1``) changes no output.

Slow (``-m slow``): mypyc compiles ``edge/_classifier.py`` and ``edge/_pipeline.py`` to C
and gcc builds them, a minute or more of CPU. The modules are built in place in a copy of
the sources, exactly as ``setup.py`` builds them for ``pip install``; then
``benchmarks/edge_replay_digest.py`` replays simulated scenarios (with rid rotations, a
crowd, three routes at a shared stop) and the crowd benchmark's stream (a rid boundary
crossed by 300 tokens) through the pure code and through the compiled one: every segment
with its floats exact, each trace's counters and a digest of the state a checkpoint
holds must be byte-identical. And the compiled copy says it is: ``busbell edge --version``,
and the daemon's ``edge_started`` log, status and ``busbell_edge_build_info`` metric
(tests/edge/test_daemon.py run there with ``BUSBELL_TEST_EDGE_BUILD=compiled``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.edge.compiled import ROOT, build_compiled, copy_sources, python

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

SCENARIOS = (
    "quiet_route",
    "long_ride_many_intervals",
    "rush_hour_crowd",
    "shared_stop_three_routes",
)


def _run(args: list[str], cwd: Path, **env: str) -> str:
    done = python(args, cwd, **env)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_the_compiled_edge_replays_byte_identical_to_the_pure_code(tmp_path: Path) -> None:
    scen = tmp_path / "scenarios"
    for name in SCENARIOS:
        _run(
            ["-c", "import sys; from busbell.cli import run; sys.exit(run())", "sim", "scenario",
             "--name", name, "--seed", "1", "--out", str(scen / name)],
            ROOT,
        )  # fmt: skip
    built = tmp_path / "compiled"
    built.mkdir()
    copy_sources(built)
    build_compiled(built)
    for mod in ("_classifier", "_pipeline"):
        assert list((built / "edge").glob(f"{mod}.*.so")), f"edge/{mod} not compiled"
    # the build is reported: busbell edge --version, and the daemon's log, status and metric
    version = _run(["-c", "from busbell.cli import run; run()", "edge", "--version"], built)
    assert version.startswith("busbell "), version
    assert version.rstrip().endswith(
        "(edge build: compiled; compiled by mypyc: edge._classifier, edge._pipeline)"
    ), version
    tests = [
        "tests/edge/test_daemon.py::test_daemon_end_to_end",
        "tests/edge/test_build.py::test_edge_version_names_the_build",
    ]
    said = _run(
        ["-m", "pytest", "-p", "no:cacheprovider", "-q", *tests],
        built,
        BUSBELL_TEST_EDGE_BUILD="compiled",
    )
    assert "2 passed" in said, said
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
