"""The one error hierarchy of busbell.

Every error raised on purpose by busbell code derives from :class:`BusbellError`, carries
its data as attributes, and has a message that says what was wrong and where. Adapters
translate third-party exceptions (``BleakError``, ``aiomqtt.MqttError``,
``sqlite3.Error``) into these at the boundary.
"""

from __future__ import annotations

__all__ = [
    "BusbellError",
    "ChainError",
    "ConfigError",
    "ContractError",
    "KeyFileError",
    "SignatureError",
    "StoreError",
    "TokenRejected",
    "TraceError",
    "UplinkError",
]


class BusbellError(Exception):
    """Base class of every error busbell raises on purpose."""


class ContractError(BusbellError):
    """A message, event or file does not follow the v1 contract.

    Attributes:
        field: dotted path of the offending field, or ``""`` for the whole object.
        reason: short machine-readable reason (snake_case).
    """

    def __init__(self, message: str, *, field: str = "", reason: str = "invalid") -> None:
        super().__init__(message)
        self.field = field
        self.reason = reason


class TokenRejected(BusbellError):
    """A rider-token advertisement was not accepted.

    Attributes:
        reason: one of ``malformed``, ``wrong_version``, ``stale``, ``bad_btag``,
            ``no_fleet_key``; the counters in status and metrics use these names.
    """

    REASONS = ("malformed", "wrong_version", "stale", "bad_btag", "no_fleet_key")

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"token rejected: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.detail = detail


class SignatureError(BusbellError):
    """An Ed25519 signature is missing, malformed or does not verify."""


class ChainError(BusbellError):
    """A per-bus hash chain or sequence is broken.

    Attributes:
        seq: the sequence number of the event that broke the chain.
        expected: what the chain expected (a hash or a seq, as text).
        got: what the event carried.
    """

    def __init__(self, message: str, *, seq: int, expected: str, got: str) -> None:
        super().__init__(f"{message} (seq {seq}: expected {expected}, got {got})")
        self.seq = seq
        self.expected = expected
        self.got = got


class TraceError(BusbellError):
    """A trace line is not valid trace v1.

    Attributes:
        line: 1-based line number in the trace file.
        field: the offending field, or ``""`` when the line as a whole is bad.
        reason: ``invalid`` (a field is wrong), ``too_long``, or a
            :class:`~busbell._safejson.JsonRejected` reason (``not_json``, ``too_deep``...).
    """

    def __init__(
        self, message: str, *, line: int, field: str = "", reason: str = "invalid"
    ) -> None:
        where = f"line {line}" + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")
        self.line = line
        self.field = field
        self.reason = reason


class ConfigError(BusbellError):
    """A configuration file or environment override is invalid.

    Attributes:
        key: dotted key of the offending option.
        expected: the expected type or value, as text.
    """

    def __init__(self, message: str, *, key: str = "", expected: str = "") -> None:
        super().__init__(message)
        self.key = key
        self.expected = expected


class KeyFileError(BusbellError):
    """A key file (PEM, FLEET.csv, DEVICES.csv, RIDERS.csv) is unreadable or invalid."""


class StoreError(BusbellError):
    """A persistent store failed (SQLite, PostgreSQL); wraps the driver error."""


class UplinkError(BusbellError):
    """The MQTT uplink failed; wraps the client library's error."""
