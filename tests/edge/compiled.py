"""The edge tests against the compiled build (opt-in), and what the tests expect of the build.

By default the edge tests run the pure-Python classifier and pipeline. To run them against
the compiled build (``setup.py``, ``BUSBELL_MYPYC=1``; docs/edge.md, "Compiled build")::

    .venv/bin/python -m tests.edge.compiled            # tests/edge -m "not slow" -n 2
    .venv/bin/python -m tests.edge.compiled -- -x -k pipeline   # other pytest arguments

It copies the files of this checkout (the working tree, uncommitted changes included)
to a temporary directory, compiles ``edge/_classifier.py`` and ``edge/_pipeline.py`` there
in place as ``setup.py`` does for ``pip install`` (about 2 min of CPU), checks that the copy
imports them compiled, and runs pytest there with ``BUSBELL_TEST_EDGE_BUILD=compiled``
(about 3 min at ``-n 2`` on two cores; not part of the README's test run). The checkout
is not touched.

The few tests that inject a fault or a spy into the classifier by subclassing it or
patching its methods (a compiled class cannot be subclassed by interpreted code nor
patched) are marked :data:`interpreted_only` and skipped in that run; the code they check
is the same source, compiled.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from edge._build import edge_build

ROOT = Path(__file__).resolve().parents[2]

EXPECTED_BUILD = os.environ.get("BUSBELL_TEST_EDGE_BUILD", "pure")
"""The build the daemon must say it runs: ``pure`` in the README's test run, ``compiled`` in
the run of this module (``BUSBELL_TEST_EDGE_BUILD``)."""

interpreted_only = pytest.mark.skipif(
    edge_build() != "pure",
    reason="subclasses or patches the classifier: not possible with the compiled build",
)
"""A test that subclasses the classifier or patches its methods to inject a fault or a spy."""


def copy_sources(dst: Path) -> None:
    """The checkout's files as they are (git's tracked and untracked files, not ignored
    ones: no builds, ``.so`` or caches) copied to ``dst``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.split(b"\0")):
        src = ROOT / os.fsdecode(name)
        if src.is_file():  # (not a file deleted but still tracked)
            out = dst / os.fsdecode(name)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out)


def python(args: Sequence[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """This interpreter run in ``cwd`` with ``cwd`` first on its path (its sources imported,
    not the installed ones); output captured."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(cwd), **env},
        capture_output=True,
        text=True,
        check=False,
    )


def build_compiled(tree: Path) -> None:
    """Compile the edge's hot path in place in ``tree`` as ``setup.py`` does for pip.

    Raises:
        RuntimeError: the build failed, or the tree does not import its modules compiled.
    """
    done = python(["setup.py", "build_ext", "--inplace"], tree, BUSBELL_MYPYC="1")
    if done.returncode != 0:
        raise RuntimeError(f"compiling failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    said = python(["-c", "from edge._build import edge_build; print(edge_build())"], tree)
    if said.stdout.strip() != "compiled":
        raise RuntimeError(f"{tree} does not import the compiled build: {said.stdout}{said.stderr}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(
        prog="python -m tests.edge.compiled",
        description="Run the edge tests against the compiled build, in a copy of the sources.",
    )
    ap.add_argument("--keep", type=Path, help="build in this new directory and keep it")
    ap.add_argument(
        "pytest_args",
        nargs="*",
        help='pytest arguments after "--" (default: tests/edge -m "not slow" -n 2 -q)',
    )
    a = ap.parse_args(argv)
    args = a.pytest_args or ["tests/edge", "-m", "not slow", "-n", "2", "-q"]
    with tempfile.TemporaryDirectory(prefix="busbell-compiled-") as tmp:
        tree = a.keep if a.keep is not None else Path(tmp)
        tree.mkdir(parents=True, exist_ok=a.keep is None)
        copy_sources(tree)
        sys.stderr.write(f"compiling edge/_classifier.py and edge/_pipeline.py in {tree}\n")
        build_compiled(tree)
        sys.stderr.write(f"pytest {' '.join(args)} against the compiled build\n")
        return subprocess.call(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree), "BUSBELL_TEST_EDGE_BUILD": "compiled"},
        )


if __name__ == "__main__":
    raise SystemExit(main())
