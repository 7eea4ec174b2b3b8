"""busbell: the contract shared by the edge daemon, the backend and the simulator.

Token v1 codec and keys, trace v1, fare event v1 with canonical JSON, Ed25519 signing
and the hash chain, MQTT topic names, configuration, logging, GTFS static loading and
the key files. See ``docs/protocol.md``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from busbell._canonical import canonical_bytes, sha256_hex
from busbell._config import ConfigOption, describe_config, load_config, option
from busbell._errors import (
    BusbellError,
    ChainError,
    ConfigError,
    ContractError,
    KeyFileError,
    SignatureError,
    StoreError,
    TokenRejected,
    TraceError,
    UplinkError,
)
from busbell._fare_event import (
    END_CAUSES,
    GENESIS_PREV,
    START_CAUSES,
    HashChain,
    derive_event_id,
    event_hash,
    sign_event,
    signing_bytes,
    validate_event,
    verify_event,
)
from busbell._geo import haversine_m, offset_m
from busbell._gtfs import Feed, Stop, Trip, TripPattern, load_gtfs
from busbell._keybundle import (
    BUNDLE_ALG,
    bus_kex_private,
    ed25519_to_x25519_public,
    open_key_bundle,
    seal_key_bundle,
)
from busbell._keyfiles import (
    DEVICES_HEADER,
    FLEET_HEADER,
    RIDERS_HEADER,
    append_row,
    read_devices,
    read_fleet_keys,
    read_riders,
    write_rows,
)
from busbell._logging import configure_logging, get_logger
from busbell._signing import DeviceKey, PublicKey, load_public_hex
from busbell._token import (
    DEFAULT_COMPANY_ID,
    DEFAULT_TQ_WINDOW_S,
    INTERVAL_S,
    PAYLOAD_LEN,
    TOKEN_VERSION,
    AcceptedToken,
    RiderKeys,
    TokenFlags,
    TokenPayload,
    TokenVerifier,
    day_of,
    derive_bk,
    derive_rider_keys,
    encode_payload,
    interval_of,
    parse_payload,
    rid_for_interval,
    tq_of,
    unwrap_tq,
    verify_rtag,
)
from busbell._topics import DEFAULT_PREFIX, SHARED_GROUP, ParsedTopic, Topics, check_topic_id
from busbell._trace import (
    TRACE_FORMAT,
    AdvRecord,
    DoorRecord,
    GnssRecord,
    TraceMeta,
    TraceReader,
    TraceRecord,
    TraceWriter,
    TripRecord,
    parse_record,
    record_to_json,
)

try:
    __version__ = version("busbell")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"

__all__ = [
    "BUNDLE_ALG",
    "DEFAULT_COMPANY_ID",
    "DEFAULT_PREFIX",
    "DEFAULT_TQ_WINDOW_S",
    "DEVICES_HEADER",
    "END_CAUSES",
    "FLEET_HEADER",
    "GENESIS_PREV",
    "INTERVAL_S",
    "PAYLOAD_LEN",
    "RIDERS_HEADER",
    "SHARED_GROUP",
    "START_CAUSES",
    "TOKEN_VERSION",
    "TRACE_FORMAT",
    "AcceptedToken",
    "AdvRecord",
    "BusbellError",
    "ChainError",
    "ConfigError",
    "ConfigOption",
    "ContractError",
    "DeviceKey",
    "DoorRecord",
    "Feed",
    "GnssRecord",
    "HashChain",
    "KeyFileError",
    "ParsedTopic",
    "PublicKey",
    "RiderKeys",
    "SignatureError",
    "Stop",
    "StoreError",
    "TokenFlags",
    "TokenPayload",
    "TokenRejected",
    "TokenVerifier",
    "Topics",
    "TraceError",
    "TraceMeta",
    "TraceReader",
    "TraceRecord",
    "TraceWriter",
    "Trip",
    "TripPattern",
    "TripRecord",
    "UplinkError",
    "__version__",
    "append_row",
    "bus_kex_private",
    "canonical_bytes",
    "check_topic_id",
    "configure_logging",
    "day_of",
    "derive_bk",
    "derive_event_id",
    "derive_rider_keys",
    "describe_config",
    "ed25519_to_x25519_public",
    "encode_payload",
    "event_hash",
    "get_logger",
    "haversine_m",
    "interval_of",
    "load_config",
    "load_gtfs",
    "load_public_hex",
    "offset_m",
    "open_key_bundle",
    "option",
    "parse_payload",
    "parse_record",
    "read_devices",
    "read_fleet_keys",
    "read_riders",
    "record_to_json",
    "rid_for_interval",
    "seal_key_bundle",
    "sha256_hex",
    "sign_event",
    "signing_bytes",
    "tq_of",
    "unwrap_tq",
    "validate_event",
    "verify_event",
    "verify_rtag",
    "write_rows",
]
