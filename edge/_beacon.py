"""The bus beacon this bus advertises, computed from its vehicle context (sans-I/O).

A bus advertises bus beacon v1 (:mod:`busbell._echo`, docs/protocol.md "Bus beacon v1 and
the echo"): ``0xB1``, the 4-byte tag of its vehicle id (the edge's ``bus_id``) and
``seq``, the index in its trip of the stop it is serving (doors open) or comes to next,
mod 8. From :class:`~edge._vehicle.VehicleContext`:

* a stop visit open at stop ``k`` of the trip: ``k`` (doors open there, or a dwell when
  the door sensor is faulty; a visit at no stop of the trip does not count);
* otherwise the stop after the last one served (``last_served_index + 1``: ``0`` before
  the first stop, ``k + 1`` once the doors closed at stop ``k``), moved on past every
  stop the bus drove by without stopping: its progress along the trip is beyond the
  stop by more than ``stop_radius_m`` (within that radius the doors may still open
  there, and the vehicle context would match the visit to it);
* after the last stop of the trip (``n`` stops): ``n`` mod 8, until the next sign-on.

**No trip** (none signed on yet, or ended by :meth:`VehicleContext.end_trip`): the bus
still advertises, with ``seq`` 0. The tag is what an echo is about (a rider heard *this
bus* for a long time); 0 is "before the first stop", which is where a bus without a trip
is with respect to the trip it signs on to next, so a rider who boards before the sign-on
echoes the seq the trip starts with. A bus that advertised nothing would make every echo
of it impossible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from busbell import Feed, option
from busbell._echo import BEACON_SERVICE_UUID, SEQ_MOD, bus_tag, encode_beacon, seq_of
from busbell._geo import haversine_m
from edge._vehicle import VehicleContext

__all__ = ["BeaconParams", "BeaconState", "EchoSeqs", "beacon_stop_index"]

_MIN_INTERVAL_MS = 20
"""The shortest advertising interval BlueZ accepts (0x20 slots of 0.625 ms)."""
_MAX_INTERVAL_MS = 10240
"""The longest legacy advertising interval (0x4000 slots of 0.625 ms)."""
_UUID_RE = re.compile(r"[0-9a-fA-F]{4}|[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
"""A 16-bit UUID (4 hex digits) or a 128-bit one (8-4-4-4-12 hex digits)."""


@dataclass(frozen=True, slots=True)
class BeaconParams:
    """The bus beacon advertised over BlueZ (the ``[beacon]`` config section)."""

    enabled: bool = option(
        True,
        doc="Advertise the bus beacon (docs/ble-host.md) while source is ble; off, no "
        "phone can echo this bus (token byte 23) and the echo evidence is lost. The "
        "adapter, company id, backoff and D-Bus deadline are the [scanner] section's.",
    )
    min_interval_ms: int = option(
        100,
        doc="Shortest advertising interval in ms (20-10240; BlueZ MinInterval: bluetoothd "
        "5.56 reads it only with --experimental, current BlueZ always; else the kernel's).",
    )
    max_interval_ms: int = option(
        150, doc="Longest advertising interval in ms (min_interval_ms-10240; BlueZ MaxInterval)."
    )
    tx_power_dbm: int | None = option(
        None,
        doc="Requested transmit power in dBm (-127..20, BlueZ TxPower, read as the "
        "intervals are); unset leaves the controller's default.",
    )
    service_uuid: str = option(
        BEACON_SERVICE_UUID,
        doc="Service UUID the beacon lists (BlueZ ServiceUUIDs) so that phone apps scanning "
        "in the background find it (iOS filters on service UUIDs only): the protocol's "
        "128-bit UUID, another 128-bit one (8-4-4-4-12 hex digits), a 16-bit one (4 hex "
        "digits, assigned by the Bluetooth SIG), or empty to list none. docs/ble-host.md.",
    )

    def __post_init__(self) -> None:
        if not _MIN_INTERVAL_MS <= self.min_interval_ms <= self.max_interval_ms:
            raise ValueError(
                f"beacon intervals need {_MIN_INTERVAL_MS} <= min_interval_ms <= max_interval_ms"
            )
        if self.max_interval_ms > _MAX_INTERVAL_MS:
            raise ValueError(f"beacon.max_interval_ms must be at most {_MAX_INTERVAL_MS}")
        if self.tx_power_dbm is not None and not -127 <= self.tx_power_dbm <= 20:
            raise ValueError("beacon.tx_power_dbm must be within -127..20")
        if self.service_uuid and not _UUID_RE.fullmatch(self.service_uuid):
            raise ValueError(
                f"beacon.service_uuid must be a 128-bit UUID (8-4-4-4-12 hex digits), a 16-bit "
                f"one (4 hex digits) or empty, got {self.service_uuid!r}"
            )


def beacon_stop_index(vehicle: VehicleContext) -> int:
    """The index in the trip of the stop the bus serves or comes to next (0 without a trip).

    Not reduced mod 8: :func:`busbell._echo.seq_of` does that.
    """
    n = len(vehicle.stop_ids)
    if n == 0:
        return 0
    visit = vehicle.current_visit
    if visit is not None and visit.stop_index is not None:
        return visit.stop_index
    i = vehicle.last_served_index + 1
    progress = vehicle.progress_m
    if progress is not None:
        radius = vehicle.params.stop_radius_m
        dist = vehicle.stop_dist_m
        while i < n and progress > dist[i] + radius:
            i += 1
    return i


class EchoSeqs:
    """Whether an echo first heard near a stop of this bus's trip may be no rider's.

    **A code collision.** A bus of any pattern of the feed (a trip's stop sequence, or a
    route and direction's usual one) serving stop ``s`` at index ``j`` of its trip sends
    ``seq`` ``j`` mod 8 there. A token near ``s`` that hears that bus echoes it with that
    seq; where its code for the rid equals this bus's (1 rid in 31), this bus reads the
    echo as its own, from the stop of its trip with that seq: an echo that says nothing of
    this bus (thirty-eighth pass).

    **Someone standing within reach of the echo's stop.** A listening token echoes this
    bus since stop ``k`` only if it heard the bus's beacon with no gap longer than its
    ``gap_s`` (30 s) since the bus served ``k``: as the bus left ``k``, or within one gap
    of it, the beacon reached the token (~100 m), and the bus now hears the token
    (~100 m). Someone standing still can hold such a stretch only where the bus, as it
    first hears them, is within ``reach_m`` (``echo_reach_m``: those two ranges and a
    gap's drive) of stop ``k`` in a straight line: a route looping back past a stop it
    served before. Farther, whoever holds it has moved with the bus (forty-first pass).

    Called by the classifier as it first hears a stretch
    (:attr:`edge._classifier.PresenceClassifier.echo_ambiguous`), the bus's latest fix
    then where it hears it (none: the stop it is at or coming to).

    Args:
        feed: the GTFS static feed.
        vehicle: this bus's vehicle context (its trip's stops, its position).
        reach_m: ``echo_reach_m``; 0: no stop is within reach.
    """

    def __init__(self, feed: Feed, vehicle: VehicleContext, *, reach_m: float) -> None:
        self.vehicle = vehicle
        self.reach_m = reach_m
        self.stops = feed.stops
        pats = {t.stop_ids for t in feed.trips.values()}
        pats.update(p.stop_ids for p in feed.patterns.values())
        at: dict[str, list[tuple[tuple[str, ...], int]]] = {}
        for ids in sorted(pats):
            for j, s in enumerate(ids):
                at.setdefault(s, []).append((ids, j % SEQ_MOD))
        self.at = at
        """Stop id -> (a pattern's stop ids, the seq its bus sends there)."""

    def __call__(self, index: int, seq: int) -> bool:
        """Whether an echo of ``seq`` first heard near stop ``index`` may be no rider's.

        Another pattern's bus's (it sends ``seq`` at that stop), or someone's standing
        within reach of the echo's stop (the stop of the trip with that seq at or before
        ``index``, the stop the bus is at or coming to).
        """
        ids = self.vehicle.stop_ids
        if not 0 <= index < len(ids):
            return False
        if any(pat != ids and s == seq for pat, s in self.at.get(ids[index], ())):
            return True
        return self._within_reach(ids, index - (index - seq) % SEQ_MOD, index)

    def _within_reach(self, ids: tuple[str, ...], k: int, index: int) -> bool:
        """Whether the bus is within ``reach_m`` of stop ``k`` (a straight line)."""
        if k < 0 or self.reach_m <= 0:
            return False
        there = self.stops.get(ids[k])
        if there is None:
            return True  # (a stop the feed does not place: nothing rules it out)
        lat, lon = self.vehicle.lat, self.vehicle.lon
        if lat is None or lon is None:
            here = self.stops.get(ids[index])
            if here is None:
                return True
            lat, lon = here.lat, here.lon
        return haversine_m(there.lat, there.lon, lat, lon) <= self.reach_m


class BeaconState:
    """The beacon payload of one bus, recomputed from its vehicle context.

    Args:
        vehicle_id: the bus's vehicle id (the edge's ``bus_id``).
    """

    def __init__(self, vehicle_id: str) -> None:
        self.tag = bus_tag(vehicle_id)
        self.payload = encode_beacon(self.tag, 0)
        """The payload to advertise now (seq 0 until the vehicle says otherwise)."""

    def update(self, vehicle: VehicleContext) -> bytes | None:
        """Recompute from ``vehicle``; the new payload when it changed, else ``None``."""
        payload = encode_beacon(self.tag, seq_of(beacon_stop_index(vehicle)))
        if payload == self.payload:
            return None
        self.payload = payload
        return payload
