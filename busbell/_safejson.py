"""Bounded JSON parsing for everything that arrives from outside a process.

``json.loads`` recurses once per nesting level and raises :class:`RecursionError` (not
``ValueError``) on deep input, accepts ``NaN``/``Infinity`` and turns ``1e999`` into
``inf``, decodes UTF-16/32 byte strings by sniffing, and parses integers of any size.
Each of those has stopped or corrupted a busbell daemon. :func:`loads_bounded` checks,
in this order and before ``json.loads`` runs:

1. size: at most ``max_bytes`` bytes (``too_large``);
2. encoding: strict UTF-8 (``not_utf8``);
3. depth: the nesting of arrays/objects, counted by scanning the text with the JSON
   string grammar (brackets inside strings do not count), at most ``max_depth``
   (``too_deep``);

and then parses with hooks that reject non-finite numbers (``non_finite``) and integers
outside ``[int_min, int_max]`` (``int_range``; the default is PostgreSQL's BIGINT).
Malformed JSON is ``not_json``. Every failure is a :class:`JsonRejected` (a
:class:`~busbell._errors.ContractError`) whose ``reason`` is one of :data:`REASONS`, so a
handler counts it by reason with one ``except`` clause.

Typical use in an MQTT handler::

    try:
        obj = loads_object(payload, limits)
    except JsonRejected as exc:
        rejects.reject(exc.reason, topic=topic, error=str(exc))  # a RejectLog
        obj = None

Plain synchronous code with no I/O.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from itertools import accumulate, repeat
from typing import Any, Final

from busbell._errors import ContractError

__all__ = [
    "BIGINT_MAX",
    "BIGINT_MIN",
    "DEFAULT_LIMITS",
    "REASONS",
    "JsonLimits",
    "JsonRejected",
    "json_depth",
    "loads_bounded",
    "loads_object",
]

BIGINT_MIN: Final = -(2**63)
BIGINT_MAX: Final = 2**63 - 1

REASONS: Final = (
    "too_large",
    "not_utf8",
    "too_deep",
    "not_json",
    "non_finite",
    "int_range",
    "not_object",
)
"""Every ``JsonRejected.reason``, in the order the checks run."""


@dataclass(frozen=True, slots=True)
class JsonLimits:
    """What a bounded parse accepts.

    Attributes:
        max_bytes: largest accepted input, in UTF-8 bytes.
        max_depth: deepest accepted nesting (``{}`` and ``[]`` each count one level; a
            scalar is depth 0, ``{"a":[1]}`` is depth 2).
        int_min: smallest accepted integer.
        int_max: largest accepted integer.
    """

    max_bytes: int = 64 * 1024
    max_depth: int = 16
    int_min: int = BIGINT_MIN
    int_max: int = BIGINT_MAX

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_depth < 0 or self.int_min > self.int_max:
            raise ValueError(f"invalid JSON limits {self!r}")


DEFAULT_LIMITS: Final = JsonLimits()
"""64 KiB, depth 16, BIGINT integers: enough for every busbell control message."""


class JsonRejected(ContractError):
    """Input refused by a bounded JSON parse.

    Attributes:
        reason: one of :data:`REASONS` (snake_case, for counters).
        field: always ``""`` (the input as a whole).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"JSON rejected ({reason}): {message}", reason=reason)


# JSON text outside strings uses only these characters (plus brackets); deleting them
# leaves the brackets and any stray character an invalid text has.
_OUTSIDE_NOISE = {ord(c): None for c in " \t\n\r:,0123456789.eE+-truefalsn"}
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _outside_strings(text: str) -> str:
    """The text with every string literal (quotes included) removed.

    Escapes go first, so an escaped quote never ends a string. In an invalid text this
    may differ from a parser's view only after the first point where the parser fails
    (a backslash outside a string, an unterminated string), which is all the depth check
    needs: ``json.loads`` never recurses past that point.
    """
    if "\\" in text:
        text = _ESCAPE.sub("", text)
    return "".join(text.split('"')[::2])


def _depth_outside(outside: str) -> int:
    brackets = outside.translate(_OUTSIDE_NOISE)
    return max(accumulate(map(_STEP.get, brackets, repeat(0)), initial=0))


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text``, ignoring string contents.

    Linear in ``len(text)``; does not validate the JSON (closing brackets in excess
    lower the count, they never raise it).
    """
    if "[" not in text and "{" not in text:
        return 0
    return _depth_outside(_outside_strings(text))


def _safe_digits(lo: int, hi: int) -> int:
    """The most decimal digits every integer of which lies within ``[lo, hi]``."""
    k = 0
    while 10 ** (k + 1) - 1 <= hi and -(10 ** (k + 1) - 1) >= lo:
        k += 1
    return k


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(v) for v in value)
    return False


def _reject_constant(name: str) -> Any:
    raise JsonRejected("non_finite", f"{name} is not a finite number")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonRejected("non_finite", f"{text[:40]} overflows a float")
    return value


def loads_bounded(
    data: bytes | bytearray | memoryview | str, limits: JsonLimits = DEFAULT_LIMITS
) -> Any:
    """Parse JSON from outside the process within ``limits``.

    Args:
        data: the raw payload (bytes must be UTF-8; ``str`` is taken as decoded).
        limits: size, depth and integer bounds.

    Returns:
        The parsed value (``dict``, ``list``, ``str``, ``int``, ``float``, ``bool`` or
        ``None``); every number in it is finite and every integer within range.

    Raises:
        JsonRejected: with ``reason`` ``too_large``, ``not_utf8``, ``too_deep``,
            ``not_json``, ``non_finite`` or ``int_range``.
    """
    if isinstance(data, str):
        if len(data) > limits.max_bytes:
            raise JsonRejected("too_large", f"more than {limits.max_bytes} bytes")
        try:
            size = len(data.encode("utf-8"))
        except UnicodeEncodeError as exc:  # lone surrogates (e.g. errors="surrogateescape")
            raise JsonRejected("not_utf8", f"not UTF-8 at character {exc.start}") from None
        if size > limits.max_bytes:
            raise JsonRejected("too_large", f"{size} bytes > {limits.max_bytes}")
        text = data
    else:
        if len(data) > limits.max_bytes:
            raise JsonRejected("too_large", f"{len(data)} bytes > {limits.max_bytes}")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonRejected("not_utf8", f"not UTF-8 at byte {exc.start}") from None
    if "[" in text or "{" in text:
        outside = _outside_strings(text)
        depth = _depth_outside(outside)
        if depth > limits.max_depth:
            raise JsonRejected("too_deep", f"nesting depth {depth} > {limits.max_depth}")
    else:
        outside = text
    lo, hi = limits.int_min, limits.int_max
    digits = max(len(str(lo)), len(str(hi)))
    safe = _safe_digits(lo, hi)
    # ints of at most `safe` digits cannot be out of range: without a longer digit run
    # outside strings the (slower) per-integer hook is not needed
    check_ints = safe == 0 or re.search(f"[0-9]{{{safe + 1}}}", outside) is not None

    def parse_int(s: str) -> int:
        if len(s) > digits:
            raise JsonRejected("int_range", f"integer of {len(s)} digits out of range")
        value = int(s)
        if not lo <= value <= hi:
            raise JsonRejected("int_range", f"integer {value} outside [{lo}, {hi}]")
        return value

    try:
        value = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_parse_float,
            parse_int=parse_int if check_ints else None,
        )
    except JsonRejected:
        raise
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise JsonRejected("not_json", str(exc)[:200]) from None
    except RecursionError:  # pragma: no cover - the depth scan makes this unreachable
        raise JsonRejected("too_deep", "nesting too deep for the parser") from None
    # "\ud800" is valid JSON but no valid text: a lone surrogate cannot be encoded again
    # (canonical bytes, a database), so it would fail far from here (found by tests/fuzz)
    if _SURROGATE_ESCAPE.search(text) and _lone_surrogate(value):
        raise JsonRejected("not_utf8", "a string holds a lone UTF-16 surrogate")
    return value


def loads_object(
    data: bytes | bytearray | memoryview | str, limits: JsonLimits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """Like :func:`loads_bounded`, and the top level must be a JSON object.

    Raises:
        JsonRejected: as :func:`loads_bounded`, or ``not_object``.
    """
    obj = loads_bounded(data, limits)
    if not isinstance(obj, dict):
        raise JsonRejected("not_object", f"top level is {type(obj).__name__}, not an object")
    return obj
