"""The optional compiled build of the edge's hot path (mypyc); metadata is in pyproject.toml.

By default (``pip install .``, ``pip install -e .``) busbell is pure Python. With
``BUSBELL_MYPYC=1`` in the environment, the modules of :data:`COMPILED` are compiled to C
extensions by mypyc (it ships with mypy, in the ``dev`` extra), next to their sources::

    BUSBELL_MYPYC=1 pip install --no-build-isolation '.[edge]'

(``--no-build-isolation``: mypyc is imported from the installing environment; it needs a C
compiler and Python's headers, checked first: without them the install fails with one
line saying what is missing, never a silent pure install; not for editable installs).
``docs/edge.md`` ("Compiled build") has the figures and what compiling changes;
``tests/edge/test_compiled_build.py`` checks that the compiled modules give byte-identical
output, ``tests/edge/test_build.py`` the failures.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
import tempfile
from pathlib import Path

from setuptools import setup

COMPILED = ["edge/_classifier.py", "edge/_pipeline.py"]
"""The modules compiled by ``BUSBELL_MYPYC=1``: the classifier and the pipeline's ``feed``
(``edge._build.COMPILED_MODULES`` names them for the daemon's ``build``)."""

PURE = "unset BUSBELL_MYPYC for the pure-Python build (about half the speed: docs/edge.md)"


class CompiledBuildError(SystemExit):
    """``BUSBELL_MYPYC=1`` was asked for and this machine cannot build it.

    The install fails (never a silent pure build: a bus needs the compiled one for its speed).
    """

    def __init__(self, what: str) -> None:
        super().__init__(f"error: BUSBELL_MYPYC=1 (the compiled edge build): {what}; or {PURE}")


def _check_toolchain() -> None:
    """Fail with a clear message unless a C compiler builds a file that includes Python.h.

    Without this check a machine without ``gcc`` or ``python3-dev`` failed only after
    mypyc's minute of work, in compiler output (``command 'gcc' failed: No such file or
    directory``, ``Python.h: No such file or directory``).
    """
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import CCompilerError, DistutilsExecError
    from setuptools._distutils.sysconfig import customize_compiler

    cc = new_compiler()
    customize_compiler(cc)  # (the compiler Python was built with, or $CC)
    exe = cc.compiler_so[0]  # type: ignore[attr-defined]
    if shutil.which(exe) is None:
        raise CompiledBuildError(
            f"no C compiler: {exe!r} not found (install gcc: apt-get install gcc python3-dev)"
        )
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        raise CompiledBuildError(
            f"no Python headers: {include}/Python.h missing "
            f"(install this Python's headers: apt-get install python3-dev)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.c"
        probe.write_text("#include <Python.h>\nint busbell_probe(void) { return 0; }\n")
        try:
            cc.compile([str(probe)], output_dir=tmp, include_dirs=[include])
        except (CCompilerError, DistutilsExecError) as exc:
            raise CompiledBuildError(
                f"the C compiler {exe!r} cannot compile a file that includes Python.h ({exc})"
            ) from None


def _ext_modules() -> list[object]:
    if os.environ.get("BUSBELL_MYPYC", "") in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        raise CompiledBuildError(
            "mypyc is not importable (it ships with mypy: install the dev extra, or "
            "mypy, in the installing environment and pass pip --no-build-isolation)"
        ) from None
    _check_toolchain()
    return list(mypycify(COMPILED, opt_level="3"))


setup(ext_modules=_ext_modules())
