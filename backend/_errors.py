"""Backend errors: subclasses of the busbell hierarchy, carrying their data."""

from __future__ import annotations

from busbell import BusbellError, ContractError, StoreError

__all__ = [
    "REJECTION_REASONS",
    "MalformedMessage",
    "StoreError",
    "UnknownDevice",
    "UnknownRider",
]


REJECTION_REASONS = (
    "malformed_payload",
    "schema",
    "bus_mismatch",
    "unknown_device",
    "revoked_device",
    "event_id_mismatch",
    "event_id_taken",
    "bad_signature",
    "chain_conflict",
    "prev_mismatch",
)
"""The one set of reasons a fare event (or payload) is rejected for, online (the
``quarantine`` table, ``busbell_fare_events_quarantined_total{reason}``) and offline
(``busbell backend settle`` statistics). ``bus_mismatch`` (a topic) and
``event_id_taken`` (an id already stored in ``missed_stops``) happen online only."""


class MalformedMessage(ContractError):
    """An MQTT payload on a fares topic is not a batch or an event at all.

    Attributes:
        reason: a :data:`busbell.JsonRejected` reason (``too_large``, ``not_utf8``,
            ``too_deep``, ``not_json``, ``non_finite``, ``int_range``),
            ``not_an_object``, ``too_many_events``, ``bad_batch`` or ``bus_mismatch``.
    """


class UnknownDevice(BusbellError):
    """A bus id is not in the device registry.

    Attributes:
        bus_id: the bus.
    """

    def __init__(self, bus_id: str) -> None:
        super().__init__(f"unknown device {bus_id!r}")
        self.bus_id = bus_id


class UnknownRider(BusbellError):
    """A rider id is not in the rider registry.

    Attributes:
        rider_id: the rider.
    """

    def __init__(self, rider_id: str) -> None:
        super().__init__(f"unknown rider {rider_id!r}")
        self.rider_id = rider_id
