"""A faster ``__init__`` for frozen, slotted dataclasses (the class stays frozen).

A frozen dataclass's generated ``__init__`` sets each field with ``object.__setattr__``,
which looks the name up on the type first: for the value types settlement makes by the
million (a segment per event, a leg, a fare leg, a quote and a journey per ride) that is
most of their cost. :func:`fast_init` swaps in an ``__init__`` with the same signature
(names, order, defaults) that sets the slots through their descriptors directly (about
three times faster) and then calls ``__post_init__`` if the class has one. Everything else
(frozen assignment errors, equality, hashing, ``dataclasses.replace``) is unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["fast_init"]

_T = TypeVar("_T")


def fast_init(cls: type[_T]) -> type[_T]:
    """Give the frozen, slotted dataclass ``cls`` a faster ``__init__`` (see the module)."""
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    if not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass")
    ns: dict[str, Any] = {}
    args: list[str] = []
    body: list[str] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init or f.kw_only or f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: only plain positional fields")
        if f.default is dataclasses.MISSING:
            args.append(f.name)
        else:
            ns[f"_d_{f.name}"] = f.default
            args.append(f"{f.name}=_d_{f.name}")
        ns[f"_s_{f.name}"] = cls.__dict__[f.name].__set__
        body.append(f"    _s_{f.name}(self, {f.name})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    source = f"def __init__(self, {', '.join(args)}):\n" + "\n".join(body) + "\n"
    exec(source, ns)  # noqa: S102 - source made above from the class's own field names
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    setattr(cls, "__init__", init)  # noqa: B010 - mypy: a method is not assignable
    return cls
