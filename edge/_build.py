"""Which build of the edge's hot path this process runs: pure Python or compiled by mypyc.

The compiled build (``setup.py``, ``BUSBELL_MYPYC=1``; docs/edge.md, "Compiled build")
puts C extensions of :data:`COMPILED_MODULES` next to their sources; Python imports an
extension in preference to the ``.py`` of the same module. The daemon logs the build at
start-up (``edge_started`` ``build``), exports it (``busbell_edge_build_info{build}``) and
puts it in its status; ``busbell edge --version`` prints it. Never compiled itself.
"""

from __future__ import annotations

import importlib
import importlib.machinery
from typing import Literal

__all__ = ["COMPILED_MODULES", "EdgeBuild", "compiled_modules", "edge_build"]

COMPILED_MODULES = ("edge._classifier", "edge._pipeline")
"""The modules ``setup.py`` compiles with ``BUSBELL_MYPYC=1`` (its ``COMPILED``, as modules)."""

EdgeBuild = Literal["compiled", "pure", "mixed"]


def compiled_modules() -> list[str]:
    """The modules of :data:`COMPILED_MODULES` this process imported from C extensions."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return [
        name
        for name in COMPILED_MODULES
        if (importlib.import_module(name).__file__ or "").endswith(suffixes)
    ]


def edge_build(compiled: list[str] | None = None) -> EdgeBuild:
    """The build this process runs (from ``compiled``, :func:`compiled_modules`'s list, if given).

    ``compiled`` (every module of :data:`COMPILED_MODULES` is an extension), ``pure`` (none
    is) or ``mixed`` (some are: an install half-replaced by hand, never made by ``setup.py``).
    """
    n = len(compiled_modules() if compiled is None else compiled)
    if n == len(COMPILED_MODULES):
        return "compiled"
    return "pure" if n == 0 else "mixed"
