"""The edge daemon: scanner -> pipeline -> fare store -> uploader, status, occupancy, bells.

:class:`EdgeDaemon` owns one :class:`asyncio.TaskGroup` of named tasks
(``busbell[BUS].scanner``, ``.pipeline``, ``.vehicle``, ``.uplink``, ``.fares``,
``.status``). Advertisements go through a bounded queue (when full the oldest is
dropped and counted); vehicle signals arrive on ``buses/{bus}/vehicle/gnss|doors|trip``
as trace-v1 bodies without ``kind``; closed segments are recorded in the
:class:`~edge._store.FareStore` (never dropped: a failed write is retried) and uploaded
by the :class:`~edge._uplink.FareUploader`. The bell relay (:mod:`edge._bells_mqtt`) is fed
the vehicle context after each vehicle record and the ALIGHT/ASSIST flags of accepted
adverts (with whether the rid is on board); it publishes the driver display model and
request statuses and records missed stops in the same store. :func:`replay_records` runs
the same pipeline -> store path over a recorded trace in virtual time. With
``[driver_page] enabled`` the task ``.driver_page`` serves the driver display
(:mod:`edge._driver_page`) from the daemon's own MQTT link. With ``source = "ble"`` and
``[beacon] enabled`` the task ``.beacon`` keeps the bus beacon advertised over BlueZ
(:mod:`edge._advertiser`), its ``seq`` recomputed from the vehicle context after each batch
of records (:mod:`edge._beacon`); it never stops the scanner.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import IO, Any, Protocol

from busbell import (
    AdvRecord,
    BusbellError,
    ContractError,
    DeviceKey,
    GnssRecord,
    JsonLimits,
    JsonRejected,
    KeyFileError,
    RejectLog,
    StoreError,
    Topics,
    TraceError,
    TraceRecord,
    __version__,
    bus_kex_private,
    canonical_bytes,
    day_of,
    get_logger,
    load_public_hex,
    loads_object,
    parse_record,
    read_fleet_keys,
)
from busbell._mqtt import MqttSession, Session
from edge._advertiser import BeaconAdvertiser
from edge._beacon import BeaconState
from edge._bells import BellCore
from edge._bells_mqtt import BellRelay
from edge._build import EdgeBuild, edge_build
from edge._checkpoint import Checkpointer
from edge._clock import GnssClock
from edge._driver_page import DriverDisplay, serve_driver_page
from edge._events import EventBuilder
from edge._keyring import Denylist, FleetKeyring
from edge._pipeline import EdgePipeline
from edge._segment import SegmentDraft
from edge._source import AdvertisementSource
from edge._store import FareStore
from edge._uplink import FareUploader, MqttLink
from edge.config import EdgeConfig

__all__ = ["DaemonStats", "EdgeDaemon", "Pipeline", "cancel_and_wait", "replay_records"]

_log = get_logger("edge.daemon")
_VEHICLE_KINDS = {"gnss": "gnss", "doors": "door", "trip": "trip"}
STORE_RETRY_S = 1.0
"""While the fare store fails, closed segments are retried this often (kept in memory)."""
STORE_LOG_EVERY_S = 60.0
"""While the fare store fails, ``fare_store_failed`` is logged this often after the first."""
VEHICLE_LIMITS = JsonLimits(max_bytes=4096, max_depth=2)
"""A vehicle signal is one flat object (trace v1 body); anything bigger is hostile."""


class Pipeline(Protocol):
    """What the daemon needs of :class:`edge._pipeline.EdgePipeline`."""

    @property
    def stats(self) -> Any:
        """Advert counters (seen, accepted, rejected by reason, tokens in range)."""
        ...

    def feed(self, rec: TraceRecord) -> list[SegmentDraft]:
        """Feed one record; returns the segments it closed."""
        ...

    def finish(self, t: float) -> list[SegmentDraft]:
        """Close every open segment at ``t``."""
        ...

    def on_board(self) -> int:
        """Riders on board now."""
        ...

    def active_flags(self) -> dict[str, int]:
        """Flags (stop request, assist, wait) active now, by name."""
        ...

    def fleet_keys_changed(self, days: Iterable[int]) -> None:
        """These days' fleet keys were replaced: forget what was accepted under the old."""
        ...


def pop_earliest(
    vehicle: collections.deque[TraceRecord], adverts: collections.deque[AdvRecord]
) -> TraceRecord:
    """Pop the earlier head of two time-ordered queues (a vehicle record on a tie).

    Vehicle signals and advertisements arrive on different paths (MQTT and the scanner);
    merging them by time feeds the pipeline in the order a recorded trace replays them,
    so a door opening is seen before the advertisements that came after it.

    Raises:
        IndexError: both queues are empty.
    """
    if vehicle and (not adverts or vehicle[0].t <= adverts[0].t):
        return vehicle.popleft()
    return adverts.popleft()


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until they end, cancelling again any that go on.

    On Python 3.11 ``asyncio.wait_for`` swallows a cancel that arrives just as the awaited
    thing completes (a task then goes on as if nothing happened). The MQTT session no
    longer waits with it (``MqttSession._keep_cancels``); this re-cancel keeps ``run``
    from hanging on any other library that still does.
    """
    pending = set(tasks)
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)


def stats_dict(stats: Any) -> dict[str, Any]:
    """The pipeline's stats as a plain dict (dataclass, mapping or object)."""
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        return dataclasses.asdict(stats)
    if isinstance(stats, Mapping):
        return dict(stats)
    as_dict = getattr(stats, "as_dict", None)
    if callable(as_dict):
        out: dict[str, Any] = as_dict()
        return out
    return {k: v for k, v in vars(stats).items() if not k.startswith("_")}


def _rejected(stats: Mapping[str, Any]) -> dict[str, int]:
    for key in ("rejected", "rejected_by_reason", "rejects"):
        v = stats.get(key)
        if isinstance(v, Mapping):
            return {str(k): int(n) for k, n in v.items()}
    return {}


@dataclasses.dataclass(slots=True)
class DaemonStats:
    """Counters of the daemon itself."""

    adverts_queued: int = 0
    adverts_dropped: int = 0
    vehicle_messages: int = 0
    vehicle_malformed: int = 0
    vehicle_dropped: int = 0
    scanner_restarts: int = 0
    segments_closed: int = 0
    store_retries: int = 0
    status_published: int = 0
    adverts_denied: int = 0
    key_bundles: int = 0
    key_bundles_rejected: int = 0
    denylist_rejected: int = 0
    denylist_stale: int = 0


class EdgeDaemon:
    """One bus's onboard daemon.

    Args:
        config: the edge configuration.
        source: the advertisement source (BLE, stream or trace).
        clock: the bus's time (UNIX seconds); default a :class:`GnssClock`, which the
            daemon disciplines with every fix on the GNSS topic.
        pipeline: the sans-I/O pipeline; built from the config (GTFS, fleet keys) if
            ``None``.
        device_key: the signing key; loaded from ``config.device_key`` if ``None``.
        fleet_keys: ``{day: key}``; read from ``config.fleet_keys`` if ``None``.
        monotonic: a monotonic clock (seconds); the daemon's start time is read from it
            when it is built, and the fleet-key warning waits on it for a minute
            without GNSS (injectable for tests).
        session_factory: makes the broker session of the link (see
            :class:`~edge._uplink.MqttLink`); tests pass an in-memory broker's.
    """

    def __init__(
        self,
        config: EdgeConfig,
        source: AdvertisementSource,
        clock: Callable[[], float] | None = None,
        *,
        pipeline: Pipeline | None = None,
        device_key: DeviceKey | None = None,
        fleet_keys: Mapping[int, bytes] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        session_factory: Callable[..., AbstractAsyncContextManager[Session]] = MqttSession,
    ) -> None:
        self.config = config
        self.bus_id = config.bus_id
        self.source = source
        self.clock: Callable[[], float] = GnssClock() if clock is None else clock
        self._gnss_clock = self.clock if isinstance(self.clock, GnssClock) else None
        self.topics = Topics(config.mqtt.prefix)
        key = device_key if device_key is not None else DeviceKey.load(config.device_key)
        self.keyring = FleetKeyring(config.fleet_keys, self.bus_id, bus_kex_private(key))
        if fleet_keys is not None:
            self.keyring.keys.clear()
            self.keyring.keys.update(fleet_keys)
        elif not config.fleet_keys.exists():
            read_fleet_keys(config.fleet_keys)  # a clear KeyFileError for a missing file
        self.fleet_keys = self.keyring.keys
        backend_key = config.denylist_public_key
        self.denylist = Denylist(self.bus_id, load_public_hex(backend_key) if backend_key else None)
        self.pipeline: Pipeline = pipeline if pipeline is not None else self._make_pipeline()
        self.build: EdgeBuild = edge_build()
        """The build of the classifier and the pipeline: compiled (mypyc), pure or mixed."""
        self.builder = EventBuilder(self.bus_id, key)
        self.link = MqttLink(config.mqtt, self.bus_id, self.topics, session_factory=session_factory)
        self.stats = DaemonStats()
        self.vehicle_rejects = RejectLog(_log, "vehicle_message_malformed")
        self._key_rejects = RejectLog(_log, "fleet_keys_rejected")
        self._denylist_rejects = RejectLog(_log, "denylist_rejected")
        self.store: FareStore | None = None
        self.uploader: FareUploader | None = None
        self._adverts: collections.deque[AdvRecord] = collections.deque()
        self._vehicle: collections.deque[TraceRecord] = collections.deque()
        self._pending: list[SegmentDraft] = []
        self._store_error: str | None = None
        self._store_retry_at = 0.0
        self._store_logged_at = float("-inf")
        self._checkpointer: Checkpointer | None = None
        self._wake = asyncio.Event()
        self._status_now = asyncio.Event()
        self._stop = asyncio.Event()
        self._last_on_board = -1
        self._upload_lag_s = 0.0
        self._fleet_warned_day: int | None = None
        self._monotonic = monotonic
        self._started = monotonic()
        self._metrics_server: Any = None
        for signal in _VEHICLE_KINDS:
            self.link.route(self.topics.vehicle(self.bus_id, signal), self._vehicle_handler(signal))
        self.link.route(self.topics.fleet_keys(self.bus_id), self._on_key_bundle)
        self.link.route(self.topics.denylist(), self._on_denylist)
        self.link.on_connect(self._on_connected)
        self.driver_page: DriverDisplay | None = None
        if config.driver_page.enabled:
            self.driver_page = DriverDisplay(
                self.bus_id, self.topics, self.link, config.driver_page, clock=self.clock
            )
        self.beacon_state = BeaconState(self.bus_id)
        self.beacon: BeaconAdvertiser | None = None
        """The bus beacon on the air (``source = "ble"`` with ``[beacon] enabled`` only)."""
        if config.beacon.enabled and config.source == "ble":
            self.beacon = BeaconAdvertiser(config.beacon, config.scanner, self.beacon_state.payload)
        self.bells: BellRelay | None = None
        vehicle = getattr(self.pipeline, "vehicle", None)
        if config.bells.enabled and vehicle is not None:
            core = BellCore(self.bus_id, vehicle.feed, config.bells)
            gnss = self._gnss_clock
            self.bells = BellRelay(
                core,
                self.link,
                self.topics,
                clock=self.clock,
                clock_steps=None if gnss is None else lambda: gnss.stepped_s,
                clock_synced=None if gnss is None else lambda: gnss.source == "gnss",
            )
            self.bells.vehicle = vehicle
            if hasattr(self.pipeline, "flag_listener"):
                self.pipeline.flag_listener = self.bells.flags

    def _make_pipeline(self) -> Pipeline:
        from busbell import TokenVerifier, load_gtfs
        from edge._pipeline import EdgePipeline

        params = self.config.classifier
        verifier = TokenVerifier(self.fleet_keys, window_s=params.tq_window_s)
        return EdgePipeline(self.bus_id, load_gtfs(self.config.gtfs), verifier, params)

    # --- inputs -----------------------------------------------------------------------

    def on_advert(self, rec: AdvRecord) -> None:
        """The advertisement sink: queue, dropping the oldest when full."""
        if len(self.denylist):
            payload = rec.mfr.get(self.config.classifier.company_id)
            if payload is not None and self.denylist.denies(payload[3:15]):
                self.stats.adverts_denied += 1
                return
        q = self._adverts
        if len(q) >= self.config.advert_queue_max:
            q.popleft()
            self.stats.adverts_dropped += 1
        q.append(rec)
        self.stats.adverts_queued += 1
        self._wake.set()

    async def _on_key_bundle(self, payload: bytes) -> None:
        if not payload:
            return
        try:
            days = self.keyring.apply_bundle(payload, self.clock())
        except (ContractError, KeyFileError) as exc:
            self.stats.key_bundles_rejected += 1
            reason = exc.reason if isinstance(exc, ContractError) else "key_file"
            self._key_rejects.reject(reason, error=str(exc))
            return
        self.stats.key_bundles += 1
        if days:  # (a replaced key must stop verifying at once, not when caches roll over)
            self.pipeline.fleet_keys_changed(days)
        _log.info(
            "fleet_keys_received", new_days=days, days_remaining=self.fleet_keys_days_remaining()
        )
        self._status_now.set()

    async def _on_denylist(self, payload: bytes) -> None:
        try:
            changed = self.denylist.apply(payload)
        except ContractError as exc:
            self.stats.denylist_rejected += 1
            self._denylist_rejects.reject(exc.reason, error=str(exc))
            return
        if not changed:
            if payload:
                self.stats.denylist_stale += 1
                _log.info("denylist_not_newer", version=self.denylist.version)
            return
        if changed:
            _log.info(
                "denylist_updated",
                version=self.denylist.version,
                rids=len(self.denylist),
                bus_revoked=self.denylist.bus_revoked,
            )
            if self.denylist.bus_revoked:
                _log.error("bus_device_revoked", bus_id=self.bus_id)
            self._status_now.set()

    def _vehicle_handler(self, signal: str) -> Callable[[bytes], Any]:
        kind = _VEHICLE_KINDS[signal]

        async def handle(payload: bytes) -> None:
            self.stats.vehicle_messages += 1
            try:
                obj = loads_object(payload, VEHICLE_LIMITS)
                rec = parse_record({**obj, "kind": kind}, 0)
            except (JsonRejected, TraceError) as exc:
                self.stats.vehicle_malformed += 1
                reason = exc.reason if isinstance(exc, JsonRejected) else "invalid"
                self.vehicle_rejects.reject(reason, signal=signal, error=str(exc))
                return
            if self._gnss_clock is not None and type(rec) is GnssRecord:
                self._gnss_clock.observe(rec.t)
            if len(self._vehicle) >= 10000:
                self._vehicle.popleft()
                self.stats.vehicle_dropped += 1
            self._vehicle.append(rec)
            self._wake.set()

        return handle

    # --- tasks ------------------------------------------------------------------------

    async def _scanner_task(self) -> None:
        from busbell._mqtt import SessionChange, retry_with_backoff

        def failed(change: SessionChange) -> None:
            self.stats.scanner_restarts += 1
            _log.error("scanner_failed", error=change.error)

        await retry_with_backoff(
            lambda: self.source.run(self.on_advert),
            initial_s=1.0,
            max_s=30.0,
            retry_on=(BusbellError,),
            on_failure=failed,
        )
        _log.info("scanner_ended", source=getattr(self.source, "name", "?"))

    async def _record(self, drafts: list[SegmentDraft], *, force: bool = False) -> None:
        """Record closed segments; on a store failure keep them and retry (never drop).

        While the store fails (a full disk), a retry is made at most every
        :data:`STORE_RETRY_S` however often the pipeline wakes (every advert wakes it),
        and the failure is logged when it starts and then every :data:`STORE_LOG_EVERY_S`;
        ``force`` (the shutdown flush) tries at once.
        """
        self.stats.segments_closed += len(drafts)
        self._pending.extend(drafts)
        if not self._pending:
            return
        assert self.store is not None
        now = self._monotonic()
        if self._store_error is not None and now < self._store_retry_at and not force:
            return
        try:
            if self._checkpointer is not None:  # with the pipeline's state, one transaction
                await self._checkpointer.record(self._pending)
            else:
                await self.store.append_many(self._pending)
        except StoreError as exc:
            self.stats.store_retries += 1
            self._store_retry_at = now + STORE_RETRY_S
            first = self._store_error is None
            if first:
                self._status_now.set()  # the status says so at once, not at the next tick
            self._store_error = str(exc)
            if first or now - self._store_logged_at >= STORE_LOG_EVERY_S:
                self._store_logged_at = now
                _log.error(
                    "fare_store_failed",
                    op="append",
                    pending=len(self._pending),
                    failures=self.stats.store_retries,
                    error=str(exc),
                )
            return
        if self._store_error is not None:
            _log.info("fare_store_recovered", recorded=len(self._pending))
            self._store_error = None
            self._status_now.set()
        self._pending.clear()
        if self.uploader is not None:
            self.uploader.notify()

    async def _pipeline_task(self) -> None:
        feed = self.pipeline.feed
        bells = self.bells
        while True:
            self._wake.clear()
            drafts: list[SegmentDraft] = []
            n = 0
            while self._vehicle or self._adverts:
                rec = pop_earliest(self._vehicle, self._adverts)
                drafts.extend(feed(rec))
                if bells is not None and type(rec) is not AdvRecord:
                    bells.vehicle_updated(rec.t)
                n += 1
                if n % 500 == 0:
                    await asyncio.sleep(0)
            if bells is not None:
                bells.set_on_board(self.pipeline.on_board())
            if n:
                self._update_beacon()
            if drafts or self._pending:
                await self._record(drafts)
            elif self._checkpointer is not None and self._checkpointer.due():
                failing = self._checkpointer.last_error is not None
                await self._checkpointer.save()
                if (self._checkpointer.last_error is not None) != failing:
                    self._status_now.set()  # the store stopped (or resumed) taking writes
            if self.pipeline.on_board() != self._last_on_board:
                self._status_now.set()
            if self._pending:
                try:
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            else:
                await self._wake.wait()

    def _update_beacon(self) -> None:
        """Advertise the beacon of the vehicle's state now (a new ``seq`` at most per stop)."""
        vehicle = getattr(self.pipeline, "vehicle", None)
        if self.beacon is None or vehicle is None:
            return
        payload = self.beacon_state.update(vehicle)
        if payload is not None:
            self.beacon.set_payload(payload)

    async def _vehicle_task(self) -> None:
        """Keep vehicle signal handling alive; reports when no GNSS arrives for long."""
        last = self.stats.vehicle_messages
        while True:
            await asyncio.sleep(30.0)
            if self.stats.vehicle_messages == last and self.link.is_connected:
                _log.warning("vehicle_signals_silent", seconds=30)
            last = self.stats.vehicle_messages

    def fleet_keys_days_remaining(self) -> int:
        """Days ahead of today (UTC) the fleet keys cover (-1 when even today is missing)."""
        return self.keyring.days_ahead(self.clock())

    def status(self) -> dict[str, Any]:
        """The retained status message."""
        ps = stats_dict(self.pipeline.stats)
        days = self.fleet_keys_days_remaining()
        # judged on the system clock before GNSS has spoken, the days may be far off
        warn = days < self.config.status.fleet_keys_warn_days and self._clock_settled()
        today = day_of(self.clock())
        if warn and self._fleet_warned_day != today:
            self._fleet_warned_day = today
            _log.warning("fleet_keys_running_out", days_remaining=days)
        uplink: dict[str, Any] = {
            "connected": self.link.is_connected,
            "connects": self.link.connects,
            "disconnects": self.link.disconnects,
            "last_error": self.link.last_error,
        }
        if self.uploader is not None:
            uplink.update(self.uploader.health())
        store = self.store
        return {
            "state": "online",
            "bus_id": self.bus_id,
            "t": round(self.clock(), 3),
            "version": __version__,
            "build": self.build,
            "backlog": 0 if store is None else store.last_seq - store.acked_upto,
            "upload_lag_s": round(self._upload_lag_s, 1),
            "on_board": self.pipeline.on_board(),
            "flags": self.pipeline.active_flags(),
            "scanner": {
                "source": getattr(self.source, "name", type(self.source).__name__),
                "adverts_queued": self.stats.adverts_queued,
                "adverts_dropped": self.stats.adverts_dropped,
                "restarts": self.stats.scanner_restarts,
                "pipeline": ps,
            },
            "rejected": _rejected(ps),
            "tokens_in_range": int(ps.get("tokens_in_range", 0) or 0),
            "vehicle": {
                "messages": self.stats.vehicle_messages,
                "malformed": self.stats.vehicle_malformed,
                "rejected": dict(self.vehicle_rejects.counts),
            },
            "uplink": uplink,
            "store": self._store_status(),
            "fleet_keys": {"days_remaining": days, "warning": warn},
            "clock": self._clock_status(),
            "denylist": {
                "version": self.denylist.version,
                "rids": len(self.denylist),
                "bus_revoked": self.denylist.bus_revoked,
                "adverts_denied": self.stats.adverts_denied,
                "rejected": dict(self._denylist_rejects.counts),
                "stale": self.stats.denylist_stale,
            },
            **({"driver_page": self.driver_page.health()} if self.driver_page else {}),
            "bells": None if self.bells is None else self.bells.health(),
            "beacon": None if self.beacon is None else self.beacon.health(),
        }

    def _store_status(self) -> dict[str, Any]:
        """Whether the fare store takes writes (``ok`` false: a disk full, say).

        Both recording closed segments and the periodic classifier snapshot count.

        ``pending`` segments are held in memory and retried every second until the store
        takes them; bells, display and uploads of what is recorded go on meanwhile.
        """
        ckpt = self._checkpointer
        ckpt_error = None if ckpt is None else ckpt.last_error
        return {
            "ok": self._store_error is None and ckpt_error is None,
            "pending": len(self._pending),
            "failures": self.stats.store_retries + (0 if ckpt is None else ckpt.failed),
            "last_error": self._store_error or ckpt_error,
        }

    def _clock_settled(self) -> bool:
        """Whether the bus's time is good enough to warn about the day's fleet keys.

        It is once GNSS has given a fix, or when none came in the first minute (the
        system clock it is, then).
        """
        gc = self._gnss_clock
        return gc is None or gc.source == "gnss" or self._monotonic() - self._started > 60.0

    def _clock_status(self) -> dict[str, Any]:
        gc = self._gnss_clock
        if gc is None:
            return {"source": "external"}
        return {
            "source": gc.source,
            "offset_s": round(gc.offset_s(), 3),
            "fixes_ignored": gc.fixes_ignored,
        }

    def occupancy(self) -> dict[str, Any]:
        """The retained occupancy message."""
        return {
            "bus_id": self.bus_id,
            "t": round(self.clock(), 3),
            "on_board": self.pipeline.on_board(),
        }

    async def _publish_status(self) -> None:
        if self.store is not None:
            created = await self.store.oldest_unacked_created()
            self._upload_lag_s = 0.0 if created is None else max(0.0, time.time() - created)
        status = self.status()
        occ = self.occupancy()
        self._last_on_board = occ["on_board"]
        if not self.link.is_connected:
            return
        try:
            await self.link.publish(
                self.topics.status(self.bus_id), canonical_bytes(status), qos=1, retain=True
            )
            await self.link.publish(
                self.topics.occupancy(self.bus_id), canonical_bytes(occ), qos=1, retain=True
            )
            self.stats.status_published += 1
        except BusbellError as exc:
            _log.info("status_publish_failed", error=str(exc))

    async def _on_connected(self) -> None:
        self._status_now.set()

    async def _status_task(self) -> None:
        while True:
            self._status_now.clear()
            try:
                await self._publish_status()
            except StoreError as exc:
                _log.error("fare_store_failed", op="status", error=str(exc))
            try:
                async with asyncio.timeout(self.config.status.interval_s):
                    await self._status_now.wait()
            except TimeoutError:
                pass

    # --- metrics ----------------------------------------------------------------------

    def _start_metrics(self) -> None:
        port = self.config.metrics.port
        if port is None:
            return
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from prometheus_client.registry import Collector

        daemon = self

        class _Collector(Collector):
            def collect(self) -> Iterable[Any]:
                ps = stats_dict(daemon.pipeline.stats)
                seen = CounterMetricFamily(
                    "busbell_edge_adverts_seen", "Advertisements seen by the pipeline."
                )
                seen.add_metric([], float(ps.get("adverts_seen", ps.get("seen", 0)) or 0))
                yield seen
                rej = CounterMetricFamily(
                    "busbell_edge_adverts_rejected",
                    "Token advertisements rejected, by reason.",
                    labels=["reason"],
                )
                for reason, n in _rejected(ps).items():
                    rej.add_metric([reason], float(n))
                yield rej
                beacons = CounterMetricFamily(
                    "busbell_edge_bus_beacons_heard",
                    "Bus beacons heard by the scanner (own: this bus's); never token rejects.",
                    labels=["own"],
                )
                heard = ps.get("beacons_heard") or {}
                beacons.add_metric(["true"], float(heard.get("own", 0)))
                beacons.add_metric(["false"], float(heard.get("other", 0)))
                yield beacons
                yield from daemon._beacon_metrics()
                dropped = CounterMetricFamily(
                    "busbell_edge_adverts_dropped", "Advertisements dropped by the full queue."
                )
                dropped.add_metric([], float(daemon.stats.adverts_dropped))
                yield dropped
                store = daemon.store
                for name, doc, value in (
                    (
                        "busbell_edge_tokens_in_range",
                        "Distinct rider tokens in range now.",
                        float(ps.get("tokens_in_range", 0) or 0),
                    ),
                    (
                        "busbell_edge_fare_backlog",
                        "Recorded fare events not yet acknowledged.",
                        float(0 if store is None else store.last_seq - store.acked_upto),
                    ),
                    (
                        "busbell_edge_upload_lag_seconds",
                        "Age of the oldest unacknowledged fare event.",
                        daemon._upload_lag_s,
                    ),
                    (
                        "busbell_edge_uplink_connected",
                        "1 when the MQTT uplink is connected.",
                        1.0 if daemon.link.is_connected else 0.0,
                    ),
                    (
                        "busbell_edge_on_board",
                        "Riders on board.",
                        float(daemon.pipeline.on_board()),
                    ),
                ):
                    g = GaugeMetricFamily(name, doc)
                    g.add_metric([], value)
                    yield g
                info = GaugeMetricFamily(
                    "busbell_edge_build_info",
                    "1, labelled with the build of the classifier and the pipeline this "
                    "daemon runs: compiled (mypyc), pure (Python) or mixed.",
                    labels=["build", "version"],
                )
                info.add_metric([daemon.build, __version__], 1.0)
                yield info

        registry = CollectorRegistry()
        registry.register(_Collector())
        self._metrics_server, _ = start_http_server(
            port, addr=self.config.metrics.host, registry=registry
        )
        _log.info("metrics_serving", host=self.config.metrics.host, port=port)

    def _beacon_metrics(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        beacon = self.beacon
        if beacon is None:
            return
        st = beacon.stats
        on = GaugeMetricFamily(
            "busbell_edge_beacon_registered", "1 when bluetoothd holds the bus beacon."
        )
        on.add_metric([], 1.0 if st.registered else 0.0)
        yield on
        regs = CounterMetricFamily(
            "busbell_edge_beacon_registrations", "Bus beacon registrations with bluetoothd."
        )
        regs.add_metric([], float(st.registrations))
        yield regs
        errs = CounterMetricFamily(
            "busbell_edge_beacon_errors",
            "Bus beacon registration failures and interruptions, by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(st.errors.items()):
            errs.add_metric([reason], float(n))
        yield errs

    @property
    def metrics_port(self) -> int | None:
        """The bound metrics port (useful with port 0), or ``None`` when off."""
        if self._metrics_server is None:
            return None
        return int(self._metrics_server.server_address[1])

    # --- lifecycle --------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask :meth:`run` to shut down gracefully (SIGTERM handler)."""
        self._stop.set()

    async def run(self) -> None:
        """Run until :meth:`request_stop`; then close segments, flush and go offline.

        Mid-trip, open presences are kept in the checkpoint instead of closed
        (:meth:`Checkpointer.stop`): the restart goes on with them.

        Raises:
            busbell.StoreError: when the fare store cannot be opened.
        """
        self.store = await FareStore.open(self.config.store, self.builder, clock=time.time)
        if isinstance(self.pipeline, EdgePipeline):
            # open presences survive a restart (edge/_checkpoint.py)
            self._checkpointer = Checkpointer(
                self.pipeline, self.store, self.config.classifier.checkpoint_s
            )
            await self._checkpointer.restore()
        self._update_beacon()  # (the restored trip's place, before the first registration)
        self.uploader = FareUploader(
            self.store, self.bus_id, self.topics, self.config.uplink, clock=time.time
        )
        self.uploader.attach(self.link)
        if self.bells is not None:
            self.bells.store = self.store
            self.bells.on_recorded = self.uploader.notify
        self._start_metrics()
        name = f"busbell[{self.bus_id}]"
        _log.info(
            "edge_started",
            bus_id=self.bus_id,
            source=getattr(self.source, "name", "?"),
            version=__version__,
            build=self.build,
        )
        if self.denylist.public_key is None:
            _log.warning(
                "denylist_key_missing",
                detail="denylist_public_key is not set: deny lists are refused",
            )
        try:
            async with asyncio.TaskGroup() as tg:
                uplink = tg.create_task(self.link.run(), name=f"{name}.uplink")
                fares = tg.create_task(self.uploader.run(self.link), name=f"{name}.fares")
                status = tg.create_task(self._status_task(), name=f"{name}.status")
                vehicle = tg.create_task(self._vehicle_task(), name=f"{name}.vehicle")
                pipeline = tg.create_task(self._pipeline_task(), name=f"{name}.pipeline")
                scanner = tg.create_task(self._scanner_task(), name=f"{name}.scanner")
                page: asyncio.Task[None] | None = None
                if self.driver_page is not None:
                    page = tg.create_task(
                        serve_driver_page(self.driver_page), name=f"{name}.driver_page"
                    )
                first = [scanner, vehicle, pipeline]
                if self.beacon is not None:  # (cancelled: it unregisters)
                    first.append(tg.create_task(self.beacon.run(), name=f"{name}.beacon"))
                if self.bells is not None:
                    first.append(tg.create_task(self.bells.run(), name=f"{name}.bells"))
                await self._stop.wait()
                _log.info("edge_stopping")
                await cancel_and_wait(first)
                await self._shutdown_flush()
                await cancel_and_wait([status, fares, uplink, *([page] if page else [])])
        finally:
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
                self._metrics_server.server_close()
            await self.store.close()
            _log.info("edge_stopped", last_seq=self.store.last_seq)

    async def _shutdown_flush(self) -> None:
        drafts: list[SegmentDraft] = []
        while self._vehicle or self._adverts:
            drafts.extend(self.pipeline.feed(pop_earliest(self._vehicle, self._adverts)))
        ckpt = self._checkpointer
        # mid-trip, open presences stay in the checkpoint for the restart (Checkpointer.stop)
        drafts.extend(
            ckpt.stop(self.clock()) if ckpt is not None else self.pipeline.finish(self.clock())
        )
        if drafts or self._pending:
            await self._record(drafts, force=True)  # with the snapshot, when it succeeds
        elif ckpt is not None:
            await ckpt.save()  # nothing to record: the snapshot the restart restores alone
        if self.bells is not None:
            await self.bells.flush()
        assert self.store is not None
        if self.link.is_connected:
            deadline = time.monotonic() + 2.0
            store = self.store
            while store.acked_upto < store.last_seq and time.monotonic() < deadline:  # noqa: ASYNC110 - acks arrive over MQTT
                await asyncio.sleep(0.05)
            try:
                status = {**self.status(), "state": "offline"}
                await self.link.publish(
                    self.topics.status(self.bus_id), canonical_bytes(status), qos=1, retain=True
                )
            except BusbellError as exc:
                _log.info("status_publish_failed", error=str(exc))


async def replay_records(
    records: Iterable[TraceRecord],
    pipeline: Pipeline,
    store: FareStore,
    out: IO[bytes],
) -> int:
    """Feed ``records`` through ``pipeline`` into ``store`` as fast as the CPU allows.

    Writes every recorded event to ``out`` as one canonical-JSON line and returns how
    many were written. The virtual clock is the records' ``t``.
    """
    n = 0
    last_t = 0.0
    for rec in records:
        last_t = rec.t
        drafts = pipeline.feed(rec)
        if drafts:
            for event in await store.append_many(drafts):
                out.write(canonical_bytes(event) + b"\n")
                n += 1
    drafts = pipeline.finish(last_t)
    if drafts:
        for event in await store.append_many(drafts):
            out.write(canonical_bytes(event) + b"\n")
            n += 1
    return n
