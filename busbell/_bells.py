"""Bells v1 payloads: the boarding wait, the request status, the driver ack, the display.

Strict validators shared by everything that reads these payloads (the edge's bell
state, the backend, the driver page, the `missed` chain record). Each returns the
object it checked or raises :class:`busbell.ContractError` naming the first offending
field (``.field``) with a snake_case ``.reason``. See ``docs/protocol.md`` ("Bells v1").
"""

from __future__ import annotations

import math
import re
from typing import Any

from busbell._errors import ContractError

__all__ = [
    "MAX_ACK_IDS",
    "MAX_BELL_PAYLOAD_BYTES",
    "REQUEST_STATES",
    "WAIT_KEYS",
    "WAIT_SOURCES",
    "is_bell_id",
    "validate_display",
    "validate_driver_ack",
    "validate_request_status",
    "validate_wait",
]

WAIT_KEYS = frozenset({"request_id", "route_id", "stop_id", "t", "expires_t", "source", "assist"})
"""The keys of a wait payload, all required."""
WAIT_SOURCES = frozenset({"app", "stop_unit", "token"})
"""Who published a wait: the rider API, a stop call unit, or a WAIT-flag token at a stop."""
REQUEST_STATES = frozenset(
    {"pending", "seen", "acknowledged", "served", "missed", "expired", "cancelled"}
)
"""The states a request's retained ``requests/{id}/status`` can carry."""
MAX_BELL_PAYLOAD_BYTES = 1024
"""A wait, ack or status payload larger than this is rejected unparsed (``oversized``)."""
MAX_ACK_IDS = 256
"""The most request ids one driver ack may name."""

_ID_RE = re.compile(r"^[^/+#\x00]{1,128}$")
_DISPLAY_KEYS = frozenset(
    {"v", "bus_id", "t", "route_id", "trip_id", "online", "on_board", "next_stop", "stops"}
)
_STOP_KEYS = frozenset(
    {"stop_id", "name", "seq", "waits", "assist", "stop_requested", "request_ids"}
)


def _fail(what: str, field: str, message: str, reason: str = "invalid") -> ContractError:
    return ContractError(f"{what}: {field or 'payload'}: {message}", field=field, reason=reason)


def is_bell_id(value: object) -> bool:
    """Whether ``value`` can be a request, route or stop id (one MQTT topic level)."""
    return isinstance(value, str) and _ID_RE.match(value) is not None


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_time(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _exact_keys(what: str, obj: object, keys: frozenset[str], prefix: str = "") -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _fail(what, prefix.rstrip("."), "must be a JSON object", "not_an_object")
    missing = keys - set(obj)
    if missing:
        raise _fail(what, prefix + min(missing), "is missing", "missing")
    extra = set(obj) - keys
    if extra:
        raise _fail(what, prefix + min(extra, key=str), "is not a v1 field", "unknown_field")
    return obj


def validate_wait(obj: object, *, prefix: str = "") -> dict[str, Any]:
    """Check that ``obj`` is a Bells v1 wait payload and return it.

    ``{"request_id","route_id","stop_id","t","expires_t","source","assist"}``: ids are
    one MQTT topic level (1-128 characters, no ``/ + #`` or NUL), times finite and
    non-negative with ``expires_t >= t``, ``source`` one of :data:`WAIT_SOURCES`,
    ``assist`` a boolean. Whether it has expired is the reader's business (its clock).

    Args:
        obj: the decoded JSON value.
        prefix: prepended to field names in errors (``"wait."`` inside a record).

    Raises:
        ContractError: naming the first offending field.
    """
    w = _exact_keys("wait", obj, WAIT_KEYS, prefix)
    for key in ("request_id", "route_id", "stop_id"):
        if not is_bell_id(w[key]):
            raise _fail("wait", prefix + key, "must be 1-128 characters without / + # or NUL")
    for key in ("t", "expires_t"):
        if not _is_time(w[key]):
            raise _fail("wait", prefix + key, "must be a finite non-negative number")
    if w["expires_t"] < w["t"]:
        raise _fail("wait", prefix + "expires_t", "must not be before t")
    if w["source"] not in WAIT_SOURCES:
        raise _fail("wait", prefix + "source", f"must be one of {sorted(WAIT_SOURCES)}")
    if not isinstance(w["assist"], bool):
        raise _fail("wait", prefix + "assist", "must be a boolean")
    return w


def validate_driver_ack(obj: object) -> dict[str, Any]:
    """Check a driver ack ``{"t"?, "request_ids": [...]}`` and return it.

    ``request_ids`` is a non-empty list of at most :data:`MAX_ACK_IDS` ids; ``t`` is
    optional (a finite non-negative number when present).

    Raises:
        ContractError: naming the first offending field.
    """
    if not isinstance(obj, dict):
        raise _fail("driver ack", "", "must be a JSON object", "not_an_object")
    if "request_ids" not in obj:
        raise _fail("driver ack", "request_ids", "is missing", "missing")
    extra = set(obj) - {"t", "request_ids"}
    if extra:
        raise _fail("driver ack", min(extra, key=str), "is not a v1 field", "unknown_field")
    if "t" in obj and not _is_time(obj["t"]):
        raise _fail("driver ack", "t", "must be a finite non-negative number")
    ids = obj["request_ids"]
    if not isinstance(ids, list) or not ids or len(ids) > MAX_ACK_IDS:
        raise _fail("driver ack", "request_ids", f"must be a list of 1-{MAX_ACK_IDS} ids")
    for i, rid in enumerate(ids):
        if not is_bell_id(rid):
            raise _fail("driver ack", f"request_ids[{i}]", "must be a request id")
    return obj


def validate_request_status(obj: object) -> dict[str, Any]:
    """Check a request status ``{"request_id","state","bus_id"?,"t"}`` and return it.

    Extra keys are allowed (the backend may add context); ``bus_id`` may be null or
    absent (``pending`` is published by the backend, not a bus).

    Raises:
        ContractError: naming the first offending field.
    """
    if not isinstance(obj, dict):
        raise _fail("request status", "", "must be a JSON object", "not_an_object")
    for key in ("request_id", "state", "t"):
        if key not in obj:
            raise _fail("request status", key, "is missing", "missing")
    if not is_bell_id(obj["request_id"]):
        raise _fail("request status", "request_id", "must be a request id")
    if obj["state"] not in REQUEST_STATES:
        raise _fail("request status", "state", f"must be one of {sorted(REQUEST_STATES)}")
    if not _is_time(obj["t"]):
        raise _fail("request status", "t", "must be a finite non-negative number")
    bus = obj.get("bus_id")
    if bus is not None and not is_bell_id(bus):
        raise _fail("request status", "bus_id", "must be null or a bus id")
    return obj


def _check_stop(obj: object, field: str) -> None:
    s = _exact_keys("display", obj, _STOP_KEYS, field + ".")
    if not is_bell_id(s["stop_id"]):
        raise _fail("display", f"{field}.stop_id", "must be a stop id")
    if not isinstance(s["name"], str):
        raise _fail("display", f"{field}.name", "must be a string")
    if not _is_int(s["seq"]) or s["seq"] < 0:
        raise _fail("display", f"{field}.seq", "must be a non-negative integer")
    if not _is_int(s["waits"]) or s["waits"] < 0:
        raise _fail("display", f"{field}.waits", "must be a non-negative integer")
    for key in ("assist", "stop_requested"):
        if not isinstance(s[key], bool):
            raise _fail("display", f"{field}.{key}", "must be a boolean")
    ids = s["request_ids"]
    if not isinstance(ids, list) or not all(is_bell_id(i) for i in ids):
        raise _fail("display", f"{field}.request_ids", "must be a list of request ids")


def validate_display(obj: object) -> dict[str, Any]:
    """Check that ``obj`` is a display model v1 and return it.

    ``{"v":1,"bus_id","t","route_id","trip_id","online","on_board","next_stop","stops"}``
    with ``STOP = {"stop_id","name","seq","waits","assist","stop_requested",
    "request_ids"}``; ``route_id``/``trip_id``/``next_stop`` may be null.

    Raises:
        ContractError: naming the first offending field.
    """
    d = _exact_keys("display", obj, _DISPLAY_KEYS)
    if d["v"] != 1 or not _is_int(d["v"]):
        raise _fail("display", "v", "must be 1", "wrong_version")
    if not is_bell_id(d["bus_id"]):
        raise _fail("display", "bus_id", "must be a bus id")
    if not _is_time(d["t"]):
        raise _fail("display", "t", "must be a finite non-negative number")
    for key in ("route_id", "trip_id"):
        if d[key] is not None and not is_bell_id(d[key]):
            raise _fail("display", key, "must be null or an id")
    if not isinstance(d["online"], bool):
        raise _fail("display", "online", "must be a boolean")
    if not _is_int(d["on_board"]) or d["on_board"] < 0:
        raise _fail("display", "on_board", "must be a non-negative integer")
    if d["next_stop"] is not None:
        _check_stop(d["next_stop"], "next_stop")
    if not isinstance(d["stops"], list):
        raise _fail("display", "stops", "must be a list")
    for i, stop in enumerate(d["stops"]):
        _check_stop(stop, f"stops[{i}]")
    return d
