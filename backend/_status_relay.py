"""Relay buses' request statuses to ``requests/{id}/status``, each bus only for itself.

``requests/{id}/status`` carries no bus id in its topic, so a broker ACL cannot confine a
bus to its own statuses there. A bus therefore never writes it centrally: its bridge maps
the edge's local ``requests/{id}/status`` to ``buses/{bus}/requests/{id}/status``, which
the central ACL lets only bus ``{bus}`` (certificate CN) write. :class:`StatusRelay` (the
backend, sans-I/O) takes those, checks that the status is well-formed
(:func:`busbell.validate_request_status`), names the same request as its topic and the
bus that sent it as ``bus_id``, and is a state a bus reports (``seen``,
``acknowledged``, ``served``, ``missed``); then the backend republishes it, retained, on
``requests/{id}/status``. Everything else is dropped and counted by reason.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from busbell._bells import validate_request_status
from busbell._canonical import canonical_bytes
from busbell._errors import ContractError
from busbell._safejson import JsonLimits, loads_object
from busbell._topics import Topics

__all__ = ["BUS_STATES", "STATUS_LIMITS", "StatusRelay"]

BUS_STATES: Final = frozenset({"seen", "acknowledged", "served", "missed"})
"""The states a bus reports; the others are the backend's own."""
STATUS_LIMITS: Final = JsonLimits(max_bytes=4096, max_depth=3)


class StatusRelay:
    """Checks buses' request statuses and says what to republish.

    Args:
        topics: topic names.
        max_tracked: requests whose last relayed status is remembered (to drop repeats).
    """

    def __init__(self, topics: Topics, *, max_tracked: int = 100_000) -> None:
        self.topics = topics
        self.max_tracked = max_tracked
        self.relayed = 0
        self.rejected: dict[str, int] = {}
        self._last: OrderedDict[str, bytes] = OrderedDict()

    def subscription(self) -> str:
        """The topic filter of every bus's request statuses."""
        return f"{self.topics.prefix}/buses/+/requests/+/status"

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def on_message(self, topic: str, payload: bytes) -> tuple[str, bytes] | None:
        """The ``(topic, payload)`` to republish for a bus's status, or ``None``.

        ``None`` for other topics, cleared (empty) payloads, repeats of the last
        relayed status of the request, and rejected statuses (counted in
        :attr:`rejected` by reason: a JSON reason, ``invalid``, ``request_mismatch``,
        ``bus_mismatch``, ``state_not_for_bus``).
        """
        parsed = self.topics.parse(topic)
        if parsed is None or parsed.kind != "bus_request_status" or not payload:
            return None
        bus, request = parsed.ids["bus"], parsed.ids["request"]
        try:
            obj = validate_request_status(loads_object(payload, STATUS_LIMITS))
        except ContractError as exc:
            self._reject(exc.reason)
            return None
        if obj["request_id"] != request:
            self._reject("request_mismatch")
            return None
        if obj.get("bus_id") != bus:
            self._reject("bus_mismatch")
            return None
        if obj["state"] not in BUS_STATES:
            self._reject("state_not_for_bus")
            return None
        data = canonical_bytes(obj)
        if self._last.get(request) == data:
            return None
        self._last[request] = data
        self._last.move_to_end(request)
        while len(self._last) > self.max_tracked:
            self._last.popitem(last=False)
        self.relayed += 1
        return self.topics.request_status(request), data
