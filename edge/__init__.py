"""busbell edge: the onboard daemon (one per bus)."""

from __future__ import annotations

from edge._ble import BleakSource, ScannerParams, ScannerStats
from edge._classifier import PresenceClassifier
from edge._daemon import DaemonStats, EdgeDaemon, replay_records
from edge._driver_page import DriverDisplay, DriverPageSettings
from edge._events import EventBuilder
from edge._params import ClassifierParams
from edge._pipeline import EdgePipeline, PipelineStats
from edge._segment import SegmentDraft, SegmentEnd
from edge._source import AdvertisementSink, AdvertisementSource
from edge._store import FareStore, StoredEvent, StoreStats
from edge._stream_source import StreamSource, StreamStats
from edge._trace_source import TraceSource, TraceSourceStats
from edge._uplink import FareUploader, MqttLink, UplinkSettings, UplinkStats
from edge._vehicle import StopVisit, VehicleContext, VehicleEvent
from edge.config import EdgeConfig

__all__ = [
    "AdvertisementSink",
    "AdvertisementSource",
    "BleakSource",
    "ClassifierParams",
    "DaemonStats",
    "DriverDisplay",
    "DriverPageSettings",
    "EdgeConfig",
    "EdgeDaemon",
    "EdgePipeline",
    "EventBuilder",
    "FareStore",
    "FareUploader",
    "MqttLink",
    "PipelineStats",
    "PresenceClassifier",
    "ScannerParams",
    "ScannerStats",
    "SegmentDraft",
    "SegmentEnd",
    "StopVisit",
    "StoreStats",
    "StoredEvent",
    "StreamSource",
    "StreamStats",
    "TraceSource",
    "TraceSourceStats",
    "UplinkSettings",
    "UplinkStats",
    "VehicleContext",
    "VehicleEvent",
    "replay_records",
]
