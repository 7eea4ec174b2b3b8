"""The checkpoint's restricted unpickler (:meth:`edge.EdgePipeline.restore`).

A module of its own, never compiled: the compiled build of the edge (mypyc,
``docs/edge.md``) compiles ``edge._pipeline``, and a subclass of the C ``pickle.Unpickler``
compiled by mypyc crashed the interpreter on construction (mypy 2.4.1, CPython 3.11).
"""

from __future__ import annotations

import pickle
from typing import Any

__all__ = ["CheckpointError"]

_CHECKPOINT_CLASSES = frozenset(
    {
        ("edge._classifier", "_Rid"),
        ("edge._vehicle", "StopVisit"),
        ("edge._segment", "SegmentEnd"),
        ("collections", "deque"),
        ("array", "array"),
        ("array", "_array_reconstructor"),
        ("copyreg", "_reconstructor"),
        ("builtins", "object"),
        ("builtins", "float"),
    }
)
"""The only classes a checkpoint may name (the unpickler refuses every other one)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored (other format or code version, corrupt)."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CHECKPOINT_CLASSES:
            raise CheckpointError(f"checkpoint names {module}.{name}, which is not allowed")
        return super().find_class(module, name)
