"""The MQTT uplink of the edge: one reconnecting link, and the fare uploader on it.

:class:`MqttLink` owns the one broker connection of the bus (stable client id,
persistent session, retained LWT ``{"state":"offline"}`` on ``status``), reconnects
with :class:`busbell._mqtt.ReconnectLoop`, routes incoming messages by exact topic to
async handlers and tells listeners when it (re)connects.

:class:`FareUploader` drains the :class:`~edge._store.FareStore` to
``buses/{bus}/fares`` in batches (QoS 1)::

    {"bus_id": "bus-0001", "events": [<fare event v1>, ...]}

in ``seq`` order, keeps at most ``window_events`` sent-but-unacked events in flight,
and re-sends from the last ack after any reconnect and after an ack timeout. It obeys
``fares/ack`` (``{"upto_seq": N}``: cumulative; events <= N may then be pruned) and
``fares/resend`` (``{"from_seq": A, "to_seq": B}``: re-send a kept range). Malformed
control messages are counted, logged and ignored. See ``docs/edge.md``.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from busbell import (
    BusbellError,
    JsonLimits,
    JsonRejected,
    RejectLog,
    StoreError,
    Topics,
    UplinkError,
    get_logger,
    loads_object,
    option,
)
from busbell._mqtt import (
    MqttSession,
    MqttSettings,
    ReconnectLoop,
    Session,
    SessionChange,
    topic_matches,
)
from edge._store import FareStore, StoredEvent

__all__ = [
    "OFFLINE_PAYLOAD",
    "FareUploader",
    "MqttLink",
    "UplinkSettings",
    "UplinkStats",
    "encode_batch",
]

OFFLINE_PAYLOAD = b'{"state":"offline"}'
_log = get_logger("edge.uplink")

Handler = Callable[[bytes], Awaitable[None]]
FilterHandler = Callable[[str, bytes], Awaitable[None]]
ConnectListener = Callable[[], Awaitable[None]]

CONTROL_LIMITS = JsonLimits(max_bytes=1024, max_depth=1)
"""``fares/ack`` and ``fares/resend`` are one flat object of integers."""


@dataclass(frozen=True, slots=True)
class UplinkSettings:
    """How fare events are uploaded (the ``[uplink]`` config section)."""

    batch_max_events: int = option(200, doc="Most events in one fares message.")
    batch_max_bytes: int = option(
        262144, doc="Most bytes in one fares message (a single larger event is sent alone)."
    )
    window_events: int = option(
        2000, doc="Most events sent but not yet acknowledged by the backend (in-flight window)."
    )
    ack_timeout_s: float = option(
        30.0, doc="Re-send everything unacked when no ack arrives for this long."
    )
    keep_acked_days: float = option(
        7.0, doc="Days acked events are kept (to answer resend requests) before pruning."
    )
    prune_interval_s: float = option(600.0, doc="Least seconds between two prune runs.")
    resend_queue_max: int = option(
        64, doc="Most pending resend requests; further ones are dropped and counted."
    )

    def __post_init__(self) -> None:
        if self.batch_max_events < 1 or self.batch_max_bytes < 256:
            raise ValueError("batch_max_events must be >= 1 and batch_max_bytes >= 256")
        if self.window_events < self.batch_max_events:
            raise ValueError("window_events must be >= batch_max_events")
        if self.ack_timeout_s <= 0 or self.keep_acked_days < 0 or self.resend_queue_max < 1:
            raise ValueError("ack_timeout_s > 0, keep_acked_days >= 0, resend_queue_max >= 1")


def encode_batch(bus_id: str, events: list[StoredEvent]) -> bytes:
    """The canonical JSON of a fares batch, built from the stored canonical event bytes."""
    head = b'{"bus_id":' + json.dumps(bus_id, ensure_ascii=False).encode() + b',"events":['
    return head + b",".join(e.data for e in events) + b"]}"


def _split(
    bus_id: str, events: list[StoredEvent], max_events: int, max_bytes: int
) -> list[list[StoredEvent]]:
    overhead = len(encode_batch(bus_id, []))
    out: list[list[StoredEvent]] = []
    cur: list[StoredEvent] = []
    size = overhead
    for e in events:
        add = len(e.data) + (1 if cur else 0)
        if cur and (len(cur) >= max_events or size + add > max_bytes):
            out.append(cur)
            cur, size, add = [], overhead, len(e.data)
        cur.append(e)
        size += add
    if cur:
        out.append(cur)
    return out


class MqttLink:
    """The bus's one reconnecting MQTT connection.

    Args:
        settings: broker settings (``[mqtt]``).
        bus_id: the bus (for the client id and the LWT topic).
        topics: topic names under the configured prefix.
        client_id: stable client id; default ``settings.client_id`` or ``busbell-edge-BUS``.
        session_factory: makes the session context manager, called as
            ``(settings, client_id, will=...)``; default :class:`busbell._mqtt.MqttSession`
            (tests pass an in-memory broker's).
        lwt: leave the retained last will ``{"state":"offline"}`` on ``status`` (the
            daemon's link); ``False`` for other clients of the bus (the driver page).
    """

    def __init__(
        self,
        settings: MqttSettings,
        bus_id: str,
        topics: Topics,
        *,
        client_id: str | None = None,
        session_factory: Callable[..., AbstractAsyncContextManager[Session]] = MqttSession,
        lwt: bool = True,
    ) -> None:
        self.settings = settings
        self._lwt = lwt
        self.bus_id = bus_id
        self.topics = topics
        self.client_id = client_id or settings.client_id or f"busbell-edge-{bus_id}"
        self._factory = session_factory
        self._routes: dict[str, Handler] = {}
        self._filters: dict[str, FilterHandler] = {}
        self._listeners: list[ConnectListener] = []
        self._session: Session | None = None
        self.connected = asyncio.Event()
        self.connects = 0
        self.disconnects = 0
        self.handler_errors = 0
        self.last_error = ""
        self.connected_since: float | None = None

    def route(self, topic: str, handler: Handler) -> None:
        """Deliver messages on ``topic`` (exact name) to ``handler`` (subscribed QoS 1)."""
        self._routes[topic] = handler

    def route_filter(self, topic_filter: str, handler: FilterHandler) -> None:
        """Deliver messages matching a wildcard filter to ``handler(topic, payload)``."""
        self._filters[topic_filter] = handler

    async def add_routes(self, routes: Mapping[str, Handler]) -> None:
        """Route more exact topics and subscribe them now if connected.

        They are also subscribed again after every reconnect.

        Raises:
            busbell.UplinkError: when the live subscribe failed (the routes stay
                registered and are subscribed on the next connection).
        """
        self._routes.update(routes)
        await self._live_subscribe(list(routes))

    async def remove_routes(self, topics: Sequence[str]) -> None:
        """Stop routing exact topics (or wildcard filters) and unsubscribe if connected.

        Raises:
            busbell.UplinkError: when the live unsubscribe failed.
        """
        gone = [t for t in topics if self._routes.pop(t, None) or self._filters.pop(t, None)]
        s = self._session
        if s is not None and gone:
            try:
                await s.unsubscribe(gone)
            except UplinkError:
                self._lost()
                raise

    async def add_filter(self, topic_filter: str, handler: FilterHandler) -> None:
        """:meth:`route_filter` and subscribe it now if connected.

        Raises:
            busbell.UplinkError: when the live subscribe failed.
        """
        self._filters[topic_filter] = handler
        await self._live_subscribe([topic_filter])

    async def _live_subscribe(self, topics: list[str]) -> None:
        s = self._session
        if s is None or not topics:
            return
        try:
            await s.subscribe(topics)
        except UplinkError:
            self._lost()
            raise

    def on_connect(self, listener: ConnectListener) -> None:
        """Call ``listener`` after every (re)connection, once subscribed."""
        self._listeners.append(listener)

    @property
    def is_connected(self) -> bool:
        """Whether a session is up."""
        return self._session is not None

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        expiry_s: int | None = None,
    ) -> None:
        """Publish on the current session (QoS 1 returns on PUBACK).

        Args:
            topic: the topic.
            payload: the payload.
            qos: 0 or 1.
            retain: whether the broker keeps it as the topic's retained message.
            expiry_s: MQTT 5 message expiry interval, if any.

        Raises:
            busbell.UplinkError: when not connected or the publish failed.
        """
        s = self._session
        if s is None:
            raise UplinkError("not connected")
        try:
            if expiry_s is None:
                await s.publish(topic, payload, qos=qos, retain=retain)
            else:
                await s.publish(topic, payload, qos=qos, retain=retain, expiry_s=expiry_s)
        except UplinkError:
            self._lost()
            raise

    async def wait_connected(self) -> None:
        """Return once a session is up."""
        await self.connected.wait()

    def _lost(self) -> None:
        self._session = None
        self.connected.clear()

    async def run(self) -> None:
        """Connect, dispatch, and reconnect with jittered backoff, until cancelled."""
        will = (self.topics.status(self.bus_id), OFFLINE_PAYLOAD, True) if self._lwt else None
        loop: ReconnectLoop[Session] = ReconnectLoop(
            lambda: self._factory(self.settings, self.client_id, will=will),
            initial_s=self.settings.backoff_initial_s,
            max_s=self.settings.backoff_max_s,
            on_change=self._changed,
        )
        await loop.run(functools.partial(self._connected, loop))

    def _changed(self, change: SessionChange) -> None:
        if change.state == "up":
            self.connects += 1
            self.connected_since = time.time()
            self.connected.set()
            _log.info(
                "uplink_connected",
                host=self.settings.host,
                port=self.settings.port,
                client_id=self.client_id,
            )
        elif change.state in ("lost", "failed"):
            self.last_error = change.error
            if change.state == "lost":
                self.disconnects += 1
                self.connected_since = None
                _log.warning("uplink_lost", error=change.error)
            else:
                _log.info("uplink_connect_failed", error=change.error)

    async def _connected(self, loop: ReconnectLoop[Session], s: Session) -> None:
        try:
            await self._dispatch(loop, s)
        finally:
            self._lost()

    async def _dispatch(self, loop: ReconnectLoop[Session], s: Session) -> None:
        wanted = [*self._routes, *self._filters]
        await s.subscribe(wanted)
        self._session = s
        late = [t for t in [*self._routes, *self._filters] if t not in set(wanted)]
        if late:  # routed while the first subscribe was under way
            await s.subscribe(late)
        loop.up()
        for listener in self._listeners:
            await listener()
        async for m in s.messages():
            handler = self._routes.get(m.topic)
            try:
                if handler is not None:
                    await handler(m.payload)
                else:
                    for topic_filter, fh in self._filters.items():
                        if topic_matches(topic_filter, m.topic):
                            await fh(m.topic, m.payload)
                            break
            except BusbellError as exc:
                self.handler_errors += 1
                _log.error("mqtt_handler_failed", topic=m.topic, error=str(exc))
            except Exception:  # a bug must not let one message stop the bus
                self.handler_errors += 1
                _log.exception("mqtt_handler_crashed", topic=m.topic)
        raise UplinkError("message stream ended")


@dataclass(slots=True)
class UplinkStats:
    """Counters of the fare uploader (status and metrics)."""

    batches_sent: int = 0
    events_sent: int = 0
    acks: int = 0
    ack_timeouts: int = 0
    resends_requested: int = 0
    resends_dropped: int = 0
    resend_pruned: int = 0
    malformed_acks: int = 0
    malformed_resends: int = 0
    store_errors: int = 0
    last_ack_at: float | None = None


def _int_field(obj: object, key: str) -> int | None:
    if not isinstance(obj, dict):
        return None
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        return None
    return v


class FareUploader:
    """Uploads recorded fare events and obeys the backend's acks and resend requests.

    Args:
        store: the fare store.
        bus_id: this bus.
        topics: topic names.
        settings: the ``[uplink]`` section.
        clock: wall clock (retention); monotonic: for the ack timeout.
    """

    def __init__(
        self,
        store: FareStore,
        bus_id: str,
        topics: Topics,
        settings: UplinkSettings,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.bus_id = bus_id
        self.topics = topics
        self.settings = settings
        self._clock = clock
        self._mono = monotonic
        self.stats = UplinkStats()
        self._sent_upto = store.acked_upto
        self._resends: collections.deque[tuple[int, int]] = collections.deque()
        self._wake = asyncio.Event()
        self._last_progress = monotonic()
        self._last_prune = -math.inf
        self._fares_topic = topics.fares(bus_id)
        self._ack_rejects = RejectLog(_log, "fare_ack_malformed")
        self._resend_rejects = RejectLog(_log, "fare_resend_malformed")

    def attach(self, link: MqttLink) -> None:
        """Route ``fares/ack`` and ``fares/resend`` to this uploader; re-send on connect."""
        link.route(self.topics.fares_ack(self.bus_id), self.handle_ack)
        link.route(self.topics.fares_resend(self.bus_id), self.handle_resend)
        link.on_connect(self.on_connected)

    def notify(self) -> None:
        """Tell the uploader new events were recorded."""
        self._wake.set()

    async def on_connected(self) -> None:
        """After a (re)connection: everything unacked is sent again."""
        self._sent_upto = self.store.acked_upto
        self._last_progress = self._mono()
        self._wake.set()

    async def handle_ack(self, payload: bytes) -> None:
        """Handle ``{"upto_seq": N}``; malformed ones are counted and ignored."""
        try:
            obj: object = loads_object(payload, CONTROL_LIMITS)
        except JsonRejected:
            obj = None
        upto = _int_field(obj, "upto_seq")
        if upto is None:
            self.stats.malformed_acks += 1
            self._ack_rejects.reject("malformed", payload=payload[:200].decode("utf-8", "replace"))
            return
        try:
            advanced = await self.store.ack(upto)
        except StoreError as exc:
            self.stats.store_errors += 1
            _log.error("fare_store_failed", op="ack", error=str(exc))
            return
        if not advanced:
            return
        self.stats.acks += 1
        self.stats.last_ack_at = self._clock()
        self._last_progress = self._mono()
        self._sent_upto = max(self._sent_upto, upto)
        _log.info("fare_batch_acked", upto_seq=upto, backlog=await self.store.backlog())
        self._wake.set()
        if self._mono() - self._last_prune >= self.settings.prune_interval_s:
            self._last_prune = self._mono()
            try:
                await self.store.prune(self.settings.keep_acked_days, self._clock())
            except StoreError as exc:
                self.stats.store_errors += 1
                _log.error("fare_store_failed", op="prune", error=str(exc))

    async def handle_resend(self, payload: bytes) -> None:
        """Handle ``{"from_seq": A, "to_seq": B}``; malformed ones are counted and ignored."""
        try:
            obj: object = loads_object(payload, CONTROL_LIMITS)
        except JsonRejected:
            obj = None
        a, b = _int_field(obj, "from_seq"), _int_field(obj, "to_seq")
        if a is None or b is None or a < 1 or b < a:
            self.stats.malformed_resends += 1
            self._resend_rejects.reject(
                "malformed", payload=payload[:200].decode("utf-8", "replace")
            )
            return
        if len(self._resends) >= self.settings.resend_queue_max:
            self.stats.resends_dropped += 1
            _log.warning("fare_resend_dropped", from_seq=a, to_seq=b)
            return
        self.stats.resends_requested += 1
        _log.info("fare_resend_requested", from_seq=a, to_seq=b)
        self._resends.append((a, b))
        self._wake.set()

    def health(self) -> dict[str, Any]:
        """Uplink health for the status message."""
        s = self.stats
        return {
            "sent_upto": self._sent_upto,
            "acked_upto": self.store.acked_upto,
            "last_seq": self.store.last_seq,
            "batches_sent": s.batches_sent,
            "acks": s.acks,
            "ack_timeouts": s.ack_timeouts,
            "resends": s.resends_requested,
            "resend_pruned": s.resend_pruned,
            "malformed_acks": s.malformed_acks,
            "malformed_resends": s.malformed_resends,
            "last_ack_age_s": (
                None if s.last_ack_at is None else round(self._clock() - s.last_ack_at, 1)
            ),
        }

    async def _send(self, link: MqttLink, events: list[StoredEvent], *, resend: bool) -> None:
        for batch in _split(
            self.bus_id, events, self.settings.batch_max_events, self.settings.batch_max_bytes
        ):
            payload = encode_batch(self.bus_id, batch)
            await link.publish(self._fares_topic, payload, qos=1)
            self.stats.batches_sent += 1
            self.stats.events_sent += len(batch)
            _log.info(
                "fare_batch_sent",
                from_seq=batch[0].seq,
                to_seq=batch[-1].seq,
                events=len(batch),
                bytes=len(payload),
                resend=resend,
            )
            if not resend:
                self._sent_upto = max(self._sent_upto, batch[-1].seq)
            await asyncio.sleep(0)  # let status/occupancy publishes and acks in

    async def _serve_resend(self, link: MqttLink, a: int, b: int) -> None:
        b = min(b, self.store.last_seq)
        if a > b:
            _log.warning("fare_resend_beyond_last", from_seq=a, last_seq=self.store.last_seq)
            return
        chunk = self.settings.batch_max_events * 10
        lo = a
        while lo <= b:
            hi = min(b, lo + chunk - 1)
            events = await self.store.range(lo, hi)
            missing = (hi - lo + 1) - len(events)
            if missing:
                self.stats.resend_pruned += missing
                _log.warning("fare_resend_pruned", from_seq=lo, to_seq=hi, missing=missing)
            if events:
                await self._send(link, events, resend=True)
            lo = hi + 1

    async def _pump(self, link: MqttLink) -> None:
        st = self.settings
        while True:
            self._wake.clear()
            if self._resends:
                a, b = self._resends.popleft()
                await self._serve_resend(link, a, b)
                continue
            acked = self.store.acked_upto
            self._sent_upto = max(self._sent_upto, acked)
            inflight = self._sent_upto - acked
            if self.store.last_seq > self._sent_upto and inflight < st.window_events:
                if inflight == 0:
                    self._last_progress = self._mono()
                room = st.window_events - inflight
                events = await self.store.unacked(
                    min(room, st.batch_max_events * 5), after_seq=self._sent_upto
                )
                await self._send(link, events, resend=False)
                continue
            timeout = None
            if inflight > 0:
                timeout = max(0.0, self._last_progress + st.ack_timeout_s - self._mono())
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                self.stats.ack_timeouts += 1
                _log.warning(
                    "fare_ack_timeout",
                    sent_upto=self._sent_upto,
                    acked_upto=self.store.acked_upto,
                )
                self._sent_upto = self.store.acked_upto
                self._last_progress = self._mono()

    async def run(self, link: MqttLink) -> None:
        """Upload while connected; wait for the link to come back when it drops."""
        while True:
            await link.wait_connected()
            try:
                await self._pump(link)
            except UplinkError as exc:
                _log.info("fare_upload_paused", error=str(exc))
                await asyncio.sleep(0.05)
            except StoreError as exc:
                self.stats.store_errors += 1
                _log.error("fare_store_failed", op="read", error=str(exc))
                await asyncio.sleep(1.0)
