"""Signed fare events and fares batches of synthetic buses, and a fleet of edges that
publish them (moved out of benchmarks/backend_ingest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Sequence
from typing import Any

from busbell import (
    GENESIS_PREV,
    DeviceKey,
    Topics,
    UplinkError,
    canonical_bytes,
    derive_event_id,
    derive_missed_event_id,
    event_hash,
    sign_event,
)
from busbell._mqtt import MqttSession, MqttSettings


def device_key_for(bus_id: str) -> DeviceKey:
    """A deterministic device key per bus (tests and benchmarks only)."""
    return DeviceKey.from_seed(hashlib.sha256(b"busbell-test-device:" + bus_id.encode()).digest())


def make_events(
    bus_id: str,
    key: DeviceKey,
    n: int,
    *,
    start_seq: int = 1,
    prev: str = GENESIS_PREV,
    t0: float = 1_760_000_000.0,
    missed_every: int = 0,
) -> list[dict[str, Any]]:
    """``n`` signed, chained v1 chain records of one bus starting at ``start_seq``.

    Segments, except that every ``missed_every``-th seq (when > 0) is a ``missed``
    record (the bus passed a stop with a live wait).
    """
    out: list[dict[str, Any]] = []
    for k in range(n):
        seq = start_seq + k
        t = t0 + seq * 90.0
        rid = hashlib.sha256(f"{bus_id}/{seq}".encode()).hexdigest()[:24]
        ev: dict[str, Any]
        if missed_every > 0 and seq % missed_every == 0:
            request_id = f"q-{bus_id}-{seq}"
            stop = f"S{seq % 30}"
            ev = {
                "v": 1,
                "type": "missed",
                "bus_id": bus_id,
                "seq": seq,
                "event_id": derive_missed_event_id(bus_id, seq, request_id, t),
                "prev": prev,
                "request_id": request_id,
                "route_id": "R100",
                "trip_id": f"T{seq // 40}",
                "stop_id": stop,
                "wait": {
                    "request_id": request_id,
                    "route_id": "R100",
                    "stop_id": stop,
                    "t": t - 300.0,
                    "expires_t": t + 600.0,
                    "source": "app",
                    "assist": False,
                },
                "passed": {
                    "t": t,
                    "lat": 37.5,
                    "lon": 127.0,
                    "speed_mps": 8.5,
                    "distance_m": 12.0,
                },
                "doors_opened": False,
            }
            signed = sign_event(ev, key)
            prev = event_hash(signed)
            out.append(signed)
            continue
        ev = {
            "v": 1,
            "type": "segment",
            "bus_id": bus_id,
            "seq": seq,
            "event_id": derive_event_id(bus_id, seq, rid, t),
            "prev": prev,
            "rid": rid,
            "interval": int(t // 600),
            "route_id": "R100",
            "trip_id": f"T{seq // 40}",
            "start": {"t": t, "stop_id": f"S{seq % 30}", "cause": "boarded"},
            "end": {"t": t + 60.0, "stop_id": f"S{(seq + 3) % 30}", "cause": "alighted"},
            "distance_m": 1234.5,
            "proof": {"first": "21" + "ab" * 23, "last": "21" + "cd" * 23},
            "evidence": {"adv": 17, "rssi_max": -61},
        }
        signed = sign_event(ev, key)
        prev = event_hash(signed)
        out.append(signed)
    return out


def batch_payload(bus_id: str, events: Sequence[dict[str, Any]]) -> bytes:
    """One MQTT payload of a batch ``{"bus_id": ..., "events": [...]}``."""
    return canonical_bytes({"bus_id": bus_id, "events": list(events)})


class EdgeFleet:
    """Simulated edges uploading pre-signed chains like the real uploader does.

    Keeps every event until acked; publishes batches with a bounded window ahead of
    the ack; answers ``fares/resend``; after ``retry_s`` without ack progress re-sends
    everything after the last ack (go-back-N). Acks are taken as a monotonic maximum.
    One MQTT session serves all buses (the backend cannot tell the difference). A lost
    connection is re-opened, as the real uploader does (``reconnects`` counts them): on a
    loaded machine the broker may drop a client, and the chains are all still here.

    The payloads of each bus's batches (``batch`` events from seq 1, 1 + batch, ...) are
    serialised when the fleet is made, as each edge serialises its own on its own CPU:
    uploading costs this process only the MQTT publishing. A range that does not start
    and end on those boundaries (a re-send request, an ack inside a batch) is
    serialised when sent.
    """

    def __init__(
        self,
        settings: MqttSettings,
        chains: dict[str, list[dict[str, Any]]],
        *,
        batch: int = 50,
        window: int = 500,
        retry_s: float = 3.0,
        client_id: str = "busbell-test-edges",
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.prefix)
        self.chains = chains
        self.batch = batch
        self.window = window
        self.retry_s = retry_s
        self.client_id = client_id
        self.acked = dict.fromkeys(chains, 0)
        self.sent = dict.fromkeys(chains, 0)
        self.resend_requests = 0
        self.retries = 0
        self.reconnects = 0
        self._progress = dict.fromkeys(chains, 0.0)
        self._wake = asyncio.Event()
        self._unacked = sum(1 for c in chains.values() if c)
        """Buses whose last event is not acknowledged yet (kept by :meth:`_listen`)."""
        self._payloads = {
            (bus, start): batch_payload(bus, chain[start - 1 : start - 1 + batch])
            for bus, chain in chains.items()
            for start in range(1, len(chain) + 1, batch)
        }

    def acked_total(self) -> int:
        """Events acknowledged over all buses."""
        return sum(self.acked.values())

    def done(self) -> bool:
        """Whether every bus's last event is acknowledged."""
        return self._unacked == 0

    async def _send(self, session: MqttSession, bus: str, lo: int, hi: int) -> None:
        # Events lo..hi (1-based, inclusive) in batches.
        chain = self.chains[bus]
        for start in range(lo, hi + 1, self.batch):
            end = min(hi, start + self.batch - 1)
            payload = self._payloads.get((bus, start))
            if payload is None or end != min(len(chain), start + self.batch - 1):
                part = chain[start - 1 : end]
                if not part:
                    continue
                payload = batch_payload(bus, part)
            await session.publish(self.topics.fares(bus), payload, qos=1)

    async def _listen(self, session: MqttSession, pending: list[tuple[str, int, int]]) -> None:
        async for msg in session.messages():
            parsed = self.topics.parse(msg.topic)
            if parsed is None or not msg.payload:
                continue
            bus = parsed.ids["bus"]
            body = json.loads(msg.payload)
            if parsed.kind == "fares_ack":
                upto, total = body["upto_seq"], len(self.chains[bus])
                if upto <= self.acked[bus]:
                    continue
                if self.acked[bus] < total <= upto:
                    self._unacked -= 1
                self.acked[bus] = upto
                self._progress[bus] = time.monotonic()
                if self.sent[bus] >= total and self._unacked:
                    # nothing left to send for this bus (a drain reads only acks): no
                    # step over the whole fleet per ack; retries are checked every 0.1 s
                    continue
            elif parsed.kind == "fares_resend":
                self.resend_requests += 1
                pending.append((bus, body["from_seq"], body["to_seq"]))
            self._wake.set()

    async def preload(self) -> None:
        """Publish every bus's whole chain now (QoS 1, each publish confirmed by the
        broker) and count it as sent: :meth:`run` then only reads the acks (and answers
        re-send requests and its own retries, as ever).

        For a drain benchmark: with the subscribers stopped (``SIGSTOP``), the broker
        queues all of it before the clock starts.
        """
        async with MqttSession(self.settings, f"{self.client_id}-preload", clean_start=True) as s:
            await asyncio.gather(
                *(self._send(s, bus, 1, len(chain)) for bus, chain in self.chains.items())
            )
        self.sent = {bus: len(chain) for bus, chain in self.chains.items()}

    async def run(self, timeout_s: float = 120.0) -> None:
        """Upload until every bus is fully acked, reconnecting when the connection is lost.

        Raises:
            TimeoutError: when that does not happen within ``timeout_s``.
        """
        async with asyncio.timeout(timeout_s):
            now = time.monotonic()
            self._progress = dict.fromkeys(self.chains, now)
            while True:
                try:
                    await self._session()
                    return
                except UplinkError:
                    self.reconnects += 1
                    self.sent = dict(self.acked)  # what was in flight may be lost: go back
                    await asyncio.sleep(0.2)

    async def _session(self) -> None:
        pending: list[tuple[str, int, int]] = []
        async with MqttSession(self.settings, self.client_id, clean_start=True) as session:
            await session.subscribe(
                [
                    f"{self.topics.prefix}/buses/+/fares/ack",
                    f"{self.topics.prefix}/buses/+/fares/resend",
                ]
            )
            listener = asyncio.create_task(self._listen(session, pending))
            try:
                while not self.done():
                    if listener.done():
                        listener.result()
                    await self._step(session, pending)
                    self._wake.clear()
                    if self.done():
                        break
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.1):
                            await self._wake.wait()
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError, UplinkError):
                    await listener

    async def _step(self, session: MqttSession, pending: list[tuple[str, int, int]]) -> None:
        # Each bus is its own edge: their uploads go out concurrently (one bus's batches
        # in order), not one publish round trip after another for the whole fleet.
        sends = []
        while pending:
            bus, lo, hi = pending.pop(0)
            sends.append(self._send(session, bus, max(lo, self.acked[bus] + 1), hi))
        now = time.monotonic()
        for bus, chain in self.chains.items():
            if self.acked[bus] >= len(chain):
                continue
            if now - self._progress[bus] > self.retry_s:
                self.retries += 1
                self._progress[bus] = now
                self.sent[bus] = self.acked[bus]  # go back: re-send everything unacked
            lo = self.sent[bus] + 1
            hi = min(len(chain), self.acked[bus] + self.window)
            if hi >= lo:
                sends.append(self._send(session, bus, lo, hi))
                self.sent[bus] = hi
        await asyncio.gather(*sends)


__all__ = ["EdgeFleet", "batch_payload", "device_key_for", "make_events"]
