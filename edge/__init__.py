"""busbell edge: the onboard daemon (one per bus)."""

from __future__ import annotations

from edge._ble import BleakSource, ScannerParams, ScannerStats
from edge._classifier import PresenceClassifier
from edge._params import ClassifierParams
from edge._pipeline import EdgePipeline, PipelineStats
from edge._segment import SegmentDraft, SegmentEnd
from edge._source import AdvertisementSink, AdvertisementSource
from edge._stream_source import StreamSource, StreamStats
from edge._trace_source import TraceSource, TraceSourceStats
from edge._vehicle import StopVisit, VehicleContext, VehicleEvent

__all__ = [
    "AdvertisementSink",
    "AdvertisementSource",
    "BleakSource",
    "ClassifierParams",
    "EdgePipeline",
    "PipelineStats",
    "PresenceClassifier",
    "ScannerParams",
    "ScannerStats",
    "SegmentDraft",
    "SegmentEnd",
    "StopVisit",
    "StreamSource",
    "StreamStats",
    "TraceSource",
    "TraceSourceStats",
    "VehicleContext",
    "VehicleEvent",
]
