"""MQTT topic names v1: a builder and a parser sharing one table, prefix configurable."""

from __future__ import annotations

import re
from dataclasses import dataclass

from busbell._errors import ContractError

__all__ = ["DEFAULT_PREFIX", "SHARED_GROUP", "ParsedTopic", "Topics", "check_topic_id"]

DEFAULT_PREFIX = "busbell/v1"
SHARED_GROUP = "busbell-backend"

# kind -> pattern under the prefix; "{x}" segments are ids.
_PATTERNS: dict[str, str] = {
    "status": "buses/{bus}/status",
    "display": "buses/{bus}/display",
    "occupancy": "buses/{bus}/occupancy",
    "vehicle_gnss": "buses/{bus}/vehicle/gnss",
    "vehicle_doors": "buses/{bus}/vehicle/doors",
    "vehicle_trip": "buses/{bus}/vehicle/trip",
    "driver_ack": "buses/{bus}/driver/ack",
    "fares": "buses/{bus}/fares",
    "fares_ack": "buses/{bus}/fares/ack",
    "fares_resend": "buses/{bus}/fares/resend",
    "fleet_keys": "buses/{bus}/keys",
    "wait": "routes/{route}/stops/{stop}/waits/{request}",
    "request_status": "requests/{request}/status",
    "bus_request_status": "buses/{bus}/requests/{request}/status",
    "denylist": "denylist",
}
_ID_RE = re.compile(r"^[^/+#\x00]{1,128}$")


def check_topic_id(value: str, what: str) -> str:
    """Check that ``value`` can be one topic level (no ``/``, ``+``, ``#``, NUL).

    Raises:
        ContractError: when it cannot.
    """
    if not _ID_RE.match(value):
        raise ContractError(f"{what} {value!r} cannot be an MQTT topic level", field=what)
    return value


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """A topic split into its kind and ids (``bus``, ``route``, ``stop``, ``request``)."""

    kind: str
    ids: dict[str, str]


class Topics:
    """Topic names under one prefix (default ``busbell/v1``)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        prefix = prefix.strip("/")
        if not prefix or any(c in prefix for c in "+#\x00"):
            raise ContractError(f"invalid topic prefix {prefix!r}", field="prefix")
        self.prefix = prefix
        self._levels = prefix.count("/") + 1
        self._parse_table = [(kind, pattern.split("/")) for kind, pattern in _PATTERNS.items()]

    def _make(self, kind: str, **ids: str) -> str:
        for name, value in ids.items():
            check_topic_id(value, name)
        return f"{self.prefix}/" + _PATTERNS[kind].format(**ids)

    def status(self, bus: str) -> str:
        """Retained bus status; LWT ``{"state":"offline"}``."""
        return self._make("status", bus=bus)

    def display(self, bus: str) -> str:
        """Retained driver-terminal model."""
        return self._make("display", bus=bus)

    def occupancy(self, bus: str) -> str:
        """Retained riders-on-board count."""
        return self._make("occupancy", bus=bus)

    def vehicle(self, bus: str, signal: str) -> str:
        """Vehicle input topics: ``signal`` is ``gnss``, ``doors`` or ``trip``."""
        if signal not in ("gnss", "doors", "trip"):
            raise ContractError(f"unknown vehicle signal {signal!r}", field="signal")
        return self._make(f"vehicle_{signal}", bus=bus)

    def driver_ack(self, bus: str) -> str:
        """The driver terminal acknowledges request ids."""
        return self._make("driver_ack", bus=bus)

    def fares(self, bus: str) -> str:
        """QoS 1 batches of signed fare events."""
        return self._make("fares", bus=bus)

    def fares_ack(self, bus: str) -> str:
        """Backend's cumulative ``{"upto_seq": N}``."""
        return self._make("fares_ack", bus=bus)

    def fares_resend(self, bus: str) -> str:
        """Backend asks for a range ``{"from_seq": A, "to_seq": B}``."""
        return self._make("fares_resend", bus=bus)

    def fleet_keys(self, bus: str) -> str:
        """Backend delivers the bus's coming fleet day keys (encrypted to the bus)."""
        return self._make("fleet_keys", bus=bus)

    def wait(self, route: str, stop: str, request: str) -> str:
        """Retained boarding-wait request; empty payload clears."""
        return self._make("wait", route=route, stop=stop, request=request)

    def request_status(self, request: str) -> str:
        """Retained status of a wait or stop request."""
        return self._make("request_status", request=request)

    def bus_request_status(self, bus: str, request: str) -> str:
        """A request status as one bus reported it.

        The bus's bridge maps its local ``requests/{request}/status`` here; the backend
        republishes it on :meth:`request_status`.
        """
        return self._make("bus_request_status", bus=bus, request=request)

    def denylist(self) -> str:
        """Retained, versioned deny list."""
        return f"{self.prefix}/denylist"

    def all_fares(self) -> str:
        """Wildcard over every bus's fares topic."""
        return f"{self.prefix}/buses/+/fares"

    def shared_fares(self, group: str = SHARED_GROUP) -> str:
        """Shared subscription over every bus's fares for scaled-out backend workers."""
        return f"$share/{group}/{self.all_fares()}"

    def route_waits(self, route: str) -> str:
        """Wildcard over every wait request on one route."""
        return f"{self.prefix}/routes/{check_topic_id(route, 'route')}/stops/+/waits/+"

    def everything(self) -> str:
        """Wildcard over all busbell topics under the prefix."""
        return f"{self.prefix}/#"

    def parse(self, topic: str) -> ParsedTopic | None:
        """Split a topic into its kind and ids; ``None`` if it is not a busbell topic."""
        if topic.startswith("$share/"):
            topic = topic.split("/", 2)[2] if topic.count("/") >= 2 else ""
        if not topic.startswith(self.prefix + "/"):
            return None
        parts = topic.split("/")[self._levels :]
        for kind, pattern in self._parse_table:
            if len(pattern) != len(parts):
                continue
            ids: dict[str, str] = {}
            for want, got in zip(pattern, parts, strict=True):
                if want.startswith("{"):
                    if not got:
                        break
                    ids[want[1:-1]] = got
                elif want != got:
                    break
            else:
                return ParsedTopic(kind, ids)
        return None
