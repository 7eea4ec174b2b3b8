"""The edge daemon's configuration: one TOML file plus ``BUSBELL_<SECTION>__<KEY>`` overrides.

``busbell config edge`` lists every option; ``docs/configuration-edge.md`` is generated
from :data:`CONFIG_CLASS` (a test fails when it is stale).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from busbell import ContractError, check_topic_id, option
from busbell._mqtt import MqttSettings
from edge._beacon import BeaconParams
from edge._bells import BellParams
from edge._ble import ScannerParams
from edge._driver_page import DriverPageSettings
from edge._params import ClassifierParams
from edge._uplink import UplinkSettings

__all__ = [
    "CONFIG_CLASS",
    "SOURCES",
    "BeaconParams",
    "BellParams",
    "DriverPageSettings",
    "EdgeConfig",
    "MetricsSettings",
    "StatusSettings",
    "StreamSettings",
    "TraceSettings",
    "UplinkSettings",
]

SOURCES = ("ble", "stream", "trace")


@dataclass(frozen=True, slots=True)
class StatusSettings:
    """The retained status/occupancy messages (the ``[status]`` section)."""

    interval_s: float = option(10.0, doc="Seconds between two status and occupancy publishes.")
    fleet_keys_warn_days: int = option(
        3, doc="Warn (status flag and log) when fleet keys cover fewer days ahead than this."
    )

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            raise ValueError("status.interval_s must be positive")


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Optional Prometheus metrics (the ``[metrics]`` section)."""

    port: int | None = option(
        None, doc="Serve Prometheus metrics on this TCP port; unset turns metrics off."
    )
    host: str = option("127.0.0.1", doc="Address the metrics server listens on.")


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """The ``stream`` advertisement source (the ``[stream]`` section)."""

    host: str = option("127.0.0.1", doc="Host of the simulator's trace-v1 advert stream (TCP).")
    port: int = option(7410, doc="Port of the simulator's advert stream.")


@dataclass(frozen=True, slots=True)
class TraceSettings:
    """The ``trace`` advertisement source (the ``[trace]`` section)."""

    path: Path | None = option(None, doc="Trace v1 file whose adverts are played live.")
    speed: float = option(1.0, doc="Playback speed factor of the trace source (1 = real time).")


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    """The root of the edge configuration."""

    bus_id: str = option("bus-0001", doc="This bus's id (an MQTT topic level).")
    device_key: Path = option(
        Path("/etc/busbell/device.pem"), doc="The bus's Ed25519 device key (PEM, PKCS#8)."
    )
    fleet_keys: Path = option(
        Path("/etc/busbell/FLEET.csv"), doc="FLEET.csv with the fleet day keys (day,fleet_key)."
    )
    denylist_public_key: str = option(
        "",
        doc=(
            "The backend's Ed25519 deny-list key, 64 hex characters (busbell backend "
            "public-key prints it); deny lists must carry its signature. Empty: every deny "
            "list is refused and counted (no_backend_key)."
        ),
    )
    gtfs: Path = option(Path("/etc/busbell/gtfs"), doc="GTFS static directory.")
    store: Path = option(
        Path("/var/lib/busbell/fares.db"), doc="SQLite file of the offline fare store."
    )
    source: str = option("ble", doc="Advertisement source: ble, stream or trace.")
    advert_queue_max: int = option(
        20000, doc="Bounded advertisement queue; when full the oldest is dropped and counted."
    )
    log_level: str = option("info", doc="Log level: debug, info, warning or error.")
    mqtt: MqttSettings = option(doc="Broker connection.", factory=MqttSettings)
    classifier: ClassifierParams = option(
        doc="Presence classifier thresholds.", factory=ClassifierParams
    )
    scanner: ScannerParams = option(doc="BLE scanner.", factory=ScannerParams)
    beacon: BeaconParams = option(
        doc="Bus beacon advertised over BlueZ (docs/ble-host.md).", factory=BeaconParams
    )
    uplink: UplinkSettings = option(doc="Fare upload.", factory=UplinkSettings)
    status: StatusSettings = option(doc="Status messages.", factory=StatusSettings)
    metrics: MetricsSettings = option(doc="Prometheus metrics.", factory=MetricsSettings)
    stream: StreamSettings = option(doc="Stream source.", factory=StreamSettings)
    trace: TraceSettings = option(doc="Trace source.", factory=TraceSettings)
    driver_page: DriverPageSettings = option(
        doc="Driver display page (docs/driver-display.md).", factory=DriverPageSettings
    )
    bells: BellParams = option(
        doc="Bell relay: boarding waits, stop requests, driver display.", factory=BellParams
    )

    def __post_init__(self) -> None:
        try:
            check_topic_id(self.bus_id, "bus_id")
        except ContractError as exc:
            raise ValueError(str(exc)) from None
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        key = self.denylist_public_key
        if key and (len(key) != 64 or any(c not in "0123456789abcdefABCDEF" for c in key)):
            raise ValueError("denylist_public_key must be 64 hex characters (or empty)")
        if self.advert_queue_max < 1:
            raise ValueError("advert_queue_max must be >= 1")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError("log_level must be debug, info, warning or error")


CONFIG_CLASS = EdgeConfig
"""The root configuration class (``busbell config edge`` lists it)."""


def render_config_doc() -> str:
    """``docs/configuration-edge.md``: every option of :data:`CONFIG_CLASS` (generated)."""
    from busbell import describe_config

    lines = [
        "# Edge configuration",
        "",
        "<!-- generated by `python -m edge.config > docs/configuration-edge.md`; "
        "a test fails when this file is stale -->",
        "",
        "`busbell edge run --config edge.toml` reads a TOML file; every option can be "
        "overridden by its environment variable (`BUSBELL_<SECTION>__<KEY>`). Sections are "
        "TOML tables (`[mqtt]`, `[classifier]`, ...); top-level keys come before any table. "
        "`busbell config edge` prints the same list.",
        "",
        "| key | type | default | environment | meaning |",
        "|---|---|---|---|---|",
    ]
    for opt in describe_config(CONFIG_CLASS):
        doc = opt.doc.replace("|", "\\|")
        default = opt.default.replace("|", "\\|")
        lines.append(f"| `{opt.key}` | {opt.type} | `{default}` | `{opt.env}` | {doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.stdout.write(render_config_doc())
