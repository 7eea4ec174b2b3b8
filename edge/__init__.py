"""busbell edge: the onboard daemon (one per bus)."""

from __future__ import annotations

from edge._segment import SegmentDraft, SegmentEnd
from edge._source import AdvertisementSink, AdvertisementSource

__all__ = ["AdvertisementSink", "AdvertisementSource", "SegmentDraft", "SegmentEnd"]
