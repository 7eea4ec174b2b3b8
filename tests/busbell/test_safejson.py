"""Bounded JSON parsing (busbell._safejson) and the rejection log (busbell._rejects)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from busbell import (
    BIGINT_MAX,
    BIGINT_MIN,
    ContractError,
    JsonLimits,
    JsonRejected,
    RejectLog,
    get_logger,
    json_depth,
    loads_bounded,
    loads_object,
)
from busbell._safejson import REASONS

BIG = JsonLimits(max_bytes=10**8, max_depth=10**6)


def real_depth(v: Any) -> int:
    if isinstance(v, dict):
        return 1 + max((real_depth(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((real_depth(x) for x in v), default=0)
    return 0


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(BIGINT_MIN, BIGINT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab"\\[]{}/\n\t\u00e9\u20ac'), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(alphabet=st.sampled_from('k"\\[]{}'), max_size=4), inner, max_size=4
        )
    ),
    max_leaves=30,
)


@given(json_values)
def test_depth_and_value_match_the_real_parse(value: Any) -> None:
    text = json.dumps(value)
    assert json_depth(text) == real_depth(value)
    assert json_depth(json.dumps(value, indent=2)) == real_depth(value)
    assert loads_bounded(text, BIG) == json.loads(text)
    assert loads_bounded(text.encode(), BIG) == json.loads(text)


@settings(max_examples=500)
@given(st.text(alphabet=st.sampled_from('[]{}"\\,:1a e-.'), max_size=200))
def test_arbitrary_text_only_ever_raises_json_rejected(text: str) -> None:
    limits = JsonLimits(max_depth=3)
    try:
        value = loads_bounded(text, limits)
    except JsonRejected as exc:
        assert exc.reason in REASONS
        return
    assert value == json.loads(text)
    assert real_depth(value) <= 3


@pytest.mark.parametrize("n", [17, 5000, 100_000])
def test_deep_nesting_is_rejected_before_the_parser_recurses(n: int) -> None:
    for opener, closer in (("[", "]"), ('{"a":', "}")):
        text = opener * n + closer * n
        with pytest.raises(JsonRejected) as info:
            loads_bounded(text, JsonLimits(max_bytes=10**7))
        assert info.value.reason == "too_deep"
        assert isinstance(info.value, ContractError)


def test_deep_prefix_of_an_invalid_text_is_still_rejected_as_deep() -> None:
    # unclosed: json.loads would recurse 100,000 levels before noticing the missing end
    with pytest.raises(JsonRejected) as info:
        loads_bounded("[" * 100_000, JsonLimits(max_bytes=10**7))
    assert info.value.reason == "too_deep"


def test_brackets_inside_strings_do_not_count_and_escaped_quotes_do_not_end_them() -> None:
    assert json_depth(json.dumps(["[" * 100, '\\"[[[', {"k[": "]]]{{{"}])) == 2
    assert loads_bounded(json.dumps({"a": "[" * 1000}))["a"] == "[" * 1000
    # an escaped backslash before the closing quote ends the string
    assert json_depth('["\\\\", [[[]]]]') == 4


def test_limits_boundaries() -> None:
    at = "[" * 16 + "]" * 16
    assert json_depth(at) == 16
    loads_bounded(at)  # depth 16 is the default maximum
    with pytest.raises(JsonRejected, match="too_deep"):
        loads_bounded("[" + at + "]")
    assert loads_bounded(b" " * 65530 + b"1") == 1
    with pytest.raises(JsonRejected) as info:
        loads_bounded(b" " * 65536 + b"1")
    assert info.value.reason == "too_large"
    with pytest.raises(JsonRejected, match="too_large"):
        loads_bounded("\u20ac" * 30000)  # 30,000 characters but 90,000 UTF-8 bytes


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("NaN", "non_finite"),
        ('{"t": Infinity}', "non_finite"),
        ("[-Infinity]", "non_finite"),
        ('{"t": 1e999}', "non_finite"),
        ("-1e400", "non_finite"),
        (str(2**63), "int_range"),
        (str(-(2**63) - 1), "int_range"),
        (str(2**70), "int_range"),
        ("9" * 5000, "int_range"),
        ('{"seq": ' + str(2**64) + "}", "int_range"),
        ("{", "not_json"),
        ("[1,]", "not_json"),
        ("", "not_json"),
        ("\ufeff{}", "not_json"),
        ('"unterminated [[[[[[[[[[[[[[[[[[[[[[', "not_json"),
    ],
)
def test_rejections_carry_their_reason(text: str, reason: str) -> None:
    with pytest.raises(JsonRejected) as info:
        loads_bounded(text)
    assert info.value.reason == reason
    assert len(str(info.value)) < 300  # never echoes the input at length


def test_boundary_integers_and_tiny_floats_pass() -> None:
    assert loads_bounded(f"[{BIGINT_MIN},{BIGINT_MAX}]") == [BIGINT_MIN, BIGINT_MAX]
    assert loads_bounded("[1e-400, 1.5e300]") == [0.0, 1.5e300]
    assert loads_bounded('"99999999999999999999999"') == "9" * 23  # digits inside a string


def test_custom_integer_range() -> None:
    limits = JsonLimits(int_min=0, int_max=100)
    assert loads_bounded("[0, 100]", limits) == [0, 100]
    for bad in ("-1", "101", "[5, 1000]"):
        with pytest.raises(JsonRejected, match="int_range"):
            loads_bounded(bad, limits)


def test_bytes_must_be_utf8_not_sniffed_utf16() -> None:
    with pytest.raises(JsonRejected) as info:
        loads_bounded("[1]".encode("utf-16"))
    assert info.value.reason == "not_utf8"
    with pytest.raises(JsonRejected, match="not_utf8"):
        loads_bounded(b'"\xc3"')


def test_lone_surrogate_escapes_are_refused_pairs_are_kept() -> None:
    for text in ('"\\ud800"', '{"k\\udfff": 1}', '["a", ["\\uDBFF x"]]'):
        with pytest.raises(JsonRejected) as info:
            loads_bounded(text)
        assert info.value.reason == "not_utf8"
    assert loads_bounded('"\\ud83d\\ude00"') == "\U0001f600"  # a valid pair
    assert loads_bounded('"\\\\ud800"') == "\\ud800"  # an escaped backslash, not an escape


def test_loads_object_requires_an_object() -> None:
    assert loads_object(b'{"a": 1}') == {"a": 1}
    for text in ("[]", "1", '"x"', "null"):
        with pytest.raises(JsonRejected) as info:
            loads_object(text)
        assert info.value.reason == "not_object"


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid JSON limits"):
        JsonLimits(max_bytes=0)
    with pytest.raises(ValueError, match="invalid JSON limits"):
        JsonLimits(int_min=5, int_max=4)


def test_reject_log_counts_everything_and_rate_limits_the_log() -> None:
    now = [0.0]
    rejects = RejectLog(
        get_logger("test"), "thing_rejected", burst=3, window_s=10.0, clock=lambda: now[0]
    )
    with structlog.testing.capture_logs() as logs:
        for _ in range(100):
            rejects.reject("too_deep", topic="x" * 1000)
        rejects.reject("not_json")
        now[0] = 10.0
        assert rejects.reject("too_deep") is True
    assert rejects.counts == {"too_deep": 101, "not_json": 1}
    assert rejects.total == 102
    events = [e for e in logs if e["event"] == "thing_rejected"]
    assert [e["reason"] for e in events] == ["too_deep"] * 3 + ["not_json", "too_deep"]
    assert all(e["log_level"] == "warning" for e in events)
    assert len(events[0]["topic"]) == 200
    assert events[-1]["suppressed"] == 97
    assert "suppressed" not in events[0]


def test_nan_check_is_not_fooled_by_strings() -> None:
    assert loads_bounded('["NaN", "Infinity", "1e999"]') == ["NaN", "Infinity", "1e999"]
    value = loads_bounded("[1.7976931348623157e308]")
    assert math.isfinite(value[0])
