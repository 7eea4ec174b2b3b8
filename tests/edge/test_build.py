"""Which build the edge runs, and ``BUSBELL_MYPYC=1`` on a machine that cannot compile.

The compiled case of ``busbell edge --version`` is checked by the slow
tests/edge/test_compiled_build.py, and the daemon's report (log, metric, status) by
tests/edge/test_daemon.py in ``python -m tests.edge.compiled``.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from busbell.cli import main as busbell_main
from edge._build import COMPILED_MODULES, edge_build
from tests.edge.compiled import EXPECTED_BUILD, ROOT


def test_edge_version_names_the_build(capsys: pytest.CaptureFixture[str]) -> None:
    assert busbell_main(["edge", "--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("busbell ")
    assert f"(edge build: {EXPECTED_BUILD}" in out
    assert edge_build() == EXPECTED_BUILD


def test_the_modules_named_compiled_are_those_setup_py_compiles() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    (listed,) = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "COMPILED"
    ]
    files = ast.literal_eval(listed)
    assert [f.removesuffix(".py").replace("/", ".") for f in files] == list(COMPILED_MODULES)


def _setup_py(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``BUSBELL_MYPYC=1 python setup.py build_ext --inplace`` in a directory of its own
    (the toolchain is checked before anything is built or read)."""
    shutil.copy2(ROOT / "setup.py", tmp_path / "setup.py")
    return subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "BUSBELL_MYPYC": "1", **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _refused(done: subprocess.CompletedProcess[str], tmp_path: Path) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert not [p for p in tmp_path.rglob("*") if p.name != "setup.py"]  # (nothing built)
    (line,) = done.stderr.splitlines()  # one line: no traceback
    assert line.startswith("error: BUSBELL_MYPYC=1 (the compiled edge build): ")
    pure = "; or unset BUSBELL_MYPYC for the pure-Python build (about half the speed: docs/edge.md)"
    assert line.endswith(pure)
    return line


def test_no_c_compiler_fails_the_compiled_install_saying_so(tmp_path: Path) -> None:
    line = _refused(_setup_py(tmp_path, CC="/nonexistent/cc"), tmp_path)
    assert "no C compiler: '/nonexistent/cc' not found (install gcc" in line


def test_a_compiler_that_cannot_build_against_python_h_fails_it_saying_so(tmp_path: Path) -> None:
    line = _refused(_setup_py(tmp_path, CC="false"), tmp_path)
    include = sysconfig.get_paths()["include"]
    if (Path(include) / "Python.h").is_file():
        assert "the C compiler 'false' cannot compile a file that includes Python.h" in line
    else:  # (a machine without python3-dev: the headers are checked before the compiler runs)
        assert f"no Python headers: {include}/Python.h missing" in line


def test_no_mypyc_fails_it_saying_so(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    (shadow / "mypyc").mkdir(parents=True)
    (shadow / "mypyc" / "__init__.py").write_text("")  # a mypyc without mypyc.build
    here = tmp_path / "here"
    here.mkdir()
    line = _refused(_setup_py(here, PYTHONPATH=str(shadow)), here)
    assert "mypyc is not importable" in line
    assert "--no-build-isolation" in line
