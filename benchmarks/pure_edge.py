"""Import the edge's classifier and pipeline from their Python sources, compiled build or not.

A diagnostic that subclasses the classifier or watches its methods
(``benchmarks/rotation_heirs.py``) cannot do so with the compiled build (``setup.py``,
``BUSBELL_MYPYC=1``): interpreted code cannot subclass a class compiled by mypyc. Imported
before anything imports ``edge`` (first among the imports: ``benchmarks`` sorts before
``busbell`` and ``edge``), this module makes ``edge._classifier`` and ``edge._pipeline``
load from their ``.py`` next to the extensions, so such a diagnostic runs the interpreted
code, which replays byte-identical to the compiled one
(tests/edge/test_compiled_build.py), only slower. Without the compiled build it changes
nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["PURE_MODULES", "check_pure"]

PURE_MODULES = ("edge._classifier", "edge._pipeline")
"""The modules the compiled build compiles (``edge._build.COMPILED_MODULES``, which cannot
be imported here without importing them; :func:`check_pure` checks they agree)."""


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Finds :data:`PURE_MODULES` as their ``.py`` files, before the path's extensions."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in PURE_MODULES or not path:
            return None
        for entry in path:
            source = Path(entry) / f"{fullname.rpartition('.')[2]}.py"
            if source.is_file():
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def check_pure() -> None:
    """Raise ``RuntimeError`` unless the edge's hot path runs from its Python sources."""
    from edge._build import COMPILED_MODULES, compiled_modules

    compiled = compiled_modules()
    if compiled or set(COMPILED_MODULES) - set(PURE_MODULES):
        raise RuntimeError(
            f"the edge's compiled modules were imported ({', '.join(compiled) or 'none'}; "
            f"compiled build: {', '.join(COMPILED_MODULES)}): import benchmarks.pure_edge "
            "before anything imports edge"
        )


if not any(isinstance(f, _SourcesFirst) for f in sys.meta_path):
    sys.meta_path.insert(0, _SourcesFirst())
