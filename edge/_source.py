"""Advertisement sources behind one interface: live BLE (bleak) or a recorded trace.

A source runs until cancelled and hands every advertisement it sees to a sink as a
:class:`busbell.AdvRecord` stamped with the bus's current time (GNSS-disciplined wall
time live, the trace's ``t`` in replay).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from busbell import AdvRecord

__all__ = ["AdvertisementSink", "AdvertisementSource"]

AdvertisementSink = Callable[[AdvRecord], None]
"""Called for each advertisement; must not block (the daemon queues and drops oldest)."""


class AdvertisementSource(Protocol):
    """Something that produces advertisements."""

    name: str

    async def run(self, sink: AdvertisementSink) -> None:
        """Produce advertisements into ``sink`` until cancelled.

        Raises:
            busbell.BusbellError: on a fault the caller should handle (restart, back off).
        """
        ...
