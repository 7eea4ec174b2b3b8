"""A synthetic backend world for settle/ingest tests and benchmarks: a GTFS line, devices,
riders and signed fare chains (moved out of benchmarks/backend_settle.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from busbell._canonical import canonical_bytes, sha256_hex
from busbell._fare_event import GENESIS_PREV, derive_event_id, derive_missed_event_id
from busbell._keyfiles import DEVICES_HEADER, RIDERS_HEADER, write_rows
from busbell._signing import DeviceKey
from busbell._token import INTERVAL_S, RiderKeys, derive_rider_keys, encode_payload, interval_of

T0 = 1_762_500_000.0  # 2025-11-07 07:20 UTC = 16:20 Asia/Seoul


STOP_SPACING_M = 800.0


N_STOPS = 30


def write_gtfs(directory: Path) -> None:
    """A feed of 30 stops: R1 (gyeonggi_city) and R2 (gyeonggi_wide_area) serve all of them.

    Stop ``Sxx`` lies 800 m after ``S(xx-1)``; R1 and R2 serve all stops in direction
    0, R1 also in reverse (direction 1); R3 (no network) S01-S10; R4 (gyeonggi_city,
    trip ``T4``) is an express that passes S05 without calling there (as G6000 passes
    BD004). ``shape_dist_traveled`` is in metres.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "agency.txt").write_text(
        "agency_id,agency_name,agency_url,agency_timezone\nA,Test,https://example.org,Asia/Seoul\n"
    )
    stops = ["stop_id,stop_name,stop_lat,stop_lon"]
    for k in range(1, N_STOPS + 1):
        stops.append(f"S{k:02d},Stop {k},37.{4000 + k * 7:04d},127.{1000 + k * 9:04d}")
    (directory / "stops.txt").write_text("\n".join(stops) + "\n")
    (directory / "routes.txt").write_text(
        "route_id,route_short_name,route_type\nR1,1,3\nR2,2000,3\nR3,30,3\nR4,4000,3\n"
    )
    (directory / "route_networks.txt").write_text(
        "network_id,route_id\ngyeonggi_city,R1\ngyeonggi_wide_area,R2\ngyeonggi_city,R4\n"
    )
    (directory / "trips.txt").write_text(
        "route_id,service_id,trip_id,direction_id\nR1,D,T1,0\nR1,D,T1R,1\nR2,D,T2,0\nR3,D,T3,0\nR4,D,T4,0\n"
    )
    rows = ["trip_id,arrival_time,departure_time,stop_id,stop_sequence,shape_dist_traveled"]
    order = {
        "T1": list(range(1, N_STOPS + 1)),
        "T1R": list(range(N_STOPS, 0, -1)),
        "T2": list(range(1, N_STOPS + 1)),
        "T3": list(range(1, 11)),
        "T4": [k for k in range(1, N_STOPS + 1) if k != 5],
    }
    for trip, seq in order.items():
        for n, k in enumerate(seq):
            hhmmss = f"{6 + n // 30:02d}:{(n * 2) % 60:02d}:00"
            at = abs(k - seq[0]) * STOP_SPACING_M  # along the road: an express passes stops
            rows.append(f"{trip},{hhmmss},{hhmmss},S{k:02d},{n + 1},{at:.1f}")
    (directory / "stop_times.txt").write_text("\n".join(rows) + "\n")


@dataclass
class BusChain:
    """One bus's event chain: numbering, ``prev`` and signing."""

    bus_id: str
    key: DeviceKey
    seq: int = 0
    prev: str = GENESIS_PREV
    events: list[dict[str, Any]] = field(default_factory=list)

    def emit(self, fields: dict[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
        """Number, chain and sign an event made of the segment ``fields``.

        ``event_id``: use this id instead of the derived one (a buggy or hostile edge
        reusing another record's id).
        """
        self.seq += 1
        event = dict(fields)
        event["bus_id"] = self.bus_id
        event["seq"] = self.seq
        event["prev"] = self.prev
        if fields["type"] == "missed":
            event["event_id"] = derive_missed_event_id(
                self.bus_id, self.seq, fields["request_id"], fields["passed"]["t"]
            )
        else:
            event["event_id"] = derive_event_id(
                self.bus_id, self.seq, fields["rid"], fields["start"]["t"]
            )
        if event_id is not None:
            event["event_id"] = event_id
        body = canonical_bytes(event)
        event["sig"] = self.key.sign_b64(body)
        self.prev = sha256_hex(canonical_bytes(event))
        self.events.append(event)
        return event


def missed_fields(request_id: str, stop_id: str, t: float, route_id: str = "R1") -> dict[str, Any]:
    """The fields of a ``missed`` record (before numbering and signing): passed at ``t``."""
    return {
        "v": 1,
        "type": "missed",
        "request_id": request_id,
        "route_id": route_id,
        "trip_id": "T1",
        "stop_id": stop_id,
        "wait": {
            "request_id": request_id,
            "route_id": route_id,
            "stop_id": stop_id,
            "t": t - 120.0,
            "expires_t": t + 600.0,
            "source": "app",
            "assist": False,
        },
        "passed": {"t": t, "lat": 37.5, "lon": 127.0, "speed_mps": 9.0, "distance_m": 8.0},
        "doors_opened": False,
    }


class World:
    """Riders, buses, fleet keys and a GTFS feed in a directory; mints signed rides.

    Args:
        directory: where to write ``gtfs/``, ``RIDERS.csv``, ``DEVICES.csv``.
        riders: how many riders (ids ``r0001``...).
        buses: how many buses (ids ``bus-01``...).
    """

    def __init__(self, directory: Path, *, riders: int = 4, buses: int = 2) -> None:
        self.dir = directory
        self.gtfs = directory / "gtfs"
        write_gtfs(self.gtfs)
        self.token_keys: dict[str, bytes] = {
            f"r{n:04d}": hashlib.sha256(f"rider-{n}".encode()).digest()[:16]
            for n in range(1, riders + 1)
        }
        self.keys: dict[str, RiderKeys] = {
            r: derive_rider_keys(k) for r, k in self.token_keys.items()
        }
        self.buses: dict[str, BusChain] = {
            f"bus-{n:02d}": BusChain(
                f"bus-{n:02d}", DeviceKey.from_seed(hashlib.sha256(f"bus-{n}".encode()).digest())
            )
            for n in range(1, buses + 1)
        }
        self.fleet_key = hashlib.sha256(b"fleet").digest()
        self.riders_csv = directory / "RIDERS.csv"
        self.devices_csv = directory / "DEVICES.csv"
        write_rows(
            self.riders_csv, RIDERS_HEADER, [(r, k.hex()) for r, k in self.token_keys.items()]
        )
        write_rows(
            self.devices_csv, DEVICES_HEADER, [(b, c.key.public.hex) for b, c in self.buses.items()]
        )

    def payload(self, rider: str | RiderKeys, t: float, flags: int = 0) -> str:
        """Hex payload of the rider's token at time ``t``."""
        keys = self.keys[rider] if isinstance(rider, str) else rider
        return encode_payload(keys, t, fleet_key=self.fleet_key, flags=flags).hex()

    def segment_fields(
        self,
        rider: str | RiderKeys,
        *,
        route_id: str | None,
        trip_id: str | None,
        start: tuple[float, str | None, str],
        end: tuple[float, str | None, str],
        distance_m: float,
        proof: tuple[str, str] | None = None,
        rssi_med: int | None = None,
        adverts_per_s: float | None = None,
        riders_lvl: float | None = None,
    ) -> dict[str, Any]:
        """The fields of one segment event (before numbering and signing)."""
        keys = self.keys[rider] if isinstance(rider, str) else rider
        t_first, t_last = start[0], end[0]
        rid_hex = encode_payload(keys, t_first, fleet_key=self.fleet_key)[3:15].hex()
        first, last = proof or (self.payload(keys, t_first), self.payload(keys, t_last))
        evidence: dict[str, Any] = {"adv_count": 10}
        if rssi_med is not None:
            evidence["rssi_med"] = rssi_med
        if adverts_per_s is not None:
            evidence["n_adv"] = round(adverts_per_s * (t_last - t_first))
        if riders_lvl is not None:
            evidence["riders_lvl"] = riders_lvl
        return {
            "v": 1,
            "type": "segment",
            "rid": rid_hex,
            "interval": interval_of(t_first),
            "route_id": route_id,
            "trip_id": trip_id,
            "start": {"t": start[0], "stop_id": start[1], "cause": start[2]},
            "end": {"t": end[0], "stop_id": end[1], "cause": end[2]},
            "distance_m": round(distance_m, 1),
            "proof": {"first": first, "last": last},
            "evidence": evidence,
        }

    def ride(
        self,
        rider: str,
        bus: str,
        *,
        board: int,
        alight: int,
        t: float,
        route_id: str = "R1",
        trip_id: str | None = "T1",
        end_cause: str = "alighted",
        alight_stop_known: bool = True,
        speed_mps: float = 8.0,
        rssi_med: int | None = None,
        adverts_per_s: float | None = None,
        riders_lvl: float | Sequence[float] | None = None,
    ) -> list[dict[str, Any]]:
        """Mint the events of one ride from stop ``S{board}`` to ``S{alight}``.

        The ride is split at rid interval boundaries into ``rotated``/``continued``
        segments (with ``stop_id`` null there), exactly one event per segment.
        ``riders_lvl``: one for every segment, or each segment's in turn.
        """
        chain = self.buses[bus]
        duration = abs(alight - board) * STOP_SPACING_M / speed_mps
        boundary = (interval_of(t) + 1) * INTERVAL_S
        t = round(min(t, boundary - 1.0), 3)  # a first piece shorter than 1 s cannot be split
        # times are written to the millisecond: cut where the written end falls, or an
        # end just short of a boundary rounds into the next interval (its payload then
        # carries the next rid: the backend rightly rejects it, rid_mismatch)
        t_end = round(t + duration, 3)
        cuts = [t]
        while boundary <= t_end:
            t_end = max(t_end, boundary + 2.0)
            cuts.append(float(boundary))
            boundary += INTERVAL_S
        cuts.append(t_end)
        out = []
        for n in range(len(cuts) - 1):
            a, b = cuts[n], cuts[n + 1]
            last = n == len(cuts) - 2
            start_stop = f"S{board:02d}" if n == 0 else None
            start_cause = "boarded" if n == 0 else "continued"
            if last:
                end_stop = f"S{alight:02d}" if alight_stop_known else None
                cause = end_cause
                b_proof = b
            else:
                end_stop, cause = None, "rotated"
                b = b - 0.5
                b_proof = b
            a_proof = a if n == 0 else a + 0.5
            fields = self.segment_fields(
                rider,
                route_id=route_id,
                trip_id=trip_id,
                start=(round(a_proof, 3), start_stop, start_cause),
                end=(round(b_proof, 3), end_stop, cause),
                distance_m=(b_proof - a_proof) * speed_mps,
                rssi_med=rssi_med,
                adverts_per_s=adverts_per_s,
                riders_lvl=riders_lvl if not isinstance(riders_lvl, Sequence) else riders_lvl[n],
            )
            out.append(chain.emit(fields))
        return out

    def write_events(self, path: Path, events: list[dict[str, Any]] | None = None) -> Path:
        """Write events (default: every bus's, in seq order) as JSONL."""
        if events is None:
            events = [e for c in self.buses.values() for e in c.events]
        with open(path, "w", encoding="utf-8") as f:
            for e in events:
                f.write(json.dumps(e, separators=(",", ":")) + "\n")
        return path


__all__ = ["STOP_SPACING_M", "T0", "World", "missed_fields", "write_gtfs"]
