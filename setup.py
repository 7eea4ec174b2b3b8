"""The optional compiled build of the edge's hot path (mypyc); metadata is in pyproject.toml.

By default (``pip install .``, ``pip install -e .``) busbell is pure Python. With
``BUSBELL_MYPYC=1`` in the environment, the modules of :data:`COMPILED` are compiled to C
extensions by mypyc (it ships with mypy, in the ``dev`` extra), next to their sources::

    BUSBELL_MYPYC=1 pip install --no-build-isolation '.[edge]'

(``--no-build-isolation``: mypyc is imported from the installing environment; it needs a C
compiler and Python's headers; not for editable installs). ``docs/edge.md`` ("Compiled
build") has the figures and what compiling changes; ``tests/edge/test_compiled_build.py``
checks that the compiled modules give byte-identical output.
"""

from __future__ import annotations

import os

from setuptools import setup

COMPILED = ["edge/_classifier.py", "edge/_pipeline.py"]
"""The modules compiled by ``BUSBELL_MYPYC=1``: the classifier and the pipeline's ``feed``."""


def _ext_modules() -> list[object]:
    if os.environ.get("BUSBELL_MYPYC", "") in ("", "0"):
        return []
    from mypyc.build import mypycify

    return list(mypycify(COMPILED, opt_level="3"))


setup(ext_modules=_ext_modules())
