"""busbell edge: the onboard daemon (one per bus)."""

from __future__ import annotations

from edge._ble import BleakSource, ScannerParams, ScannerStats
from edge._segment import SegmentDraft, SegmentEnd
from edge._source import AdvertisementSink, AdvertisementSource
from edge._stream_source import StreamSource, StreamStats
from edge._trace_source import TraceSource, TraceSourceStats

__all__ = [
    "AdvertisementSink",
    "AdvertisementSource",
    "BleakSource",
    "ScannerParams",
    "ScannerStats",
    "SegmentDraft",
    "SegmentEnd",
    "StreamSource",
    "StreamStats",
    "TraceSource",
    "TraceSourceStats",
]
