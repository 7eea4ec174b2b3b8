"""An in-memory MQTT broker whose sessions follow ``busbell._mqtt.Session``.

For tests where the broker is not the point (an uploader's batching, a daemon's
handlers): no port, no process, and failures on demand. Where the broker is the point
(reconnect after a restart, last will on a dead TCP connection, shared subscriptions
across processes) tests keep using the real Mosquitto; ``tests/busbell/test_fake_broker.py``
runs the same checks against both so the fake does not drift from what Mosquitto does.

What it does as Mosquitto does (MQTT 5): ``+``/``#`` filters; retained messages (an empty
retained payload clears one) delivered with ``retain`` set on subscribe; live deliveries
with ``retain`` clear; QoS min(publish, subscription); a client id's session with a
session expiry > 0 and ``clean_start=False`` keeps its subscriptions and queues QoS 1
messages while it is away; ``$share/GROUP/filter`` gives each message to one live member;
a second connection with a client id in use takes over and drops the first; a dropped
connection (not a clean exit) publishes its last will.

Failure injection: :meth:`FakeBroker.refuse` (the next connects fail),
:meth:`FakeBroker.drop` (a client's connection is lost), :meth:`FakeBroker.stop` /
:meth:`FakeBroker.start` (everything drops; connects fail until started).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from busbell import UplinkError
from busbell._mqtt import MqttMessage, MqttSettings, topic_matches

__all__ = ["FakeBroker", "FakeSession"]

_LOST = object()


@dataclass
class _Stored:
    """What the broker keeps for a client id between its connections."""

    subscriptions: dict[str, int] = field(default_factory=dict)
    queued: list[MqttMessage] = field(default_factory=list)


class FakeBroker:
    """The broker: retained messages, stored sessions, live connections."""

    def __init__(self) -> None:
        self.retained: dict[str, MqttMessage] = {}
        self.published: list[MqttMessage] = []
        """Every message the broker accepted, in order (wills too)."""
        self.connects = 0
        self._stored: dict[str, _Stored] = {}
        self._live: dict[str, FakeSession] = {}
        self._refuse = 0
        self._running = True
        self._turn = itertools.count()

    def session(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        will: tuple[str, bytes, bool] | None = None,
        clean_start: bool = False,
        **_: Any,
    ) -> FakeSession:
        """A session to this broker; called like :class:`busbell._mqtt.MqttSession`."""
        return FakeSession(self, settings, client_id, will=will, clean_start=clean_start)

    # --- failure injection ------------------------------------------------------------

    def refuse(self, n: int = 1) -> None:
        """The next ``n`` connect attempts fail (``UplinkError``)."""
        self._refuse += n

    def drop(self, client_id: str) -> None:
        """Lose ``client_id``'s connection (its last will is published)."""
        s = self._live.get(client_id)
        if s is not None:
            s._lose("connection lost (fake broker dropped it)")

    def stop(self) -> None:
        """Drop every connection; connects fail until :meth:`start`."""
        self._running = False
        for s in list(self._live.values()):
            s._lose("connection lost (fake broker stopped)")

    def start(self) -> None:
        """Accept connections again."""
        self._running = True

    def is_connected(self, client_id: str) -> bool:
        """Whether ``client_id`` has a live connection."""
        return client_id in self._live

    # --- the broker's side ------------------------------------------------------------

    def _connect(self, s: FakeSession) -> _Stored:
        if not self._running or self._refuse > 0:
            self._refuse = max(0, self._refuse - 1)
            raise UplinkError("cannot connect to broker: refused (fake broker)")
        old = self._live.get(s.client_id)
        if old is not None:
            old._lose("connection lost (session taken over)")
        self.connects += 1
        self._live[s.client_id] = s
        stored = self._stored.pop(s.client_id, None)
        if s.clean_start or stored is None:
            stored = _Stored()
        return stored

    def _disconnect(self, s: FakeSession, stored: _Stored) -> None:
        if self._live.get(s.client_id) is s:
            del self._live[s.client_id]
        if s.expiry_s > 0:
            self._stored[s.client_id] = stored

    def _accept(self, msg: MqttMessage) -> None:
        self.published.append(msg)
        if msg.retain:
            if msg.payload:
                self.retained[msg.topic] = msg
            else:
                self.retained.pop(msg.topic, None)
        out = MqttMessage(msg.topic, msg.payload, False, msg.qos)
        shared: dict[str, list[tuple[FakeSession, int]]] = {}
        for s in list(self._live.values()):
            best = -1
            for f, qos in s.stored.subscriptions.items():
                if f.startswith("$share/"):
                    _, group, inner = f.split("/", 2)
                    if topic_matches(inner, msg.topic):
                        shared.setdefault(f"{group}/{inner}", []).append((s, qos))
                elif topic_matches(f, msg.topic):
                    best = max(best, qos)
            if best >= 0:
                s._deliver(MqttMessage(out.topic, out.payload, False, min(best, msg.qos)))
        for members in shared.values():
            s, qos = members[next(self._turn) % len(members)]
            s._deliver(MqttMessage(out.topic, out.payload, False, min(qos, msg.qos)))
        for stored in self._stored.values():  # away: QoS 1 waits for the client
            qos = max(
                (q for f, q in stored.subscriptions.items() if topic_matches(f, msg.topic)),
                default=-1,
            )
            if min(qos, msg.qos) >= 1:
                stored.queued.append(MqttMessage(out.topic, out.payload, False, 1))


class FakeSession:
    """One connection to a :class:`FakeBroker` (``async with``), like ``MqttSession``."""

    def __init__(
        self,
        broker: FakeBroker,
        settings: MqttSettings,
        client_id: str,
        *,
        will: tuple[str, bytes, bool] | None,
        clean_start: bool,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.clean_start = clean_start
        self.expiry_s = settings.session_expiry_s
        self.will = will
        self.stored = _Stored()
        self._queue: asyncio.Queue[MqttMessage | object] = asyncio.Queue()
        self._up = False
        self._lost = ""

    async def __aenter__(self) -> FakeSession:
        if self._up:
            raise UplinkError(f"fake session {self.client_id} is already connected")
        await asyncio.sleep(0)
        self.stored = self.broker._connect(self)
        self._queue = asyncio.Queue()
        self._up, self._lost = True, ""
        for m in self.stored.queued:
            self._queue.put_nowait(m)
        self.stored.queued = []
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._up:  # a clean disconnect: no last will
            self._up, self._lost = False, "disconnected"
            self.broker._disconnect(self, self.stored)
            self._queue.put_nowait(_LOST)

    def _lose(self, why: str) -> None:
        if not self._up:
            return
        self._up, self._lost = False, why
        self.broker._disconnect(self, self.stored)
        self._queue.put_nowait(_LOST)
        if self.will is not None:
            topic, payload, retain = self.will
            self.broker._accept(MqttMessage(topic, payload, retain, 1))

    def _deliver(self, msg: MqttMessage) -> None:
        self._queue.put_nowait(msg)

    def _check(self, what: str) -> None:
        if not self._up:
            raise UplinkError(f"{what} failed: {self._lost or 'not connected'}")

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 0,
        retain: bool = False,
        expiry_s: int | None = None,
    ) -> None:
        """Publish (delivered at once); ``UplinkError`` when the connection is lost."""
        self._check(f"publish to {topic}")
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        self.broker._accept(MqttMessage(topic, data, retain, qos))
        await asyncio.sleep(0)

    async def subscribe(self, topics: Sequence[str], qos: int = 1) -> None:
        """Subscribe; matching retained messages follow with ``retain`` set."""
        self._check("subscribe")
        for f in topics:
            self.stored.subscriptions[f] = qos
            if f.startswith("$share/"):
                continue  # MQTT 5: no retained messages on a shared subscription
            for m in list(self.broker.retained.values()):
                if topic_matches(f, m.topic):
                    self._deliver(MqttMessage(m.topic, m.payload, True, min(qos, m.qos)))
        await asyncio.sleep(0)

    async def unsubscribe(self, topics: Sequence[str]) -> None:
        """Unsubscribe."""
        self._check("unsubscribe")
        for f in topics:
            self.stored.subscriptions.pop(f, None)
        await asyncio.sleep(0)

    async def messages(self) -> AsyncIterator[MqttMessage]:
        """Incoming messages; ``UplinkError`` once the connection is lost."""
        self._check("message iteration")
        while True:
            item = await self._queue.get()
            if item is _LOST:
                raise UplinkError(f"connection lost: {self._lost}")
            assert isinstance(item, MqttMessage)
            yield item


class RecordingPublisher:
    """A :class:`busbell._mqtt.Publisher` that records what is published (no broker).

    For a component under test that only publishes (the rider API, the waits API);
    ``fail = True`` makes every publish fail as a lost broker would.
    """

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool, int | None]] = []
        self.fail = False

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 0,
        retain: bool = False,
        expiry_s: int | None = None,
    ) -> None:
        if self.fail:
            raise UplinkError("broker down")
        data = payload.encode() if isinstance(payload, str) else payload
        self.sent.append((topic, data, retain, expiry_s))
