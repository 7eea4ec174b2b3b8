"""The bell relay: the thin MQTT adapter around :class:`edge._bells.BellCore`.

It rides the daemon's one :class:`~edge._uplink.MqttLink` (no connection of its own):

* subscribes to the waits of the bus's route (``routes/{route}/stops/+/waits/+``) and
  follows trip changes (unsubscribe the old route, subscribe the new one);
* follows ``requests/{id}/status`` of every tracked wait (one SUBSCRIBE packet per 100),
  which is how a restarted bus takes back its own ``seen``/``acknowledged`` and how a
  wait served by another bus disappears;
* handles ``buses/{bus}/driver/ack``;
* publishes the retained ``buses/{bus}/display`` (display model v1) on every change with
  a leading-edge throttle: the first change after a quiet ``coalesce_ms`` goes out at
  once, changes within the window after a publish go out together at its end; and at
  least every ``heartbeat_s``;
* publishes retained ``requests/{id}/status`` transitions (message expiry: until the
  wait expires, plus an hour);
* records each missed stop in the fare store (the same chain, signed with the device key,
  uploaded and acked like segments); a store failure keeps the draft and retries.

Subscriptions are registered on the link, so they are made again after every reconnect;
retained waits and statuses then rebuild the state (also after a restart).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from busbell import BusbellError, StoreError, Topics, canonical_bytes, get_logger
from edge._bells import BellCore, BellOutput, StatusOut, VehicleView
from edge._bells_record import MissedDraft
from edge._store import FareStore
from edge._uplink import MqttLink

__all__ = ["BellRelay", "RelayStats"]

_log = get_logger("edge.bells")
_STATUS_KEEP_S = 3600


@dataclass(slots=True)
class RelayStats:
    """Counters of the relay (in the bus status)."""

    displays_published: int = 0
    statuses_published: int = 0
    missed_recorded: int = 0
    publish_failures: int = 0
    store_retries: int = 0
    resubscribes: int = 0


class BellRelay:
    """Feeds the bell core from MQTT and the pipeline; publishes what it says.

    Args:
        core: the sans-I/O bell state.
        link: the daemon's MQTT link.
        topics: topic names.
        clock: the bus's time (UNIX seconds; the daemon's GNSS clock).
        monotonic: for the coalescing window and heartbeat.
        clock_steps: the sum of the bus clock's steps so far (the daemon's
            :attr:`edge._clock.GnssClock.stepped_s`); a change is passed to the core
            (:meth:`BellCore.clock_stepped`) before its next input. ``None``: a clock
            that never steps.
        clock_synced: whether ``clock`` is on GNSS time yet (the daemon's
            ``GnssClock.source == "gnss"``); passed to the core
            (:attr:`BellCore.clock_synced`) before each input, so nothing is judged
            expired on the system clock before the first fix. ``None``: always.
    """

    def __init__(
        self,
        core: BellCore,
        link: MqttLink,
        topics: Topics,
        *,
        clock: Callable[[], float],
        monotonic: Callable[[], float] = time.monotonic,
        clock_steps: Callable[[], float] | None = None,
        clock_synced: Callable[[], bool] | None = None,
    ) -> None:
        self.core = core
        self.link = link
        self.topics = topics
        self.bus_id = core.bus_id
        self.params = core.params
        self._clock = clock
        self._clock_steps = clock_steps
        self._clock_synced = clock_synced
        self._stepped_s = 0.0 if clock_steps is None else clock_steps()
        self._mono = monotonic
        self.stats = RelayStats()
        self.store: FareStore | None = None
        self.on_recorded: Callable[[], None] | None = None
        self.vehicle: VehicleView | None = None
        self._outbox: collections.deque[StatusOut] = collections.deque()
        self._missed: list[MissedDraft] = []
        self._wake = asyncio.Event()
        self._display_wake = asyncio.Event()
        self._published_version = -1
        self._last_publish = -math.inf
        self._force_display = True
        self._wait_filter: str | None = None
        self._wait_route: str | None = None
        self._status_topics: dict[str, str] = {}
        self._tracked_version = -1
        self._display_topic = topics.display(self.bus_id)
        link.route(topics.driver_ack(self.bus_id), self._on_ack)
        link.on_connect(self._on_connected)

    def clock(self) -> float:
        """The bus's time, after telling the core of any step of the clock since last read."""
        self.sync_clock()
        return self._clock()

    def sync_clock(self) -> None:
        """Pass a step of the bus's clock to the core (times it holds move with it)."""
        if self._clock_synced is not None:
            self.core.clock_synced = self._clock_synced()
        if self._clock_steps is None:
            return
        stepped = self._clock_steps()
        if stepped != self._stepped_s:
            self.core.clock_stepped(stepped - self._stepped_s)
            self._stepped_s = stepped

    # -- inputs (synchronous: the daemon's pipeline task calls these) ------------------------

    def _take(self, outputs: list[BellOutput]) -> None:
        for o in outputs:
            if isinstance(o, StatusOut):
                self._outbox.append(o)
            else:
                self._missed.append(o)
        core = self.core
        if (
            outputs
            or core.tracked_version != self._tracked_version
            or core.route_id != self._wait_route
        ):
            # a trip change must re-subscribe at once, not on the next tick: waits
            # published in between would reach the bus only at that subscribe
            self._wake.set()
        if core.version != self._published_version:
            self._display_wake.set()

    def vehicle_updated(self, t: float) -> None:
        """The vehicle context changed (a vehicle record was fed)."""
        self.sync_clock()
        if self.vehicle is not None:
            self._take(self.core.on_vehicle(t, self.vehicle))

    def flags(self, t: float, rid: bytes, flags: int, on_board: bool) -> None:
        """An accepted advert with ALIGHT/ASSIST (the pipeline's flag listener)."""
        self.sync_clock()
        self._take(self.core.on_flags(t, rid, flags, on_board))

    def set_on_board(self, n: int) -> None:
        """Riders on board now."""
        if n != self.core.on_board:
            self.core.set_on_board(n)
            self._take([])

    async def _on_wait(self, topic: str, payload: bytes) -> None:
        parsed = self.topics.parse(topic)
        if parsed is None or parsed.kind != "wait":
            return
        ids = parsed.ids
        self._take(
            self.core.on_wait(self.clock(), ids["route"], ids["stop"], ids["request"], payload)
        )

    def _status_handler(self, request_id: str) -> Callable[[bytes], Any]:
        async def handle(payload: bytes) -> None:
            self._take(self.core.on_status(self.clock(), request_id, payload))

        return handle

    async def _on_ack(self, payload: bytes) -> None:
        self._take(self.core.on_ack(self.clock(), payload))

    async def _on_connected(self) -> None:
        self._force_display = True
        self._wake.set()
        self._display_wake.set()

    # -- the task ----------------------------------------------------------------------------

    async def run(self) -> None:
        """The ``.bells`` task: the display publisher beside statuses, subscriptions, records.

        The display has a task of its own (``.bells.display``) so that a driver's screen
        never waits behind a status publish or a SUBSCRIBE round trip.
        """
        async with asyncio.TaskGroup() as tg:
            name = asyncio.current_task()
            prefix = name.get_name() if name is not None else "bells"
            tg.create_task(self._display_task(), name=f"{prefix}.display")
            await self._housekeeping()

    async def _housekeeping(self) -> None:
        tick_s = self.params.tick_s
        next_tick = self._mono()
        while True:
            now = self._mono()
            if now >= next_tick:
                next_tick = now + tick_s
                t = self.clock()
                self._take(self.core.tick(t))
                if self.vehicle is not None:
                    self._take(self.core.on_vehicle(t, self.vehicle))
            self._wake.clear()
            await self._flush_statuses()
            await self._sync_subscriptions()
            await self._record_missed()
            timeout = next_tick - self._mono()
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()

    async def _display_task(self) -> None:
        while True:
            self._display_wake.clear()
            await self._publish_display_if_due()
            due = self._display_due_at()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - self._mono())):
                    await self._display_wake.wait()

    async def _sync_subscriptions(self) -> None:
        core = self.core
        want = None if core.route_id is None else self.topics.route_waits(core.route_id)
        self._wait_route = core.route_id
        if want != self._wait_filter:
            old = self._wait_filter
            self._wait_filter = want
            try:
                if old is not None:
                    await self.link.remove_routes([old])
                if want is not None:
                    await self.link.add_filter(want, self._on_wait)
                self.stats.resubscribes += 1
                _log.info("bell_waits_followed", route_id=core.route_id, filter=want)
            except BusbellError as exc:
                _log.info("bell_subscribe_failed", error=str(exc))
        if core.tracked_version == self._tracked_version:
            return
        self._tracked_version = core.tracked_version
        tracked = core.tracked()
        gone = [
            self._status_topics.pop(rid) for rid in list(self._status_topics) if rid not in tracked
        ]
        new: dict[str, Callable[[bytes], Any]] = {}
        for rid in sorted(tracked - self._status_topics.keys()):
            topic = self.topics.request_status(rid)
            self._status_topics[rid] = topic
            new[topic] = self._status_handler(rid)
        try:
            if gone:
                await self.link.remove_routes(gone)
            if new:
                await self.link.add_routes(new)
        except BusbellError as exc:
            _log.info("bell_subscribe_failed", error=str(exc))

    def _display_due_at(self) -> float:
        if self.core.version == self._published_version and not self._force_display:
            return self._last_publish + self.params.heartbeat_s
        return self._last_publish + self.params.coalesce_ms / 1000.0

    async def _publish_display_if_due(self) -> None:
        if self._mono() < self._display_due_at():
            return
        if not self.link.is_connected:
            await self.link.wait_connected()
            return
        version = self.core.version
        started = self._mono()
        model = self.core.display(self.clock(), online=True)
        try:
            await self.link.publish(self._display_topic, canonical_bytes(model), retain=True)
        except BusbellError as exc:
            self.stats.publish_failures += 1
            _log.info("display_publish_failed", error=str(exc))
            return
        self._published_version = version
        self._force_display = False
        # the window runs from the publish, not from its PUBACK: a slow acknowledgement
        # must not add to the wait of the next change
        self._last_publish = started
        self.stats.displays_published += 1

    async def _flush_statuses(self) -> None:
        while self._outbox and self.link.is_connected:
            s = self._outbox[0]
            req = self.core.wait_of(s.request_id)
            keep = _STATUS_KEEP_S
            if req is not None:
                keep += max(0, int(req["expires_t"] - s.t))
            payload = {
                "request_id": s.request_id,
                "state": s.state,
                "bus_id": self.bus_id,
                "t": s.t,
            }
            try:
                await self.link.publish(
                    self.topics.request_status(s.request_id),
                    canonical_bytes(payload),
                    retain=True,
                    expiry_s=keep,
                )
            except BusbellError as exc:
                self.stats.publish_failures += 1
                _log.info("request_status_publish_failed", error=str(exc))
                return
            self._outbox.popleft()
            self.stats.statuses_published += 1

    async def _record_missed(self) -> None:
        if not self._missed or self.store is None:
            return
        try:
            events = await self.store.append_many(self._missed)
        except StoreError as exc:
            self.stats.store_retries += 1
            _log.error("fare_store_failed", op="append_missed", error=str(exc))
            return
        self._missed.clear()
        self.stats.missed_recorded += len(events)
        if self.on_recorded is not None:
            self.on_recorded()

    async def flush(self) -> None:
        """Record pending missed stops (shutdown); statuses go out if still connected."""
        await self._record_missed()
        await self._flush_statuses()

    def health(self) -> dict[str, Any]:
        """For the bus status message."""
        s = self.stats
        return {
            "route_id": self.core.route_id,
            "live_waits": self.core.live_waits(),
            "shown": len(list(self.core.shown_request_ids())),
            "stop_requests": self.core.stop_requested(),
            "on_board": self.core.on_board,
            "displays_published": s.displays_published,
            "statuses_published": s.statuses_published,
            "missed_recorded": s.missed_recorded,
            "pending_missed": len(self._missed),
            "rejected": dict(sorted(self.core.rejected.items())),
            "counts": dict(sorted(self.core.counts.items())),
        }
