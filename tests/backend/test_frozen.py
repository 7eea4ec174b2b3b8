"""backend._frozen.fast_init: the same class, only its __init__ faster."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from backend._fare_engine import FareInputError, FareLeg
from backend._frozen import fast_init
from backend._legs import Segment


def _make() -> type[Any]:
    """A fresh frozen, slotted dataclass (the same definition each call)."""

    @dataclasses.dataclass(frozen=True, slots=True)
    class Sample:
        a: int
        b: str | None = None
        c: tuple[int, ...] = dataclasses.field(default=(), compare=False)

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("a < 0")

    return Sample


_Plain = _make()
_Fast = fast_init(_make())


def test_fast_init_keeps_the_dataclass_behaviour() -> None:
    for args, kw in [((1,), {}), ((1, "x"), {}), ((), {"a": 2, "c": (3,)}), ((4,), {"b": None})]:
        plain, fast = _Plain(*args, **kw), _Fast(*args, **kw)
        assert dataclasses.astuple(plain) == dataclasses.astuple(fast)
        assert repr(plain) == repr(fast)
    assert _Fast(1, "x", (1,)) == _Fast(1, "x", (2,))  # compare=False kept
    assert hash(_Fast(1)) == hash(_Fast(1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        _Fast(1).a = 2
    with pytest.raises(ValueError, match="a < 0"):
        _Fast(-1)
    with pytest.raises(TypeError):
        _Fast()
    with pytest.raises(TypeError):
        _Fast(1, d=2)
    assert dataclasses.replace(_Fast(1, "x"), a=5) == _Fast(5, "x")


def test_fast_init_refuses_what_it_cannot_copy() -> None:
    @dataclasses.dataclass(slots=True)
    class Mutable:
        a: int

    with pytest.raises(TypeError, match="frozen, slotted"):
        fast_init(Mutable)

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="positional"):
        fast_init(Factory)


def test_the_settlement_types_still_check_and_freeze() -> None:
    seg = Segment("r", "b", 1, "e", 2, None, None, 1.0, None, "boarded", 2.0, "S", "alighted", 0.0)
    assert seg.rssi_med is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        seg.seq = 2  # type: ignore[misc]
    with pytest.raises(FareInputError, match="alight_t"):
        FareLeg("R", "n", 10.0, 5.0, 1.0)
