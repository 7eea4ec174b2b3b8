"""Chain record builder: a segment or missed-stop draft plus its chain position -> signed v1.

Pure and deterministic: the same draft, ``seq``, ``prev`` and device key always give
the same bytes (Ed25519 signatures are deterministic).
"""

from __future__ import annotations

from typing import Any

from busbell import (
    DeviceKey,
    derive_event_id,
    derive_missed_event_id,
    sign_event,
    validate_event,
)
from edge._bells_record import MissedDraft
from edge._segment import SegmentDraft

__all__ = ["EventBuilder"]


class EventBuilder:
    """Numbers, chains and signs segment (and missed-stop) drafts for one bus.

    Args:
        bus_id: the bus the events are of.
        device_key: the bus's Ed25519 device key.
    """

    __slots__ = ("bus_id", "device_key")

    def __init__(self, bus_id: str, device_key: DeviceKey) -> None:
        self.bus_id = bus_id
        self.device_key = device_key

    def build(self, draft: SegmentDraft | MissedDraft, seq: int, prev: str) -> dict[str, Any]:
        """The signed v1 record of ``draft`` at chain position ``seq``/``prev``.

        Raises:
            busbell.ContractError: when the draft does not make a valid v1 record.
        """
        event = draft.to_event_fields()
        event["bus_id"] = self.bus_id
        event["seq"] = seq
        event["prev"] = prev
        if isinstance(draft, MissedDraft):
            event["event_id"] = derive_missed_event_id(
                self.bus_id, seq, draft.request_id, draft.passed.t
            )
        else:
            event["event_id"] = derive_event_id(self.bus_id, seq, draft.rid, draft.start.t)
        validate_event(event, require_sig=False)
        return sign_event(event, self.device_key)
